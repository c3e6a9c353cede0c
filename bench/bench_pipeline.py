"""Time the pipeline's own work against model inference for a whole scenario run.

Runs ``stress run`` on a scenario (default ``scenarios/demo.yaml``, optionally with fewer cases) into a
temporary folder, with timers around the three stages the runner calls for every batch: phantom
generation, the perturbation chain (parameter draws, kernels, mask transport) and the models' ``predict``.
Everything else in the wall time (result rows, Parquet parts, statistics with the bootstrap) is
bookkeeping. One JSON document gives each stage in seconds and the pipeline's overhead as a fraction
of model inference: ``(wall - inference) / inference``. On CUDA every timer synchronises the device.

    python bench/bench_pipeline.py [--scenario scenarios/demo.yaml] [--cases 64] [--device cuda|cpu]
                                   [--threads T]
"""

from __future__ import annotations

import os
import sys

# Running a script puts bench/ first on sys.path; import the packages from the repository root instead.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
sys.path.insert(0, os.path.dirname(_HERE))

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections import defaultdict  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402
import yaml  # noqa: E402

import stress.runner as runner  # noqa: E402
from stress.scenario import load_scenario  # noqa: E402

STAGES = ("phantoms", "perturbations", "inference")


class StageTimer:
    """Accumulated wall time per stage; synchronises CUDA around every timed call."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds: dict[str, float] = defaultdict(float)

    def wrap(self, stage: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            self._sync()
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self._sync()
                self.seconds[stage] += time.perf_counter() - start

        return timed

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def _scenario_copy(path: Path, cases: int | None, folder: Path) -> Path:
    """A copy of the scenario in ``folder``, with ``phantom.n_cases`` replaced when ``cases`` is given."""
    data = yaml.safe_load(path.read_text())
    if cases is not None:
        data["phantom"]["n_cases"] = cases
    out = folder / path.name
    out.write_text(yaml.safe_dump(data, sort_keys=False))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", type=Path, default=Path("scenarios/demo.yaml"))
    parser.add_argument("--cases", type=int, default=None, help="override phantom.n_cases")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    timer = StageTimer(device)
    original = (
        runner.PHANTOMS.get,
        runner.apply_chain,
        runner.sample_chain,
        runner._truth_after,
        runner.load_model,
    )

    def timed_generator(name: str) -> Any:
        gen = original[0](name)
        return dataclasses.replace(gen, generate=timer.wrap("phantoms", gen.generate))

    def timed_model(*a: Any, **k: Any) -> Any:
        model = original[4](*a, **k)
        predictor = model.predictor

        class Timed:
            def predict(self, image: torch.Tensor, spacing_mm: tuple[float, float, float]) -> Any:
                return timer.wrap("inference", predictor.predict)(image, spacing_mm)

        return type(model)(model.name, model.role, model.threshold, Timed(), model.fingerprint)

    runner.PHANTOMS = type("TimedRegistry", (), {"get": staticmethod(timed_generator)})()
    runner.apply_chain = timer.wrap("perturbations", original[1])
    runner.sample_chain = timer.wrap("perturbations", original[2])
    runner._truth_after = timer.wrap("perturbations", original[3])
    runner.load_model = timed_model
    with tempfile.TemporaryDirectory() as tmp:
        scenario = _scenario_copy(args.scenario, args.cases, Path(tmp))
        loaded = load_scenario(scenario)
        start = time.perf_counter()
        runner.run_scenario(loaded, Path(tmp) / "run", device.type, show_progress=False)
        wall = time.perf_counter() - start
    sc = loaded.scenario
    seconds = {stage: round(timer.seconds[stage], 3) for stage in STAGES}
    bookkeeping = wall - sum(timer.seconds.values())
    inference = timer.seconds["inference"]
    report = {
        "benchmark": "pipeline",
        "scenario": str(args.scenario),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "load_average_1m": os.getloadavg()[0],
        "n_cases": sc.phantom.n_cases,
        "n_evaluations": sc.n_evaluations(),
        "wall_s": round(wall, 3),
        "stages_s": {**seconds, "bookkeeping": round(bookkeeping, 3)},
        "overhead_over_inference": round((wall - inference) / inference, 3) if inference > 0 else None,
        "goal_on_h100": "<= 0.10",
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
