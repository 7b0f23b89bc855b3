"""The run's text outputs, each written by one function, atomically: CSV tables, JSON, ``metrics.csv``.

``metrics.csv`` is rewritten from the whole history (kept in the checkpoint), so a resumed run's
table stays whole; ``summary.json`` and ``classes.json`` go through :func:`write_json`.
"""
from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from ..paths import atomic_write

__all__ = ["write_csv", "read_json", "write_json", "write_metrics_csv"]


def write_csv(rows: Sequence[Sequence[Any]], path: str | os.PathLike) -> str:
    """Write rows (the first one the header) as CSV with ``\\n`` line ends; returns the path."""
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    atomic_write(path, lambda tmp: Path(tmp).write_text(buf.getvalue(), encoding="utf-8"))
    return str(path)


def write_json(data: Any, path: str | os.PathLike) -> None:
    """Write ``data`` as indented JSON."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8"))


def read_json(path: str | os.PathLike) -> Optional[Dict[str, Any]]:
    """A JSON file written by :func:`write_json` (e.g. a run's ``summary.json``), or None when it is missing
    or unreadable."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def write_metrics_csv(history: List[Dict[str, Any]], columns: Sequence[str], path: str | os.PathLike) -> str:
    """``metrics.csv``: one row per epoch of ``history``, the given columns (missing values left blank)."""
    fmt = lambda v: f"{v:.6g}" if isinstance(v, float) else ("" if v is None else v)  # noqa: E731
    return write_csv([list(columns)] + [[fmt(row.get(c)) for c in columns] for row in history], path)
