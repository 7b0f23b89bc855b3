"""Segmentation pictures and tables: overlays of the worst validation images, the per-class table.

``predictions.png`` shows, for each image (worst mean IoU first): the image, the truth and the
prediction as coloured overlays, with the image's IoU and a legend of the class colours.
``per_class.csv`` holds IoU, Dice, precision, recall and pixel support per class.
"""
from __future__ import annotations

import functools
import math
import os
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np
import torch

from ...report.files import write_csv
from ...paths import atomic_write
from ...report.plots import denormalize

__all__ = ["blend", "colorize", "fit_tile", "overlay_grid", "plot_overlays", "write_seg_per_class_csv"]

TILE = 256          # pixels: the box each tile is scaled to fit
GAP = (22, 10)      # pixels between rows (room for the IoU line) and between columns


def colorize(mask: np.ndarray, colors: Sequence[Sequence[int]], ignore_index: Any = None) -> np.ndarray:
    """(H, W) class indices -> (H, W, 4) float RGBA in [0, 1]: class colours, background and ignored transparent."""
    table = np.zeros((256, 4), dtype=np.float64)
    for k, c in enumerate(colors[:256]):
        table[k, :3] = np.asarray(c[:3], dtype=np.float64) / 255.0
        table[k, 3] = 0.0 if k == 0 else 0.55
    m = np.asarray(mask).astype(np.int64)
    out = table[np.clip(m, 0, 255)]
    if ignore_index is not None:
        out[m == ignore_index] = (1.0, 1.0, 1.0, 0.35)  # void borders: a white haze
    return out


def blend(base: np.ndarray, mask: np.ndarray, colors: Sequence[Sequence[int]], ignore_index: Any = None) -> np.ndarray:
    """``mask``'s colours laid over ``base`` (H, W, 3) in [0, 1] -> (H, W, 3): "over" compositing of
    :func:`colorize`'s RGBA, as an RGBA image drawn over the picture would show it."""
    rgba = colorize(mask, colors, ignore_index)
    alpha = rgba[..., 3:]
    return base * (1.0 - alpha) + rgba[..., :3] * alpha


def fit_tile(tile: np.ndarray, box: int) -> np.ndarray:
    """A (H, W, 3) tile scaled to fit a ``box``-pixel square: small tiles grow by a whole factor (each pixel a
    sharp block, as masks should look), large ones shrink by pixel-area averaging, others stay as they are."""
    h, w = tile.shape[:2]
    scale = box / max(h, w)
    if scale >= 2:
        k = int(scale)
        return np.repeat(np.repeat(tile, k, axis=0), k, axis=1)
    if scale < 1:
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        t = torch.from_numpy(np.ascontiguousarray(tile, dtype=np.float32)).permute(2, 0, 1)[None]
        return torch.nn.functional.interpolate(t, size=size, mode="area")[0].permute(1, 2, 0).numpy()
    return tile


def overlay_grid(pics: np.ndarray, truth: np.ndarray, pred: np.ndarray, colors: Sequence[Sequence[int]], *,
                 ignore_index: Any = None, box: int = TILE,
                 gap: Tuple[int, int] = GAP) -> Tuple[np.ndarray, Tuple[int, int]]:
    """One picture of K >= 1 rows (image | truth | prediction): ``pics`` (K, H, W, 3 or 1) in [0, 1], masks
    (K, H, W) -> (grid, (h, w)): grid (K * h + (K - 1) * gap_y, 3 * w + 2 * gap_x, 3) float32 in [0, 1], white
    between the tiles, where (h, w) is the tile size :func:`fit_tile` gives (H, W). The colours are blended at
    full resolution, then scaled."""
    k = len(pics)
    rows = []
    for i in range(k):
        base = np.repeat(pics[i], 3, axis=-1) if pics[i].shape[-1] == 1 else pics[i]
        tiles = [fit_tile(t, box) for t in (base, blend(base, truth[i], colors, ignore_index),
                                            blend(base, pred[i], colors, ignore_index))]
        rows.append(tiles)
    h, w = rows[0][0].shape[:2]
    gy, gx = gap
    grid = np.ones((k * h + (k - 1) * gy, 3 * w + 2 * gx, 3), dtype=np.float32)
    for i, tiles in enumerate(rows):
        for j, t in enumerate(tiles):
            grid[i * (h + gy):i * (h + gy) + h, j * (w + gx):j * (w + gx) + w] = t
    return grid, (h, w)


