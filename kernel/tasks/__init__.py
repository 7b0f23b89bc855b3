"""Tasks: what is learned. ``--task`` picks one from :data:`TASKS`; see :mod:`kernel.tasks.base`.

* ``classify`` (:mod:`.classify`): a label, or a set of labels, per image.
* ``segment`` (:mod:`.segment`): a class (or a set of classes) per pixel.
* ``regress`` (:mod:`.regress`): one or several numbers per image.

``--task auto`` (:func:`detect_task`) asks each task whether the data is its own (``segment``: masks), in
registry order (``segment``: masks; ``regress``: numbers that are not all integers); ``classify`` takes
what no other task claims.
"""
from __future__ import annotations

from typing import Any, List

from ..errors import ConfigError
from ..registry import Registry, is_user_spec, load_user_object
from .base import Task
from .classify import ClassifyTask
from .regress import RegressTask
from .segment import SegmentTask

__all__ = ["TASKS", "Task", "get_task", "detect_task", "monitor_names"]

TASKS: Registry[Task] = Registry("task")
TASKS.register("classify", ClassifyTask())
TASKS.register("segment", SegmentTask())
TASKS.register("regress", RegressTask())


def detect_task(opts: Any, data: str) -> str:
    """``--task auto``: the first registered task whose :meth:`Task.detect` claims the data (``data``: an existing
    path or ``shapes``; ``opts``: the CSV and its columns), else the fallback task (``classify``)."""
    names = TASKS.names()
    claimed = next((n for n in names if TASKS.get(n).detect(opts, data)), None)
    return claimed or next(n for n in names if TASKS.get(n).auto_fallback)


def get_task(name: str) -> Task:
    """The task registered as ``name`` (ConfigError with the known names otherwise), or a user's Task subclass
    given as ``file.py:Class`` (``pkg.module:Class``): a Kaggle kernel cannot edit this package's registry."""
    if not is_user_spec(name):
        return TASKS.get(name)
    cls = load_user_object(name, "--task")
    if not (isinstance(cls, type) and issubclass(cls, Task)):
        raise ConfigError(f"--task {name!r}: {cls!r} is not a subclass of kernel.tasks.Task; see docs/ARCHITECTURE.md "
                          "(the task interface)")
    try:
        return cls()
    except TypeError as e:  # an abstract method left out, or a class attribute not set
        raise ConfigError(f"--task {name!r}: {e}") from None


def monitor_names() -> List[str]:
    """Every metric some task can monitor, in registry order, without repeats."""
    return list(dict.fromkeys(m for name in TASKS.names() for m in TASKS.get(name).monitors))
