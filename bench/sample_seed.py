"""What seeding each sample's augmentation costs: ``torch.manual_seed`` against the CPU generator alone.

A training sample is augmented from torch's CPU generator seeded by (seed, epoch, index), so that a resumed
run and any worker count see the same pixels (:class:`kernel.data.TransformedDataset`). ``torch.manual_seed``
also seeds every accelerator's generator; while CUDA is not initialised (a DataLoader worker, a CPU run) it
queues each of those calls with a stack trace, which costs more the deeper the call stack is. The CPU
generator's own ``manual_seed`` gives the same CPU numbers without that.

Part 1 times the two calls, alternating, at two stack depths (a DataLoader worker's fetch is about 10
frames deep; a run started from a notebook or a test, 40 or more). Part 2 fetches the same samples
through a ``TransformedDataset`` (the ``light`` preset, 64 px shapes images held in memory) with the
per-sample seed and without one, alternating rounds, and reports the median img/s ratio.

    python bench/sample_seed.py            # single-threaded, as a DataLoader worker runs
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, List

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from kernel.augment import build_transform  # noqa: E402
from kernel.data import DEFAULT_DATA_CONFIG, ShapesSource, TransformedDataset  # noqa: E402


def _at_depth(depth: int, fn: Callable[[], float]) -> float:
    return fn() if depth == 0 else _at_depth(depth - 1, fn)


def _per_call_us(seed_fn: Callable[[int], object], calls: int) -> float:
    start = time.perf_counter()
    for i in range(calls):
        seed_fn(i)
    return (time.perf_counter() - start) / calls * 1e6


class _InMemory:
    """A ShapesSource drawn once: the timing is of the transform and the seeding, not of drawing."""

    def __init__(self, n: int, size: int):
        src = ShapesSource(n=n, seed=0, size=size)
        self.items = [src[i] for i in range(n)]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        return self.items[i]


def main(argv: List[str] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=2000, help="seed calls per round (part 1)")
    ap.add_argument("--samples", type=int, default=400, help="samples per round (part 2)")
    ap.add_argument("--repeats", type=int, default=5, help="alternating rounds; medians are reported")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)

    print("part 1: one seed call, microseconds (median of %d rounds)" % args.repeats)
    for depth in (10, 40):
        times = {"torch.manual_seed": [], "torch.default_generator.manual_seed": []}
        for _ in range(args.repeats):
            times["torch.manual_seed"].append(_at_depth(depth, lambda: _per_call_us(torch.manual_seed, args.calls)))
            times["torch.default_generator.manual_seed"].append(
                _at_depth(depth, lambda: _per_call_us(torch.default_generator.manual_seed, args.calls)))
        a, b = (statistics.median(v) for v in times.values())
        print(f"  stack depth {depth:>2}: torch.manual_seed {a:8.1f} us   CPU generator only {b:6.1f} us   "
              f"({a / b:.0f}x)")

    source = _InMemory(args.samples, 64)
    transform = build_transform("light", train=True, img_size=64, mean=DEFAULT_DATA_CONFIG["mean"],
                                std=DEFAULT_DATA_CONFIG["std"])
    seeded, unseeded = TransformedDataset(source, transform, seed=0), TransformedDataset(source, transform)
    rates = {"seeded": [], "unseeded": []}
    for r in range(args.repeats):
        order = [("seeded", seeded), ("unseeded", unseeded)]
        for name, ds in order if r % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            for i in range(len(ds)):
                ds[(1, i)]
            rates[name].append(len(ds) / (time.perf_counter() - start))
    s, u = statistics.median(rates["seeded"]), statistics.median(rates["unseeded"])
    print(f"part 2: TransformedDataset, light preset, 64 px: seeded per sample {s:.0f} img/s, "
          f"unseeded {u:.0f} img/s, ratio {s / u:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
