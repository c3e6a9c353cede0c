"""Simulated model updates (``derive:``): each change is made, measured and recorded."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from e2e_helpers import TINY

from phantoms import PHANTOMS
from stress.errors import ScenarioError, StressError
from stress.models import LoadedModel, Prediction
from stress.models.base import sha256_state
from stress.models.derive import derive_model, weight_layers
from stress.runner import load_models, run_scenario
from stress.scenario import load_scenario, parse_scenario
from stress.scenario.loader import phantom_spec

CPU = torch.device("cpu")
V2_LINE = '  - {name: v2, role: candidate, python: "stress.models.demo:candidate"}\n'


def tiny_text(*derived: str, n_cases: int = 4) -> str:
    """The tiny end-to-end scenario with ``derived`` model entries (flow mappings) after v1 and v2."""
    text = TINY.format(
        n_cases=n_cases, reference="stress.models.demo:reference", candidate="stress.models.demo:candidate"
    )
    lines = "".join(f"  - {{{entry}}}\n" for entry in derived)
    return text.replace(V2_LINE, V2_LINE + lines)


def derived(*entries: str) -> dict[str, LoadedModel]:
    """The models of the tiny scenario with ``entries`` added, by name."""
    sc = parse_scenario(tiny_text(*entries), "tiny.yaml")
    return {m.name: m for m in load_models(sc, CPU, Path("."))}


@pytest.fixture(scope="module")
def cases() -> tuple[torch.Tensor, tuple[float, float, float]]:
    sc = parse_scenario(tiny_text(), "tiny.yaml")
    batch = PHANTOMS.get("chest_ct").generate(phantom_spec(sc), sc.population, sc.seed, list(range(8)), CPU)
    return batch.image, batch.spacing_mm


def scores(model: LoadedModel, cases) -> torch.Tensor:
    image, spacing = cases
    out, errors = model.predict(image.clone(), spacing, [f"c{i}" for i in range(len(image))])
    assert not any(errors)
    return out


def test_prune_zeroes_the_amount_of_every_layer_and_records_it():
    models = derived("name: p, role: candidate, derive: {from: v1, update: prune, amount: 0.5}")
    net, fp = models["p"].predictor, models["p"].fingerprint
    for name, layer in weight_layers(net):
        n = layer.weight.numel()
        assert abs(int((layer.weight == 0).sum()) - 0.5 * n) <= 1, name
        assert fp["zero_fraction_by_layer"][name] == pytest.approx(0.5, abs=1 / n)
    assert fp["zero_fraction"] == pytest.approx(0.5, abs=1e-3) and fp["n_weights"] == 10_600
    assert fp["source_state_sha256"] == models["v1"].fingerprint["state_sha256"] != fp["state_sha256"]
    source = models["v1"].predictor  # untouched
    assert sha256_state(source) == fp["source_state_sha256"]
    assert all(int((m.weight == 0).sum()) == 0 for _, m in weight_layers(source))


def test_global_pruning_zeroes_the_amount_overall():
    fp = derived("name: p, role: candidate, derive: {from: v1, update: prune, amount: 0.3, scope: global}")[
        "p"
    ]
    assert abs(fp.fingerprint["zero_fraction"] * 10_600 - 0.3 * 10_600) <= 1
    assert len(set(fp.fingerprint["zero_fraction_by_layer"].values())) > 1  # layers pruned unequally


def test_int8_quantisation_quarters_the_state_and_keeps_the_outputs_close(cases):
    models = derived("name: q, role: candidate, derive: {from: v1, update: quantize_int8}")
    q, fp = models["q"], models["q"].fingerprint
    assert fp["state_bytes_float32"] == 10_641 * 4
    assert 0.24 < fp["state_bytes_int8"] / fp["state_bytes_float32"] < 0.27
    state = q.predictor.state_dict()
    assert all(
        state[f"{name}.weight_int8"].dtype == torch.int8 for name, _ in weight_layers(models["v1"].predictor)
    )
    # symmetric int8 per output channel: rounding moves a weight by at most half a step, max|w_c| / 254
    half_steps = [
        (m.weight.detach().flatten(1).abs().amax(dim=1) / 254.0).max().item()
        for _, m in weight_layers(models["v1"].predictor)
    ]
    assert 0 < fp["max_abs_weight_change"] <= max(half_steps) * (1 + 1e-5)
    diff = (scores(q, cases) - scores(models["v1"], cases)).abs().max()
    assert 0 < diff < 5e-3


def test_weight_noise_changes_the_outputs_and_is_reproducible(cases):
    entry = "name: {}, role: candidate, derive: {{from: v1, update: weight_noise, std: 0.1, seed: {}}}"
    models = derived(entry.format("a", 3), entry.format("b", 3), entry.format("c", 4))
    fa, fb, fc = (models[k].fingerprint for k in "abc")
    assert fa["state_sha256"] == fb["state_sha256"] != fc["state_sha256"]
    assert fa["relative_weight_change"] == pytest.approx(0.1, rel=0.1)
    assert (scores(models["a"], cases) - scores(models["v1"], cases)).abs().max() > 1e-3
    assert torch.equal(scores(models["a"], cases), scores(models["b"], cases))


def test_threshold_shift_changes_the_threshold_only(cases):
    models = derived("name: t, role: candidate, derive: {from: v1, update: threshold_shift, delta: 0.15}")
    t, v1 = models["t"], models["v1"]
    assert t.threshold == pytest.approx(0.65) and t.fingerprint["source_threshold"] == 0.5
    assert t.predictor is v1.predictor and t.fingerprint["state_sha256"] == v1.fingerprint["state_sha256"]
    assert torch.equal(scores(t, cases), scores(v1, cases))


def test_temperature_two_moves_probabilities_towards_one_half_as_sigmoid_of_half_the_logit(cases):
    models = derived("name: t, role: candidate, derive: {from: v1, update: temperature, temperature: 2}")
    p, p2 = scores(models["v1"], cases), scores(models["t"], cases)
    assert torch.equal(p2, torch.sigmoid(torch.logit(p) / 2))
    assert ((p2 - 0.5).abs() < (p - 0.5).abs()).all()
    assert models["t"].threshold == 0.5 and models["t"].fingerprint["temperature"] == 2.0


def test_recalibration_wraps_a_black_box_and_keeps_its_per_case_errors():
    class BlackBox:
        def predict(self, image, spacing_mm):
            return Prediction(torch.tensor([0.9, float("nan")]), (None, "timed out"))

    sc = parse_scenario(
        tiny_text("name: t, role: candidate, derive: {from: v1, update: temperature, temperature: 0.5}"),
        "t.yaml",
    )
    box = LoadedModel("v1", "reference", 0.5, BlackBox(), {"adapter": "command"})
    out, errors = derive_model(sc.models[2], box, sc, CPU, "models[2]").predict(
        torch.zeros(2, 1, 2, 2, 2), (1,) * 3, ["a", "b"]
    )
    assert out[0].item() == pytest.approx(
        torch.sigmoid(torch.logit(torch.tensor(0.9, dtype=torch.float64)) * 2).item()
    )
    assert errors == [None, "timed out"]
    prune = parse_scenario(
        tiny_text("name: p, role: candidate, derive: {from: v1, update: prune, amount: 0.5}"), "p.yaml"
    )
    with pytest.raises(StressError, match=r"models\[2\]\.derive\.from: 'prune' changes weights.*BlackBox"):
        derive_model(prune.models[2], box, prune, CPU, "models[2]")


def test_fine_tune_changes_the_weights_reproducibly_and_leaves_the_source_alone():
    entry = (
        "name: {}, role: candidate, derive: {{from: v1, update: fine_tune, steps: 3, batch_size: 4, "
        "lr: 0.001, seed: 5, shift: {{name: ct_dose, severity: 0.1}}}}"
    )
    sc = parse_scenario(tiny_text(entry.format("f"), entry.format("g")), "f.yaml")
    v1 = load_models(parse_scenario(tiny_text(), "v.yaml"), CPU, Path("."))[0]
    before = sha256_state(v1.predictor)
    f = derive_model(sc.models[2], v1, sc, CPU, "models[2]")
    g = derive_model(sc.models[3], v1, sc, CPU, "models[3]")
    assert sha256_state(v1.predictor) == before == f.fingerprint["source_state_sha256"]
    assert f.fingerprint["state_sha256"] == g.fingerprint["state_sha256"] != before
    assert f.fingerprint["fine_tune_final_loss"] == g.fingerprint["fine_tune_final_loss"]
    assert f.fingerprint["fine_tune_cases"] == "1000000000..1000000011"
    assert f.fingerprint["max_abs_weight_change"] > 0
    assert not f.predictor.training and f.predictor is not v1.predictor


def test_a_derived_model_can_be_derived_again():
    models = derived(
        "name: t, role: candidate, threshold: 0.7, derive: {from: v1, update: temperature, temperature: 3}",
        "name: n, role: candidate, derive: {from: t, update: prune, amount: 0.25}",
        "name: s, role: candidate, derive: {from: n, update: threshold_shift, delta: -0.2}",
    )
    assert models["n"].threshold == 0.7 and models["s"].threshold == pytest.approx(0.5)
    assert models["n"].fingerprint["zero_fraction"] == pytest.approx(0.25, abs=1e-3)
    assert models["n"].predictor.temperature == 3  # still recalibrated, weights pruned beneath
    assert models["n"].fingerprint["source_state_sha256"] == models["v1"].fingerprint["state_sha256"]


@pytest.mark.parametrize(
    ("entries", "where", "message"),
    [
        (
            ["name: c, role: candidate, derive: {from: v9, update: prune, amount: 0.5}"],
            "models[2].derive.from",
            "unknown model 'v9'",
        ),
        (
            [
                "name: c, role: candidate, derive: {from: d, update: prune, amount: 0.5}",
                "name: d, role: candidate, derive: {from: v1, update: quantize_int8}",
            ],
            "models[2].derive.from",
            "model 'd' is listed after 'c'",
        ),
        (
            [
                'name: bb, role: candidate, command: "python -c pass {input} {output}"',
                "name: c, role: candidate, derive: {from: bb, update: prune, amount: 0.5}",
            ],
            "models[3].derive.update",
            "'prune' changes weights, which 'bb' does not expose (it is a command model",
        ),
        (
            [
                "name: q, role: candidate, derive: {from: v1, update: quantize_int8}",
                "name: c, role: candidate, derive: {from: q, update: weight_noise, std: 0.1}",
            ],
            "models[3].derive.update",
            "'q' holds int8 weights",
        ),
        (
            ["name: c, role: candidate, derive: {from: v1, update: prun, amount: 0.5}"],
            "models[2].derive.update",
            "unknown update 'prun' (did you mean 'prune'?)",
        ),
        (
            ["name: c, role: candidate, derive: {from: v1, update: prune, amount: 1.5}"],
            "models[2].derive.amount",
            "less than 1",
        ),
        (
            ["name: c, role: candidate, derive: {from: v1, update: prune, amount: 0.5, scpoe: layer}"],
            "models[2].derive.scpoe",
            "unknown key 'scpoe' (did you mean 'scope'?) (expected one of: amount, from, scope, update)",
        ),
        (
            ["name: c, role: candidate, derive: {from: v1, update: threshold_shift, delta: 0.6}"],
            "models[2].derive.delta",
            "is 1.1 (expected a threshold in [0, 1])",
        ),
        (
            [
                "name: c, role: candidate, derive: {from: v1, update: fine_tune, "
                "shift: {name: ct_dos, severity: 0.5}}"
            ],
            "models[2].derive.shift.name",
            "unknown perturbation 'ct_dos' (did you mean 'ct_dose'?)",
        ),
    ],
)
def test_bad_derivations_are_reported_with_file_and_line(entries, where, message):
    text = tiny_text(*entries)
    with pytest.raises(ScenarioError) as info:
        parse_scenario(text, "s.yaml", check_imports=False)
    lines = str(info.value).splitlines()
    assert len(lines) == 1, lines
    entry = entries[int(where.split("[")[1].split("]")[0]) - 2]  # models[2] is the first entry added
    line = next(i for i, t in enumerate(text.splitlines(), 1) if entry in t)
    assert lines[0].startswith(f"s.yaml:{line}:") and f": {where}: " in lines[0] and message in lines[0], (
        lines[0]
    )


@pytest.mark.filterwarnings("ignore::stress.stats.bootstrap.UndefinedMetricWarning")  # 4 cases: CIs undefined
def test_a_run_with_derived_candidates_records_the_derivations(tmp_path):
    scenario = tmp_path / "tiny.yaml"
    text = tiny_text(
        "name: v1q, role: candidate, derive: {from: v1, update: quantize_int8}",
        "name: v1t, role: candidate, derive: {from: v1q, update: threshold_shift, delta: 0.25}",
    )
    scenario.write_text(text.replace("chunk_cases: 2", "chunk_cases: 4"))
    loaded = load_scenario(scenario)
    assert [m.threshold for m in loaded.scenario.models] == [0.5, 0.5, 0.5, 0.75]  # what the statistics use
    store = run_scenario(loaded, tmp_path / "run", show_progress=False)
    manifest = json.loads((store.root / "manifest.json").read_text())
    assert set(manifest["models"]) == {"v1", "v2", "v1q", "v1t"} and manifest["status"] == "complete"
    entry = manifest["models"]["v1q"]
    assert entry["adapter"] == "derive" and entry["from"] == "v1" and entry["update"] == "quantize_int8"
    assert entry["source_state_sha256"] == manifest["models"]["v1"]["state_sha256"] != entry["state_sha256"]
    assert entry["state_bytes_int8"] < entry["state_bytes_float32"] and entry["role"] == "candidate"
    shifted = manifest["models"]["v1t"]
    assert shifted["threshold"] == 0.75 and shifted["state_sha256"] == entry["state_sha256"]
    results = store.read_results()
    assert list(results["model"].unique()) == ["v1", "v2", "v1q", "v1t"]  # the scenario's order
    score = {m: results[results.model == m].score.to_numpy() for m in ("v1q", "v1t")}
    assert (score["v1q"] == score["v1t"]).all()
    run_scenario(loaded, tmp_path / "run", show_progress=False)  # the recorded derivation resumes as is


def test_the_documented_example_is_valid():
    doc = (Path(__file__).resolve().parents[2] / "docs" / "model-updates.md").read_text()
    block = re.search(r"```yaml\n(models:\n.*?)```", doc, re.S).group(1)
    text = tiny_text()
    start, stop = text.index("models:\n"), text.index("metrics:")
    sc = parse_scenario(text[:start] + block + text[stop:], "model-updates.md")
    assert [m.derive.update for m in sc.models[1:]] == [
        "quantize_int8",
        "prune",
        "weight_noise",
        "threshold_shift",
        "temperature",
        "fine_tune",
    ]
    assert sc.models[4].threshold == pytest.approx(0.6)


def test_fine_tuning_a_model_without_gradients_is_a_clear_error():
    class NoGrad(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv3d(1, 1, 1)

        @torch.no_grad()
        def predict(self, image, spacing_mm):
            return torch.sigmoid(self.conv(image).amax(dim=(1, 2, 3, 4)))

    entry = "name: f, role: candidate, derive: {from: v1, update: fine_tune, steps: 1, batch_size: 2}"
    sc = parse_scenario(tiny_text(entry), "f.yaml")
    source = LoadedModel("v1", "reference", 0.5, NoGrad(), {})
    with pytest.raises(StressError, match=r"models\[2\]\.derive: .*predict\(\) output carries no gradient"):
        derive_model(sc.models[2], source, sc, CPU, "models[2]")
