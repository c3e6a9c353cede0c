"""Time our perturbations against the equivalent TorchIO and MONAI transforms, side by side in one run.

For ``ct_dose`` and ``gaussian_blur`` this prints one JSON document with the median wall time of

* ours: ``PERTURBATIONS.get(name).apply`` on the whole ``(B, 1, N, N, N)`` batch, on ``--device``;
* TorchIO: ``tio.Noise`` / ``tio.Blur`` on one ``tio.ScalarImage`` per case, on the CPU (TorchIO
  computes on the CPU whatever the input device);
* MONAI: ``RandGaussianNoise`` / ``GaussianSmooth`` on one ``(C, D, H, W)`` tensor per case, on
  ``--device``;

with equivalent parameters (noise std = reference_noise_hu / sqrt(dose) in HU; blur sigma =
fwhm_mm / 2.3548 in mm, i.e. sigma_mm / spacing in voxels per axis) and the ratios
``torchio_over_ours`` and ``monai_over_ours`` (> 1: ours is faster). Ratios measured in one run are
the result, not the absolute times. It also checks that the settings are really equivalent: the
std of the noise each library adds, and the blur's max abs difference to TorchIO (``parity_torchio``:
within 1e-4) and to MONAI (not expected to match: MONAI pads with zeros and uses an erf kernel).

    python bench/bench_perturbations.py [--size 128] [--batch 1] [--repeats 5] [--device cuda|cpu]
                                         [--threads T]
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
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.common import (  # noqa: E402
    base_parser,
    library_versions,
    random_volume,
    report_header,
    set_up,
    timing_row,
)
from perturbations import PERTURBATIONS  # noqa: E402
from perturbations.blur import FWHM_PER_SIGMA, kernel_radius  # noqa: E402

PARITY_ATOL = 1e-4
SEED = 0


class Ours:
    """Our two perturbations with params drawn once through the registry's sampler."""

    def __init__(self, x: torch.Tensor, spacing: tuple[float, float, float], cfg: argparse.Namespace):
        self.x, self.spacing = x, spacing
        rng = np.random.default_rng(SEED)
        dose = PERTURBATIONS.get("ct_dose")
        dose_spec = dose.spec(reference_noise_hu=cfg.reference_noise_hu)
        self.dose = dose
        self.dose_params = [dose.sample(dose_spec, cfg.dose, rng) for _ in range(x.shape[0])]
        blur = PERTURBATIONS.get("gaussian_blur")
        self.blur = blur
        self.blur_params = [blur.sample(blur.spec(), cfg.fwhm_mm, rng) for _ in range(x.shape[0])]

    def ct_dose(self) -> torch.Tensor:
        return self.dose.apply(self.x, self.spacing, self.dose_params)

    def gaussian_blur(self) -> torch.Tensor:
        return self.blur.apply(self.x, self.spacing, self.blur_params)


class TorchIO:
    """TorchIO's deterministic ``Noise`` and ``Blur`` on one ScalarImage per case (CPU)."""

    def __init__(self, x: torch.Tensor, spacing: tuple[float, float, float], std_hu: float, sigma_mm: float):
        import torchio as tio

        self.version = tio.__version__
        # Our (C, D, H, W) array axes map one-to-one to TorchIO's array axes; the affine's diagonal
        # carries each axis' spacing, which is all Blur reads (std_voxel = std_mm / spacing).
        affine = np.diag([*spacing, 1.0])
        cpu = x.detach().cpu()
        self.inputs = [cpu[b] for b in range(cpu.shape[0])]
        self.images = [tio.ScalarImage(tensor=t.clone(), affine=affine) for t in self.inputs]
        self.noise = tio.Noise(mean=0.0, std=std_hu, seed=SEED)
        self.blur = tio.Blur(std=(sigma_mm,) * 3)

    def ct_dose(self) -> list[Any]:
        return [self.noise(img) for img in self.images]

    def gaussian_blur(self) -> list[Any]:
        return [self.blur(img) for img in self.images]


class Monai:
    """MONAI's ``RandGaussianNoise`` (fixed std) and ``GaussianSmooth`` on one tensor per case."""

    def __init__(self, x: torch.Tensor, spacing: tuple[float, float, float], std_hu: float, sigma_mm: float):
        import monai
        from monai.transforms import GaussianSmooth, RandGaussianNoise

        self.version = monai.__version__
        self.x = x
        # sample_std=False: MONAI otherwise draws the std uniformly from [0, std] on every call.
        self.noise = RandGaussianNoise(prob=1.0, mean=0.0, std=std_hu, sample_std=False)
        self.noise.set_random_state(SEED)
        self.sigma_vox = [sigma_mm / s for s in spacing]
        self.smooth = GaussianSmooth(sigma=self.sigma_vox)

    def ct_dose(self) -> list[Any]:
        return [self.noise(v) for v in self.x]

    def gaussian_blur(self) -> list[Any]:
        return [self.smooth(v) for v in self.x]


