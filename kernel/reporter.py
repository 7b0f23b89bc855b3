"""Per-epoch results in the run folder, for runs nobody watches (Kaggle background kernels).

:class:`EpochReporter` is driven by ``train.run``: ``on_train_start`` once, ``on_epoch_end``
after every epoch's checkpoint, ``on_train_end`` at the end. It keeps these files current:

* ``curves.png``                 loss, accuracy and LR against epoch, best epoch marked (every epoch)
* ``confusion_matrix.png``       best checkpoint on the validation set (single-label data only)
* ``per_class.csv``              precision, recall, F1, support per class, best checkpoint; for
                                 multi-label data each class is a binary problem at p > 0.5
* ``predictions.png``            up to 16 validation images, true / predicted / confidence, best checkpoint
* ``tb/``                        TensorBoard events: scalars per epoch, sample images, model graph

The best-checkpoint files are rewritten only on an improving epoch, from that epoch's
validation outputs (best.pt *is* that model), so they cost no extra pass. A failing plot
logs a warning and never fails the run.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Dict, List, Sequence

import numpy as np
import torch
from torch import nn

from . import plots
from .tb import TensorBoardLogger

__all__ = ["EpochReporter", "sample_indices"]

log = logging.getLogger(__name__)


def sample_indices(n_items: int, n: int) -> List[int]:
    """``n`` indices spread evenly over ``n_items`` (ImageFolder order is by class: the first n would be one class)."""
    if n_items <= 0 or n <= 0:
        return []
    return sorted(set(np.linspace(0, n_items - 1, min(n, n_items)).round().astype(int).tolist()))


class EpochReporter:
    """Writes curves, best-checkpoint diagnostics and TensorBoard events for one run (see module doc)."""

    def __init__(self, run_dir: str | Path, *, classes: Sequence[str], mean: Sequence[float], std: Sequence[float],
                 monitor: str = "val_acc", multilabel: bool = False, val_dataset: Any = None,
                 n_samples: int = 16, tensorboard: bool = True, start_epoch: int = 1):
        self.run_dir = Path(run_dir)
        self.classes, self.mean, self.std = list(classes), tuple(mean), tuple(std)
        self.monitor, self.multilabel = monitor, multilabel
        self.sample_idx = sample_indices(len(val_dataset) if val_dataset is not None else 0, n_samples)
        # The eval transform is deterministic; fork_rng keeps even a custom one off the run's RNG stream.
        with torch.random.fork_rng(devices=[]):
            self.samples = (torch.stack([val_dataset[i][0] for i in self.sample_idx])
                            if self.sample_idx else None)  # (N, C, S, S) normalized
        self.tb = TensorBoardLogger.open(self.run_dir / "tb", tensorboard,
                                         purge_step=start_epoch if start_epoch > 1 else None)
        self._plots_ok = True
        self._fresh = start_epoch <= 1  # a resumed run's events already hold the graph and samples

    def _safe(self, name: str, fn: Callable[[], Any], needs_matplotlib: bool = True) -> None:
        """Run one output writer; any error becomes a warning (a plot must never cost a training run)."""
        if needs_matplotlib and not self._plots_ok:
            return
        try:
            fn()
        except ImportError as e:  # no matplotlib: say so once, then stop trying
            self._plots_ok = False
            log.warning("plots disabled: %s (pip install matplotlib)", e)
        except Exception as e:
            log.warning("could not write %s: %s: %s", name, type(e).__name__, e)

    def on_train_start(self, model: nn.Module, input_shape: Sequence[int], device: torch.device) -> None:
        """TensorBoard: the model graph (where tracing works) and the sample validation images."""
        if self.tb is None or not self._fresh:
            return
        self.tb.graph(model, torch.zeros(1, *input_shape, device=device))
        if self.samples is not None:
            self.tb.images("val/samples", plots.denormalize(self.samples, self.mean, self.std), 0)

    def on_epoch_end(self, epoch: int, history: List[Dict[str, Any]], val: Dict[str, Any], *,
                     improved: bool, best_epoch: int) -> None:
        """Update the files after ``epoch``; ``val`` is evaluate(..., return_outputs=True)'s dict."""
        if self.tb is not None and history:
            self.tb.scalars(history[-1], epoch)
        self._safe("curves.png", lambda: plots.plot_curves(history, self.run_dir / "curves.png",
                                                           monitor=self.monitor, best_epoch=best_epoch))
        if improved and "probs" in val and len(val["probs"]):
            self._best_outputs(epoch, val["probs"], val["targets"])

    def _best_outputs(self, epoch: int, probs: torch.Tensor, targets: torch.Tensor) -> None:
        """per_class.csv, confusion_matrix.png and predictions.png for the new best checkpoint."""
        probs, targets = probs.float().numpy(), targets.numpy()
        multilabel = self.multilabel or targets.ndim == 2
        title = f"best checkpoint (epoch {epoch}), validation"
        stats: Dict[str, Any] = {}

        def per_class() -> None:
            stats.update(plots.per_class_stats(probs, targets, multilabel))
            plots.write_per_class_csv(stats, self.classes, self.run_dir / "per_class.csv")

        self._safe("per_class.csv", per_class, needs_matplotlib=False)  # numpy and csv only
        if "cm" in stats:  # single-label only: a multi-label confusion matrix is not defined
            self._safe("confusion_matrix.png", lambda: plots.plot_confusion_matrix(
                stats["cm"], self.classes, self.run_dir / "confusion_matrix.png", title=title))
        idx = [i for i in self.sample_idx if i < len(probs)]
        if self.samples is not None and idx:
            self._safe("predictions.png", lambda: plots.plot_predictions(
                self.samples[:len(idx)], probs[idx], targets[idx], self.classes, self.run_dir / "predictions.png",
                mean=self.mean, std=self.std, multilabel=multilabel, title=title))

    def on_train_end(self) -> None:
        self.close()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None
