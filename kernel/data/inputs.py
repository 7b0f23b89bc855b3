"""Prediction inputs: image files, folders (recursive, sorted) and CSVs of image ids, as (id, path) pairs.

Ids are file stems, or a CSV's ids as written. Paths are looked up as given, then (on Kaggle) under
the mounted inputs, like every other path option.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Sequence, Tuple

from ..paths import resolve_path
from ..errors import ConfigError
from .images import IMAGE_EXTENSIONS, is_image_file
from .sources import match_image_ids, read_csv_rows

__all__ = ["collect_inputs", "index_sample_ids"]


def _csv_items(csv_path: Path, image_dir: str, image_col: str) -> List[Tuple[str, str]]:
    """(id, path) per CSV row; ``image_dir`` defaults to the CSV's folder and may be relative to it."""
    rows = read_csv_rows(csv_path, "inputs", flag=False)  # positional: no --inputs flag
    col = image_col or list(rows[0])[0]
    if col not in rows[0]:
        raise ConfigError(f"--image-col: column {col!r} not in {str(csv_path)!r} (columns: {', '.join(rows[0])})")
    folder = Path(image_dir) if image_dir else csv_path.parent
    if image_dir and not folder.is_dir():
        if (csv_path.parent / image_dir).is_dir():  # relative to the CSV, as --image-dir is to --data
            folder = csv_path.parent / image_dir
        else:
            folder = Path(resolve_path(image_dir, "image-dir"))  # Kaggle inputs, or a one-line error
    ids = [str(r[col]) for r in rows]
    return list(zip(ids, match_image_ids(ids, folder)))


def collect_inputs(inputs: Sequence[str], *, image_dir: str = "", image_col: str = "") -> List[Tuple[str, str]]:
    """(id, image path) for every input, in order; raises ConfigError when nothing usable is found."""
    items: List[Tuple[str, str]] = []
    for given in inputs:
        path = Path(resolve_path(given, "inputs", flag=False))
        if path.is_dir():
            found = sorted(f for f in path.rglob("*") if f.is_file() and is_image_file(f))
            if not found:
                raise ConfigError(f"inputs: no images under {given!r} (looked for {', '.join(IMAGE_EXTENSIONS)})")
            items += [(f.stem, str(f)) for f in found]
        elif path.suffix.lower() == ".csv":
            items += _csv_items(path, image_dir, image_col)
        elif is_image_file(path):
            items.append((path.stem, str(path)))
        else:
            raise ConfigError(f"inputs: {given!r} is not an image, a folder of images or a CSV of image ids")
    if not items:
        raise ConfigError("inputs: no images found; give image files, folders or a CSV")
    return items


def index_sample_ids(ids: Sequence[str], order: Sequence[str]) -> List[int]:
    """The position among the predicted ``ids`` of each id of a sample submission's ``order``, matched by id or by
    file stem (Kaggle ids often lack the extension). ConfigError naming the first id without a prediction."""
    index: Dict[str, int] = {}
    for n, ident in enumerate(ids):
        index.setdefault(ident, n)
        index.setdefault(Path(ident).stem, n)
    missing = [i for i in order if i not in index and Path(i).stem not in index]
    if missing:
        raise ConfigError(f"--sample-submission: {len(missing)} of its {len(order)} ids have no predicted image "
                          f"(first: {missing[0]!r}); predict the competition's test images")
    return [index[i] if i in index else index[Path(i).stem] for i in order]
