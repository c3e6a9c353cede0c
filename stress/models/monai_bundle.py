"""MONAI bundles: ``monai_bundle: folder``.

A bundle is a folder with ``configs/inference.json`` (or ``.yaml``), optionally
``configs/metadata.json``, and ``models/model.pt`` (a state dict, or ``{"model": state dict}``).
The adapter reads the config with :class:`monai.bundle.ConfigParser`, instantiates the network
(config item ``network_def``, else ``network``; ``kwargs: {network: id}`` picks another), loads the
weights strictly and moves it to the run's device. A bundle's config can run code (``$`` expressions,
``_target_`` classes): treat it like a ``python:`` model.

Per batch: the bundle's preprocessing (when simple, below), the network, then an activation that
turns case logits into probabilities. Neither the bundle's inferer nor its postprocessing is used:
the network must return one row per case, ``(B,)``, ``(B, 1)`` or ``(B, 2)``.

``kwargs`` (all optional):

* ``activation``: ``auto`` (default: ``sigmoid`` of one logit, ``softmax[:, 1]`` of two; the metadata's
  ``network_data_format.outputs`` channel count decides when present, else the output's shape),
  ``sigmoid``, ``softmax`` or ``none`` (the network already returns probabilities).
* ``preprocessing``: ``auto`` (default: the config item ``preprocessing`` if the bundle has one),
  ``none``, or another config id. Cases arrive as in-memory channel-first tensors in physical units
  with no image metadata, so only intensity transforms are applied (:data:`APPLIED`); loaders and
  channel-first steps are skipped (:data:`SKIPPED`); any other step (spacing, orientation, cropping)
  is an error at load time: set ``preprocessing: none`` to feed the network the images as they are.
* ``network``: config id of the network.

The manifest records ``adapter``, ``target``, ``path``, ``weights_sha256`` (``models/model.pt`` and the
config files, by path inside the bundle), ``state_sha256``, ``network``, ``activation``,
``preprocessing`` and the bundle's ``version`` when its metadata has one.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from stress.errors import StressError
from stress.models.base import ADAPTERS, LoadedModel, sha256_state
from stress.models.compiled import fingerprint, resolve_target
from stress.scenario.schema import ModelSection

CONFIG_NAMES = ("inference.json", "inference.yaml", "inference.yml")
METADATA_NAME = "metadata.json"
WEIGHTS_NAME = "models/model.pt"
ACTIVATIONS = {  # kwarg value -> what the manifest says
    "auto": "auto: sigmoid of 1 logit, softmax[:, 1] of 2",
    "sigmoid": "sigmoid(logit)",
    "softmax": "softmax(logits)[:, 1]",
    "none": "none (the network returns probabilities)",
}
IMAGE_KEY = "image"
SKIPPED = frozenset({"LoadImage", "LoadImaged", "EnsureChannelFirst", "EnsureChannelFirstd"})
_INTENSITY = (
    "EnsureType", "CastToType", "ScaleIntensity", "ScaleIntensityRange", "ScaleIntensityRangePercentiles",
    "NormalizeIntensity", "ThresholdIntensity", "ShiftIntensity", "ClipIntensityPercentiles",
)  # fmt: skip
APPLIED = frozenset(_INTENSITY) | frozenset(f"{n}d" for n in _INTENSITY)
BUNDLE_KWARGS = {
    "activation": f"one of {', '.join(ACTIVATIONS)}",
    "preprocessing": "auto, none or a config id",
    "network": "config id of the network",
}

Step = Callable[[Tensor], Tensor]


class BundlePredictor:
    """A bundle's network with its simple preprocessing and an activation to probabilities."""

    def __init__(self, network: nn.Module, activation: str, steps: list[Step]) -> None:
        self.network = network
        self.activation = activation
        self.steps = steps

    def preprocess(self, image: Tensor) -> Tensor:
        """Apply the preprocessing steps case by case (MONAI transforms take one channel-first image)."""
        if not self.steps:
            return image
        cases = []
        for case in image:
            for step in self.steps:
                case = step(case)
            cases.append(torch.as_tensor(case).as_subclass(Tensor))  # MetaTensor -> plain tensor
        return torch.stack(cases).to(image.device, torch.float32)

    def predict(self, image: Tensor, spacing_mm: tuple[float, float, float]) -> Tensor:
        """Probabilities ``(B,)``; raises ``ValueError`` when the network's output is not case logits."""
        out = self.network(self.preprocess(image))
        if not isinstance(out, Tensor):
            raise ValueError(f"network returned {type(out).__name__} (expected a tensor of case logits)")
        out = out[:, None] if out.ndim == 1 else out
        if out.ndim != 2 or out.shape[1] not in (1, 2):
            raise ValueError(
                f"network returned shape {tuple(out.shape)} (expected (B,), (B, 1) or (B, 2) case logits; "
                "maps, e.g. from a segmentation bundle, need a python adapter that reduces them)"
            )
        act = (
            self.activation if self.activation != "auto" else ("sigmoid" if out.shape[1] == 1 else "softmax")
        )
        if act == "sigmoid" and out.shape[1] == 1:
            return torch.sigmoid(out[:, 0].float())
        if act == "softmax" and out.shape[1] == 2:
            return torch.softmax(out.float(), dim=1)[:, 1]
        if act == "none":
            return out[:, -1]
        raise ValueError(f"activation '{act}' does not fit {out.shape[1]} output channel(s)")


