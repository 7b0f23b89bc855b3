"""Segmentation sources: image/mask folder pairs, Kaggle RLE CSVs, the built-in shapes; mask encodings.

A source yields ``(image (H, W, C) uint8, None, mask (H, W) int32)`` and has ``classes``, ``mode``,
``targets`` and ``path(i)``. One int32 plane lets geometric augmentation (nearest) move the mask in
any mode: ``binary``/``multiclass`` hold class indices (background 0, ignore pixels keep 255);
``multilabel`` (overlapping classes) holds bits, bit ``k`` = class ``k`` (at most 30 classes), made
channels by :func:`decode_multilabel` after augmentation. ``targets`` (for stratified splits only):
each sample's most frequent foreground class, 0 for none (``k + 1`` for class ``k`` of an RLE CSV).
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

from ...data import (DataSplit, Subset, csv_column, is_image_file, load_image, match_image_ids, read_csv_rows,
                     stratified_split)
from ...errors import ConfigError
from ...registry import did_you_mean
from .masks import palette, read_class_names, read_mask
from .rle import check_order, rle_decode
from .shapes_seg import ShapesSegSource

__all__ = ["MODES", "IGNORE_INDEX", "MAX_MULTILABEL", "encode_multilabel", "decode_multilabel", "infer_mode",
           "SegFolderSource", "RleCsvSource", "build_seg_sources"]

MODES = ("auto", "binary", "multiclass", "multilabel")
IGNORE_INDEX = 255  # index masks: pixels of this value are left out of losses and metrics
MAX_MULTILABEL = 30  # bits 0..29 of a non-negative int32
RLE_COLUMNS = ("encodedpixels", "rle_mask", "rle")  # guessed RLE column names, lowercase
CLASS_COLUMNS = ("classid", "class_id", "class")  # guessed class column names, lowercase


def encode_multilabel(masks: Sequence[np.ndarray]) -> np.ndarray:
    """Per-class (H, W) bool masks (class k at position k) -> one (H, W) int32 bit mask (bit k = class k)."""
    if not 1 <= len(masks) <= MAX_MULTILABEL:
        raise ConfigError(f"multilabel masks: {len(masks)} classes; the bit mask holds 1..{MAX_MULTILABEL}, "
                          "so merge classes or use mode 'multiclass'")
    bits = np.stack([np.asarray(m, dtype=bool) for m in masks]).astype(np.int32)
    return np.bitwise_or.reduce(bits << np.arange(len(masks), dtype=np.int32)[:, None, None], axis=0)


def decode_multilabel(mask: torch.Tensor, num_classes: int) -> torch.Tensor:
    """An int bit mask (H, W) or (N, H, W) -> float32 channels (C, H, W) or (N, C, H, W), 1 where bit k is set."""
    if not 1 <= num_classes <= MAX_MULTILABEL:
        raise ConfigError(f"decode_multilabel: {num_classes} classes; give 1..{MAX_MULTILABEL}")
    bits = torch.arange(num_classes, device=mask.device).view(num_classes, 1, 1)
    return ((mask.long().unsqueeze(-3) >> bits) & 1).float()


def infer_mode(num_classes: int, has_overlaps: bool) -> str:
    """``multilabel`` when classes overlap, else ``binary`` for 2 classes (background + one), else ``multiclass``."""
    return "multilabel" if has_overlaps else "binary" if num_classes <= 2 else "multiclass"


def _check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ConfigError(f"--seg-mode: {mode!r} is not a mode{did_you_mean(mode, MODES)}; choose one of "
                          f"{', '.join(MODES)}")
    return mode


def _names(files: List[Path]) -> str:
    return ", ".join(f.name for f in files[:3]) + (" ..." if len(files) > 3 else "")


def _by_stem(folder: Path, option: str) -> Dict[str, Path]:
    if not folder.is_dir():
        raise ConfigError(f"--{option}: {str(folder)!r} is not a folder; segmentation data needs "
                          "<data>/images/<name>.png and <data>/masks/<name>.png")
    files = sorted(f for f in folder.iterdir() if f.is_file() and is_image_file(f))
    stems = {f.stem: f for f in files}
    if len(stems) < len(files):
        dup = [f for f in files if stems[f.stem] != f]
        raise ConfigError(f"--{option}: {_names(dup)} in {str(folder)!r} repeat a name; keep one file per name")
    return stems


def _pair_files(img_dir: Path, mask_dir: Path, option: str) -> List[Tuple[Path, Path]]:
    """(image, mask) paths paired by stem; ConfigError naming unpaired or duplicate files."""
    images, masks = _by_stem(img_dir, option), _by_stem(mask_dir, option)
    for have, lack, what, kind, other in ((images, masks, "image", "mask", mask_dir),
                                          (masks, images, "mask", "image", img_dir)):
        alone = [have[s] for s in sorted(have) if s not in lack]
        if alone:
            raise ConfigError(f"--{option}: {len(alone)} of {len(have)} {what}(s) have no {kind} of the same "
                              f"name in {str(other)!r} ({_names(alone)}); give every {what} its {kind}")
    if not images:
        raise ConfigError(f"--{option}: no images in {str(img_dir)!r}; expected images/<name>.png")
    return [(images[s], masks[s]) for s in sorted(images)]


def _scan_pair(pair: Tuple[Path, Path], colors: Optional[Dict]) -> np.ndarray:
    """Read one mask, check its size against the image's header; its (256,) foreground value histogram."""
    img_path, mask_path = pair
    mask = read_mask(mask_path, colors)
    with Image.open(img_path) as img:
        w, h = img.size
    if mask.shape != (h, w):
        raise ConfigError(f"mask {mask_path.name} is {mask.shape[1]}x{mask.shape[0]} but image {img_path.name} is "
                          f"{w}x{h} (width x height); save the mask at its image's size")
    hist = np.bincount(mask.ravel(), minlength=256)
    hist[[0, IGNORE_INDEX]] = 0
    return hist


