"""A classification submission in the competition's own format (``--submit-as auto|label|prob|topk``).

What a competition scores decides what a row holds:

- ``label``: one class per row (the training labels' spelling: ``3`` or ``dog``); multi-label: the labels whose
  probability passes ``--threshold``, space-separated (the top-1 label when none does);
- ``prob``: a binary model's probability of the positive class in one column (AUC, log loss:
  ``id,label`` = P(dog)); with class-named columns one probability per class (Plant Pathology);
- ``topk``: the K best labels, best first, space-separated (MAP@K: ``Image,Id`` in Humpback Whale).

``auto`` reads the sample submission: class-named columns -> per-class probabilities; a binary model -> ``prob``;
numeric placeholders that are not all integers (``0.5``) -> ``prob``; a single-label model whose placeholders hold
several labels -> ``topk`` with that many; else ``label``. The choice is logged with how to change it.

Ids keep the sample's spelling and order; a sample id without a predicted image, or one given twice, is one line.
Probabilities are finite, in [0, 1] and printed with every digit float32 holds, so AUC ties stay broken.
"""
from __future__ import annotations

import csv
import logging
import math
import os
from collections import Counter
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

from ...data import index_sample_ids
from ...errors import ConfigError
from ...registry import did_you_mean
from ...report.files import write_csv

__all__ = ["SubmitChoice", "SubmitFormat", "read_sample_submission", "choose_format", "format_prob",
           "positive_index", "write_submission"]

log = logging.getLogger("kernel")


@dataclass(frozen=True)
class SubmitChoice:
    """What the user asked for (``--submit-as``, ``--topk``, ``--threshold``, ``--positive-class``)."""

    submit_as: str = "auto"
    topk: Optional[int] = None
    threshold: float = 0.5
    positive_class: str = ""


@dataclass(frozen=True)
class SubmitFormat:
    """What a row holds: ``mode`` is ``label``, ``prob`` (one column: P(``positive``)), ``probs`` (a column per
    class) or ``topk`` (``k`` labels); ``why`` is the log line that explains the choice."""

    mode: str
    k: int = 1
    positive: int = -1
    why: str = ""


def read_sample_submission(path: str) -> Tuple[List[str], List[str], List[str]]:
    """(header, ids of the first column in file order, the first target column's values) of a sample submission.

    A header without an id column and a target column, or an id given twice, is one line."""
    with open(path, newline="", encoding="utf-8-sig") as fh:  # -sig: Excel's byte-order mark is not in the header
        rows = [r for r in csv.reader(fh) if r]
    if not rows or len(rows[0]) < 2:
        raise ConfigError(f"--sample-submission: {path!r} needs a header with an id column and a target column "
                          f"(found {rows[0] if rows else 'an empty file'})")
    ids = [r[0] for r in rows[1:]]
    twice = [i for i, n in Counter(ids).items() if n > 1]
    if twice:
        raise ConfigError(f"--sample-submission: {path!r} gives {len(twice)} ids more than once (first: {twice[0]!r});"
                          " a submission has one row per id: use the competition's sample_submission.csv")
    return rows[0], ids, [r[1] if len(r) > 1 else "" for r in rows[1:]]


def positive_index(classes: Sequence[str], name: str = "") -> int:
    """The class whose probability a binary ``prob`` column holds: ``name``, else the second in sorted order
    (``1`` of 0/1, ``dog`` of cat/dog, ``malignant`` of benign/malignant)."""
    names = [str(c) for c in classes]
    if not name:
        return names.index(sorted(names)[1])
    if name not in names:
        raise ConfigError(f"--positive-class {name!r} is not a class of this run{did_you_mean(name, names)} "
                          f"(classes: {', '.join(names)})")
    return names.index(name)


def _numeric_not_integer(values: Sequence[str]) -> bool:
    """Whether the placeholders are numbers and not all whole ones (``0.5``: a probability is asked for)."""
    try:
        numbers = [float(v) for v in values if v.strip()]
    except ValueError:
        return False
    return bool(numbers) and not all(math.isfinite(x) and x == int(x) for x in numbers)


def _labels_per_value(values: Sequence[str]) -> int:
    """The usual number of space-separated labels in the placeholders (Humpback Whale's: 5)."""
    counts = Counter(len(v.split()) for v in values if v.strip())
    return counts.most_common(1)[0][0] if counts else 1


def _one_column(choice: SubmitChoice, values: Sequence[str], multilabel: bool, binary: bool) -> Tuple[str, str]:
    """(mode, why) for a submission with one target column."""
    if choice.submit_as != "auto":
        return choice.submit_as, f"--submit-as {choice.submit_as}"
    if binary:
        return "prob", ("a binary model and one target column: P(positive class), what AUC and log loss score; "
                        "--submit-as label writes the labels")
    if _numeric_not_integer(values):
        return "prob", "the sample's placeholders are fractions: probabilities; --submit-as label writes the labels"
    if not multilabel and _labels_per_value(values) > 1:
        return "topk", ("the sample's placeholders hold several labels: the best ones first (MAP@K); --submit-as "
                        "label writes one")
    return "label", ("labels" + (" above --threshold" if multilabel else "") +
                     "; --submit-as prob writes probabilities (binary models), topk the K best labels")