def load(cls: type, *args: Any) -> Any | None:
    try:
        return cls(*args)
    except ImportError:
        return None


def as_cpu(t: Any) -> torch.Tensor:
    """A plain CPU float32 tensor from a torch tensor, MetaTensor or TorchIO image."""
    data = getattr(t, "data", t)
    return torch.as_tensor(data).as_subclass(torch.Tensor).detach().to("cpu", torch.float32)


def checks(ours: Ours, tio_: TorchIO | None, monai_: Monai | None, x: torch.Tensor) -> dict[str, Any]:
    """Equivalence of the settings: added-noise std and blur differences, on case 0."""
    x0 = x[0].detach().cpu()
    added = {"ours": float((as_cpu(ours.ct_dose()[0]) - x0).std())}
    if tio_ is not None:
        added["torchio"] = float((as_cpu(tio_.ct_dose()[0]) - tio_.inputs[0]).std())
    if monai_ is not None:
        added["monai"] = float((as_cpu(monai_.ct_dose()[0]) - x0).std())
    blur = as_cpu(ours.gaussian_blur()[0])
    out: dict[str, Any] = {
        "ct_dose": {"expected_noise_std_hu": ours.dose_params[0].added_noise_hu, "noise_std_hu": added},
        "gaussian_blur": {"parity_torchio": None, "torchio_max_abs_diff": None, "monai_max_abs_diff": None},
    }
    row = out["gaussian_blur"]
    if tio_ is not None:
        diff = float((as_cpu(tio_.gaussian_blur()[0]) - blur).abs().max())
        row["torchio_max_abs_diff"] = diff
        row["parity_torchio"] = diff <= PARITY_ATOL
    if monai_ is not None:
        ref = as_cpu(monai_.gaussian_blur()[0])
        row["monai_max_abs_diff"] = float((ref - blur).abs().max())
        # Away from the borders only the kernel differs (MONAI zero-pads, we reflect).
        r = [kernel_radius(s) for s in monai_.sigma_vox]
        inner = (slice(None), *(slice(k, n - k) for k, n in zip(r, blur.shape[1:], strict=True)))
        if all(n > 2 * k for k, n in zip(r, blur.shape[1:], strict=True)):
            row["monai_interior_max_abs_diff"] = float((ref[inner] - blur[inner]).abs().max())
    row["max_abs_input"] = float(x0.abs().max())
    return out


def main() -> None:
    parser = base_parser(__doc__, batch=1, repeats=5)
    parser.add_argument("--dose", type=float, default=0.25, help="ct_dose severity [fraction]")
    parser.add_argument("--reference-noise-hu", type=float, default=20.0, help="noise at full dose [HU]")
    parser.add_argument("--fwhm-mm", type=float, default=4.0, help="gaussian_blur severity [mm]")
    args = parser.parse_args()
    device = set_up(args)
    spacing = tuple(float(s) for s in args.spacing)
    x = random_volume(args, device, SEED)

    std_hu = args.reference_noise_hu / math.sqrt(args.dose)
    sigma_mm = args.fwhm_mm / FWHM_PER_SIGMA
    ours = Ours(x, spacing, args)
    tio_ = load(TorchIO, x, spacing, std_hu, sigma_mm)
    monai_ = load(Monai, x, spacing, std_hu, sigma_mm)

    libraries = library_versions(tio_, monai_, device)

    check = checks(ours, tio_, monai_, x)
    results: dict[str, Any] = {}
    for name in ("ct_dose", "gaussian_blur"):
        theirs = {
            "torchio": (None if tio_ is None else getattr(tio_, name), torch.device("cpu")),
            "monai": (None if monai_ is None else getattr(monai_, name), device),
        }
        row = timing_row(getattr(ours, name), theirs, args.repeats, device)
        row.update(check[name])
        results[name] = row

    report = {
        **report_header("perturbations", device, args),
        "dtype": "float32",
        "spacing_mm": list(spacing),
        "settings": {
            "dose_fraction": args.dose,
            "reference_noise_hu": args.reference_noise_hu,
            "noise_std_hu": std_hu,
            "fwhm_mm": args.fwhm_mm,
            "sigma_mm": sigma_mm,
            "sigma_vox": [sigma_mm / s for s in spacing],
        },
        "libraries": libraries,
        "perturbations": results,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