class SegFolderSource:
    """Pairs ``root/<images>/<stem>.<ext>`` with ``root/<masks>/<stem>.<ext>`` (any image extensions).

    Class names: ``classes`` and ``colors`` when given (the training set's, for validation), else
    ``classes.txt`` / ``classes.csv`` (colour masks: its colour table) in ``root`` or the masks
    folder, else numbered from the largest mask value (``background, class_1, ...``). Cost: every
    mask is read once here (threads; ~10 s per 10,000 PNG masks) to check sizes and values and find
    ``targets`` before training starts.
    """

    def __init__(self, root: str, in_chans: int = 3, images: str = "images", masks: str = "masks",
                 classes: Optional[List[str]] = None, colors: Optional[Dict] = None, option: str = "data"):
        self.root, self.in_chans = Path(root), in_chans
        self.pairs = _pair_files(self.root / images, self.root / masks, option)
        names, table = read_class_names(self.root)
        if names is None:
            names, table = read_class_names(self.root / masks)
        self.colors = colors if classes else table
        with ThreadPoolExecutor(max(1, min(8, os.cpu_count() or 1))) as pool:
            fg = list(pool.map(lambda p: _scan_pair(p, self.colors), self.pairs))
        self.targets = [int(h.argmax()) if h.any() else 0 for h in fg]
        top = max(int(np.flatnonzero(h).max()) if h.any() else 0 for h in fg)
        self.classes = list(classes or names or ["background"] + [f"class_{k}" for k in range(1, max(top, 1) + 1)])
        if top >= len(self.classes):
            bad, h = next((p[1], h) for p, h in zip(self.pairs, fg) if h[len(self.classes):].any())
            raise ConfigError(f"--{option}: mask {bad.name} holds class {int(np.flatnonzero(h).max())}, past the "
                              f"{len(self.classes)} classes ({', '.join(self.classes[:4])}...); fix the mask or "
                              "the class list")
        self.mode = infer_mode(len(self.classes), False)

    def __len__(self) -> int:
        return len(self.pairs)

    def path(self, i: int) -> str:
        return str(self.pairs[i][0])

    def target(self, i: int) -> None:
        return None  # the mask is the target

    def files(self, i: int) -> List[str]:
        """The image and mask files of sample ``i`` (the decoded-image cache's key)."""
        return [str(p) for p in self.pairs[i]]

    def __getitem__(self, i: int) -> Tuple[np.ndarray, None, np.ndarray]:
        img_path, mask_path = self.pairs[i]  # sizes were checked by the scan
        return load_image(img_path, self.in_chans), None, read_mask(mask_path, self.colors).astype(np.int32)


def _column(cols: List[str], given: str, option: str, guesses: Sequence[str], csv_path: str) -> str:
    """``given`` when it is a column, else the first column named like ``guesses`` (any case), else ""."""
    if given and given not in cols:
        raise ConfigError(f"--{option}: column {given!r} not in {csv_path!r} (columns: {', '.join(cols)}); "
                          f"name one of them{did_you_mean(given, cols)}")
    low = {c.lower(): c for c in cols}
    return given or next((low[g] for g in guesses if g in low), "")


def _class_order(values: Sequence[str]) -> List[str]:
    """Distinct class values, numerically sorted when all are numbers."""
    distinct = sorted(set(values))
    numeric = all(v.lstrip("+-").replace(".", "", 1).isdigit() for v in distinct)
    return sorted(distinct, key=float) if numeric else distinct


