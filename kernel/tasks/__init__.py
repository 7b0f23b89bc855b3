"""Tasks: what is learned. ``--task`` picks one from :data:`TASKS`; see :mod:`kernel.tasks.base`.

* ``classify`` (:mod:`.classify`): a label, or a set of labels, per image.
"""
from __future__ import annotations

from typing import List

from ..registry import Registry
from .base import Task
from .classify import ClassifyTask

__all__ = ["TASKS", "Task", "get_task", "monitor_names", "monitor_mode"]

TASKS: Registry[Task] = Registry("task")
TASKS.register("classify", ClassifyTask())


def get_task(name: str) -> Task:
    """The task registered as ``name`` (ConfigError with the known names otherwise)."""
    return TASKS.get(name)


def monitor_names() -> List[str]:
    """Every metric some task can monitor, in registry order, without repeats."""
    return list(dict.fromkeys(m for name in TASKS.names() for m in TASKS.get(name).monitors))


def monitor_mode(monitor: str) -> str:
    """Whether ``monitor`` improves going up ("max": accuracy, IoU...) or down ("min": losses)."""
    return "min" if monitor.endswith("loss") else "max"
