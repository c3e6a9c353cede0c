"""Export the demo models in every form a model can reach us: TorchScript, ONNX and a MONAI bundle.

``python -m stress.models.demo.export`` writes, from the current ``weights/nodule_v*.pt``:

* ``weights/nodule_v1.ts``, ``weights/nodule_v2.ts``: TorchScript (traced), ``forward(image) -> (B,)``
  probabilities, for the ``torchscript:`` adapter;
* ``weights/nodule_v1.onnx``, ``weights/nodule_v2.onnx``: ONNX (opset 18, batch and spatial axes
  dynamic), input ``image`` ``(B, 1, D, H, W)`` float32 HU, output ``probability`` ``(B,)``;
* ``bundles/nodule_v1/``, ``bundles/nodule_v2/``: MONAI bundles (``configs/metadata.json``,
  ``configs/inference.json``, ``models/model.pt``) whose network returns case logits.

Re-run it after retraining the weights; tests check that the shipped exports still agree with the
``.pt`` files. The files are byte-reproducible for given torch, onnx and onnxscript versions, whatever
the checkout's folder: records holding absolute source paths are left out (see :func:`_trace` and
:func:`export_onnx`), and each trace runs in a fresh interpreter (see :func:`export_torchscript`).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from stress.models.demo import WEIGHTS_DIR, NoduleNet, candidate, reference

BUNDLES_DIR = Path(__file__).parent / "bundles"
FACTORIES = {"v1": reference, "v2": candidate}
VERSIONS = tuple(FACTORIES)
ONNX_OPSET = 18
# Tracing/export example: batch 2 and distinct spatial sizes so no axis gets specialised to 1 or tied.
EXAMPLE_SHAPE = (2, 1, 16, 24, 32)


class NoduleProbability(nn.Module):
    """What the compiled exports hold: ``forward(image) -> (B,)`` probabilities (spacing is no input)."""

    def __init__(self, net: NoduleNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, image: Tensor) -> Tensor:
        """Probability of a nodule per case for a batch ``(B, 1, D, H, W)`` in HU."""
        return torch.sigmoid(self.net.logits(image))


class NoduleLogits(NoduleNet):
    """The demo network with ``forward(image) -> (B, 1)`` case logits: the bundle's ``network_def``.

    Same parameters (and state-dict keys) as :class:`~stress.models.demo.NoduleNet`, so the bundle's
    ``models/model.pt`` is the ``.pt`` weight file itself.
    """

    def forward(self, image: Tensor) -> Tensor:
        """Case logits ``(B, 1)``: MONAI classification networks return one row of logits per case."""
        return self.logits(image)[:, None]


def _example() -> Tensor:
    return torch.linspace(-1000.0, 400.0, steps=int(torch.tensor(EXAMPLE_SHAPE).prod())).reshape(
        EXAMPLE_SHAPE
    )


def export_torchscript(version: str, path: Path) -> Path:
    """Trace demo model ``version`` (as :class:`NoduleProbability`) and save it at ``path``.

    The trace runs in a fresh interpreter: TorchScript names the types it creates after those the
    process already holds (``___torch_mangle_N``), so a second trace in one process gives other bytes.
    """
    code = (
        f"import sys; sys.path[:0] = {sys.path!r}; "
        f"from stress.models.demo.export import _trace; _trace({version!r}, {str(path)!r})"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    return path


def _trace(version: str, path: str | Path) -> None:
    """Trace and save, without debug records.

    ``torch.jit.save`` stores, next to each code file, a ``.debug_pkl`` of source locations holding
    absolute paths of this checkout and of torch; they are only used in error messages, so they are
    dropped (the archive is re-written record by record with torch's own zip writer) to make the file
    independent of where it was produced.
    """
    path = Path(path)
    module = NoduleProbability(FACTORIES[version]("cpu")).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated, still widely used
        traced = torch.jit.trace(module, (_example(),), _store_inputs=False)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        traced.save(str(tmp))
    try:
        reader = torch._C.PyTorchFileReader(str(tmp))
        writer = torch._C.PyTorchFileWriter(str(path))
        for name in reader.get_all_records():
            if not name.endswith(".debug_pkl") and name != ".data/serialization_id":  # the id is rewritten
                data = reader.get_record(name)
                writer.write_record(name, data, len(data))
        writer.write_end_of_file()
        del reader, writer
    except AttributeError:  # private API gone in a future torch: keep the archive as saved
        shutil.copyfile(tmp, path)
    tmp.unlink()


def export_onnx(version: str, path: Path, opset: int = ONNX_OPSET) -> Path:
    """Export demo model ``version`` (as :class:`NoduleProbability`) to ONNX at ``path``.

    Batch and spatial axes are dynamic. Uses the ``torch.export``-based exporter (needs ``onnx`` and
    ``onnxscript``). Node metadata (Python stack traces with absolute paths) is removed so the file
    does not depend on where it was produced.
    """
    import onnx

    module = NoduleProbability(FACTORIES[version]("cpu")).eval()
    dims = [torch.export.Dim(n, min=2, max=4096) for n in ("batch", "depth", "height", "width")]
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # e.g. "torchvision is not installed"
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module,
            (_example(),),
            input_names=["image"],
            output_names=["probability"],
            opset_version=opset,
            dynamo=True,
            dynamic_shapes={"image": {0: dims[0], 2: dims[1], 3: dims[2], 4: dims[3]}},
            external_data=False,
            verbose=False,
        )
    model = program.model_proto
    for node in model.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    del model.graph.metadata_props[:]
    model.graph.doc_string = ""
    onnx.checker.check_model(model)
    onnx.save_model(model, str(path))
    return path


def export_bundle(version: str, folder: Path) -> Path:
    """Write a MONAI bundle for demo model ``version`` into ``folder`` (its weights are a copy of the .pt)."""
    weights = WEIGHTS_DIR / f"nodule_{version}.pt"
    (folder / "configs").mkdir(parents=True, exist_ok=True)
    (folder / "models").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(weights, folder / "models" / "model.pt")
    inference = {
        "imports": ["$import torch"],
        "bundle_root": ".",
        "device": "$torch.device('cuda' if torch.cuda.is_available() else 'cpu')",
        "network_def": {"_target_": "stress.models.demo.export.NoduleLogits"},
        "network": "$@network_def.to(@device)",
        "preprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "EnsureTyped", "keys": "image", "dtype": "$torch.float32"},
                {
                    "_target_": "ScaleIntensityRanged",
                    "keys": "image",
                    "a_min": -1000.0,
                    "a_max": 400.0,
                    "b_min": -1000.0,
                    "b_max": 400.0,
                    "clip": True,
                },
            ],
        },
    }
    training = "dose reduction and blur augmentation" if version == "v1" else "full-dose images only"
    metadata = {
        "version": "1.0.0",
        "changelog": {"1.0.0": f"exported from stress/models/demo/weights/{weights.name}"},
        "pytorch_version": torch.__version__.split("+")[0],
        "task": "Lung nodule presence on synthetic chest CT (phantom-stress demo model)",
        "description": f"NoduleNet {version}, trained on chest_ct phantoms with {training}.",
        "authors": "phantom-stress",
        "copyright": "Apache-2.0",
        "network_data_format": {
            "inputs": {
                "image": {
                    "type": "image",
                    "format": "hounsfield",
                    "modality": "CT",
                    "num_channels": 1,
                    "spatial_shape": ["2*n", "2*n", "2*n"],
                    "dtype": "float32",
                    "value_range": [-1000, 400],
                    "is_patch_data": False,
                    "channel_def": {"0": "image"},
                }
            },
            "outputs": {
                "pred": {
                    "type": "probabilities",
                    "format": "logits",
                    "num_channels": 1,
                    "spatial_shape": [1],
                    "dtype": "float32",
                    "value_range": [],
                    "is_patch_data": False,
                    "channel_def": {"0": "nodule"},
                }
            },
        },
    }
    for name, content in (("inference.json", inference), ("metadata.json", metadata)):
        (folder / "configs" / name).write_text(json.dumps(content, indent=2) + "\n")
    return folder


def export_all(
    weights_out: Path = WEIGHTS_DIR, bundles_out: Path = BUNDLES_DIR, versions: Sequence[str] = VERSIONS
) -> list[Path]:
    """Export every demo version in every form; return the paths written."""
    written: list[Path] = []
    for version in versions:
        written.append(export_torchscript(version, weights_out / f"nodule_{version}.ts"))
        written.append(export_onnx(version, weights_out / f"nodule_{version}.onnx"))
        written.append(export_bundle(version, bundles_out / f"nodule_{version}"))
    return written


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: ``python -m stress.models.demo.export [--weights-out DIR] [--bundles-out DIR]``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--weights-out", type=Path, default=WEIGHTS_DIR, help="folder for .ts and .onnx")
    parser.add_argument("--bundles-out", type=Path, default=BUNDLES_DIR, help="folder for the MONAI bundles")
    parser.add_argument("--versions", nargs="+", default=list(VERSIONS), choices=VERSIONS)
    args = parser.parse_args(argv)
    for path in export_all(args.weights_out, args.bundles_out, args.versions):
        print(path)


if __name__ == "__main__":
    # Run from the importable module, not ``__main__``: class names are written into the exports.
    from stress.models.demo.export import main as _main

    _main()