def _dominant(runs: List[Tuple[int, str]]) -> int:
    """``k + 1`` for the class ``k`` with the most RLE pixels (summed run lengths, no decoding), 0 for none."""
    counts: Dict[int, int] = {}
    for k, rle in runs:
        if rle.strip():  # a malformed cell counts 0 here: rle_decode names the fault when it is loaded
            counts[k] = counts.get(k, 0) + sum(int(v) if v.isdigit() else 0 for v in rle.split()[1::2])
    return max(counts, key=lambda k: (counts[k], -k)) + 1 if counts else 0


class RleCsvSource:
    """A Kaggle RLE CSV: ``id,rle_mask`` (a row per image; several are united) or ``ImageId,ClassId,
    EncodedPixels`` (a row per image and class; an empty RLE is no pixels). Columns are guessed (RLE:
    EncodedPixels/rle_mask/rle, class: ClassId/class_id/class, any case; image: the first); ids are
    matched in ``image_dir`` by :func:`match_image_ids`; masks take their image's size when loaded.
    No class column: ``binary``. With one: its sorted values (or ``classes``, in channel order) are
    the classes and the mode is ``multilabel``, since overlaps show only once every mask is decoded
    and Severstal-style data may overlap; ``mode="multiclass"`` (background 0, overlaps refused when
    loaded) is opt-in."""

    def __init__(self, csv_path: str, image_dir: str, rle_col: str = "", class_col: str = "", order: str = "F",
                 image_col: str = "", classes: Optional[List[str]] = None, mode: str = "auto", in_chans: int = 3):
        self.csv_path, self.order, self.in_chans = str(csv_path), check_order(order), in_chans
        rows = read_csv_rows(csv_path, "csv")
        cols = list(rows[0].keys())
        image_col = _column(cols, image_col, "image-col", (), self.csv_path) or cols[0]
        rle_given = rle_col
        rle_col = _column(cols, rle_col, "rle-col", RLE_COLUMNS, self.csv_path)
        if not rle_col:
            raise ConfigError(f"--rle-col: no RLE column in {self.csv_path!r} (columns: {', '.join(cols)}); "
                              "name the column of 'start length' pairs with --rle-col")
        class_col = _column(cols, class_col, "class-col", CLASS_COLUMNS, self.csv_path)
        self.mode = self._resolve_mode(_check_mode(mode), class_col, rows, classes, rle_given)
        index = {c: k for k, c in enumerate(self.names)}
        grouped: Dict[str, List[Tuple[int, str]]] = {}
        first: Dict[str, Dict[str, str]] = {}  # each image's first row: its other columns (e.g. a group)
        for r in rows:
            first.setdefault(str(r[image_col]), r)
            value = str(r[class_col]).strip() if class_col else ""
            if class_col and value not in index:
                raise ConfigError(f"--class-col: class {value!r} of image {r[image_col]!r} is not among the "
                                  f"classes given ({', '.join(self.names)}); add it to the class list")
            grouped.setdefault(str(r[image_col]), []).append((index.get(value, 0), str(r[rle_col] or "")))
        ids = list(grouped)
        self.ids, self._rows = ids, [first[i] for i in ids]
        self.samples = list(zip(ids, match_image_ids(ids, image_dir), (grouped[i] for i in ids)))
        self.targets = [_dominant(runs) for _, _, runs in self.samples]

    def _resolve_mode(self, mode: str, class_col: str, rows: List[Dict[str, str]],
                      classes: Optional[List[str]], rle_col: str) -> str:
        """Set ``names`` (the RLE classes) and ``classes`` (the task's, with background unless multilabel)."""
        if classes and not class_col:
            raise ConfigError("classes: a class list needs a class column; give --class-col (e.g. ClassId)")
        self.names = list(classes or []) or (_class_order([str(r[class_col]).strip() for r in rows]) if class_col
                                             else [rle_col or "foreground"])
        mode = ("multilabel" if class_col else "binary") if mode == "auto" else mode
        limit = {"binary": 1, "multilabel": MAX_MULTILABEL}.get(mode, 255)  # multiclass: 8-bit masks, palettes
        if len(self.names) > limit:
            raise ConfigError(f"--seg-mode {mode}: {self.csv_path!r} has {len(self.names)} classes, more than "
                              f"{limit}; use 'multilabel' (up to {MAX_MULTILABEL}) or 'multiclass' (up to 255)")
        self.classes = list(self.names) if mode == "multilabel" else ["background"] + self.names
        return mode

    def __len__(self) -> int:
        return len(self.samples)

    def column(self, name: str, option: str) -> List[str]:
        """The CSV column ``name``, one value per image (its first row's), e.g. ``--group-col``."""
        return csv_column(self._rows, name, option)

    def path(self, i: int) -> str:
        return self.samples[i][1]

    def target(self, i: int) -> None:
        return None  # the mask is the target

    def files(self, i: int) -> List[str]:
        """The image of sample ``i`` and the CSV its masks come from (the decoded-image cache's key)."""
        return [self.samples[i][1], str(self.csv_path)]

    def __getitem__(self, i: int) -> Tuple[np.ndarray, None, np.ndarray]:
        ident, path, runs = self.samples[i]
        image = load_image(path, self.in_chans)
        mask = np.zeros(image.shape[:2], dtype=np.int32)
        for k, rle in runs:
            try:
                m = rle_decode(rle, mask.shape, self.order).astype(bool)
            except ConfigError as e:
                raise ConfigError(f"{self.csv_path!r}, image {ident!r}: {e}") from None
            if self.mode == "multilabel":
                mask |= m.astype(np.int32) << k
            else:  # binary is one class: k == 0, rows of one image are united
                clash = m & (mask != 0) & (mask != k + 1)
                if clash.any():
                    raise ConfigError(f"{self.csv_path!r}, image {ident!r}: classes "
                                      f"{self.names[int(mask[clash][0]) - 1]!r} and "
                                      f"{self.names[k]!r} overlap on {int(clash.sum())} pixels; use mode "
                                      "'multilabel' for overlapping classes")
                mask[m] = k + 1
        return image, None, mask


