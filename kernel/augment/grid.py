"""The augmentation preview: a grid of augmented samples (masks overlaid) written to a PNG.

Own module because it is output, not augmentation: it only undoes the normalization (with the
same per-channel stats as :mod:`kernel.augment.pipeline`) and plots. matplotlib is imported lazily.
"""
from __future__ import annotations

import math
import os
from typing import Optional, Sequence, Tuple

import numpy as np
import torch

from ..data.images import fit_channel_stats

__all__ = ["save_aug_grid"]


def save_aug_grid(samples: Sequence[Tuple[torch.Tensor, Optional[torch.Tensor]]], mean: Sequence[float],
                  std: Sequence[float], path: "str | os.PathLike[str]", ncol: Optional[int] = None) -> str:
    """Write a grid of augmented samples ((C, H, W) normalized, (H, W) mask | None); masks overlaid.

    ``path`` is a file or a directory (then ``augmentations.png`` inside it). Returns the file path.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # no pyplot: leaves the user's backend alone
    from matplotlib.figure import Figure

    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, "augmentations.png")
    n = max(1, len(samples))
    ncol = ncol or int(math.ceil(math.sqrt(n)))
    nrow = int(math.ceil(n / ncol))
    fig = Figure(figsize=(2.4 * ncol, 2.4 * nrow))
    FigureCanvasAgg(fig)
    for i, (img, mask) in enumerate(samples):
        c = img.shape[0]
        m = torch.tensor(fit_channel_stats(mean, c, "mean")).view(-1, 1, 1)
        s = torch.tensor(fit_channel_stats(std, c, "std")).view(-1, 1, 1)
        x = (img.detach().float().cpu() * s + m).clamp(0, 1)
        x = x[:3].permute(1, 2, 0).numpy() if c >= 3 else x[0].numpy()
        ax = fig.add_subplot(nrow, ncol, i + 1)
        ax.imshow(x, cmap="gray" if x.ndim == 2 else None, vmin=0, vmax=1)
        if mask is not None:
            mk = mask.detach().cpu().numpy()
            ax.imshow(np.ma.masked_where(mk == 0, mk), cmap="tab20", alpha=0.45, interpolation="nearest",
                      vmin=0, vmax=max(19, int(mk.max())))
        ax.set_axis_off()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path
