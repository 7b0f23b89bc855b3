"""The built-in ``shapes`` dataset: procedural images of circles, squares, triangles and crosses.

It needs no download, is deterministic for a given seed (image ``i`` depends only on
``(seed, i)``), and gives a mask per image (0 = background, ``k + 1`` = shape of class
``k``) for segmentation work. :func:`write_shapes` writes it to disk as PNG files in an
ImageFolder tree plus a Kaggle-style CSV, so the file-based loaders can be tested on it.
"""
from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import List, Tuple

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["SHAPE_CLASSES", "draw_shape", "ShapesSource", "write_shapes"]

SHAPE_CLASSES = ["circle", "square", "triangle", "cross"]


def _polygon(kind: str, cx: float, cy: float, r: float, angle: float) -> List[Tuple[float, float]]:
    if kind == "square":
        pts = [(-1, -1), (1, -1), (1, 1), (-1, 1)]
        scale = r / math.sqrt(2)
    elif kind == "triangle":
        pts = [(math.cos(a), math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
        scale = r
    else:  # cross: a plus sign of arm width r/2.5
        w = 0.4
        pts = [(-w, -1), (w, -1), (w, -w), (1, -w), (1, w), (w, w), (w, 1), (-w, 1), (-w, w), (-1, w), (-1, -w), (-w, -w)]
        scale = r
    c, s = math.cos(angle), math.sin(angle)
    return [(cx + scale * (x * c - y * s), cy + scale * (x * s + y * c)) for x, y in pts]


def draw_shape(label: int, seed: int, index: int, size: int = 64) -> Tuple[np.ndarray, np.ndarray]:
    """Draw image ``index`` of class ``label``: returns (image (S, S, 3) uint8, mask (S, S) uint8)."""
    rng = np.random.default_rng([seed, index, label])
    bg = rng.integers(0, 110, 3)
    fg = rng.integers(130, 256, 3)  # foreground brighter than background: always visible
    noise = rng.integers(-12, 13, (size, size, 3))
    r = size * rng.uniform(0.18, 0.34)
    cx, cy = rng.uniform(r + 1, size - r - 1, 2)
    angle = rng.uniform(0, 2 * math.pi)
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    kind = SHAPE_CLASSES[label]
    if kind == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    else:
        draw.polygon(_polygon(kind, cx, cy, r, angle), fill=255)
    m = np.asarray(mask) > 127
    img = np.where(m[..., None], fg, bg) + noise
    return np.clip(img, 0, 255).astype(np.uint8), (m * (label + 1)).astype(np.uint8)


class ShapesSource:
    """``n`` shapes images, classes balanced round-robin. Item: (image (S,S,3) uint8, label, mask)."""

    classes = SHAPE_CLASSES

    def __init__(self, n: int = 800, seed: int = 0, size: int = 64):
        self.n, self.seed, self.size = n, seed, size
        self.targets = [i % len(SHAPE_CLASSES) for i in range(n)]

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> Tuple[np.ndarray, int, np.ndarray]:
        label = self.targets[i]
        img, mask = draw_shape(label, self.seed, i, self.size)
        return img, label, mask

    def path(self, i: int) -> str:
        return f"shapes[{i}]"


def write_shapes(root: str | os.PathLike, n: int = 200, seed: int = 0, size: int = 64) -> Path:
    """Write ``n`` images as ``root/train/<class>/<id>.png`` and ``root/train.csv`` (id,label).

    The CSV ids have no extension, as in many Kaggle competitions; ``root/images/`` holds
    the same files flat for the CSV layout.
    """
    root = Path(root)
    src = ShapesSource(n, seed, size)
    rows = []
    for i in range(n):
        img, label, _ = src[i]
        name = f"{i:05d}"
        for folder in (root / "train" / SHAPE_CLASSES[label], root / "images"):
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(folder / f"{name}.png")
        rows.append((name, SHAPE_CLASSES[label]))
    with open(root / "train.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "label"])
        w.writerows(rows)
    return root
