"""The augmentation preview: a grid of augmented samples, titled and with masks overlaid, written to a PNG.

Own module because it is output, not augmentation: it only undoes the normalization (with the
same per-channel stats as :mod:`kernel.augment.pipeline`), colours masks and plots. What a tile's
title says and which colour a class gets is the task's business (``Task.show_aug``); this module
draws what it is given. matplotlib is imported lazily.
"""
from __future__ import annotations

import math
import os
from typing import Any, Optional, Sequence, Tuple

import numpy as np
import torch

from ..data.images import fit_channel_stats
from ..paths import atomic_write

__all__ = ["aug_tile", "aug_figure", "save_aug_grid"]

MASK_ALPHA = 0.5  # weight of a class colour over the image: strong enough to see, weak enough to see through
IGNORED = ((255, 255, 255), 0.35)  # void pixels (ignore_index): a white haze, as in the predictions' overlays


def _default_colors(n: int) -> list:
    """A colour per mask value when the caller gives none: matplotlib's tab20, repeated (0 is never drawn)."""
    from matplotlib import colormaps

    cmap = colormaps["tab20"]
    return [tuple(int(round(255 * v)) for v in cmap(k % 20)[:3]) for k in range(n)]


def aug_tile(image: torch.Tensor, mask: Optional[Any], mean: Sequence[float], std: Sequence[float],
             colors: Optional[Sequence[Sequence[int]]] = None, ignore_index: Optional[int] = None) -> np.ndarray:
    """One tile as drawn: a (C, H, W) normalized image back in [0, 1] as (H, W, 3) RGB (1-2 channels: the first
    in gray), with an (H, W) mask of class indices blended in: value k > 0 in ``colors[k]`` (RGB 0-255) at
    :data:`MASK_ALPHA`, ``ignore_index`` as a white haze, 0 (background) left as it is."""
    c = image.shape[0]
    m = torch.tensor(fit_channel_stats(mean, c, "mean")).view(-1, 1, 1)
    s = torch.tensor(fit_channel_stats(std, c, "std")).view(-1, 1, 1)
    x = (image.detach().float().cpu() * s + m).clamp(0, 1)
    rgb = (x[:3] if c >= 3 else x[:1].expand(3, -1, -1)).permute(1, 2, 0).numpy().astype(np.float64)
    if mask is None:
        return rgb
    mk = np.asarray(mask.detach().cpu() if isinstance(mask, torch.Tensor) else mask).astype(np.int64)
    top = int(mk[mk != ignore_index].max(initial=0)) if ignore_index is not None else int(mk.max(initial=0))
    table = np.asarray(colors if colors is not None and len(colors) > top else _default_colors(max(top + 1, 20)),
                       dtype=np.float64)[:, :3] / 255.0
    alpha = np.where(mk > 0, MASK_ALPHA, 0.0)
    paint = table[np.clip(mk, 0, len(table) - 1)]
    if ignore_index is not None:
        void = mk == ignore_index
        paint[void], alpha[void] = np.asarray(IGNORED[0]) / 255.0, IGNORED[1]
    return rgb * (1 - alpha[..., None]) + paint * alpha[..., None]


def aug_figure(samples: Sequence[Tuple[torch.Tensor, Optional[torch.Tensor]]], mean: Sequence[float],
               std: Sequence[float], ncol: Optional[int] = None, *, titles: Optional[Sequence[str]] = None,
               colors: Optional[Sequence[Sequence[int]]] = None, ignore_index: Optional[int] = None,
               names: Optional[Sequence[str]] = None) -> Any:
    """The grid as a matplotlib Figure: a tile per sample ((C, H, W) normalized, (H, W) mask of class indices
    | None), drawn by :func:`aug_tile` (masks in ``colors``) and titled ``titles[i]``; ``names`` (one per class
    index, 0 the background) adds a legend of the mask colours."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # no pyplot: leaves the user's backend alone
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    n = max(1, len(samples))
    ncol = ncol or int(math.ceil(math.sqrt(n)))
    nrow = int(math.ceil(n / ncol))
    legend = names is not None and colors is not None and any(m is not None for _, m in samples)
    width = 2.4 * ncol + (1.6 if legend else 0)
    fig = Figure(figsize=(width, 2.4 * nrow + (0.3 if titles else 0)))
    FigureCanvasAgg(fig)
    for i, (img, mask) in enumerate(samples):
        ax = fig.add_subplot(nrow, ncol, i + 1)
        ax.imshow(aug_tile(img, mask, mean, std, colors, ignore_index), vmin=0, vmax=1, interpolation="nearest")
        if titles is not None:
            ax.set_title(titles[i], fontsize=8)
        ax.set_axis_off()
    if legend:
        handles = [Patch(facecolor=np.asarray(c[:3]) / 255.0, label=str(k)) for k, c in zip(names, colors)][1:41]
        fig.legend(handles=handles, loc="center right", fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 1 - 1.6 / width, 1) if legend else None)
    return fig


def save_aug_grid(samples: Sequence[Tuple[torch.Tensor, Optional[torch.Tensor]]], mean: Sequence[float],
                  std: Sequence[float], path: "str | os.PathLike[str]", ncol: Optional[int] = None,
                  **drawing: Any) -> str:
    """Write :func:`aug_figure` (``drawing``: its titles, colors, ignore_index, names) as a PNG.

    ``path`` is a file or a directory (then ``augmentations.png`` inside it); missing folders are created
    and the file is written atomically. Returns the file path.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, "augmentations.png")
    fig = aug_figure(samples, mean, std, ncol, **drawing)
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    return path
