"""Branching tubular trees (vessels, airways) grown inside an ellipsoidal organ, as tapered capsules.

A tree starts at a root point with a direction, length and radius. Every segment ends in a
bifurcation into two children whose radii follow Murray's law (``r_parent^3 = r_1^3 + r_2^3``, here
with equal children: ``r_child = 2^(-1/3) r_parent``; Murray, PNAS 1926), whose lengths shrink by a
factor in ``[0.65, 0.85]``, and whose directions leave the parent's at 20-40 degrees on opposite sides
of a random plane (branching angles of pulmonary arteries and airways, Horsfield & Cumming, J Appl
Physiol 1968). A child that would leave the organ is shortened until it fits, or dropped. Growth
stops below a minimum radius or at a maximum number of generations.

Everything here is host-side numpy driven by the case's generator, so a tree is a pure function of
the case's random stream; rendering happens on the device (:meth:`phantoms.render.Canvas.union_sd`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MURRAY = 2.0 ** (-1.0 / 3.0)  # radius ratio of each of two equal children (Murray's law)


@dataclass(frozen=True, slots=True)
class Ellipsoid:
    """An axis-aligned ellipsoid, ``(z, y, x)`` centre and half axes in mm."""

    centre: np.ndarray
    half_axes: np.ndarray

    def rho(self, points: np.ndarray) -> np.ndarray:
        """Normalised radius of ``points`` (..., 3): < 1 inside."""
        return np.sqrt((((points - self.centre) / self.half_axes) ** 2).sum(-1))


def grow_tree(
    rng: np.random.Generator,
    organ: Ellipsoid,
    root: np.ndarray,
    direction: np.ndarray,
    length_mm: float,
    radius_mm: float,
    min_radius_mm: float,
    max_generations: int,
    fill: float = 0.93,
) -> np.ndarray:
    """Grow a bifurcating tree from ``root``, one generation at a time (vectorised over branches).

    Args:
        rng: the case's generator.
        organ: the tree stays inside ``organ`` (normalised radius below ``fill``), except its root
            segment, which may start outside (at a hilum).
        root: start point ``(z, y, x)`` mm.
        direction: initial direction (normalised here).
        length_mm: length of the root segment.
        radius_mm: radius at the root.
        min_radius_mm: branches thinner than this are not grown.
        max_generations: number of generations including the root.
        fill: largest normalised radius a segment end may reach.

    Returns:
        ``(S, 8)`` capsules ``z0, y0, x0, z1, y1, x1, r0, r1`` (mm), root first, each tapering to its
        children's radius. A segment whose end leaves the organ is shortened by 0.6 up to three times,
        then dropped with its subtree.
    """
    starts = np.asarray(root, dtype=np.float64).reshape(1, 3)
    dirs = np.asarray(direction, dtype=np.float64).reshape(1, 3)
    dirs = dirs / np.linalg.norm(dirs, axis=1, keepdims=True)
    lengths = np.array([length_mm], dtype=np.float64)
    radius = radius_mm
    segments = []
    for generation in range(max_generations):
        ends = starts + dirs * lengths[:, None]
        inside = organ.rho(ends) < fill
        for _ in range(3):
            lengths = np.where(inside, lengths, 0.6 * lengths)
            ends = starts + dirs * lengths[:, None]
            inside = organ.rho(ends) < fill
        starts, ends, dirs, lengths = starts[inside], ends[inside], dirs[inside], lengths[inside]
        n = len(starts)
        if n == 0:
            break
        child_r = radius * MURRAY
        last = generation + 1 >= max_generations or child_r < min_radius_mm
        radii = np.full((n, 1), radius)
        segments.append(np.concatenate([starts, ends, radii, radii if last else np.full((n, 1), child_r)], 1))
        if last:
            break
        axis = rng.normal(size=(n, 3))
        axis -= (axis * dirs).sum(1, keepdims=True) * dirs
        axis /= np.linalg.norm(axis, axis=1, keepdims=True)
        angle = np.deg2rad(rng.uniform(20.0, 40.0, size=(n, 2, 1)))
        sign = np.array([1.0, -1.0]).reshape(1, 2, 1)
        children = np.cos(angle) * dirs[:, None] + sign * np.sin(angle) * axis[:, None]
        dirs = (children / np.linalg.norm(children, axis=2, keepdims=True)).reshape(-1, 3)
        lengths = (lengths[:, None] * rng.uniform(0.65, 0.85, size=(n, 2))).reshape(-1)
        starts = np.repeat(ends, 2, axis=0)
        radius = child_r
    return np.concatenate(segments) if segments else np.zeros((0, 8))
