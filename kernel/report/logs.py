"""Logs and progress: the ``kernel`` logger (console and ``train.log``), progress bars or lines.

On a terminal, tqdm bars; without one (Kaggle's background log, CI), plain periodic lines,
because carriage-return bars turn into thousands of lines in a saved log.
"""
from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

__all__ = ["setup_logging", "attach_log_file", "close_logging", "Progress"]
_FORMAT = "%(asctime)s %(levelname)-7s %(message)s"


class _Buffer(logging.Handler):
    """Keeps the records logged before the run folder may be written to (see :func:`attach_log_file`)."""

    def __init__(self) -> None:
        super().__init__()
        self.records: List[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def setup_logging(level: int = logging.INFO) -> logging.Logger:
    """Log the ``kernel`` package to stderr, and keep the records for ``train.log``.

    The log file is opened only by :func:`attach_log_file`, once the run is known to be valid: a
    command that fails while preparing (a bad resume, say) must leave an existing run's
    ``train.log`` untouched.
    """
    logger = logging.getLogger("kernel")
    for h in list(logger.handlers):  # a second run in the same process starts clean
        logger.removeHandler(h)
        h.close()
    logger.setLevel(level)
    logger.propagate = False
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(logging.Formatter(_FORMAT, "%H:%M:%S"))
    # extra={"console": False}: for train.log only (the entry point prints user errors itself, as one line)
    console.addFilter(lambda record: getattr(record, "console", True))
    logger.addHandler(console)
    logger.addHandler(_Buffer())
    return logger


def attach_log_file(run_dir: Path) -> None:
    """Append the ``kernel`` log to ``run_dir/train.log`` from now on, starting with the kept records."""
    logger = logging.getLogger("kernel")
    run_dir.mkdir(parents=True, exist_ok=True)
    fh = logging.FileHandler(run_dir / "train.log", encoding="utf-8")
    fh.setFormatter(logging.Formatter(_FORMAT))
    for h in [h for h in logger.handlers if isinstance(h, _Buffer)]:
        logger.removeHandler(h)
        for record in h.records:
            fh.handle(record)
    logger.addHandler(fh)


def close_logging() -> None:
    """Remove the run's handlers and give the ``kernel`` logger back its defaults.

    A notebook (or a test) that runs several trainings in one process must not inherit the
    level or the non-propagation of an earlier run.
    """
    logger = logging.getLogger("kernel")
    for h in list(logger.handlers):
        logger.removeHandler(h)
        h.close()
    logger.setLevel(logging.NOTSET)
    logger.propagate = True


class Progress:
    """Progress for one loop: a tqdm bar on a TTY, else a line every ``every`` batches.

    Called as ``progress(done, total, metrics_fn)``; ``metrics_fn`` is only evaluated when a
    line is printed, so the training loop does not sync with the GPU on every batch.
    """

    def __init__(self, desc: str, every: int = 20, logger: Optional[logging.Logger] = None,
                 tty: Optional[bool] = None):
        self.desc, self.every = desc, max(1, every)
        self.log = logger or logging.getLogger("kernel")
        self.tty = sys.stderr.isatty() if tty is None else tty
        self.bar = None
        self.start = time.perf_counter()

    def __call__(self, done: int, total: int, metrics_fn: Callable[[], Dict[str, float]]) -> None:
        if self.tty:
            if self.bar is None:
                from tqdm import tqdm
                self.bar = tqdm(total=total, desc=self.desc, leave=False, dynamic_ncols=True)
            self.bar.update(1)
            if done % self.every == 0 or done == total:
                self.bar.set_postfix({k: f"{v:.4g}" for k, v in metrics_fn().items()})
            if done == total:
                self.bar.close()
        elif done % self.every == 0 or done == total:
            rate = done / max(time.perf_counter() - self.start, 1e-9)
            stats = " ".join(f"{k} {v:.4g}" for k, v in metrics_fn().items())
            self.log.info("%s %d/%d %s (%.1f batch/s)", self.desc, done, total, stats, rate)
