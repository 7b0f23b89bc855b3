"""The built-in shapes as segmentation data, in memory and written as files for tests and demos.

:class:`ShapesSegSource` is ``--data shapes`` for ``--task segment``; :func:`write_shapes_seg` writes
the image/mask folder layout and :func:`write_shapes_rle` a Kaggle RLE CSV of the same pictures.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Tuple

import numpy as np
from PIL import Image

from ...data import SHAPE_CLASSES, ShapesSource, draw_shape
from ...paths import atomic_write
from .masks import palette, write_mask_png
from .rle import rle_encode

__all__ = ["ShapesSegSource", "write_shapes_seg", "write_shapes_rle"]


class ShapesSegSource(ShapesSource):
    """The built-in shapes as segmentation: background + 4 shapes, multiclass, index masks (int32)."""

    classes = ["background"] + SHAPE_CLASSES
    mode = "multiclass"

    def __init__(self, n: int = 800, seed: int = 0, size: int = 64):
        super().__init__(n, seed, size)
        self.targets = [t + 1 for t in self.targets]

    def path(self, i: int) -> str:
        return f"shapes/{i:05d}.png"  # no file: the name write_shapes_seg would give it

    def __getitem__(self, i: int) -> Tuple[np.ndarray, None, np.ndarray]:
        image, mask = draw_shape(self.targets[i] - 1, self.seed, i, self.size)
        return image, None, mask.astype(np.int32)


def write_shapes_seg(root: str | os.PathLike, n: int = 20, seed: int = 0, size: int = 64) -> Path:
    """Write shapes as ``root/images/<id>.png``, palette index masks ``root/masks/<id>.png``, ``root/classes.txt``."""
    root, src = Path(root), ShapesSegSource(n, seed, size)
    for i in range(n):
        image, _, mask = src[i]
        atomic_write(root / "images" / f"{i:05d}.png", lambda tmp: Image.fromarray(image).save(tmp, format="PNG"))
        write_mask_png(mask, root / "masks" / f"{i:05d}.png", palette(len(src.classes)))
    atomic_write(root / "classes.txt", lambda t: Path(t).write_text("\n".join(src.classes) + "\n", encoding="utf-8"))
    return root


def write_shapes_rle(root: str | os.PathLike, n: int = 20, seed: int = 0, size: int = 64, order: str = "F") -> Path:
    """Write ``root/train_images/<id>.png`` and ``root/train.csv``: ImageId,ClassId,EncodedPixels, a row per
    image and class, ClassId 1..4 (shape class k is ClassId k + 1), an empty RLE for an absent class."""
    root, src = Path(root), ShapesSource(n, seed, size)
    lines = ["ImageId,ClassId,EncodedPixels"]
    for i in range(n):
        image, _, mask = src[i]
        atomic_write(root / "train_images" / f"{i:05d}.png", lambda t: Image.fromarray(image).save(t, format="PNG"))
        lines += [f"{i:05d}.png,{k + 1},{rle_encode(mask == k + 1, order)}" for k in range(len(SHAPE_CLASSES))]
    atomic_write(root / "train.csv", lambda t: Path(t).write_text("\n".join(lines) + "\n", encoding="utf-8"))
    return root
