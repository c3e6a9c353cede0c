"""Train the demo nodule classifiers on chest_ct phantoms, reproducibly (no global seed is set or used).

    python -m stress.models.demo.train            # writes weights/nodule_v1.pt and nodule_v2.pt

v1 sees dose-reduced images (dose fraction log-uniform in [0.03, 1]) and blur (FWHM uniform in
[0, 8] mm) during training; v2 sees full-dose images only. Everything random comes from seeded
generators: the phantoms from (seed, case index), the weight initialisation from a
``torch.Generator`` (overwriting the default initialisation drawn when the module is built),
the batch order and augmentation from ``numpy.random.Generator`` streams.
Re-running with the same torch version and thread count gives bit-identical weights.
"""

from __future__ import annotations

import argparse
import hashlib
import math
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_curve
from torch import nn

from perturbations import PERTURBATIONS
from perturbations.blur import GaussianBlurSpec
from perturbations.dose import CTDoseSpec
from phantoms.chest_ct import ChestCTSpec, generate_chest_ct
from phantoms.population import PopulationSpec
from stress.models.demo import WEIGHTS_DIR, NoduleNet
from stress.stats.metrics import compute_roc_auc

DEMO_GEOMETRY = {"shape": (32, 64, 64), "spacing_mm": (5.0, 5.0, 5.0)}
DEMO_POPULATION = PopulationSpec(prevalence=0.5, attributes={"lesion_type": {"solid": 1.0}})
TRAIN_SEED = 1234
VALIDATION_SEED = 4321
DOSE = CTDoseSpec(reference_noise_hu=20.0)


def init_weights(net: nn.Module, generator: torch.Generator) -> None:
    """He-uniform weights and uniform biases (PyTorch's defaults) drawn from ``generator``."""
    for module in net.modules():
        if isinstance(module, (nn.Conv3d, nn.Linear)):
            nn.init.kaiming_uniform_(module.weight, a=math.sqrt(5), generator=generator)
            fan_in = module.weight[0].numel()
            nn.init.uniform_(module.bias, -1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in), generator=generator)


