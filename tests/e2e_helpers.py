"""Helpers shared by the end-to-end tests: a tiny scenario and a CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

TINY = """\
name: tiny
description: tiny end-to-end scenario for tests
seed: 77
phantom:
  generator: chest_ct
  n_cases: {n_cases}
  params: {{shape: [16, 32, 32], spacing_mm: [10.0, 10.0, 10.0], vessel_generations: 2}}
population:
  prevalence: 0.5
baseline:
  - {{name: ct_dose, severity: 1.0}}
perturbations:
  - {{name: ct_dose, severities: [1.0, 0.25]}}
  - {{name: gaussian_blur, severities: [0.0, 8.0]}}
models:
  - {{name: v1, role: reference, python: "{reference}"}}
  - {{name: v2, role: candidate, python: "{candidate}"}}
metrics: [auc, sensitivity]
statistics:
  subgroups: [sex, lesion_size]
  bootstrap: {{n_resamples: 200}}
gate:
  - {{id: easy, rule: "auc >= 0.0 for ct_dose >= 0.25 overall", statistic: estimate}}
  - {{id: impossible, rule: "auc >= 1.01 in every subgroup", statistic: ci_low}}
execution: {{batch_size: 2, chunk_cases: 2}}
"""


def write_scenario(
    path: Path,
    n_cases: int = 12,
    reference: str = "stress.models.demo:reference",
    candidate: str = "stress.models.demo:candidate",
) -> Path:
    path.write_text(TINY.format(n_cases=n_cases, reference=reference, candidate=candidate))
    return path


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join([str(ROOT / "tests" / "data"), e.get("PYTHONPATH", "")])
    e["COLUMNS"] = "200"
    return e


def cli_args(*args: str) -> list[str]:
    return [sys.executable, "-m", "stress.cli", *args]


def stress(*args: str, check_rc: int | None = 0) -> subprocess.CompletedProcess:
    proc = subprocess.run(cli_args(*args), capture_output=True, text=True, env=env(), cwd=ROOT, timeout=600)
    if check_rc is not None:
        assert proc.returncode == check_rc, f"rc={proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc
