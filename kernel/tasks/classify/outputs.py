"""Classification outputs: ``predictions.csv`` (top-k labels) and a Kaggle ``submission.csv``.

A Kaggle submission is either
``id,target`` (the top-1 label; for multi-label models the labels with p > 0.5 joined by spaces,
the top-1 label when none passes) or, when a sample submission's columns after the id are the
class names, one probability column per class.
"""
from __future__ import annotations

import csv
import logging
import os
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np
import torch

from ...registry import ConfigError
from ...report.files import write_csv

__all__ = ["write_predictions_csv", "read_sample_submission", "write_submission"]

log = logging.getLogger("kernel")


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


def read_sample_submission(path: str) -> Tuple[List[str], List[str]]:
    """(header, ids of the first column in file order) of a sample submission CSV."""
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    if not rows or len(rows[0]) < 2:
        raise ConfigError(f"--sample-submission: {path!r} needs a header with an id column and a target column")
    return rows[0], [r[0] for r in rows[1:] if r]


def _label(p: np.ndarray, classes: Sequence[str], multilabel: bool) -> str:
    if multilabel:
        on = [classes[i] for i in np.flatnonzero(p > 0.5)]
        return " ".join(on) if on else str(classes[int(p.argmax())])
    return str(classes[int(p.argmax())])


def write_submission(ids: Sequence[str], probs: torch.Tensor, classes: Sequence[str], out: str | os.PathLike, *,
                     id_col: str, target_col: str, sample: str = "", multilabel: bool = False) -> str:
    """Write a Kaggle submission for ``ids`` with probabilities (N, C) -> the file path.

    With ``sample`` (a sample submission CSV): its header and its ids in its order; every id must
    match a predicted image by id or by stem. Without: ``id_col,target_col`` in input order.
    """
    p = probs.float().numpy()
    if not sample:
        if len(set(ids)) != len(ids):
            log.warning("submission: %d duplicate ids (same file stem in several inputs)", len(ids) - len(set(ids)))
        rows = [[id_col, target_col]] + [[i, _label(p[n], classes, multilabel)] for n, i in enumerate(ids)]
        return write_csv(rows, out)
    header, order = read_sample_submission(sample)
    index: Dict[str, int] = {}
    for n, ident in enumerate(ids):
        index.setdefault(ident, n)
        index.setdefault(Path(ident).stem, n)
    missing = [i for i in order if i not in index and Path(i).stem not in index]
    if missing:
        raise ConfigError(f"--sample-submission: {len(missing)} of its {len(order)} ids have no predicted image "
                          f"(first: {missing[0]!r}); predict the competition's test images")
    extra = len(set(range(len(ids))) - {index.get(i, index.get(Path(i).stem)) for i in order})
    if extra:
        log.warning("submission: %d predicted images are not in the sample submission; left out", extra)
    per_class = list(header[1:])
    as_probs = len(header) > 2 and set(per_class) == {str(c) for c in classes}
    if len(header) > 2 and not as_probs:
        raise ConfigError(f"--sample-submission: columns {header[1:]} are neither one target column nor the "
                          f"classes ({', '.join(map(str, classes))})")
    col = {str(c): j for j, c in enumerate(classes)}
    rows = [header]
    for ident in order:
        n = index[ident] if ident in index else index[Path(ident).stem]
        if as_probs:
            rows.append([ident] + [f"{p[n, col[c]]:.6f}" for c in per_class])
        else:
            rows.append([ident, _label(p[n], classes, multilabel)])
    return write_csv(rows, out)
