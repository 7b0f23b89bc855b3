"""Pictures of a run: training curves, confusion matrix (+ per_class.csv), a grid of predictions.

Every figure is drawn on a ``matplotlib.figure.Figure`` with its own ``FigureCanvasAgg``, never
through pyplot, so no window opens and the user's global backend is left alone (a notebook that
imports the bundle keeps its inline backend). matplotlib is imported inside the functions, so
importing this module costs nothing.
"""
from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path
from typing import Any, Dict, List, Sequence

import numpy as np
import torch

from .checkpoint import atomic_write

__all__ = ["new_figure", "save_figure", "denormalize", "confusion_matrix", "per_class_stats",
           "write_per_class_csv", "plot_curves", "plot_confusion_matrix", "plot_predictions"]

_GOOD, _BAD = "#1a7f37", "#cf222e"


def new_figure(width: float, height: float) -> Any:
    """A Figure bound to an Agg canvas (no pyplot, no GUI)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


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
    m = torch.tensor([mean[i % len(mean)] for i in range(c)]).view(1, c, 1, 1)
    s = torch.tensor([std[i % len(std)] for i in range(c)]).view(1, c, 1, 1)
    x = (x * s + m).clamp(0, 1)
    x = x[:, :3] if c >= 3 else x[:, :1]
    return x.permute(0, 2, 3, 1).numpy()


def confusion_matrix(pred: np.ndarray, target: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts (C, C): rows are true classes, columns predicted ones. pred, target: (N,) ints."""
    idx = np.asarray(target, dtype=np.int64) * num_classes + np.asarray(pred, dtype=np.int64)
    return np.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def _prf(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> Dict[str, np.ndarray]:
    # 0/0 is reported as 0 (a class never predicted has precision 0), as scikit-learn does.
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), 0.0)
        recall = np.where(tp + fn > 0, tp / np.maximum(tp + fn, 1), 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0)
    return {"precision": precision, "recall": recall, "f1": f1, "support": tp + fn}


def per_class_stats(probs: torch.Tensor | np.ndarray, targets: torch.Tensor | np.ndarray,
                    multilabel: bool = False) -> Dict[str, np.ndarray]:
    """Precision, recall, F1 and support per class (each (C,)), plus ``cm`` (C, C) when single-label.

    probs (N, C): softmax probabilities (prediction = argmax) with targets (N,) class ids, or
    sigmoid probabilities with multi-hot targets (N, C) when ``multilabel``: then every class
    is scored as its own binary problem at threshold 0.5, and there is no confusion matrix.
    """
    p = np.asarray(probs, dtype=np.float64)
    t = np.asarray(targets)
    n_cls = p.shape[1]
    if multilabel:
        pred, true = p > 0.5, t > 0.5
        tp = (pred & true).sum(0)
        out = _prf(tp, (pred & ~true).sum(0), (~pred & true).sum(0))
        return out
    cm = confusion_matrix(p.argmax(1), t, n_cls)
    tp = np.diag(cm)
    out = _prf(tp, cm.sum(0) - tp, cm.sum(1) - tp)
    out["cm"] = cm
    return out


def write_per_class_csv(stats: Dict[str, np.ndarray], classes: Sequence[str], path: str | os.PathLike) -> str:
    """``class,precision,recall,f1,support`` per class, then ``macro avg`` and ``weighted avg`` rows."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["class", "precision", "recall", "f1", "support"])
    keys = ("precision", "recall", "f1")
    for i, name in enumerate(classes):
        w.writerow([name, *(f"{stats[k][i]:.6f}" for k in keys), int(stats["support"][i])])
    support = stats["support"].astype(np.float64)
    total = int(support.sum())
    w.writerow(["macro avg", *(f"{stats[k].mean():.6f}" for k in keys), total])
    weights = support / max(total, 1)
    w.writerow(["weighted avg", *(f"{(stats[k] * weights).sum():.6f}" for k in keys), total])
    atomic_write(path, lambda tmp: Path(tmp).write_text(buf.getvalue(), encoding="utf-8"))
    return str(path)


def _column(history: List[Dict[str, Any]], key: str) -> np.ndarray:
    """History values of ``key`` as floats; missing or blank entries become NaN (gaps in the line)."""
    vals = []
    for row in history:
        v = row.get(key, "")
        vals.append(float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan)
    return np.asarray(vals, dtype=np.float64)


def plot_curves(history: List[Dict[str, Any]], path: str | os.PathLike, *, monitor: str = "val_acc",
                best_epoch: int = 0) -> str:
    """Loss, accuracy and LR against epoch from ``history`` rows; the best epoch is marked."""
    epochs = _column(history, "epoch")
    fig = new_figure(13, 3.8)
    panels = [("loss", [("train_loss", "train"), ("val_loss", "val")]),
              ("accuracy (%)", [("train_acc", "train"), ("val_acc", "val"), ("val_acc5", "val top-5")]),
              ("learning rate", [("lr", "lr")])]
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


def plot_confusion_matrix(cm: np.ndarray, classes: Sequence[str], path: str | os.PathLike, title: str = "") -> str:
    """Counts in each cell, colour = row-normalized (recall), rows true, columns predicted."""
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
    acc = np.trace(cm) / max(cm.sum(), 1) * 100
    ax.set_title(f"{title}  accuracy {acc:.2f}% ({int(np.trace(cm))}/{int(cm.sum())})".strip(), fontsize=10)
    return save_figure(fig, path)


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
        color = _GOOD if ok else _BAD
        for spine in ax.spines.values():  # a thick red frame makes mistakes visible at a glance
            spine.set_edgecolor(color)
            spine.set_linewidth(1 if ok else 4)
        ax.set_title(f"true: {true}\npred: {pred}", fontsize=8, color=color)
    fig.suptitle(f"{title}  {n - wrong}/{n} correct".strip(), fontsize=10)
    return save_figure(fig, path)
