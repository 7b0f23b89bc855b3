"""K-fold assignment for ``--folds K``: which validation fold each image belongs to.

The splitting itself is done by maintained libraries, never by hand:

* single-label ``labels``      -> ``sklearn.model_selection.StratifiedKFold``
* multi-label ``multilabel``   -> ``iterstrat.ml_stratifiers.MultilabelStratifiedKFold``
  (iterative stratification, Sechidis, Tsoumakas & Vlahavas, ECML PKDD 2011)
* ``groups`` (+ labels)        -> ``StratifiedGroupKFold``; ``groups`` alone -> ``GroupKFold``
* nothing (segmentation, "by image") -> ``KFold``

All of them shuffle with ``random_state=seed``, so one seed always gives the same folds
for the same inputs and library versions. Library versions can change an assignment, so
a run records its folds with :func:`write_folds_csv` and a resumed or re-evaluated run
reads them back with :func:`read_folds_csv` instead of recomputing them.

Decisions:

* A class (or label) with fewer than K members cannot be in every validation fold. That
  is common for a rare class, and refusing would force fewer folds on the whole data set,
  so it is a ``UserWarning`` naming the class, not an error; only when *every* class has
  fewer than K members (no stratification possible) is it a ``ConfigError``. With groups
  the members counted are the class's groups, since a group never splits.
* ``multilabel`` + ``groups``: there is no maintained multi-label group splitter, so the
  groups are stratified by each sample's first label (lowest label index; ``-1`` for an
  empty label set) with ``StratifiedGroupKFold``. No group is ever in two folds; the other
  labels are balanced only by chance.
* ``GroupKFold`` takes ``shuffle``/``random_state`` only from scikit-learn 1.6 (tested on
  1.9.1): it shuffles the groups and deals them out evenly by *group count*. On older
  versions ``StratifiedGroupKFold`` with a single class is used instead (also seeded; it
  puts each shuffled group in the fold with the fewest images), so folds differ by version.
"""
from __future__ import annotations

import csv
import inspect
import os
import warnings
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from ..paths import atomic_write
from ..errors import ConfigError

__all__ = ["make_folds", "write_folds_csv", "read_folds_csv", "fold_indices"]


def make_folds(n: int, k: int, seed: int, *, labels: Optional[Sequence] = None,
               multilabel: Optional[np.ndarray] = None, groups: Optional[Sequence] = None,
               group_shuffle: Optional[bool] = None) -> np.ndarray:
    """Assign each of ``n`` samples a validation fold in ``0..k-1``.

    ``labels``: (n,) class of each sample (ints or strings) -> stratified folds.
    ``multilabel``: (n, C) 0/1 (any numeric or bool dtype) -> iteratively stratified folds.
    ``groups``: (n,) group id of each sample (e.g. patient); no group is in two folds.
    With none of them the samples are split at random ("by image").
    ``group_shuffle``: whether ``GroupKFold`` takes a seed (None: ask the installed scikit-learn, >= 1.6; False:
    the path for older versions, a seeded ``StratifiedGroupKFold`` on constant labels).
    Returns an (n,) int64 array of fold indices.
    """
    if k < 2:
        raise ConfigError(f"--folds {k} is too small; use 2 or more folds")
    if k > n:
        raise ConfigError(f"--folds {k} is more than the {n} images; use at most {n} folds")
    if labels is not None and multilabel is not None:
        raise ConfigError("make_folds got both labels and multilabel; pass one of them")
    labels = None if labels is None else _check_1d(labels, n, "labels")
    groups = None if groups is None else _check_1d(groups, n, "groups")
    if multilabel is not None:
        multilabel = _check_multilabel(multilabel, n)
        if groups is not None:  # see the module docstring: stratify by the first label
            has = multilabel.any(axis=1)
            labels = np.where(has, multilabel.argmax(axis=1), -1)
    if groups is not None:
        n_groups = len(np.unique(groups))
        if n_groups < k:
            raise ConfigError(f"--folds {k} needs at least {k} distinct groups but there are {n_groups}; "
                              f"use at most {n_groups} folds")
    if labels is not None:
        _check_class_sizes(labels, k, groups)
    elif multilabel is not None:
        _warn_rare_labels(multilabel, k)
    with warnings.catch_warnings():
        # _check_class_sizes already warned, naming the class; the library's own warning adds nothing
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        return _split(n, k, seed, labels, multilabel, groups,
                      _group_kfold_shuffles() if group_shuffle is None else group_shuffle)


