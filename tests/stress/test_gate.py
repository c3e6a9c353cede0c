import xml.etree.ElementTree as ET

import pandas as pd
import pytest

from stress.gate import evaluate_gate, junit_xml, parse_rule
from stress.gate.rules import RuleSyntaxError
from stress.scenario import parse_scenario

SCENARIO = """
name: gate-test
seed: 1
phantom: {generator: chest_ct, n_cases: 10}
perturbations:
  - {name: ct_dose, severities: [1.0, 0.25, 0.1]}
models:
  - {name: v1, role: reference, python: "stress.models.demo:reference"}
  - {name: v2, role: candidate, python: "stress.models.demo:candidate"}
statistics: {subgroups: [sex]}
gate:
  - {id: g-dose, rule: "auc >= 0.80 for ct_dose >= 0.25 in every subgroup", statistic: ci_low}
  - {id: g-female, rule: "auc >= 0.7 for ct_dose >= 0.25 in sex=female", statistic: estimate}
"""


def _metrics(candidate_low_dose_female: float) -> pd.DataFrame:
    rows = []
    for model in ("v1", "v2"):
        for sev in (1.0, 0.25, 0.1):
            for sub, level in (("all", "all"), ("sex", "female"), ("sex", "male")):
                value = 0.9 if sev >= 0.25 else 0.6
                if model == "v2" and sev == 0.25 and level == "female":
                    value = candidate_low_dose_female
                rows.append(
                    {
                        "model": model,
                        "model_role": "reference" if model == "v1" else "candidate",
                        "perturbation": "ct_dose",
                        "severity_name": "dose_fraction",
                        "severity": sev,
                        "subgroup": sub,
                        "level": level,
                        "metric": "auc",
                        "estimate": value + 0.02,
                        "ci_low": value,
                        "ci_high": value + 0.04,
                    }
                )
    return pd.DataFrame(rows)


def test_rule_grammar():
    r = parse_rule("auc >= 0.80 for ct_dose >= 0.25 in every subgroup")
    assert (r.metric, r.op, r.threshold, r.sweep, r.sweep_value, r.scope) == (
        "auc",
        ">=",
        0.8,
        "ct_dose",
        0.25,
        "every",
    )
    assert parse_rule("sensitivity > .7 in sex = female").scope == "sex=female"
    assert not r.passes(float("nan"))
    with pytest.raises(RuleSyntaxError, match="expected e.g."):
        parse_rule("auc at least 0.8")


def test_gate_passes_then_fails_on_a_planted_regression():
    sc = parse_scenario(SCENARIO)
    good = evaluate_gate(_metrics(0.85), sc)
    assert [v.passed for v in good] == [True, True]
    assert good[0].n_cells == 2 * 3  # candidate only, severities 1.0 and 0.25, all + 2 sexes
    bad = evaluate_gate(_metrics(0.75), sc)  # candidate drops in one subgroup at one severity
    assert not bad[0].passed and len(bad[0].failures) == 1
    assert bad[0].failures[0]["level"] == "female" and bad[0].failures[0]["severity"] == 0.25
    assert "1 of 6 cells fail" in bad[0].reason


def test_junit_xml_is_readable():
    sc = parse_scenario(SCENARIO)
    root = ET.fromstring(junit_xml(evaluate_gate(_metrics(0.75), sc), sc.name))
    suite = root.find("testsuite")
    assert suite.get("tests") == "2" and suite.get("failures") == "1"
    assert len(suite.findall("testcase/failure")) == 1