def _parse(folder: Path, key: str, where: str) -> tuple[Any, dict[str, Path]]:
    """A ConfigParser holding the bundle's inference config (and metadata), and the files read."""
    try:
        from monai.bundle import ConfigParser
    except ImportError:
        raise StressError(f"{where}.{key}: MONAI is not installed (expected `pip install monai`)") from None
    config = next((folder / "configs" / n for n in CONFIG_NAMES if (folder / "configs" / n).is_file()), None)
    if config is None:
        raise StressError(
            f"{where}.{key}: {folder} has no configs/inference.json (expected a MONAI bundle folder with "
            "configs/inference.json or .yaml and models/model.pt)"
        )
    files = {f"configs/{config.name}": config}
    parser = ConfigParser()
    try:
        meta = folder / "configs" / METADATA_NAME
        if meta.is_file():
            parser.read_meta(str(meta))
            files[f"configs/{METADATA_NAME}"] = meta
        parser.read_config(str(config))
    except Exception as exc:  # noqa: BLE001  (JSON/YAML syntax errors, a config that is not a mapping)
        raise StressError(
            f"{where}.{key}: cannot read the configs of {folder}: {type(exc).__name__}: {exc} "
            "(expected JSON or YAML mappings)"
        ) from None
    parser["bundle_root"] = str(folder)
    return parser, files


def _instantiate(parser: Any, item: str, what: str, where: str, key: str) -> Any:
    try:
        return parser.get_parsed_content(item, instantiate=True)
    except Exception as exc:  # noqa: BLE001  (unknown _target_, bad arguments, failing expressions)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise StressError(
            f"{where}.{key}: cannot build the bundle's {what} '{item}': {type(exc).__name__}: {first} "
            "(expected its _target_ to be importable and its arguments valid)"
        ) from None


def _network(parser: Any, item: str, folder: Path, device: torch.device, where: str, key: str) -> nn.Module:
    """The bundle's network (config ``item``) with its weights loaded, in eval mode on ``device``."""
    if item not in parser:
        raise StressError(
            f"{where}.{key}: {folder}'s config has no '{item}' (expected network_def or network)"
        )
    if "imports" in parser:
        _instantiate(parser, "imports", "imports", where, key)
    network = _instantiate(parser, item, "network", where, key)
    if not isinstance(network, nn.Module):
        raise StressError(
            f"{where}.{key}: config item '{item}' is a {type(network).__name__} (expected a torch.nn.Module)"
        )
    weights = folder / WEIGHTS_NAME
    if not weights.is_file():
        raise StressError(f"{where}.{key}: {weights} does not exist (expected the bundle's weights)")
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and isinstance(state.get("model"), dict):
            state = state["model"]  # MONAI's CheckpointSaver layout
        network.load_state_dict(state)
    except Exception as exc:  # noqa: BLE001  (corrupt file, non-tensor pickles, missing/unexpected keys)
        first = str(exc).strip().splitlines()[0]
        raise StressError(
            f"{where}.{key}: cannot load {weights} into '{item}': {type(exc).__name__}: {first} "
            "(expected a state dict matching the network)"
        ) from None
    return network.eval().to(device)


