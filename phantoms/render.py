"""Rasteriser shared by the procedural phantoms: signed distances in mm, partial volume, label maps.

Conventions. A volume has axes ``(D, H, W)`` = ``(z, y, x)``; voxel ``(k, j, i)`` has its centre at
``z = (k - (D-1)/2) sz`` mm (likewise y, x), so the grid is centred on the origin and matches the
export geometry (:mod:`phantoms.export`). Points are stored ``(z, y, x)`` in mm.

A structure is painted from its signed distance ``sd`` (mm, negative inside): the voxel's value is
blended towards the structure's value by the fraction ``clamp(0.5 - sd / ramp, 0, 1)`` (a linear
partial-volume ramp one mean voxel wide), and the voxel takes the structure's label iff its centre is
inside (``sd <= 0``). Later structures are painted over earlier ones.

Big structures (outlines, lungs, organs) are evaluated on the whole grid with broadcasting, so
z-extruded shapes cost a 2-D evaluation. Small ones (vessel and airway trees, ribs, nodules, spicules)
are batches of tapered capsules evaluated only inside each capsule's bounding box: every capsule of
every case gets a box of the same size, the distances of all boxes are computed in one batched
expression and reduced into the volume with ``scatter_reduce(amin)``, so there is no per-case or
per-capsule Python loop and the work scales with the structures' size, not the volume's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

CAPSULE_FIELDS = 8  # z0, y0, x0, z1, y1, x1, r0, r1 (mm)
FAR_MM = 1.0e6  # centre of a padding capsule: far outside any volume
Window = tuple[slice, slice, slice]
BOX_CLASSES_VOXELS = (
    (0.0, 4.0),
    (4.0, 6.0),
    (6.0, 9.0),
    (9.0, 13.0),
    (13.0, 19.0),
    (19.0, 28.0),
    (28.0, float("inf")),
)


class Canvas:
    """A batch of volumes being painted: image values, label map and the voxel-centre grid.

    Args:
        batch: number of cases ``B``.
        shape: ``(D, H, W)`` voxels.
        spacing_mm: ``(D, H, W)`` voxel size in mm.
        device: where the tensors live.
        background: value of unpainted voxels (e.g. -1000 HU of air).
    """

    def __init__(
        self,
        batch: int,
        shape: Sequence[int],
        spacing_mm: Sequence[float],
        device: torch.device,
        background: float,
    ) -> None:
        self.shape = tuple(int(n) for n in shape)
        self.spacing = tuple(float(s) for s in spacing_mm)
        self.device = device
        self.ramp_mm = float(np.mean(self.spacing))
        self.image = torch.full((batch, *self.shape), float(background), dtype=torch.float32, device=device)
        self.labels = torch.zeros((batch, *self.shape), dtype=torch.uint8, device=device)
        axes = [
            (torch.arange(n, device=device, dtype=torch.float32) - (n - 1) / 2) * s
            for n, s in zip(self.shape, self.spacing, strict=True)
        ]
        self.z = axes[0].view(1, -1, 1, 1)
        self.y = axes[1].view(1, 1, -1, 1)
        self.x = axes[2].view(1, 1, 1, -1)

    @property
    def batch(self) -> int:
        """Number of cases."""
        return self.image.shape[0]

    def column(self, values: Sequence[float] | np.ndarray) -> Tensor:
        """Per-case scalars as a ``(B, 1, 1, 1)`` float32 tensor that broadcasts over the grid."""
        return torch.as_tensor(np.asarray(values, dtype=np.float32), device=self.device).view(-1, 1, 1, 1)

    def window(self, lo_mm: np.ndarray, hi_mm: np.ndarray) -> Window:
        """Index slices ``(z, y, x)`` of the smallest sub-grid holding the box ``[lo_mm, hi_mm]`` (mm).

        Infinite bounds take the whole axis.
        """
        slices = []
        for a, (n, s) in enumerate(zip(self.shape, self.spacing, strict=True)):
            origin = -(n - 1) / 2 * s
            lo = 0 if not np.isfinite(lo_mm[a]) else int(np.clip(np.floor((lo_mm[a] - origin) / s), 0, n))
            hi = n if not np.isfinite(hi_mm[a]) else int(np.clip(np.ceil((hi_mm[a] - origin) / s) + 1, lo, n))
            slices.append(slice(lo, hi))
        return tuple(slices)  # type: ignore[return-value]

    def coords(self, window: Window | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Voxel-centre coordinates (mm) ``z (1, d, 1, 1)``, ``y (1, 1, h, 1)``, ``x (1, 1, 1, w)``."""
        if window is None:
            return self.z, self.y, self.x
        return self.z[:, window[0]], self.y[:, :, window[1]], self.x[:, :, :, window[2]]

    def paint(
        self,
        sd: Tensor | SparseSD,
        value: float | Tensor,
        label: int,
        within: int | None = None,
        window: Window | None = None,
    ) -> None:
        """Blend ``value`` where ``sd < ramp / 2`` and label voxels whose centre is inside.

        Args:
            sd: signed distance in mm, either dense and broadcastable to ``(B, D, H, W)`` (or to the
                ``window``; ``(B, 1, H, W)`` for a shape extruded along z) or a :class:`SparseSD`.
            value: the structure's value (scalar or ``(B, 1, 1, 1)``).
            label: label written where ``sd <= 0``.
            within: optional label; the structure is clipped to the voxels that carry it now.
            window: the sub-grid a dense ``sd`` covers (see :meth:`window`).
        """
        if isinstance(sd, SparseSD):
            self._paint_sparse(sd, value, label, within)
            return
        window = window or (slice(None),) * 3
        image, labels = (
            self.image[:, window[0], window[1], window[2]],
            self.labels[:, window[0], window[1], window[2]],
        )
        frac = torch.clamp(0.5 - sd / self.ramp_mm, 0.0, 1.0)
        inside = sd <= 0.0
        if within is not None:
            keep = labels == within
            frac = frac * keep
            inside = inside & keep
        end = value if isinstance(value, Tensor) else torch.tensor(float(value), device=self.device)
        image.lerp_(end, frac)
        labels.masked_fill_(inside.expand_as(labels), label)

    def paint_ellipsoids(
        self,
        centre: np.ndarray,
        half_axes: np.ndarray,
        value: float | Tensor,
        label: int,
        within: int | None = None,
    ) -> Tensor:
        """Paint one axis-aligned ellipsoid per case, evaluated only over the batch's bounding box.

        Args:
            centre: ``(B, 3)`` mm, ``(z, y, x)``.
            half_axes: ``(B, 3)`` mm; ``inf`` extrudes along that axis.
            value: the structure's value (scalar or ``(B, 1, 1, 1)``).
            label: label written inside.
            within: optional label the structure is clipped to.

        Returns:
            The signed distance over the window, for structures derived from this one.
        """
        centre, half_axes = np.asarray(centre, dtype=np.float64), np.asarray(half_axes, dtype=np.float64)
        reach = half_axes + self.ramp_mm
        window = self.window((centre - reach).min(0), (centre + reach).max(0))
        sd = ellipsoid_sd(
            self,
            torch.as_tensor(centre, dtype=torch.float32, device=self.device),
            torch.as_tensor(half_axes, dtype=torch.float32, device=self.device),
            window,
        )
        self.paint(sd, value, label, within, window)
        return sd

    def _paint_sparse(self, sd: SparseSD, value: float | Tensor, label: int, within: int | None) -> None:
        frac = torch.clamp(0.5 - sd.sd / self.ramp_mm, 0.0, 1.0)
        inside = sd.sd <= 0.0
        if within is not None:
            keep = self.labels.view(-1)[sd.index] == within
            frac = frac * keep
            inside = inside & keep
        if isinstance(value, Tensor):
            value = value.reshape(-1)[sd.index // self.voxels]
        image, labels = self.image.view(-1), self.labels.view(-1)
        current = image[sd.index]
        image[sd.index] = current + frac * (value - current)
        labels[sd.index[inside]] = label

    @property
    def voxels(self) -> int:
        """Voxels per case."""
        return int(np.prod(self.shape))

    def region(self, *labels: int) -> Tensor:
        """Bool mask of voxels carrying any of ``labels``."""
        out = self.labels == labels[0]
        for label in labels[1:]:
            out |= self.labels == label
        return out

    def union_sd(self, per_case: Sequence[np.ndarray]) -> SparseSD:
        """Signed distance (mm) to each case's union of capsules (``(S_i, 8)`` arrays, mm), near them.

        Long capsules are cut into pieces about ``2 (r + ramp)`` long, pieces whose box misses the
        volume are dropped, and the rest (of all cases together, without padding) are evaluated in
        classes of similar box size, so that thin branches do not pay for the boxes of thick ones.
        Boxes are computed on the host from the host-side capsules: nothing is read back from the device.
        """
        n = np.array(self.shape)
        spacing = np.array(self.spacing)
        origin = -(n - 1) / 2 * spacing
        pieces, cases = [], []
        for b, caps in enumerate(per_case):
            caps = np.asarray(caps, dtype=np.float64).reshape(-1, CAPSULE_FIELDS)
            caps = subdivide(caps, 2.0 * (np.maximum(caps[:, 6], caps[:, 7]) + self.ramp_mm))
            pieces.append(caps)
            cases.append(np.full(len(caps), b))
        caps, case = np.concatenate(pieces), np.concatenate(cases)
        # Boxes hold every voxel centre within r + ramp / 2 of the axis: all that can have sd < ramp / 2.
        reach = (np.maximum(caps[:, 6], caps[:, 7]) + 0.5 * self.ramp_mm)[:, None]
        lo = np.floor((np.minimum(caps[:, 0:3], caps[:, 3:6]) - reach - origin) / spacing)
        hi = np.ceil((np.maximum(caps[:, 0:3], caps[:, 3:6]) + reach - origin) / spacing)
        lo, hi = np.clip(lo, 0, n).astype(np.int64), np.clip(hi, -1, n - 1).astype(np.int64)
        extent = hi - lo + 1
        touching = (extent > 0).all(axis=1)
        size = extent.max(axis=1)
        index, dist = [], []
        for low, high in BOX_CLASSES_VOXELS:
            sel = touching & (size > low) & (size <= high)
            if sel.any():
                i, d = self.capsule_entries(caps[sel], case[sel], lo[sel], hi[sel])
                index.append(i)
                dist.append(d)
        if not index:
            empty = torch.zeros(0, device=self.device)
            return SparseSD(empty.to(torch.int64), empty)
        flat, dist_all = torch.cat(index), torch.cat(dist)
        unique, inverse = torch.unique(flat, return_inverse=True)
        reduced = torch.full((len(unique),), float("inf"), device=self.device)
        reduced.scatter_reduce_(0, inverse, dist_all, reduce="amin")
        return SparseSD(unique, reduced)

    def capsule_entries(
        self, capsules: np.ndarray, case: np.ndarray, lo: np.ndarray, hi: np.ndarray
    ) -> tuple[Tensor, Tensor]:
        """Flat voxel indices and signed distances (mm) of the voxels near tapered capsules.

        Args:
            capsules: ``(N, 8)``: end points ``p0 = (z0, y0, x0)``, ``p1 = (z1, y1, x1)`` and radii
                ``r0, r1`` at each end, mm. A sphere is a capsule with ``p0 == p1``.
            case: ``(N,)`` batch position of each capsule.
            lo: ``(N, 3)`` first voxel index of each capsule's box, inside the volume.
            hi: ``(N, 3)`` last voxel index of each box (``>= lo``).

        Returns:
            ``(index, sd)``: 1-D tensors over the voxels of every capsule's box with ``sd < ramp / 2``
            (a voxel may repeat, once per capsule). The distance is ``|p - q(t)| - r(t)`` with ``q(t)``
            the closest axis point and ``r(t) = r0 + t (r1 - r0)``: exact for untapered capsules and
            spheres, a close approximation for slowly tapered ones. ``index`` counts voxels over the
            whole batch: ``((b * D + k) * H + j) * W + i``. Every box is evaluated at the size of the
            largest (per axis), so the result does not depend on which capsules share a call.
        """
        box = (hi - lo + 1).max(axis=0)
        dev = self.device
        caps = torch.as_tensor(capsules, dtype=torch.float32, device=dev)
        lo_t = torch.as_tensor(lo, device=dev)
        hi_t = torch.as_tensor(hi, device=dev)
        m = len(capsules)
        p0, d = caps[:, 0:3], caps[:, 3:6] - caps[:, 0:3]
        r0, dr = caps[:, 6], caps[:, 7] - caps[:, 6]
        length2 = torch.clamp((d * d).sum(-1), min=1e-12).view(m, 1, 1, 1)
        spacing = torch.tensor(self.spacing, device=dev)
        origin = -(torch.tensor(self.shape, device=dev) - 1) / 2 * spacing
        view = [(m, -1, 1, 1), (m, 1, -1, 1), (m, 1, 1, -1)]
        dist2 = torch.zeros((), device=dev)
        dot = torch.zeros((), device=dev)
        valid = torch.ones((), dtype=torch.bool, device=dev)
        idx: list[Tensor] = []
        for a in range(3):
            k = lo_t[:, a : a + 1] + torch.arange(int(box[a]), device=dev)  # (N, K)
            valid = valid & (k <= hi_t[:, a : a + 1]).view(view[a])
            rel = origin[a] + k.to(torch.float32) * spacing[a] - p0[:, a : a + 1]
            dist2 = dist2 + (rel * rel).view(view[a])
            dot = dot + (rel * d[:, a : a + 1]).view(view[a])
            idx.append(torch.clamp(k, max=self.shape[a] - 1).view(view[a]))
        t = torch.clamp(dot / length2, 0.0, 1.0)
        dist = torch.sqrt(torch.clamp(dist2 - t * (2.0 * dot - t * length2), min=0.0))
        sd = dist - (r0.view(m, 1, 1, 1) + t * dr.view(m, 1, 1, 1))
        keep = valid & (sd < 0.5 * self.ramp_mm)
        base = torch.as_tensor(case, device=dev).view(m, 1, 1, 1) * self.shape[0]
        flat = ((base + idx[0]) * self.shape[1] + idx[1]) * self.shape[2] + idx[2]
        return flat.expand_as(sd)[keep], sd[keep]


@dataclass(frozen=True, slots=True)
class SparseSD:
    """Signed distances (mm) at the voxels near a structure; voxels not listed are far outside.

    Attributes:
        index: unique flat voxel indices over the batch, ``((b * D + k) * H + j) * W + i``.
        sd: signed distance at each listed voxel (``< ramp / 2``).
    """

    index: Tensor
    sd: Tensor


def subdivide(capsules: np.ndarray, max_length_mm: np.ndarray | float) -> np.ndarray:
    """Split capsules longer than ``max_length_mm`` into equal collinear pieces (radii interpolated).

    Short pieces keep the bounding boxes of :meth:`Canvas.capsule_entries` small; the union of the pieces
    is the same surface.
    """
    if len(capsules) == 0:
        return capsules
    p0, p1 = capsules[:, 0:3], capsules[:, 3:6]
    length = np.linalg.norm(p1 - p0, axis=1)
    pieces = np.maximum(1, np.ceil(length / np.broadcast_to(max_length_mm, length.shape))).astype(np.int64)
    owner = np.repeat(np.arange(len(capsules)), pieces)
    first = np.cumsum(pieces) - pieces
    step = np.arange(len(owner)) - np.repeat(first, pieces)
    t0 = step / pieces[owner]
    t1 = (step + 1) / pieces[owner]
    cap = capsules[owner]
    ends0 = cap[:, 0:3] + t0[:, None] * (cap[:, 3:6] - cap[:, 0:3])
    ends1 = cap[:, 0:3] + t1[:, None] * (cap[:, 3:6] - cap[:, 0:3])
    r0 = cap[:, 6] + t0 * (cap[:, 7] - cap[:, 6])
    r1 = cap[:, 6] + t1 * (cap[:, 7] - cap[:, 6])
    return np.concatenate([ends0, ends1, r0[:, None], r1[:, None]], axis=1)


def ellipsoid_sd(canvas: Canvas, centre: Tensor, half_axes: Tensor, window: Window | None = None) -> Tensor:
    """Approximate signed distance (mm) to axis-aligned ellipsoids: ``(rho - 1) * min(half axes)``.

    Args:
        canvas: the grid.
        centre: ``(B, 3)`` in mm, ``(z, y, x)`` order.
        half_axes: ``(B, 3)`` in mm. A half axis of ``inf`` extrudes the shape along that axis (the
            result then broadcasts along it: z-extruded shapes are 2-D).
        window: evaluate on this sub-grid only (see :meth:`Canvas.window`).
    """
    terms = []
    for a, coord in enumerate(canvas.coords(window)):
        half = half_axes[:, a].view(-1, 1, 1, 1)
        if bool(torch.isinf(half).all()):
            continue
        terms.append(((coord - centre[:, a].view(-1, 1, 1, 1)) / half) ** 2)
    rho2 = terms[0]
    for term in terms[1:]:
        rho2 = rho2 + term
    scale = torch.clamp(half_axes, max=FAR_MM).min(dim=1).values.view(-1, 1, 1, 1)
    return (torch.sqrt(rho2) - 1.0) * scale


def pad_capsules(per_case: Sequence[np.ndarray]) -> Tensor:
    """Stack per-case ``(S_i, 8)`` capsule arrays into ``(B, max S_i, 8)``, padding far away."""
    width = max((len(c) for c in per_case), default=0)
    pad = np.array([[FAR_MM] * 6 + [0.0, 0.0]])
    rows = []
    for c in per_case:
        arr = np.asarray(c, dtype=np.float64).reshape(-1, CAPSULE_FIELDS)
        rows.append(np.concatenate([arr, np.repeat(pad, width - len(arr), 0)]))
    return torch.as_tensor(np.stack(rows), dtype=torch.float32)


def capsule_sd_points(points: np.ndarray, capsules: np.ndarray) -> np.ndarray:
    """Host-side signed distance (mm) of ``points`` (N, 3) to the union of ``capsules`` (S, 8).

    The same formula as :meth:`Canvas.capsule_entries`, in float64 numpy, for placement checks and for
    nominal volumes by quasi-Monte Carlo.
    """
    p0, p1 = capsules[:, 0:3], capsules[:, 3:6]
    d = p1 - p0
    length2 = np.maximum((d * d).sum(-1), 1e-12)
    rel = points[:, None, :] - p0[None]
    t = np.clip((rel * d[None]).sum(-1) / length2, 0.0, 1.0)
    dist = np.linalg.norm(rel - t[..., None] * d[None], axis=-1)
    sd = dist - (capsules[None, :, 6] + t * (capsules[None, :, 7] - capsules[None, :, 6]))
    return sd.min(axis=1)
