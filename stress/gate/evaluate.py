"""Evaluate gate criteria on the metrics table of a run, and write JUnit XML for CI systems."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from stress.gate.rules import Rule, parse_rule
from stress.scenario.schema import GateCriterion, Scenario

CELL_KEYS = [
    "model",
    "sweep",
    "perturbation",
    "severity",
    "perturbation_2",
    "severity_2",
    "subgroup",
    "level",
]


@dataclass(frozen=True)
class CriterionVerdict:
    """The verdict on one criterion.

    Attributes:
        id: criterion id from the scenario.
        rule: the rule text.
        statistic: which statistic was compared (``estimate``, ``ci_low`` or ``ci_high``).
        passed: every selected cell satisfies the rule, and at least one cell was selected.
        n_cells: number of (model, sweep point, subgroup) cells checked.
        failures: the failing cells, worst first (each with its value).
        worst: the cell closest to failing (or the worst failing one).
        reason: a sentence for humans.
    """

    id: str
    rule: str
    statistic: str
    passed: bool
    n_cells: int
    failures: list[dict[str, Any]] = field(default_factory=list)
    worst: dict[str, Any] | None = None
    reason: str = ""


def _select(metrics: pd.DataFrame, crit: GateCriterion, sc: Scenario) -> pd.DataFrame:
    rule = parse_rule(crit.rule)
    models = (
        crit.models or [m.name for m in sc.models if m.role == "candidate"] or [m.name for m in sc.models]
    )
    sel = metrics[(metrics["metric"] == rule.metric) & metrics["model"].isin(models)]
    if rule.conditions:
        sel = sel[[_point_selected(rule, row) for row in sel.itertuples(index=False)]]
    if rule.scope == "overall":
        sel = sel[sel["subgroup"] == "all"]
    elif rule.scope.startswith("every:"):
        sel = sel[sel["subgroup"] == rule.scope.split(":", 1)[1]]
    elif rule.scope != "every":
        attr, level = rule.scope.split("=", 1)
        sel = sel[(sel["subgroup"] == attr) & (sel["level"] == level)]
    return sel


def _point_selected(rule: Rule, row: Any) -> bool:
    """Whether a sweep point has exactly the axes the rule's conditions name, each within its bound."""
    axes = [(row.perturbation, row.severity_name, row.severity)]
    if row.perturbation_2:
        axes.append((row.perturbation_2, row.severity_2_name, row.severity_2))
    if len(axes) != len(rule.conditions):
        return False
    unused = list(axes)
    for cond in rule.conditions:
        match = next((a for a in unused if cond.sweep in (a[0], a[1])), None)
        if match is None or not cond.holds(float(match[2])):
            return False
        unused.remove(match)
    return True


def evaluate_criterion(metrics: pd.DataFrame, crit: GateCriterion, sc: Scenario) -> CriterionVerdict:
    """Check one criterion against the metrics table."""
    rule = parse_rule(crit.rule)
    sel = _select(metrics, crit, sc)
    if sel.empty:
        return CriterionVerdict(
            crit.id,
            crit.rule,
            crit.statistic,
            False,
            0,
            reason="no result matched this rule (fails by default)",
        )
    cells = [
        {**{k: row[k] for k in CELL_KEYS}, "value": float(row[crit.statistic])} for _, row in sel.iterrows()
    ]
    sign = 1.0 if rule.op in (">=", ">") else -1.0
    cells.sort(key=lambda c: -math.inf if math.isnan(c["value"]) else sign * c["value"])
    failures = [c for c in cells if not rule.passes(c["value"])]
    worst = cells[0]
    if failures:
        reason = (
            f"{len(failures)} of {len(cells)} cells fail; worst {crit.statistic}={worst['value']:.3f} "
            f"({_describe(worst)})"
        )
    else:
        margin = f"{crit.statistic}={worst['value']:.3f} ({_describe(worst)})"
        reason = f"all {len(cells)} cells pass; lowest margin {margin}"
    return CriterionVerdict(
        crit.id, crit.rule, crit.statistic, not failures, len(cells), failures, worst, reason
    )


def _describe(cell: dict[str, Any]) -> str:
    group = "overall" if cell["subgroup"] == "all" else f"{cell['subgroup']}={cell['level']}"
    point = f"{cell['perturbation']}={cell['severity']:g}"
    if cell.get("perturbation_2"):
        point += f", {cell['perturbation_2']}={cell['severity_2']:g}"
    return f"{cell['model']}, {point}, {group}"


def evaluate_gate(metrics: pd.DataFrame, sc: Scenario) -> list[CriterionVerdict]:
    """Verdicts on every criterion of the scenario, in scenario order."""
    return [evaluate_criterion(metrics, crit, sc) for crit in sc.gate]


def junit_xml(verdicts: list[CriterionVerdict], suite: str) -> bytes:
    """JUnit XML (one testcase per criterion) as read by CI systems."""
    failures = sum(not v.passed for v in verdicts)
    root = ET.Element("testsuites", name="phantom-stress", tests=str(len(verdicts)), failures=str(failures))
    ts = ET.SubElement(
        root,
        "testsuite",
        name=suite,
        tests=str(len(verdicts)),
        failures=str(failures),
        errors="0",
        skipped="0",
    )
    for v in verdicts:
        case = ET.SubElement(ts, "testcase", classname=f"stress.gate.{suite}", name=f"{v.id}: {v.rule}")
        if not v.passed:
            fail = ET.SubElement(case, "failure", message=v.reason, type="GateCriterionFailed")
            fail.text = "\n".join(f"{_describe(c)}: {v.statistic}={c['value']:.4f}" for c in v.failures[:50])
        out = ET.SubElement(case, "system-out")
        out.text = v.reason
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n"
