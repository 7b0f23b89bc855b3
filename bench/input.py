"""Loader-only throughput (no model): images per second from JPEG folders to normalized 224 px training batches.

Run from the repository root:  python bench/input.py [--images 200] [--repeats 3] [--json OUT]

It writes two ImageFolder trees of photographic JPEGs (quality 90): about 500x375 (a phone photo scaled for the
web) and 1024x1024 (a competition's full-size image), then times one pass of each loader over each tree, 2 worker
processes, batch 32, side by side in one run with the rounds interleaved (A, B, C, A, B, C...) and the median
reported. Every loader does the same work: decode, resize the shorter side to 256, random 224 crop, random
horizontal flip (the ``light`` preset), float and normalize.

- ``plain``: ``torchvision.datasets.ImageFolder`` + ``DataLoader`` with the equivalent v2 transforms (Resize 256,
  RandomCrop 224, RandomHorizontalFlip, ToDtype, Normalize) in the workers;
- ``ours``: the bundle's real training loader (``kernel.run.prepare.prepare_loaders``: the folder source, the
  unreadable-file guard, per-sample seeding, ``--aug light`` on each backend), uncached (a first epoch) and
  reading the decoded-image cache (every later epoch: the cache is built by one untimed pass first), with
  ``--fast-decode off`` unless the row says ``on``. Its workers hand over uint8 batches (``--uint8-batches``);
  the float conversion and normalization then run where the training device is, here the main process's CPU,
  inside the timed pass (on a GPU they would leave the CPUs altogether).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
SIZES = {"500x375": (500, 375), "1024x1024": (1024, 1024)}


def write_photos(root: Path, size: Tuple[int, int], n: int) -> Path:
    """n photographic-like JPEGs (smooth colour fields, shapes, sensor noise) in two class folders."""
    import cv2
    from PIL import Image

    rng = np.random.default_rng(size[0])
    w, h = size
    for i in range(n):
        small = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
        img = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC).astype(np.int16)
        for _ in range(4):
            c = tuple(int(v) for v in rng.integers(0, 255, 3))
            cv2.circle(img, tuple(int(v) for v in rng.integers(0, min(w, h), 2)), int(rng.integers(10, w // 5)), c, -1)
        img = np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)
        folder = root / ("a" if i % 2 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(folder / f"{i:05d}.jpg", quality=90)
    return root


def plain_loader(root: Path, workers: int) -> Tuple[Callable[[], int], int]:
    import torch
    from torch.utils.data import DataLoader
    from torchvision import datasets
    from torchvision.transforms import v2

    t = v2.Compose([v2.ToImage(), v2.Resize(256, antialias=True), v2.RandomCrop(224), v2.RandomHorizontalFlip(),
                    v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)])
    ds = datasets.ImageFolder(str(root), transform=t)

    def epoch() -> int:
        return sum(len(x) for x, _ in DataLoader(ds, batch_size=32, shuffle=True, num_workers=workers))

    return epoch, len(ds)


def our_loader(root: Path, workers: int, backend: str, fast_decode: str = "off",
               cache_dir: str = "") -> Tuple[Callable[[], int], int]:
    """One pass of our training loader (``cache_dir``: read through a decoded-image cache there, built first)."""
    import torch

    from kernel.options import Options
    from kernel.run.prepare import effective_options, prepare_loaders
    from kernel.tasks import get_task

    opts = effective_options(Options(data=str(root), val_data=str(root), img_size=224, model="resnet18", aug="light",
                                     aug_backend=backend, workers=workers, batch_size=32, device="cpu", epochs=2,
                                     fast_decode=fast_decode, cache="disk" if cache_dir else "off",
                                     cache_dir=cache_dir))
    task = get_task(opts.task)
    split = task.build_data(opts)
    dcfg = {**task.data_config(task.create_model(opts, split, "none"), opts), "mean": MEAN, "std": STD,
            "crop_pct": 0.875, "interpolation": "bilinear"}
    state = {"epoch": 0}

    def epoch() -> int:
        loaders = prepare_loaders(opts, task, split, dcfg, torch.device("cpu"), cache=bool(cache_dir))
        loaders.sampler.set_epoch(state["epoch"])
        state["epoch"] += 1
        seen = sum(len(b[0]) for b in loaders.train)
        loaders.close()  # its workers end here, as the plain loader's do at the end of its pass
        return seen

    if cache_dir:
        epoch()  # builds the cache: what a run's first epoch does
    return epoch, len(split.train)


def measure(loaders: Dict[str, Tuple[Callable[[], int], int]], repeats: int) -> Dict[str, float]:
    """Median images per second of each loader over ``repeats`` interleaved passes."""
    times: Dict[str, List[float]] = {k: [] for k in loaders}
    for _ in range(repeats):
        for name, (epoch, _) in loaders.items():
            t0 = time.perf_counter()
            seen = epoch()
            times[name].append(seen / (time.perf_counter() - t0))
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=200, help="JPEGs per size")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--backends", nargs="+", default=["imgaug", "albumentations", "torchvision"])
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args()
    sys.path.insert(0, ROOT)
    import torch

    results: Dict[str, Dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, size in SIZES.items():
            root = write_photos(Path(tmp) / label, size, args.images)
            loaders = {"plain": plain_loader(root, args.workers)}
            for backend in args.backends:
                loaders[f"ours {backend}, uncached"] = our_loader(root, args.workers, backend)
            loaders[f"ours {args.backends[0]}, uncached, --fast-decode on"] = our_loader(root, args.workers,
                                                                                       args.backends[0], "on")
            for backend in args.backends:
                cache = Path(tmp) / f"cache-{label}-{backend}"
                loaders[f"ours {backend}, cached"] = our_loader(root, args.workers, backend, cache_dir=str(cache))
            results[label] = measure(loaders, args.repeats)
    labels = list(results)
    print(f"| loader | {' | '.join(labels)} |")
    print("|---|" + "---:|" * len(labels))
    for name in results[labels[0]]:
        print(f"| {name} | " + " | ".join(f"{results[lb][name]:.0f} img/s ({results[lb][name] / results[lb]['plain']:.2f}x)"
                                          for lb in labels) + " |")
    env = (f"python {platform.python_version()}, torch {torch.__version__}, {os.cpu_count()} cores, "
           f"{args.workers} workers, {args.images} JPEGs per size, median of {args.repeats}")
    print(env)
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results, "env": env}, indent=2) + "\n")


if __name__ == "__main__":
    main()
