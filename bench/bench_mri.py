"""Time the MRI perturbations against their TorchIO and MONAI equivalents, side by side in one run.

For each ``mri_*`` perturbation, at the middle level of its ladder with the default spec, this prints one
JSON document with the median (and minimum) wall time of

* ours: ``PERTURBATIONS.get(name).apply`` on the whole ``(B, 1, N, N, N)`` batch, on ``--device``;
* TorchIO (always on the CPU), one ``tio.ScalarImage`` per case, with the very parameters of our case
  (``BiasField`` with ``bias_coefficients``, ``Ghosting``, ``Spike`` with ``spike_positions``,
  ``Motion`` with ``torchio_motion_arguments``): these are parity-tested and the JSON reports the max
  abs difference on case 0 (``torchio_max_abs_diff``);
* MONAI, one ``(C, D, H, W)`` tensor per case on ``--device``, where a transform of the same artefact
  exists: ``RandRicianNoise`` (same noise model, std sigma), ``RandBiasField`` (same degree, Legendre
  basis: another field), ``GibbsNoise`` (a k-space sphere instead of our box; ``alpha`` chosen so that
  both cut the axes at the same frequency), ``RandKSpaceSpikeNoise`` (one spike per channel at a
  log-intensity of its own);

and the ratios ``torchio_over_ours`` and ``monai_over_ours`` of the medians (> 1: ours is faster), and
of the minima (``*_over_ours_min``). TorchIO has no Rician noise, Gibbs or undersampling transform; MONAI
has no ghosting, motion or undersampling transform on images. The test object is smooth, positive and
zero at the borders (where SimpleITK and ``grid_sample`` differ), so the motion parity is meaningful.

    python bench/bench_mri.py [--size 128] [--batch 1] [--repeats 5] [--device cuda|cpu] [--threads T]
                              [--level 2]
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
    ratio,
    set_up,  # noqa: E402
    timed,
)
from perturbations import PERTURBATIONS, params_to_dict  # noqa: E402
from perturbations.mri_bias import bias_coefficients  # noqa: E402
from perturbations.mri_kspace import spike_positions  # noqa: E402
from perturbations.mri_motion import torchio_motion_arguments  # noqa: E402

SEED = 0
NAMES = tuple(name for name in PERTURBATIONS.names() if name.startswith("mri_"))
OPTIONS: tuple[tuple[str, type, Any, str], ...] = (
    ("--size", int, 128, "N of the N^3 volume [voxels]"),
    ("--batch", int, 1, "cases per batch"),
    ("--repeats", int, 5, "timed calls after one warm-up"),
    ("--device", str, "cuda" if torch.cuda.is_available() else "cpu", "device of ours and MONAI"),
    ("--threads", int, None, "torch intra-op threads (default: torch's)"),
    ("--level", int, 2, "ladder level timed, 0 (mildest) to 4"),
)
Runner = Callable[[], Any]


def phantom_volume(size: int, batch: int, device: torch.device) -> torch.Tensor:
    """``(B, 1, N, N, N)`` float32: random blobs and a box in the central half, 0 at the borders."""
    gen = np.random.default_rng(SEED)
    axis = np.linspace(-1.0, 1.0, size)
    d, h, w = np.meshgrid(axis, axis, axis, indexing="ij", sparse=True)
    cases = []
    for _ in range(batch):
        volume = np.zeros((size,) * 3)
        for centre, width, height in zip(
            gen.uniform(-0.3, 0.3, (6, 3)), gen.uniform(0.05, 0.15, 6), gen.uniform(0.3, 1.0, 6), strict=True
        ):
            volume += height * np.exp(
                -((d - centre[0]) ** 2 + (h - centre[1]) ** 2 + (w - centre[2]) ** 2) / (2 * width**2)
            )
        volume += 0.5 * ((abs(d) < 0.25) & (abs(h) < 0.35) & (abs(w) < 0.2))
        cases.append(volume)
    return torch.from_numpy(np.stack(cases)[:, None].astype(np.float32)).to(device)


def draw_params(names: tuple[str, ...], level: int, batch: int) -> dict[str, list[Any]]:
    """Per perturbation, ``batch`` params at ladder level ``level`` (default spec, seeded draws)."""
    rng = np.random.default_rng(SEED)
    out = {}
    for name in names:
        entry = PERTURBATIONS.get(name)
        out[name] = [entry.sample(entry.spec(), entry.ladder[level], rng) for _ in range(batch)]
    return out


def torchio_runners(
    x: torch.Tensor, spacing: tuple[float, ...], params: dict[str, list[Any]]
) -> dict[str, Runner]:
    """TorchIO transforms with each case's own parameters, one ScalarImage per case (CPU)."""
    import torchio as tio

    cpu = [v.detach().cpu() for v in x]

    def per_case(name: str, make: Callable[[Any], tuple[Any, np.ndarray]]) -> Runner:
        pairs = []
        for data, p in zip(cpu, params[name], strict=True):
            transform, affine = make(p)
            pairs.append((transform, tio.ScalarImage(tensor=data.clone(), affine=affine)))
        return lambda: [transform(image) for transform, image in pairs]

    plain = np.diag([*spacing, 1.0])

    def motion(p: Any) -> tuple[Any, np.ndarray]:
        affine, arguments = torchio_motion_arguments(p, x.shape[2:], spacing)
        return tio.Motion(image_interpolation="linear", **arguments), affine

    return {
        "mri_bias_field": per_case(
            "mri_bias_field", lambda p: (tio.BiasField(bias_coefficients(p), p.order), plain)
        ),
        "mri_ghosting": per_case(
            "mri_ghosting", lambda p: (tio.Ghosting(p.num_ghosts, p.axis, p.intensity, p.restore), plain)
        ),
        "mri_spike": per_case("mri_spike", lambda p: (tio.Spike(spike_positions(p), p.intensity), plain)),
        "mri_motion": per_case("mri_motion", motion),
    }


