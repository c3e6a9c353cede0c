"""The black-box ``command:`` adapter: files in and out, and a clear per-case error for every failure.

The "models" are the small scripts in tests/data/black_box/, run with this interpreter.
"""

from __future__ import annotations

import math
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from e2e_helpers import stress as stress_cli
from e2e_helpers import write_scenario

from stress.errors import StressError
from stress.models import ADAPTERS, LoadedModel
from stress.scenario.schema import ModelSection

ROOT = Path(__file__).resolve().parents[2]
BOXES = ROOT / "tests" / "data" / "black_box"
SPACING = (2.5, 0.7, 0.8)


def load(script: str, base_dir: Path = ROOT, **io) -> LoadedModel:
    """The command model ``python tests/data/black_box/<script> {input} {output}`` (script may add args)."""
    return load_command(f"{sys.executable} tests/data/black_box/{script}", base_dir, **io)


def load_command(template: str, base_dir: Path = ROOT, **io) -> LoadedModel:
    section = ModelSection(name="box", role="candidate", command=template, command_io=io)
    return ADAPTERS.get("command")(section, torch.device("cpu"), "models[0]", base_dir)


def images(n: int = 2, shape: tuple[int, int, int] = (8, 16, 16)) -> torch.Tensor:
    """``n`` lung-like volumes in HU; case b is brighter than case b-1, case 0 has one dense voxel."""
    g = torch.Generator().manual_seed(3)
    out = torch.stack([-750.0 + 100.0 * b + 300.0 * torch.rand((1, *shape), generator=g) for b in range(n)])
    out[0, 0, 2, 3, 4] = 250.0
    return out


def lung_score(volume: torch.Tensor) -> float:
    """The scripts' model, computed here: sigmoid of the mean HU in a lung window (level -600, width 1500)."""
    mean = volume.to(torch.float64).clamp(-1350.0, 150.0).mean().item()
    return 1.0 / (1.0 + math.exp(-(mean + 500.0) / 50.0))


def run(model: LoadedModel, image: torch.Tensor) -> tuple[list[float], list[str | None]]:
    ids = [f"case-{i:06d}" for i in range(image.shape[0])]
    scores, errors = model.predict(image, SPACING, ids)
    return scores.tolist(), errors


@pytest.mark.parametrize("batch", [1, 2])
def test_nifti_in_json_out_matches_the_same_function_in_python(batch):
    image = images(3)  # with batch 2: a call of 2 cases, then a short call of 1
    scores, errors = run(load("nifti_json.py {input} {output}", batch=batch), image)
    assert errors == [None, None, None]
    expected = [lung_score(image[b]) for b in range(3)]
    assert scores == pytest.approx(expected, abs=1e-9)  # float32 NIfTI round trip is exact
    assert len(set(scores)) == 3


def test_dicom_series_in_json_out_keeps_hu_within_1_and_the_spacing(tmp_path, monkeypatch):
    monkeypatch.setenv("BLACK_BOX_DUMP", str(tmp_path))  # the command inherits the environment
    image = images(1) + torch.linspace(-200.0, 1500.0, 16).view(1, 1, 1, 1, 16)  # within the CT range
    scores, errors = run(load("dicom_json.py {input} {output}", input_format="dicom"), image)
    assert errors == [None]
    dump = np.load(tmp_path / "dicom.npz")
    assert dump["hu"].shape == tuple(image.shape[2:])
    assert np.abs(dump["hu"] - image[0, 0].numpy()).max() <= 0.5 + 1e-3  # rounded to integer HU
    assert dump["spacing"] == pytest.approx(SPACING, abs=1e-5)
    assert str(dump["modality"]) == "CT"
    assert scores[0] == pytest.approx(lung_score(image[0]), abs=1e-2)


@pytest.mark.parametrize("batch", [1, 2])
def test_nifti_mask_output_gives_its_maximum(batch):
    scores, errors = run(
        load("nifti_mask.py {input} {output}", output_format="nifti", batch=batch), images(2)
    )
    assert errors == [None, None] and scores == [1.0, 0.0]  # only case 0 has a voxel above 0 HU


