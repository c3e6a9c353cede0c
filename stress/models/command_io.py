"""The files a black-box ``command`` model exchanges with us, and the per-case errors in reading them back.

Input. A call's cases are written with the phantom exporters (:mod:`phantoms.export`), so a black box
sees exactly what ``stress phantoms export`` writes: ``nifti`` is one float32 ``.nii.gz`` per case in
physical units (HU for CT) with the spacing told to the models and identity direction; ``dicom`` is a
CT Image Storage series per case (stored value = HU + 1024, clipped to [0, 4095]). The command adapter
is not told the scenario's modality, so ``dicom`` always writes CT: use ``nifti`` for MR phantoms.
Entries are named ``case-NNNNNN`` after the case's position in the call (0, 1, ...), not its case id:
the black box is blind to which case it sees.

Output. ``json`` is one file per call; ``nifti`` and ``dicom_seg`` are one file per case. Each case's
output becomes a probability or an error sentence ("what was wrong (expected what)"); a value that
cannot be used fails that case only.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from phantoms.base import CaseBatch
from phantoms.export import _sitk_image, export_dicom

# (probability, error): the probability is NaN whenever the error is set.
Result = tuple[float, str | None]

SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
SINGLE_OUTPUT = {"json": "prediction.json", "nifti": "mask.nii.gz", "dicom_seg": "seg.dcm"}
CASE_SUFFIX = {"json": "", "nifti": ".nii.gz", "dicom_seg": ".dcm"}
WHAT = {"json": "a JSON file", "nifti": "a NIfTI file", "dicom_seg": "a DICOM SEG file"}


def entry_name(position: int) -> str:
    """Name of the case at ``position`` in a call: ``case-000000``, ``case-000001``, ..."""
    return f"case-{position:06d}"


def failed(reason: str) -> Result:
    """A failed case."""
    return math.nan, reason


def blind_batch(volumes: torch.Tensor, spacing_mm: tuple[float, float, float]) -> CaseBatch:
    """Wrap ``(n, 1, D, H, W)`` CPU volumes for the exporters, without any ground truth.

    Labels, attributes and lesions are left empty and the mask is all False (no SEG is written): the
    black box gets the image and its geometry only.
    """
    n = volumes.shape[0]
    return CaseBatch(
        image=volumes,
        mask=torch.zeros(volumes.shape, dtype=torch.bool),
        spacing_mm=tuple(float(s) for s in spacing_mm),  # type: ignore[arg-type]
        modality="CT",
        case_index=tuple(range(n)),
        label=(0,) * n,
        attributes=({},) * n,
    )


def write_inputs(batch: CaseBatch, input_format: str, folder: Path) -> list[Path]:
    """Write every case of ``batch`` under ``folder``; return each case's entry (file or series folder).

    ``nifti``: ``folder/case-NNNNNN.nii.gz``. ``dicom``: ``folder/case-NNNNNN/ct/slice-NNNN.dcm``, the
    layout of ``stress phantoms export --format dicom`` (its ``case.json`` is removed: it would hold
    made-up ground truth).
    """
    folder.mkdir(parents=True, exist_ok=True)
    if input_format == "dicom":
        entries = []
        for case_folder in export_dicom(batch, folder, seed=0):
            (case_folder / "case.json").unlink(missing_ok=True)
            entries.append(case_folder / "ct")
        return entries
    import SimpleITK as sitk

    entries = []
    for b in range(batch.image.shape[0]):
        path = folder / f"{entry_name(b)}.nii.gz"
        array = batch.image[b, 0].numpy().astype(np.float32, copy=False)
        sitk.WriteImage(_sitk_image(array, batch), str(path), useCompression=True)
        entries.append(path)
    return entries


def output_path(output_format: str, folder: Path, per_call: int) -> Path:
    """What ``{output}`` names: a file for ``json`` or ``per_call == 1``, else a folder for per-case files."""
    return folder / SINGLE_OUTPUT[output_format] if output_format == "json" or per_call == 1 else folder


def read_outputs(
    output_format: str, output: Path, n: int, per_call: int, shape: tuple[int, int, int]
) -> list[Result]:
    """Read a finished call's output for its ``n`` cases (``shape``: the input's D, H, W)."""
    if output_format == "json":
        return read_json(output, n, single=per_call == 1)
    files = (
        [output]
        if per_call == 1
        else [output / f"{entry_name(b)}{CASE_SUFFIX[output_format]}" for b in range(n)]
    )
    reader = read_nifti if output_format == "nifti" else read_seg
    return [reader(path, shape, "{output}" if per_call == 1 else f"{{output}}/{path.name}") for path in files]


def missing(output_format: str, where: str) -> str:
    """The sentence for an output the command did not write."""
    return f"command wrote no output (expected {WHAT[output_format]} at {where})"


def read_json(path: Path, n: int, single: bool) -> list[Result]:
    """Read a JSON output: one probability per case, or a sentence per case saying why not.

    ``{"probability": p}`` with one case per call; else ``{"probabilities": [p, ...]}`` in case order or
    ``{"case-NNNNNN": p, ...}`` keyed by entry name. Other keys are ignored.
    """
    expected = '{"probability": p}' if single else '{"probabilities": [p, ...]} or {"case-000000": p, ...}'
    if not path.is_file():
        return [failed(missing("json", "{output}"))] * n
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        return [failed(f"output is not valid JSON: {exc} (expected {expected})")] * n
    if not isinstance(data, dict):
        return [failed(f"output JSON is {_json_kind(data)} (expected an object such as {expected})")] * n
    if single:
        if "probability" not in data:
            return [failed(f'output JSON has no "probability" key (expected {expected})')]
        return [probability(data["probability"], '"probability"')]
    if "probabilities" in data:
        values = data["probabilities"]
        if not isinstance(values, list) or len(values) != n:
            got = f"{len(values)} value(s)" if isinstance(values, list) else _json_kind(values)
            return [
                failed(f'output JSON "probabilities" holds {got} (expected a list of {n}, one per case)')
            ] * n
        return [probability(v, f'"probabilities"[{b}]') for b, v in enumerate(values)]
    names = [entry_name(b) for b in range(n)]
    if not any(name in data for name in names):
        return [failed(f'output JSON has no "probabilities" key (expected {expected})')] * n
    return [
        probability(data[name], f'"{name}"')
        if name in data
        else failed(f'output JSON has no "{name}" key (expected {expected})')
        for name in names
    ]


def _json_kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number"
    )


def probability(value: Any, where: str) -> Result:
    """A JSON value as a probability, or the sentence saying why it is not one (NaN, out of range, text)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        return failed(f"output JSON {where} is {json.dumps(value)} (expected a number in [0, 1])")
    return float(value), None