def monai_runners(x: torch.Tensor, params: dict[str, list[Any]]) -> dict[str, Runner]:
    """MONAI transforms of the same artefact, one ``(C, D, H, W)`` tensor per case on x's device."""
    from monai.transforms import GibbsNoise, RandBiasField, RandKSpaceSpikeNoise, RandRicianNoise

    rician = [RandRicianNoise(prob=1.0, std=p.sigma, sample_std=False) for p in params["mri_rician_noise"]]
    bias = RandBiasField(degree=params["mri_bias_field"][0].order, coeff_range=(0.0, 0.1), prob=1.0)
    removed = params["mri_gibbs"][0].removed_fraction
    gibbs = GibbsNoise(alpha=1.0 - (1.0 - removed) / math.sqrt(2.0))
    spike = RandKSpaceSpikeNoise(prob=1.0)
    for transform in (*rician, bias, spike):
        transform.set_random_state(SEED)
    return {
        "mri_rician_noise": lambda: [t(v) for t, v in zip(rician, x, strict=True)],
        "mri_bias_field": lambda: [bias(v) for v in x],
        "mri_spike": lambda: [spike(v) for v in x],
        "mri_gibbs": lambda: [gibbs(v) for v in x],
    }


def available(loader: Callable[[], dict[str, Runner]]) -> tuple[dict[str, Runner], dict[str, Any]]:
    """The runners of a library and its JSON entry, or no runners where it cannot be imported."""
    try:
        runners = loader()
    except ImportError:
        return {}, {"available": False}
    return runners, {"available": True}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for flag, kind, default, text in OPTIONS:
        parser.add_argument(flag, type=kind, default=default, help=text)
    parser.add_argument("--spacing", type=float, nargs=3, default=(1.0, 1.0, 1.0), help="D H W [mm]")
    args = parser.parse_args()
    device = set_up(args)
    spacing = tuple(float(s) for s in args.spacing)
    x = phantom_volume(args.size, args.batch, device)
    params = draw_params(NAMES, args.level, args.batch)
    ours = {
        name: (lambda name=name: PERTURBATIONS.get(name).apply(x, spacing, params[name])) for name in NAMES
    }
    tio_runners, tio_info = available(lambda: torchio_runners(x, spacing, params))
    monai_runners_, monai_info = available(lambda: monai_runners(x, params))
    for lib, info, where in (("torchio", tio_info, "cpu"), ("monai", monai_info, str(device))):
        if info["available"]:
            info.update({"version": __import__(lib).__version__, "device": where})

    results: dict[str, Any] = {}
    for name in NAMES:
        mine = ours[name]()
        row: dict[str, Any] = {"severity": PERTURBATIONS.get(name).ladder[args.level]}
        row["params_case_0"] = params_to_dict(params[name][0])
        times = {"ours": timed(ours[name], args.repeats, device)}
        for lib, runners, where in (
            ("torchio", tio_runners, torch.device("cpu")),
            ("monai", monai_runners_, device),
        ):
            run = runners.get(name)
            times[lib] = None if run is None else timed(run, args.repeats, where)
            if run is not None and lib == "torchio":
                row["torchio_max_abs_diff"] = float((as_cpu(run()[0]) - as_cpu(mine[0])).abs().max())
        for lib, t in times.items():
            row[f"{lib}_ms"] = None if t is None else t["median"]
            row[f"{lib}_min_ms"] = None if t is None else t["min"]
        for lib in ("torchio", "monai"):
            row[f"{lib}_over_ours"] = ratio(row[f"{lib}_ms"], row["ours_ms"])
            row[f"{lib}_over_ours_min"] = ratio(row[f"{lib}_min_ms"], row["ours_min_ms"])
        results[name] = row

    report: dict[str, Any] = {"benchmark": "mri_perturbations", **vars(args), "spacing": list(spacing)}
    report.update(
        threads=torch.get_num_threads(), torch=torch.__version__, load_average_1m=os.getloadavg()[0]
    )
    if device.type == "cuda":
        report["device_name"] = torch.cuda.get_device_name(device)
    report.update(dtype="float32", max_abs_input=float(x[0].abs().max().cpu()))
    report.update(libraries={"torchio": tio_info, "monai": monai_info}, perturbations=results)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
