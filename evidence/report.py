"""The evidence report: DIR/evidence/report.pdf, built from the run directory alone.

Sections: run identification, scenario summary (population, perturbations in physical units,
models with weight hashes), gate verdicts, robustness curves, overall and subgroup metrics with
confidence intervals, software and output hashes from the manifest, and the limits of the evidence.
Every number is read from the run's tables. reportlab's ``invariant`` mode fixes the document
ID and dates, and figures carry no timestamps, so the same run gives the same PDF bytes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
from reportlab import rl_config
from reportlab.lib import colors
from reportlab.lib.pagesizes import A4
from reportlab.lib.styles import ParagraphStyle, getSampleStyleSheet
from reportlab.lib.units import mm
from reportlab.platypus import (
    Image,
    KeepTogether,
    PageBreak,
    Paragraph,
    SimpleDocTemplate,
    Spacer,
    Table,
    TableStyle,
)

from evidence.figures import robustness_curve, robustness_grid
from stress.gate import evaluate_gate
from stress.rundata import RunData, load_run
from stress.store import RunStore, write_atomic

_STYLES = getSampleStyleSheet()
MARGIN_MM = 18
TEXT_WIDTH_MM = 210 - 2 * MARGIN_MM  # A4
_SMALL = ParagraphStyle("small", parent=_STYLES["BodyText"], fontSize=7.5, leading=9)
_CELL = ParagraphStyle("cell", parent=_STYLES["BodyText"], fontSize=7, leading=8.5)
_GRID = TableStyle(
    [
        ("GRID", (0, 0), (-1, -1), 0.25, colors.grey),
        ("BACKGROUND", (0, 0), (-1, 0), colors.HexColor("#e8e8f0")),
        ("FONTSIZE", (0, 0), (-1, -1), 7),
        ("VALIGN", (0, 0), (-1, -1), "TOP"),
    ]
)


def _table(header: list[str], rows: list[list[Any]], widths: list[float] | None = None) -> Table:
    data = [[Paragraph(f"<b>{h}</b>", _CELL) for h in header]]
    data += [[Paragraph(str(c), _CELL) for c in row] for row in rows]
    table = Table(data, colWidths=widths, repeatRows=1)
    table.setStyle(_GRID)
    return table


def _widths(fixed_mm: list[float], metrics: list[str]) -> list[float]:
    """Column widths: the fixed columns, then the page width left shared by the metric columns."""
    left = TEXT_WIDTH_MM - sum(fixed_mm)
    return [w * mm for w in fixed_mm] + [left / max(len(metrics), 1) * mm] * len(metrics)


def fmt_ci(row: pd.Series) -> str:
    """``0.912 [0.871, 0.948]`` (three decimals, as everywhere in the pack)."""
    if row["estimate"] != row["estimate"]:
        return "undefined"
    low = "nan" if row["ci_low"] != row["ci_low"] else f"{row['ci_low']:.3f}"
    high = "nan" if row["ci_high"] != row["ci_high"] else f"{row['ci_high']:.3f}"
    return f"{row['estimate']:.3f} [{low}, {high}]"


def _scenario_section(run: RunData) -> list[Any]:
    sc, man = run.scenario, run.manifest
    story: list[Any] = [Paragraph("1. Scenario", _STYLES["Heading2"])]
    story.append(Paragraph(sc.description or "(no description)", _STYLES["BodyText"]))
    pop = sc.population
    rows = [
        ["generator", sc.phantom.generator],
        ["cases", str(sc.phantom.n_cases)],
        ["generator parameters", json.dumps(sc.phantom.params, sort_keys=True)],
        ["prevalence", f"{pop.prevalence:g}"],
        [
            "population",
            "; ".join(
                f"{k}: " + ", ".join(f"{lv} {p:g}" for lv, p in v.items()) for k, v in pop.attributes.items()
            )
            or "generator defaults",
        ],
        ["baseline", "; ".join(f"{b.name} at {b.severity:g}" for b in sc.baseline) or "none"],
        ["seed", str(sc.seed)],
        ["evaluations", sc.summary()],
    ]
    story.append(_table(["item", "value"], rows, [40 * mm, 130 * mm]))
    story.append(Spacer(1, 4 * mm))
    first = run.results.drop_duplicates("sweep").set_index("sweep")
    prow = []
    for p in sc.perturbations:
        info = first.loc[p.sweep_id]
        axes = [(p.name, "", p.severities, p.params)]
        if p.grid is not None:
            axes.append((p.grid.name, "_2", p.grid.severities, p.grid.params))
        for k, (name, suffix, severities, params) in enumerate(axes):
            prow.append(
                [
                    p.sweep_id if k == 0 else "",
                    name,
                    f"{info['severity' + suffix + '_name']} [{info['severity' + suffix + '_unit']}]",
                    ", ".join(f"{s:g}" for s in severities),
                    json.dumps(params, sort_keys=True),
                ]
            )
    story.append(
        _table(
            ["sweep", "perturbation", "severity [unit]", "severities", "parameters"],
            prow,
            [30 * mm, 26 * mm, 44 * mm, 34 * mm, 36 * mm],
        )
    )
    story.append(Spacer(1, 4 * mm))
    mrow = []
    for m in sc.models:
        fp = man["models"][m.name]
        weights = "; ".join(f"{k}: {v}" for k, v in fp.get("weights_sha256", {}).items()) or "-"
        target = (
            fp.get("target", "")
            if fp.get("adapter") != "derive"
            else f"derive: {fp['update']} of {fp['from']}"
        )
        mrow.append([m.name, m.role, target, f"{m.threshold:g}", weights])
    story.append(
        _table(
            ["model", "role", "adapter target", "threshold", "weights SHA-256"],
            mrow,
            [18 * mm, 20 * mm, 45 * mm, 17 * mm, 70 * mm],
        )
    )
    return story


def _gate_section(run: RunData) -> list[Any]:
    story: list[Any] = [Paragraph("2. Acceptance gate (pre-specified criteria)", _STYLES["Heading2"])]
    verdicts = evaluate_gate(run.metrics, run.scenario)
    if not verdicts:
        return [*story, Paragraph("The scenario defines no acceptance criteria.", _STYLES["BodyText"])]
    rows = [
        [v.id, v.rule, v.statistic, str(v.n_cells), "PASS" if v.passed else "FAIL", v.reason]
        for v in verdicts
    ]
    story.append(
        _table(
            ["id", "rule", "statistic", "cells", "verdict", "evidence"],
            rows,
            [24 * mm, 44 * mm, 14 * mm, 10 * mm, 14 * mm, 64 * mm],
        )
    )
    overall = "PASSED" if all(v.passed for v in verdicts) else "FAILED"
    story.append(Spacer(1, 2 * mm))
    story.append(
        Paragraph(
            f"<b>Gate {overall}</b>: {sum(v.passed for v in verdicts)} of {len(verdicts)} criteria met.",
            _STYLES["BodyText"],
        )
    )
    return story


def _curves_section(run: RunData, fig_dir: Path) -> list[Any]:
    metric = "auc" if "auc" in run.scenario.metrics else run.scenario.metrics[0]
    figures = []
    for p in run.scenario.perturbations:
        stem = p.sweep_id.replace(" x ", "_x_")
        if p.grid is None:
            png = robustness_curve(
                run.metrics, p.sweep_id, metric, fig_dir / f"robustness_{stem}_{metric}.png"
            )
            figures.append(Image(str(png), width=150 * mm, height=90 * mm))
        else:
            png = robustness_grid(
                run.metrics, p.sweep_id, metric, fig_dir / f"robustness_{stem}_{metric}.png"
            )
            n_models = len(run.scenario.models)
            figures.append(Image(str(png), width=min(170, 60 * n_models) * mm, height=60 * mm))
    # The heading stays on the page of the first figure.
    return [KeepTogether([Paragraph("3. Robustness curves", _STYLES["Heading2"]), figures[0]]), *figures[1:]]


POINT_KEYS = ["sweep", "severity", "severity_2", "model"]


def _point(row: pd.Series) -> str:
    """A sweep point's severities: ``0.25`` for a 1-D sweep, ``0.25 x 4`` for a grid."""
    if row["perturbation_2"]:
        return f"{row['severity']:g} x {row['severity_2']:g}"
    return f"{row['severity']:g}"


