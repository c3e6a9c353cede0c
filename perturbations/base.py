"""The perturbation contract: a spec (fixed settings), a sampler and a pure batched kernel.

A perturbation is registered as a :class:`Perturbation` entry holding

* ``spec``: a pydantic model of the fixed settings a scenario gives under ``params:``;
* ``sample(spec, severity, rng) -> Params``: draws one case's parameters (a frozen dataclass of
  plain scalars, recorded verbatim in the results) from a physical severity and a seeded
  :class:`numpy.random.Generator`;
* ``apply(x, spacing_mm, params) -> x'``: a pure, deterministic kernel over a batch
  ``(B, C, D, H, W)`` on any device, one ``Params`` per batch element. It never draws parameters;
  random fields come from the integer ``seed`` inside the params (see :mod:`perturbations.random`).
* ``ladder``: the default five severities, mildest first, each a physical value documented in
  docs/perturbation-physics.md.
* ``apply_mask(mask, spacing_mm, params) -> mask'`` (geometry-changing perturbations only): the same
  geometric transform applied to a ground-truth mask (nearest neighbour: a mask stays a mask).
* ``spacing_after(spacing_mm, params) -> spacing_mm'`` (metadata perturbations only): the voxel spacing
  the model is told for one case; the image itself is unchanged.
* ``check_phantom(spec, generator, phantom_spec, population) -> message | None`` (perturbations whose
  settings must repeat the phantom's): checked when a scenario is validated.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict
from torch import Tensor

from stress.registry import Registry

Spacing = tuple[float, float, float]


class PerturbationSpec(BaseModel):
    """Base of every perturbation's fixed settings: frozen, unknown keys rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True, slots=True, kw_only=True)
class Severity:
    """How a perturbation's severity is expressed.

    Attributes:
        name: physical quantity, e.g. ``"dose_fraction"``.
        unit: unit or reference of the quantity, e.g. ``"fraction of reference dose"``.
        low: smallest allowed value.
        high: largest allowed value.
        low_inclusive: whether ``low`` itself is allowed.
        nominal: the value that corresponds to the unperturbed acquisition.
        harsher: ``"lower"`` or ``"higher"``: which direction degrades the image.
    """

    name: str
    unit: str
    low: float
    high: float
    low_inclusive: bool = True
    nominal: float
    harsher: str

    def check(self, value: float) -> str | None:
        """Return a message when ``value`` is out of range, else ``None``."""
        ok_low = value >= self.low if self.low_inclusive else value > self.low
        if ok_low and value <= self.high:
            return None
        bracket = "[" if self.low_inclusive else "("
        return (
            f"{self.name} is out of range "
            f"(expected {bracket}{self.low:g}, {self.high:g}] {self.unit}, got {value!r})"
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Props:
    """Properties the generic tests check for every registered perturbation.

    Attributes:
        intensity_only: leaves geometry (and so the ground-truth mask) unchanged.
        identity_at_nominal: ``apply`` at the nominal severity returns the input unchanged.
        random: uses a random field seeded from the params.
    """

    intensity_only: bool
    identity_at_nominal: bool
    random: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class Perturbation:
    """A registered perturbation (see the module docstring for the contract)."""

    name: str
    description: str
    spec: type[PerturbationSpec]
    params: type
    severity: Severity
    props: Props
    sample: Callable[[Any, float, np.random.Generator], Any]
    apply: Callable[[Tensor, Spacing, Sequence[Any]], Tensor]
    ladder: tuple[float, ...] = ()
    apply_mask: Callable[[Tensor, Spacing, Sequence[Any]], Tensor] | None = None
    spacing_after: Callable[[Spacing, Any], Spacing] | None = None
    check_phantom: Callable[[Any, str, Any, Any], str | None] | None = None


PERTURBATIONS: Registry[Perturbation] = Registry("perturbation")


def check_batch(x: Tensor, params: Sequence[Any], owner: str) -> None:
    """Check that ``x`` is ``(B, C, D, H, W)`` floating point and that there is one params per case."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{owner}: expected a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 5:
        raise ValueError(f"{owner}: expected shape (B, C, D, H, W), got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{owner}: expected a floating-point tensor, got {x.dtype}")
    if len(params) != x.shape[0]:
        raise ValueError(f"{owner}: expected {x.shape[0]} params (one per case), got {len(params)}")


def per_case(params: Sequence[Any], field: str, x: Tensor) -> Tensor:
    """Stack one scalar field of the per-case params into a ``(B, 1, 1, 1, 1)`` tensor on ``x``'s device."""
    values = [getattr(p, field) for p in params]
    return torch.tensor(values, dtype=x.dtype, device=x.device).view(-1, 1, 1, 1, 1)


def params_to_dict(params: Any) -> dict[str, Any]:
    """A params dataclass as a JSON-ready dict."""
    return dataclasses.asdict(params)


def params_from_dict(name: str, values: Mapping[str, Any]) -> Any:
    """Rebuild the params dataclass of perturbation ``name`` from its recorded dict."""
    return PERTURBATIONS.get(name).params(**values)


def draw_seed(rng: np.random.Generator) -> int:
    """A non-negative 63-bit integer seed for a kernel's random field."""
    return int(rng.integers(0, 2**63 - 1, dtype=np.int64))