def test_dicom_seg_output_is_one_when_a_segment_pixel_is_set():
    model = load("dicom_seg.py {input} {output}", input_format="dicom", output_format="dicom_seg")
    scores, errors = run(model, images(1, shape=(4, 16, 16)))
    assert errors == [None] and scores == [1.0]


JSON_ERRORS = {
    "nan": 'output JSON "probability" is NaN (expected a number in [0, 1])',
    "out_of_range": 'output JSON "probability" is 1.7 (expected a number in [0, 1])',
    "text": 'output JSON "probability" is "high" (expected a number in [0, 1])',
    "malformed": "output is not valid JSON: Expecting ',' delimiter: line 1 column 20 (char 19) "
    '(expected {"probability": p})',
    "missing_key": 'output JSON has no "probability" key (expected {"probability": p})',
    "list": 'output JSON is a list (expected an object such as {"probability": p})',
    "nothing": "command wrote no output (expected a JSON file at {output})",
}


@pytest.mark.parametrize("mode", JSON_ERRORS)
def test_unusable_json_fails_each_case_with_its_sentence(mode):
    scores, errors = run(load(f"writes.py {{input}} {{output}} {mode}"), images(1))
    assert errors == [JSON_ERRORS[mode]] and math.isnan(scores[0])


def test_batched_json_forms_and_their_errors():
    two = images(2)
    assert run(load("writes.py {input} {output} probabilities", batch=2), two) == ([0.25, 0.75], [None, None])
    scores, errors = run(load("writes.py {input} {output} partial_keys", batch=2), two)
    assert scores[0] == 0.25 and math.isnan(scores[1])
    assert errors == [
        None,
        'output JSON has no "case-000001" key '
        '(expected {"probabilities": [p, ...]} or {"case-000000": p, ...})',
    ]
    _, errors = run(load("writes.py {input} {output} short_list", batch=2), two)
    assert errors == ['output JSON "probabilities" holds 1 value(s) (expected a list of 2, one per case)'] * 2


def test_non_zero_exit_reports_the_code_and_the_last_line_of_stderr():
    scores, errors = run(load("fails.py {input} {output}"), images(2))
    message = (
        "command exited with code 3: FileNotFoundError: weights/model.pt not found (expected exit code 0)"
    )
    assert errors == [message, message] and all(math.isnan(s) for s in scores)


def test_messages_name_the_placeholders_not_the_temporary_paths():
    model = load_command("sh -c 'echo \"cannot read $0\" >&2; exit 1' {input} {output}")
    _, errors = run(model, images(1))
    assert errors == [
        "command exited with code 1: cannot read {workdir}/input/case-000000.nii.gz (expected exit code 0)"
    ]
    _, errors = run(load_command("sh -c 'kill -9 $$' {input} {output}"), images(1))
    assert errors == [
        "command was killed by signal SIGKILL and wrote nothing on stderr (expected exit code 0)"
    ]


def test_a_program_that_cannot_start_fails_its_cases(tmp_path):
    program = tmp_path / "model.sh"
    program.write_text("#!/bin/sh\nexit 0\n")  # not executable
    _, errors = run(load_command("./model.sh {input} {output}", base_dir=tmp_path), images(1))
    assert errors[0].startswith("command could not start: PermissionError: ")
    assert errors[0].endswith("(expected an executable program)")


def test_timeout_kills_the_command_and_its_children(tmp_path, monkeypatch):
    monkeypatch.setenv("BLACK_BOX_DUMP", str(tmp_path))
    start = time.monotonic()
    scores, errors = run(load("hangs.py {input} {output}", timeout_s=2), images(1))
    assert time.monotonic() - start < 15  # the sleeper asks for 30 s
    assert errors == ["command timed out after 2 s (expected it to finish within command_io.timeout_s)"]
    assert math.isnan(scores[0])
    child = int((tmp_path / "child.pid").read_text())
    status = Path(f"/proc/{child}/status")
    for _ in range(50):  # killed at once; reaped by its new parent soon after
        if not status.exists() or "\nState:\tZ" in status.read_text():
            break
        time.sleep(0.1)
    assert not status.exists() or "\nState:\tZ" in status.read_text()