def _metrics_section(run: RunData) -> list[Any]:
    story: list[Any] = [
        Paragraph("4. Performance by model, sweep and severity (overall)", _STYLES["Heading2"])
    ]
    m = run.metrics
    level = int(round(100 * m["ci_level"].iloc[0]))
    story.append(
        Paragraph(
            f"Estimate [{level}% percentile bootstrap CI, {int(m['n_resamples'].iloc[0])} "
            "resamples by case, paired across models and severities].",
            _SMALL,
        )
    )
    failed = run.results[run.results["error"] != ""]
    for model, rows in failed.groupby("model", sort=True):
        story.append(
            Paragraph(
                f"Model {model} failed on {len(rows)} of {int((run.results['model'] == model).sum())} "
                "evaluations (left out of the estimates, counted as n_failed in metrics.parquet; reasons in "
                "results.parquet).",
                _SMALL,
            )
        )
    overall = m[m["subgroup"] == "all"]
    metrics = run.scenario.metrics
    rows = []
    for key, cells in overall.groupby(POINT_KEYS, sort=True, dropna=False):
        by_metric = {r["metric"]: fmt_ci(r) for _, r in cells.iterrows()}
        rows.append([key[0], _point(cells.iloc[0]), key[-1], *[by_metric.get(k, "-") for k in metrics]])
    story.append(_table(["sweep", "severity", "model", *metrics], rows, _widths([30, 22, 14], metrics)))
    story.append(PageBreak())
    story.append(Paragraph("5. Subgroup performance", _STYLES["Heading2"]))
    story.append(
        Paragraph(
            "Lesion-level subgroups (e.g. lesion size) hold the positive cases of that level and all "
            "negative cases. n = cases (positive/negative).",
            _SMALL,
        )
    )
    sub = m[m["subgroup"] != "all"]
    rows = []
    for key, g in sub.groupby([*POINT_KEYS, "subgroup", "level"], sort=True, dropna=False):
        by_metric = {r["metric"]: fmt_ci(r) for _, r in g.iterrows()}
        first = g.iloc[0]
        rows.append(
            [
                key[0],
                _point(first),
                key[3],
                f"{key[4]}={key[5]}",
                f"{first['n_cases']} ({first['n_positive']}/{first['n_negative']})",
                *[by_metric.get(k, "-") for k in metrics],
            ]
        )
    widths = _widths([24, 18, 12, 27, 16], metrics)
    story.append(_table(["sweep", "severity", "model", "subgroup", "n", *metrics], rows, widths))
    return story


