"""TorchScript, ONNX and MONAI-bundle adapters give the python adapter's outputs on the demo models (CPU)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from e2e_helpers import stress, write_scenario

from phantoms.chest_ct import ChestCTSpec
from stress.errors import ScenarioError, StressError
from stress.models import load_model
from stress.models.base import sha256_file, sha256_state
from stress.models.demo import WEIGHTS_DIR, candidate, reference
from stress.models.demo.export import BUNDLES_DIR, export_all, export_onnx, export_torchscript
from stress.models.demo.train import make_cases
from stress.scenario import parse_scenario
from stress.scenario.schema import ModelSection

CPU = torch.device("cpu")
SPACING = (10.0, 10.0, 10.0)
FACTORIES = {"v1": reference, "v2": candidate}
TOLERANCE = {"torchscript": 1e-5, "onnx": 1e-4, "monai_bundle": 1e-5}
ADAPTER_FILES = {"torchscript": "weights/nodule_{v}.ts", "onnx": "weights/nodule_{v}.onnx"}


def section(key: str, target: str | Path, **kwargs) -> ModelSection:
    return ModelSection(name="m", role="candidate", kwargs=kwargs, **{key: str(target)})


def target(key: str, version: str) -> str:
    return f"bundles/nodule_{version}" if key == "monai_bundle" else ADAPTER_FILES[key].format(v=version)


def scores(model_section: ModelSection, image: torch.Tensor, base_dir: Path) -> torch.Tensor:
    model = load_model(model_section, CPU, 0, base_dir)
    out, errors = model.predict(image, SPACING, [f"c{i}" for i in range(len(image))])
    assert errors == [None] * len(image)
    return out


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    """Fresh exports of the CURRENT .pt weights, laid out like the shipped ones (weights/, bundles/)."""
    root = tmp_path_factory.mktemp("exports")
    export_all(root / "weights", root / "bundles")
    return root


@pytest.fixture(scope="module")
def batch() -> torch.Tensor:
    """Two chest CT phantoms (one with a nodule at least, by the demo population) and one random HU volume."""
    spec = ChestCTSpec(shape=(16, 32, 32), spacing_mm=SPACING, vessel_generations=2)
    images = make_cases(2, 5, spec)[0]
    noise = torch.rand((1, 1, 16, 32, 32), generator=torch.Generator().manual_seed(0)) * 1400 - 1000
    return torch.cat([images, noise])


@pytest.fixture(scope="module")
def python_scores(batch) -> dict[str, torch.Tensor]:
    with torch.inference_mode():
        return {v: f().predict(batch, SPACING).double() for v, f in FACTORIES.items()}


@pytest.mark.parametrize("version", ["v1", "v2"])
@pytest.mark.parametrize("key", ["torchscript", "onnx", "monai_bundle"])
def test_fresh_exports_match_the_python_model(exported, batch, python_scores, key, version):
    out = scores(section(key, target(key, version)), batch, exported)
    diff = (out - python_scores[version]).abs().max().item()
    assert diff <= TOLERANCE[key], f"{key} {version}: max |diff| {diff:.2e}"


@pytest.mark.parametrize("version", ["v1", "v2"])
@pytest.mark.parametrize("key", ["torchscript", "onnx", "monai_bundle"])
def test_shipped_exports_match_the_shipped_weights(batch, python_scores, key, version):
    """A stale export (weights retrained, not re-exported) fails: `python -m stress.models.demo.export`."""
    out = scores(section(key, target(key, version)), batch, WEIGHTS_DIR.parent)
    diff = (out - python_scores[version]).abs().max().item()
    assert diff <= TOLERANCE[key], f"shipped {key} {version} is stale: max |diff| {diff:.2e}; re-export"


def test_dynamic_axes_batch_of_one_and_odd_sizes(exported):
    image = torch.rand((1, 1, 17, 21, 26), generator=torch.Generator().manual_seed(1)) * 1400 - 1000
    expected = reference().predict(image, SPACING).double().detach()
    for key in ("torchscript", "onnx"):
        diff = (scores(section(key, target(key, "v1")), image, exported) - expected).abs().max().item()
        assert diff <= TOLERANCE[key], key


def test_fingerprints_hold_the_files_sha256(exported):
    for key in ("torchscript", "onnx"):
        path = exported / target(key, "v1")
        info = load_model(section(key, path), CPU, 0, exported).fingerprint
        assert info["adapter"] == key and info["target"] == str(path) and info["path"] == str(path.resolve())
        assert info["weights_sha256"] == {path.name: sha256_file(path)}
    assert load_model(section("onnx", target("onnx", "v1")), CPU, 0, exported).fingerprint["providers"] == [
        "CPUExecutionProvider"
    ]
    bundle = load_model(section("monai_bundle", "bundles/nodule_v1"), CPU, 0, exported).fingerprint
    folder = exported / "bundles" / "nodule_v1"
    assert bundle["weights_sha256"] == {
        "models/model.pt": sha256_file(WEIGHTS_DIR / "nodule_v1.pt"),  # the bundle ships the .pt itself
        "configs/inference.json": sha256_file(folder / "configs" / "inference.json"),
        "configs/metadata.json": sha256_file(folder / "configs" / "metadata.json"),
    }
    assert bundle["state_sha256"] == sha256_state(reference())
    assert bundle["activation"] == "sigmoid(logit)" and bundle["version"] == "1.0.0"
    assert bundle["preprocessing"] == "preprocessing: EnsureTyped -> ScaleIntensityRanged"


def test_shipped_bundles_carry_the_shipped_weights():
    for version in ("v1", "v2"):
        shipped = BUNDLES_DIR / f"nodule_{version}" / "models" / "model.pt"
        assert sha256_file(shipped) == sha256_file(WEIGHTS_DIR / f"nodule_{version}.pt"), "re-export"


def test_export_is_byte_reproducible(exported, tmp_path):
    """Same bytes from a second export (the archive's inner folder is the file's stem: keep the name)."""
    for name, export in [("nodule_v2.ts", export_torchscript), ("nodule_v2.onnx", export_onnx)]:
        again = export("v2", tmp_path / name)
        assert sha256_file(again) == sha256_file(exported / "weights" / name), name
        assert str(Path.cwd()).encode() not in again.read_bytes()  # no absolute source paths inside


# --- errors: what, where, expected -----------------------------------------------------------------


@pytest.mark.parametrize("key", ["torchscript", "onnx"])
def test_missing_corrupt_and_folder_targets_are_clear_errors(tmp_path, key):
    (tmp_path / "folder.bin").mkdir()
    (tmp_path / "corrupt.bin").write_bytes(b"this is not a model\n" * 10)
    for name, expected in [
        ("missing.bin", "does not exist (expected a"),
        ("folder.bin", "is a folder (expected a"),
        ("corrupt.bin", "cannot load"),
    ]:
        with pytest.raises(StressError, match=rf"^models\[0\]\.{key}: .*{name}.*") as err:
            load_model(section(key, name), CPU, 0, tmp_path)
        assert expected in str(err.value)


def test_torchscript_given_a_state_dict_says_which_adapter_fits():
    with pytest.raises(
        StressError, match=r"models\[0\]\.torchscript: cannot load .*nodule_v1\.pt.*python adapter"
    ):
        load_model(section("torchscript", WEIGHTS_DIR / "nodule_v1.pt"), CPU, 0, Path("."))


def test_onnx_with_the_wrong_input_rank_is_rejected(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "flat",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), tmp_path / "flat.onnx")
    with pytest.raises(
        StressError, match=r"models\[0\]\.onnx: .*flat\.onnx takes x tensor\(float\) of rank 2 "
    ):
        load_model(section("onnx", "flat.onnx"), CPU, 0, tmp_path)


def test_compiled_adapters_reject_kwargs(exported):
    with pytest.raises(
        StressError, match=r"models\[0\]\.kwargs: the torchscript adapter does not take \['spacing'\]"
    ):
        load_model(section("torchscript", target("torchscript", "v1"), spacing=1), CPU, 0, exported)


def _bundle_copy(exported: Path, tmp_path: Path, **edits) -> Path:
    folder = tmp_path / "bundle"
    shutil.copytree(exported / "bundles" / "nodule_v1", folder)
    config = json.loads((folder / "configs" / "inference.json").read_text())
    config.update(edits)
    (folder / "configs" / "inference.json").write_text(json.dumps(config))
    return folder


def test_bundle_preprocessing_is_applied_or_skipped_on_request(exported, tmp_path, batch, python_scores):
    shift = {"_target_": "ShiftIntensityd", "keys": "image", "offset": 300.0}
    folder = _bundle_copy(exported, tmp_path, preprocessing={"_target_": "Compose", "transforms": [shift]})
    shifted = reference().predict(batch + 300.0, SPACING).double().detach()
    assert (scores(section("monai_bundle", folder), batch, tmp_path) - shifted).abs().max() <= 1e-5
    plain = scores(section("monai_bundle", folder, preprocessing="none"), batch, tmp_path)
    assert (plain - python_scores["v1"]).abs().max() <= 1e-5


def test_bundle_two_logits_go_through_softmax(exported, tmp_path, batch, python_scores):
    # [0, logit] -> softmax[:, 1] == sigmoid(logit)
    net = "$torch.nn.Sequential(@base, torch.nn.ConstantPad1d((1, 0), 0.0))"
    base = {"_target_": "stress.models.demo.export.NoduleLogits"}
    folder = _bundle_copy(exported, tmp_path, base=base, network_def=net)
    state = torch.load(folder / "models" / "model.pt", weights_only=True)
    torch.save({"model": {f"0.{k}": v for k, v in state.items()}}, folder / "models" / "model.pt")
    (folder / "configs" / "metadata.json").unlink()
    model = load_model(section("monai_bundle", folder), CPU, 0, tmp_path)
    assert model.fingerprint["activation"].startswith("auto")
    out, _ = model.predict(batch, SPACING, ["a", "b", "c"])
    assert (out - python_scores["v1"]).abs().max() <= 1e-5


NET = {"_target_": "torch.nn.Conv3d", "in_channels": 1, "out_channels": 1, "kernel_size": 1}
SPACINGD = {"_target_": "Spacingd", "keys": "image", "pixdim": 1.0}


@pytest.mark.parametrize(
    ("edits", "kwargs", "message"),
    [
        (
            {"preprocessing": SPACINGD},
            {},
            "monai_bundle: preprocessing .* need files or image metadata: Spacingd",
        ),
        ({"network_def": NET}, {}, "monai_bundle: cannot load .*model.pt into 'network_def'"),
        ({"network_def": {"_target_": "no.such.Net"}}, {}, "monai_bundle: cannot build the bundle's network"),
        ({}, {"activation": "relu"}, r"kwargs.activation: 'relu' \(expected one of auto"),
        ({}, {"preprocess": "none"}, r"kwargs: the monai_bundle adapter does not take \['preprocess'\]"),
    ],
)
def test_bundle_problems_are_clear_errors(exported, tmp_path, edits, kwargs, message):
    folder = _bundle_copy(exported, tmp_path, **edits)
    with pytest.raises(StressError, match=rf"^models\[0\]\.{message}"):
        load_model(section("monai_bundle", folder, **kwargs), CPU, 0, tmp_path)


def test_bundle_folder_problems(tmp_path):
    (tmp_path / "file").write_text("x")
    (tmp_path / "empty").mkdir()
    for name, message in [
        ("missing", "does not exist"),
        ("file", "is a file"),
        ("empty", "no configs/inference.json"),
    ]:
        with pytest.raises(StressError, match=rf"^models\[0\]\.monai_bundle: .*{message}"):
            load_model(section("monai_bundle", name), CPU, 0, tmp_path)


# --- scenarios ------------------------------------------------------------------------------------


def _with_models(path: Path, models: str) -> Path:
    text = path.read_text()
    path.write_text(text[: text.index("models:\n")] + models + text[text.index("metrics:") :])
    return path


def test_validation_reports_a_missing_model_file_with_file_and_line(tmp_path):
    scenario = _with_models(
        write_scenario(tmp_path / "s.yaml"),
        'models:\n  - {name: v1, role: reference, python: "stress.models.demo:reference"}\n'
        "  - {name: v2, role: candidate, torchscript: missing.ts}\n",
    )
    with pytest.raises(ScenarioError) as err:
        parse_scenario(scenario.read_text(), str(scenario))
    (problem,) = err.value.problems
    assert problem.file == str(scenario) and problem.line > 0 and problem.path == "models[1].torchscript"
    assert str(tmp_path / "missing.ts") in problem.message and "expected a model file" in problem.message


def test_a_scenario_run_gives_the_python_scores_through_every_adapter(exported, tmp_path):
    shutil.copy(exported / "weights" / "nodule_v1.ts", tmp_path / "nodule_v1.ts")  # relative to the scenario
    scenario = _with_models(
        write_scenario(tmp_path / "s.yaml", n_cases=4),
        "models:\n"
        '  - {name: v1, role: reference, python: "stress.models.demo:reference"}\n'
        '  - {name: v2, role: candidate, python: "stress.models.demo:candidate"}\n'
        "  - {name: v1_ts, role: candidate, torchscript: nodule_v1.ts}\n"
        f"  - {{name: v2_onnx, role: candidate, onnx: {exported / 'weights' / 'nodule_v2.onnx'}}}\n"
        f"  - {{name: v1_bundle, role: candidate, monai_bundle: {exported / 'bundles' / 'nodule_v1'}}}\n",
    )
    stress("run", str(scenario), "--out", str(tmp_path / "run"), "--no-progress")
    results = pd.read_parquet(tmp_path / "run" / "results.parquet")
    wide = results.pivot_table(index=["case_id", "perturbation", "severity"], columns="model", values="score")
    assert len(wide) == 4 * 4 and not wide.isna().any().any()
    for name, python, tol in [("v1_ts", "v1", 1e-5), ("v2_onnx", "v2", 1e-4), ("v1_bundle", "v1", 1e-5)]:
        assert (wide[name] - wide[python]).abs().max() <= tol, name
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["models"]["v1_ts"]["weights_sha256"] == {
        "nodule_v1.ts": sha256_file(tmp_path / "nodule_v1.ts")
    }
    assert manifest["models"]["v2_onnx"]["adapter"] == "onnx"
    assert manifest["models"]["v1_bundle"]["state_sha256"] == manifest["models"]["v1"]["state_sha256"]