def _pick_source(data: str, csv_file: str, image_dir: str, image_col: str, rle_col: str, class_col: str,
                 rle_order: str, mode: str, in_chans: int, seed: int, shapes_n: int) -> Any:
    if data == "shapes":
        if in_chans != 3 or mode not in ("auto", "multiclass"):
            raise ConfigError("--data shapes: the built-in shapes are RGB multiclass data; use --in-chans 3 and "
                              "--seg-mode auto, or your own data")
        return ShapesSegSource(shapes_n, seed=seed)
    if not os.path.isdir(data):
        raise ConfigError(f"--data: {data!r} is not a directory; give a folder with images/ and masks/, an RLE "
                          "CSV's folder (--csv) or 'shapes'")
    if csv_file:
        csv_path = csv_file if os.path.isabs(csv_file) else os.path.join(data, csv_file)
        if not os.path.isfile(csv_path):
            raise ConfigError(f"--csv: {csv_path!r} not found; give it relative to --data")
        return RleCsvSource(csv_path, os.path.join(data, image_dir) if image_dir else data, rle_col, class_col,
                            rle_order, image_col, mode=mode, in_chans=in_chans)
    source = SegFolderSource(data, in_chans)
    if mode == "multilabel" or (mode == "binary" and len(source.classes) != 2):
        raise ConfigError(f"--seg-mode {mode}: mask files hold one class per pixel ({len(source.classes)} classes "
                          f"in {data!r}); use 'auto' or 'multiclass'")
    source.mode = source.mode if mode == "auto" else mode
    return source


def build_seg_sources(data: str, *, val_data: str = "", val_split: float = 0.2, csv_file: str = "",
                      image_dir: str = "", image_col: str = "", rle_col: str = "", class_col: str = "",
                      rle_order: str = "F", mode: str = "auto", in_chans: int = 3, seed: int = 0,
                      shapes_n: int = 800) -> DataSplit:
    """Train/val sources from ``data``: 'shapes', an RLE CSV (``csv_file``) or a folder of image/mask pairs.

    Without ``val_data`` the images are split by :func:`kernel.data.stratified_split` on ``targets``
    (each image's main class), seeded. ``meta``: ``mode``, ``ignore_index`` (None for multilabel)
    and ``colors`` (one [r, g, b] per class); ``multilabel`` is True in the multilabel mode.
    """
    if val_data and (csv_file or data == "shapes"):
        raise ConfigError("--val-data works with image/mask folders; use --val-split with a CSV or shapes")
    source = _pick_source(data, csv_file, image_dir, image_col, rle_col, class_col, rle_order, _check_mode(mode),
                          in_chans, seed, shapes_n)
    classes, multilabel, n = list(source.classes), source.mode == "multilabel", len(source.classes)
    # Multilabel has no background channel: skip the palette's black.
    pal = palette(min(n + 1, 256))[3:] if multilabel else palette(n, getattr(source, "colors", None))
    meta = {"mode": source.mode, "ignore_index": None if multilabel else IGNORE_INDEX,
            "colors": [pal[3 * k:3 * k + 3] for k in range(n)]}
    if val_data:
        val = SegFolderSource(val_data, in_chans, classes=classes, colors=source.colors, option="val-data")
        return DataSplit(source, val, classes, multilabel, meta)
    if val_split <= 0:
        raise ConfigError("--val-split: 0 leaves no validation data; give --val-data or a split such as 0.2")
    tr, va = stratified_split(source.targets, val_split, seed)
    if not va:
        raise ConfigError(f"--val-split {val_split}: too few images ({len(source)}) to hold any out")
    return DataSplit(Subset(source, tr), Subset(source, va), classes, multilabel, meta, full=source)