def test_wrong_shape_nifti_fails_with_the_expected_shape():
    _, errors = run(load("wrong_shape.py {input} {output}", output_format="nifti"), images(1))
    assert errors == ["output NIfTI has shape (4, 16, 16) (expected (8, 16, 16), the input's D, H, W)"]


def test_nifti_output_values_and_missing_files(tmp_path):
    import SimpleITK as sitk

    from stress.models import command_io

    shape = (2, 3, 4)
    for name, values in {"nan": np.full(shape, np.nan), "two": np.full(shape, 2.0)}.items():
        sitk.WriteImage(sitk.GetImageFromArray(values.astype(np.float32)), str(tmp_path / f"{name}.nii.gz"))
    (tmp_path / "junk.nii.gz").write_bytes(b"not a nifti")
    read = command_io.read_nifti
    assert read(tmp_path / "nan.nii.gz", shape, "{output}")[1] == (
        "output NIfTI holds NaN or infinite values (expected a mask or probability map in [0, 1])"
    )
    assert read(tmp_path / "two.nii.gz", shape, "{output}")[1] == (
        "output NIfTI values span [2, 2] (expected a mask or probability map in [0, 1])"
    )
    assert read(tmp_path / "junk.nii.gz", shape, "{output}")[1].startswith(
        "output is not a readable NIfTI file: "
    )
    assert read(tmp_path / "none.nii.gz", shape, "{output}/case-000001.nii.gz")[1] == (
        "command wrote no output (expected a NIfTI file at {output}/case-000001.nii.gz)"
    )
    assert command_io.read_seg(tmp_path / "two.nii.gz", shape, "{output}")[1].startswith(
        "output is not a readable DICOM SEG: "
    )
    series = command_io.write_inputs(command_io.blind_batch(images(1), SPACING), "dicom", tmp_path / "ct")[0]
    assert command_io.read_seg(series / "slice-0000.dcm", (8, 16, 16), "{output}")[1] == (
        "output DICOM has SOP class 1.2.840.10008.5.1.4.1.1.2 "
        "(expected Segmentation Storage, 1.2.840.10008.5.1.4.1.1.66.4)"
    )


def test_a_case_that_fails_alone_leaves_the_others(tmp_path, monkeypatch):
    monkeypatch.setenv("BLACK_BOX_COUNTER", str(tmp_path / "calls"))
    monkeypatch.setenv("BLACK_BOX_FAIL_CALL", "2")
    image = images(3)
    scores, errors = run(load("flaky.py {input} {output}"), image)
    assert errors == [
        None,
        "command exited with code 3: segmentation fault in call 2 (simulated) (expected exit code 0)",
        None,
    ]
    assert math.isnan(scores[1])
    assert [scores[0], scores[2]] == pytest.approx([lung_score(image[0]), lung_score(image[2])], abs=1e-9)


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{python} x.py {input}", "models[0].command: the command line has no {output} placeholder"),
        (
            "{python} x.py {inptu} {output}",
            "models[0].command: unknown placeholder {inptu} (did you mean 'input'?)",
        ),
        (
            "no-such-program-xyz {input} {output}",
            "models[0].command: cannot find the program 'no-such-program-xyz'",
        ),
        ("./missing.sh {input} {output}", "models[0].command: cannot find the program './missing.sh'"),
        (
            "{python} 'x.py {input} {output}",
            "models[0].command: cannot split the command line: No closing quotation",
        ),
    ],
)
def test_bad_command_lines_are_load_errors(template, message):
    with pytest.raises(StressError) as info:
        load_command(template.replace("{python}", sys.executable))
    assert str(info.value).startswith(message), str(info.value)


