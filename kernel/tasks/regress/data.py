"""Regression data: images with one or several numbers each, from a CSV or the built-in shapes; standardized.

:class:`NumericCsvSource` reads ``--csv`` (an id column, ``--label-col a,b``: numeric target columns; integer
targets such as Pawpularity's 1-100 are numbers too, cast to float). ``--data shapes`` is a built-in demo whose
target is the share of the image each shape covers. :class:`Standardized` yields every target as
``(y - mean) / std`` (float32, shape (T,)), with the labelled set's mean and std, so the loss sees unit-scale
numbers; :func:`target_stats` are saved in the checkpoint's ``meta`` and bring predictions back to the
original units. ``targets`` (the first target's quantile bin, of :data:`BINS`) stratifies splits and folds.
"""
from __future__ import annotations

import math
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ...data import ShapesSource, Subset, csv_column, load_image, match_image_ids, read_csv_rows, stratified_split
from ...errors import ConfigError

__all__ = ["BINS", "NumericCsvSource", "ShapesAreaSource", "Standardized", "target_stats", "raw_targets", "build_regress_data",
           "is_numeric_column"]

BINS = 5  # quantile bins of the first target: what a stratified split and k-fold keep in proportion


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(text)
    return value


def is_numeric_column(values: Sequence[str]) -> Tuple[bool, bool]:
    """(every value is a finite number, every value is an integer) of a CSV column."""
    try:
        numbers = [_float(v) for v in values]
    except ValueError:
        return False, False
    return bool(numbers), all(n == int(n) for n in numbers)


def _bins(first: np.ndarray) -> List[int]:
    """The quantile bin (0..BINS-1) of each value; ties share a bin."""
    edges = np.quantile(first, np.linspace(0, 1, BINS + 1)[1:-1])
    return np.searchsorted(edges, first, side="right").astype(int).tolist()


class NumericCsvSource:
    """A CSV of image ids and numeric targets: items ``(image (H,W,C) uint8, y (T,) float32, None)``."""

    def __init__(self, csv_path: str, image_dir: str, image_col: str = "", label_col: str = "", in_chans: int = 3):
        self.in_chans = in_chans
        self._rows = read_csv_rows(csv_path, "csv")
        cols = list(self._rows[0].keys())
        if len(cols) < 2 and not label_col:
            raise ConfigError(f"--csv: {csv_path!r} has one column ({cols[0]!r}); a regression CSV needs an image id "
                              "column and one or more numeric target columns (--label-col a,b)")
        image_col = image_col or cols[0]
        self.names = [c.strip() for c in label_col.split(",")] if label_col else [cols[1]]
        for opt, col in [("image-col", image_col)] + [("label-col", c) for c in self.names]:
            if col not in cols:
                raise ConfigError(f"--{opt}: column {col!r} not in {csv_path!r} (columns: {', '.join(cols)})")
        columns = []
        for name in self.names:
            values = csv_column(self._rows, name, "label-col")
            bad = next((i for i, v in enumerate(values) if not is_numeric_column([v])[0]), None)
            if bad is not None:
                raise ConfigError(f"--label-col: row {bad + 2} of {csv_path!r} has {values[bad]!r} in column {name!r}, "
                                  "not a number; regression needs numbers (for labels use --task classify)")
            columns.append([_float(v) for v in values])
        self.values = np.asarray(columns, dtype=np.float64).T  # (N, T)
        self.ids = [r[image_col] for r in self._rows]
        self.paths = match_image_ids(self.ids, image_dir)
        self.targets = _bins(self.values[:, 0])

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> Tuple[np.ndarray, torch.Tensor, None]:
        return load_image(self.paths[i], self.in_chans), self.target(i), None

    def target(self, i: int) -> torch.Tensor:
        """Sample ``i``'s targets, float32 (T,) (no file is read)."""
        return torch.tensor(self.values[i], dtype=torch.float32)

    def files(self, i: int) -> List[str]:
        """The files behind sample ``i`` (the decoded-image cache's key)."""
        return [self.paths[i]]

    def column(self, name: str, option: str) -> List[str]:
        return csv_column(self._rows, name, option)

    def path(self, i: int) -> str:
        return self.paths[i]


