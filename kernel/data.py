"""Image sources (ImageFolder, Kaggle-style CSV, built-in shapes), splits and loaders.

A *source* yields raw samples ``(image (H, W, C) uint8, target, mask | None)``; a
:class:`TransformedDataset` applies the augmentation callable and returns tensors. The
transform is passed in, so this module does not depend on the augmentation backends.
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from .registry import ConfigError
from .shapes import ShapesSource

__all__ = [
    "IMAGE_EXTENSIONS", "load_image", "FolderSource", "CsvSource", "Subset", "TransformedDataset",
    "DataSplit", "build_sources", "stratified_split", "build_loader",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif")


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    """Scale 16-bit / 32-bit / float pixel data into uint8 (the full range of the dtype)."""
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * 255
    if np.issubdtype(arr.dtype, np.floating):  # float images: [0, 1] when they fit, else min-max
        lo, hi = float(arr.min()), float(arr.max())
        if lo < 0 or hi > 1:
            arr = (arr - lo) / max(hi - lo, 1e-12)
        return np.round(arr * 255).astype(np.uint8)
    hi = 65535 if arr.max() > 255 else 255  # 16-bit data stored as I;16 or I
    return (arr.astype(np.float64) * (255.0 / hi)).round().clip(0, 255).astype(np.uint8)


def load_image(path: str | os.PathLike, in_chans: int = 3) -> np.ndarray:
    """Read any PIL-readable image as (H, W, in_chans) uint8.

    Handles 1, L, LA, P (with transparency), RGB, RGBA, CMYK, I;16, I and F modes:
    ``in_chans`` 1 -> grayscale, 3 -> RGB, 4 -> RGBA; other counts repeat the RGB channels.
    """
    with Image.open(path) as img:
        img.load()
        if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            gray = _to_uint8(np.asarray(img))
            img = Image.fromarray(gray)
        elif img.mode == "P":  # palette: go through RGBA so transparency is honoured
            img = img.convert("RGBA")
        if in_chans == 1:
            arr = np.asarray(img.convert("L"))[..., None]
        elif in_chans == 4:
            arr = np.asarray(img.convert("RGBA"))
        else:
            rgb = np.asarray(img.convert("RGB"))
            arr = rgb if in_chans == 3 else rgb[..., [i % 3 for i in range(in_chans)]]
    return np.ascontiguousarray(arr)


class FolderSource:
    """ImageFolder layout ``root/<class>/<image>``; classes are the sorted folder names."""

    def __init__(self, root: str, in_chans: int = 3, classes: Optional[List[str]] = None):
        self.root, self.in_chans = Path(root), in_chans
        found = sorted(d.name for d in self.root.iterdir() if d.is_dir() and not d.name.startswith("."))
        self.classes = classes or found
        if not self.classes:
            raise ConfigError(f"--data: {root!r} has no class folders; expected {root}/<class>/<image>.png")
        index = {c: i for i, c in enumerate(self.classes)}
        self.samples: List[Tuple[str, int]] = []
        for c in found:
            if c not in index:
                raise ConfigError(f"--val-data: class folder {c!r} is not a training class ({', '.join(self.classes)})")
            for f in sorted((self.root / c).rglob("*")):
                if f.suffix.lower() in IMAGE_EXTENSIONS:
                    self.samples.append((str(f), index[c]))
        if not self.samples:
            raise ConfigError(f"--data: no images ({', '.join(IMAGE_EXTENSIONS)}) under {root!r}")
        self.targets = [t for _, t in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> Tuple[np.ndarray, int, None]:
        path, target = self.samples[i]
        return load_image(path, self.in_chans), target, None


class CsvSource:
    """Kaggle-style CSV: an image id/path column and a label column (space-separated: multi-label).

    Ids without an extension are matched to files in ``image_dir`` by stem.
    """

    def __init__(self, csv_path: str, image_dir: str, image_col: str = "", label_col: str = "",
                 in_chans: int = 3):
        self.in_chans = in_chans
        with open(csv_path, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        if not rows:
            raise ConfigError(f"--csv: {csv_path!r} has no rows")
        cols = list(rows[0].keys())
        image_col = image_col or cols[0]
        label_col = label_col or (cols[1] if len(cols) > 1 else "")
        for opt, col in (("image-col", image_col), ("label-col", label_col)):
            if col not in cols:
                raise ConfigError(f"--{opt}: column {col!r} not in {csv_path!r} (columns: {', '.join(cols)})")
        labels = [str(r[label_col]).split() for r in rows]
        self.multilabel = any(len(ls) != 1 for ls in labels)
        self.classes = sorted({l for ls in labels for l in ls})
        stems: Dict[str, str] = {}
        for f in sorted(Path(image_dir).iterdir()) if Path(image_dir).is_dir() else []:
            if f.suffix.lower() in IMAGE_EXTENSIONS:
                stems.setdefault(f.stem, str(f))
        index = {c: i for i, c in enumerate(self.classes)}
        self.samples: List[Tuple[str, Any]] = []
        for r, ls in zip(rows, labels):
            ident = r[image_col]
            path = os.path.join(image_dir, ident)
            if not os.path.isfile(path):
                path = stems.get(Path(ident).stem if Path(ident).suffix.lower() in IMAGE_EXTENSIONS else ident, "")
            if not path:
                raise ConfigError(f"--image-dir: no image for id {ident!r} in {image_dir!r}; check --image-dir/--image-col")
            target = [index[l] for l in ls] if self.multilabel else index[ls[0]]
            self.samples.append((path, target))
        # Stratify multi-label data by its first label.
        self.targets = [(t[0] if t else -1) if isinstance(t, list) else t for _, t in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> Tuple[np.ndarray, Any, None]:
        path, target = self.samples[i]
        if self.multilabel:  # multi-hot float target (C,)
            hot = torch.zeros(len(self.classes))
            hot[target] = 1.0
            target = hot
        return load_image(path, self.in_chans), target, None


class Subset:
    """A view of ``source`` restricted to ``indices`` (keeps ``targets``)."""

    def __init__(self, source: Any, indices: Sequence[int]):
        self.source, self.indices = source, list(indices)
        self.targets = [source.targets[i] for i in self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> Any:
        return self.source[self.indices[i]]


class TransformedDataset(Dataset):
    """Apply ``transform(image, mask) -> (tensor (C,S,S), mask)`` to a source; items are (image, target)."""

    def __init__(self, source: Any, transform: Callable, with_mask: bool = False):
        self.source, self.transform, self.with_mask = source, transform, with_mask

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> Tuple[torch.Tensor, Any]:
        image, target, mask = self.source[i]
        image, mask = self.transform(image, mask if self.with_mask else None)
        return (image, target, mask) if self.with_mask else (image, target)


def stratified_split(targets: Sequence[int], fraction: float, seed: int) -> Tuple[List[int], List[int]]:
    """Split indices per class with a seeded shuffle: (train, val), val ~ ``fraction`` of each class."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    by_class: Dict[int, List[int]] = {}
    for i, t in enumerate(targets):
        by_class.setdefault(int(t), []).append(i)
    for c in sorted(by_class):
        idx = rng.permutation(by_class[c]).tolist()
        n_val = int(round(len(idx) * fraction)) if len(idx) > 1 else 0
        val += idx[:n_val]
        train += idx[n_val:]
    return sorted(train), sorted(val)


