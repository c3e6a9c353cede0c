"""In-process checks of the scenario loader (the CLI-level checks are in test_end_to_end.py)."""

import re
from pathlib import Path

import pytest

from stress.errors import ScenarioError
from stress.scenario import parse_scenario

ROOT = Path(__file__).resolve().parents[2]


def test_the_readme_example_is_a_valid_scenario():
    block = re.search(r"```yaml\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    sc = parse_scenario(block, "README.md")
    assert sc.n_evaluations() == 160 * 7 * 2


def test_all_problems_of_the_second_pass_are_reported_in_file_order():
    text = (
        "name: x\nseed: 1\nphantom: {generator: chest_ct, n_cases: 4}\n"
        "perturbations: [{name: ct_dos, severities: [1.0]}]\n"
        'models: [{name: v1, role: reference, python: "stress.models.demo:reference"}]\n'
        "metrics: [auc, auroc]\n"
    )
    with pytest.raises(ScenarioError) as info:
        parse_scenario(text, "s.yaml")
    lines = str(info.value).splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("s.yaml:4:") and "did you mean 'ct_dose'" in lines[0]
    assert lines[1].startswith("s.yaml:6:") and "unknown metric 'auroc'" in lines[1]
