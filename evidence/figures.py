"""Robustness-curve figures from the metrics table, written as deterministic PNG files."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

_STYLE = {"reference": {"linestyle": "--", "marker": "s"}, "candidate": {"linestyle": "-", "marker": "o"}}


def robustness_curve(metrics: pd.DataFrame, perturbation: str, metric: str, path: Path) -> Path:
    """Plot ``metric`` (overall, with its CI band) against severity for every model; save a PNG.

    The PNG carries no timestamp or software metadata, so the same metrics give the same bytes.
    """
    sel = metrics[
        (metrics["perturbation"] == perturbation)
        & (metrics["metric"] == metric)
        & (metrics["subgroup"] == "all")
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
    ax.set_title(f"{metric} vs {perturbation}")
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", metadata={"Software": None})
    plt.close(fig)
    return path