def test_kwargs_are_refused():
    section = ModelSection(name="box", role="candidate", command="sh {input} {output}", kwargs={"a": 1})
    with pytest.raises(StressError, match="models\\[0\\].kwargs: the command adapter takes no kwargs"):
        ADAPTERS.get("command")(section, torch.device("cpu"), "models[0]", ROOT)


def test_fingerprint_hashes_the_files_the_command_names(tmp_path):
    script = tmp_path / "box.py"
    shutil.copy(BOXES / "nifti_json.py", script)
    template = f"{sys.executable} box.py {{input}} {{output}}"
    first = load_command(template, base_dir=tmp_path, timeout_s=5).fingerprint
    assert first["adapter"] == "command" and first["target"] == template
    assert first["command_io"] == {
        "input_format": "nifti",
        "output_format": "json",
        "timeout_s": 5.0,
        "batch": 1,
    }
    assert set(first["files_sha256"]) == {sys.executable, "box.py"}
    script.write_text(script.read_text() + "\n# changed\n")
    second = load_command(template, base_dir=tmp_path, timeout_s=5).fingerprint
    assert second["files_sha256"]["box.py"] != first["files_sha256"]["box.py"]
    assert second["files_sha256"][sys.executable] == first["files_sha256"][sys.executable]


def test_a_run_with_a_black_box_completes_and_records_its_failed_case(tmp_path, monkeypatch):
    monkeypatch.setenv("BLACK_BOX_COUNTER", str(tmp_path / "calls"))
    monkeypatch.setenv(
        "BLACK_BOX_FAIL_CALL", "3"
    )  # calls 1-2: the first batch; call 3: case 0 at ct_dose 0.25
    scenario = write_scenario(tmp_path / "box.yaml", n_cases=4)
    command = f"{sys.executable} {BOXES / 'flaky.py'} {{input}} {{output}}"
    text = scenario.read_text().replace(
        'python: "stress.models.demo:candidate"', f'command: "{command}", command_io: {{timeout_s: 60}}'
    )
    scenario.write_text(text)
    proc = stress_cli("run", str(scenario), "--out", str(tmp_path / "run"), "--no-progress")
    assert "warning: model 'v2' failed on 1 of 16 evaluations" in proc.stderr
    assert "segmentation fault in call 3" in proc.stderr
    results = pd.read_parquet(tmp_path / "run" / "results.parquet")
    failed = results[results["error"] != ""]
    assert len(failed) == 1 and failed["score"].isna().all()
    row = failed.iloc[0]
    assert (row["model"], row["case_id"], row["perturbation"], row["severity"]) == (
        "v2",
        "case-000000",
        "ct_dose",
        0.25,
    )
    assert (
        row["error"]
        == "command exited with code 3: segmentation fault in call 3 (simulated) (expected exit code 0)"
    )
    v2 = results[(results["model"] == "v2") & (results["error"] == "")]
    assert len(v2) == 15 and v2["score"].between(0.0, 1.0).all()
    metrics = pd.read_parquet(tmp_path / "run" / "metrics.parquet")
    auc = metrics[(metrics["model"] == "v2") & (metrics["subgroup"] == "all") & (metrics["metric"] == "auc")]
    assert auc["n_failed"].sum() == 1
    manifest = (tmp_path / "run" / "manifest.json").read_text()
    assert '"adapter": "command"' in manifest and "flaky.py" in manifest


def test_dicom_input_with_an_mr_phantom_is_refused_at_validation():
    from stress.errors import ScenarioError
    from stress.scenario import parse_scenario

    text = (
        "name: mr-box\nseed: 1\nphantom: {generator: brain_mri, n_cases: 4}\n"
        "perturbations: [{name: mri_bias_field, severities: [0.0]}]\n"
        "models:\n  - name: box\n    role: reference\n"
        '    command: "true {input} {output}"\n'
        "    command_io: {input_format: dicom}\n"
    )
    with pytest.raises(ScenarioError, match="dicom writes a CT series, but brain_mri makes MR images") as err:
        parse_scenario(text, "mr.yaml")
    assert "models[0].command_io.input_format" in str(err.value)
