"""The ``stress`` command line: validate, list, run, gate, report, phantoms export|preview.

Exit codes: 0 success (gate: all criteria pass), 1 gate failure, 2 bad input (scenario, run
directory, model output; one message naming file/line/field or case), 130 interrupted.
"""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from stress.errors import ScenarioError, StressError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Synthetic-phantom stress testing and regulatory evidence for imaging AI models.",
)
err = Console(stderr=True, highlight=False, soft_wrap=True)
out = Console(highlight=False, width=None if sys.stdout.isatty() else 160)


def _report_bad_input(exc: StressError) -> None:
    """Print a bad-input error: one message per problem, no traceback."""
    text = str(exc) if isinstance(exc, ScenarioError) else f"error: {exc}"
    err.print(text, markup=False, style="red" if err.is_terminal else None)


@app.command()
def validate(file: Annotated[Path, typer.Argument(help="scenario YAML file")]) -> None:
    """Check a scenario; print every problem as FILE:LINE:COL: field: message."""
    from stress.scenario import load_scenario

    loaded = load_scenario(file)
    out.print(f"{file}: OK  {loaded.scenario.summary()}")


class Kind(str, Enum):
    """What ``stress list`` can show."""

    phantoms = "phantoms"
    perturbations = "perturbations"
    metrics = "metrics"
    models = "models"


def _fields(spec) -> str:
    parts = []
    for name, f in spec.model_fields.items():
        default = f.default if f.default_factory is None else f.default_factory()
        parts.append(f"{name}={default!r}" + (f" ({f.description})" if f.description else ""))
    return ", ".join(parts) or "-"


ADAPTER_EXAMPLES = {
    "python": "python: module:factory",
    "torchscript": "torchscript: model.pt",
    "onnx": "onnx: model.onnx",
    "monai_bundle": "monai_bundle: bundle_dir",
    "command": 'command: "exe {input} {output}"',
}


@app.command("list")
def list_(
    kind: Annotated[Kind | None, typer.Argument(help="what to list (all when omitted)")] = None,
) -> None:
    """Show the registered phantoms, perturbations, metrics and model adapters with their parameters."""
    from perturbations import PERTURBATIONS
    from phantoms import PHANTOMS
    from stress.models import ADAPTERS
    from stress.stats import METRICS

    kinds = [kind] if kind else list(Kind)
    for k in kinds:
        table = Table(title=k.value, show_lines=False, title_justify="left")
        if k is Kind.phantoms:
            for col in ("name", "modality", "parameters (defaults)", "subgroup attributes"):
                table.add_column(escape(col))
            for name, g in PHANTOMS.items():
                spec = g.spec()
                attrs = "; ".join(
                    f"{a.name}: {'|'.join(a.levels)}" + (" (lesion)" if a.lesion_level else "")
                    for a in g.attributes(spec)
                )
                _row(table, name, g.modality, _fields(g.spec), attrs)
        elif k is Kind.perturbations:
            for col in ("name", "severity [unit]", "range", "nominal", "parameters (defaults)"):
                # Room for a name and a short unit on one line; longer units and parameters wrap.
                table.add_column(escape(col), min_width={"name": 22, "severity [unit]": 44}.get(col))
            for name, p in PERTURBATIONS.items():
                s = p.severity
                rng = f"{'[' if s.low_inclusive else '('}{s.low:g}, {s.high:g}]; {s.harsher} is harsher"
                _row(table, name, f"{s.name} [{s.unit}]", rng, f"{s.nominal:g}", _fields(p.spec))
        elif k is Kind.metrics:
            for col in ("name", "unit", "description"):
                table.add_column(escape(col))
            for name, m in METRICS.items():
                _row(table, name, m.unit, m.description)
        else:
            for col in ("adapter", "scenario key", "loads"):
                table.add_column(escape(col))
            for name, adapter in ADAPTERS.items():
                _row(
                    table,
                    name,
                    ADAPTER_EXAMPLES.get(name, f"{name}: ..."),
                    (adapter.__doc__ or "").strip().splitlines()[0],
                )
            _row(
                table, "derive", "derive: {from: v1, update: prune}", "a simulated update of an earlier model"
            )
        out.print(table)


