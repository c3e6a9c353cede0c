"""Time chest_ct phantom generation: ms per case and cases per second on the device present.

python bench/bench_phantoms.py [--size 128] [--batch 8] [--repeats 3] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from phantoms.chest_ct import ChestCTSpec, generate_chest_ct
from phantoms.population import PopulationSpec

FOV_MM = 384.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    step = FOV_MM / args.size
    spec = ChestCTSpec(shape=(args.size,) * 3, spacing_mm=(step,) * 3)
    pop = PopulationSpec(prevalence=0.5)
    generate_chest_ct(spec, pop, 0, range(args.batch), device)  # warm-up
    times = []
    for r in range(args.repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        generate_chest_ct(spec, pop, r + 1, range(args.batch), device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    per_case = statistics.median(times) / args.batch
    print(
        json.dumps(
            {
                "device": str(device),
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
                "size": args.size,
                "spacing_mm": step,
                "batch": args.batch,
                "repeats": args.repeats,
                "ms_per_case": per_case * 1000,
                "cases_per_second": 1.0 / per_case,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
