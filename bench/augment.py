"""Augmentation throughput, img/s per core, 224px RGB uint8, train pipelines (to normalized tensor).

Run from the repository root:  python bench/augment.py [--quick] [--images N] [--markdown FILE] [--json OUT]

Measures every preset x backend of kernel.augment (imgaug, torchvision v2 and albumentations, whichever
are importable), an "equivalent torchvision v2 pipeline" and the same pipeline written plainly with
albumentations (Resize 256 + flip + rotate + Gaussian noise + random crop 224 + normalize; v2 in two
noise placements, the faster one is the baseline) and the notes' imgaug pipeline with imgaug's own
AdditiveGaussianNoise, all in the same process. num_workers=0 rounds are interleaved (pipeline A, B,
C, A, B, C, ...) and the median is reported, so load from other processes hits all pipelines alike.
torch and OpenCV run single-threaded, so figures are per core. Each backend's preset is also given as
a ratio to albumentations' same preset (the pipelines' own rows: to albumentations default).
``--images N`` times N images per pipeline per round instead of ~0.3 s (``--images 20``: a smoke run).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from typing import Callable, Dict, List, Tuple

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMGAUG_QUOTED, V2_QUOTED = 960.0, 606.0  # img/s, the notes' imgaug and torchvision v2 figures (quoted, not run)
BACKENDS = ("imgaug", "torchvision", "albumentations")
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def make_images(n: int, size: int = 224) -> List[np.ndarray]:
    """n distinct (size, size, 3) uint8 images: smooth gradients + shapes + mild noise (photo-like)."""
    import cv2

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    out = []
    for _ in range(n):
        base = np.stack([(a * xx + b * yy) * 255 for a, b in rng.uniform(0, 1, (3, 2))], -1)
        img = np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8)
        for _ in range(3):
            c = tuple(int(v) for v in rng.integers(0, 255, 3))
            cv2.circle(img, tuple(int(v) for v in rng.integers(0, size, 2)), int(rng.integers(10, 60)), c, -1)
        out.append(img)
    return out


class PlainV2:
    """The 'equivalent torchvision v2 pipeline' of the default preset, as a user would write it."""

    def __init__(self, noise_on_uint8: bool):
        import torch
        from torchvision.transforms import v2

        noise = [v2.GaussianNoise(sigma=0.04)]
        to_float = [v2.ToDtype(torch.float32, scale=True)]
        self.t = v2.Compose([v2.ToImage(), v2.Resize(256, antialias=True), v2.RandomHorizontalFlip(),
                             v2.RandomRotation(15, interpolation=v2.InterpolationMode.BILINEAR), v2.RandomCrop(224)]
                            + (noise + to_float if noise_on_uint8 else to_float + noise) + [v2.Normalize(MEAN, STD)])

    def __call__(self, image: np.ndarray, mask: object = None) -> Tuple[object, None]:
        return self.t(image), None


class PlainAlbumentations:
    """The same default-preset ops written plainly with albumentations (its Normalize + ToTensorV2)."""

    def __init__(self):
        import cv2

        from kernel.augment.albu import import_albumentations

        A = import_albumentations()
        from albumentations.pytorch import ToTensorV2

        self.t = A.Compose([A.SmallestMaxSize(max_size=256), A.HorizontalFlip(),
                            A.Rotate(limit=15, interpolation=cv2.INTER_LINEAR, border_mode=cv2.BORDER_CONSTANT, p=1.0),
                            A.RandomCrop(224, 224), A.GaussNoise(std_range=(0, 0.04), per_channel=False, p=1.0),
                            A.Normalize(MEAN, STD), ToTensorV2()])

    def __call__(self, image: np.ndarray, mask: object = None) -> Tuple[object, None]:
        return self.t(image=image)["image"], None


def available(backend: str) -> bool:
    """Whether kernel.augment can build ``backend`` here (torchvision always can)."""
    from kernel.augment import imgaug_compat
    from kernel.augment.albu import albumentations_available

    return {"imgaug": imgaug_compat.imgaug_available, "albumentations": albumentations_available}.get(
        backend, lambda: True)()


class Batched:
    """kernel.augment.augment_batch over ``n`` images per call (imgaug batch mode)."""

    def __init__(self, transform: Callable, images: List[np.ndarray], n: int = 32):
        self.transform, self.images, self.per_call = transform, images[:n], n

    def __call__(self, image: np.ndarray, mask: object = None) -> Tuple[object, None]:
        from kernel.augment import augment_batch

        return augment_batch(self.transform, self.images)[0], None


def pipelines(images: List[np.ndarray]) -> Dict[str, Callable]:
    from kernel.augment import build_transform

    out: Dict[str, Callable] = {}
    for backend in [b for b in BACKENDS if available(b)]:
        for preset in ("none", "light", "default", "heavy"):
            out[f"{backend} {preset}"] = build_transform(preset, train=True, backend=backend, img_size=224,
                                                         mean=MEAN, std=STD)
    notes = [{"Fliplr": {"p": 0.5}}, {"Affine": {"rotate": [-15, 15]}}, "CropToFixedSize",
             {"AdditiveGaussianNoise": {"scale": [0, 0.04 * 255]}}]
    if "imgaug default" in out:
        out["imgaug default w/ iaa.AdditiveGaussianNoise"] = build_transform(notes, train=True, backend="imgaug",
                                                                            img_size=224, mean=MEAN, std=STD)
        out["imgaug default, augment_batch x32"] = Batched(out["imgaug default"], images)
    if "albumentations default" in out:
        out["plain albumentations"] = PlainAlbumentations()
    out["plain v2: noise on float"] = PlainV2(noise_on_uint8=False)
    out["plain v2: noise on uint8"] = PlainV2(noise_on_uint8=True)
    return out


def bench_inline(pipes: Dict[str, Callable], images: List[np.ndarray], rounds: int, seconds: float,
                 count: int = 0) -> Dict[str, float]:
    """Median img/s over interleaved rounds of ~``seconds`` each (or of ``count`` images), num_workers=0."""
    rates: Dict[str, List[float]] = {k: [] for k in pipes}
    for fn in pipes.values():  # warm-up (lazy builds, first-call allocations)
        for img in images[:5]:
            fn(img)
    for _ in range(rounds):
        for name, fn in pipes.items():
            n, t0 = 0, time.perf_counter()
            while (n < count) if count else (time.perf_counter() - t0 < seconds):
                fn(images[n % len(images)])
                n += getattr(fn, "per_call", 1)
            rates[name].append(n / (time.perf_counter() - t0))
    return {k: statistics.median(v) for k, v in rates.items()}


class _DS:
    def __init__(self, images: List[np.ndarray], fn: Callable, n: int):
        self.images, self.fn, self.n = images, fn, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        return self.fn(self.images[i % len(self.images)])[0]


def bench_workers(pipes: Dict[str, Callable], images: List[np.ndarray], workers: int, n: int) -> Dict[str, float]:
    """img/s per worker with a DataLoader (fork, batch 32), first batch excluded (worker start-up)."""
    import torch
    from torch.utils.data import DataLoader

    from kernel.augment import seed_worker

    out = {}
    for name, fn in pipes.items():
        if getattr(fn, "per_call", 1) != 1:
            continue
        loader = DataLoader(_DS(images, fn, n), batch_size=32, num_workers=workers, worker_init_fn=seed_worker,
                            generator=torch.Generator().manual_seed(0))
        it = iter(loader)
        next(it)
        t0, seen = time.perf_counter(), 0
        for batch in it:
            seen += batch.shape[0]
        out[name] = seen / (time.perf_counter() - t0) / workers
    return out


def vs_albumentations(name: str, inline: Dict[str, float]) -> str:
    """A row's img/s over albumentations' same preset (other rows: over albumentations default)."""
    preset = name.split()[1] if name.split()[0] in BACKENDS and len(name.split()) == 2 else "default"
    ref = inline.get(f"albumentations {preset}")
    return f"{inline[name] / ref:.2f}x" if ref else "-"


def summary_lines(inline: Dict[str, float], base_name: str, workers: int) -> List[str]:
    """The bullet points under the table: the goal, the three backends against each other, the notes' pipeline."""
    base = inline[base_name]
    out = [f"- default preset vs equivalent plain v2 ({base_name}, {base:.0f} img/s): "
           + ", ".join(f"{b} **{inline[f'{b} default'] / base:.2f}x**" for b in BACKENDS if f"{b} default" in inline)
           + " (goal >= 1.5x)"]
    if "albumentations default" in inline:
        ref = inline["albumentations default"]
        out.append("- against albumentations (same preset, measured here): " + "; ".join(
            f"{preset}: " + ", ".join(f"{b} {inline[f'{b} {preset}'] / inline[f'albumentations {preset}']:.2f}x"
                                      for b in BACKENDS if b != "albumentations" and f"{b} {preset}" in inline)
            for preset in ("light", "default", "heavy")))
        out.append(f"- plain albumentations (its Normalize + ToTensorV2): {inline['plain albumentations']:.0f} img/s, "
                   f"{inline['plain albumentations'] / ref:.2f}x our albumentations default")
    else:
        out.append("- albumentations is not importable here: its rows are missing")
    notes = "imgaug default w/ iaa.AdditiveGaussianNoise"
    if notes in inline:
        out.append(f"- notes-style imgaug (same ops with iaa.AdditiveGaussianNoise) {inline[notes]:.0f} img/s = "
                   f"{inline[notes] / base:.2f}x plain v2 (quoted: {IMGAUG_QUOTED:.0f}/{V2_QUOTED:.0f} = "
                   f"{IMGAUG_QUOTED / V2_QUOTED:.2f}x); our cv2 GaussianNoise op is the difference")
    if workers:
        out.append(f"- workers={workers} column: DataLoader(batch 32, fork, worker_init_fn=seed_worker) img/s divided "
                   f"by {workers}; the workers share the {os.cpu_count()} cores with the main process and pay collate "
                   "+ IPC of float tensors, so it is below the workers=0 column")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer rounds (smoke run)")
    ap.add_argument("--images", type=int, default=0, help="images per pipeline per round (default: ~0.3 s of them)")
    ap.add_argument("--markdown", help="also write the results section to this file")
    ap.add_argument("--json", help="also write the figures (img/s per pipeline, ratios, environment) to this file")
    ap.add_argument("--workers", type=int, default=2, help="DataLoader workers for the second column (0: skip it)")
    args = ap.parse_args()
    sys.path.insert(0, ROOT)
    import cv2
    import torch

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    from kernel.augment.albu import albumentations_distribution
    from kernel.augment.imgaug_compat import patches_applied

    images = make_images(32)
    pipes = pipelines(images)
    t0 = time.time()
    inline = bench_inline(pipes, images, rounds=3 if args.quick else 7, seconds=0.15 if args.quick else 0.3,
                          count=args.images)
    t_inline = time.time() - t0
    n_workers = max(args.images, 64) if args.images else (256 if args.quick else 640)
    workers = bench_workers(pipes, images, args.workers, n_workers) if args.workers else {}
    base_name = max(("plain v2: noise on float", "plain v2: noise on uint8"), key=lambda k: inline[k])
    base = inline[base_name]
    lines = [f"| pipeline | img/s/core, workers=0 | img/s/core, workers={args.workers} | vs plain v2 | "
             "vs albumentations |", "|---|---:|---:|---:|---:|"]
    for name in pipes:
        w = f"{workers[name]:.0f}" if name in workers else "-"
        lines.append(f"| {name} | {inline[name]:.0f} | {w} | {inline[name] / base:.2f}x | "
                     f"{vs_albumentations(name, inline)} |")
    dist, version = albumentations_distribution() if "albumentations default" in inline else ("-", "")
    env = (f"python {platform.python_version()}, torch {torch.__version__}, OpenCV {cv2.__version__}, "
           f"numpy {np.__version__}, albumentations: {dist} {version}, {os.cpu_count()} cores (shared), imgaug "
           f"compat patches: {', '.join(patches_applied()) or 'none'}; inline phase {t_inline:.0f}s")
    text = "\n".join(lines + [""] + summary_lines(inline, base_name, args.workers) + ["", env])
    print(text)
    cmd = "python bench/augment.py" + (" --quick" if args.quick else "") + \
          (f" --images {args.images}" if args.images else "") + \
          (f" --workers {args.workers}" if args.workers != 2 else "")
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write("## Augmentation throughput (kernel/augment/)\n\n"
                    f"Command: `{cmd} --markdown {args.markdown}` (224x224 RGB uint8 in, normalized (3, 224, 224) "
                    "float32 out; train pipelines; torch and OpenCV single-threaded; medians of interleaved rounds)\n\n"
                    + text + "\n")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"command": cmd, "img_per_s_per_core": inline, "workers": args.workers,
                       "img_per_s_per_core_workers": workers, "baseline": base_name,
                       "vs_plain_v2": {k: v / base for k, v in inline.items()},
                       "vs_albumentations": {k: vs_albumentations(k, inline) for k in inline}, "environment": env},
                      f, indent=1)


if __name__ == "__main__":
    main()