def plot_overlays(images: torch.Tensor, truth: np.ndarray, pred: np.ndarray, ious: Sequence[float],
                  classes: Sequence[str], colors: Sequence[Sequence[int]], path: str | os.PathLike, *,
                  mean: Sequence[float], std: Sequence[float], ignore_index: Any = None, title: str = "") -> str:
    """A K x 3 grid (image | truth | prediction) for images (K, C, H, W) normalized, masks (K, H, W), each row
    labelled with its IoU, a legend of the class colours (after the background, at most 40) on the right.

    The grid is one array (:func:`overlay_grid`) and the labels are written on it with PIL in matplotlib's
    DejaVu Sans: drawn with matplotlib, an axes per tile, it took 0.7 s for 8 images, the largest part of
    what a segmentation run spent on its pictures; this takes about 0.05 s."""
    from PIL import Image, ImageDraw

    grid, (h, w) = overlay_grid(denormalize(images, mean, std), truth, pred, colors, ignore_index=ignore_index)
    k, (gy, gx) = len(images), GAP
    small, normal, large = _font(11), _font(12), _font(14)
    entries = [(str(n), tuple(int(v) for v in c[:3])) for n, c in zip(classes, colors)][1:41]
    legend = (max(small.getlength(n) for n, _ in entries) + 48) if entries else 10
    left, top, bottom = 10, 52, 24  # pixels around the grid
    width = max(int(left + grid.shape[1] + legend), int(large.getlength(title)) + 20)
    height = grid.shape[0] + top + bottom
    canvas = Image.new("RGB", (width, height), "white")
    canvas.paste(Image.fromarray((grid * 255 + 0.5).astype(np.uint8)), (left, top))
    draw = ImageDraw.Draw(canvas)
    draw.text((width / 2, 8), title, fill="black", font=large, anchor="mt")
    for j, name in enumerate(("image", "truth", "prediction")):
        draw.text((left + j * (w + gx) + w / 2, top - 6), name, fill="black", font=normal, anchor="ms")
    for i in range(k):
        draw.text((left + 2 * (w + gx) + w / 2, top + i * (h + gy) + h + 4), f"IoU {ious[i]:.3f}", fill="black",
                  font=small, anchor="mt")
    x, y = left + grid.shape[1] + 16, top + (grid.shape[0] - 16 * len(entries)) / 2
    for n, (name, color) in enumerate(entries):
        draw.rectangle((x, y + 16 * n + 3, x + 18, y + 16 * n + 12), fill=color)
        draw.text((x + 24, y + 16 * n + 8), name, fill="black", font=small, anchor="lm")
    atomic_write(path, lambda tmp: canvas.save(tmp, format="PNG", compress_level=3))
    return str(path)


@functools.lru_cache(maxsize=None)
def _font(pixels: int) -> Any:
    """DejaVu Sans, the font of every other picture, at ``pixels``, from matplotlib's font manager (no
    matplotlib: an ImportError, which turns the pictures off as for any other picture)."""
    from matplotlib import font_manager
    from PIL import ImageFont

    return ImageFont.truetype(font_manager.findfont(font_manager.FontProperties(family="DejaVu Sans")), pixels)


def write_seg_per_class_csv(per_class: Dict[str, List[float]], classes: Sequence[str], path: str | os.PathLike) -> str:
    """``class,iou,dice,precision,recall,support`` per class (empty where undefined: absent from both)."""
    keys = ("iou", "dice", "precision", "recall")
    fmt = lambda v: "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.6f}"  # noqa: E731
    rows: List[List[Any]] = [["class", *keys, "support"]]
    for i, name in enumerate(classes):
        rows.append([name, *(fmt(per_class[k][i]) for k in keys), int(per_class["support"][i])])
    return write_csv(rows, path)
