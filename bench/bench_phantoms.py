"""Time phantom generation: ms per case and cases per second, per generator, on the device present.

For each generator (default: every registered one) the default field of view is kept and sampled on
an ``N^3`` grid (spacing = default extent / N per axis). The same ``--batch`` cases (population seed 0,
prevalence 0.5) are generated ``--repeats`` times after one warm-up call; one JSON document gives the
median time per case, host-side per-case draws included.

    python bench/bench_phantoms.py [--size 128] [--batch 8] [--repeats 3] [--device cuda|cpu]
                                   [--generators chest_ct,brain_mri] [--threads T]
"""

from __future__ import annotations

import os
import sys

# Running a script puts bench/ first on sys.path; import the packages from the repository root instead.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
sys.path.insert(0, os.path.dirname(_HERE))

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

from bench.common import base_parser, report_header, set_up  # noqa: E402
from phantoms import PHANTOMS  # noqa: E402
from phantoms.population import PopulationSpec  # noqa: E402

SEED = 0


def _time_generator(name: str, args: argparse.Namespace, device: torch.device) -> dict:
    gen = PHANTOMS.get(name)
    default = gen.spec()
    extent = [n * s for n, s in zip(default.shape, default.spacing_mm, strict=True)]
    spec = gen.spec(shape=(args.size,) * 3, spacing_mm=tuple(e / args.size for e in extent))
    pop = PopulationSpec(prevalence=0.5)
    indices = list(range(args.batch))
    cuda = device.type == "cuda"
    batch = gen.generate(spec, pop, SEED, indices, device)  # warm-up
    times = []
    for _ in range(args.repeats):
        if cuda:
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        gen.generate(spec, pop, SEED, indices, device)
        if cuda:
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    per_case = statistics.median(times) / args.batch
    return {
        "generator": name,
        "size": args.size,
        "spacing_mm": [round(s, 4) for s in spec.spacing_mm],
        "batch": args.batch,
        "repeats": args.repeats,
        "positives": sum(batch.label),
        "ms_per_case": per_case * 1000.0,
        "min_ms_per_case": min(times) / args.batch * 1000.0,
        "cases_per_second": 1.0 / per_case,
    }


def main() -> None:
    parser = base_parser(__doc__, batch=8, repeats=3, spacing=False)
    parser.add_argument("--generators", default=None, help="comma-separated names (default: all registered)")
    args = parser.parse_args()
    device = set_up(args)
    names = args.generators.split(",") if args.generators else PHANTOMS.names()
    report = {
        **report_header("phantoms", device, args),
        "results": [_time_generator(name, args, device) for name in names],
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
