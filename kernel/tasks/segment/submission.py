"""Kaggle RLE submissions of predicted masks: columns, rows and order, all checked before any mask is written.

Without a sample submission the table is ``id,rle_mask`` (binary) or ``ImageId,ClassId,EncodedPixels``, a
row per image and foreground class, the class by name. With ``--sample-submission`` it is the sample's header
and rows in the sample's order, the RLE cell filled in. The sample's columns are found by name, in any order:
the id (``--id-col``, the training ``--image-col``, or ImageId, image_id, id, image), the class (the training
``--class-col``, or ClassId, class_id, class) and the RLE (``--target-col``, the training ``--rle-col``, or
EncodedPixels, rle_mask, rle); columns whose names say nothing take the roles left, in the order id, class, RLE.

A sample's class is a class name of the model, or an integer ``k``: the mask value ``k`` of the predicted
index masks, i.e. the k-th foreground class (Kaggle's 1-based ``ClassId``; for a multilabel model the k-th of
its classes). When the model's class names are themselves integers (the ``ClassId`` values of an RLE CSV it was
trained on), a class matches by name only, so a ClassId absent from training is never taken for another one.
"""
from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ...data import index_sample_ids
from ...errors import ConfigError
from ...options import PredictOptions
from .data import CLASS_COLUMNS, RLE_COLUMNS

__all__ = ["SubmissionPlan", "plan_submission", "class_position"]

ID_COLUMNS = ("imageid", "image_id", "id", "image")  # guessed id column names, lowercase
_INTEGER = re.compile(r"[0-9]+", re.ASCII)


@dataclass
class SubmissionPlan:
    """The submission's table with its RLE cells still empty, and which mask fills each row."""

    header: List[str]
    cells: List[List[str]]          # every row as it will be written, the RLE cell empty
    rle_col: int                    # the RLE cell's column
    wanted: List[Tuple[int, int]]   # per row: (image index, foreground class position)

    def table(self, rles: Dict[int, List[str]]) -> List[List[str]]:
        """Header and rows with the RLE cells filled from ``rles`` (image index -> RLE per foreground class)."""
        rows = [self.header]
        for cells, (n, k) in zip(self.cells, self.wanted):
            row = list(cells)
            row[self.rle_col] = rles[n][k]
            rows.append(row)
        return rows


def class_position(value: str, names: Sequence[str]) -> Optional[int]:
    """The position in ``names`` (the model's foreground classes) of a submission's class value, or None.

    A name of the model matches itself; an integer k is the mask value k, the k-th name (1-based), unless the
    names are themselves integers: then only the name matches."""
    value = str(value).strip()
    names = [str(n) for n in names]
    if value in names:
        return names.index(value)
    if _INTEGER.fullmatch(value) and not all(_INTEGER.fullmatch(n) for n in names):
        k = int(value)
        return k - 1 if 1 <= k <= len(names) else None
    return None


def _find(header: Sequence[str], given: str, option: str, from_training: str, guesses: Sequence[str],
          taken: Sequence[int]) -> Optional[int]:
    """The column of one role: named by a flag (it must exist), by the training run, or by a usual name."""
    if given:
        if given not in header:
            raise ConfigError(f"--{option}: column {given!r} is not in the sample submission (columns: "
                              f"{', '.join(header)})")
        return header.index(given)
    lower = [h.strip().lower() for h in header]
    for j, h in enumerate(header):
        if j not in taken and ((from_training and h == from_training) or lower[j] in guesses):
            return j
    return None


def _columns(header: List[str], popts: PredictOptions, trained: Dict[str, Any], path: str) -> Tuple[int, Optional[int], int]:
    """(id, class or None, RLE) column positions of a sample submission with 2 or 3 columns."""
    if len(header) not in (2, 3):
        raise ConfigError(f"--sample-submission: {path!r} has {len(header)} columns ({', '.join(header)}); a "
                          "segmentation submission has an id, an RLE and, per class, a class column")
    taken: List[int] = []
    roles = [("id", popts.id_col, "id-col", str(trained.get("image_col") or ""), ID_COLUMNS),
             ("class", "", "", str(trained.get("class_col") or ""), CLASS_COLUMNS),
             ("rle", popts.target_col, "target-col", str(trained.get("rle_col") or ""), RLE_COLUMNS)]
    if len(header) == 2:
        roles.pop(1)
    found: Dict[str, Optional[int]] = {}
    for role, given, option, from_training, guesses in roles:
        found[role] = _find(header, given, option, from_training, guesses, taken)
        if found[role] is not None:
            taken.append(found[role])
    rest = iter(j for j in range(len(header)) if j not in taken)
    for role, *_ in roles:  # unnamed columns, in order
        if found[role] is None:
            found[role] = next(rest)
    if len(set(found.values())) < len(found):
        raise ConfigError(f"--sample-submission: cannot tell its id, class and RLE columns apart ({', '.join(header)}); "
                          "name them with --id-col and --target-col")
    return found["id"], found.get("class"), found["rle"]


def _own_table(ids: Sequence[str], names: Sequence[str], popts: PredictOptions, per_class: bool) -> SubmissionPlan:
    if per_class:
        header = [popts.id_col or "ImageId", "ClassId", popts.target_col or "EncodedPixels"]
        cells = [[ident, str(name), ""] for ident in ids for name in names]
        wanted = [(n, k) for n in range(len(ids)) for k in range(len(names))]
        return SubmissionPlan(header, cells, 2, wanted)
    header = [popts.id_col or "id", popts.target_col or "rle_mask"]
    return SubmissionPlan(header, [[ident, ""] for ident in ids], 1, [(n, 0) for n in range(len(ids))])


def plan_submission(ids: Sequence[str], names: Sequence[str], popts: PredictOptions, trained: Dict[str, Any],
                    per_class: bool) -> SubmissionPlan:
    """Plan the RLE submission of the images ``ids`` (in input order) for a model whose foreground classes are
    ``names``; ``trained`` are the training run's options. Reads and checks ``popts.sample_submission``
    when given; every problem is a one-line ConfigError, raised before anything is predicted or written."""
    path = popts.sample_submission
    if not path:
        return _own_table(ids, names, popts, per_class)
    with open(path, newline="", encoding="utf-8") as fh:
        sample = [r for r in csv.reader(fh) if r]
    if not sample:
        raise ConfigError(f"--sample-submission: {path!r} is empty; it needs a header and a row per id")
    header, body = sample[0], sample[1:]
    id_col, class_col, rle_col = _columns(header, popts, trained, path)
    order = [r[id_col] if id_col < len(r) else "" for r in body]
    positions = index_sample_ids(ids, order)
    if class_col is None and len(names) > 1:
        raise ConfigError(f"--sample-submission: {path!r} has no class column ({', '.join(header)}), but the model "
                          f"predicts {len(names)} classes ({', '.join(map(str, names))}); give a sample with a "
                          "ClassId column")
    cells, wanted = [], []
    for line, (row, position) in enumerate(zip(body, positions), start=2):
        row = (row + [""] * len(header))[:len(header)]
        k = 0 if class_col is None else class_position(row[class_col], names)
        if k is None:
            numeric = all(_INTEGER.fullmatch(str(n)) for n in names)
            values = "" if numeric else f" nor a mask value 1..{len(names)}"
            raise ConfigError(f"--sample-submission: {header[class_col]} {row[class_col]!r} (line {line}) is neither "
                              f"a class of the model ({', '.join(map(str, names))}){values}; check the "
                              f"{header[class_col]} column")
        row[rle_col] = ""
        cells.append(row)
        wanted.append((position, k))
    return SubmissionPlan(header, cells, rle_col, wanted)