def _row(table: Table, *cells: str) -> None:
    """Add a row whose text is shown literally (units such as [mm] are not rich markup)."""
    table.add_row(*(escape(c) for c in cells))


@app.command()
def run(
    scenario: Annotated[Path, typer.Argument(help="scenario YAML file")],
    out_dir: Annotated[Path, typer.Option("--out", help="run directory (resumed if it holds this scenario)")],
    device: Annotated[str, typer.Option(help="cpu or cuda")] = "cpu",
    progress: Annotated[bool, typer.Option(help="show a progress bar")] = True,
) -> None:
    """Run a scenario into a run directory; resumes an interrupted run of the same scenario."""
    from stress.runner import run_scenario
    from stress.scenario import load_scenario

    loaded = load_scenario(scenario)
    out.print(loaded.scenario.summary())
    try:
        store = run_scenario(loaded, out_dir, device, show_progress=progress)
    except KeyboardInterrupt:
        err.print(f"interrupted: finished chunks are kept in {out_dir}; run the same command again to resume")
        raise typer.Exit(130) from None
    out.print(f"run complete: {store.root / 'manifest.json'}")
    _warn_model_errors(store.read_results())


def _warn_model_errors(results: Any) -> None:
    """Print, per model, how many evaluations failed and the first reasons (the rows keep all of them)."""
    failed = results[results["error"] != ""]
    for model, rows in failed.groupby("model", sort=True):
        err.print(
            escape(
                f"warning: model '{model}' failed on {len(rows)} of {int((results['model'] == model).sum())} "
                "evaluations (left out of the metrics, counted in n_failed; reasons in the 'error' column of "
                "results.parquet):"
            )
        )
        for _, r in rows.head(5).iterrows():
            point = f"{r['perturbation']}={r['severity']:g}"
            if r["perturbation_2"]:
                point += f", {r['perturbation_2']}={r['severity_2']:g}"
            err.print(escape(f"  {r['case_id']} ({point}): {r['error']}"))


@app.command()
def gate(
    run_dir: Annotated[Path, typer.Argument(help="run directory written by `stress run`")],
    junit: Annotated[Path | None, typer.Option(help="also write JUnit XML here")] = None,
) -> None:
    """Check the scenario's acceptance criteria; exit 0 when all pass, 1 when any fails."""
    from stress.gate import evaluate_gate, junit_xml
    from stress.rundata import load_run

    run_data = load_run(run_dir)
    verdicts = evaluate_gate(run_data.metrics, run_data.scenario)
    table = Table(title=f"gate: {run_data.scenario.name}", title_justify="left")
    for col in ("id", "rule", "statistic", "cells", "verdict", "evidence"):
        table.add_column(escape(col))
    for v in verdicts:
        verdict = "[green]PASS[/green]" if v.passed else "[red]FAIL[/red]"
        table.add_row(escape(v.id), escape(v.rule), v.statistic, str(v.n_cells), verdict, escape(v.reason))
    out.print(table)
    if junit is not None:
        junit.parent.mkdir(parents=True, exist_ok=True)
        junit.write_bytes(junit_xml(verdicts, run_data.scenario.name))
    if not verdicts:
        out.print("no gate criteria in this scenario: nothing to fail")
    failed = [v.id for v in verdicts if not v.passed]
    out.print(f"gate {'FAILED: ' + ', '.join(failed) if failed else 'PASSED'}")
    raise typer.Exit(1 if failed else 0)


@app.command()
def report(run_dir: Annotated[Path, typer.Argument(help="run directory written by `stress run`")]) -> None:
    """Build RUN/evidence/report.pdf from the run directory alone (no model or GPU needed)."""
    from evidence.report import build_report

    pdf = build_report(run_dir)
    out.print(f"evidence pack: {pdf}")


