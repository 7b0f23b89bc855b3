"""Image sources: an ImageFolder tree, a Kaggle-style CSV of ids and labels, a subset view; CSV id matching.

A *source* yields raw samples ``(image (H, W, C) uint8, target, mask | None)`` and has ``targets``
(one int per sample, used to stratify splits). :func:`match_image_ids` is the one rule that turns
a CSV's image ids into files, for training and prediction alike.
"""
from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..errors import ConfigError
from .images import IMAGE_EXTENSIONS, is_image_file, load_image

__all__ = ["FolderSource", "CsvSource", "Subset", "read_csv_rows", "match_image_ids"]


def read_csv_rows(path: str | os.PathLike, option: str, *, flag: bool = True) -> List[Dict[str, str]]:
    """The rows of a CSV with a header, as dicts; ConfigError naming ``--option`` (``option`` with
    ``flag=False``: a positional argument) when it has none."""
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        raise ConfigError(f"{'--' if flag else ''}{option}: {str(path)!r} has no rows")
    return rows


def csv_column(rows: List[Dict[str, str]], name: str, option: str) -> List[str]:
    """Column ``name`` of CSV ``rows`` as strings; a missing column is a one-line error naming ``--option``."""
    cols = list(rows[0].keys()) if rows else []
    if name not in cols:
        raise ConfigError(f"--{option}: column {name!r} is not in the CSV (columns: {', '.join(cols)})")
    return [str(r[name]).strip() for r in rows]


def match_image_ids(ids: Sequence[str], folder: str | os.PathLike) -> List[str]:
    """The image file of each id: ``folder/<id>`` when it exists, else the file whose stem is the id.

    Kaggle CSVs often give ids without an extension (``0a1b2c``) or with another one than the files;
    both match by stem. Raises ConfigError naming the first id without an image.
    """
    folder = Path(folder)
    stems: Dict[str, str] = {}
    for f in sorted(folder.iterdir()) if folder.is_dir() else []:
        if is_image_file(f):
            stems.setdefault(f.stem, str(f))
    paths = []
    for ident in ids:
        exact = folder / ident
        found = str(exact) if exact.is_file() else stems.get(Path(ident).stem if is_image_file(ident) else ident)
        if not found:
            raise ConfigError(f"--image-dir: no image for id {ident!r} in {str(folder)!r}; "
                              "check --image-dir/--image-col")
        paths.append(found)
    return paths


def _real_root_hint(root: Path) -> str:
    """When ``--data`` points at one class folder, its parent often is the ImageFolder root: say so."""
    parent = root.resolve().parent
    siblings = [d for d in parent.iterdir() if d.is_dir() and not d.name.startswith(".")
                and any(is_image_file(f) for f in d.iterdir())]
    if len(siblings) > 1 and root.resolve() in [d.resolve() for d in siblings]:
        return f"; did you mean --data {str(root.parent)!r}? It holds {len(siblings)} folders of images"
    return "; expected DIR/<class>/<image> with one folder per class"


