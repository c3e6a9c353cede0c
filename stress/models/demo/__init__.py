"""The demo nodule classifier: a small fully convolutional 3D network, shipped with two trained versions.

* ``reference`` (v1): trained on phantoms with dose reduction (dose fraction log-uniform in
  [0.03, 1]) and, for half the cases, blur (FWHM uniform in [0, 8] mm).
* ``candidate`` (v2): the same network trained on full-dose, unblurred images only: an "update"
  whose robustness to dose and blur has to be shown rather than assumed.

Both are reproduced by ``python -m stress.models.demo.train`` (see docs/demo-model.md).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

WEIGHTS_DIR = Path(__file__).parent / "weights"
HU_WINDOW = (-1000.0, 400.0)


class NoduleNet(nn.Module):
    """Tiny fully convolutional nodule detector (10,641 parameters). Input ``(B, 1, D, H, W)`` in HU.

    A heat map of nodule logits is computed at half resolution; the case logit is its maximum,
    so the case probability is that of the most suspicious location. Training supervises the
    heat map with the phantoms' exact nodule masks (dense, fast to learn) and the case logit
    with the label.
    """

    version = "unversioned"

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv3d(1, 8, 3, padding=1, padding_mode="replicate"),
            nn.ReLU(),
            nn.MaxPool3d(2),
            nn.Conv3d(8, 16, 3, padding=1, padding_mode="replicate"),
            nn.ReLU(),
            nn.Conv3d(16, 16, 3, padding=2, dilation=2, padding_mode="replicate"),
            nn.ReLU(),
            nn.Conv3d(16, 1, 1),
        )

    def heatmap(self, image: Tensor) -> Tensor:
        """Nodule logits ``(B, 1, D/2, H/2, W/2)`` (HU clipped to the lung window, scaled to [-1, 1])."""
        lo, hi = HU_WINDOW
        return self.features((image.clamp(lo, hi) - (lo + hi) / 2) / ((hi - lo) / 2))

    def logits(self, image: Tensor) -> Tensor:
        """Case logits ``(B,)``: the maximum of the heat map."""
        return torch.amax(self.heatmap(image), dim=(1, 2, 3, 4))

    def predict(self, image: Tensor, spacing_mm: tuple[float, float, float]) -> Tensor:
        """Probability of a nodule per case, ``(B,)``."""
        return torch.sigmoid(self.logits(image))


def _load(version: str, device: torch.device | str) -> NoduleNet:
    net = NoduleNet()
    path = WEIGHTS_DIR / f"nodule_{version}.pt"
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    net.version = version
    net.weight_files = [path]
    return net.eval().to(device)


def reference(device: torch.device | str = "cpu") -> NoduleNet:
    """Demo model v1 (trained with dose augmentation)."""
    return _load("v1", device)


def candidate(device: torch.device | str = "cpu") -> NoduleNet:
    """Demo model v2 (trained on full-dose images only)."""
    return _load("v2", device)
