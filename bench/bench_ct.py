"""Time the CT physics perturbations, next to the closest TorchIO and MONAI transforms, in one run.

For every perturbation of perturbations/ct_kernel.py, ct_geometry.py, ct_artefacts.py and ct_beam.py
this prints one JSON document with the median (and min) wall time of

* ours: ``PERTURBATIONS.get(name).apply`` on the whole ``(B, 1, N, N, N)`` batch on ``--device``;
* TorchIO (CPU, one ``tio.ScalarImage`` per case) and MONAI (``--device``, one ``(C, D, H, W)`` tensor
  per case), where a comparable transform exists:

  - ``ct_kernel`` at MTF50 f50: ``tio.Blur`` / ``GaussianSmooth``, in-plane only, with the Gaussian of
    the same MTF50, ``sigma = sqrt(ln 2 / 2) / (pi f50)`` (not the same MTF shape);
  - ``ct_dose_nps``: ``tio.Noise`` / ``RandGaussianNoise`` of the same SD (white, not kernel-shaped);
  - ``ct_slice_thickness`` T mm: ``tio.RandomAnisotropy`` along D with factor ``T / dz`` (down- and
    up-sampling, the usual slice-thickness augmentation) / ``GaussianSmooth`` along D with FWHM
    ``sqrt(T^2 - dz^2)``, which is our Gaussian profile;
  - ``ct_hu_calibration`` (offset o, scale s): ``tio.RescaleIntensity`` with ``in_min_max (a, b)`` mapped
    to ``(s a + o, s b + o)`` / ``ScaleIntensity(factor=s - 1)`` then ``ShiftIntensity(o)``;
  - ``ct_ring``, ``ct_truncation``, ``ct_beam_hardening``: no equivalent in either library;

with ``torchio_over_ours`` and ``monai_over_ours`` (> 1: ours is faster) and, on case 0, the max abs
difference to each library's output (``*_max_abs_diff``, in HU, and ``*_interior_max_abs_diff`` more
than N/8 voxels from every border, where MONAI's zero padding does not reach; only the calibration and,
in the interior, MONAI's slice profile are meant to agree) and the SD of what each adds to the input.
The input is a water cylinder (40 HU, texture SD 20 HU, radius 0.4 of the field) in air, so truncation
and beam hardening act on an object.

    python bench/bench_ct.py [--size 128] [--batch 1] [--repeats 5] [--device cuda|cpu] [--threads T]
"""

from __future__ import annotations

import os
import sys

# Running a script puts bench/ first on sys.path; import the packages from the repository root instead.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
sys.path.insert(0, os.path.dirname(_HERE))

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.bench_perturbations import as_cpu  # noqa: E402
from bench.common import base_parser, ratio, report_header, set_up, timed  # noqa: E402  # noqa: E402
from perturbations import PERTURBATIONS  # noqa: E402
from perturbations.blur import FWHM_PER_SIGMA  # noqa: E402
from perturbations.ct_geometry import inplane_radius_mm  # noqa: E402

SEED = 0
CALIBRATION_RANGE = (-1000.0, 1000.0)  # TorchIO's in_min_max for the affine map


def settings(args: argparse.Namespace) -> dict[str, tuple[float, dict[str, Any]]]:
    """Severity and spec of each perturbation in the run."""
    return {
        "ct_kernel": (args.mtf50, {}),
        "ct_dose_nps": (args.dose, {"reference_noise_hu": 20.0, "kernel": "standard"}),
        "ct_slice_thickness": (args.thickness_mm, {"profile": "gaussian"}),
        "ct_hu_calibration": (args.offset_hu, {"scale": args.scale}),
        "ct_ring": (20.0, {}),
        "ct_truncation": (40.0, {}),
        "ct_beam_hardening": (20.0, {}),
    }


def cylinder(args: argparse.Namespace, spacing: tuple[float, float, float]) -> torch.Tensor:
    """``(B, 1, N, N, N)`` water cylinder with a white texture, in air, HU."""
    gen = torch.Generator().manual_seed(SEED)
    shape = (args.batch, 1, args.size, args.size, args.size)
    x = torch.full(shape, -1000.0)
    inside = inplane_radius_mm(x, spacing) <= 0.4 * args.size * spacing[2]
    texture = 40.0 + 20.0 * torch.randn(shape, generator=gen)
    return torch.where(inside, texture, x).to(args.device)


def blur_sigma_mm(mtf50_lpcm: float) -> float:
    """Sigma (mm) of the Gaussian PSF whose MTF ``exp(-2 pi^2 sigma^2 f^2)`` is 0.5 at ``mtf50_lpcm``."""
    return math.sqrt(math.log(2.0) / 2.0) / (math.pi * mtf50_lpcm / 10.0)


