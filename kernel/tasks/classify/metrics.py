"""Classification metrics: top-k accuracy on the device, the meter of a pass, per-class tables.

:class:`ClassifyMeter` accumulates correct counts without syncing with the GPU; with
``keep_outputs`` it also keeps the probabilities, which the best-checkpoint pictures and
``per_class.csv`` are made from (so they cost no extra pass).
"""
from __future__ import annotations

import os
from typing import Any, Dict, List, Sequence

import numpy as np
import torch

from ...report.files import write_csv

__all__ = ["accuracy", "ClassifyMeter", "confusion_matrix", "per_class_stats", "write_per_class_csv"]


def accuracy(logits: torch.Tensor, target: torch.Tensor, k: int = 1) -> torch.Tensor:
    """Count of correct top-k predictions (a 0-d tensor, no host sync).

    logits (N, C); target (N,) class indices, or (N, C) multi-hot, for which a sample is
    correct when its thresholded prediction (p > 0.5) equals the whole label set.
    """
    if target.ndim == 2:
        return ((logits > 0).float() == target).all(dim=1).sum()
    topk = logits.topk(min(k, logits.shape[1]), dim=1).indices
    return (topk == target[:, None]).any(dim=1).sum()


class ClassifyMeter:
    """Top-1 (and top-5 with more than 5 single-label classes) accuracy over a pass, a fraction in [0, 1].

    ``keep_outputs``: ``compute()`` also returns ``probs`` (N, C) (softmax, or sigmoid for
    multi-hot targets) and ``targets``, moved to the CPU once at the end; in a multi-process run
    :meth:`sync` puts every process's outputs back in dataset order (process r holds r, r + P, ...).
    """

    def __init__(self, keep_outputs: bool = False):
        self.keep_outputs = keep_outputs
        self._sums = {"correct1": torch.zeros(()), "correct5": torch.zeros(()), "seen": torch.zeros(())}
        self.num_classes, self.multilabel = 0, False
        self.probs: List[torch.Tensor] = []
        self.targets: List[torch.Tensor] = []

    def update(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        if self._sums["seen"].device != logits.device:
            self._sums = {k: v.to(logits.device) for k, v in self._sums.items()}
        self.num_classes, self.multilabel = logits.shape[1], targets.ndim == 2
        self._sums["correct1"] += accuracy(logits, targets, 1)
        if self.num_classes > 5 and not self.multilabel:
            self._sums["correct5"] += accuracy(logits, targets, 5)
        self._sums["seen"] += logits.shape[0]
        if self.keep_outputs:
            logits = logits.float()
            self.probs.append(torch.sigmoid(logits) if self.multilabel else logits.softmax(dim=1))
            self.targets.append(targets)

    def state(self) -> Dict[str, torch.Tensor]:
        return {k: v.clone() for k, v in self._sums.items()}

    def load_state(self, state: Dict[str, torch.Tensor]) -> None:
        self._sums = {k: state[k].detach().clone().float() for k in self._sums}

    def sync(self) -> None:
        """Sum the counts over the processes; gather the kept outputs in dataset order."""
        from ...engine.distributed import all_reduce_sum, gather_in_order, gather_objects

        self.load_state({k: all_reduce_sum(v.clone()) for k, v in self._sums.items()})
        info = gather_objects((self.num_classes, self.multilabel))
        self.num_classes, self.multilabel = max(c for c, _ in info), any(m for _, m in info)
        if self.keep_outputs:
            self.probs, self.targets = [gather_in_order(self.probs)], [gather_in_order(self.targets)]

    def compute(self) -> Dict[str, Any]:
        n = max(float(self._sums["seen"]), 1.0)
        out: Dict[str, Any] = {"acc1": float(self._sums["correct1"]) / n}  # a fraction, as every metric here
        if self.num_classes > 5 and not self.multilabel:
            out["acc5"] = float(self._sums["correct5"]) / n
        if self.keep_outputs:
            out["probs"] = _cat(self.probs).cpu() if self.probs else torch.zeros(0, self.num_classes)
            out["targets"] = _cat(self.targets).cpu() if self.targets else torch.zeros(0, dtype=torch.long)
        return out


def _cat(parts: List[torch.Tensor]) -> torch.Tensor:
    return torch.cat(parts) if parts else torch.zeros(0)


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
    keys = ("precision", "recall", "f1")
    rows: List[List[Any]] = [["class", *keys, "support"]]
    for i, name in enumerate(classes):
        rows.append([name, *(f"{stats[k][i]:.6f}" for k in keys), int(stats["support"][i])])
    support = stats["support"].astype(np.float64)
    total = int(support.sum())
    rows.append(["macro avg", *(f"{stats[k].mean():.6f}" for k in keys), total])
    weights = support / max(total, 1)
    rows.append(["weighted avg", *(f"{(stats[k] * weights).sum():.6f}" for k in keys), total])
    return write_csv(rows, path)
