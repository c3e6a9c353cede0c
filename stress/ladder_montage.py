"""A PNG of perturbations at each level of their default ladder, on one phantom case.

One row per perturbation, one column per level (the unperturbed case first): the axial slice through
the lesion centre (or the volume centre). CT is shown in a soft-tissue window (-160 to 240 HU), where
artefacts of tens of HU are visible; MR in a window fixed from the clean image (1st to 99.5th
percentile), so that intensity changes stay visible. The column titles give each level's physical value.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from perturbations import PERTURBATIONS  # noqa: E402
from phantoms.base import CaseBatch  # noqa: E402
from phantoms.population import case_rng  # noqa: E402
from phantoms.preview import CT_WINDOW_HU, display_window  # noqa: E402

STREAM_MONTAGE = 7  # random stream of the montage's perturbation parameters


def _slice_index(batch: CaseBatch, b: int) -> int:
    """Axial slice through the first lesion's centre, else the middle slice."""
    depth = batch.image.shape[2]
    if batch.lesions and batch.lesions[b]:
        z = batch.lesions[b][0]["centre_mm"][0]
        return int(np.clip(round(z / batch.spacing_mm[0] + (depth - 1) / 2), 0, depth - 1))
    return depth // 2


def ladder_images(
    batch: CaseBatch, b: int, name: str, seed: int, spec_params: Mapping[str, Any] | None = None
) -> list[tuple[float, np.ndarray]]:
    """``(severity, axial slice)`` for the nominal severity and every level of ``name``'s ladder.

    ``spec_params`` are the perturbation's settings (its defaults when ``None``).
    """
    entry = PERTURBATIONS.get(name)
    k = _slice_index(batch, b)
    levels = [entry.severity.nominal, *entry.ladder]
    x = batch.image[b : b + 1].expand(len(levels), -1, -1, -1, -1).contiguous()
    spec = entry.spec.model_validate(dict(spec_params or {}))
    params = [
        entry.sample(spec, float(v), case_rng(seed, STREAM_MONTAGE, batch.case_index[b])) for v in levels
    ]
    with torch.inference_mode():
        y = entry.apply(x, batch.spacing_mm, params)
    return [(float(v), y[i, 0, k].detach().cpu().numpy()) for i, v in enumerate(levels)]


def save_ladder_montage(
    batch: CaseBatch,
    b: int,
    names: Sequence[str],
    path: Path,
    seed: int = 0,
    spec_params: Mapping[str, Mapping[str, Any]] | None = None,
) -> Path:
    """Rows = perturbations ``names``, columns = nominal + five ladder levels, for case ``b``.

    ``spec_params`` maps a perturbation name to its settings (defaults for names not in it).
    """
    low, high = CT_WINDOW_HU if batch.modality == "CT" else display_window(batch, b)
    cols = 6
    fig, axes = plt.subplots(len(names), cols, figsize=(1.9 * cols, 2.1 * len(names)), dpi=80, squeeze=False)
    for row, name in enumerate(names):
        entry = PERTURBATIONS.get(name)
        for col, (value, img) in enumerate(
            ladder_images(batch, b, name, seed, (spec_params or {}).get(name))[:cols]
        ):
            ax = axes[row, col]
            ax.imshow(img, cmap="gray", vmin=low, vmax=high, aspect=batch.spacing_mm[1] / batch.spacing_mm[2])
            ax.set_xticks([])
            ax.set_yticks([])
            label = "nominal" if col == 0 else f"level {col}"
            ax.set_title(f"{label}: {value:g}", fontsize=7)
        unit = entry.severity.unit if len(entry.severity.unit) <= 24 else "see docs"
        axes[row, 0].set_ylabel(f"{name}\n{entry.severity.name} [{unit}]", fontsize=6)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", metadata={"Software": None})
    plt.close(fig)
    return path
