"""Simulated model updates: ``derive:`` makes a candidate from another model of the scenario.

Each update starts from a deep copy of its source (the source itself is never touched) and records
what it did in the model's fingerprint (the manifest's ``models`` entry): its settings, a hash of
the source's fingerprint, the SHA-256 of the weights before and after, and the measured change
(zero fraction, state size in bytes, largest weight change, fine-tuning loss). Everything random
comes from explicitly seeded generators, and weights are changed on the CPU, so a derived model is
a pure function of its source and its settings. See docs/model-updates.md.

Weight updates (``quantize_int8``, ``prune``, ``weight_noise``, ``fine_tune``) act on the weights
of the convolution and linear layers (``weight_layers``) of a ``torch.nn.Module`` predictor;
``threshold_shift`` and ``temperature`` wrap any predictor, black boxes included.
"""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import prune

from stress.errors import StressError
from stress.models.base import LoadedModel, Prediction, Predictor, sha256_state
from stress.models.derive_train import fine_tune
from stress.scenario.schema import WEIGHT_UPDATES, ModelSection, Scenario

WEIGHT_TYPES = (nn.Linear, nn.modules.conv._ConvNd)


def weight_layers(net: nn.Module) -> list[tuple[str, nn.Module]]:
    """The convolution and linear layers of ``net`` whose ``weight`` is a float parameter, in module order."""
    return [
        (name, m)
        for name, m in net.named_modules()
        if isinstance(m, WEIGHT_TYPES) and isinstance(getattr(m, "weight", None), nn.Parameter)
    ]


def state_bytes(net: nn.Module) -> int:
    """Bytes of all tensors in ``net``'s state dict (parameters and buffers)."""
    return sum(t.numel() * t.element_size() for t in net.state_dict().values())


def zero_fraction(net: nn.Module) -> float:
    """Fraction of exactly-zero values over the conv/linear weights of ``net``."""
    weights = [m.weight.detach() for _, m in weight_layers(net)]
    return sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights)


class Int8Weight:
    """Forward pre-hook of an int8 layer: rebuilds ``weight`` from int8 values and per-channel scales.

    The layer holds ``weight_int8`` (int8, the weight's shape) and ``weight_scale`` (one float per
    output channel, i.e. per slice along dim 0) as buffers; ``weight`` is a plain attribute recomputed
    before every call, as :mod:`torch.nn.utils.prune` does for its masks.
    """

    def __call__(self, module: nn.Module, inputs: Any) -> None:
        """Set ``module.weight`` (float) from ``weight_int8`` and ``weight_scale``."""
        q, scale = module.weight_int8, module.weight_scale
        module.weight = q.to(scale.dtype) * scale.view(-1, *([1] * (q.ndim - 1)))


def quantize_layer(module: nn.Module) -> float:
    """Replace ``module.weight`` by symmetric per-output-channel int8; return the largest rounding error."""
    w = module.weight.detach()
    amax = w.abs().flatten(1).amax(dim=1)
    scale = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax))
    q = torch.round(w / scale.view(-1, *([1] * (w.ndim - 1)))).clamp(-127, 127).to(torch.int8)
    del module.weight
    module.register_buffer("weight_int8", q)
    module.register_buffer("weight_scale", scale)
    hook = Int8Weight()
    module.register_forward_pre_hook(hook)
    hook(module, ())
    return float((module.weight - w).abs().max())


class TemperatureScaled(nn.Module):
    """A predictor whose probabilities are recalibrated: ``sigmoid(logit(p) / temperature + logit_shift)``.

    An ``nn.Module`` so that a torch source stays one (its weights are ``inner.*``); any other
    predictor (a black box) is held as a plain attribute and called as is.
    """

    def __init__(self, inner: Predictor, temperature: float, logit_shift: float = 0.0) -> None:
        super().__init__()
        self.inner = inner
        self.temperature = temperature
        self.logit_shift = logit_shift

    def rescale(self, p: Tensor) -> Tensor:
        """The recalibrated probabilities (float64; NaN stays NaN, 0 and 1 stay 0 and 1)."""
        logit = torch.logit(p.to(torch.float64))
        return torch.sigmoid(logit / self.temperature + self.logit_shift)

    def predict(self, image: Tensor, spacing_mm: tuple[float, float, float]) -> Tensor | Prediction:
        """The inner model's output, recalibrated (per-case errors are kept)."""
        out = self.inner.predict(image, spacing_mm)
        if isinstance(out, Prediction):
            return Prediction(self.rescale(out.scores), out.errors)
        return self.rescale(out) if isinstance(out, Tensor) else out


def state_sha256(predictor: Any) -> str | None:
    """SHA-256 of a torch predictor's state (the wrapped model's for a recalibration), else ``None``."""
    if isinstance(predictor, TemperatureScaled):
        return state_sha256(predictor.inner)
    return sha256_state(predictor) if isinstance(predictor, nn.Module) else None


def _fingerprint_sha256(fingerprint: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True, default=str).encode()).hexdigest()