class ShapesAreaSource:
    """``--data shapes`` for regression: each shapes image with the share of its pixels the shape covers."""

    def __init__(self, n: int = 800, seed: int = 0):
        self.shapes = ShapesSource(n, seed=seed)
        self.names = ["area"]
        self.values = np.asarray([[float((self.shapes[i][2] > 0).mean())] for i in range(n)])
        self.targets = _bins(self.values[:, 0])

    def __len__(self) -> int:
        return len(self.shapes)

    def __getitem__(self, i: int) -> Tuple[np.ndarray, torch.Tensor, None]:
        return self.shapes[i][0], torch.tensor(self.values[i], dtype=torch.float32), None

    def path(self, i: int) -> str:
        return self.shapes.path(i)


def target_stats(values: np.ndarray, names: Sequence[str]) -> Dict[str, Any]:
    """The targets' names, mean, std (1 where constant), min and max per column of ``values`` (N, T)."""
    std = values.std(axis=0)
    return {"targets": list(names), "mean": values.mean(axis=0).tolist(),
            "std": np.where(std > 0, std, 1.0).tolist(), "min": values.min(axis=0).tolist(),
            "max": values.max(axis=0).tolist()}


class Standardized:
    """A view of a numeric source whose targets are ``(y - mean) / std`` (float32, (T,))."""

    def __init__(self, source: Any, stats: Dict[str, Any]):
        self.source, self.targets = source, source.targets
        self.mean = torch.tensor(stats["mean"], dtype=torch.float32)
        self.std = torch.tensor(stats["std"], dtype=torch.float32)
        if hasattr(source, "ids"):
            self.ids = source.ids

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> Tuple[np.ndarray, torch.Tensor, None]:
        image, y, _ = self.source[i]
        return image, (y - self.mean) / self.std, None

    def target(self, i: int) -> torch.Tensor:
        return (self.source.target(i) - self.mean) / self.std

    def files(self, i: int) -> Optional[List[str]]:
        fn = getattr(self.source, "files", None)
        return fn(i) if callable(fn) else None

    def column(self, name: str, option: str) -> List[str]:
        return self.source.column(name, option)

    def path(self, i: int) -> str:
        return self.source.path(i)


def raw_targets(source: Any) -> np.ndarray:
    """(N, T) float64 targets, in the original units exactly as read, of a :class:`Standardized` source or a
    (nested) :class:`~kernel.data.Subset` of one, in its order."""
    if isinstance(source, Subset):
        return raw_targets(source.source)[source.indices]
    return source.source.values


def build_regress_data(opts: Any) -> Tuple[Any, Any, Any, Dict[str, Any]]:
    """(train, validation, the whole labelled set, target stats) for ``opts``: a CSV under ``--data`` or shapes."""
    if opts.val_data:
        raise ConfigError("--val-data: regression reads one CSV; use --val-split (or --folds)")
    if opts.data == "shapes":
        raw: Any = ShapesAreaSource(800, seed=opts.seed)
    elif not opts.csv:
        raise ConfigError("--task regress: give the targets as --csv FILE (an id column and numeric columns) under "
                          "--data, or --data shapes for the demo")
    else:
        csv_path = opts.csv if os.path.isabs(opts.csv) else os.path.join(opts.data, opts.csv)
        if not os.path.isfile(csv_path):
            raise ConfigError(f"--csv: {csv_path!r} not found; give it relative to --data")
        img_dir = os.path.join(opts.data, opts.image_dir) if opts.image_dir else opts.data
        raw = NumericCsvSource(csv_path, img_dir, opts.image_col, opts.label_col, opts.in_chans)
    stats = target_stats(raw.values, raw.names)
    full = Standardized(raw, stats)
    if opts.val_split <= 0:
        raise ConfigError("--val-split: 0 leaves no validation data; give a split such as 0.2")
    tr, va = stratified_split(full.targets, opts.val_split, opts.seed)
    if not va:
        raise ConfigError(f"--val-split {opts.val_split}: too few images ({len(full)}) to hold any out")
    return Subset(full, tr), Subset(full, va), full, stats
