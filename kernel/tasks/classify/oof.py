"""Out-of-fold predictions of a classification fold, and the CV accuracy computed from them.

A row per validation image: ``path`` (its id, as in ``folds.csv``), ``label`` and ``pred`` (class
names; multi-label: the names of the set, space-separated, ``pred`` those with probability > 0.5),
``fold``, then one probability column per class (softmax, or sigmoid for multi-label) named by the
class (``prob_<name>`` where a class name would clash with the fixed columns).
"""
from __future__ import annotations

from typing import AbstractSet, Any, List, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from ...engine.amp import forward
from ...engine.step import supervised_step, to_device

__all__ = ["FIXED", "probability_columns", "oof_table", "cv_accuracy"]

FIXED = ("path", "label", "fold", "pred")


def probability_columns(classes: Sequence[str]) -> List[str]:
    """One column name per class: the class name, or ``prob_<name>`` where it would clash."""
    return [f"prob_{c}" if c in FIXED else str(c) for c in classes]


def _names(hot: Sequence[float], classes: Sequence[str]) -> str:
    return " ".join(c for c, on in zip(classes, hot) if on)


@torch.no_grad()
def oof_table(model: nn.Module, loader: Any, ids: Sequence[str], fold: int, classes: Sequence[str],
              multilabel: bool, device: torch.device, amp_dtype: Any,
              leave_out: AbstractSet[int] = frozenset()) -> Tuple[List[str], List[List[Any]]]:
    """(header, rows) for the images of ``loader`` (in order; ``ids`` name them), but those at the positions
    ``leave_out``: see the module docstring."""
    model.eval()
    probs, targets = [], []
    for images, target in loader:
        _, logits = forward(supervised_step, model, (to_device(images, device),), None, device, amp_dtype)
        logits = logits.float()
        probs.append((torch.sigmoid(logits) if multilabel else logits.softmax(dim=1)).cpu())
        targets.append(target)
    p = torch.cat(probs).numpy() if probs else np.zeros((0, len(classes)))
    t = torch.cat(targets).numpy() if targets else np.zeros(0)
    rows = []
    for n, ident in enumerate(ids):
        if n in leave_out:
            continue
        if multilabel:
            label, pred = _names(t[n] > 0.5, classes), _names(p[n] > 0.5, classes)
        else:
            label, pred = classes[int(t[n])], classes[int(p[n].argmax())]
        rows.append([ident, label, fold, pred, *[f"{v:.9g}" for v in p[n].tolist()]])
    return [*FIXED, *probability_columns(classes)], rows


def cv_accuracy(header: Sequence[str], rows: Sequence[Sequence[Any]], multilabel: bool) -> float:
    """Top-1 accuracy (a fraction in [0, 1]) over the OOF rows (multi-label: the whole label set right), as ``val_acc``."""
    li, pi = header.index("label"), header.index("pred")
    if not rows:
        return float("nan")
    same = (lambda a, b: sorted(a.split()) == sorted(b.split())) if multilabel else (lambda a, b: a == b)
    right = sum(same(str(r[li]), str(r[pi])) for r in rows)
    return right / len(rows)