class FolderSource:
    """ImageFolder layout ``root/<class>/<image>``; classes are the sorted folder names."""

    def __init__(self, root: str, in_chans: int = 3, classes: Optional[List[str]] = None):
        self.root, self.in_chans = Path(root), in_chans
        found = sorted(d.name for d in self.root.iterdir() if d.is_dir() and not d.name.startswith("."))
        self.classes = classes or found
        if not self.classes:
            loose = any(is_image_file(f) for f in self.root.iterdir())
            raise ConfigError(f"--data: {root!r} has no class folders{' (it holds images: a class folder?)' if loose else ''}"
                              f"{_real_root_hint(self.root)}")
        if classes is None and len(found) == 1:
            raise ConfigError(f"--data: {root!r} has a single class folder ({found[0]!r}); a classifier needs two "
                              f"or more{_real_root_hint(self.root)}")
        index = {c: i for i, c in enumerate(self.classes)}
        self.samples: List[Tuple[str, int]] = []
        for c in found:
            if c not in index:
                raise ConfigError(f"--val-data: class folder {c!r} is not a training class ({', '.join(self.classes)})")
            for f in sorted((self.root / c).rglob("*")):
                if f.suffix.lower() in IMAGE_EXTENSIONS:
                    self.samples.append((str(f), index[c]))
        if not self.samples:
            raise ConfigError(f"--data: no images ({', '.join(IMAGE_EXTENSIONS)}) under {root!r}")
        self.targets = [t for _, t in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> Tuple[np.ndarray, int, None]:
        return load_image(self.samples[i][0], self.in_chans), self.target(i), None

    def target(self, i: int) -> int:
        """Sample ``i``'s class index (no file is read)."""
        return self.samples[i][1]

    def files(self, i: int) -> List[str]:
        """The files behind sample ``i`` (the decoded-image cache's key)."""
        return [self.samples[i][0]]

    def path(self, i: int) -> str:
        return self.samples[i][0]


class CsvSource:
    """Kaggle-style CSV: an image id/path column and a label column (space-separated: multi-label).

    Ids are matched to files in ``image_dir`` with :func:`match_image_ids`.
    """

    def __init__(self, csv_path: str, image_dir: str, image_col: str = "", label_col: str = "",
                 in_chans: int = 3):
        self.in_chans = in_chans
        rows = read_csv_rows(csv_path, "csv")
        cols = list(rows[0].keys())
        if len(cols) < 2 and not label_col:
            raise ConfigError(f"--csv: {csv_path!r} has one column ({cols[0]!r}) and no label column; a training CSV "
                              "needs an image id column and a label column (id,label)")
        image_col = image_col or cols[0]
        label_col = label_col or cols[1]
        for opt, col in (("image-col", image_col), ("label-col", label_col)):
            if col not in cols:
                raise ConfigError(f"--{opt}: column {col!r} not in {csv_path!r} (columns: {', '.join(cols)})")
        labels = [str(r[label_col]).split() for r in rows]
        self.multilabel = any(len(ls) != 1 for ls in labels)
        self.classes = sorted({l for ls in labels for l in ls})
        index = {c: i for i, c in enumerate(self.classes)}
        self.ids = [r[image_col] for r in rows]
        self._rows = rows
        paths = match_image_ids(self.ids, image_dir)
        self.samples: List[Tuple[str, Any]] = [
            (path, [index[l] for l in ls] if self.multilabel else index[ls[0]]) for path, ls in zip(paths, labels)]
        # Stratify multi-label data by its first label.
        self.targets = [(t[0] if t else -1) if isinstance(t, list) else t for _, t in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def column(self, name: str, option: str) -> List[str]:
        """The CSV column ``name``, one value per sample (e.g. ``--group-col`` patient ids)."""
        return csv_column(self._rows, name, option)

    def label_matrix(self) -> np.ndarray:
        """(N, C) 0/1 labels of multi-label data (k-fold stratification)."""
        hot = np.zeros((len(self.samples), len(self.classes)), dtype=np.int64)
        for i, (_, t) in enumerate(self.samples):
            hot[i, t] = 1
        return hot

    def __getitem__(self, i: int) -> Tuple[np.ndarray, Any, None]:
        return load_image(self.samples[i][0], self.in_chans), self.target(i), None

    def target(self, i: int) -> Any:
        """Sample ``i``'s class index, or its multi-hot float (C,) labels for multi-label data (no file is read)."""
        target = self.samples[i][1]
        if self.multilabel:
            hot = torch.zeros(len(self.classes))
            hot[target] = 1.0
            return hot
        return target

    def files(self, i: int) -> List[str]:
        """The files behind sample ``i`` (the decoded-image cache's key)."""
        return [self.samples[i][0]]

    def path(self, i: int) -> str:
        return self.samples[i][0]


class Subset:
    """A view of ``source`` restricted to ``indices`` (keeps ``targets``)."""

    def __init__(self, source: Any, indices: Sequence[int]):
        self.source, self.indices = source, list(indices)
        self.targets = [source.targets[i] for i in self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> Any:
        return self.source[self.indices[i]]

    def target(self, i: int) -> Any:
        return self.source.target(self.indices[i])

    def files(self, i: int) -> Optional[List[str]]:
        """The files behind sample ``i``; None when the source has none (generated data)."""
        fn = getattr(self.source, "files", None)
        return fn(self.indices[i]) if callable(fn) else None

    def path(self, i: int) -> str:
        fn = getattr(self.source, "path", None)
        return fn(self.indices[i]) if callable(fn) else f"sample {self.indices[i]}"
