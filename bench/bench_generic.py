"""Time the generic and pipeline perturbations against TorchIO and MONAI equivalents, side by side in one run.

For every perturbation of perturbations/intensity.py, resolution.py and pipeline.py this prints one JSON
document with the median wall time of

* ours: ``PERTURBATIONS.get(name).apply`` on the whole ``(B, 1, N, N, N)`` batch, on ``--device``;
* TorchIO (where an equivalent exists): one ``tio.ScalarImage`` per case, on the CPU (TorchIO computes
  on the CPU whatever the input device): ``Gamma``, ``RandomAnisotropy`` with a fixed axis and factor,
  ``Flip``, ``Crop`` then ``Pad``;
* MONAI (where an equivalent exists): one ``(C, D, H, W)`` tensor per case on ``--device``:
  ``AdjustContrast``, ``ShiftIntensity``, ``Flip``, ``Transpose``, ``SpatialCrop`` then ``BorderPad``;

and the ratios ``torchio_over_ours`` and ``monai_over_ours`` (> 1: ours is faster) of the medians, and the
same ratios of the minimum times (``*_over_ours_min``), which are steadier on a loaded machine. MONAI's
``Transpose`` returns a strided view without copying, so its time is not a copy's. ``lossy_compression``,
``missing_slices`` and ``duplicated_slices`` have no equivalent in either library. Each row also carries
parity numbers on case 0 (max abs difference to the library's output; for ``gamma`` vs TorchIO the max
relative difference with the window [0, 1], which is ``tio.Gamma`` on raw values; for ``anisotropy`` the
difference inside SimpleITK's buffer and the number of border slices that SimpleITK sets to 0).

    python bench/bench_generic.py [--size 128] [--batch 1] [--repeats 5] [--device cuda|cpu] [--threads T]
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
from bench.common import (  # noqa: E402
    base_parser,
    library_versions,
    random_volume,
    report_header,
    set_up,
    timing_row,
)
from perturbations import PERTURBATIONS  # noqa: E402
from perturbations.intensity import GammaParams  # noqa: E402

SEED = 0
MODULES = {"perturbations.intensity", "perturbations.resolution", "perturbations.pipeline"}
NAMES = tuple(
    name
    for name, entry in PERTURBATIONS.items()
    if entry.spec.__module__ in MODULES
    and entry.spacing_after is None  # metadata-only errors: nothing to time
)


def settings(args: argparse.Namespace) -> dict[str, tuple[float, dict[str, Any]]]:
    """Severity and spec of each perturbation in the run."""
    return {
        "gamma": (args.abs_log_gamma, {"sign": "positive"}),
        "intensity_rescale_error": (1024.0, {}),
        "lossy_compression": (args.quality, {"window": (-1024.0, 1024.0)}),
        "anisotropy": (args.downsampling, {"axis": "D"}),
        "orientation_flip": (1.0, {"axis": "W"}),
        "axis_swap": (1.0, {"axes": "HW"}),
        "missing_slices": (0.1, {"fill_value": -1000.0}),
        "duplicated_slices": (0.1, {}),
        "crop_pad": (args.margin_mm, {"fill_value": -1000.0, "axes": "HW"}),
    }


class Ours:
    """Our perturbations with params drawn once through the registry's samplers."""

    def __init__(self, x: torch.Tensor, spacing: tuple[float, float, float], cfg: dict[str, Any]):
        self.x, self.spacing = x, spacing
        rng = np.random.default_rng(SEED)
        self.params = {}
        for name, (severity, spec) in cfg.items():
            entry = PERTURBATIONS.get(name)
            self.params[name] = [entry.sample(entry.spec(**spec), severity, rng) for _ in range(x.shape[0])]

    def run(self, name: str) -> torch.Tensor:
        return PERTURBATIONS.get(name).apply(self.x, self.spacing, self.params[name])


def crop_margins(margin_mm: float, spacing: tuple[float, float, float]) -> tuple[int, int, int]:
    """Voxels cut per side along D, H, W for an in-plane (HW) cut of ``margin_mm``."""
    return (0, int(margin_mm / spacing[1] + 0.5), int(margin_mm / spacing[2] + 0.5))


class TorchIO:
    """TorchIO's deterministic equivalents on one ScalarImage per case (CPU)."""

    def __init__(
        self, x: torch.Tensor, spacing: tuple[float, float, float], ours: Ours, args: argparse.Namespace
    ):
        import torchio as tio

        self.version = tio.__version__
        cpu = x.detach().cpu()
        self.images = [
            tio.ScalarImage(tensor=cpu[b].clone(), affine=np.diag([*spacing, 1.0])) for b in range(len(cpu))
        ]
        d, h, w = crop_margins(args.margin_mm, spacing)
        cut = (d, d, h, h, w, w)
        gamma = ours.params["gamma"][0].gamma
        self.transforms: dict[str, Callable[[Any], Any]] = {
            "gamma": tio.Gamma(gamma),
            "anisotropy": tio.RandomAnisotropy(axes=0, downsampling=(args.downsampling, args.downsampling)),
            "orientation_flip": tio.Flip(axes=(2,)),
            "crop_pad": tio.Compose([tio.Crop(cut), tio.Pad(cut, padding_mode=-1000.0)]),
        }

    def run(self, name: str) -> list[Any] | None:
        transform = self.transforms.get(name)
        return None if transform is None else [transform(img) for img in self.images]


