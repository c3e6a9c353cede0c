"""Apply an ordered chain of perturbations to a batch, and replay one from its recorded parameters."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from perturbations.base import PERTURBATIONS, Spacing, params_from_dict, params_to_dict


@dataclass(frozen=True, slots=True)
class AppliedPerturbation:
    """One step of a chain for a whole batch: a perturbation name and one params per case."""

    name: str
    params: tuple[Any, ...]

    def record(self, case: int) -> dict[str, Any]:
        """The JSON-ready record of this step for batch element ``case``."""
        return {"name": self.name, "params": params_to_dict(self.params[case])}


def apply_chain(x: Tensor, spacing_mm: Spacing, steps: Sequence[AppliedPerturbation]) -> Tensor:
    """Apply ``steps`` in order to ``x`` (B, C, D, H, W); pure and deterministic."""
    for step in steps:
        x = PERTURBATIONS.get(step.name).apply(x, spacing_mm, step.params)
    return x


def apply_chain_mask(
    mask: Tensor, spacing_mm: Spacing, steps: Sequence[AppliedPerturbation]
) -> Tensor | None:
    """Apply the geometry-changing steps of a chain to a ground-truth mask; ``None`` if there are none."""
    out = None
    for step in steps:
        apply_mask = PERTURBATIONS.get(step.name).apply_mask
        if apply_mask is not None:
            out = apply_mask(mask if out is None else out, spacing_mm, step.params)
    return out


def chain_spacing(spacing_mm: Spacing, steps: Sequence[AppliedPerturbation]) -> Spacing:
    """The spacing a model is told after the chain's metadata errors (the same for every case).

    Raises:
        ValueError: when the cases of the batch would be told different spacings.
    """
    for step in steps:
        after = PERTURBATIONS.get(step.name).spacing_after
        if after is None:
            continue
        told = {tuple(after(spacing_mm, p)) for p in step.params}
        if len(told) != 1:
            raise ValueError(
                f"{step.name}: the cases of one batch would get different spacings {sorted(told)}"
            )
        spacing_mm = told.pop()
    return spacing_mm


def steps_from_records(records: Sequence[Sequence[dict[str, Any]]]) -> list[AppliedPerturbation]:
    """Rebuild batched steps from per-case records (each case must have the same chain of names)."""
    names = [[r["name"] for r in case] for case in records]
    if any(n != names[0] for n in names):
        raise ValueError(f"cases have different perturbation chains: {names}")
    return [
        AppliedPerturbation(name, tuple(params_from_dict(name, case[i]["params"]) for case in records))
        for i, name in enumerate(names[0])
    ]