def _step(transform: Any) -> Step:
    from monai.transforms import MapTransform

    if isinstance(transform, MapTransform):
        return lambda case: transform({IMAGE_KEY: case})[IMAGE_KEY]
    return transform


def _preprocessing(parser: Any, choice: str, where: str, key: str) -> tuple[list[Step], str]:
    """The preprocessing steps to apply, and how the manifest describes them."""
    from monai.transforms import Compose, MapTransform

    if choice == "none" or (choice == "auto" and "preprocessing" not in parser):
        return [], "none"
    item = "preprocessing" if choice == "auto" else choice
    if item not in parser:
        raise StressError(f"{where}.kwargs.preprocessing: the bundle has no config item '{item}'")
    transform = _instantiate(parser, item, "preprocessing", where, key)
    transforms = list(transform.transforms) if isinstance(transform, Compose) else [transform]
    names = [type(t).__name__ for t in transforms]
    other = [n for n in names if n not in APPLIED | SKIPPED]
    if other:
        raise StressError(
            f"{where}.{key}: preprocessing '{item}' has steps that need files or image metadata: "
            f"{', '.join(other)} (only intensity transforms are applied to in-memory images: "
            f"{', '.join(sorted(_INTENSITY))}; set kwargs: {{preprocessing: none}} to run the network "
            "on the images as they are)"
        )
    kept = [t for t in transforms if type(t).__name__ in APPLIED]
    for t in kept:
        if isinstance(t, MapTransform) and IMAGE_KEY not in t.keys:
            raise StressError(
                f"{where}.{key}: preprocessing step {type(t).__name__} reads keys {list(t.keys)} "
                f"(expected '{IMAGE_KEY}')"
            )
    return [_step(t) for t in kept], f"{item}: " + " -> ".join(type(t).__name__ for t in kept)


def _activation(section: ModelSection, parser: Any, where: str) -> str:
    act = section.kwargs.get("activation", "auto")
    if act not in ACTIVATIONS:
        raise StressError(f"{where}.kwargs.activation: '{act}' (expected one of {', '.join(ACTIVATIONS)})")
    if act == "auto":
        outputs = parser.get("_meta_", {}).get("network_data_format", {}).get("outputs", {})
        channels = next(iter(outputs.values()), {}).get("num_channels") if isinstance(outputs, dict) else None
        act = {1: "sigmoid", 2: "softmax"}.get(channels, "auto")
    return act


def load_monai_bundle(section: ModelSection, device: torch.device, where: str, base_dir: Path) -> LoadedModel:
    """``monai_bundle: folder``: the bundle's network and weights, simple preprocessing, an activation."""
    key = section.adapter[0]
    unknown = sorted(set(section.kwargs) - set(BUNDLE_KWARGS))
    if unknown:
        accepted = ", ".join(f"{k} ({v})" for k, v in BUNDLE_KWARGS.items())
        raise StressError(
            f"{where}.kwargs: the monai_bundle adapter does not take {unknown} (accepted: {accepted})"
        )
    folder = resolve_target(section, where, base_dir, folder=True)
    parser, files = _parse(folder, key, where)
    activation = _activation(section, parser, where)
    item = str(section.kwargs.get("network") or ("network_def" if "network_def" in parser else "network"))
    network = _network(parser, item, folder, device, where, key)
    steps, described = _preprocessing(parser, str(section.kwargs.get("preprocessing", "auto")), where, key)
    files = {WEIGHTS_NAME: folder / WEIGHTS_NAME, **files}
    info = fingerprint(section, folder, files)
    info["state_sha256"] = sha256_state(network)
    info["network"] = item
    info["activation"] = ACTIVATIONS[activation]
    info["preprocessing"] = described
    version = parser.get("_meta_", {}).get("version")
    if version is not None:
        info["version"] = str(version)
    predictor = BundlePredictor(network, activation, steps)
    return LoadedModel(section.name, section.role, section.threshold, predictor, info)


ADAPTERS.register("monai_bundle", load_monai_bundle)
