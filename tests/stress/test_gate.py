import math
import xml.etree.ElementTree as ET

import pandas as pd
import pytest

from stress.errors import ScenarioError
from stress.gate import evaluate_gate, junit_xml, parse_rule
from stress.gate.rules import Condition, RuleSyntaxError
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


ONE_D = {
    "sweep": "ct_dose",
    "perturbation": "ct_dose",
    "severity_name": "dose_fraction",
    "perturbation_2": "",
    "severity_2_name": "",
    "severity_2": math.nan,
}


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
                        **ONE_D,
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
    assert (r.metric, r.op, r.threshold, r.conditions, r.scope) == (
        "auc",
        ">=",
        0.8,
        (Condition("ct_dose", ">=", 0.25),),
        "every",
    )
    grid = parse_rule("auc >= 0.7 for ct_dose >= 0.25 and fwhm_mm <= 4 overall")
    assert grid.conditions == (Condition("ct_dose", ">=", 0.25), Condition("fwhm_mm", "<=", 4.0))
    assert grid.scope == "overall"
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


GRID_SCENARIO = """
name: grid-gate-test
seed: 1
phantom: {generator: chest_ct, n_cases: 10}
perturbations:
  - {name: ct_dose, severities: [1.0, 0.25]}
  - name: ct_dose
    severities: [1.0, 0.25]
    grid: {name: gaussian_blur, severities: [0.0, 4.0]}
models:
  - {name: v1, role: reference, python: "stress.models.demo:reference"}
gate:
  - {id: dose-only, rule: "auc >= 0.8 for ct_dose >= 0.25", statistic: estimate}
  - {id: grid, rule: "auc >= 0.8 for fwhm_mm <= 4 and dose_fraction >= 0.25", statistic: estimate}
  - {id: grid-mild, rule: "auc >= 0.8 for ct_dose >= 1 and gaussian_blur <= 0", statistic: estimate}
"""


def _grid_metrics() -> pd.DataFrame:
    """1-D dose sweep all at 0.9; the grid fails (0.7) only at dose 0.25 with 4 mm blur."""
    base = {"model": "v1", "model_role": "reference", "subgroup": "all", "level": "all", "metric": "auc"}
    rows = [{**base, **ONE_D, "severity": d, "estimate": 0.9} for d in (1.0, 0.25)]
    for d in (1.0, 0.25):
        for fwhm in (0.0, 4.0):
            rows.append(
                {
                    **base,
                    "sweep": "ct_dose x gaussian_blur",
                    "perturbation": "ct_dose",
                    "severity_name": "dose_fraction",
                    "severity": d,
                    "perturbation_2": "gaussian_blur",
                    "severity_2_name": "fwhm_mm",
                    "severity_2": fwhm,
                    "estimate": 0.7 if (d, fwhm) == (0.25, 4.0) else 0.9,
                }
            )
    return pd.DataFrame(rows)


def test_a_one_condition_rule_selects_the_1d_sweep_and_two_conditions_select_the_grid():
    sc = parse_scenario(GRID_SCENARIO)
    dose_only, grid, mild = evaluate_gate(_grid_metrics(), sc)
    assert dose_only.passed and dose_only.n_cells == 2
    assert not grid.passed and grid.n_cells == 4 and len(grid.failures) == 1
    assert grid.worst["severity"] == 0.25 and grid.worst["severity_2"] == 4.0
    assert "ct_dose=0.25, gaussian_blur=4" in grid.reason
    assert mild.passed and mild.n_cells == 1


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        ("auc >= 0.8 for gaussian_blur <= 4", "swept only inside a grid"),
        ("auc >= 0.8 for ct_dose >= 0.25 and ct_kernel <= 4", "not the two families of one grid sweep"),
    ],
)
def test_rules_that_cannot_select_a_sweep_are_scenario_errors(rule, expected):
    text = GRID_SCENARIO.replace('"auc >= 0.8 for ct_dose >= 0.25"', f'"{rule}"')
    with pytest.raises(ScenarioError, match=expected):
        parse_scenario(text)
