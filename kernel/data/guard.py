"""Unreadable files never end a run: a truncated, empty or foreign image is replaced, logged and counted.

A large real dataset almost always holds a broken file, and on Kaggle a traceback in epoch 7 costs the
whole session. :class:`ReadGuard` wraps every read of a sample:

* ``skip`` (the default): the sample is replaced by the next readable one (index ``i + 1``, ``i + 2``...),
  so the replacement depends only on the index, never on the worker or the resume point; the file is
  named once (a warning) and appended to ``bad_images.txt`` in the run folder;
* ``error``: the first unreadable file stops the run with one line naming it and the reason;
* either way, too many unreadable files stop the run with one line naming the first of them: then the
  data is wrong, not one file. "Too many" is one rule, :func:`too_many_bad`, for the whole run (training
  and validation images together), used by the guard, by the epoch check of ``kernel.run.fit``, by
  ``--check-data`` and by prediction: more than ``--bad-images-floor`` files *and* more than
  ``--bad-images-limit`` of the images. The floor keeps one bad file in a small data set (1 of 25 is 4 %)
  from stopping a run; the fraction catches a broken large one.

DataLoader workers are separate processes, so the shared record is the append-only report file
(one short line per file: atomic on POSIX), read back by :func:`read_report`. The guard counts that
file, not what its own process saw, so the decision is the same with 0 workers or several.

Prediction inputs (:func:`settle_unreadable_inputs`) follow the same rule: an unreadable input gets the
task's fallback prediction and is listed next to the outputs.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from ..paths import atomic_write
from ..errors import ConfigError

__all__ = ["BAD_IMAGES", "REPORT", "ReadGuard", "read_report", "source_path", "too_many_bad", "name_files",
           "too_many_error", "settle_unreadable_inputs", "read_error"]

log = logging.getLogger("kernel")
BAD_IMAGES = ("skip", "error")
REPORT = "bad_images.txt"
NAMED = 3  # unreadable files named in a message; the report file lists them all


def source_path(source: Any, i: int) -> str:
    """The file behind sample ``i`` of a source (``path(i)`` when it has one), for messages."""
    fn = getattr(source, "path", None)
    return fn(i) if callable(fn) else f"sample {i}"


def read_error(e: BaseException) -> str:
    """Why a file could not be read, in one short line (``OSError: image file is truncated``); an error that
    carries a ``reason`` (the cache's record of a file found unreadable before) says that one again."""
    if isinstance(getattr(e, "reason", None), str):
        return e.reason
    text = " ".join(str(e).split()) or type(e).__name__
    return f"{type(e).__name__}: {text}"[:200]


def too_many_bad(bad: int, total: int, limit_fraction: float, floor_files: int) -> bool:
    """The one rule: ``bad`` unreadable files of ``total`` are too many when they are more than ``floor_files``
    and more than ``limit_fraction`` of ``total``, both."""
    return bad > floor_files and bad > limit_fraction * total


def name_files(paths: Sequence[str], n: int = NAMED) -> str:
    """The first ``n`` of ``paths``, and how many more: ``a.png, b.png, c.png and 4 more``."""
    shown = ", ".join(str(p) for p in paths[:n])
    return shown + (f" and {len(paths) - n} more" if len(paths) > n else "")


def too_many_error(what: str, bad: Sequence[str], total: int, limit_fraction: float, floor_files: int,
                   where: str = "") -> ConfigError:
    """The one-line stop when :func:`too_many_bad` says so; ``bad``: the unreadable files, first seen first."""
    listed = f"; all are listed in {where}" if where else ""
    return ConfigError(f"{what}: {len(bad)} of {total} images are unreadable ({name_files(bad)}), more than "
                       f"--bad-images-floor {floor_files} files and more than --bad-images-limit {limit_fraction:g} "
                       f"of the images{listed}: fix or remove them (--check-data lists them), or raise those limits")


class ReadGuard:
    """Reads samples from a source with the policy above; picklable (it travels to the workers).

    ``total``: the images the limit is a fraction of (the run's training and validation images; default the
    source's). ``replace=False`` (``--check-data``): an unreadable sample is recorded and read as None instead
    of being replaced, since nothing is trained.
    """

    def __init__(self, mode: str = "skip", report: Optional[str] = None, limit: float = 0.01, what: str = "--data",
                 *, floor: int = 0, total: Optional[int] = None, replace: bool = True):
        if mode not in BAD_IMAGES:
            raise ConfigError(f"--bad-images {mode!r}: use one of {', '.join(BAD_IMAGES)}")
        self.mode, self.report, self.limit, self.what = mode, report, limit, what
        self.floor, self.total, self.replace = floor, total, replace
        self._bad: Dict[str, str] = {}  # per process: path -> reason

    def read(self, source: Any, i: int) -> Optional[Tuple[Any, ...]]:
        """``source[i]``, or the next readable sample when it cannot be read (see the module doc)."""
        n = len(source)
        for step in range(n):
            j = (i + step) % n
            try:
                return source[j]
            except Exception as e:  # any read failure: PIL's OSError, SyntaxError, ValueError, DecompressionBomb
                self._record(source_path(source, j), read_error(e), n)
                if not self.replace:
                    return None
        raise ConfigError(f"{self.what}: none of the {n} images can be read; check the path and the files")

    def _record(self, path: str, reason: str, n: int) -> None:
        if self.mode == "error":
            raise ConfigError(f"{self.what}: cannot read {path} ({reason}); remove or replace the file, or pass "
                              "--bad-images skip")
        if path in self._bad:
            return
        self._bad[path] = reason
        # Workers that are not persistent start afresh every epoch: the report says what is already known.
        known = read_report(self.report) if self.report else []
        if not any(f == path for f, _ in known):
            log.warning("unreadable image %s (%s)%s", path, reason,
                        ": replaced by the next readable one" if self.replace else "")
            if self.report:
                with open(self.report, "a", encoding="utf-8") as fh:  # one short append: atomic on POSIX
                    fh.write(f"{path}\t{reason}\n")
                known.append((path, reason))
        # Every process and worker counts the shared report, so the count only grows and ends where the
        # epoch check of kernel.run.fit ends: a stop here is a stop that check would make, only sooner.
        bad = [f for f, _ in known] if self.report else list(self._bad)
        total = self.total if self.total is not None else n
        if too_many_bad(len(bad), total, self.limit, self.floor):
            raise too_many_error(self.what, bad, total, self.limit, self.floor, self.report or "")


def read_report(path: str | os.PathLike) -> List[Tuple[str, str]]:
    """(file, reason) for each distinct file listed in a ``bad_images.txt``, in first-seen order."""
    path = Path(path)
    if not path.is_file():
        return []
    seen: Dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        file, _, reason = line.partition("\t")
        if file:
            seen.setdefault(file, reason)
    return list(seen.items())


def settle_unreadable_inputs(paths: Sequence[str], bad: Mapping[int, str], report: str | os.PathLike, *,
                             limit_fraction: float, floor_files: int, fallback: str) -> None:
    """After a prediction pass over ``paths``: the inputs at the positions ``bad`` (index -> reason) could not
    be read. Too many of them (:func:`too_many_bad`), or all, stop with one line naming the first; otherwise
    they are named in a warning (their rows hold ``fallback``, the task's stand-in prediction) and listed,
    ``file<TAB>reason``, in ``report`` beside the outputs. Without any, a stale ``report`` of an earlier
    prediction into the same outputs is removed."""
    report = Path(report)
    files = [paths[i] for i in sorted(bad)]
    if not files:
        report.unlink(missing_ok=True)
        return
    if len(files) == len(paths):
        raise ConfigError(f"inputs: none of the {len(paths)} images can be read ({name_files(files)}: "
                          f"{bad[min(bad)]}); check the paths and the files")
    if too_many_bad(len(files), len(paths), limit_fraction, floor_files):
        raise too_many_error("inputs", files, len(paths), limit_fraction, floor_files)
    text = "".join(f"{paths[i]}\t{bad[i]}\n" for i in sorted(bad))
    atomic_write(report, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    log.warning("%d of %d inputs are unreadable (%s): each has a row with %s; listed in %s", len(files), len(paths),
                name_files(files), fallback, report)
