"""Segmentation mask files: read any common mask kind as class indices, write palette PNGs.

In memory a mask is an (H, W) uint8 array of class indices. On disk it may be:

- an index image: mode L, or mode P where the palette INDEX is the class (not the colour);
- a binary image: only the values 0 and 255 (or 0 and 1), or mode "1" -> 0/1;
- a 16-bit image (I;16, I) whose values are small class indices (0..255);
- a colour image (RGB/RGBA) mapped to indices by a colour table from ``classes.csv``
  (``name,r,g,b``, one row per class, background first); a grey RGB image reads as L.

Class names come from ``classes.txt`` (one per line) or ``classes.csv`` next to the masks.
"""
from __future__ import annotations

import csv
import os
import tempfile
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image

from ...errors import ConfigError

__all__ = ["MAX_CLASSES", "read_mask", "read_class_names", "voc_colormap", "palette", "write_mask_png"]

Color = Tuple[int, int, int]
MAX_CLASSES = 256  # an 8-bit index mask (and a PNG palette) holds at most 256 classes
_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")
_CSV_HEADER = ["name", "r", "g", "b"]


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _rgb(color: object) -> Optional[Color]:
    """``color`` as an (r, g, b) tuple of ints 0..255, or None when it is not one."""
    try:
        rgb = tuple(int(c) for c in color)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        return None
    return rgb if len(rgb) == 3 and all(0 <= c <= 255 for c in rgb) else None  # type: ignore[return-value]


