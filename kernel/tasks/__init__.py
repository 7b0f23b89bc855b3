"""Tasks: what is learned. ``--task`` picks one from :data:`TASKS`; see :mod:`kernel.tasks.base`.

* ``classify`` (:mod:`.classify`): a label, or a set of labels, per image.
* ``segment`` (:mod:`.segment`): a class (or a set of classes) per pixel.

``--task auto`` (:func:`detect_task`) is ``segment`` when the data has masks, else ``classify``.
"""
from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import List

from ..registry import Registry
from .base import Task
from .classify import ClassifyTask
from .segment import SegmentTask

__all__ = ["TASKS", "Task", "get_task", "detect_task", "monitor_names", "monitor_mode"]

TASKS: Registry[Task] = Registry("task")
TASKS.register("classify", ClassifyTask())
TASKS.register("segment", SegmentTask())


def detect_task(data: str, csv_file: str = "", rle_col: str = "", class_col: str = "") -> str:
    """``--task auto``: ``segment`` when the data has masks (``DIR/images`` + ``DIR/masks``, an RLE column
    in the CSV, or --rle-col/--class-col given), else ``classify``. ``data`` is an existing path or shapes."""
    from .segment.data import RLE_COLUMNS

    if rle_col or class_col:
        return "segment"
    root = Path(data)
    if data != "shapes" and (root / "images").is_dir() and (root / "masks").is_dir():
        return "segment"
    csv_path = Path(csv_file) if os.path.isabs(csv_file) else root / csv_file
    if csv_file and csv_path.is_file():
        with open(csv_path, newline="", encoding="utf-8") as fh:
            header = next(csv.reader(fh), [])
        if any(h.strip().lower() in RLE_COLUMNS for h in header):
            return "segment"
    return "classify"


def get_task(name: str) -> Task:
    """The task registered as ``name`` (ConfigError with the known names otherwise)."""
    return TASKS.get(name)


def monitor_names() -> List[str]:
    """Every metric some task can monitor, in registry order, without repeats."""
    return list(dict.fromkeys(m for name in TASKS.names() for m in TASKS.get(name).monitors))


def monitor_mode(monitor: str) -> str:
    """Whether ``monitor`` improves going up ("max": accuracy, IoU...) or down ("min": losses)."""
    return "min" if monitor.endswith("loss") else "max"
