"""Run a scenario: phantoms -> perturbation sweeps -> models -> run store -> statistics.

Work is cut into chunks of cases (``execution.chunk_cases``); each chunk's rows are one part file.
Everything a row depends on is a pure function of the scenario and the case index (phantoms from
``(seed, case index)``, perturbation parameters from ``(seed, case index, perturbation)``), so a
chunk computed after a resume is identical to the one a clean run would have written.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from perturbations import PERTURBATIONS, AppliedPerturbation, apply_chain, apply_chain_mask, chain_spacing
from phantoms import PHANTOMS, CaseBatch
from phantoms.population import case_rng
from stress.errors import StressError
from stress.models import LoadedModel, load_model
from stress.models.derive import derive_model
from stress.scenario.loader import LoadedScenario, phantom_spec
from stress.scenario.schema import Scenario
from stress.stats.summary import compute_metrics_table
from stress.store import FORMAT, METRICS, RunStore, software_versions, write_frame_atomic

STREAM_PERTURBATION = 2


@dataclass(frozen=True, slots=True)
class Step:
    """One perturbation at one severity inside a sweep's chain."""

    name: str
    severity: float
    spec: Any


def case_id(index: int) -> str:
    """Stable identifier of case ``index``."""
    return f"case-{index:06d}"


@dataclass(frozen=True, slots=True)
class SweepPoint:
    """One point of a sweep: its id, the swept steps (one, or two for a grid) and the full chain."""

    sweep: str
    swept: tuple[Step, ...]
    chain: list[Step]

    def columns(self) -> dict[str, Any]:
        """The result columns naming the point: ``perturbation``/``severity`` and, for a grid, ``*_2``."""
        cols: dict[str, Any] = {"sweep": self.sweep}
        for suffix, step in zip(("", "_2"), (*self.swept, None), strict=False):
            sev = PERTURBATIONS.get(step.name).severity if step is not None else None
            cols[f"perturbation{suffix}"] = step.name if step is not None else ""
            cols[f"severity{suffix}_name"] = sev.name if sev is not None else ""
            cols[f"severity{suffix}_unit"] = sev.unit if sev is not None else ""
            cols[f"severity{suffix}"] = float(step.severity) if step is not None else math.nan
        return cols


def _step(name: str, severity: float, params: dict[str, Any]) -> Step:
    return Step(name, severity, PERTURBATIONS.get(name).spec.model_validate(params))


def chains(sc: Scenario) -> Iterator[SweepPoint]:
    """Every sweep point (every severity pair for a grid) with its full chain.

    The chain is the baseline with each swept perturbation replacing a baseline step of the same
    name in place, or appended after the baseline (a grid's first family before its second).
    """
    for sweep in sc.perturbations:
        second = (
            [(sweep.grid.name, s, sweep.grid.params) for s in sweep.grid.severities] if sweep.grid else [None]
        )
        for severity in sweep.severities:
            for other in second:
                swept = (_step(sweep.name, severity, sweep.params),)
                if other is not None:
                    swept += (_step(*other),)
                yield SweepPoint(sweep.sweep_id, swept, build_chain(sc, swept))


def build_chain(sc: Scenario, swept: tuple[Step, ...]) -> list[Step]:
    """The baseline with each of ``swept`` replacing the baseline step of its name in place, or appended."""
    chain = [_step(b.name, b.severity, b.params) for b in sc.baseline]
    for step in swept:
        names = [s.name for s in chain]
        if step.name in names:
            chain[names.index(step.name)] = step
        else:
            chain.append(step)
    return chain


def sample_chain(sc: Scenario, chain: list[Step], batch: CaseBatch) -> list[AppliedPerturbation]:
    """Draw each case's parameters for every step of ``chain``.

    A case's generator for a perturbation depends on ``(seed, case index, perturbation name)`` but
    not on the severity: all severities of one case share their random field (common random
    numbers), which makes differences between severities paired.
    """
    steps = []
    for step in chain:
        pert = PERTURBATIONS.get(step.name)
        key = zlib.crc32(step.name.encode())
        params = tuple(
            pert.sample(step.spec, step.severity, case_rng(sc.seed, STREAM_PERTURBATION, i, key))
            for i in batch.case_index
        )
        steps.append(AppliedPerturbation(step.name, params))
    return steps


def _case_columns(batch: CaseBatch, b: int) -> dict[str, Any]:
    lesions = batch.lesions[b] if batch.lesions else ()
    first = lesions[0] if lesions else {}
    return {
        "case_id": case_id(batch.case_index[b]),
        "case_index": batch.case_index[b],
        "label": batch.label[b],
        **batch.attributes[b],
        "lesion_diameter_mm": float(first.get("diameter_mm", math.nan)),
        "lesion_volume_mm3": float(first.get("volume_mm3", math.nan)),
        "lesions_json": json.dumps(list(lesions), sort_keys=True),
    }


