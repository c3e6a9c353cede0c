"""Population specs: prevalence and categorical subgroup distributions, sampled per case."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

PROBABILITY_TOLERANCE = 1e-6


class PopulationSpec(BaseModel):
    """Who is in the virtual cohort.

    Attributes:
        prevalence: probability that a case carries a lesion (label 1), in [0, 1].
        attributes: for each subgroup attribute, the probability of each level; probabilities are in
            [0, 1] and sum to 1. Unlisted attributes of the generator are drawn uniformly. A level
            with a high probability is how rare findings are enriched.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    prevalence: float = Field(0.5, ge=0.0, le=1.0)
    attributes: dict[str, dict[str, float]] = Field(default_factory=dict)

    @field_validator("attributes")
    @classmethod
    def _probabilities(cls, value: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
        for name, dist in value.items():
            if not dist:
                raise ValueError(
                    f"attribute '{name}' has no levels (expected at least one level: probability)"
                )
            for level, p in dist.items():
                if not 0.0 <= p <= 1.0:
                    raise ValueError(
                        f"probability of {name}={level} is out of range (expected a value in [0, 1], got {p})"
                    )
            total = sum(dist.values())
            if abs(total - 1.0) > PROBABILITY_TOLERANCE:
                raise ValueError(
                    f"probabilities of '{name}' do not sum to 1 (expected a total of 1, got {total:g})"
                )
        return value


def draw_level(rng: np.random.Generator, dist: Mapping[str, float] | Sequence[str]) -> str:
    """Draw one level from a ``{level: probability}`` mapping, or uniformly from a list of levels."""
    if isinstance(dist, Mapping):
        levels, probs = list(dist), np.array(list(dist.values()), dtype=float)
        return levels[int(rng.choice(len(levels), p=probs / probs.sum()))]
    return dist[int(rng.integers(len(dist)))]


def case_rng(seed: int, stream: int, case_index: int, *extra: int) -> np.random.Generator:
    """Independent generator for one case: a pure function of ``(seed, stream, case_index, *extra)``.

    Uses numpy's SeedSequence, so streams for different cases or purposes do not overlap.
    """
    return np.random.default_rng([seed, stream, case_index, *extra])