def _traceability_section(run: RunData) -> list[Any]:
    man = run.manifest
    story: list[Any] = [PageBreak(), Paragraph("6. Traceability", _STYLES["Heading2"])]
    soft = man["software"]
    rows = [
        ["scenario SHA-256", man["scenario_sha256"]],
        ["seed", str(man["seed"])],
        ["device / dtype", f"{man['device']} / {man['dtype']}"],
        ["python", soft["python"]],
        ["platform", soft["platform"]],
    ]
    rows += [[name, str(v)] for name, v in sorted(soft["packages"].items())]
    timings = RunStore(run.root).read_timings()
    if len(timings):
        per_case = timings.assign(ms=1000.0 * timings["seconds"] / timings["n_cases"])
        for model, g in per_case.groupby("model", sort=True):
            rows.append(
                [
                    f"inference time, {model}",
                    f"median {g['ms'].median():.2f} ms per case over {len(g)} calls (measured on "
                    f"{man['device']}; differs run to run)",
                ]
            )
    story.append(_table(["item", "value"], rows, [40 * mm, 130 * mm]))
    story.append(Spacer(1, 4 * mm))
    story.append(
        _table(
            ["run output", "SHA-256"],
            [[k, v] for k, v in sorted(man["outputs"].items())],
            [50 * mm, 120 * mm],
        )
    )
    story.append(Paragraph("7. Limits of this evidence", _STYLES["Heading2"]))
    story.append(
        Paragraph(
            "Results come from procedurally generated synthetic phantoms with exact reference standard. "
            "They show how the models respond to controlled, physically parameterised changes of the input; "
            "they add to clinical performance data and do not replace it. Perturbation physics, phantom "
            "credibility and statistical methods are described in the phantom-stress documentation (docs/).",
            _STYLES["BodyText"],
        )
    )
    return story


def build_report(run_dir: str | Path) -> Path:
    """Write ``run_dir/evidence/report.pdf`` and return its path."""
    run = load_run(run_dir)
    out_dir = Path(run_dir) / "evidence"
    out_dir.mkdir(parents=True, exist_ok=True)
    pdf = out_dir / "report.pdf"
    rl_config.invariant = 1
    title = f"phantom-stress evidence pack: {run.scenario.name}"
    story: list[Any] = [
        Paragraph(title, _STYLES["Title"]),
        Paragraph(
            f"Run created {run.manifest['created_utc']} (UTC); scenario SHA-256 "
            f"{run.manifest['scenario_sha256']}",
            _SMALL,
        ),
        Spacer(1, 4 * mm),
    ]
    story += _scenario_section(run) + _gate_section(run) + _curves_section(run, out_dir / "figures")
    story += _metrics_section(run) + _traceability_section(run)
    tmp = out_dir / ".report.pdf.build"
    doc = SimpleDocTemplate(
        str(tmp),
        pagesize=A4,
        title=title,
        author="phantom-stress",
        leftMargin=MARGIN_MM * mm,
        rightMargin=MARGIN_MM * mm,
        topMargin=16 * mm,
        bottomMargin=16 * mm,
    )
    doc.build(story)
    write_atomic(pdf, tmp.read_bytes())
    tmp.unlink()
    return pdf