class Monai:
    """MONAI's deterministic equivalents on one ``(C, D, H, W)`` tensor per case."""

    def __init__(
        self, x: torch.Tensor, spacing: tuple[float, float, float], ours: Ours, args: argparse.Namespace
    ):
        import monai
        from monai.transforms import (
            AdjustContrast,
            BorderPad,
            Compose,
            Flip,
            ShiftIntensity,
            SpatialCrop,
            Transpose,
        )

        self.version = monai.__version__
        self.x = x
        d, h, w = crop_margins(args.margin_mm, spacing)
        n = x.shape[2:]
        self.transforms: dict[str, Callable[[Any], Any]] = {
            "gamma": AdjustContrast(gamma=ours.params["gamma"][0].gamma),
            "intensity_rescale_error": ShiftIntensity(offset=1024.0),
            "orientation_flip": Flip(spatial_axis=2),
            "axis_swap": Transpose((0, 1, 3, 2)),
            "crop_pad": Compose(
                [
                    SpatialCrop(roi_start=(d, h, w), roi_end=(n[0] - d, n[1] - h, n[2] - w)),
                    BorderPad(spatial_border=(d, d, h, h, w, w), value=-1000.0),
                ]
            ),
        }

    def run(self, name: str) -> list[Any] | None:
        transform = self.transforms.get(name)
        return None if transform is None else [transform(v) for v in self.x]


def load(cls: type, *args: Any) -> Any | None:
    try:
        return cls(*args)
    except ImportError:
        return None


def max_diff(theirs: list[Any] | None, ours: torch.Tensor) -> float | None:
    return None if theirs is None else float((as_cpu(theirs[0]) - as_cpu(ours[0])).abs().max())


def checks(
    ours: Ours, tio_: TorchIO | None, monai_: Monai | None, args: argparse.Namespace
) -> dict[str, Any]:
    """Parity of case 0 with each library's output, where the library has an equivalent."""
    out: dict[str, dict[str, Any]] = {name: {} for name in NAMES}
    for name in NAMES:
        y = ours.run(name)
        if monai_ is not None and name in monai_.transforms:
            out[name]["monai_max_abs_diff"] = max_diff(monai_.run(name), y)
        if tio_ is not None and name in tio_.transforms and name not in ("gamma", "anisotropy"):
            out[name]["torchio_max_abs_diff"] = max_diff(tio_.run(name), y)
    if tio_ is not None:
        raw = GammaParams(gamma=ours.params["gamma"][0].gamma, window_low=0.0, window_high=1.0)
        mine = PERTURBATIONS.get("gamma").apply(ours.x[:1], ours.spacing, [raw])[0].cpu()
        ref = as_cpu(tio_.run("gamma")[0])
        out["gamma"]["torchio_max_rel_diff_window_0_1"] = float(
            ((mine - ref).abs() / ref.abs().clamp(min=1e-6)).max()
        )
        ref = as_cpu(tio_.run("anisotropy")[0])
        mine = as_cpu(ours.run("anisotropy")[0])
        size, m, step = ours.x.shape[2], args.downsampling, ours.spacing[0]
        coarse = math.floor(size * step / (step * m))
        q = (np.arange(size) - ((size - 1) / 2 - (coarse - 1) / 2 * m)) / m
        inside = torch.from_numpy(np.flatnonzero((q >= -0.5) & (q < coarse - 0.5)))
        diff = (mine - ref).index_select(1, inside).abs().max()
        out["anisotropy"]["torchio_max_abs_diff_inside_itk_buffer"] = float(diff)
        out["anisotropy"]["torchio_zero_border_slices"] = int(size - inside.numel())
    out["max_abs_input"] = float(ours.x[0].detach().abs().max().cpu())
    return out


def main() -> None:
    parser = base_parser(__doc__, batch=1, repeats=5)
    parser.add_argument("--abs-log-gamma", type=float, default=0.3, help="gamma severity |ln gamma|")
    parser.add_argument("--quality", type=float, default=50.0, help="lossy_compression JPEG quality")
    parser.add_argument("--downsampling", type=float, default=3.0, help="anisotropy factor along D")
    parser.add_argument("--margin-mm", type=float, default=20.0, help="crop_pad margin per side [mm]")
    args = parser.parse_args()
    # a cut of at most a quarter of the in-plane field of view per side, whatever --size
    args.margin_mm = min(args.margin_mm, 0.25 * args.size * min(args.spacing[1:]))
    device = set_up(args)
    spacing = tuple(float(s) for s in args.spacing)
    x = random_volume(args, device, SEED)
    cfg = settings(args)
    ours = Ours(x, spacing, cfg)
    tio_ = load(TorchIO, x, spacing, ours, args)
    monai_ = load(Monai, x, spacing, ours, args)

    libraries = library_versions(tio_, monai_, device)

    check = checks(ours, tio_, monai_, args)
    results: dict[str, Any] = {}
    for name in NAMES:
        theirs = {
            lib: (
                (lambda obj=obj, name=name: obj.run(name))
                if obj is not None and name in obj.transforms
                else None,
                dev,
            )
            for lib, obj, dev in (("torchio", tio_, torch.device("cpu")), ("monai", monai_, device))
        }
        row = {"severity": cfg[name][0], "spec": cfg[name][1]}
        row.update(timing_row(lambda name=name: ours.run(name), theirs, args.repeats, device))
        row.update(check[name])
        results[name] = row

    report = {
        **report_header("generic_perturbations", device, args),
        "dtype": "float32",
        "spacing_mm": list(spacing),
        "max_abs_input": check["max_abs_input"],
        "libraries": libraries,
        "perturbations": results,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