def choose_format(header: Sequence[str], values: Sequence[str], classes: Sequence[str], multilabel: bool,
                  choice: SubmitChoice) -> SubmitFormat:
    """The row format for a submission of ``header`` (the sample's, or ``[id_col, target_col]``) whose first
    target column holds ``values`` (placeholders; none without a sample)."""
    names = [str(c) for c in classes]
    binary = len(names) == 2 and not multilabel
    targets = list(header[1:])
    if len(targets) > 1:
        if set(targets) != set(names):
            raise ConfigError(f"--sample-submission: columns {targets} are neither one target column nor the "
                              f"classes ({', '.join(names)})")
        if choice.submit_as in ("label", "topk"):
            raise ConfigError(f"--submit-as {choice.submit_as}: the sample submission has a column per class, which "
                              "holds probabilities; use --submit-as prob (or auto)")
        return SubmitFormat("probs", why="a column per class: the probability of each")
    mode, why = _one_column(choice, values, multilabel, binary)
    if mode == "prob":
        if not binary and not (multilabel and len(names) == 1):
            if values:
                raise ConfigError(f"--submit-as prob: one target column ({targets[0]!r}) holds one probability, but "
                                  f"this model has {len(names)} classes; give a sample submission with a column per "
                                  "class, or --submit-as label")
            return SubmitFormat("probs", why="no sample submission: a column per class")
        pos = 0 if len(names) == 1 else positive_index(names, choice.positive_class)
        return SubmitFormat("prob", positive=pos, why=f"{why} (P({names[pos]}); --positive-class picks another)")
    if mode == "topk":
        k = choice.topk or (_labels_per_value(values) if values else 5)
        if k > len(names):
            log.warning("submission: --topk %d but the model has %d classes: %d labels per row", k, len(names),
                        len(names))
        return SubmitFormat("topk", k=min(k, len(names)), why=f"{why} (K={min(k, len(names))}; --topk sets it)")
    return SubmitFormat("label", why=why)


def format_prob(p: float) -> str:
    """A probability with every digit a float32 holds (the shortest text that reads back to the same float32),
    without an exponent: ``0.12345679``, ``0.00000012``, ``1``."""
    return np.format_float_positional(np.float32(p), unique=True, trim="-")


def _clean(p: np.ndarray, prior: Optional[np.ndarray]) -> np.ndarray:
    """Probabilities (N, C) a scorer accepts: a row with NaN or inf gets the prior (logged), all in [0, 1]."""
    bad = ~np.isfinite(p).all(axis=1)
    if bad.any():
        log.warning("submission: %d images have non-finite probabilities (a diverged model?); they get the training "
                    "prior", int(bad.sum()))
        p = p.copy()
        p[bad] = prior if prior is not None else 1.0 / p.shape[1]
    return np.clip(p, 0.0, 1.0)


def _cells(p: np.ndarray, names: Sequence[str], fmt: SubmitFormat, targets: Sequence[str], multilabel: bool,
           threshold: float) -> List[str]:
    """The target cells of one row, p (C,)."""
    if fmt.mode == "probs":
        col = {c: j for j, c in enumerate(names)}
        return [format_prob(p[col[c]]) for c in targets]
    if fmt.mode == "prob":
        return [format_prob(p[fmt.positive])]
    if fmt.mode == "topk":
        order = np.argsort(-p, kind="stable")[:fmt.k]
        return [" ".join(names[i] for i in order)]
    if multilabel:
        on = [names[i] for i in np.flatnonzero(p > threshold)]
        return [" ".join(on) if on else names[int(p.argmax())]]
    return [names[int(p.argmax())]]


def write_submission(ids: Sequence[str], probs: torch.Tensor, classes: Sequence[str], out: str | os.PathLike, *,
                     header: Sequence[str], sample: str = "", multilabel: bool = False,
                     choice: SubmitChoice = SubmitChoice(), prior: Optional[Sequence[float]] = None) -> str:
    """Write a submission for ``ids`` (one per predicted image) with probabilities (N, C) -> the file path.

    With ``sample`` (a sample submission CSV) its header and its ids in its order, each matched to a predicted
    image by id or by stem; without, ``header`` (``[id_col, target_col]``) and the ids in input order."""
    names = [str(c) for c in classes]
    p = _clean(probs.float().numpy(), None if prior is None else np.asarray(prior, dtype=np.float32))
    if sample:
        header, order, values = read_sample_submission(sample)
        positions = index_sample_ids(ids, order)
        left = len(set(range(len(ids))) - set(positions))
        if left:
            log.warning("submission: %d predicted images are not in the sample submission; left out", left)
    else:
        twice = [i for i, n in Counter(ids).items() if n > 1]
        if twice:
            raise ConfigError(f"submission: {len(twice)} ids name several inputs (first: {twice[0]!r}: the same file "
                              "stem in two folders?); predict one folder, or give --sample-submission")
        order, positions, values = list(ids), list(range(len(ids))), []
    fmt = choose_format(header, values, names, multilabel, choice)
    targets = list(header[1:])
    if fmt.mode == "probs" and len(targets) == 1:  # no sample: a column per class
        header, targets = [header[0], *names], names
    log.info("submission: %s", fmt.why)
    rows: List[List[str]] = [list(header)]
    for ident, n in zip(order, positions):
        rows.append([ident, *_cells(p[n], names, fmt, targets, multilabel, choice.threshold)])
    return write_csv(rows, out)
