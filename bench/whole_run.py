"""What a whole run costs beyond its training steps: ``kernel.train`` against a plain loop doing the same work.

Run from the repository root:  python bench/whole_run.py [--tasks classify segment] [--repeats 3] [--json OUT]

Both sides train the same model on the same image files for the same epochs, validate after every epoch and
save the weights at the end, each in this process, in interleaved rounds (who goes first flips every round);
the median wall times are compared. Goal: ours <= 1.10x the plain loop.

- ``classify``: the digits (scikit-learn's 1,797 8x8 handwritten digits, drawn at 32 px as RGB PNGs, 80/20 in
  ``train/`` and ``val/`` class folders); timm resnet18 from scratch, AdamW, cosine, batch 64, 2 workers.
  Plain: ``torchvision.datasets.ImageFolder`` + ``DataLoader`` with the same preprocessing (Resize 36,
  CenterCrop 32, ToDtype, Normalize), accuracy each epoch, ``torch.save`` at the end.
- ``segment``: digit canvases (two digits at 24 px on a 64 px canvas; mask: the digit's class + 1 where it is
  drawn), ``images/`` + ``masks/`` PNGs; smp U-Net on resnet18 from scratch, Dice + CE, batch 16, 2 workers.
  Plain: a Dataset reading the PNG pairs (OpenCV), normalized in the workers, per-class IoU each epoch.

Ours is ``kernel.train.main`` with its defaults (checkpoints every epoch, best.pt, pictures, metrics.csv,
TensorBoard when installed, the decoded-image cache) and ``--aug none`` (the plain loops do not augment).
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


def _digits() -> Tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images * (255.0 / 16.0)).astype(np.uint8), d.target


def write_digits(root: Path) -> Path:
    """train/ and val/ ImageFolder trees of the digits at 32 px (RGB PNGs)."""
    import cv2

    images, labels = _digits()
    order = np.random.default_rng(0).permutation(len(images))
    for n, i in enumerate(order):
        part = "val" if n % 5 == 0 else "train"
        folder = root / part / str(labels[i])
        folder.mkdir(parents=True, exist_ok=True)
        big = cv2.resize(images[i], (32, 32), interpolation=cv2.INTER_LINEAR)
        cv2.imwrite(str(folder / f"{i:04d}.png"), cv2.merge([big] * 3))
    return root


def write_canvases(root: Path, n_train: int, n_val: int) -> Path:
    """train/ and val/ folders of images/ + masks/: two digits at 24 px on a 64 px canvas each."""
    import cv2

    images, labels = _digits()
    rng = np.random.default_rng(1)
    for part, n in (("train", n_train), ("val", n_val)):
        for sub in ("images", "masks"):
            (root / part / sub).mkdir(parents=True, exist_ok=True)
        for k in range(n):
            canvas, mask = np.zeros((64, 64), np.uint8), np.zeros((64, 64), np.uint8)
            for _ in range(2):
                i = int(rng.integers(len(images)))
                digit = cv2.resize(images[i], (24, 24), interpolation=cv2.INTER_LINEAR)
                y, x = (int(v) for v in rng.integers(0, 40, 2))
                canvas[y:y + 24, x:x + 24] = np.maximum(canvas[y:y + 24, x:x + 24], digit)
                mask[y:y + 24, x:x + 24][digit > 80] = labels[i] + 1
            cv2.imwrite(str(root / part / "images" / f"{k:04d}.png"), cv2.merge([canvas] * 3))
            cv2.imwrite(str(root / part / "masks" / f"{k:04d}.png"), mask)
    return root


def plain_classify(root: Path, out: Path, epochs: int, workers: int) -> Callable[[], None]:
    import timm
    import torch
    from torch.utils.data import DataLoader
    from torchvision import datasets
    from torchvision.transforms import v2

    t = v2.Compose([v2.ToImage(), v2.Resize(36, antialias=True), v2.CenterCrop(32),
                    v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)])
    train, val = (datasets.ImageFolder(str(root / p), transform=t) for p in ("train", "val"))

    def run() -> None:
        torch.manual_seed(0)
        model = timm.create_model("resnet18", num_classes=10)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
        tl = DataLoader(train, batch_size=64, shuffle=True, num_workers=workers, drop_last=True)
        vl = DataLoader(val, batch_size=64, num_workers=workers)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * len(tl))
        loss_fn = torch.nn.CrossEntropyLoss()
        for _ in range(epochs):
            model.train()
            for x, y in tl:
                loss = loss_fn(model(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
            model.eval()
            correct = seen = 0
            with torch.no_grad():
                for x, y in vl:
                    correct += int((model(x).argmax(1) == y).sum())
                    seen += len(y)
            print(f"plain: val acc {correct / seen:.4f}", file=sys.stderr)
        torch.save(model.state_dict(), out / "plain.pt")

    return run


def plain_segment(root: Path, out: Path, epochs: int, workers: int) -> Callable[[], None]:
    import cv2
    import segmentation_models_pytorch as smp
    import torch
    from torch.utils.data import DataLoader, Dataset

    mean, std = np.array(MEAN, np.float32) * 255, np.array(STD, np.float32) * 255

    class Pairs(Dataset):
        def __init__(self, folder: Path):
            self.files = sorted((folder / "images").iterdir())

        def __len__(self) -> int:
            return len(self.files)

        def __getitem__(self, i: int):
            f = self.files[i]
            image = cv2.cvtColor(cv2.imread(str(f)), cv2.COLOR_BGR2RGB).astype(np.float32)
            mask = cv2.imread(str(f.parent.parent / "masks" / f.name), cv2.IMREAD_GRAYSCALE)
            return torch.from_numpy(((image - mean) / std).transpose(2, 0, 1)), torch.from_numpy(mask).long()

    train, val = Pairs(root / "train"), Pairs(root / "val")

    def run() -> None:
        torch.manual_seed(0)
        model = smp.Unet("resnet18", encoder_weights=None, classes=11)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
        tl = DataLoader(train, batch_size=16, shuffle=True, num_workers=workers, drop_last=True)
        vl = DataLoader(val, batch_size=16, num_workers=workers)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * len(tl))
        dice, ce = smp.losses.DiceLoss("multiclass"), torch.nn.CrossEntropyLoss()
        for _ in range(epochs):
            model.train()
            for x, y in tl:
                logits = model(x)
                loss = dice(logits, y) + ce(logits, y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
            model.eval()
            inter, union = torch.zeros(11), torch.zeros(11)
            with torch.no_grad():
                for x, y in vl:
                    pred = model(x).argmax(1)
                    for c in range(11):
                        p, t = pred == c, y == c
                        inter[c] += (p & t).sum()
                        union[c] += (p | t).sum()
            print(f"plain: val mIoU {float((inter / union.clamp(min=1)).mean()):.4f}", file=sys.stderr)
        torch.save(model.state_dict(), out / "plain.pt")

    return run


def ours(root: Path, out: Path, epochs: int, workers: int, task: str, *extra: str) -> Callable[[], None]:
    from kernel.train import main

    runs = {"n": 0}
    common = ["--data", str(root / "train"), "--val-data", str(root / "val"), "--pretrained", "none",
              "--epochs", str(epochs), "--workers", str(workers), "--aug", "none", "--device", "cpu",
              "--output", str(out), *extra]
    flags = {"classify": ["--model", "resnet18", "--img-size", "32", "--batch-size", "64"],
             "segment": ["--task", "segment", "--arch", "unet", "--model", "resnet18", "--img-size", "64",
                         "--batch-size", "16"]}[task]

    def run() -> None:
        runs["n"] += 1
        cache = ["--cache-dir", str(out / f"cache-{runs['n']}")]  # a run starts with none, as on Kaggle
        if main([*common, *flags, *cache, "--name", f"{task}-{runs['n']}"]) != 0:
            raise SystemExit(f"kernel.train failed on {task}")

    return run


def measure(runs: Dict[str, Callable[[], None]], repeats: int) -> Dict[str, List[float]]:
    """Wall seconds of each run over ``repeats`` rounds, the order flipped every round."""
    times: Dict[str, List[float]] = {k: [] for k in runs}
    for r in range(repeats):
        for name in (list(runs) if r % 2 == 0 else list(runs)[::-1]):
            t0 = time.perf_counter()
            runs[name]()
            times[name].append(time.perf_counter() - t0)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", nargs="+", default=["classify", "segment"], choices=["classify", "segment"])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--canvases", type=int, nargs=2, default=[192, 48], metavar=("TRAIN", "VAL"))
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args()
    sys.path.insert(0, ROOT)
    import torch

    results: Dict[str, Dict[str, List[float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for task in args.tasks:
            data, out = Path(tmp) / task, Path(tmp) / f"out-{task}"
            out.mkdir()
            if task == "classify":
                write_digits(data)
                plain = plain_classify(data, out, args.epochs, args.workers)
            else:
                write_canvases(data, *args.canvases)
                plain = plain_segment(data, out, args.epochs, args.workers)
            runs = {"plain": plain, "ours": ours(data, out, args.epochs, args.workers, task)}
            results[task] = measure(runs, args.repeats)
    print("| run | plain loop | kernel.train | ratio |")
    print("|---|---:|---:|---:|")
    for task, t in results.items():
        p, o = statistics.median(t["plain"]), statistics.median(t["ours"])
        print(f"| {task} | {p:.1f} s | {o:.1f} s | **{o / p:.2f}x** |")
    env = (f"python {platform.python_version()}, torch {torch.__version__}, {os.cpu_count()} cores, "
           f"{args.workers} workers, {args.epochs} epochs, median of {args.repeats}")
    print(env)
    if args.json:
        Path(args.json).write_text(json.dumps({"seconds": results, "env": env}, indent=2) + "\n")


if __name__ == "__main__":
    main()