def _truth_after(batch: CaseBatch, steps: list[AppliedPerturbation]) -> list[dict[str, Any]]:
    """Per case: the label after geometry-changing steps and the fraction of the lesion still in view.

    A positive case whose lesion mask is emptied by the chain (cropped away, blanked slices) becomes a
    negative for that row; intensity-only chains leave the label as generated (visible fraction 1).
    """
    moved = apply_chain_mask(batch.mask, batch.spacing_mm, steps)
    before = batch.mask.flatten(1).sum(dim=1)
    after = before if moved is None else moved.flatten(1).sum(dim=1)
    out = []
    for b, (n0, n1) in enumerate(zip(before.tolist(), after.tolist(), strict=True)):
        visible = n1 / n0 if n0 else math.nan
        label = batch.label[b] if not (n0 and n1 == 0) else 0
        out.append({"label": label, "lesion_visible_fraction": visible})
    return out


def _spacing_told(batch: CaseBatch, steps: list[AppliedPerturbation], ids: list[str]) -> tuple[float, ...]:
    """The spacing handed to the models after the chain's metadata errors."""
    try:
        return chain_spacing(batch.spacing_mm, steps)
    except ValueError as exc:
        raise StressError(f"cases {ids[0]}..{ids[-1]}: {exc}") from None


def _fail_fast(
    model: LoadedModel, errors: list[str | None], ids: list[str], point: SweepPoint, ok: set[str]
) -> None:
    """Stop the run (exit 2) when a model fails every case before it has succeeded once: it cannot run.

    Once a model has produced one valid output, its failures are recorded per case in the ``error``
    column and the run goes on (``ok`` holds the names of models that have succeeded).
    """
    if not all(errors):
        ok.add(model.name)
    elif model.name not in ok:
        at = ", ".join(f"{s.name}={s.severity:g}" for s in point.swept)
        raise StressError(
            f"model '{model.name}': failed on every case of its first batch ({ids[0]}..{ids[-1]}, {at}): "
            f"{errors[0]}"
        )


