"""The real loader feeding a GPU: how much of the training time the GPU waits for data (``bench/gpu.py --fed``).

Run from the repository root, where a CUDA GPU is lent:  python bench/gpu.py --fed [--cores 4] [--json OUT]

Kaggle's default box gives 4 CPU cores to two T4s: the question is whether those cores keep a GPU busy. The
process (and so its DataLoader workers, which inherit it) is pinned to ``--cores`` cores, as ``taskset -c 0-3``
would, with as many workers. On each JPEG tree of ``bench/input.py`` (photographic, quality 90; about 500x375
and 1024x1024) it trains timm's resnet50 at 224 px from scratch with the run's AMP (bf16 from sm 8.0, else fp16
with GradScaler), AdamW, batch 64, ``--aug light``, each pass through ``kernel.engine.train_one_epoch``:

- ``GPU only``: the same number of steps on batches of the same shapes made on the GPU: the ceiling;
- ``ours, uncached``: the bundle's training loader (``kernel.run.prepare.prepare``: the folder source, the
  guard, uint8 batches finished on the GPU on a side stream, ``--fast-decode`` at its default ``on``), epoch 1,
  which also fills the decoded-image cache (``--cache disk``);
- ``ours, cached``: the same loader reading the cache (epochs 2 and 3, the median);
- ``plain``: ``torchvision.datasets.ImageFolder`` + ``DataLoader`` (pinned memory, ``non_blocking`` copies) with
  the equivalent v2 transforms and float normalization in the workers, the same model and optimizer.

Each row gives img/s and the share of the time the GPU waited: ``1 - rate / GPU-only rate``. One run each (the
device time is short); the tree is written once, from 128 distinct images copied to ``--images`` files.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from cuda_check import require_cuda  # noqa: E402
from input import MEAN, SIZES, STD, write_photos  # noqa: E402

__all__ = ["main"]


def write_tree(root: Path, size: tuple, n: int) -> Path:
    """``n`` JPEGs in two class folders: 128 distinct ones (``write_photos``), copied under new names."""
    seed = write_photos(root.parent / f"{root.name}-seed", size, min(n, 128))
    files = sorted(seed.rglob("*.jpg"))
    for i in range(n):
        folder = root / ("a" if i % 2 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(files[i % len(files)], folder / f"{i:05d}.jpg")
    return root


def _options(root: Path, out: Path, a: argparse.Namespace) -> Any:
    from kernel.options import Options
    from kernel.run.prepare import effective_options

    return effective_options(Options(
        data=str(root), val_data=str(root), model=a.model, pretrained="none", img_size=224, batch_size=a.batch,
        workers=a.cores, device=a.device, amp=True, aug="light", aug_backend=a.backend, epochs=3, cache="disk",
        cache_dir=str(out / "cache"), output=str(out), name="fed", seed=0))


def _ours(root: Path, out: Path, a: argparse.Namespace) -> Dict[str, Any]:
    """GPU-only, uncached and cached passes of the bundle's loop on the tree at ``root``."""
    from kernel.engine import train_one_epoch
    from kernel.models import train_mode
    from kernel.run.fit import step_config
    from kernel.run.prepare import prepare

    p = prepare(_options(root, out, a))
    train_mode(p.model, False)
    cfg = step_config(p, train=True)
    try:
        # the ceiling: batches of the loader's shapes made on the GPU (reading real ones would fill the cache
        # and make epoch 1 partly cached); the values do not change the step's time
        g = torch.Generator(p.device).manual_seed(0)
        fmt = torch.channels_last if p.opts.channels_last else torch.contiguous_format
        held = [(torch.randn(a.batch, 3, 224, 224, device=p.device, generator=g).contiguous(memory_format=fmt),
                 torch.randint(0, len(p.split.classes), (a.batch,), device=p.device, generator=g)) for _ in range(2)]
        pool = [held[i % len(held)] for i in range(len(p.train_loader))]
        train_one_epoch(p.model, pool[:10], p.optimizer, cfg)  # cudnn.benchmark picks its kernels
        gpu = train_one_epoch(p.model, pool, p.optimizer, cfg)
        rows = {"GPU only": gpu}
        for epoch in (1, 2, 3):
            p.train_sampler.set_epoch(epoch)
            rows[f"epoch {epoch}"] = train_one_epoch(p.model, p.train_loader, p.optimizer, cfg)
            if p.cache is not None:
                p.cache.end_epoch(epoch)
    finally:
        p.close_loaders()
    cached = rows["epoch 3"]
    cached_rate = statistics.median([rows["epoch 2"].img_per_s, rows["epoch 3"].img_per_s])
    return {"GPU only": gpu.img_per_s, "ours, uncached": rows["epoch 1"].img_per_s, "ours, cached": cached_rate,
            "cached data_time share": cached.data_time / max(cached.time, 1e-9),
            "uncached data_time share": rows["epoch 1"].data_time / max(rows["epoch 1"].time, 1e-9),
            "amp": str(p.amp_dtype), "batches": len(p.train_loader)}


