"""Command-line options and set-up shared by the benchmark scripts."""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch


def base_parser(doc: str, batch: int = 1, repeats: int = 5, spacing: bool = True) -> argparse.ArgumentParser:
    """Parser with the options every benchmark takes: size, batch, repeats, device, threads[, spacing]."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--size", type=int, default=128, help="N of the N^3 volume [voxels]")
    parser.add_argument("--batch", type=int, default=batch, help="cases per batch")
    parser.add_argument("--repeats", type=int, default=repeats, help="timed calls after one warm-up")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    if spacing:
        parser.add_argument("--spacing", type=float, nargs=3, default=(1.0, 0.8, 0.8), help="D H W [mm]")
    return parser


def set_up(args: argparse.Namespace) -> torch.device:
    """Apply ``--threads`` and return the ``--device``."""
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    return torch.device(args.device)


def report_header(name: str, device: torch.device, args: argparse.Namespace) -> dict:
    """The fields every benchmark report starts with: what ran where, and how loaded the machine was."""
    import os

    return {
        "benchmark": name,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "load_average_1m": os.getloadavg()[0],
        "size": args.size,
        "batch": args.batch,
        "repeats": args.repeats,
    }


def random_volume(args: argparse.Namespace, device: torch.device, seed: int = 0) -> torch.Tensor:
    """A ``(batch, 1, N, N, N)`` float32 volume of N(0, 100^2) values from a seeded generator."""
    gen = torch.Generator().manual_seed(seed)
    shape = (args.batch, 1, args.size, args.size, args.size)
    return (torch.randn(shape, generator=gen, dtype=torch.float32) * 100.0).to(device)


def timed(fn: Callable[[], object], repeats: int, device: torch.device) -> dict[str, float]:
    """Median and min wall time in ms over ``repeats`` calls, after one warm-up call."""
    cuda = device.type == "cuda"
    fn()
    times = []
    for _ in range(repeats):
        if cuda:
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize(device)
        times.append((time.perf_counter() - start) * 1000.0)
    return {"median": statistics.median(times), "min": min(times)}


def ratio(theirs: float | None, ours: float) -> float | None:
    """``theirs / ours`` (> 1: ours is faster), ``None`` when the other library has no equivalent."""
    return None if theirs is None else theirs / ours


def timing_row(
    ours: Callable[[], object],
    theirs: dict[str, tuple[Callable[[], object] | None, torch.device]],
    repeats: int,
    device: torch.device,
) -> dict[str, Any]:
    """Times of ours and of each library's equivalent (``None``: none), with ratios of medians and minima."""
    t = timed(ours, repeats, device)
    row: dict[str, Any] = {"ours_ms": t["median"], "ours_min_ms": t["min"]}
    for lib, (fn, dev) in theirs.items():
        their = None if fn is None else timed(fn, repeats, dev)
        row[f"{lib}_ms"] = None if their is None else their["median"]
        row[f"{lib}_min_ms"] = None if their is None else their["min"]
        row[f"{lib}_over_ours"] = ratio(row[f"{lib}_ms"], row["ours_ms"])
        row[f"{lib}_over_ours_min"] = ratio(row[f"{lib}_min_ms"], row["ours_min_ms"])
    return row


def library_versions(torchio_runner: Any, monai_runner: Any, device: torch.device) -> dict[str, Any]:
    """Which comparison libraries ran, their versions and devices (TorchIO always on the CPU)."""
    out: dict[str, Any] = {}
    for lib, obj, where in (("torchio", torchio_runner, "cpu"), ("monai", monai_runner, str(device))):
        out[lib] = (
            {"available": False}
            if obj is None
            else {"available": True, "version": obj.version, "device": where}
        )
    return out
