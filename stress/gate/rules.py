"""The acceptance-rule grammar of ``gate:`` criteria.

    rule      := METRIC OP NUMBER [ "for" condition [ "and" condition ] ] [ scope ]
    condition := SWEEP OP NUMBER
    scope     := "overall" | "in every subgroup" | "in every" ATTRIBUTE | "in" ATTRIBUTE "=" LEVEL
    OP        := ">=" | ">" | "<=" | "<" | "=="

``SWEEP`` is a perturbation name (``ct_dose``) or its severity quantity (``dose_fraction``). The
``for`` clause picks a sweep by the perturbations it names and keeps the severities that satisfy
every condition: one condition selects a 1-D sweep of that perturbation, two conditions select
the two-family grid of those perturbations (in either order). Without a ``for`` clause the rule
covers every point of every sweep. The default scope is ``overall``. Examples::

    auc >= 0.80 for ct_dose >= 0.25 in every subgroup
    auc >= 0.85 for fwhm_mm <= 4 overall
    auc >= 0.75 for ct_dose >= 0.25 and fwhm_mm <= 4
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
    rf"(?:\s+for\s+(?P<sweep>\w+)\s*(?P<sop>{_OP})\s*(?P<svalue>{_NUM})"
    rf"(?:\s+and\s+(?P<sweep2>\w+)\s*(?P<sop2>{_OP})\s*(?P<svalue2>{_NUM}))?)?"
    r"(?:\s+(?P<scope>overall|in\s+every\s+subgroup|in\s+every\s+\w+|in\s+\w+\s*=\s*[\w.\-]+))?\s*$"
)


class RuleSyntaxError(ValueError):
    """A rule that does not follow the grammar."""


@dataclass(frozen=True, slots=True)
class Condition:
    """One condition of a ``for`` clause: a perturbation (or severity name), an operator and a bound."""

    sweep: str
    op: str
    value: float

    def holds(self, severity: float) -> bool:
        """Whether ``severity`` satisfies the condition."""
        return OPS[self.op](severity, self.value)


@dataclass(frozen=True, slots=True)
class Rule:
    """A parsed acceptance rule.

    Attributes:
        metric: metric name (e.g. ``auc``).
        op: comparison operator.
        threshold: value the metric is compared with.
        conditions: the ``for`` clause (empty without one; two for a grid).
        scope: ``"overall"``, ``"every"`` (all configured subgroups), ``"every:ATTR"``, or ``"ATTR=LEVEL"``.
    """

    metric: str
    op: str
    threshold: float
    conditions: tuple[Condition, ...]
    scope: str

    def passes(self, value: float) -> bool:
        """Whether ``value`` satisfies the rule (NaN never does)."""
        return value == value and OPS[self.op](value, self.threshold)


def parse_rule(text: str) -> Rule:
    """Parse ``text`` or raise :class:`RuleSyntaxError` with what was expected."""
    m = _RULE.match(text)
    if not m:
        raise RuleSyntaxError(
            f"cannot parse rule {text!r} (expected e.g. 'auc >= 0.80 for ct_dose >= 0.25 in every subgroup': "
            "METRIC OP NUMBER [for PERTURBATION OP NUMBER [and PERTURBATION OP NUMBER]] "
            "[overall | in every subgroup | in every ATTR | in ATTR=LEVEL])"
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
        conditions=tuple(
            Condition(m[f"sweep{k}"], m[f"sop{k}"], float(m[f"svalue{k}"]))
            for k in ("", "2")
            if m[f"sweep{k}"]
        ),
        scope=scope,
    )
