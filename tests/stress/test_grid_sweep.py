"""Two-family grid sweeps: every severity pair is run, recorded, summarised, gated and reported."""

import json
import math

import pytest
from pypdf import PdfReader

from evidence.report import build_report
from stress.gate import evaluate_gate
from stress.rundata import load_run
from stress.runner import run_scenario
from stress.scenario import load_scenario, parse_scenario

GRID = """
name: grid
seed: 5
phantom:
  generator: chest_ct
  n_cases: 6
  params: {shape: [16, 32, 32], spacing_mm: [10.0, 10.0, 10.0], vessel_generations: 2}
population: {prevalence: 0.5}
perturbations:
  - {name: ct_dose, severities: [1.0, 0.25]}
  - name: ct_dose
    severities: [1.0, 0.25]
    grid: {name: gaussian_blur, severities: [0.0, 6.0, 12.0]}
models:
  - {name: v1, role: reference, python: "stress.models.demo:reference"}
metrics: [auc]
statistics: {bootstrap: {n_resamples: 100}}
gate:
  - {id: grid, rule: "auc >= 0.0 for ct_dose >= 0.25 and fwhm_mm <= 6", statistic: estimate}
execution: {batch_size: 3, chunk_cases: 3}
"""


@pytest.fixture(scope="module")
def grid_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("grid")
    (tmp / "grid.yaml").write_text(GRID)
    run_scenario(load_scenario(tmp / "grid.yaml"), tmp / "run", show_progress=False)
    root = tmp / "run"
    return load_run(root)


def test_every_pair_of_a_grid_is_run_once_per_case(grid_run):
    res = grid_run.results
    assert grid_run.scenario.n_evaluations() == 6 * (2 + 2 * 3)
    assert len(res) == grid_run.scenario.n_evaluations()
    grid = res[res["sweep"] == "ct_dose x gaussian_blur"]
    pairs = set(zip(grid["severity"], grid["severity_2"], strict=True))
    assert pairs == {(d, f) for d in (1.0, 0.25) for f in (0.0, 6.0, 12.0)}
    assert (grid.groupby(["severity", "severity_2"]).size() == 6).all()
    assert set(grid["severity_2_name"]) == {"fwhm_mm"} and set(grid["perturbation_2"]) == {"gaussian_blur"}
    one_d = res[res["sweep"] == "ct_dose"]
    assert one_d["severity_2"].isna().all() and set(one_d["perturbation_2"]) == {""}


def test_grid_chain_applies_both_families_and_shares_each_familys_random_numbers(grid_run):
    res = grid_run.results
    case = res[(res["case_index"] == 2) & (res["sweep"] == "ct_dose x gaussian_blur")]
    chains = [json.loads(p) for p in case["params_json"]]
    assert all([s["name"] for s in c] == ["ct_dose", "gaussian_blur"] for c in chains)
    dose_seeds = {c[0]["params"]["seed"] for c in chains}
    assert len(dose_seeds) == 1  # common random numbers across every blur level and dose
    one_d = res[(res["case_index"] == 2) & (res["sweep"] == "ct_dose")]
    assert {json.loads(p)[0]["params"]["seed"] for p in one_d["params_json"]} == dose_seeds


def test_grid_cells_are_summarised_gated_and_reported(grid_run):
    m = grid_run.metrics
    cells = m[(m["sweep"] == "ct_dose x gaussian_blur") & (m["subgroup"] == "all")]
    assert len(cells) == 6 and cells["severity_2"].notna().all()
    assert m[m["sweep"] == "ct_dose"]["severity_2"].isna().all()
    (verdict,) = evaluate_gate(m, grid_run.scenario)
    assert verdict.passed and verdict.n_cells == 4  # doses 1 and 0.25 x blur 0 and 6 mm
    pdf = build_report(grid_run.root)
    text = " ".join(" ".join(page.extract_text() for page in PdfReader(pdf).pages).split())
    assert "ct_dose x gaussian_blur" in text and "0.25 x 12" in text
    assert (grid_run.root / "evidence/figures/robustness_ct_dose_x_gaussian_blur_auc.png").stat().st_size > 0
    assert not math.isnan(cells["estimate"].iloc[0])


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ("grid: {name: gaussian_blur, severities: [0.0, 6.0, 12.0]}", None),
        ("grid: {name: ct_dose, severities: [0.5]}", "repeats the sweep's own perturbation"),
        ("grid: {name: gaussian_blur, severities: [-1.0]}", "fwhm_mm is out of range"),
        ("grid: {name: no_such_thing, severities: [1.0]}", "unknown perturbation"),
    ],
)
def test_grid_entries_are_validated_with_their_location(change, expected):
    text = GRID.replace("grid: {name: gaussian_blur, severities: [0.0, 6.0, 12.0]}", change)
    if expected is None:
        parse_scenario(text)
        return
    from stress.errors import ScenarioError

    with pytest.raises(ScenarioError, match=expected) as err:
        parse_scenario(text, "grid.yaml")
    assert "grid.yaml:" in str(err.value) and "perturbations[1]" in str(err.value)
