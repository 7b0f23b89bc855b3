"""Never lose a session: a time budget, checkpoints inside epochs, and SIGTERM/SIGINT that save first.

Kaggle kills a session at 12 hours wherever it is, Colab disconnects, preemptible machines send SIGTERM.
:class:`StopControl` is consulted by the training loop after every optimizer update: it saves ``last.pt``
inside the epoch every ``--save-every``, and stops the run (after saving) when a signal came or when
the next stretch of work would not fit in ``--time-limit`` with a margin. In a multi-process run the
processes take every decision together (one small all-reduce), so they stop at the same step.
"""
from __future__ import annotations

import logging
import os
import re
import signal
import time
from typing import Any, Callable, Dict, Optional, Sequence

from ..engine.distributed import all_reduce_max, world
from ..paths import detect_platform
from ..errors import ConfigError

__all__ = ["KAGGLE_TIME_LIMIT", "HOSTED_SAVE_EVERY", "parse_duration", "resolve_durations", "process_start",
           "StopSignals", "StopControl"]

log = logging.getLogger("kernel")
KAGGLE_TIME_LIMIT = "11h30m"  # a Kaggle session ends at 12 h: 30 minutes to save, predict and write outputs
HOSTED_SAVE_EVERY = "30m"     # mid-epoch checkpoints on Kaggle and Colab; none elsewhere by default
RESERVE_S = 10.0              # seconds kept in hand beyond the measured cost of saving (and predicting)...
RESERVE_SHARE = 0.05          # ... but never more than this share of the limit: a 60 s budget keeps 3 s