def _plain(root: Path, a: argparse.Namespace) -> float:
    """img/s of a hand-written ImageFolder loop (one untimed warm-up pass of 10 batches first)."""
    import timm
    from torch.utils.data import DataLoader
    from torchvision import datasets
    from torchvision.transforms import v2

    from kernel.engine import resolve_amp_dtype

    device = torch.device(a.device)
    t = v2.Compose([v2.ToImage(), v2.Resize(256, antialias=True), v2.RandomCrop(224), v2.RandomHorizontalFlip(),
                    v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)])
    ds = datasets.ImageFolder(str(root), transform=t)
    torch.manual_seed(0)
    model = timm.create_model(a.model, num_classes=2).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    dtype = resolve_amp_dtype(device, True)  # the run's choice: bf16 from sm 8.0, else fp16
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    loss_fn = torch.nn.CrossEntropyLoss()

    def epoch(limit: Optional[int] = None) -> float:
        loader = DataLoader(ds, batch_size=a.batch, shuffle=True, num_workers=a.cores, pin_memory=True,
                            drop_last=True)
        seen, t0 = 0, time.perf_counter()
        for i, (x, y) in enumerate(loader):
            if limit is not None and i >= limit:
                break
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=dtype):
                loss = loss_fn(model(x), y)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            seen += len(x)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return seen / (time.perf_counter() - t0)

    model.train()
    epoch(limit=10)
    return epoch()


def main(argv: Optional[List[str]] = None) -> None:
    ap = argparse.ArgumentParser(prog="gpu.py --fed", description=__doc__.splitlines()[0])
    ap.add_argument("--cores", type=int, default=4, help="CPU cores the process and its workers may use (taskset)")
    ap.add_argument("--images", type=int, default=1024, help="JPEGs per tree")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--model", default="resnet50")
    ap.add_argument("--backend", default="auto", help="--aug-backend of ours")
    ap.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="cpu: a smoke test, not figures")
    ap.add_argument("--json", help="also write the figures here")
    a = ap.parse_args(argv)
    require_cuda(a.device, "gpu.py --fed", "--device cpu: a smoke test")
    results: Dict[str, Dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        trees = {label: write_tree(Path(tmp) / label, SIZES[label], a.images) for label in a.sizes}
        os.sched_setaffinity(0, set(sorted(os.sched_getaffinity(0))[:a.cores]))  # workers inherit it
        torch.set_num_threads(a.cores)
        for label, root in trees.items():
            out = Path(tmp) / f"out-{label}"
            row = _ours(root, out, a)
            row["plain"] = _plain(root, a)
            for name in ("ours, uncached", "ours, cached", "plain"):
                row[f"{name}: GPU waits"] = 1 - row[name] / row["GPU only"]
            results[label] = row
            print(label, json.dumps(row), file=sys.stderr, flush=True)
    name = torch.cuda.get_device_name() if a.device == "cuda" else "cpu (smoke test: not figures)"
    print(f"| loader ({name}, {a.cores} cores, {a.model} at 224, batch {a.batch}) | "
          + " | ".join(results) + " |")
    print("|---|" + "---:|" * len(results))
    for key in ("GPU only", "ours, uncached", "ours, cached", "plain"):
        cells = [f"{r[key]:.0f} img/s" + ("" if key == "GPU only" else f" (GPU waits {100 * r[key + ': GPU waits']:.0f}%)")
                 for r in results.values()]
        print(f"| {key} | " + " | ".join(cells) + " |")
    if a.json:
        Path(a.json).write_text(json.dumps({"device": name, "cores": a.cores, "results": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