def _split(n: int, k: int, seed: int, labels: Optional[np.ndarray], multilabel: Optional[np.ndarray],
           groups: Optional[np.ndarray], group_shuffle: bool) -> np.ndarray:
    """Run the library splitter that fits the inputs; (n,) int64 folds."""
    from sklearn import model_selection as ms

    y = labels
    if groups is not None and labels is not None:
        splitter = ms.StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    elif groups is not None and group_shuffle:
        splitter = ms.GroupKFold(n_splits=k, shuffle=True, random_state=seed)
    elif groups is not None:  # scikit-learn < 1.6: GroupKFold would ignore the seed
        splitter = ms.StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
        y = np.zeros(n, dtype=np.int64)
    elif multilabel is not None:
        from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

        splitter = MultilabelStratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
        y = multilabel
    elif labels is not None:
        splitter = ms.StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    else:
        splitter = ms.KFold(n_splits=k, shuffle=True, random_state=seed)
    folds = np.full(n, -1, dtype=np.int64)
    for f, (_, val) in enumerate(splitter.split(np.zeros((n, 1)), y, groups)):
        folds[val] = f
    return folds


def _group_kfold_shuffles() -> bool:
    """True when the installed ``GroupKFold`` accepts ``shuffle`` (scikit-learn >= 1.6)."""
    from sklearn.model_selection import GroupKFold

    return "shuffle" in inspect.signature(GroupKFold).parameters


def _check_1d(values: Sequence, n: int, what: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1 or len(arr) != n:
        raise ConfigError(f"{what} has shape {arr.shape} but there are {n} images; pass one value per image")
    return arr


def _check_multilabel(multilabel: np.ndarray, n: int) -> np.ndarray:
    arr = np.asarray(multilabel)
    if arr.ndim != 2 or arr.shape[0] != n:
        raise ConfigError(f"multilabel has shape {arr.shape} but there are {n} images; "
                          f"pass an (images, labels) 0/1 matrix")
    if not np.isin(arr, (0, 1)).all():
        raise ConfigError("multilabel holds values other than 0 and 1; pass a 0/1 (multi-hot) matrix")
    return arr.astype(np.int64)


def _check_class_sizes(labels: np.ndarray, k: int, groups: Optional[np.ndarray]) -> None:
    """Refuse when no class can fill K folds; warn for each class that cannot."""
    classes, inverse = np.unique(labels, return_inverse=True)
    if groups is None:
        members, unit = np.bincount(inverse), "images"
    else:  # a group never splits, so a class reaches at most as many folds as it has groups
        pairs = np.unique(np.stack([inverse, np.unique(groups, return_inverse=True)[1]]), axis=1)
        members, unit = np.bincount(pairs[0], minlength=len(classes)), "groups"
    if members.max() < k:
        raise ConfigError(f"every class has fewer than {k} {unit} (largest: {members.max()}); "
                          f"use at most {members.max()} folds")
    for c, m in zip(classes, members):
        if m < k:
            warnings.warn(f"class {c.item()!r} has only {m} {unit}, fewer than --folds {k}: "
                          f"{k - m} validation folds will lack it; use fewer folds to avoid this",
                          UserWarning, stacklevel=3)


def _warn_rare_labels(multilabel: np.ndarray, k: int) -> None:
    for c, m in enumerate(multilabel.sum(axis=0)):
        if m < k:
            warnings.warn(f"label {c} has only {m} positive images, fewer than --folds {k}: "
                          f"{k - m} validation folds will lack it; use fewer folds to avoid this",
                          UserWarning, stacklevel=3)


def write_folds_csv(path: str | os.PathLike, ids: Sequence[str], folds: np.ndarray) -> None:
    """Write ``image,fold`` rows (header first) in the order of ``ids``, atomically.

    ``folds``: (n,) integer fold per id. The file appears complete or not at all (temp file
    in the same folder, then ``os.replace``), so a killed run never leaves half a fold table.
    """
    path = Path(path)
    ids = [str(i) for i in ids]
    folds = np.asarray(folds)
    if folds.ndim != 1 or len(folds) != len(ids) or not np.issubdtype(folds.dtype, np.integer):
        raise ConfigError(f"cannot write {path}: folds has shape {folds.shape} and dtype {folds.dtype} "
                          f"for {len(ids)} ids; pass one integer fold per id")
    _check_unique(ids, f"cannot write {path}: ids")
    def write(tmp: str) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["image", "fold"])
            writer.writerows(zip(ids, folds.tolist()))

    atomic_write(path, write)


