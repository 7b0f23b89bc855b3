"""Pictures of a run, for any task: figures, training curves, a confusion matrix heatmap, denormalizing.

Every figure is drawn on a ``matplotlib.figure.Figure`` with its own ``FigureCanvasAgg``, never
through pyplot, so no window opens and the user's global backend is left alone (a notebook that
imports the bundle keeps its inline backend). matplotlib is imported inside the functions, so
importing this module costs nothing.
"""
from __future__ import annotations

import math
import os
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np
import torch

from ..data.images import fit_channel_stats
from ..paths import atomic_write

__all__ = ["GOOD", "BAD", "new_figure", "warm_up", "save_figure", "denormalize", "plot_curves", "plot_confusion_matrix", "plot_cv"]

GOOD, BAD = "#1a7f37", "#cf222e"  # right / wrong, in every picture


def new_figure(width: float, height: float) -> Any:
    """A Figure bound to an Agg canvas (no pyplot, no GUI)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def warm_up() -> None:
    """Import matplotlib and render one text: its font cache (built on a fresh machine) and font files are
    loaded, so the first picture does not pay for them. :class:`~kernel.report.EpochReporter` runs this on a
    thread while the model trains; an error is left to the first real picture to report."""
    fig = new_figure(1, 1)
    fig.text(0.5, 0.5, "epoch 0.1")
    fig.canvas.draw()


def save_figure(fig: Any, path: str | os.PathLike, dpi: int = 100) -> str:
    """Write ``fig`` as PNG atomically (a reader never sees half a file); returns the path."""
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format="png"))
    return str(path)


def denormalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Undo normalization: images (N, C, H, W) -> float array (N, H, W, 3) or (N, H, W, 1) in [0, 1].

    1- and 2-channel inputs show their first channel in gray; 4+ channels show the first three.
    """
    x = images.detach().float().cpu()
    c = x.shape[1]
    m = torch.tensor(fit_channel_stats(mean, c, "mean")).view(1, c, 1, 1)
    s = torch.tensor(fit_channel_stats(std, c, "std")).view(1, c, 1, 1)
    x = (x * s + m).clamp(0, 1)
    x = x[:, :3] if c >= 3 else x[:, :1]
    return x.permute(0, 2, 3, 1).numpy()


def _column(history: List[Dict[str, Any]], key: str) -> np.ndarray:
    """History values of ``key`` as floats; missing or blank entries become NaN (gaps in the line)."""
    vals = []
    for row in history:
        v = row.get(key, "")
        vals.append(float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan)
    return np.asarray(vals, dtype=np.float64)


Panel = Tuple[str, Sequence[Tuple[str, str]]]  # (title, [(history key, legend label), ...])


def plot_curves(history: List[Dict[str, Any]], path: str | os.PathLike, *, metric_panel: Panel, monitor: str,
                best_epoch: int = 0) -> str:
    """Loss, the task's metrics (``metric_panel``) and LR against epoch from ``history``; best epoch marked."""
    epochs = _column(history, "epoch")
    fig = new_figure(13, 3.8)
    panels = [("loss", [("train_loss", "train"), ("val_loss", "val")]), metric_panel, ("learning rate", [("lr", "lr")])]
    for k, (title, series) in enumerate(panels):
        ax = fig.add_subplot(1, 3, k + 1)
        for key, label in series:
            y = _column(history, key)
            if np.isfinite(y).any():
                ax.plot(epochs, y, "o-", ms=3, lw=1.5, label=label)
            if key == monitor and best_epoch in epochs:
                i = int(np.flatnonzero(epochs == best_epoch)[0])
                ax.plot([best_epoch], [y[i]], "*", ms=14, color="gold", mec="black", zorder=5,
                        label=f"best ({y[i]:.4g})")
        if best_epoch:
            ax.axvline(best_epoch, color="gray", ls="--", lw=1)
        lr = _column(history, "lr")
        if k == 2 and np.isfinite(lr).any() and np.nanmin(lr) > 0 and np.nanmax(lr) / np.nanmin(lr) > 20:
            ax.set_yscale("log")  # warmup + decay spans decades; linear would flatten it
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)  # no "epoch 1.5" ticks
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    best = f"best {monitor} at epoch {best_epoch}" if best_epoch else ""
    fig.suptitle(f"{len(history)} epochs  {best}".strip(), fontsize=11)
    return save_figure(fig, path)


def plot_confusion_matrix(cm: np.ndarray, classes: Sequence[str], path: str | os.PathLike, title: str = "",
                          unit: str = "images") -> str:
    """Counts in each cell, colour = row-normalized (recall), rows true, columns predicted (images or pixels)."""
    n = len(classes)
    side = min(max(4.5, 0.45 * n + 2.5), 30)  # grows with the classes, capped for 1000-class models
    fig = new_figure(side + 1, side)
    ax = fig.add_subplot(1, 1, 1)
    rows = cm.sum(1, keepdims=True)
    norm = cm / np.maximum(rows, 1)
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    if n <= 60:
        ax.set_xticks(range(n), [str(c) for c in classes], rotation=90 if n > 6 else 0, fontsize=8)
        ax.set_yticks(range(n), [str(c) for c in classes], fontsize=8)
    if n <= 30:
        for i in range(n):
            for j in range(n):
                if cm[i, j]:
                    ax.text(j, i, str(int(cm[i, j])), ha="center", va="center", fontsize=8,
                            color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    acc = np.trace(cm) / max(cm.sum(), 1)  # a fraction, as in metrics.csv
    ax.set_title(f"{title}  accuracy {acc:.4f} ({int(np.trace(cm))}/{int(cm.sum())} {unit})".strip(), fontsize=10)
    return save_figure(fig, path)




def plot_cv(histories: Sequence[List[Dict[str, Any]]], metric: str, path: str | os.PathLike, *, cv_name: str,
            cv_value: float) -> str:
    """Each fold's validation ``metric`` against epoch (one line per fold), the CV score as a dashed line."""
    fig = new_figure(7, 4.5)
    ax = fig.add_subplot(1, 1, 1)
    for i, history in enumerate(histories):
        y = _column(history, metric)
        if np.isfinite(y).any():
            ax.plot(_column(history, "epoch"), y, "o-", ms=3, lw=1.5, label=f"fold {i}")
    if math.isfinite(cv_value):
        ax.axhline(cv_value, color="black", ls="--", lw=1.2, label=f"{cv_name} {cv_value:.4g} (all OOF)")
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"{len(histories)}-fold cross-validation: {cv_name} {cv_value:.4g}", fontsize=11)
    return save_figure(fig, path)
