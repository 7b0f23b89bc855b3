"""End-of-epoch files written on a thread while the next epoch trains (``--async-save``, the default).

At an epoch's end the checkpoint is copied synchronously: every tensor is copied to CPU memory before the
next optimizer step can change it (:func:`cpu_copy`). One background thread then writes the files: last.pt,
best.pt, model.safetensors and metrics.csv. The files and their atomic writes are unchanged, and a kill
during the write leaves the previous files whole. This costs a copy of the weights and the optimizer state in RAM
during the write; ``--no-async-save`` writes before going on, as a run of several processes does: each of
its processes must hear of a save at the same step (a callback that pauses one, as the kill tests' does,
would otherwise leave the other waiting for it in an all-reduce).

Whatever reads these files, or writes a checkpoint of its own, first waits for the write in flight:
- a save inside an epoch (``--save-every``, SIGTERM, the time limit);
- the run's end, also when it fails;
- the k-fold pass and the predictions after it.

A write's ``done`` callback (:meth:`~kernel.run.budget.StopControl.saved`: the declared ``on_saved`` seam) runs
on the main thread once the files are on disk. That happens at the first optimizer update after the write
ends (:meth:`BackgroundSaver.poll`), or when the write is waited for. A write's error (a full disk: one line)
is raised there too.
"""
from __future__ import annotations

import logging
import threading
from typing import Any, Callable, Optional

import torch

__all__ = ["BackgroundSaver", "cpu_copy"]

log = logging.getLogger("kernel")


def cpu_copy(obj: Any) -> Any:
    """``obj`` (nested dicts, lists and tuples of tensors and builtins) with every tensor copied to the CPU."""
    if torch.is_tensor(obj):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: cpu_copy(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(cpu_copy(v) for v in obj)
    return obj


class BackgroundSaver:
    """One write at a time on a thread (see the module doc); ``enabled=False`` writes at once, in the caller."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._thread: Optional[threading.Thread] = None
        self._done: Optional[Callable[[], None]] = None
        self._error: Optional[BaseException] = None

    def submit(self, write: Callable[[], None], done: Callable[[], None]) -> None:
        """Run ``write()`` (after the write in flight), then ``done()`` on the caller's thread."""
        self.wait()
        if not self.enabled:
            write()
            done()
            return
        self._done = done
        # not a daemon: an interpreter that exits (an error elsewhere) still finishes the files
        self._thread = threading.Thread(target=self._run, args=(write,), name="kernel-save")
        self._thread.start()

    def _run(self, write: Callable[[], None]) -> None:
        try:
            write()
        except BaseException as e:  # raised on the main thread by wait()
            self._error = e

    def poll(self) -> None:
        """When the write in flight has ended: its callback (or its error), here."""
        if self._thread is not None and not self._thread.is_alive():
            self.wait()

    def wait(self, quiet: bool = False) -> None:
        """Wait for the write in flight, then run its callback or raise its error (``quiet``: log the error
        instead, for a run that is already failing with another one)."""
        if self._thread is None:
            return
        self._thread.join()
        self._thread = None
        error, done = self._error, self._done
        self._error = self._done = None
        if error is not None:
            if not quiet:
                raise error
            log.error("the end-of-epoch save failed too: %s: %s", type(error).__name__, error)
            return
        if done is not None:
            done()