def equivalents(args: argparse.Namespace, spacing: tuple[float, float, float]) -> dict[str, dict[str, Any]]:
    """Constructors of the TorchIO and MONAI transforms per perturbation (absent: no equivalent)."""
    sigma = blur_sigma_mm(args.mtf50)
    dz = spacing[0]
    z_sigma_vox = math.sqrt(max(args.thickness_mm**2 - dz**2, 0.0)) / FWHM_PER_SIGMA / dz
    std = 20.0 / math.sqrt(args.dose)
    a, b = CALIBRATION_RANGE
    out_range = (args.scale * a + args.offset_hu, args.scale * b + args.offset_hu)

    def tio_(name: str) -> Callable[[], Any]:
        import torchio as tio

        return {
            "ct_kernel": lambda: tio.Blur(std=(0.0, sigma, sigma)),
            "ct_dose_nps": lambda: tio.Noise(mean=0.0, std=std, seed=SEED),
            "ct_slice_thickness": lambda: tio.RandomAnisotropy(
                axes=0, downsampling=(args.thickness_mm / dz,) * 2
            ),
            "ct_hu_calibration": lambda: tio.RescaleIntensity(out_min_max=out_range, in_min_max=(a, b)),
        }[name]

    def monai_(name: str) -> Callable[[], Any]:
        from monai.transforms import (
            Compose,
            GaussianSmooth,
            RandGaussianNoise,
            ScaleIntensity,
            ShiftIntensity,
        )

        def noise() -> Any:
            t = RandGaussianNoise(prob=1.0, mean=0.0, std=std, sample_std=False)
            t.set_random_state(SEED)
            return t

        return {
            "ct_kernel": lambda: GaussianSmooth(sigma=(1e-6, sigma / spacing[1], sigma / spacing[2])),
            "ct_dose_nps": noise,
            "ct_slice_thickness": lambda: GaussianSmooth(sigma=(z_sigma_vox, 1e-6, 1e-6)),
            "ct_hu_calibration": lambda: Compose(
                [
                    ScaleIntensity(minv=None, maxv=None, factor=args.scale - 1.0),
                    ShiftIntensity(args.offset_hu),
                ]
            ),
        }[name]

    table: dict[str, dict[str, Any]] = {}
    for name in settings(args):
        table[name] = {}
        for lib, make in (("torchio", tio_), ("monai", monai_)):
            try:
                table[name][lib] = make(name)()
            except (KeyError, ImportError):
                table[name][lib] = None
    return table


def library_info() -> dict[str, Any]:
    info: dict[str, Any] = {}
    for lib in ("torchio", "monai"):
        try:
            info[lib] = {"available": True, "version": __import__(lib).__version__}
        except ImportError:
            info[lib] = {"available": False}
    return info


def main() -> None:
    parser = base_parser(__doc__, batch=1, repeats=5)
    parser.add_argument("--mtf50", type=float, default=2.8, help="ct_kernel severity [lp/cm]")
    parser.add_argument("--dose", type=float, default=0.25, help="ct_dose_nps severity [fraction]")
    parser.add_argument("--thickness-mm", type=float, default=5.0, help="ct_slice_thickness severity [mm]")
    parser.add_argument("--offset-hu", type=float, default=10.0, help="ct_hu_calibration severity [HU]")
    parser.add_argument("--scale", type=float, default=1.02, help="ct_hu_calibration scale")
    args = parser.parse_args()
    device = set_up(args)
    spacing = tuple(float(s) for s in args.spacing)
    x = cylinder(args, spacing)
    cpu_images = None
    if library_info()["torchio"]["available"]:
        import torchio as tio

        affine = np.diag([*spacing, 1.0])
        cpu_images = [tio.ScalarImage(tensor=v.detach().cpu().clone(), affine=affine) for v in x]

    cfg, table = settings(args), equivalents(args, spacing)
    m = args.size // 8
    inner = (slice(None), *(slice(m, args.size - m),) * 3)  # away from borders (MONAI pads with zeros)
    results: dict[str, Any] = {}
    for name, (severity, spec) in cfg.items():
        entry = PERTURBATIONS.get(name)
        rng = np.random.default_rng(SEED)
        params = [entry.sample(entry.spec(**spec), severity, rng) for _ in range(x.shape[0])]
        runs: dict[str, Callable[[], Any] | None] = {"ours": lambda e=entry, p=params: e.apply(x, spacing, p)}
        t_io, t_mo = table[name]["torchio"], table[name]["monai"]
        runs["torchio"] = None if t_io is None else (lambda t=t_io: [t(img) for img in cpu_images])
        runs["monai"] = None if t_mo is None else (lambda t=t_mo: [t(v) for v in x])
        row: dict[str, Any] = {"severity": severity, "spec": spec, "unit": entry.severity.unit}
        y0 = as_cpu(runs["ours"]()[0])
        row["ours_added_sd_hu"] = float((y0 - as_cpu(x[0])).std())
        for lib, run in runs.items():
            dev = torch.device("cpu") if lib == "torchio" else device
            t = None if run is None else timed(run, args.repeats, dev)
            row[f"{lib}_ms"] = None if t is None else t["median"]
            row[f"{lib}_min_ms"] = None if t is None else t["min"]
            if lib != "ours" and run is not None:
                theirs = as_cpu(run()[0])
                row[f"{lib}_max_abs_diff"] = float((theirs - y0).abs().max())
                row[f"{lib}_interior_max_abs_diff"] = float((theirs - y0)[inner].abs().max())
                row[f"{lib}_added_sd_hu"] = float((theirs - as_cpu(x[0])).std())
        row["torchio_over_ours"] = ratio(row["torchio_ms"], row["ours_ms"])
        row["monai_over_ours"] = ratio(row["monai_ms"], row["ours_ms"])
        results[name] = row

    report = {
        **report_header("ct_perturbations", device, args),
        "dtype": "float32",
        "spacing_mm": list(spacing),
        "libraries": library_info(),
        "perturbations": results,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