@dataclass
class DataSplit:
    train: Any
    val: Any
    classes: List[str]
    multilabel: bool = False


def build_sources(data: str, *, val_data: str = "", val_split: float = 0.2, csv_file: str = "",
                  image_dir: str = "", image_col: str = "", label_col: str = "", in_chans: int = 3,
                  seed: int = 0, shapes_n: int = 800) -> DataSplit:
    """Build train/val sources from ``data`` ('shapes', an ImageFolder dir, or a CSV root)."""
    if data == "shapes":
        if in_chans != 3:
            raise ConfigError("--in-chans: the built-in shapes data is RGB; use --in-chans 3 or your own data")
        source: Any = ShapesSource(shapes_n, seed=seed)
        classes, multilabel = list(source.classes), False
    elif not os.path.isdir(data):
        raise ConfigError(f"--data: {data!r} is not a directory; give an ImageFolder root or 'shapes'")
    elif csv_file:
        csv_path = csv_file if os.path.isabs(csv_file) else os.path.join(data, csv_file)
        if not os.path.isfile(csv_path):
            raise ConfigError(f"--csv: {csv_path!r} not found; give it relative to --data")
        img_dir = os.path.join(data, image_dir) if image_dir else data
        source = CsvSource(csv_path, img_dir, image_col, label_col, in_chans)
        classes, multilabel = source.classes, source.multilabel
    else:
        source = FolderSource(data, in_chans)
        classes, multilabel = source.classes, False
    if val_data:
        if csv_file or data == "shapes":
            raise ConfigError("--val-data works with ImageFolder data; use --val-split with CSV or shapes")
        if not os.path.isdir(val_data):
            raise ConfigError(f"--val-data: {val_data!r} is not a directory")
        return DataSplit(source, FolderSource(val_data, in_chans, classes=classes), classes, multilabel)
    if val_split <= 0:
        raise ConfigError("--val-split: 0 leaves no validation data; give --val-data or a split such as 0.2")
    tr, va = stratified_split(source.targets, val_split, seed)
    if not va:
        raise ConfigError(f"--val-split {val_split}: too few images ({len(source)}) to hold any out")
    return DataSplit(Subset(source, tr), Subset(source, va), classes, multilabel)


def build_loader(dataset: Dataset, *, batch_size: int, train: bool, workers: int, device: torch.device,
                 generator: Optional[torch.Generator] = None, worker_init_fn: Optional[Callable] = None,
                 persistent: bool = True) -> DataLoader:
    """A DataLoader with the usual care: pin_memory on CUDA, drop_last for training.

    ``generator`` drives the shuffle and each worker's base seed; reseed it per epoch (and use
    ``persistent=False``) for runs that repeat exactly, resumed ones included.
    """
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=train, num_workers=workers,
        pin_memory=device.type == "cuda", drop_last=train and len(dataset) > batch_size,
        persistent_workers=persistent and workers > 0, worker_init_fn=worker_init_fn,
        generator=generator,
    )
