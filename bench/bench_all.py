"""Every perturbation benchmark at one size and several batch sizes, merged into one JSON document.

Runs ``bench_perturbations.py``, ``bench_ct.py``, ``bench_mri.py`` and ``bench_generic.py`` (each in its
own process, so that one family's memory does not weigh on the next) for every ``--batches`` value and
prints one document: the machine, the versions, and one row per (perturbation, batch) with our time, the
TorchIO and MONAI times and the ratios ``torchio_over_ours`` and ``monai_over_ours`` (> 1: ours faster).

    python bench/bench_all.py [--size 256] [--batches 1,8] [--repeats 3] [--device cuda|cpu] [--threads T]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = ("bench_perturbations.py", "bench_ct.py", "bench_mri.py", "bench_generic.py")
ROW_KEYS = ("ours_ms", "torchio_ms", "monai_ms", "torchio_over_ours", "monai_over_ours")


def run_script(script: str, args: argparse.Namespace, batch: int) -> dict:
    """One family's JSON report (or the error it printed)."""
    cmd = [sys.executable, str(HERE / script), "--size", str(args.size), "--batch", str(batch)]
    cmd += ["--repeats", str(args.repeats)]
    if args.device:
        cmd += ["--device", args.device]
    if args.threads is not None:
        cmd += ["--threads", str(args.threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1:] or ["exit code " + str(proc.returncode)]}
    return json.loads(proc.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="N of the N^3 volume [voxels]")
    parser.add_argument("--batches", default="1,8", help="comma-separated batch sizes")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls after one warm-up")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: each script's default)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    args = parser.parse_args()
    rows, runs = [], {}
    for batch in (int(b) for b in args.batches.split(",")):
        for script in SCRIPTS:
            report = run_script(script, args, batch)
            runs[f"{script}:batch={batch}"] = {k: v for k, v in report.items() if k != "perturbations"}
            for name, row in report.get("perturbations", {}).items():
                rows.append({"perturbation": name, "batch": batch, **{k: row.get(k) for k in ROW_KEYS}})
    report = {"benchmark": "all_perturbations", "size": args.size, "runs": runs, "rows": rows}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
