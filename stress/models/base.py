"""The model protocol and the adapter registry.

A model is anything with ``predict(image, spacing_mm) -> probabilities``: ``image`` is a batch
``(B, 1, D, H, W)`` in physical units (HU for CT) on the run's device, and the result is ``(B,)``
probabilities of the positive class. Adapters turn a scenario's ``models:`` entry into such an
object and fingerprint it (SHA-256 of its weight files and of its parameters) for the manifest.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from stress.errors import StressError
from stress.registry import Registry
from stress.scenario.schema import ModelSection


@dataclass(frozen=True)
class Prediction:
    """A batch's output with per-case failures: what an adapter returns when some cases can fail alone.

    Attributes:
        scores: ``(B,)`` probabilities; entries of failed cases are ignored (NaN by convention).
        errors: one entry per case: ``None`` when the case succeeded, else a sentence saying what went
            wrong and what was expected (e.g. ``"command timed out after 30 s (expected it to finish)"``).
    """

    scores: Tensor
    errors: tuple[str | None, ...]


@runtime_checkable
class Predictor(Protocol):
    """What a model factory must return."""

    def predict(self, image: Tensor, spacing_mm: tuple[float, float, float]) -> Tensor | Prediction:
        """Probabilities ``(B,)`` in [0, 1] for a batch ``(B, 1, D, H, W)``, or a :class:`Prediction`."""
        ...


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to run, with what the manifest records about it."""

    name: str
    role: str
    threshold: float
    predictor: Predictor
    fingerprint: dict[str, Any] = field(default_factory=dict)
    amp: bool = False

    def predict(
        self, image: Tensor, spacing_mm: tuple[float, float, float], case_ids: list[str]
    ) -> tuple[Tensor, list[str | None]]:
        """Run the model on a batch and check its output case by case.

        Returns:
            ``(scores, errors)``: float64 CPU probabilities ``(B,)`` (NaN where the case failed) and one
            entry per case, ``None`` or the reason the case failed. A model that raises, or returns
            something that is not a ``(B,)`` tensor, fails every case of the batch; a non-finite or
            out-of-range value fails its case only.
        """
        n = len(case_ids)
        try:
            with torch.inference_mode(), autocast(image.device, self.amp):
                out = self.predictor.predict(image, spacing_mm)
        except Exception as exc:  # noqa: BLE001  (any failure of third-party model code is bad model output)
            return _all_failed(n, f"predict() raised {type(exc).__name__}: {exc}")
        errors: list[str | None] = [None] * n
        if isinstance(out, Prediction):
            if len(out.errors) != n:
                return _all_failed(n, f"returned {len(out.errors)} per-case errors (expected {n})")
            errors = list(out.errors)
            out = out.scores
        if not isinstance(out, Tensor):
            return _all_failed(
                n, f"predict() returned {type(out).__name__} (expected a torch.Tensor of shape (B,))"
            )
        out = out.detach().reshape(-1) if out.ndim == 2 and out.shape[1] == 1 else out.detach()
        if tuple(out.shape) != (n,):
            return _all_failed(n, f"output shape {tuple(out.shape)} (expected ({n},) probabilities)")
        scores = out.to(torch.float64).cpu().clone()  # never write into the model's (inference-mode) tensor
        for i, value in enumerate(scores.tolist()):
            if errors[i] is None and not (0.0 <= value <= 1.0):  # also catches NaN
                errors[i] = f"output {value!r} (expected a probability in [0, 1])"
            if errors[i] is not None:
                scores[i] = math.nan
        return scores, errors


def autocast(device: torch.device, enabled: bool) -> torch.autocast:
    """Mixed precision for inference: float16 on CUDA, bfloat16 on the CPU (off unless ``enabled``)."""
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=enabled)


def _all_failed(n: int, reason: str) -> tuple[Tensor, list[str | None]]:
    return torch.full((n,), math.nan, dtype=torch.float64), [reason] * n


def sha256_file(path: str | Path) -> str:
    """SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sha256_state(module: torch.nn.Module) -> str:
    """SHA-256 over a module's parameters and buffers (names, dtypes, shapes and bytes), in name order."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


# (scenario entry, device, location for messages e.g. "models[1]", scenario folder) -> loaded model
Adapter = Callable[[ModelSection, torch.device, str, Path], LoadedModel]
ADAPTERS: Registry[Adapter] = Registry("model adapter")


def load_python(section: ModelSection, device: torch.device, where: str, base_dir: Path) -> LoadedModel:
    """``python: module:factory``: import the module, call ``factory(device=..., **kwargs)``."""
    module_name, attr = str(section.python).split(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001  (ImportError, or any error raised while importing user code)
        raise StressError(
            f"{where}.python: cannot import '{module_name}': {type(exc).__name__}: {exc} "
            "(expected an importable module)"
        ) from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise StressError(
            f"{where}.python: '{module_name}' has no callable '{attr}' (expected a factory function)"
        )
    try:
        predictor = factory(device=device, **section.kwargs)
    except TypeError as exc:
        raise StressError(
            f"{where}.kwargs: factory '{section.python}' rejected its arguments: {exc}"
        ) from None
    except Exception as exc:  # noqa: BLE001  (a factory that fails, e.g. on missing weights)
        raise StressError(
            f"{where}.python: factory '{section.python}' failed: {type(exc).__name__}: {exc} "
            "(expected it to return a model)"
        ) from None
    if not isinstance(predictor, Predictor):
        raise StressError(
            f"{where}.python: factory returned {type(predictor).__name__} "
            "(expected an object with predict(image, spacing_mm))"
        )
    fingerprint: dict[str, Any] = {"adapter": "python", "target": section.python, "kwargs": section.kwargs}
    files = [Path(p) for p in getattr(predictor, "weight_files", [])]
    fingerprint["weights_sha256"] = {p.name: sha256_file(p) for p in files}
    if isinstance(predictor, torch.nn.Module):
        fingerprint["state_sha256"] = sha256_state(predictor)
    if hasattr(predictor, "version"):
        fingerprint["version"] = str(predictor.version)
    return LoadedModel(section.name, section.role, section.threshold, predictor, fingerprint)


ADAPTERS.register("python", load_python)


def load_model(
    section: ModelSection, device: torch.device, index: int, base_dir: Path | str = "."
) -> LoadedModel:
    """Load the model of entry ``models[index]`` with its adapter (paths relative to ``base_dir``)."""
    adapter_name, _ = section.adapter
    if adapter_name not in ADAPTERS:
        raise StressError(
            f"models[{index}].{adapter_name}: this adapter is not available in this installation "
            f"(available: {', '.join(ADAPTERS.names())})"
        )
    loaded = ADAPTERS.get(adapter_name)(section, device, f"models[{index}]", Path(base_dir))
    if section.amp:
        loaded = dataclasses.replace(loaded, amp=True, fingerprint={**loaded.fingerprint, "amp": True})
    if not section.preprocess:
        return loaded
    from stress.models.preprocess import Preprocessed  # here: keeps this module free of torch.nn.functional

    steps = [step.model_dump(mode="json") for step in section.preprocess]
    return dataclasses.replace(
        loaded,
        predictor=Preprocessed(loaded.predictor, section.preprocess),
        fingerprint={**loaded.fingerprint, "preprocess": steps},
    )