perturbations_app = typer.Typer(no_args_is_help=True, help="Look at perturbations on a scenario's phantom.")
app.add_typer(perturbations_app, name="perturbations")


@perturbations_app.command("montage")
def perturbations_montage(
    scenario: Annotated[Path, typer.Argument(help="scenario YAML file (its phantom is used)")],
    names: Annotated[str, typer.Option(help="comma-separated perturbation names")],
    png: Annotated[Path, typer.Option("--out", help="PNG file to write")] = Path("ladders.png"),
    case: Annotated[int, typer.Option(help="case index of the phantom to show")] = 0,
) -> None:
    """PNG: each perturbation (row) at its nominal severity and the five levels of its default ladder.

    A perturbation swept (or in the baseline) in the scenario uses the scenario's settings for it.
    """
    import torch

    from perturbations import PERTURBATIONS
    from phantoms.base import merge_batches
    from stress.ladder_montage import save_ladder_montage
    from stress.phantom_io import case_batches
    from stress.scenario import load_scenario

    loaded = load_scenario(scenario)
    chosen = [n.strip() for n in names.split(",") if n.strip()]
    if not chosen:
        raise StressError("--names: no perturbation given (expected e.g. --names ct_dose,gaussian_blur)")
    for name in chosen:
        PERTURBATIONS.get(name)  # an unknown name exits with 2 and a suggestion
    if not 0 <= case < loaded.scenario.phantom.n_cases:
        raise StressError(f"--case: {case} (expected 0 to {loaded.scenario.phantom.n_cases - 1})")
    batch = merge_batches(list(case_batches(loaded, case + 1, torch.device("cpu"))))
    sc = loaded.scenario
    # Settings as the scenario gives them (a sweep's params, else a baseline step's), defaults otherwise.
    settings = {b.name: b.params for b in sc.baseline} | {p.name: p.params for p in sc.perturbations}
    path = save_ladder_montage(batch, batch.case_index.index(case), chosen, png, sc.seed, settings)
    out.print(f"ladder montage: {path}")


phantoms_app = typer.Typer(no_args_is_help=True, help="Export or preview a scenario's phantom cases.")
app.add_typer(phantoms_app, name="phantoms")


@phantoms_app.command("export")
def phantoms_export(
    scenario: Annotated[Path, typer.Argument(help="scenario YAML file")],
    out_dir: Annotated[Path, typer.Option("--out", help="folder to write case-NNNNNN/ folders into")],
    fmt: Annotated[str, typer.Option("--format", help="nifti or dicom")] = "nifti",
    cases: Annotated[int | None, typer.Option(help="export only the first N cases")] = None,
) -> None:
    """Write the scenario's noiseless phantom cases as NIfTI (image, mask, organs) or DICOM CT/MR series."""
    from stress.phantom_io import export_cases
    from stress.scenario import load_scenario

    n = export_cases(load_scenario(scenario), out_dir, fmt, cases)
    out.print(f"exported {n} cases as {fmt} to {out_dir}")


@phantoms_app.command("preview")
def phantoms_preview(
    scenario: Annotated[Path, typer.Argument(help="scenario YAML file")],
    png: Annotated[Path, typer.Option("--out", help="PNG file to write")] = Path("phantom-preview.png"),
    show: Annotated[int, typer.Option(help="cases in the montage")] = 6,
    pool: Annotated[int, typer.Option(help="choose them among the first N cases")] = 32,
) -> None:
    """PNG montage of cases across subgroups: axial, coronal, sagittal slices with the lesion outlined."""
    from stress.phantom_io import preview_cases
    from stress.scenario import load_scenario

    path = preview_cases(load_scenario(scenario), png, show, pool)
    out.print(f"preview: {path}")


def main() -> None:
    """Console-script entry point: bad input (any :class:`StressError`) exits with 2, without a traceback."""
    try:
        app(prog_name="stress")
    except StressError as exc:
        _report_bad_input(exc)
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    sys.exit(main())
