"""Robustness figures from the metrics table (1-D sweeps: curves; grids: heat maps), as deterministic PNGs."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

_STYLE = {"reference": {"linestyle": "--", "marker": "s"}, "candidate": {"linestyle": "-", "marker": "o"}}


def robustness_curve(metrics: pd.DataFrame, sweep: str, metric: str, path: Path) -> Path:
    """Plot ``metric`` (overall, CI band) against the severity of a 1-D sweep for every model; save a PNG.

    The PNG carries no timestamp or software metadata, so the same metrics give the same bytes.
    """
    sel = metrics[
        (metrics["sweep"] == sweep) & (metrics["metric"] == metric) & (metrics["subgroup"] == "all")
    ].sort_values(["model", "severity"])
    fig, ax = plt.subplots(figsize=(6.0, 3.6), dpi=150)
    for (model, role), g in sel.groupby(["model", "model_role"], sort=True):
        style = _STYLE.get(role, {})
        ax.plot(g["severity"], g["estimate"], label=f"{model} ({role})", **style)
        ax.fill_between(g["severity"], g["ci_low"], g["ci_high"], alpha=0.2)
    first = sel.iloc[0] if len(sel) else None
    if first is not None:
        ax.set_xlabel(f"{first['severity_name']} [{first['severity_unit']}]")
        if first["severity_name"] == "dose_fraction":
            ax.set_xscale("log")
            ax.invert_xaxis()
    ax.set_ylabel(f"{metric} (overall, {int(round(100 * sel['ci_level'].iloc[0])) if len(sel) else 95}% CI)")
    ax.set_ylim(0.0, 1.02)
    ax.grid(True, alpha=0.3)
    ax.set_title(f"{metric} vs {sweep}")
    ax.legend(loc="lower left", fontsize=8)
    return _save(fig, path)


def robustness_grid(metrics: pd.DataFrame, sweep: str, metric: str, path: Path) -> Path:
    """Heat maps of ``metric`` (overall) over the two severities of a grid sweep, one panel per model.

    Each cell shows the estimate and, below it, the CI bounds; the colour is the CI's lower bound, so
    a cell that looks fine by its estimate but not by its bound stands out.
    """
    sel = metrics[
        (metrics["sweep"] == sweep) & (metrics["metric"] == metric) & (metrics["subgroup"] == "all")
    ]
    models = sorted(sel["model"].unique())
    fig, axes = plt.subplots(
        1, max(len(models), 1), figsize=(3.4 * max(len(models), 1), 3.4), dpi=150, squeeze=False
    )
    for ax, model in zip(axes[0], models, strict=False):
        g = sel[sel["model"] == model]
        rows, cols = sorted(g["severity"].unique()), sorted(g["severity_2"].unique())
        low = g.pivot_table(index="severity", columns="severity_2", values="ci_low", aggfunc="first")
        ax.imshow(
            low.loc[rows, cols].to_numpy(), vmin=0.0, vmax=1.0, cmap="RdYlGn", origin="lower", aspect="auto"
        )
        for _, r in g.iterrows():
            i, j = rows.index(r["severity"]), cols.index(r["severity_2"])
            text = f"{r['estimate']:.2f}\n[{r['ci_low']:.2f}, {r['ci_high']:.2f}]"
            ax.text(j, i, text, ha="center", va="center", fontsize=6)
        ax.set_xticks(range(len(cols)), [f"{c:g}" for c in cols], fontsize=7)
        ax.set_yticks(range(len(rows)), [f"{r:g}" for r in rows], fontsize=7)
        first = g.iloc[0]
        ax.set_xlabel(f"{first['severity_2_name']} [{first['severity_2_unit']}]", fontsize=7)
        ax.set_ylabel(f"{first['severity_name']} [{first['severity_unit']}]", fontsize=7)
        ax.set_title(f"{model} ({first['model_role']}): {metric}", fontsize=8)
    fig.suptitle(f"{metric} over {sweep} (colour: CI lower bound)", fontsize=8)
    return _save(fig, path)


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", metadata={"Software": None})
    plt.close(fig)
    return path
