"""Time phantom-stress perturbations against TorchIO and MONAI on the same volume, in one run.

Prints one JSON document: per perturbation, the median time of ours, TorchIO's (CPU-bound) and
MONAI's (on our device where it supports it), and the ratios others/ours. Ratios, not absolute
times, are the result: they compare implementations on the same machine in the same run.

    python bench/bench_perturbations.py [--size 128] [--batch 1] [--repeats 5] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from perturbations import PERTURBATIONS
from perturbations.blur import FWHM_PER_SIGMA

SPACING = (1.0, 0.8, 0.8)  # mm, (D, H, W)
DOSE, REF_NOISE_HU, FWHM_MM = 0.25, 20.0, 4.0


def timed(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    """Median wall time in ms after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def ours(name: str, severity: float, x: torch.Tensor) -> Callable[[], torch.Tensor]:
    entry = PERTURBATIONS.get(name)
    spec = entry.spec(reference_noise_hu=REF_NOISE_HU) if name == "ct_dose" else entry.spec()
    rng = np.random.default_rng(0)
    params = [entry.sample(spec, severity, rng) for _ in range(x.shape[0])]
    return lambda: entry.apply(x, SPACING, params)


def torchio_fns(x: torch.Tensor) -> dict[str, Callable[[], object]] | None:
    try:
        import torchio as tio
    except ImportError:
        return None
    cpu = x.cpu()
    affine = np.diag([SPACING[2], SPACING[1], SPACING[0], 1.0])  # TorchIO axes are (W, H, D)
    images = [
        tio.ScalarImage(tensor=cpu[b].permute(0, 3, 2, 1).contiguous(), affine=affine)
        for b in range(len(cpu))
    ]
    noise = tio.Noise(mean=0.0, std=REF_NOISE_HU / math.sqrt(DOSE), seed=0)
    blur = tio.Blur(std=FWHM_MM / FWHM_PER_SIGMA)
    return {"ct_dose": lambda: [noise(i) for i in images], "gaussian_blur": lambda: [blur(i) for i in images]}


def monai_fns(x: torch.Tensor) -> dict[str, Callable[[], object]] | None:
    try:
        from monai.transforms import GaussianSmooth, RandGaussianNoise
    except ImportError:
        return None
    noise = RandGaussianNoise(prob=1.0, mean=0.0, std=REF_NOISE_HU / math.sqrt(DOSE))
    noise.set_random_state(0)
    smooth = GaussianSmooth(sigma=[FWHM_MM / FWHM_PER_SIGMA / s for s in SPACING])
    return {"ct_dose": lambda: [noise(v) for v in x], "gaussian_blur": lambda: [smooth(v) for v in x]}


def blur_parity(x: torch.Tensor) -> dict[str, object]:
    """Max |ours - TorchIO| and |ours - MONAI| for the blur on the benchmark volume."""
    ours_out = ours("gaussian_blur", FWHM_MM, x)()[0].cpu()
    out: dict[str, object] = {}
    fns = torchio_fns(x[:1])
    if fns is not None:
        import torchio as tio

        affine = np.diag([SPACING[2], SPACING[1], SPACING[0], 1.0])
        img = tio.ScalarImage(tensor=x[0].cpu().permute(0, 3, 2, 1).contiguous(), affine=affine)
        ref = tio.Blur(std=FWHM_MM / FWHM_PER_SIGMA)(img).data.permute(0, 3, 2, 1)
        out["torchio_max_abs_diff"] = float((ref - ours_out).abs().max())
        out["parity_torchio"] = out["torchio_max_abs_diff"] < 1e-4 * float(x.abs().max())
    if monai_fns(x[:1]) is not None:
        from monai.transforms import GaussianSmooth

        ref = GaussianSmooth(sigma=[FWHM_MM / FWHM_PER_SIGMA / s for s in SPACING])(x[0]).cpu()
        out["monai_max_abs_diff"] = float((torch.as_tensor(ref) - ours_out).abs().max())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(args.batch, 1, args.size, args.size, args.size, generator=gen) * 100.0).to(device)
    others = {"torchio": torchio_fns(x), "monai": monai_fns(x)}
    report: dict[str, object] = {
        "device": str(device),
        "torch": torch.__version__,
        "size": args.size,
        "batch": args.batch,
        "repeats": args.repeats,
        "spacing_mm": SPACING,
        "threads": torch.get_num_threads(),
        "settings": {"dose_fraction": DOSE, "reference_noise_hu": REF_NOISE_HU, "fwhm_mm": FWHM_MM},
        "results": {},
    }
    for name, severity in (("ct_dose", DOSE), ("gaussian_blur", FWHM_MM)):
        row: dict[str, object] = {"ours_ms": timed(ours(name, severity, x), args.repeats, device)}
        for lib, fns in others.items():
            if fns is None:
                row[f"{lib}_ms"] = None
                row[f"{lib}_over_ours"] = None
                continue
            row[f"{lib}_ms"] = timed(fns[name], args.repeats, device)
            row[f"{lib}_over_ours"] = row[f"{lib}_ms"] / row["ours_ms"]
        report["results"][name] = row
    report["available"] = {lib: fns is not None for lib, fns in others.items()}
    report["blur_parity"] = blur_parity(x)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