def _index(value: object, limit: int) -> Optional[int]:
    """``value`` as an int in 0..limit-1 (bools refused), or None."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        return None
    return int(value) if 0 <= value < limit else None


def _binary_or_index(arr: np.ndarray) -> np.ndarray:
    """(H, W) uint8: 0/255 masks become 0/1; anything else is already class indices."""
    counts = np.bincount(arr.ravel(), minlength=256)
    if counts[255] and not counts[1:255].any():
        return (arr == 255).astype(np.uint8)
    return arr


def _color_table(colors: Mapping[Color, int]) -> Tuple[np.ndarray, np.ndarray]:
    """Sorted packed 0xRRGGBB keys and their class indices, for a searchsorted lookup."""
    keys, idx = [], []
    for color, index in colors.items():
        rgb, i = _rgb(color), _index(index, MAX_CLASSES)
        if rgb is None or i is None:
            raise ConfigError(f"colour table entry {color!r}: {index!r} is not (r, g, b) in 0..255 -> index "
                              f"0..{MAX_CLASSES - 1}; fix classes.csv")
        keys.append((rgb[0] << 16) | (rgb[1] << 8) | rgb[2])
        idx.append(i)
    order = np.argsort(keys)
    return np.asarray(keys, dtype=np.int64)[order], np.asarray(idx, dtype=np.uint8)[order]


def _map_colors(rgb: np.ndarray, colors: Mapping[Color, int], name: str) -> np.ndarray:
    """(H, W, 3) uint8 colours -> (H, W) uint8 indices; ConfigError at the first unknown colour."""
    keys, idx = _color_table(colors)
    packed = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
    pos = np.minimum(np.searchsorted(keys, packed), keys.size - 1)
    found = keys[pos] == packed
    if not found.all():
        row, col = divmod(int(np.argmin(found.ravel())), rgb.shape[1])
        r, g, b = (int(c) for c in rgb[row, col])
        n_unknown = np.unique(packed[~found]).size
        raise ConfigError(f"mask {name!r}: colour ({r}, {g}, {b}) at row {row}, column {col} is not in the "
                          f"colour table ({n_unknown} unknown colour(s), {keys.size} known); add a row "
                          f"'<class name>,{r},{g},{b}' to classes.csv, or repaint those pixels")
    return idx[pos]


def read_mask(path: Union[str, os.PathLike], colors: Optional[Mapping[Color, int]] = None) -> np.ndarray:
    """Read a mask file as an (H, W) uint8 array of class indices.

    ``colors`` maps (r, g, b) -> class index (from :func:`read_class_names`) and is needed for
    colour (RGB/RGBA; alpha ignored) masks; index, binary and 16-bit masks ignore it.
    """
    name = str(path)
    try:
        with Image.open(path) as img:
            img.load()
            mode, arr = img.mode, np.array(img)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise ConfigError(f"mask {name!r} cannot be read ({_one_line(e)}); check the path and that it is "
                          "an image file (PNG is best for masks)") from None
    if mode == "1":
        return arr.astype(np.uint8)
    if mode in ("P", "PA"):  # the index is the class; the palette colour is only for display
        return np.ascontiguousarray(arr if arr.ndim == 2 else arr[..., 0])
    if mode in ("L", "LA"):
        return _binary_or_index(np.ascontiguousarray(arr if arr.ndim == 2 else arr[..., 0]))
    if mode in _SIXTEEN_BIT:
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi > 255:
            bad = lo if lo < 0 else hi
            raise ConfigError(f"mask {name!r} ({mode}) holds the value {bad}; class indices must be 0..255, "
                              "so save the mask as 8-bit L or P (binary masks as 0/255 or 0/1)")
        return _binary_or_index(arr.astype(np.uint8))
    if mode in ("RGB", "RGBA"):
        rgb = arr[..., :3]
        if colors:
            return _map_colors(rgb, colors, name)
        if (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 0] == rgb[..., 2]).all():
            return _binary_or_index(np.ascontiguousarray(rgb[..., 0]))  # a grey image saved as RGB
        raise ConfigError(f"mask {name!r} is a colour ({mode}) mask; a colour mask needs classes.csv with "
                          "a name,r,g,b header and one row per class (background first) next to the masks")
    raise ConfigError(f"mask {name!r} has image mode {mode!r}, which is not a mask; save it as an 8-bit "
                      "index (L or P), binary (0/255) or colour (RGB with classes.csv) PNG")


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")  # -sig: spreadsheets often write a BOM
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{str(path)!r} cannot be read ({_one_line(e)}); save it as UTF-8 text") from None


def _check_names(names: List[str], lines: List[int], path: Path) -> None:
    if not names:
        raise ConfigError(f"{str(path)!r} lists no classes; write one class name per row, background first")
    if len(names) > MAX_CLASSES:
        raise ConfigError(f"{str(path)!r} lists {len(names)} classes; masks hold at most {MAX_CLASSES}")
    seen: Dict[str, int] = {}
    for n, line in zip(names, lines):
        if n in seen:
            raise ConfigError(f"{str(path)!r} line {line}: class {n!r} is already on line {seen[n]}; "
                              "each class must appear once")
        seen[n] = line


def _read_classes_txt(path: Path) -> List[str]:
    rows = [(i, s.strip()) for i, s in enumerate(_read_text(path).splitlines(), 1) if s.strip()]
    names = [n for _, n in rows]
    _check_names(names, [i for i, _ in rows], path)
    return names


def _parse_rgb(row: List[str], line: int, path: Path) -> Color:
    try:
        rgb = tuple(int(v.strip()) for v in row[1:])
    except ValueError:
        rgb = ()
    if len(rgb) != 3 or not all(0 <= c <= 255 for c in rgb):
        raise ConfigError(f"{str(path)!r} line {line}: r,g,b {','.join(row[1:])!r} are not three integers "
                          "0..255; write rows as name,r,g,b, e.g. road,128,64,128")
    return rgb  # type: ignore[return-value]


def _read_classes_csv(path: Path) -> Tuple[List[str], Dict[Color, int]]:
    reader = csv.reader(_read_text(path).splitlines())
    names: List[str] = []
    lines: List[int] = []
    colors: Dict[Color, int] = {}
    where: Dict[Color, int] = {}
    header_seen = False
    for row in reader:
        line = reader.line_num
        if not any(v.strip() for v in row):
            continue
        if not header_seen:
            if [v.strip().lower() for v in row] != _CSV_HEADER:
                raise ConfigError(f"{str(path)!r} line {line}: header is {','.join(row)!r}; the first line "
                                  "must be name,r,g,b")
            header_seen = True
            continue
        if len(row) != 4 or not row[0].strip():
            raise ConfigError(f"{str(path)!r} line {line}: {','.join(row)!r} is not name,r,g,b; write one "
                              "row per class, e.g. road,128,64,128")
        rgb = _parse_rgb(row, line, path)
        if rgb in colors:
            raise ConfigError(f"{str(path)!r} line {line}: colour {rgb} is already class {names[colors[rgb]]!r} "
                              f"(line {where[rgb]}); give each class its own colour")
        colors[rgb], where[rgb] = len(names), line
        names.append(row[0].strip())
        lines.append(line)
    _check_names(names, lines, path)
    return names, colors


def read_class_names(folder: Union[str, os.PathLike]) -> Tuple[Optional[List[str]], Optional[Dict[Color, int]]]:
    """Class names (index order, background first) and colour table from a mask folder.

    ``classes.txt`` -> (names, None); ``classes.csv`` (``name,r,g,b``) -> (names, {(r, g, b): index});
    neither -> (None, None). Both present, or a malformed file, raises ConfigError.
    """
    folder = Path(folder)
    txt, table = folder / "classes.txt", folder / "classes.csv"
    if txt.is_file() and table.is_file():
        raise ConfigError(f"{str(folder)!r} holds both classes.txt and classes.csv; keep one (classes.csv "
                          "when the masks are colour images, classes.txt otherwise)")
    if txt.is_file():
        return _read_classes_txt(txt), None
    if table.is_file():
        return _read_classes_csv(table)
    return None, None


def voc_colormap(n: int = MAX_CLASSES) -> np.ndarray:
    """(n, 3) uint8 Pascal VOC colours: index bits interleaved into the high bits of r, g, b.

    Index 0 is black and the colours of indices 0..255 are all distinct (each index bit lands on
    its own colour bit), with neighbouring indices far apart in colour.
    """
    idx = np.arange(n, dtype=np.int64)
    cmap = np.zeros((n, 3), dtype=np.int64)
    for j in range(8):
        for ch in range(3):
            cmap[:, ch] |= ((idx >> (3 * j + ch)) & 1) << (7 - j)
    return cmap.astype(np.uint8)


def palette(num_classes: int, colors: Union[Mapping[Color, int], Sequence[Color], None] = None) -> List[int]:
    """A 768-entry PIL palette ([r0, g0, b0, r1, ...]) for masks of ``num_classes`` (1..256) classes.

    ``colors`` ((r, g, b) -> index, as from :func:`read_class_names`, or a sequence of colours in
    index order) come first; every other entry gets the next VOC colour not already used, so all
    256 entries stay distinct.
    """
    if not _index(num_classes, MAX_CLASSES + 1):  # None (not an int in range) or 0
        raise ConfigError(f"palette: {num_classes!r} classes; a palette holds 1..{MAX_CLASSES} classes")
    pairs = list(colors.items()) if isinstance(colors, Mapping) else [(c, i) for i, c in enumerate(colors or ())]
    table: Dict[int, Color] = {}
    for color, index in pairs:
        rgb, i = _rgb(color), _index(index, num_classes)
        if rgb is None or i is None:
            raise ConfigError(f"palette: colour {color!r} for index {index!r} is not (r, g, b) in 0..255 for "
                              f"an index below {num_classes}; fix classes.csv")
        if i in table or rgb in table.values():
            raise ConfigError(f"palette: index {i} or colour {rgb} is given twice; give each class "
                              "one colour of its own")
        table[i] = rgb
    used = set(table.values())
    spare = (tuple(int(c) for c in rgb) for rgb in voc_colormap(MAX_CLASSES).tolist())
    out: List[int] = []
    for i in range(MAX_CLASSES):
        if i not in table:
            table[i] = next(c for c in spare if c not in used)  # type: ignore[assignment]
        out.extend(table[i])
    return out


def write_mask_png(mask: np.ndarray, path: Union[str, os.PathLike], palette: Sequence[int]) -> None:
    """Write an (H, W) integer mask (values 0..255) as a mode "P" PNG carrying ``palette``.

    Any viewer shows the palette colours, while the stored pixel values stay the class indices.
    The file appears in one step (temp file in the same folder, then ``os.replace``), so a crash
    never leaves a truncated mask behind.
    """
    name = str(path)
    mask = np.asarray(mask)
    if mask.ndim != 2 or not (mask.dtype == np.bool_ or np.issubdtype(mask.dtype, np.integer)):
        raise ConfigError(f"mask for {name!r} is {mask.dtype} with shape {mask.shape}; pass (H, W) integer "
                          "class indices")
    if mask.size and (int(mask.min()) < 0 or int(mask.max()) > 255):
        bad = int(mask.min()) if int(mask.min()) < 0 else int(mask.max())
        raise ConfigError(f"mask for {name!r} holds the value {bad}; a PNG mask holds class indices 0..255")
    pal = [int(v) for v in palette]
    if len(pal) % 3 or len(pal) > 3 * MAX_CLASSES or not all(0 <= v <= 255 for v in pal):
        raise ConfigError(f"palette for {name!r} has {len(pal)} entries; pass up to 768 values 0..255 "
                          "(r, g, b per class), e.g. from palette()")
    img = Image.fromarray(mask.astype(np.uint8))
    img.putpalette(pal + [0] * (3 * MAX_CLASSES - len(pal)))  # L + palette -> mode P, indices unchanged
    target = Path(path)
    tmp = ""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        with os.fdopen(fd, "wb") as fh:
            img.save(fh, format="PNG")
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; masks are meant to be opened and shared
        os.replace(tmp, target)
    except BaseException as e:
        if tmp and os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(e, OSError):
            raise ConfigError(f"cannot write mask {name!r} ({_one_line(e)}); check the folder is writable "
                              "and has space") from None
        raise
