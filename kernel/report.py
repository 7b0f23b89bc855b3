"""Logs and progress: ``train.log``, ``metrics.csv``, ``summary.json``, progress lines.

On a terminal, tqdm bars; without one (Kaggle's background log, CI), plain periodic lines,
because carriage-return bars turn into thousands of lines in a saved log.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from .checkpoint import atomic_write

__all__ = ["setup_logging", "close_logging", "write_metrics_csv", "write_json", "Progress", "METRIC_COLUMNS"]

METRIC_COLUMNS = ["epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "val_acc5",
                  "epoch_time", "img_per_s"]
_FORMAT = "%(asctime)s %(levelname)-7s %(message)s"


def setup_logging(run_dir: Optional[Path], level: int = logging.INFO) -> logging.Logger:
    """Log the ``kernel`` package to stderr and, when ``run_dir`` is given, to ``run_dir/train.log``."""
    logger = logging.getLogger("kernel")
    for h in list(logger.handlers):  # a second run in the same process starts clean
        logger.removeHandler(h)
        h.close()
    logger.setLevel(level)
    logger.propagate = False
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(logging.Formatter(_FORMAT, "%H:%M:%S"))
    logger.addHandler(console)
    if run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(run_dir / "train.log", encoding="utf-8")
        fh.setFormatter(logging.Formatter(_FORMAT))
        logger.addHandler(fh)
    return logger


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


def write_metrics_csv(history: List[Dict[str, Any]], path: Path) -> None:
    """Rewrite ``metrics.csv`` from the whole history (kept in the checkpoint, so resumes stay whole)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=METRIC_COLUMNS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for row in history:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    atomic_write(path, lambda tmp: Path(tmp).write_text(buf.getvalue(), encoding="utf-8"))


def write_json(data: Any, path: Path) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8"))


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
