"""`stress phantoms export|preview`: write a scenario's phantom cases to disk, or a PNG montage of them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch

from phantoms import PHANTOMS, CaseBatch
from phantoms.base import merge_batches
from stress.errors import StressError
from stress.scenario.loader import LoadedScenario, phantom_spec

FORMATS = ("nifti", "dicom")


def case_batches(loaded: LoadedScenario, n_cases: int | None, device: torch.device) -> Iterator[CaseBatch]:
    """The scenario's first ``n_cases`` phantom cases (all when ``None``), noiseless, in device batches."""
    sc = loaded.scenario
    total = sc.phantom.n_cases if n_cases is None else min(n_cases, sc.phantom.n_cases)
    if total < 1:
        raise StressError(f"--cases: {n_cases} (expected at least 1)")
    gen, spec = PHANTOMS.get(sc.phantom.generator), phantom_spec(sc)
    for start in range(0, total, sc.execution.batch_size):
        indices = list(range(start, min(start + sc.execution.batch_size, total)))
        try:
            yield gen.generate(spec, sc.population, sc.seed, indices, device)
        except ValueError as exc:
            raise StressError(f"phantom.params: cases {indices[0]}..{indices[-1]}: {exc}") from None


def export_cases(loaded: LoadedScenario, out: Path, fmt: str, n_cases: int | None) -> int:
    """Write the cases as NIfTI or DICOM under ``out``; return how many were written."""
    from phantoms.export import export_dicom, export_nifti

    if fmt not in FORMATS:
        raise StressError(f"--format: unknown format '{fmt}' (expected one of: {', '.join(FORMATS)})")
    written = 0
    for batch in case_batches(loaded, n_cases, torch.device("cpu")):
        if fmt == "nifti":
            written += len(export_nifti(batch, out))
        else:
            written += len(export_dicom(batch, out, loaded.scenario.seed))
    return written


def preview_cases(loaded: LoadedScenario, out: Path, n_show: int, pool: int) -> Path:
    """Montage of ``n_show`` cases chosen to cover distinct labels and attributes among the first ``pool``."""
    from phantoms.preview import pick_cases, save_montage

    batches = list(case_batches(loaded, pool, torch.device("cpu")))
    merged = merge_batches(batches)
    return save_montage(merged, pick_cases(merged, n_show), out)