def balanced_voxel_loss(heat: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean BCE over nodule voxels plus mean BCE over background voxels (nodules are ~1e-4 of a volume)."""
    bce = nn.functional.binary_cross_entropy_with_logits(heat, target, reduction="none")
    return (bce * target).sum() / target.sum().clamp(min=1.0) + (bce * (1 - target)).sum() / (
        1 - target
    ).sum()


def augment(images: torch.Tensor, spacing, rng: np.random.Generator, robust: bool) -> torch.Tensor:
    """Acquisition noise (and, for the robust model, dose reduction and blur) for one batch."""
    b = images.shape[0]
    dose = PERTURBATIONS.get("ct_dose")
    doses = np.exp(rng.uniform(math.log(0.03), 0.0, size=b)) if robust else np.ones(b)
    x = dose.apply(images, spacing, [dose.sample(DOSE, float(d), rng) for d in doses])
    if robust:
        blur = PERTURBATIONS.get("gaussian_blur")
        fwhm = rng.uniform(0.0, 8.0, size=b) * (rng.random(b) < 0.5)
        x = blur.apply(x, spacing, [blur.sample(GaussianBlurSpec(), float(f), rng) for f in fwhm])
    return x


def make_cases(n: int, seed: int, spec: ChestCTSpec) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Noiseless phantom images ``(n, 1, D, H, W)``, nodule masks (same shape) and labels ``(n,)``."""
    pop = DEMO_POPULATION
    images, masks, labels = [], [], []
    for start in range(0, n, 32):
        batch = generate_chest_ct(spec, pop, seed, range(start, min(start + 32, n)), torch.device("cpu"))
        images.append(batch.image)
        masks.append(batch.mask)
        labels.extend(batch.label)
    return torch.cat(images), torch.cat(masks), torch.tensor(labels, dtype=torch.float32)


def train(
    version: str,
    n_cases: int = 320,
    epochs: int = 12,
    batch_size: int = 16,
    spec: ChestCTSpec | None = None,
    cases=None,
    log: bool = False,
) -> NoduleNet:
    """Train one demo model version (``v1`` robust, ``v2`` full dose only) and return it."""
    spec = spec or ChestCTSpec(**DEMO_GEOMETRY)
    images, masks, labels = cases if cases is not None else make_cases(n_cases, TRAIN_SEED, spec)
    targets = nn.functional.max_pool3d(masks.float(), 2)  # heat-map targets at the network's resolution
    net = NoduleNet()
    init_weights(net, torch.Generator().manual_seed(TRAIN_SEED))
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    case_loss = nn.BCEWithLogitsLoss()
    robust = version == "v1"
    for epoch in range(epochs):
        losses = []
        rng = np.random.default_rng([TRAIN_SEED, epoch])
        order = rng.permutation(len(labels))
        for start in range(0, len(order), batch_size):
            idx = torch.from_numpy(order[start : start + batch_size])
            x = augment(images[idx], spec.spacing_mm, rng, robust)
            opt.zero_grad()
            heat = net.heatmap(x)
            loss = balanced_voxel_loss(heat, targets[idx]) + case_loss(
                heat.amax(dim=(1, 2, 3, 4)), labels[idx]
            )
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        if log:
            print(f"{version} epoch {epoch}: mean loss {sum(losses) / len(losses):.4f}", flush=True)
    net.version = version
    return net.eval()


def validation_scores(net: NoduleNet, images: torch.Tensor, dose: float, spacing) -> np.ndarray:
    """Scores of ``net`` on the validation ``images`` at one dose fraction."""
    rng = np.random.default_rng([VALIDATION_SEED, int(dose * 1000)])
    pert = PERTURBATIONS.get("ct_dose")
    x = pert.apply(images, spacing, [pert.sample(DOSE, dose, rng) for _ in range(len(images))])
    with torch.inference_mode():
        return net.predict(x, spacing).numpy()


def evaluate(net: NoduleNet, images: torch.Tensor, labels: torch.Tensor, dose: float, spacing) -> float:
    """AUC of ``net`` on ``images`` at one dose fraction."""
    return compute_roc_auc(labels.numpy(), validation_scores(net, images, dose, spacing))


def operating_threshold(net: NoduleNet, images: torch.Tensor, labels: torch.Tensor, spacing) -> float:
    """The Youden-optimal threshold (max sensitivity + specificity - 1) on the full-dose validation cases.

    The demo scenarios pre-specify it as each model's ``threshold``: it comes from validation data,
    never from the cases a scenario tests.
    """
    fpr, tpr, thresholds = roc_curve(labels.numpy(), validation_scores(net, images, 1.0, spacing))
    return float(thresholds[int(np.argmax(tpr - fpr))])


def main(argv: list[str] | None = None) -> None:
    """Train v1 and v2, save their weights, print SHA-256 and validation AUCs."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=WEIGHTS_DIR)
    parser.add_argument("--n-cases", type=int, default=320)
    parser.add_argument("--epochs", type=int, default=12)
    args = parser.parse_args(argv)
    spec = ChestCTSpec(**DEMO_GEOMETRY)
    cases = make_cases(args.n_cases, TRAIN_SEED, spec)
    val_images, _, val_labels = make_cases(128, VALIDATION_SEED, spec)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for version in ("v1", "v2"):
        net = train(version, args.n_cases, args.epochs, spec=spec, cases=cases, log=True)
        path = args.out_dir / f"nodule_{version}.pt"
        torch.save(net.state_dict(), path)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        aucs = {
            d: round(evaluate(net, val_images, val_labels, d, spec.spacing_mm), 3) for d in (1.0, 0.25, 0.05)
        }
        threshold = operating_threshold(net, val_images, val_labels, spec.spacing_mm)
        print(
            f"{version}: {path} sha256={digest} validation AUC by dose {aucs}; "
            f"Youden threshold at full dose {threshold:.4f}"
        )


if __name__ == "__main__":
    main()