def _editable_copy(source: LoadedModel, update: str, where: str) -> nn.Module:
    """A CPU deep copy of the source's module, checked to have float conv/linear weights."""
    if not isinstance(source.predictor, nn.Module):
        raise StressError(
            f"{where}.derive.from: '{update}' changes weights, but '{source.name}' is a "
            f"{type(source.predictor).__name__}, not a torch.nn.Module (expected a python model returning "
            "one; threshold_shift and temperature wrap any model)"
        )
    try:
        net = copy.deepcopy(source.predictor).cpu()
    except Exception as exc:  # noqa: BLE001  (a user module holding something that cannot be copied)
        raise StressError(
            f"{where}.derive.from: '{source.name}' cannot be copied for '{update}': {type(exc).__name__}: "
            f"{exc} (expected a torch.nn.Module that copy.deepcopy can copy; the source is never changed)"
        ) from None
    if not weight_layers(net):
        raise StressError(
            f"{where}.derive.from: '{source.name}' has no float Conv or Linear weights for '{update}' "
            "(expected a network with convolution or linear layers, not int8-quantised)"
        )
    return net


def _max_change(before: dict[str, Tensor], net: nn.Module) -> float:
    return max(float((m.weight.detach() - before[n]).abs().max()) for n, m in weight_layers(net))


def _quantize_int8(net: nn.Module) -> dict[str, Any]:
    before = state_bytes(net)
    errors = [quantize_layer(m) for _, m in weight_layers(net)]
    return {
        "scheme": "weight-only symmetric int8, one float scale per output channel (conv/linear)",
        "n_layers": len(errors),
        "state_bytes_float32": before,
        "state_bytes_int8": state_bytes(net),
        "max_abs_weight_change": max(errors),
    }


def _prune(net: nn.Module, amount: float, scope: str) -> dict[str, Any]:
    layers = weight_layers(net)
    before = {n: m.weight.detach().clone() for n, m in layers}
    if scope == "global":
        params = [(m, "weight") for _, m in layers]
        prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=amount)
    else:
        for _, m in layers:
            prune.l1_unstructured(m, "weight", amount=amount)
    for _, m in layers:
        prune.remove(m, "weight")
    return {
        "n_weights": sum(m.weight.numel() for _, m in layers),
        "zero_fraction": zero_fraction(net),
        "zero_fraction_by_layer": {n: float((m.weight == 0).float().mean()) for n, m in layers},
        "max_abs_weight_change": _max_change(before, net),
    }


def _weight_noise(net: nn.Module, std: float, seed: int) -> dict[str, Any]:
    generator = torch.Generator().manual_seed(seed)
    layers = weight_layers(net)
    before = {n: m.weight.detach().clone() for n, m in layers}
    with torch.no_grad():
        for _, m in layers:
            w = m.weight
            rms = w.square().mean().sqrt()
            w.add_(torch.randn(w.shape, generator=generator, dtype=w.dtype) * (std * rms))
    change = sum(float((m.weight.detach() - before[n]).square().sum()) for n, m in layers)
    norm = sum(float(w.square().sum()) for w in before.values())
    return {
        "relative_weight_change": (change / norm) ** 0.5 if norm else float("nan"),
        "max_abs_weight_change": _max_change(before, net),
    }


def derive_model(
    section: ModelSection, source: LoadedModel, scenario: Scenario, device: torch.device, where: str
) -> LoadedModel:
    """Make the model of scenario entry ``section`` (at ``where``, e.g. ``models[2]``) from ``source``.

    Raises:
        StressError: when the source cannot take the update (weights that are not a torch module's,
            a threshold outside [0, 1]), or fine-tuning fails.
    """
    d = section.derive
    if d is None or d.source != source.name:
        raise StressError(f"{where}.derive.from: expected the model derived from '{source.name}'")
    fingerprint: dict[str, Any] = {
        "adapter": "derive",
        "from": source.name,
        "update": d.update,
        **d.settings(),
        "source_fingerprint_sha256": _fingerprint_sha256(source.fingerprint),
    }
    threshold = section.threshold if "threshold" in section.model_fields_set else source.threshold
    predictor: Any = source.predictor
    if d.update in WEIGHT_UPDATES:
        net = _editable_copy(source, d.update, where)
        fingerprint["source_state_sha256"] = state_sha256(net)
        if d.update == "quantize_int8":
            fingerprint.update(_quantize_int8(net))
        elif d.update == "prune":
            fingerprint.update(_prune(net, d.amount, d.scope))
        elif d.update == "weight_noise":
            fingerprint.update(_weight_noise(net, d.std, d.seed))
        else:
            before = {n: m.weight.detach().clone() for n, m in weight_layers(net)}
            fingerprint.update(fine_tune(net, d, scenario, where))
            fingerprint["max_abs_weight_change"] = _max_change(before, net)
        fingerprint["state_sha256"] = state_sha256(net)
        predictor = net.eval().to(device)
    else:
        digest = state_sha256(source.predictor)
        if digest is not None:
            fingerprint["source_state_sha256"] = fingerprint["state_sha256"] = digest
        if d.update == "threshold_shift":
            threshold = source.threshold + d.delta
            fingerprint["source_threshold"] = source.threshold
        else:
            predictor = TemperatureScaled(source.predictor, d.temperature, d.logit_shift)
    if not 0.0 <= threshold <= 1.0:
        raise StressError(
            f"{where}.derive.delta: threshold {source.threshold:g} shifted by {d.delta:g} is {threshold:g} "
            "(expected a threshold in [0, 1])"
        )
    return LoadedModel(section.name, section.role, threshold, predictor, fingerprint)
