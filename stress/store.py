"""The run directory: the only contract between the run and everything downstream.

    DIR/manifest.json                 scenario text + hash, seed, device, software versions, model
                                      fingerprints (SHA-256 of weights), SHA-256 of every output
    DIR/results.parquet/part-NNNNN.parquet
                                      one row per case x sweep point x model, one part
                                      file per chunk of cases (a Parquet dataset directory)
    DIR/metrics.parquet               statistics computed from the results
    DIR/timings/part-NNNNN.parquet    inference seconds per model call (measured: differs run to run,
                                      so not among the hashed outputs)

Each part file is written to a temporary name, flushed to disk and renamed, so a part either
exists whole or not at all; an interrupted run (Ctrl-C, ``kill -9``) resumes by computing only the
chunks whose part file is missing.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

import pandas as pd

from stress.errors import StressError

FORMAT = "phantom-stress/run/2"  # 2: sweep and *_2 columns (two-family grid sweeps)
MANIFEST = "manifest.json"
RESULTS = "results.parquet"
METRICS = "metrics.parquet"
TIMINGS = "timings"  # inference seconds per model call: measured, so not part of the reproducible outputs
PACKAGES = (
    "torch",
    "numpy",
    "scipy",
    "scikit-learn",
    "pandas",
    "pyarrow",
    "pydantic",
    "pyyaml",
    "matplotlib",
    "reportlab",
    "phantom-stress",
)


def sha256_path(path: Path) -> str:
    """SHA-256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def software_versions() -> dict[str, Any]:
    """Python, platform and the versions of the packages the results depend on."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {"python": platform.python_version(), "platform": platform.platform(), "packages": versions}


def write_frame_atomic(path: Path, frame: pd.DataFrame) -> None:
    """Write ``frame`` as Parquet to ``path`` atomically (see :func:`write_atomic`)."""
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    write_atomic(path, buffer.getvalue())


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file, fsync and rename: never a half-written file."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class RunStore:
    """Reads and writes one run directory."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    @property
    def manifest_path(self) -> Path:
        """Path of manifest.json."""
        return self.root / MANIFEST

    @property
    def results_dir(self) -> Path:
        """Directory of the results part files."""
        return self.root / RESULTS

    def part_path(self, chunk: int) -> Path:
        """Path of the part file of ``chunk``."""
        return self.results_dir / f"part-{chunk:05d}.parquet"

    def exists(self) -> bool:
        """Whether this directory already holds a run."""
        return self.manifest_path.exists()

    def read_manifest(self) -> dict[str, Any]:
        """The manifest, or :class:`StressError` when it is missing or unreadable."""
        try:
            return json.loads(self.manifest_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise StressError(
                f"{self.root}: not a run directory ({MANIFEST} is missing; "
                "expected the --out directory of `stress run`)"
            ) from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise StressError(f"{self.manifest_path}: unreadable manifest ({exc}); expected JSON") from None

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        """Write the manifest atomically (sorted keys, so equal content gives equal bytes)."""
        self.root.mkdir(parents=True, exist_ok=True)
        write_atomic(self.manifest_path, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())

    def done_chunks(self) -> set[int]:
        """Chunks whose part file exists (complete by construction)."""
        if not self.results_dir.exists():
            return set()
        return {int(p.stem.split("-")[1]) for p in self.results_dir.glob("part-*.parquet")}

    def write_part(self, chunk: int, frame: pd.DataFrame) -> None:
        """Write the rows of one chunk atomically."""
        self.results_dir.mkdir(parents=True, exist_ok=True)
        write_frame_atomic(self.part_path(chunk), frame)

    def write_timings(self, chunk: int, frame: pd.DataFrame) -> None:
        """Write the inference times of one chunk atomically (``timings/part-NNNNN.parquet``)."""
        (self.root / TIMINGS).mkdir(parents=True, exist_ok=True)
        write_frame_atomic(self.root / TIMINGS / f"part-{chunk:05d}.parquet", frame)

    def read_timings(self) -> pd.DataFrame:
        """Every model call's inference time (empty when the run kept none)."""
        parts = sorted((self.root / TIMINGS).glob("part-*.parquet"))
        frames = [pd.read_parquet(p) for p in parts]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    def read_results(self) -> pd.DataFrame:
        """All result rows, in (chunk, row) order."""
        parts = sorted(self.results_dir.glob("part-*.parquet")) if self.results_dir.exists() else []
        if not parts:
            raise StressError(
                f"{self.root}: no results ({RESULTS}/ has no part files; run `stress run` first)"
            )
        frames = []
        for part in parts:
            try:
                frames.append(pd.read_parquet(part))
            except Exception as exc:  # noqa: BLE001  (any pyarrow error means a damaged file)
                raise StressError(
                    f"{part}: unreadable results part ({exc}); delete it and re-run the same "
                    "`stress run` command to recompute that chunk"
                ) from None
        return pd.concat(frames, ignore_index=True)

    def read_metrics(self) -> pd.DataFrame:
        """The statistics table written at the end of a run."""
        path = self.root / METRICS
        if not path.exists():
            raise StressError(
                f"{path}: missing (the run did not finish; run the same `stress run` command "
                "again to resume it)"
            )
        return pd.read_parquet(path)

    def output_hashes(self) -> dict[str, str]:
        """SHA-256 of every run output (results parts and metrics), keyed by path relative to the run."""
        files = sorted(self.results_dir.glob("part-*.parquet"))
        if (self.root / METRICS).exists():
            files.append(self.root / METRICS)
        return {str(p.relative_to(self.root)): sha256_path(p) for p in files}
