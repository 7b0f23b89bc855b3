"""The declared seams of a training run: how it reads the time, whom it tells of a save, how it checks its group.

A test that must not depend on the machine's speed, or a user's script that wants to hear of every save, changes
these through :func:`install` instead of replacing anything of the bundle from outside:

``clock``      wall-clock seconds (``time.time``); the time budget reads time only through it (the time limit,
               ``--save-every``, the measured cost of saving). ``tests/hooks`` installs a clock that ticks one
               second per read, so saves land at the same updates on any machine.
``on_saved``   callbacks ``(epoch, batch)`` run by every process after each save of ``last.pt`` (``batch`` 0: at
               an epoch's end; else inside epoch ``epoch`` after ``batch`` batches).
``self_test``  the all-reduce check of a multi-process run (:func:`kernel.engine.distributed.self_test`).

The seams are per process; :mod:`kernel.train` reads them when a run starts.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, fields
from typing import Any, Callable, List

import torch

from ..engine.distributed import self_test

__all__ = ["Seams", "SEAMS", "install"]


@dataclass
class Seams:
    clock: Callable[[], float] = time.time
    on_saved: List[Callable[[int, int], None]] = field(default_factory=list)
    self_test: Callable[[torch.device], None] = self_test


SEAMS = Seams()


def install(**changes: Any) -> None:
    """Set seams of this process: ``clock=fn``, ``self_test=fn``, ``on_saved=fn`` (added to the callbacks)."""
    known = {f.name for f in fields(Seams)}
    for name, value in changes.items():
        if name not in known:
            raise TypeError(f"install(): unknown seam {name!r} (known: {', '.join(sorted(known))})")
        if name == "on_saved":
            SEAMS.on_saved.append(value)
        else:
            setattr(SEAMS, name, value)
