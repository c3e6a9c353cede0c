"""Upper-abdomen shapes on the device: signed distances of the organs and painting a batch.

The layout (:mod:`phantoms.abdomen_anatomy`) is drawn on the host per case; :func:`stack_shapes` turns
a batch of layouts into tensors, the ``*_sd`` functions give signed distances (mm) on the grid or, in
float64, at host points, and :func:`paint_anatomy` renders a batch on a :class:`~phantoms.render.Canvas`.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import numpy as np
import torch
from torch import Tensor

from phantoms.abdomen_anatomy import (
    BONE_SHELL,
    BOWEL_WALL_MM,
    CORTEX_MM,
    LABEL,
    LIVER_BLEND_MM,
    STOMACH_BLEND_MM,
    STOMACH_WALL_MM,
    WALL_GAP_MM,
    AbdomenLayout,
    Box,
    Params,
    Shape,
)
from phantoms.render import Canvas, SparseSD


def stack_shapes(
    lay: Sequence[AbdomenLayout], device: torch.device, dtype: torch.dtype = torch.float32
) -> Params:
    """Per-case shape parameters as ``(B, ...)`` tensors (``B`` = number of layouts)."""
    return {
        k: torch.as_tensor(np.stack([x.shapes[k] for x in lay]), dtype=dtype, device=device)
        for k in lay[0].shapes
    }


def _col(t: Tensor) -> Tensor:
    return t.reshape(-1, 1, 1, 1)


def blob_sd(z: Tensor, y: Tensor, x: Tensor, q: Tensor) -> Tensor:
    """Signed distance (mm, approximate) to ellipsoids rotated about z; ``q`` is ``(B, 7)``."""
    cz, cy, cx, hz, hy, hx, angle = (_col(q[:, i]) for i in range(7))
    dy, dx = y - cy, x - cx
    cos, sin = torch.cos(angle), torch.sin(angle)
    u, v = dx * cos + dy * sin, dy * cos - dx * sin
    rho = torch.sqrt(((z - cz) / hz) ** 2 + (v / hy) ** 2 + (u / hx) ** 2)
    return (rho - 1.0) * torch.minimum(hz, torch.minimum(hy, hx))


def ellipse_sd(y: Tensor, x: Tensor, e: Tensor) -> Tensor:
    """Signed distance (mm, approximate) to z-extruded ellipses ``e = (cy, cx, hy, hx)``, ``(B, 4)``."""
    cy, cx, hy, hx = (_col(e[:, i]) for i in range(4))
    return (torch.sqrt(((y - cy) / hy) ** 2 + ((x - cx) / hx) ** 2) - 1.0) * torch.minimum(hy, hx)


def smooth_min(a: Tensor, b: Tensor, k: float) -> Tensor:
    """Polynomial smooth minimum of two distances (mm) with blend radius ``k``."""
    h = torch.clamp(0.5 + 0.5 * (b - a) / k, 0.0, 1.0)
    return b + (a - b) * h - k * h * (1.0 - h)


def below_diaphragm_sd(z: Tensor, y: Tensor, x: Tensor, p: Params) -> Tensor:
    """Signed distance (mm) to the diaphragm, negative below it: the higher of two paraboloid domes."""
    surface = slope2 = None
    for side in range(2):
        top, y0, x0, ay, ax, depth = (_col(p["domes"][:, side, i]) for i in range(6))
        uy, ux = (y - y0) / ay, (x - x0) / ax
        height = top - depth * (uy * uy + ux * ux)
        g2 = (2.0 * depth * uy / ay) ** 2 + (2.0 * depth * ux / ax) ** 2
        if surface is None:
            surface, slope2 = height, g2
        else:
            higher = height > surface
            surface, slope2 = torch.where(higher, height, surface), torch.where(higher, g2, slope2)
    return (z - surface) / torch.sqrt(1.0 + slope2)


def _abdominal(d: Tensor, z: Tensor, y: Tensor, x: Tensor, p: Params) -> Tensor:
    """Clip a shape to below the diaphragm and :data:`WALL_GAP_MM` inside the abdominal wall."""
    d = torch.maximum(d, below_diaphragm_sd(z, y, x, p))
    return torch.maximum(d, ellipse_sd(y, x, p["cavity"][:, 0]) + WALL_GAP_MM)


def liver_sd(z: Tensor, y: Tensor, x: Tensor, p: Params) -> Tensor:
    """Liver: smooth union of its lobes, surface waves, under the diaphragm and inside the wall."""
    q = p["liver"]
    d = blob_sd(z, y, x, q[:, 0])
    for i in range(1, q.shape[1]):
        d = smooth_min(d, blob_sd(z, y, x, q[:, i]), LIVER_BLEND_MM)
    for w in p["waves"].unbind(1):
        phase = _col(w[:, 0]) * z + _col(w[:, 1]) * y + _col(w[:, 2]) * x + _col(w[:, 3])
        d = d - _col(w[:, 4]) * torch.sin(phase)
    return _abdominal(d, z, y, x, p)


def organ_sd(
    z: Tensor, y: Tensor, x: Tensor, p: Params, key: str, index: int = 0, region: str = ""
) -> Tensor:
    """Signed distance (mm) to the dense organ ``p[key][:, index]``, clipped to ``region``.

    ``lungs`` rows are z-extruded ellipses, the two ``stomach`` rows (body, fundus) are blended by
    :func:`smooth_min`, other rows are blobs. ``region="abdomen"`` keeps the organ under the diaphragm and
    inside the wall, ``"thorax"`` above the diaphragm.
    """
    if key == "lungs":
        d = ellipse_sd(y, x, p[key][:, index])
    elif key == "stomach":
        d = smooth_min(blob_sd(z, y, x, p[key][:, 0]), blob_sd(z, y, x, p[key][:, 1]), STOMACH_BLEND_MM)
    else:
        d = blob_sd(z, y, x, p[key][:, index])
    if region == "abdomen":
        return _abdominal(d, z, y, x, p)
    return torch.maximum(d, -below_diaphragm_sd(z, y, x, p)) if region == "thorax" else d


def blob_box(rows: np.ndarray, pad: float = 0.0) -> Box:
    """Bounding box ``(lo, hi)`` (mm) of blob rows ``(..., 7)`` over all cases."""
    rows = rows.reshape(-1, 7)
    reach = np.c_[rows[:, 3], rows[:, 4:6].max(1), rows[:, 4:6].max(1)] + pad
    return (rows[:, :3] - reach).min(0), (rows[:, :3] + reach).max(0)


def paint_anatomy(cv: Canvas, lay: Sequence[AbdomenLayout], hu: dict[str, Tensor]) -> None:
    """Paint the layouts' anatomy on ``cv``, outside in; ``hu[name]`` (``(B, 1, 1, 1)``) is a label's value.

    Dense shapes are evaluated over their bounding box on the grid, tubes as capsules in their boxes.
    """
    p = stack_shapes(list(lay), cv.device)
    shapes = {k: np.stack([x.shapes[k] for x in lay]) for k in lay[0].shapes}
    outline, inf, zero = (
        np.stack([x.outline for x in lay]),
        np.full((len(lay), 1), np.inf),
        0 * shapes["gas_y"],
    )
    for k, name in enumerate(("subcutaneous_fat", "muscle", "visceral_fat")):
        cv.paint_ellipsoids(0 * outline[:, :, 0], np.c_[inf, outline[:, k, ::-1]], hu[name], LABEL[name])

    def column(e: np.ndarray, name: str) -> None:  # z-extruded ellipses (cy, cx, hy, hx) per case
        cv.paint_ellipsoids(np.c_[zero, e[:, :2]], np.c_[inf, e[:, 2:]], hu[name], LABEL[name])

    def organ(key: str, index: int = 0, region: str = "") -> Shape:
        return partial(organ_sd, key=key, index=index, region=region)

    def dense(
        shape: Shape, box: Box, name: str, within: str = "", offset: float = 0.0, level: Tensor | None = None
    ) -> None:
        window = cv.window(box[0] - cv.ramp_mm, box[1] + cv.ramp_mm)
        z, y, x = cv.coords(window)
        sd = shape(z, y, x, p) + offset
        sd = sd if level is None else torch.maximum(sd, y - level)  # clipped to y < level
        cv.paint(sd, hu[name], LABEL[name], LABEL.get(within), window)

    def sparse(tubes: str, name: str, within: str = "") -> SparseSD:
        sd = cv.union_sd([x.tubes[tubes] for x in lay])
        cv.paint(sd, hu[name], LABEL[name], LABEL.get(within))
        return sd

    z_low = (shapes["domes"][..., 0] - 1.5 * shapes["domes"][..., 5]).min()  # below the lowest lung base
    for side in range(2):
        e = shapes["lungs"][:, side]
        box = (np.r_[z_low, (e[:, :2] - e[:, 2:]).min(0)], np.r_[np.inf, (e[:, :2] + e[:, 2:]).max(0)])
        dense(organ("lungs", side, "thorax"), box, "lung", "visceral_fat")
    dense(organ("heart", 0, "thorax"), blob_box(shapes["heart"]), "heart", "visceral_fat")
    box, stomach = blob_box(shapes["stomach"]), organ("stomach", 0, "abdomen")
    dense(stomach, box, "stomach", "visceral_fat")
    dense(stomach, box, "gi_fluid", "stomach", STOMACH_WALL_MM)
    level = cv.column(shapes["gas_y"][:, 0])  # supine: gas lies anterior to (y below) the fluid level
    dense(stomach, box, "gi_gas", "gi_fluid", STOMACH_WALL_MM, level)
    dense(organ("spleen", 0, "abdomen"), blob_box(shapes["spleen"]), "spleen")
    sparse("pancreas", "pancreas", "visceral_fat")
    dense(liver_sd, blob_box(shapes["liver"], 5 * 3.2 + LIVER_BLEND_MM / 4), "liver")  # waves, blend
    dense(organ("gallbladder", 0), blob_box(shapes["gallbladder"]), "gallbladder")
    sparse("hepatic_vein", "hepatic_vein", "liver")
    sparse("portal_tree", "portal_vein", "liver")
    for e in shapes["paraspinal"].transpose(1, 0, 2):
        column(e, "muscle")
    sparse("psoas", "muscle")
    for side in range(2):
        box = blob_box(shapes["kidney"][:, side])
        dense(organ("kidney", side), box, "kidney_cortex")
        dense(organ("kidney_medulla", side), box, "kidney_medulla", "kidney_cortex")
        dense(organ("renal_sinus", side), blob_box(shapes["renal_sinus"][:, side]), "visceral_fat")
    for name in ("aorta", "ivc", "portal_vein"):
        sparse(name, name)
    for walls, content in (("bowel_gas", "gi_gas"), ("bowel_fluid", "gi_fluid")):
        sd = sparse(walls, "bowel", "visceral_fat")
        cv.paint(SparseSD(sd.index, sd.sd + BOWEL_WALL_MM), hu[content], LABEL[content], LABEL["bowel"])
    column(shapes["canal"][:, 0], "spinal_canal")
    _paint_spine(cv, lay, p, hu)
    sd = sparse("bone", "cortical_bone")
    shell = torch.as_tensor([BONE_SHELL * x.scale for x in lay], device=cv.device)[sd.index // cv.voxels]
    cv.paint(SparseSD(sd.index, sd.sd + shell), hu["trabecular_bone"], LABEL["trabecular_bone"])


def _paint_spine(cv: Canvas, lay: Sequence[AbdomenLayout], p: Params, hu: dict[str, Tensor]) -> None:
    """Vertebral bodies (cortical shell, trabecular core) and the discs between them."""
    e = np.stack([x.shapes["spine"][0] for x in lay])
    lo = np.r_[-np.inf, (e[:, :2] - e[:, 2:]).min(0) - cv.ramp_mm]
    z, y, x = cv.coords(window := cv.window(lo, np.r_[np.inf, (e[:, :2] + e[:, 2:]).max(0) + cv.ramp_mm]))
    column = ellipse_sd(y, x, p["spine"][:, 0])
    centres = torch.as_tensor(np.stack([v.vertebrae_z for v in lay]), dtype=torch.float32, device=cv.device)
    slab = (z.view(1, 1, -1) - centres.unsqueeze(-1)).abs().min(1).values.view(len(lay), -1, 1, 1)
    body = torch.maximum(column, slab - cv.column([13.0 * v.scale for v in lay]))
    cv.paint(column, hu["intervertebral_disc"], LABEL["intervertebral_disc"], window=window)
    cv.paint(body, hu["cortical_bone"], LABEL["cortical_bone"], window=window)
    cv.paint(body + CORTEX_MM, hu["trabecular_bone"], LABEL["trabecular_bone"], window=window)
