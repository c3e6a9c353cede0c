"""A PNG montage of phantom cases: axial, coronal and sagittal slices with the lesion mask outlined.

Display window (:func:`display_window`): a generator's own window where it has one (chest CT: the lung
window), else by modality: CT soft tissue -160..240 HU, MR the 1st to 99.5th percentile of the case.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from phantoms.base import CaseBatch  # noqa: E402

WINDOWS = {"chest_ct": (-1000.0, 400.0)}  # generator -> fixed window (lung window, HU)
CT_WINDOW_HU = (-160.0, 240.0)  # soft-tissue window: CT generators without their own
MR_PERCENTILES = (1.0, 99.5)  # MR: signal has no absolute scale; window on the case's own histogram
# Slices of negative cases pass through the volume centre, or through this point (z, y, x mm): the brain's
# midline lies in the interhemispheric fissure, so its sagittal view is parasagittal (left ventricle).
NEGATIVE_CENTRE_MM = {"brain_mri": (0.0, 0.0, 12.0)}


def display_window(batch: CaseBatch, b: int) -> tuple[float, float]:
    """Grey-level window ``(low, high)`` for case ``b``: per generator, else per modality."""
    if batch.generator in WINDOWS:
        return WINDOWS[batch.generator]
    if batch.modality == "CT":
        return CT_WINDOW_HU
    low, high = np.percentile(batch.image[b, 0].detach().cpu().numpy(), MR_PERCENTILES)
    return float(low), float(max(high, low + 1e-6))


def pick_cases(batch: CaseBatch, n: int) -> list[int]:
    """Up to ``n`` batch positions covering distinct (label, attribute values) first, then the rest."""
    seen, first, rest = set(), [], []
    for b in range(batch.image.shape[0]):
        key = (batch.label[b], tuple(sorted(batch.attributes[b].items())))
        (rest if key in seen else first).append(b)
        seen.add(key)
    return (first + rest)[:n]


def _centre(batch: CaseBatch, b: int) -> tuple[int, int, int]:
    """Slice indices through the lesion centre (negative cases: :data:`NEGATIVE_CENTRE_MM` or the centre)."""
    shape = batch.image.shape[2:]
    if batch.lesions and batch.lesions[b]:
        mm = batch.lesions[b][0]["centre_mm"]
    elif batch.generator in NEGATIVE_CENTRE_MM:
        mm = NEGATIVE_CENTRE_MM[batch.generator]
    else:
        return tuple(n // 2 for n in shape)
    idx = [round(c / s + (n - 1) / 2) for c, s, n in zip(mm, batch.spacing_mm, shape, strict=True)]
    return tuple(int(np.clip(i, 0, n - 1)) for i, n in zip(idx, shape, strict=True))


def save_montage(batch: CaseBatch, positions: list[int], path: Path) -> Path:
    """One row per case (axial, coronal, sagittal); mask contours in red; titles give the attributes."""
    sz, sy, sx = batch.spacing_mm
    fig, axes = plt.subplots(len(positions), 3, figsize=(9.0, 2.9 * len(positions)), dpi=90, squeeze=False)
    for row, b in enumerate(positions):
        img = batch.image[b, 0].detach().cpu().numpy()
        mask = batch.mask[b, 0].detach().cpu().numpy()
        k, j, i = _centre(batch, b)
        low, high = display_window(batch, b)
        views = [
            (img[k], mask[k], sy / sx),
            (img[:, j, :], mask[:, j, :], sz / sx),
            (img[:, :, i], mask[:, :, i], sz / sy),
        ]
        for col, (plane, outline, aspect) in enumerate(views):
            ax = axes[row, col]
            ax.imshow(
                plane,
                cmap="gray",
                vmin=low,
                vmax=high,
                aspect=aspect,
                origin="upper" if col == 0 else "lower",
            )
            if outline.any():
                ax.contour(outline, levels=[0.5], colors="red", linewidths=0.8)
            ax.set_xticks([])
            ax.set_yticks([])
        attrs = "\n".join(f"{key}={value}" for key, value in batch.attributes[b].items())
        axes[row, 0].set_ylabel(f"case {batch.case_index[b]}, label {batch.label[b]}\n{attrs}", fontsize=6)
    for col, name in enumerate(("axial", "coronal", "sagittal")):
        axes[0, col].set_xlabel(name, fontsize=8)
        axes[0, col].xaxis.set_label_position("top")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", metadata={"Software": None})
    plt.close(fig)
    return path
