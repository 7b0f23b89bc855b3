"""Unreadable files never end a run: a truncated, empty or foreign image is replaced, logged and counted.

A large real dataset almost always holds a broken file, and on Kaggle a traceback in epoch 7 costs the
whole session. :class:`ReadGuard` wraps every read of a sample:

* ``skip`` (the default): the sample is replaced by the next readable one (index ``i + 1``, ``i + 2``...),
  so the replacement depends only on the index, never on the worker or the resume point; the file is
  named once (a warning) and appended to ``bad_images.txt`` in the run folder;
* ``error``: the first unreadable file stops the run with one line naming it and the reason;
* either way, more unreadable files than ``limit`` (a fraction of the dataset) stops the run with one
  line: then the data is wrong, not one file.

DataLoader workers are separate processes, so the shared record is the append-only report file
(one short line per file: atomic on POSIX), read back by :func:`read_report`.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from ..registry import ConfigError

__all__ = ["BAD_IMAGES", "REPORT", "ReadGuard", "read_report", "source_path"]

log = logging.getLogger("kernel")
BAD_IMAGES = ("skip", "error")
REPORT = "bad_images.txt"


def source_path(source: Any, i: int) -> str:
    """The file behind sample ``i`` of a source (``path(i)`` when it has one), for messages."""
    fn = getattr(source, "path", None)
    return fn(i) if callable(fn) else f"sample {i}"


def _reason(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return f"{type(e).__name__}: {text}"[:200]


class ReadGuard:
    """Reads samples from a source with the policy above; picklable (it travels to the workers)."""

    def __init__(self, mode: str = "skip", report: Optional[str] = None, limit: float = 0.01, what: str = "--data"):
        if mode not in BAD_IMAGES:
            raise ConfigError(f"--bad-images {mode!r}: use one of {', '.join(BAD_IMAGES)}")
        self.mode, self.report, self.limit, self.what = mode, report, limit, what
        self._bad: Dict[str, str] = {}  # per process: path -> reason

    def read(self, source: Any, i: int) -> Tuple[Any, ...]:
        """``source[i]``, or the next readable sample when it cannot be read (see the module doc)."""
        n = len(source)
        for step in range(n):
            j = (i + step) % n
            try:
                return source[j]
            except Exception as e:  # any read failure: PIL's OSError, SyntaxError, ValueError, DecompressionBomb
                self._record(source_path(source, j), _reason(e), n)
        raise ConfigError(f"{self.what}: none of the {n} images can be read; check the path and the files")

    def _record(self, path: str, reason: str, n: int) -> None:
        if self.mode == "error":
            raise ConfigError(f"{self.what}: cannot read {path} ({reason}); remove or replace the file, or pass "
                              "--bad-images skip")
        if path in self._bad:
            return
        self._bad[path] = reason
        # Workers that are not persistent start afresh every epoch: the report says what is already known.
        if not (self.report and any(f == path for f, _ in read_report(self.report))):
            log.warning("unreadable image %s (%s): replaced by the next readable one", path, reason)
            if self.report:
                with open(self.report, "a", encoding="utf-8") as fh:  # one short append: atomic on POSIX
                    fh.write(f"{path}\t{reason}\n")
        if len(self._bad) > self.limit * n:
            raise ConfigError(f"{self.what}: {len(self._bad)} of {n} images are unreadable, more than "
                              f"--bad-images-limit {self.limit:g}; the data is broken, not one file: check it with "
                              f"--check-data")


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
