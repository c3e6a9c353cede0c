"""Everything downstream stages read from a run directory, loaded and checked in one place."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from stress.errors import ScenarioError, StressError
from stress.scenario.loader import parse_scenario
from stress.scenario.schema import Scenario
from stress.store import FORMAT, RunStore, sha256_path


@dataclass(frozen=True)
class RunData:
    """A complete run: its manifest, scenario, results and metrics."""

    root: Path
    manifest: dict[str, Any]
    scenario: Scenario
    results: pd.DataFrame
    metrics: pd.DataFrame


def load_run(root: str | Path, verify: bool = True) -> RunData:
    """Load a complete run directory; with ``verify``, check every output against its manifest hash."""
    store = RunStore(root)
    manifest = store.read_manifest()
    if manifest.get("format") != FORMAT:
        raise StressError(
            f"{store.manifest_path}: run format {manifest.get('format')!r} is not readable by this version "
            f"(expected {FORMAT}); run the scenario again with `stress run` into a new directory"
        )
    if manifest.get("status") != "complete":
        raise StressError(
            f"{store.root}: the run is not complete (status {manifest.get('status')!r}); run the same "
            "`stress run` command again to resume it"
        )
    if verify:
        for rel, digest in manifest.get("outputs", {}).items():
            path = store.root / rel
            if not path.exists():
                raise StressError(
                    f"{path}: missing, but listed in the manifest (expected sha256 {digest[:12]}...)"
                )
            if sha256_path(path) != digest:
                raise StressError(
                    f"{path}: SHA-256 differs from the manifest (file changed after the run; "
                    "expected the run's own outputs)"
                )
    try:
        scenario = parse_scenario(
            manifest["scenario_text"], f"{store.manifest_path}:scenario_text", check_imports=False
        )
    except (KeyError, ScenarioError) as exc:
        raise StressError(
            f"{store.manifest_path}: cannot rebuild the scenario from the manifest ({exc})"
        ) from None
    return RunData(store.root, manifest, scenario, store.read_results(), store.read_metrics())