def run_chunk(
    sc: Scenario,
    chunk: int,
    models: list[LoadedModel],
    device: torch.device,
    progress: Progress | None = None,
    task: Any = None,
    healthy: set[str] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """All result rows of one chunk of cases, and the models' inference times for it.

    ``healthy`` holds the models that have produced a valid output so far (see :func:`_fail_fast`).
    Timings (one row per model call: model, first case, cases, seconds) are kept apart from the
    results, which stay a pure function of the scenario.
    """
    healthy = set() if healthy is None else healthy
    timings: list[dict[str, Any]] = []
    gen = PHANTOMS.get(sc.phantom.generator)
    spec = phantom_spec(sc)
    start = chunk * sc.execution.chunk_cases
    stop = min(start + sc.execution.chunk_cases, sc.phantom.n_cases)
    rows: list[dict[str, Any]] = []
    sweeps = list(chains(sc))
    for b0 in range(start, stop, sc.execution.batch_size):
        indices = list(range(b0, min(b0 + sc.execution.batch_size, stop)))
        try:
            batch = gen.generate(spec, sc.population, sc.seed, indices, device)
        except ValueError as exc:
            cases = f"{case_id(indices[0])}..{case_id(indices[-1])}"
            raise StressError(f"phantom.params: cases {cases}: {exc}") from None
        ids = [case_id(i) for i in indices]
        case_cols = [_case_columns(batch, b) for b in range(len(indices))]
        for point in sweeps:
            steps = sample_chain(sc, point.chain, batch)
            image = apply_chain(batch.image, batch.spacing_mm, steps)
            truth = _truth_after(batch, steps)
            told = _spacing_told(batch, steps, ids)
            point_cols = point.columns()
            records = [json.dumps([s.record(b) for s in steps], sort_keys=True) for b in range(len(indices))]
            for model in models:
                # A copy per model: a model that normalises its input in place must not change the next one's.
                model_input = image.clone()
                started = _clock(device)
                scores, errors = model.predict(model_input, told, ids)
                timings.append(
                    {
                        "chunk": chunk,
                        "model": model.name,
                        "sweep": point.sweep,
                        "first_case": ids[0],
                        "n_cases": len(ids),
                        "seconds": _clock(device) - started,
                    }
                )
                _fail_fast(model, errors, ids, point, healthy)
                for b, score in enumerate(scores.tolist()):
                    rows.append(
                        {
                            **case_cols[b],
                            **truth[b],
                            "chunk": chunk,
                            **point_cols,
                            "params_json": records[b],
                            "model": model.name,
                            "model_role": model.role,
                            "score": float(score),
                            "error": errors[b] or "",
                        }
                    )
                if progress is not None:
                    progress.advance(task, len(indices))
    return pd.DataFrame(rows), pd.DataFrame(timings)


def _clock(device: torch.device) -> float:
    """Wall-clock seconds, after waiting for the device's queued work (CUDA runs asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def resolve_device(name: str) -> torch.device:
    """``cpu`` or ``cuda`` (exit 2 when CUDA is asked for but absent)."""
    if name not in ("cpu", "cuda"):
        raise StressError(f"--device: unknown device '{name}' (expected cpu or cuda)")
    if name == "cuda" and not torch.cuda.is_available():
        raise StressError(
            "--device cuda: no CUDA device is available (expected a machine with a GPU, or --device cpu)"
        )
    return torch.device(name)


def _check_resumable(old: dict[str, Any], new: dict[str, Any], store: RunStore) -> None:
    if old.get("format") != FORMAT:
        raise StressError(f"{store.manifest_path}: format {old.get('format')!r} (expected {FORMAT})")
    old_packages = old.get("software", {}).get("packages")
    if old_packages != new["software"]["packages"]:
        raise StressError(
            f"{store.root}: was started with other package versions ({old_packages}); results would mix "
            "software versions (expected the same environment to resume, or choose a new --out directory)"
        )
    for key, what in (("scenario_sha256", "scenario"), ("device", "device"), ("models", "models")):
        if old.get(key) != new.get(key):
            raise StressError(
                f"{store.root}: holds a run with a different {what} ({key} differs); expected the same "
                "scenario, device and models to resume, or choose a new --out directory"
            )


def load_models(sc: Scenario, device: torch.device, base_dir: Path) -> list[LoadedModel]:
    """Every model of ``sc``, in its order: loaded ones first, then each derived one from its source.

    The loader checks that a derived model's source is listed before it, so deriving in list order
    always finds the source (itself possibly derived) already made.
    """
    made: dict[str, LoadedModel] = {}
    for i, m in enumerate(sc.models):
        if m.derive is None:
            made[m.name] = load_model(m, device, i, base_dir)
    for i, m in enumerate(sc.models):
        if m.derive is not None:
            if m.derive.source not in made:
                raise StressError(
                    f"models[{i}].derive.from: model '{m.derive.source}' is not made before '{m.name}' "
                    "(expected a model listed earlier)"
                )
            source = made[m.derive.source]
            derived = derive_model(m, source, sc, device, f"models[{i}]")
            made[m.name] = dataclasses.replace(
                derived, amp=source.amp
            )  # a derived model runs like its source
    return [made[m.name] for m in sc.models]


def run_scenario(
    loaded: LoadedScenario, out: str | Path, device_name: str = "cpu", show_progress: bool = True
) -> RunStore:
    """Run (or resume) ``loaded`` into the run directory ``out``; return its store."""
    sc = loaded.scenario
    device = resolve_device(device_name)
    store = RunStore(out)
    models = load_models(sc, device, Path(loaded.path).parent)
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "status": "running",
        "scenario_name": sc.name,
        "scenario_path": loaded.path,
        "scenario_sha256": loaded.sha256,
        "scenario_text": loaded.text,
        "seed": sc.seed,
        "device": device.type,
        "dtype": "float32",
        "software": software_versions(),
        "n_cases": sc.phantom.n_cases,
        "chunk_cases": sc.execution.chunk_cases,
        "n_evaluations": sc.n_evaluations(),
        "models": {m.name: {"role": m.role, "threshold": m.threshold, **m.fingerprint} for m in models},
    }
    if store.exists():
        old = store.read_manifest()
        _check_resumable(old, manifest, store)
        manifest["created_utc"] = old["created_utc"]
    else:
        manifest["created_utc"] = datetime.now(timezone.utc).replace(microsecond=0).isoformat()
    store.write_manifest(manifest)
    n_chunks = math.ceil(sc.phantom.n_cases / sc.execution.chunk_cases)
    done = store.done_chunks()
    todo = [c for c in range(n_chunks) if c not in done]
    per_case = sc.n_evaluations() // sc.phantom.n_cases
    columns = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    ]
    with Progress(*columns, disable=not show_progress, transient=False) as progress:
        task = progress.add_task(f"{sc.name} evaluations", total=sc.n_evaluations())
        progress.advance(
            task,
            sum(
                min(sc.execution.chunk_cases, sc.phantom.n_cases - c * sc.execution.chunk_cases) for c in done
            )
            * per_case,
        )
        healthy: set[str] = set()
        for chunk in todo:
            rows, timings = run_chunk(sc, chunk, models, device, progress, task, healthy)
            store.write_timings(chunk, timings)  # first: a chunk whose results exist has its timings
            store.write_part(chunk, rows)
    results = store.read_results()
    metrics = compute_metrics_table(results, sc)
    write_frame_atomic(store.root / METRICS, metrics)
    manifest.update(status="complete", outputs=store.output_hashes())
    store.write_manifest(manifest)
    return store
