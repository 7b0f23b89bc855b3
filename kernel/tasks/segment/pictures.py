"""Segmentation pictures and tables: overlays of the worst validation images, the per-class table.

``predictions.png`` shows, for each image (worst mean IoU first): the image, the truth and the
prediction as coloured overlays, with the image's IoU and a legend of the class colours.
``per_class.csv`` holds IoU, Dice, precision, recall and pixel support per class.
"""
from __future__ import annotations

import math
import os
from typing import Any, Dict, List, Sequence

import numpy as np
import torch

from ...report.files import write_csv
from ...report.plots import denormalize, new_figure, save_figure

__all__ = ["colorize", "plot_overlays", "write_seg_per_class_csv"]


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


def plot_overlays(images: torch.Tensor, truth: np.ndarray, pred: np.ndarray, ious: Sequence[float],
                  classes: Sequence[str], colors: Sequence[Sequence[int]], path: str | os.PathLike, *,
                  mean: Sequence[float], std: Sequence[float], ignore_index: Any = None, title: str = "") -> str:
    """A K x 3 grid (image | truth | prediction) for images (K, C, H, W) normalized, masks (K, H, W)."""
    pics = denormalize(images, mean, std)
    k = len(pics)
    fig = new_figure(3 * 2.6 + 1.8, 2.6 * max(k, 1) + 0.5)
    for i in range(k):
        base = pics[i][..., 0] if pics[i].shape[-1] == 1 else pics[i]
        for j, (name, mask) in enumerate((("image", None), ("truth", truth[i]), ("prediction", pred[i]))):
            ax = fig.add_subplot(k, 3, 3 * i + j + 1)
            ax.imshow(base, cmap="gray", vmin=0, vmax=1)
            if mask is not None:
                ax.imshow(colorize(mask, colors, ignore_index), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(name, fontsize=9)
            if j == 2:
                ax.set_xlabel(f"IoU {ious[i]:.3f}", fontsize=8)
    from matplotlib.patches import Patch

    handles = [Patch(facecolor=np.asarray(c[:3]) / 255.0, label=str(n)) for n, c in zip(classes, colors)][1:41]
    if handles:
        fig.legend(handles=handles, loc="center right", fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=10, y=0.995)
    fig.tight_layout(rect=(0, 0, 0.82, 0.975))
    return save_figure(fig, path)


def write_seg_per_class_csv(per_class: Dict[str, List[float]], classes: Sequence[str], path: str | os.PathLike) -> str:
    """``class,iou,dice,precision,recall,support`` per class (empty where undefined: absent from both)."""
    keys = ("iou", "dice", "precision", "recall")
    fmt = lambda v: "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.6f}"  # noqa: E731
    rows: List[List[Any]] = [["class", *keys, "support"]]
    for i, name in enumerate(classes):
        rows.append([name, *(fmt(per_class[k][i]) for k in keys), int(per_class["support"][i])])
    return write_csv(rows, path)
