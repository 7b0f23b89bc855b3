"""Training and validation sources for classification data: ImageFolder, CSV or shapes, split by class.

:func:`build_sources` is what ``--data``/``--val-data``/``--val-split`` mean for the classify task;
:func:`stratified_split` keeps every class's share in both parts, seeded.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np

from ..errors import ConfigError
from .shapes import ShapesSource
from .sources import CsvSource, FolderSource, Subset

__all__ = ["DataSplit", "stratified_split", "build_sources", "sample_ids"]


def stratified_split(targets: Sequence[int], fraction: float, seed: int) -> Tuple[List[int], List[int]]:
    """Split indices per class with a seeded shuffle: (train, val), val ~ ``fraction`` of each class."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    by_class: Dict[int, List[int]] = {}
    for i, t in enumerate(targets):
        by_class.setdefault(int(t), []).append(i)
    for c in sorted(by_class):
        idx = rng.permutation(by_class[c]).tolist()
        n_val = int(round(len(idx) * fraction)) if len(idx) > 1 else 0
        val += idx[:n_val]
        train += idx[n_val:]
    return sorted(train), sorted(val)


@dataclass
class DataSplit:
    """Train and validation sources plus what the task needs to know about the labels."""

    train: Any
    val: Any
    classes: List[str]
    multilabel: bool = False
    meta: Dict[str, Any] = field(default_factory=dict)  # task-specific facts (e.g. a mask mode)
    full: Any = None   # the whole labelled set train and val were split from (None with --val-data); k-fold splits it
    folds: Any = None  # the k-fold plan (kernel.run.kfold.FoldPlan) when --folds split ``full``


def build_sources(data: str, *, val_data: str = "", val_split: float = 0.2, csv_file: str = "",
                  image_dir: str = "", image_col: str = "", label_col: str = "", in_chans: int = 3,
                  seed: int = 0, shapes_n: int = 800) -> DataSplit:
    """Build train/val sources from ``data`` ('shapes', an ImageFolder dir, or a CSV root)."""
    if data == "shapes":
        if in_chans != 3:
            raise ConfigError("--in-chans: the built-in shapes data is RGB; use --in-chans 3 or your own data")
        source: Any = ShapesSource(shapes_n, seed=seed)
        classes, multilabel = list(source.classes), False
    elif not os.path.isdir(data):
        raise ConfigError(f"--data: {data!r} is not a directory; give an ImageFolder root or 'shapes'")
    elif csv_file:
        csv_path = csv_file if os.path.isabs(csv_file) else os.path.join(data, csv_file)
        if not os.path.isfile(csv_path):
            raise ConfigError(f"--csv: {csv_path!r} not found; give it relative to --data")
        img_dir = os.path.join(data, image_dir) if image_dir else data
        source = CsvSource(csv_path, img_dir, image_col, label_col, in_chans)
        classes, multilabel = source.classes, source.multilabel
    else:
        source = FolderSource(data, in_chans)
        classes, multilabel = source.classes, False
    if val_data:
        if csv_file or data == "shapes":
            raise ConfigError("--val-data works with ImageFolder data; use --val-split with CSV or shapes")
        if not os.path.isdir(val_data):
            raise ConfigError(f"--val-data: {val_data!r} is not a directory")
        return DataSplit(source, FolderSource(val_data, in_chans, classes=classes), classes, multilabel)
    if val_split <= 0:
        raise ConfigError("--val-split: 0 leaves no validation data; give --val-data or a split such as 0.2")
    tr, va = stratified_split(source.targets, val_split, seed)
    if not va:
        raise ConfigError(f"--val-split {val_split}: too few images ({len(source)}) to hold any out")
    return DataSplit(Subset(source, tr), Subset(source, va), classes, multilabel, full=source)


def sample_ids(source: Any, root: str) -> List[str]:
    """One id per sample of ``source``: its CSV id (``source.ids``), else its path relative to ``root``.

    Ids name images in ``folds.csv`` and ``oof.csv``; relative paths keep them valid when the data
    is mounted elsewhere (a Kaggle input next time).
    """
    ids = getattr(source, "ids", None)
    if ids is not None:
        return [str(i) for i in ids]
    out = []
    for i in range(len(source)):
        path = source.path(i)
        rel = os.path.relpath(path, root) if root else path
        out.append((path if rel.startswith("..") else rel).replace(os.sep, "/"))
    return out