def read_nifti(path: Path, shape: tuple[int, int, int], where: str) -> Result:
    """A mask or probability map in [0, 1] of the input's shape; the case's probability is its maximum."""
    import SimpleITK as sitk

    if not path.is_file():
        return failed(missing("nifti", where))
    try:
        array = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    except RuntimeError as exc:
        return failed(
            f"output is not a readable NIfTI file: {last_line(str(exc))} (expected a mask or probability map)"
        )
    if array.shape != shape:
        return failed(f"output NIfTI has shape {array.shape} (expected {shape}, the input's D, H, W)")
    if array.dtype.kind == "f" and _nifti_has_nonfinite(path):
        return failed(_nonfinite("output NIfTI"))
    return _map_maximum(array, "output NIfTI")


def _nifti_has_nonfinite(path: Path) -> bool:
    """Whether a NIfTI-1 file stores NaN or infinite floats (ITK's reader silently turns them into 0)."""
    import gzip

    with (gzip.open if path.name.endswith(".gz") else open)(path, "rb") as f:
        raw = f.read()
    order = next((o for o in "<>" if len(raw) >= 348 and np.frombuffer(raw, f"{o}i4", 1)[0] == 348), None)
    if order is None:
        return False  # NIfTI-2: trust the reader
    dims = np.frombuffer(raw, f"{order}i2", 8, offset=40)
    dtype = {16: "f4", 64: "f8"}.get(int(np.frombuffer(raw, f"{order}i2", 1, offset=70)[0]))
    if dtype is None or not 1 <= dims[0] <= 7:
        return False
    count = int(np.prod(dims[1 : dims[0] + 1].astype(np.int64)))
    offset = int(np.frombuffer(raw, f"{order}f4", 1, offset=108)[0])
    return not np.isfinite(np.frombuffer(raw, f"{order}{dtype}", count, offset=offset)).all()


def read_seg(path: Path, shape: tuple[int, int, int], where: str) -> Result:
    """A DICOM Segmentation: 1 if any segment pixel is set, 0 if none; FRACTIONAL: the largest fraction."""
    import pydicom

    if not path.is_file():
        return failed(missing("dicom_seg", where))
    try:
        ds = pydicom.dcmread(path)
        sop_class = str(ds.get("SOPClassUID", ""))
        if sop_class != SEGMENTATION_STORAGE:
            return failed(
                f"output DICOM has SOP class {sop_class or 'none'} "
                f"(expected Segmentation Storage, {SEGMENTATION_STORAGE})"
            )
        if (ds.Rows, ds.Columns) != shape[1:]:
            return failed(
                f"output SEG has {ds.Rows} x {ds.Columns} pixels per frame "
                f"(expected {shape[1]} x {shape[2]}, the input's H x W)"
            )
        frames = ds.pixel_array if "PixelData" in ds else np.zeros((0,))
    except Exception as exc:  # noqa: BLE001  (pydicom raises many types on a malformed file)
        return failed(
            f"output is not a readable DICOM SEG: {type(exc).__name__}: {last_line(str(exc))} "
            "(expected a DICOM SEG)"
        )
    if ds.get("SegmentationType", "BINARY") == "FRACTIONAL":
        frames = frames / float(ds.get("MaximumFractionalValue", 255))
    return _map_maximum(frames, "output SEG")


def _map_maximum(array: np.ndarray, what: str) -> Result:
    if array.size == 0:
        return 0.0, None
    values = array.astype(np.float64, copy=False)
    if not np.isfinite(values).all():
        return failed(_nonfinite(what))
    low, high = float(values.min()), float(values.max())
    if low < 0.0 or high > 1.0:
        return failed(
            f"{what} values span [{low:g}, {high:g}] (expected a mask or probability map in [0, 1])"
        )
    return high, None


def _nonfinite(what: str) -> str:
    return f"{what} holds NaN or infinite values (expected a mask or probability map in [0, 1])"


def last_line(text: str) -> str:
    """The last non-empty line of ``text``, stripped and cut at 300 characters ("" when there is none)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""
