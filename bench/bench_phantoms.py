"""Time ``chest_ct`` phantom generation: ms per case and cases per second, on the device present.

Generates the same ``--batch`` cases (population seed 0, prevalence 0.5) ``--repeats`` times after
one warm-up call, at ``N^3`` voxels with isotropic spacing ``fov_mm / N`` (default 384 mm / 128 =
3.0 mm, an adult chest's field of view), and prints one JSON document with the median time per
case. The host-side part (drawing each case's few dozen scalars) is timed separately.

    python bench/bench_phantoms.py [--size 128] [--batch 8] [--repeats 3] [--device cuda|cpu] [--fov-mm 384]
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
import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402

from phantoms import chest_ct  # noqa: E402
from phantoms.chest_ct import ChestCTSpec, generate_chest_ct  # noqa: E402
from phantoms.population import PopulationSpec  # noqa: E402

SEED = 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128, help="N of the N^3 volume [voxels]")
    parser.add_argument("--batch", type=int, default=8, help="cases per generate call")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls after one warm-up")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--fov-mm", type=float, default=384.0, help="field of view per axis [mm]")
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    step = args.fov_mm / args.size
    spec = ChestCTSpec(shape=(args.size,) * 3, spacing_mm=(step,) * 3)
    pop = PopulationSpec(prevalence=0.5)
    indices = list(range(args.batch))

    batch = generate_chest_ct(spec, pop, SEED, indices, device)  # warm-up
    times = []
    for _ in range(args.repeats):
        if cuda:
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        generate_chest_ct(spec, pop, SEED, indices, device)
        if cuda:
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)

    start = time.perf_counter()
    for _ in range(args.repeats):
        for i in indices:
            chest_ct._draw_case(spec, pop, SEED, i)
    host_per_case = (time.perf_counter() - start) / (args.repeats * args.batch)

    per_case = statistics.median(times) / args.batch
    report = {
        "benchmark": "phantoms",
        "generator": "chest_ct",
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if cuda else None,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "load_average_1m": os.getloadavg()[0],
        "size": args.size,
        "spacing_mm": step,
        "fov_mm": args.fov_mm,
        "batch": args.batch,
        "repeats": args.repeats,
        "positives": sum(batch.label),
        "vessels_per_lung": spec.vessels_per_lung,
        "ms_per_case": per_case * 1000.0,
        "min_ms_per_case": min(times) / args.batch * 1000.0,
        "cases_per_second": 1.0 / per_case,
        "host_draw_ms_per_case": host_per_case * 1000.0,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
