"""End to end through the CLI: run, resume after SIGKILL, gate, report (determinism, content, validity)."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
from e2e_helpers import ROOT, cli_args, env, stress, write_scenario
from sklearn.metrics import roc_auc_score

KEYS = ["case_id", "perturbation", "severity", "model"]


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("e2e")
    scenario = write_scenario(tmp / "tiny.yaml")
    stress("run", str(scenario), "--out", str(tmp / "run"), "--no-progress")
    return scenario, tmp / "run"


def _sorted(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values(KEYS).reset_index(drop=True)


def test_run_writes_manifest_results_and_metrics(clean_run):
    _, run = clean_run
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["device"] == "cpu"
    assert set(manifest["models"]) == {"v1", "v2"}
    assert all(len(h) == 64 for h in manifest["models"]["v1"]["weights_sha256"].values())
    for rel, digest in manifest["outputs"].items():
        assert hashlib.sha256((run / rel).read_bytes()).hexdigest() == digest
    results = pd.read_parquet(run / "results.parquet")
    assert len(results) == 12 * 4 * 2  # cases x severities x models
    assert not results.duplicated(KEYS).any()
    assert {"sex", "bmi_band", "lesion_size", "label", "params_json", "score"} <= set(results.columns)
    params = json.loads(results.loc[results["perturbation"] == "gaussian_blur", "params_json"].iloc[-1])
    assert [p["name"] for p in params] == ["ct_dose", "gaussian_blur"]  # baseline, then the sweep
    timings = pd.read_parquet(run / "timings")
    # one row per model call: 6 batches of 2 cases x 4 sweep points x 2 models
    assert len(timings) == 6 * 4 * 2 and (timings["seconds"] > 0).all()
    assert timings.groupby("model")["n_cases"].sum().to_dict() == {"v1": 48, "v2": 48}
    assert not any(k.startswith("timings") for k in manifest["outputs"])  # measured, not reproducible


def _interrupt_after_first_chunk(scenario: Path, out: Path, sig: int) -> subprocess.Popen:
    """Start `stress run`, wait until its first part file exists, then send ``sig``."""
    proc = subprocess.Popen(
        cli_args("run", str(scenario), "--out", str(out), "--no-progress"),
        env=env(),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 300
    while not list((out / "results.parquet").glob("part-*.parquet")) and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(sig)
    return proc


def test_killed_run_resumes_to_identical_results(clean_run, tmp_path):
    scenario, reference_run = clean_run
    out = tmp_path / "killed"
    _interrupt_after_first_chunk(scenario, out, signal.SIGKILL).communicate(timeout=120)
    parts = list((out / "results.parquet").glob("part-*.parquet"))
    assert 1 <= len(parts) < 6, "the run must be interrupted mid-way for this test to mean anything"
    stress("run", str(scenario), "--out", str(out), "--no-progress")
    resumed = pd.read_parquet(out / "results.parquet")
    clean = pd.read_parquet(reference_run / "results.parquet")
    assert not resumed.duplicated(KEYS).any()
    pd.testing.assert_frame_equal(_sorted(resumed), _sorted(clean))


def test_interrupt_with_ctrl_c_keeps_chunks_and_exits_130(clean_run, tmp_path):
    scenario, _ = clean_run
    out = tmp_path / "sigint"
    proc = _interrupt_after_first_chunk(scenario, out, signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("the run finished before SIGINT arrived")
    assert proc.returncode == 130 and "resume" in stderr and "Traceback" not in stderr
    assert list((out / "results.parquet").glob("part-*.parquet"))


def test_gate_exit_codes_and_junit(clean_run, tmp_path):
    _, run = clean_run
    junit = tmp_path / "gate.xml"
    proc = stress("gate", str(run), "--junit", str(junit), check_rc=1)  # 'impossible' fails
    assert "PASS" in proc.stdout and "FAIL" in proc.stdout and "impossible" in proc.stdout
    text = junit.read_text()
    assert 'tests="2"' in text and 'failures="1"' in text


def test_report_is_deterministic_valid_and_carries_the_numbers(clean_run):
    pikepdf = pytest.importorskip("pikepdf")
    pypdf = pytest.importorskip("pypdf")
    _, run = clean_run
    stress("report", str(run))
    pdf = run / "evidence" / "report.pdf"
    first = hashlib.sha256(pdf.read_bytes()).hexdigest()
    stress("report", str(run))
    assert hashlib.sha256(pdf.read_bytes()).hexdigest() == first
    with pikepdf.open(pdf) as doc:  # qpdf's structural check
        assert doc.check_pdf_syntax() == []
    text = " ".join(page.extract_text() for page in pypdf.PdfReader(pdf).pages)
    text = " ".join(text.split())
    assert "Gate FAILED" in text and "PASS" in text and "FAIL" in text
    results = pd.read_parquet(run / "results.parquet")
    for (model, pert, sev), g in results.groupby(["model", "perturbation", "severity"]):
        auc = roc_auc_score(g["label"], g["score"])
        assert f"{auc:.3f}" in text, (model, pert, sev, auc)


def test_replay_one_case_from_its_recorded_parameters(clean_run):
    import torch

    from perturbations.chain import apply_chain, steps_from_records
    from phantoms import PHANTOMS
    from stress.models.demo import candidate
    from stress.scenario import load_scenario, phantom_spec

    scenario, run = clean_run
    sc = load_scenario(scenario).scenario
    results = pd.read_parquet(run / "results.parquet")
    row = results[(results["model"] == "v2") & (results["perturbation"] == "ct_dose")].iloc[5]
    batch = PHANTOMS.get("chest_ct").generate(
        phantom_spec(sc), sc.population, sc.seed, [int(row["case_index"])], torch.device("cpu")
    )
    steps = steps_from_records([json.loads(row["params_json"])])
    image = apply_chain(batch.image, batch.spacing_mm, steps)
    with torch.inference_mode():
        score = float(candidate().predict(image, batch.spacing_mm)[0])
    assert score == pytest.approx(row["score"], abs=1e-6)


def test_bad_run_directory_and_bad_model_output_exit_2(tmp_path):
    proc = stress("report", str(tmp_path / "missing"), check_rc=2)
    assert "manifest.json is missing" in proc.stderr
    # A model that fails on some cases: the run completes, the failures are recorded and counted.
    scenario = write_scenario(tmp_path / "nan.yaml", n_cases=12, candidate="bad_models:nan_model")
    proc = stress("run", str(scenario), "--out", str(tmp_path / "nan"), "--no-progress")
    assert "warning: model 'v2' failed on" in proc.stderr and "expected a probability" in proc.stderr
    results = pd.read_parquet(tmp_path / "nan" / "results.parquet")
    failed = results[results["error"] != ""]
    assert set(failed["model"]) == {"v2"} and len(failed) > 0 and failed["score"].isna().all()
    assert (results.loc[results["error"] == "", "score"].notna()).all()
    metrics = pd.read_parquet(tmp_path / "nan" / "metrics.parquet")
    v2 = metrics[(metrics["model"] == "v2") & (metrics["subgroup"] == "all") & (metrics["metric"] == "auc")]
    assert v2["n_failed"].sum() == len(failed) and (v2["n_cases"] + v2["n_failed"] == 12).all()
    stress("gate", str(tmp_path / "nan"), check_rc=1)  # complete run; the tiny scenario's gate fails


def test_resume_refuses_a_different_scenario(clean_run, tmp_path):
    _, run = clean_run
    other = write_scenario(tmp_path / "other.yaml", n_cases=14)
    proc = stress("run", str(other), "--out", str(run), "--no-progress", check_rc=2)
    assert "different scenario" in proc.stderr


BAD = sorted((Path(__file__).parent / "data" / "bad_scenarios").glob("*.yaml"))


@pytest.mark.parametrize("path", BAD, ids=[p.stem for p in BAD])
def test_validate_reports_file_line_and_exits_2(path):
    expected = path.read_text().splitlines()[0].removeprefix("# expect: ")
    proc = stress("validate", str(path.relative_to(ROOT)), check_rc=2)
    assert f"{path.relative_to(ROOT)}:{expected}" in proc.stderr, proc.stderr


def test_validate_accepts_the_shipped_scenarios():
    for path in sorted((ROOT / "scenarios").glob("*.yaml")):
        proc = stress("validate", str(path.relative_to(ROOT)))
        assert "evaluations" in proc.stdout


def test_impossible_phantom_geometry_is_a_clear_error(tmp_path):
    scenario = tmp_path / "thin.yaml"
    scenario.write_text(
        "name: thin\nseed: 1\n"
        "phantom: {generator: chest_ct, n_cases: 4,\n"
        "          params: {shape: [8, 32, 32], spacing_mm: [2.0, 10.0, 10.0]}}\n"
        "population: {prevalence: 1.0}\n"
        "perturbations: [{name: ct_dose, severities: [1.0]}]\n"
        'models: [{name: v1, role: reference, python: "stress.models.demo:reference"}]\n'
    )
    proc = stress("run", str(scenario), "--out", str(tmp_path / "run"), "--no-progress", check_rc=2)
    assert "phantom.params: cases case-000000..case-000003: no room" in proc.stderr


def test_list_shows_names_parameters_and_units():
    text = " ".join(stress("list").stdout.split())
    for expected in (
        "chest_ct",
        "spacing_mm",
        "dose_fraction [fraction of reference dose]",
        "fwhm_mm [mm]",
        "reference_noise_hu=20.0",
        "auc",
        "sensitivity",
        "python: module:factory",
        "lesion_size:",
        "(lesion)",
    ):
        assert expected in text, expected


def test_report_needs_only_the_run_directory_not_the_models(clean_run, tmp_path):
    import shutil

    _, run = clean_run
    copy = tmp_path / "copied-run"
    shutil.copytree(run, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["scenario_text"] = manifest["scenario_text"].replace("stress.models.demo", "vendor_pkg.absent")
    (copy / "manifest.json").write_text(json.dumps(manifest))
    stress("report", str(copy))
    assert (copy / "evidence" / "report.pdf").exists()


@pytest.mark.parametrize(
    ("target", "message"),
    [
        (
            "bad_models:raising_model",
            "model 'v2': failed on every case of its first batch (case-000000..case-000001, ct_dose=1): "
            "predict() raised RuntimeError: CUDA out of memory (simulated)",
        ),
        ("bad_models:missing_weights", "models[1].python: factory 'bad_models:missing_weights' failed"),
        ("bad_models:nothing_here", "has no callable 'nothing_here'"),
    ],
)
def test_failing_model_code_is_a_clear_error(tmp_path, target, message):
    scenario = write_scenario(tmp_path / "bad.yaml", n_cases=4, candidate=target)
    proc = stress("run", str(scenario), "--out", str(tmp_path / "run"), "--no-progress", check_rc=2)
    assert message in proc.stderr


def test_a_model_that_modifies_its_input_does_not_change_the_other_models_input(clean_run, tmp_path):
    _, reference_run = clean_run
    scenario = write_scenario(tmp_path / "inplace.yaml", reference="bad_models:in_place_model")
    stress("run", str(scenario), "--out", str(tmp_path / "run"), "--no-progress")
    ours = pd.read_parquet(tmp_path / "run" / "results.parquet")
    clean = pd.read_parquet(reference_run / "results.parquet")
    v2 = [_sorted(f[f["model"] == "v2"]).drop(columns="model_role") for f in (ours, clean)]
    pd.testing.assert_frame_equal(v2[0], v2[1])


def test_phantoms_export_and_preview_commands(tmp_path):
    proc = stress(
        "phantoms", "export", "scenarios/ci_smoke.yaml", "--out", str(tmp_path / "nii"), "--cases", "2"
    )
    assert "exported 2 cases as nifti" in proc.stdout
    assert (tmp_path / "nii" / "case-000001" / "mask.nii.gz").exists()
    proc = stress(
        "phantoms",
        "export",
        "scenarios/ci_smoke.yaml",
        "--out",
        str(tmp_path / "x"),
        "--format",
        "png",
        check_rc=2,
    )
    assert "unknown format 'png' (expected one of: nifti, dicom)" in proc.stderr
    png = tmp_path / "preview.png"
    stress("phantoms", "preview", "scenarios/ci_smoke.yaml", "--out", str(png), "--show", "2", "--pool", "4")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_perturbation_ladder_montage_command(tmp_path):
    png = tmp_path / "ladders.png"
    proc = stress(
        "perturbations",
        "montage",
        "scenarios/ci_smoke.yaml",
        "--names",
        "ct_dose,crop_pad",
        "--out",
        str(png),
    )
    assert "ladder montage:" in proc.stdout and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    proc = stress(
        "perturbations",
        "montage",
        "scenarios/ci_smoke.yaml",
        "--names",
        "ct_dos",
        "--out",
        str(png),
        check_rc=2,
    )
    assert "did you mean 'ct_dose'" in proc.stderr and "Traceback" not in proc.stderr
    proc = stress(
        "perturbations",
        "montage",
        "scenarios/ci_smoke.yaml",
        "--names",
        "ct_dose",
        "--case",
        "99",
        check_rc=2,
    )
    assert "--case: 99 (expected 0 to 47)" in proc.stderr


def test_ladder_images_start_at_nominal_and_follow_the_ladder():
    import torch

    from perturbations import PERTURBATIONS
    from phantoms.chest_ct import ChestCTSpec, generate_chest_ct
    from phantoms.population import PopulationSpec
    from stress.ladder_montage import ladder_images

    batch = generate_chest_ct(
        ChestCTSpec(shape=(16, 48, 48), spacing_mm=(10.0, 7.5, 7.5), vessel_generations=2),
        PopulationSpec(prevalence=1.0),
        3,
        [0],
        torch.device("cpu"),
    )
    images = ladder_images(batch, 0, "gaussian_blur", seed=3)
    assert [v for v, _ in images] == [0.0, *PERTURBATIONS.get("gaussian_blur").ladder]
    k = images[0][1].shape
    assert all(img.shape == k for _, img in images)
    # the nominal blur is the identity; each harsher level removes more detail (lower gradient energy)
    energy = [float((abs(img[1:] - img[:-1])).sum()) for _, img in images]
    assert energy == sorted(energy, reverse=True) and energy[0] > energy[-1]
