"""Acceptance gate: pre-specified criteria from the scenario -> verdicts with the evidence behind each."""

from stress.gate.evaluate import CriterionVerdict, evaluate_gate, junit_xml
from stress.gate.rules import Rule, RuleSyntaxError, parse_rule

__all__ = ["CriterionVerdict", "Rule", "RuleSyntaxError", "evaluate_gate", "junit_xml", "parse_rule"]