def read_folds_csv(path: str | os.PathLike, ids: Sequence[str], k: Optional[int] = None) -> np.ndarray:
    """Read an ``image,fold`` CSV and return the folds aligned to ``ids``: (n,) int64.

    The file must list exactly the ids in ``ids`` (any order, extra columns allowed), once
    each, with integer folds covering ``0..K-1`` (``K = k`` when given, else the largest
    fold + 1) and no empty fold. Anything else is a one-line ``ConfigError`` naming the file.
    """
    table = _read_table(Path(path))
    ids = [str(i) for i in ids]
    _check_unique(ids, f"cannot align {path}: ids")
    missing = [i for i in ids if i not in table]
    if missing:
        raise ConfigError(f"{path}: {len(missing)} images have no fold, first {missing[0]!r}; "
                          f"regenerate the folds file for this data")
    wanted = set(ids)
    extra = [i for i in table if i not in wanted]
    if extra:
        raise ConfigError(f"{path}: {len(extra)} images are not in the data, first {extra[0]!r}; "
                          f"regenerate the folds file for this data")
    folds = np.array([table[i] for i in ids], dtype=np.int64)
    n_folds = int(folds.max()) + 1 if k is None else k
    bad = folds[(folds < 0) | (folds >= n_folds)]
    if len(bad):
        raise ConfigError(f"{path}: fold {int(bad[0])} is outside 0..{n_folds - 1}"
                          f"{'' if k is None else f' (--folds {k})'}; number folds from 0 to K-1")
    empty = np.flatnonzero(np.bincount(folds, minlength=n_folds) == 0)
    if len(empty):
        raise ConfigError(f"{path}: fold {int(empty[0])} of 0..{n_folds - 1} has no images; "
                          f"number folds from 0 to K-1 with none empty")
    return folds


def _read_table(path: Path) -> Dict[str, int]:
    """The ``image -> fold`` rows of a folds CSV, checked for columns, duplicates and integers."""
    if not path.is_file():
        raise ConfigError(f"folds file {path} does not exist; check the path or drop it to make new folds")
    with open(path, newline="", encoding="utf-8-sig") as fh:  # -sig: spreadsheets save a BOM
        reader = csv.DictReader(fh)
        cols = [c.strip() for c in reader.fieldnames or []]
        if "image" not in cols or "fold" not in cols:
            raise ConfigError(f"{path} has columns {cols} but needs 'image' and 'fold'; "
                              f"write the header line image,fold")
        reader.fieldnames = cols
        table: Dict[str, int] = {}
        dupes = []
        for row in reader:
            image, value = (row["image"] or "").strip(), (row["fold"] or "").strip()
            try:
                fold = int(value)
            except ValueError:
                raise ConfigError(f"{path} line {reader.line_num}: fold {value!r} of {image!r} is not an "
                                  f"integer; give each image a whole fold number") from None
            if image in table:
                dupes.append(image)
            table[image] = fold
    if dupes:
        raise ConfigError(f"{path}: {len(dupes)} duplicate image rows, first {dupes[0]!r}; "
                          f"list each image once")
    return table


def _check_unique(ids: Sequence[str], what: str) -> None:
    seen = set()
    for i in ids:
        if i in seen:
            raise ConfigError(f"{what} repeat {i!r}; pass each image id once")
        seen.add(i)


def fold_indices(folds: np.ndarray, fold: int) -> Tuple[np.ndarray, np.ndarray]:
    """(train, val) sample indices for validation fold ``fold``: sorted int64 arrays.

    ``folds``: (n,) integer fold per sample, as from :func:`make_folds`.
    """
    folds = np.asarray(folds)
    if folds.ndim != 1 or not np.issubdtype(folds.dtype, np.integer):
        raise ConfigError(f"folds has shape {folds.shape} and dtype {folds.dtype}; pass one integer per image")
    if not (folds == fold).any():
        present = np.unique(folds).tolist()
        raise ConfigError(f"fold {fold} has no images (folds present: {present}); "
                          f"choose one of those")
    return np.flatnonzero(folds != fold).astype(np.int64), np.flatnonzero(folds == fold).astype(np.int64)
