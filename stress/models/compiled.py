"""Compiled models: ``torchscript: file`` and ``onnx: file``.

Both kinds of file hold a graph that takes only the image, ``(B, 1, D, H, W)`` float32 in physical
units (HU for CT), and returns ``(B,)`` or ``(B, 1)`` probabilities. The voxel spacing is not passed:
an exported model must have been trained for the scenario's geometry (or be spacing-agnostic).

* ``torchscript``: ``torch.jit.load(path, map_location=device)``, run on the run's device.
* ``onnx``: an ONNX Runtime session (CUDA execution provider first when the run's device is a CUDA
  device and the provider is installed, else CPU). An ONNX model necessarily leaves torch: each batch
  is copied to the host as a float32 NumPy array, and the session copies it to its own device.

The manifest records, per model: ``adapter``, ``target`` (as written in the scenario), ``path``
(resolved), ``weights_sha256`` (``{file name: SHA-256}``) and, for ONNX, the execution ``providers``.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from stress.errors import StressError
from stress.models.base import ADAPTERS, LoadedModel, sha256_file, sha256_state
from stress.scenario.checks import model_path
from stress.scenario.schema import ModelSection

ONNX_KWARGS = {"providers": "list of ONNX Runtime execution providers to try in order"}


def resolve_target(section: ModelSection, where: str, base_dir: Path, *, folder: bool = False) -> Path:
    """The file (or, with ``folder``, the folder) an adapter key names; a clear error when it is not there."""
    key, target = section.adapter
    path = model_path(target, base_dir)
    expected = "a bundle folder" if folder else f"a {key} model file"
    if not path.exists():
        raise StressError(
            f"{where}.{key}: {path} does not exist "
            f"(expected {expected}; relative paths start at the scenario's folder)"
        )
    if folder != path.is_dir():
        found = "a folder" if path.is_dir() else "a file"
        raise StressError(f"{where}.{key}: {path} is {found} (expected {expected})")
    return path


def fingerprint(section: ModelSection, path: Path, files: dict[str, Path]) -> dict[str, Any]:
    """What the manifest records about a file-based model: adapter, target, resolved path, SHA-256s."""
    key, target = section.adapter
    return {
        "adapter": key,
        "target": target,
        "path": str(path.resolve()),
        "weights_sha256": {name: sha256_file(p) for name, p in files.items()},
    }


def _reject_kwargs(section: ModelSection, where: str, allowed: dict[str, str]) -> None:
    unknown = sorted(set(section.kwargs) - set(allowed))
    if unknown:
        key = section.adapter[0]
        accepted = ", ".join(f"{k} ({v})" for k, v in allowed.items()) or "none"
        raise StressError(
            f"{where}.kwargs: the {key} adapter does not take {unknown} (accepted: {accepted}; "
            "an exported graph takes only the image)"
        )


class TorchScriptPredictor:
    """A TorchScript module whose ``forward(image)`` returns probabilities."""

    def __init__(self, module: torch.jit.ScriptModule) -> None:
        self.module = module

    def predict(self, image: Tensor, spacing_mm: tuple[float, float, float]) -> Tensor:
        """Probabilities ``(B,)`` or ``(B, 1)``; ``spacing_mm`` is not passed to the graph."""
        return self.module(image)


def load_torchscript(section: ModelSection, device: torch.device, where: str, base_dir: Path) -> LoadedModel:
    """``torchscript: file``: load a TorchScript archive on the run's device."""
    _reject_kwargs(section, where, {})
    path = resolve_target(section, where, base_dir)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated in torch >= 2.9
            module = torch.jit.load(str(path), map_location=device)
    except Exception as exc:  # noqa: BLE001  (corrupt zip, unpickling errors, missing records, ...)
        raise StressError(
            f"{where}.torchscript: cannot load {path}: {type(exc).__name__}: {str(exc).splitlines()[0]} "
            "(expected a TorchScript archive written by torch.jit.save; a state dict written by "
            "torch.save needs the python adapter)"
        ) from None
    inputs = [a for a in module.forward.schema.arguments if a.name != "self"]
    if len(inputs) != 1:
        raise StressError(
            f"{where}.torchscript: {path}: forward takes {len(inputs)} inputs "
            f"({', '.join(a.name for a in inputs) or 'none'}) (expected one, the image (B, 1, D, H, W))"
        )
    module.eval()
    info = fingerprint(section, path, {path.name: path})
    info["state_sha256"] = sha256_state(module)
    return LoadedModel(section.name, section.role, section.threshold, TorchScriptPredictor(module), info)


