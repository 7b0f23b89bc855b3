"""Classification pictures: a grid of validation images with their true and predicted labels.

Mistakes get a red frame so they stand out; multi-label samples show the label sets (p > 0.5).
"""
from __future__ import annotations

import math
import os
from typing import Any, List, Sequence

import numpy as np
import torch

from ...report.plots import BAD, GOOD, denormalize, new_figure, save_figure

__all__ = ["sample_indices", "label_text", "plot_predictions"]


def sample_indices(n_items: int, n: int) -> List[int]:
    """``n`` indices spread evenly over ``n_items`` (ImageFolder order is by class: the first n would be one class)."""
    if n_items <= 0 or n <= 0:
        return []
    return sorted(set(np.linspace(0, n_items - 1, min(n, n_items)).round().astype(int).tolist()))


def label_text(target: Any, classes: Sequence[str]) -> str:
    """A sample's label as text: the class of a class id; every class of a (C,) multi-hot target ('-': none)."""
    t = np.asarray(target.detach().cpu() if isinstance(target, torch.Tensor) else target)
    if t.ndim == 0:
        return str(classes[int(t)])
    return " ".join(str(classes[i]) for i in np.flatnonzero(t > 0.5)) or "-"


def _label_text(p: np.ndarray, t: Any, classes: Sequence[str], multilabel: bool) -> tuple:
    """(true text, predicted text, correct?) for one sample; p (C,), t class id or (C,) multi-hot."""
    if multilabel:
        true = {classes[i] for i in np.flatnonzero(np.asarray(t) > 0.5)}
        pred = {classes[i] for i in np.flatnonzero(p > 0.5)}
        return " ".join(sorted(true)) or "-", " ".join(sorted(pred)) or "-", true == pred
    k = int(p.argmax())
    return str(classes[int(t)]), f"{classes[k]} {p[k] * 100:.0f}%", k == int(t)


def plot_predictions(images: torch.Tensor, probs: torch.Tensor | np.ndarray, targets: Any, classes: Sequence[str],
                     path: str | os.PathLike, *, mean: Sequence[float], std: Sequence[float],
                     multilabel: bool = False, title: str = "") -> str:
    """Grid of images (N, C, H, W, normalized) titled true / predicted + confidence; wrong ones in red."""
    pics = denormalize(images, mean, std)
    p = np.asarray(probs, dtype=np.float64)
    t = np.asarray(targets)
    n = len(pics)
    ncol = min(n, 8) or 1
    nrow = max(1, math.ceil(n / ncol))
    fig = new_figure(1.9 * ncol, 2.2 * nrow + 0.4)
    wrong = 0
    for i in range(n):
        true, pred, ok = _label_text(p[i], t[i], classes, multilabel)
        wrong += not ok
        ax = fig.add_subplot(nrow, ncol, i + 1)
        img = pics[i]
        ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1)
        ax.set_xticks([])
        ax.set_yticks([])
        color = GOOD if ok else BAD
        for spine in ax.spines.values():  # a thick red frame makes mistakes visible at a glance
            spine.set_edgecolor(color)
            spine.set_linewidth(1 if ok else 4)
        ax.set_title(f"true: {true}\npred: {pred}", fontsize=8, color=color)
    fig.suptitle(f"{title}  {n - wrong}/{n} correct".strip(), fontsize=10)
    return save_figure(fig, path)