def parse_duration(text: Any, option: str) -> Optional[float]:
    """``11h30m``, ``90m``, ``45s``, ``1h``, a bare number of seconds -> seconds; ``0``, ``""``, ``none`` -> None."""
    if text is None or str(text).strip().lower() in ("", "0", "none", "off"):
        return None
    value = str(text).strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", value):
        return float(value)
    parts = re.fullmatch(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?", value)
    if not parts or not any(parts.groups()):
        raise ConfigError(f"--{option} {text!r}: give a duration such as 11h30m, 90m, 45s or a number of seconds")
    h, m, s = (float(g) if g else 0.0 for g in parts.groups())
    return h * 3600 + m * 60 + s


def resolve_durations(time_limit: str, save_every: str) -> Dict[str, Optional[float]]:
    """Seconds of ``--time-limit`` and ``--save-every``; ``auto`` takes the platform's default (see above)."""
    where = detect_platform()
    limit = KAGGLE_TIME_LIMIT if time_limit == "auto" and where == "kaggle" else (
        None if time_limit == "auto" else time_limit)
    every = HOSTED_SAVE_EVERY if save_every == "auto" and where in ("kaggle", "colab") else (
        None if save_every == "auto" else save_every)
    return {"time_limit": parse_duration(limit, "time-limit"), "save_every": parse_duration(every, "save-every")}


def process_start(clock: Callable[[], float] = time.time) -> float:
    """When this process (or the run's launcher, ``KERNEL_START_TIME``) started, as a wall-clock time of ``clock``.

    The time limit counts from there: on Kaggle the clock starts with the session, not with training.
    """
    if os.environ.get("KERNEL_START_TIME"):
        return float(os.environ["KERNEL_START_TIME"])
    try:
        with open("/proc/self/stat") as fh:
            ticks = int(fh.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as fh:
            uptime = float(fh.read().split()[0])
        return clock() - uptime + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return clock()


class StopSignals:
    """SIGTERM and SIGINT set a flag instead of killing the run mid-step; a second SIGINT interrupts at once.

    The stop is said once, by the main process of the run: a signal sent to the whole process group reaches
    every process (and a multi-process run's launcher passes SIGTERM on: a second copy)."""

    CODES = {signal.SIGTERM: 143, signal.SIGINT: 130}

    def __init__(self) -> None:
        self.received: Optional[int] = None
        self._old: Dict[int, Any] = {}
        self._say = True

    def __enter__(self) -> "StopSignals":
        self._say = world().main
        try:
            for sig in self.CODES:
                self._old[sig] = signal.signal(sig, self._handle)
        except ValueError:  # not the main thread (e.g. a notebook's worker thread): leave the defaults
            self._old = {}
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGINT and self.received == signal.SIGINT:
            raise KeyboardInterrupt
        first, self.received = self.received is None, signum
        # recorded before the warning: a second copy of the signal (a group SIGTERM, passed on by the launcher
        # too) can run this handler again in the middle of the logging call, and must find the stop recorded
        if self._say and first:
            log.warning("%s received: finishing this step, then saving last.pt", signal.Signals(signum).name)

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


class StopControl:
    """The decisions taken after each optimizer update: save inside the epoch, stop (see the module doc).

    ``save(epoch, batches_done, snapshot)`` writes a mid-epoch ``last.pt`` (the caller's closure). Time is read
    only from ``clock``; ``on_saved(epoch, batch)`` callbacks hear of every save (:meth:`saved`), those inside an
    epoch and, told by the epoch loop, those at an epoch's end (batch 0). See :mod:`kernel.run.seams`.
    """

    def __init__(self, *, time_limit: Optional[float], save_every: Optional[float], signals: StopSignals,
                 start: float, predict_reserve: Callable[[], float], clock: Callable[[], float] = time.time,
                 on_saved: Sequence[Callable[[int, int], None]] = ()):
        self.limit, self.every, self.signals, self.start = time_limit, save_every, signals, start
        self.predict_reserve, self.clock, self.on_saved = predict_reserve, clock, list(on_saved)
        # the first save's cost is unknown: guess 1 s (measured from the first save on)
        self.last_save, self.save_cost, self.update_time, self.val_time = clock(), 1.0, 0.0, 0.0
        self._last_update: Optional[float] = None
        self.reason = ""

    def remaining(self) -> float:
        return float("inf") if self.limit is None else self.start + self.limit - self.clock()

    def _needed(self) -> float:
        """Time to run the next update and the epoch's validation, save, and predict, with a margin."""
        margin = min(RESERVE_S, RESERVE_SHARE * self.limit) if self.limit else RESERVE_S
        return self.update_time * 2 + self.val_time + self.save_cost + self.predict_reserve() + margin

    def after_update(self, epoch: int, done: int, snapshot: Callable[[], Dict[str, Any]],
                     save: Callable[[int, int, Callable[[], Dict[str, Any]]], None]) -> bool:
        """Called by the loop after each update: maybe save; True to stop the epoch here (saved first)."""
        now = self.clock()
        if self._last_update is not None:
            self.update_time = 0.8 * self.update_time + 0.2 * (now - self._last_update) if self.update_time else \
                now - self._last_update
        self._last_update = now
        stop_signal = self.signals.received is not None
        stop_time = self.remaining() < self._needed()
        due = self.every is not None and now - self.last_save >= self.every
        # The processes of a run take the decisions together: the largest flag wins.
        decision = int(all_reduce_max(float(4 * stop_signal + 2 * stop_time + due)))
        if decision == 0:
            return False
        self.reason = "signal" if decision & 4 else "time_limit" if decision & 2 else ""
        t0 = self.clock()
        save(epoch, done, snapshot)
        self.save_cost, self.last_save = max(self.save_cost * 0.5, self.clock() - t0), self.clock()
        self._last_update = self.last_save  # the next update's time, not the save's
        self.saved(epoch, done)
        return bool(self.reason)

    def saved(self, epoch: int, batch: int) -> None:
        """``last.pt`` was saved (inside ``epoch`` after ``batch`` batches; 0: at its end): tell the callbacks."""
        for callback in self.on_saved:
            callback(epoch, batch)

    def before_epoch(self) -> bool:
        """At an epoch's start: stop here when not even a few updates and the validation would fit."""
        self._last_update = None  # the first update's time would hold the validation, save and pictures
        stop_signal = self.signals.received is not None
        stop_time = self.remaining() < self._needed()
        decision = int(all_reduce_max(float(2 * stop_signal + stop_time)))
        self.reason = "signal" if decision & 2 else "time_limit" if decision & 1 else ""
        return bool(self.reason)
