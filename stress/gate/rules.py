"""The acceptance-rule grammar of ``gate:`` criteria.

    rule      := METRIC OP NUMBER [ "for" SWEEP OP NUMBER ] [ scope ]
    scope     := "overall" | "in every subgroup" | "in every" ATTRIBUTE | "in" ATTRIBUTE "=" LEVEL
    OP        := ">=" | ">" | "<=" | "<" | "=="

``SWEEP`` is a perturbation name (``ct_dose``) or its severity quantity (``dose_fraction``); the
``for`` clause restricts the rule to the severities that satisfy it (all severities of all
perturbations when absent). The default scope is ``overall``. Examples::

    auc >= 0.80 for ct_dose >= 0.25 in every subgroup
    auc >= 0.85 for fwhm_mm <= 4 overall
    sensitivity >= 0.7 in sex=female
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from dataclasses import dataclass

OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    ">": operator.gt,
    "<=": operator.le,
    "<": operator.lt,
    "==": operator.eq,
}
_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_OP = r"(>=|<=|==|>|<)"
_RULE = re.compile(
    rf"^\s*(?P<metric>\w+)\s*(?P<op>{_OP})\s*(?P<value>{_NUM})"
    rf"(?:\s+for\s+(?P<sweep>\w+)\s*(?P<sop>{_OP})\s*(?P<svalue>{_NUM}))?"
    r"(?:\s+(?P<scope>overall|in\s+every\s+subgroup|in\s+every\s+\w+|in\s+\w+\s*=\s*[\w.\-]+))?\s*$"
)


class RuleSyntaxError(ValueError):
    """A rule that does not follow the grammar."""


@dataclass(frozen=True, slots=True)
class Rule:
    """A parsed acceptance rule.

    Attributes:
        metric: metric name (e.g. ``auc``).
        op: comparison operator.
        threshold: value the metric is compared with.
        sweep: perturbation or severity name the ``for`` clause names, or ``None``.
        sweep_op: operator of the ``for`` clause.
        sweep_value: severity bound of the ``for`` clause.
        scope: ``"overall"``, ``"every"`` (all configured subgroups), ``"every:ATTR"``, or ``"ATTR=LEVEL"``.
    """

    metric: str
    op: str
    threshold: float
    sweep: str | None
    sweep_op: str | None
    sweep_value: float | None
    scope: str

    def passes(self, value: float) -> bool:
        """Whether ``value`` satisfies the rule (NaN never does)."""
        return value == value and OPS[self.op](value, self.threshold)

    def selects_severity(self, severity: float) -> bool:
        """Whether the ``for`` clause keeps ``severity`` (always true without one)."""
        return self.sweep_op is None or OPS[self.sweep_op](severity, float(self.sweep_value))


def parse_rule(text: str) -> Rule:
    """Parse ``text`` or raise :class:`RuleSyntaxError` with what was expected."""
    m = _RULE.match(text)
    if not m:
        raise RuleSyntaxError(
            f"cannot parse rule {text!r} (expected e.g. 'auc >= 0.80 for ct_dose >= 0.25 in every subgroup': "
            "METRIC OP NUMBER [for PERTURBATION OP NUMBER] [overall | in every subgroup | in every ATTR | "
            "in ATTR=LEVEL])"
        )
    scope_text = re.sub(r"\s+", " ", m["scope"] or "overall")
    if scope_text == "overall":
        scope = "overall"
    elif scope_text == "in every subgroup":
        scope = "every"
    elif scope_text.startswith("in every "):
        scope = "every:" + scope_text.split()[-1]
    else:
        scope = re.sub(r"\s", "", scope_text[3:])
    return Rule(
        metric=m["metric"],
        op=m["op"],
        threshold=float(m["value"]),
        sweep=m["sweep"],
        sweep_op=m["sop"],
        sweep_value=float(m["svalue"]) if m["svalue"] else None,
        scope=scope,
    )