class OnnxPredictor:
    """An ONNX Runtime session with one image input; the first output is taken as the probabilities."""

    def __init__(self, session: Any, input_name: str, output_name: str) -> None:
        self.session = session
        self.input_name = input_name
        self.output_name = output_name

    def predict(self, image: Tensor, spacing_mm: tuple[float, float, float]) -> Tensor:
        """Probabilities ``(B,)`` or ``(B, 1)`` (on the CPU); the image leaves the device as NumPy."""
        array = image.detach().to("cpu", torch.float32).contiguous().numpy()
        (out,) = self.session.run([self.output_name], {self.input_name: array})
        return torch.from_numpy(np.ascontiguousarray(out))


def onnx_providers(device: torch.device, available: list[str]) -> list[str | tuple[str, dict[str, Any]]]:
    """Execution providers for the run's device: CUDA first on a CUDA device when installed, CPU always."""
    providers: list[str | tuple[str, dict[str, Any]]] = []
    if device.type == "cuda" and "CUDAExecutionProvider" in available:
        providers.append(("CUDAExecutionProvider", {"device_id": device.index or 0}))
    providers.append("CPUExecutionProvider")
    return providers


def load_onnx(section: ModelSection, device: torch.device, where: str, base_dir: Path) -> LoadedModel:
    """``onnx: file``: open an ONNX Runtime inference session for the file."""
    _reject_kwargs(section, where, ONNX_KWARGS)
    path = resolve_target(section, where, base_dir)
    try:
        import onnxruntime as ort
    except ImportError:
        raise StressError(
            f"{where}.onnx: onnxruntime is not installed (expected `pip install onnxruntime`)"
        ) from None
    providers = section.kwargs.get("providers") or onnx_providers(device, ort.get_available_providers())
    if not isinstance(providers, list) or not all(isinstance(p, (str, tuple)) for p in providers):
        raise StressError(
            f"{where}.kwargs.providers: {providers!r} (expected a list of provider names, e.g. "
            f"[CUDAExecutionProvider, CPUExecutionProvider]; installed: {ort.get_available_providers()})"
        )
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: no warnings about unused initialisers etc.
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as exc:  # noqa: BLE001  (InvalidProtobuf, Fail, invalid provider names, ...)
        raise StressError(
            f"{where}.onnx: cannot load {path}: {type(exc).__name__}: {str(exc).splitlines()[0]} "
            "(expected an ONNX model file, e.g. written by torch.onnx.export)"
        ) from None
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1 or len(inputs[0].shape) != 5 or inputs[0].type != "tensor(float)":
        found = ", ".join(f"{i.name} {i.type} of rank {len(i.shape)}" for i in inputs) or "no input"
        raise StressError(
            f"{where}.onnx: {path} takes {found} "
            "(expected one input, the image: tensor(float) of rank 5, (B, 1, D, H, W))"
        )
    if not outputs or len(outputs[0].shape) not in (1, 2):
        found = f"rank {len(outputs[0].shape)}" if outputs else "no output"
        raise StressError(
            f"{where}.onnx: {path}: first output has {found} (expected (B,) or (B, 1) probabilities)"
        )
    info = fingerprint(section, path, {path.name: path})
    info["providers"] = session.get_providers()
    predictor = OnnxPredictor(session, inputs[0].name, outputs[0].name)
    return LoadedModel(section.name, section.role, section.threshold, predictor, info)


ADAPTERS.register("torchscript", load_torchscript)
ADAPTERS.register("onnx", load_onnx)
