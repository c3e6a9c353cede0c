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


def _perpendicular(rng: np.random.Generator, direction: np.ndarray) -> np.ndarray:
    v = rng.normal(size=3)
    v -= v.dot(direction) * direction
    return v / np.linalg.norm(v)


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
    """Grow a bifurcating tree from ``root``.

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
        ``(S, 8)`` capsules ``z0, y0, x0, z1, y1, x1, r0, r1`` (mm), tapering along each segment to
        the children's radius, with a ``generation`` order (root first).
    """
    segments: list[list[float]] = []
    stack = [
        (
            np.asarray(root, float),
            np.asarray(direction, float) / np.linalg.norm(direction),
            length_mm,
            radius_mm,
            0,
        )
    ]
    while stack:
        start, dirn, length, radius, generation = stack.pop(0)
        end = start + dirn * length
        for _ in range(4):
            if organ.rho(end) < fill:
                break
            length *= 0.6
            end = start + dirn * length
        else:
            continue
        child_r = radius * MURRAY
        last = generation + 1 >= max_generations or child_r < min_radius_mm
        segments.append([*start, *end, radius, radius if last else child_r])
        if last:
            continue
        axis = _perpendicular(rng, dirn)
        for sign in (1.0, -1.0):
            angle = np.deg2rad(rng.uniform(20.0, 40.0))
            child = np.cos(angle) * dirn + sign * np.sin(angle) * axis
            child /= np.linalg.norm(child)
            stack.append((end, child, length * rng.uniform(0.65, 0.85), child_r, generation + 1))
    return np.asarray(segments, dtype=np.float64).reshape(-1, 8)
