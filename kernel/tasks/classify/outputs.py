"""Classification outputs: ``predictions.csv`` (top-k labels) and the fallback of unreadable inputs.

The Kaggle ``submission.csv`` in the competition's format is :mod:`.submission`'s.

An input that cannot be read gets the training prior instead of a prediction (:func:`fallback_probs`): the
class frequencies of the training images, saved with the checkpoint (:func:`class_prior`), so its label is
the most frequent class. Every input keeps its row.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Dict, List, Sequence

import numpy as np
import torch

from ...report.files import write_csv

__all__ = ["write_predictions_csv", "class_prior", "fallback_probs",
           "unreadable_report"]

log = logging.getLogger("kernel")


def _label_matrix(source: Any, n_classes: int, multilabel: bool) -> np.ndarray:
    """(N, C) 0/1 labels of a training source: a multi-label CSV's label sets (through its Subset views:
    their ``targets`` keep only the first label), else one-hot ``targets``."""
    indices = None
    while multilabel and hasattr(source, "indices") and hasattr(source, "source"):  # a Subset (of a Subset...)
        indices = list(source.indices) if indices is None else [source.indices[i] for i in indices]
        source = source.source
    if multilabel and hasattr(source, "label_matrix"):
        hot = source.label_matrix()
        return hot if indices is None else hot[indices]
    targets = np.asarray([t for t in getattr(source, "targets", []) if 0 <= t < n_classes], dtype=np.int64)
    return np.eye(n_classes, dtype=np.int64)[targets]


def class_prior(source: Any, n_classes: int, multilabel: bool) -> List[float]:
    """The class frequencies of the training images: shares summing to 1, or for multi-label data the share of
    images holding each class; uniform when the source has no labels to count."""
    hot = _label_matrix(source, n_classes, multilabel)
    if not len(hot):
        return [1.0 / n_classes] * n_classes
    freq = hot.sum(0) / (len(hot) if multilabel else hot.sum())
    return [round(float(f), 6) for f in freq]


def fallback_probs(meta: Dict[str, Any], n_classes: int) -> torch.Tensor:
    """The probabilities (C,) an unreadable input gets: the checkpoint's training prior (a run of an older
    bundle saved none: uniform)."""
    prior = meta.get("prior")
    if prior is None or len(prior) != n_classes:
        return torch.full((n_classes,), 1.0 / n_classes)
    return torch.tensor(prior, dtype=torch.float32)


def unreadable_report(out: str | os.PathLike) -> Path:
    """Where the unreadable inputs of a prediction written to ``out`` are listed: ``<out stem>_bad_images.txt``
    beside it (the run folder's own ``bad_images.txt`` lists the training images)."""
    out = Path(out)
    return out.with_name(f"{out.stem}_bad_images.txt")


def write_predictions_csv(paths: Sequence[str], probs: torch.Tensor, classes: Sequence[str],
                          out: str | os.PathLike, topk: int) -> str:
    """``path,label,prob[,label_2,prob_2,...]``: the top-k classes per image, probs (N, C)."""
    k = min(topk, len(classes))
    header = ["path", "label", "prob"]
    for j in range(2, k + 1):
        header += [f"label_{j}", f"prob_{j}"]
    rows: List[List[Any]] = [header]
    if len(paths):
        top_p, top_i = probs.float().topk(k, dim=1)
        for path, ps, idx in zip(paths, top_p.tolist(), top_i.tolist()):
            row: List[Any] = [path]
            for p, i in zip(ps, idx):
                row += [classes[i], f"{p:.6f}"]
            rows.append(row)
    return write_csv(rows, out)
