"""TensorBoard events for a run (``run_dir/tb``), optional and never fatal.

``TensorBoardLogger.open`` returns None, with one log line, when tensorboard is not installed
or is switched off; every later call catches its own errors, logs one warning and disables
the writer, so TensorBoard can never stop a training run.
"""
from __future__ import annotations

import logging
import os
import warnings
from typing import Any, Dict, Optional

import numpy as np
import torch
from torch import nn

__all__ = ["TensorBoardLogger", "scalar_tag"]

log = logging.getLogger(__name__)

_FIXED_TAGS = {"lr": "lr", "epoch_time": "time/epoch_s", "img_per_s": "time/train_img_per_s", "epoch": None}


def scalar_tag(key: str) -> Optional[str]:
    """TensorBoard tag of a history column, grouped by metric: ``val_acc`` -> ``acc/val``, ``lr`` -> ``lr``.

    Train and validation curves of one metric share a section, so the UI draws them side by side,
    whatever metrics the task reports. None: not logged.
    """
    if key in _FIXED_TAGS:
        return _FIXED_TAGS[key]
    split, _, name = key.partition("_")
    return f"{name}/{split}" if split in ("train", "val") and name else key


class TensorBoardLogger:
    """A thin SummaryWriter wrapper: per-epoch scalars, sample images, the model graph."""

    def __init__(self, writer: Any):
        self.writer = writer

    @classmethod
    def open(cls, log_dir: str | os.PathLike, enabled: bool = True,
             purge_step: Optional[int] = None) -> Optional["TensorBoardLogger"]:
        """A logger writing to ``log_dir``, or None when disabled or tensorboard is absent.

        ``purge_step`` (the first epoch of a resumed run) hides events a killed run wrote for
        epochs that are being trained again, so curves in the UI do not fold back.
        """
        if not enabled:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            log.info("tensorboard is not installed: no TensorBoard events (pip install tensorboard)")
            return None
        try:
            writer = SummaryWriter(str(log_dir), purge_step=purge_step, flush_secs=30)
        except Exception as e:  # e.g. read-only folder
            log.warning("TensorBoard disabled: cannot write to %s (%s: %s)", log_dir, type(e).__name__, e)
            return None
        return cls(writer)

    def _fail(self, what: str, e: Exception) -> None:
        log.warning("TensorBoard %s failed, events disabled for this run (%s: %s)", what, type(e).__name__, e)
        self.close()

    def scalars(self, row: Dict[str, Any], step: int) -> None:
        """Log the finite numeric entries of one history row, tagged by :func:`scalar_tag`."""
        if self.writer is None:
            return
        try:
            for key, v in row.items():
                tag = scalar_tag(key)
                if tag and isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v):
                    self.writer.add_scalar(tag, float(v), step)
            self.writer.flush()  # Kaggle may kill the kernel at any time: keep the file current
        except Exception as e:
            self._fail("scalars", e)

    def images(self, tag: str, images: np.ndarray, step: int = 0) -> None:
        """Log images (N, H, W, C) float in [0, 1] as one grid entry."""
        if self.writer is None:
            return
        try:
            self.writer.add_images(tag, images, step, dataformats="NHWC")
        except Exception as e:
            self._fail("images", e)

    def graph(self, model: nn.Module, example: torch.Tensor) -> None:
        """Trace ``model`` on ``example`` (1, C, H, W) in eval mode; a model that cannot be traced is skipped."""
        if self.writer is None:
            return
        was_training = model.training
        model.eval()  # train-mode tracing would update BatchNorm statistics
        try:
            with torch.no_grad(), torch.random.fork_rng(devices=[]), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # TracerWarnings are about the graph, not the run
                self.writer.add_graph(model, example)
        except Exception as e:
            log.warning("TensorBoard: model graph skipped, tracing failed (%s: %s)", type(e).__name__,
                        str(e).strip().splitlines()[0] if str(e).strip() else "")
        finally:
            model.train(was_training)

    def close(self) -> None:
        if self.writer is not None:
            try:
                self.writer.close()
            except Exception:  # closing is best effort
                pass
            self.writer = None
