"""Label-free consistency: the reference point of each sweep and each model's scores there.

The consistency metrics (``flip_rate``, ``output_drift``, ``output_drift_signed``) compare a case's
score at a sweep point with the same model's score on the same case at the sweep's *reference
point*: the point where every swept family is at its nominal severity (the unperturbed value,
``PERTURBATIONS.get(name).severity.nominal``; the scenario's baseline steps stay as they are). A sweep
that does not include the nominal severity of a family uses that family's *mildest* swept severity
instead: the one closest to nominal in the severity's unit, a tie going to the side opposite
``harsher``. A grid chooses each family's reference severity this way, independently; the pair is
called ``nominal`` only when both are. Every row of a consistency metric says which point it was
compared with (columns ``reference``, ``reference_severity``, ``reference_severity_2``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from perturbations import PERTURBATIONS
from stress.errors import StressError

#: The reference columns of a metric row that is not compared with a reference point.
NO_REFERENCE: dict[str, Any] = {
    "reference": "",
    "reference_severity": math.nan,
    "reference_severity_2": math.nan,
}


def reference_severity(name: str, values: Any) -> tuple[float, bool]:
    """The reference severity of perturbation ``name`` among the swept ``values``, and whether it is nominal.

    The nominal severity when swept (compared with a relative and absolute tolerance of 1e-9),
    otherwise the value closest to nominal, a tie going to the side opposite ``harsher``.
    """
    sev = PERTURBATIONS.get(name).severity
    swept = sorted({float(v) for v in values})
    if not swept:
        raise ValueError(f"{name}: no severity to choose a reference from")
    for v in swept:
        if math.isclose(v, sev.nominal, rel_tol=1e-9, abs_tol=1e-9):
            return v, True
    harsher = 1.0 if sev.harsher == "higher" else -1.0
    return min(swept, key=lambda v: (abs(v - sev.nominal), harsher * (v - sev.nominal))), False


@dataclass(frozen=True, slots=True)
class ReferencePoint:
    """The reference point of one sweep (``severity_2`` is NaN for a 1-D sweep)."""

    sweep: str
    severity: float
    severity_2: float
    nominal: bool

    def columns(self) -> dict[str, Any]:
        """The reference columns of a consistency metric's rows."""
        return {
            "reference": "nominal" if self.nominal else "mildest",
            "reference_severity": self.severity,
            "reference_severity_2": self.severity_2,
        }

    def matches(self, severity: pd.Series, severity_2: pd.Series) -> pd.Series:
        """Which rows (by their ``severity``/``severity_2`` columns) lie at this point."""
        second = severity_2.isna() if math.isnan(self.severity_2) else severity_2 == self.severity_2
        return (severity == self.severity) & second


def reference_point(sweep_rows: pd.DataFrame) -> ReferencePoint:
    """The reference point of the sweep whose result rows are ``sweep_rows`` (one sweep, any models)."""
    sweep = str(sweep_rows["sweep"].iloc[0])
    (name,) = sweep_rows["perturbation"].unique()
    severity, nominal = reference_severity(name, sweep_rows["severity"])
    severity_2, nominal_2 = math.nan, True
    (name_2,) = sweep_rows["perturbation_2"].unique()
    if name_2:
        severity_2, nominal_2 = reference_severity(name_2, sweep_rows["severity_2"])
    return ReferencePoint(sweep, severity, severity_2, nominal and nominal_2)


@dataclass(frozen=True, slots=True)
class ReferenceScores:
    """One model's scores (and failures) at its sweep's reference point, aligned with the run's cases."""

    point: ReferencePoint
    scores: np.ndarray
    failed: np.ndarray


def reference_scores(results: pd.DataFrame, case_index: np.ndarray) -> dict[tuple[str, str], ReferenceScores]:
    """Per ``(model, sweep)``: the scores at the sweep's reference point, in the order of ``case_index``."""
    out: dict[tuple[str, str], ReferenceScores] = {}
    for sweep, rows in results.groupby("sweep", sort=True):
        point = reference_point(rows)
        at = rows[point.matches(rows["severity"], rows["severity_2"])]
        for model in sorted(rows["model"].unique()):
            ref = at[at["model"] == model].set_index("case_index").reindex(case_index)
            if ref["model"].isna().any():
                raise StressError(
                    f"results.parquet: missing rows for model '{model}' at the reference point of sweep "
                    f"'{sweep}' ({point.severity:g}"
                    f"{'' if math.isnan(point.severity_2) else f' x {point.severity_2:g}'}); expected one "
                    "row per case (re-run the same `stress run` command to complete the run)"
                )
            out[(str(model), str(sweep))] = ReferenceScores(
                point, ref["score"].to_numpy(dtype=np.float64), ref["error"].to_numpy() != ""
            )
    return out
