"""Per-epoch pictures in the run folder, for runs nobody watches (Kaggle background kernels).

:class:`EpochReporter` is driven by the training run: ``on_train_start`` once, ``on_epoch_end``
after every epoch's checkpoint, ``on_train_end`` at the end. It keeps these files current:

* ``curves.png``   loss, the task's metrics and LR against epoch, the best epoch marked
* the task's best-checkpoint files (classify: ``per_class.csv``, ``confusion_matrix.png``,
  ``predictions.png``), made from that epoch's validation outputs (best.pt *is* that model),
  so they cost no extra pass
* ``tb/``          TensorBoard events: scalars every epoch, sample images, the model graph (``graph``)

Drawing takes a second or two; with short epochs it would cost more than the training. Pictures
are therefore drawn at most every ``every`` seconds from the start (``--plot-every``; 0: every epoch)
and always at the end, so a finished run has them all, a killed one lags by at most that long, and a
run shorter than ``every`` draws once. The
best epoch's outputs wait in memory until they are drawn. A failing plot logs a warning and never
fails the run; TensorBoard scalars are written every epoch (cheap). matplotlib's import and font loading
(about a second, more on a fresh machine) happen on a thread while the first epoch trains, and the model
graph, whose tracing costs about a second for a U-Net, is written only when asked (``graph``, as
Lightning's ``log_graph``).
"""
from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
from torch import nn

from . import plots
from .tb import TensorBoardLogger

__all__ = ["EpochReporter"]

log = logging.getLogger(__name__)
N_TB_SAMPLES = 16  # validation images shown in TensorBoard


def _warm_up() -> None:
    try:
        plots.warm_up()
    except Exception:  # noqa: BLE001  (no matplotlib, a broken font: the first real picture says so)
        pass


class EpochReporter:
    """Writes curves, the task's best-checkpoint files and TensorBoard events for one run (see module doc)."""

    def __init__(self, run_dir: str | Path, *, task: Any, split: Any, dcfg: Dict[str, Any], monitor: str,
                 val_dataset: Any = None, tensorboard: bool = True, start_epoch: int = 1, every: float = 0.0,
                 plots: bool = True, graph: bool = False, clock: Callable[[], float] = time.monotonic):
        self.run_dir, self.task, self.split, self.dcfg = Path(run_dir), task, split, dcfg
        self.monitor, self.val_dataset, self.every, self.clock = monitor, val_dataset, every, clock
        self.tb = TensorBoardLogger.open(self.run_dir / "tb", tensorboard,
                                         purge_step=start_epoch if start_epoch > 1 else None)
        self._plots_ok = plots  # False: the pictures are skipped, the CSV outputs still written
        self._graph = graph
        self._warm: Optional[threading.Thread] = None
        if plots:
            self._warm = threading.Thread(target=_warm_up, name="plots-warm-up", daemon=True)
            self._warm.start()
        self._fresh = start_epoch <= 1  # a resumed run's events already hold the graph and samples
        self._last_draw = clock()  # counted from the start: a run shorter than ``every`` draws once, at the end
        self._pending_best: Optional[tuple] = None  # (epoch, val outputs) not drawn yet
        self._history: List[Dict[str, Any]] = []
        self._best_epoch = 0

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
        """TensorBoard: the model graph (where tracing works) and a few validation images."""
        if self.tb is None or not self._fresh:
            return
        if self._graph:
            self.tb.graph(model, torch.zeros(1, *input_shape, device=device))
        n = min(N_TB_SAMPLES, len(self.val_dataset) if self.val_dataset is not None else 0)
        if n:
            with torch.random.fork_rng(devices=[]):  # a custom eval transform must not touch the run's RNG
                images = torch.stack([self.val_dataset[i][0] for i in range(n)])
            self.tb.images("val/samples", plots.denormalize(images, self.dcfg["mean"], self.dcfg["std"]), 0)

    def on_epoch_end(self, epoch: int, history: List[Dict[str, Any]], val: Dict[str, Any], *,
                     improved: bool, best_epoch: int) -> None:
        """Record ``epoch`` (``val``: the validation pass's metrics and outputs); draw when due."""
        if self.tb is not None and history:
            self.tb.scalars(history[-1], epoch)
        self._history, self._best_epoch = list(history), best_epoch
        if improved:
            self._pending_best = (epoch, val)
        now = self.clock()
        if now - self._last_draw >= self.every:
            self.draw()

    def draw(self) -> None:
        """Redraw curves.png and, when a new best epoch is waiting, the task's best-checkpoint files."""
        if self._warm is not None:  # one thread draws at a time: matplotlib does not promise more
            self._warm.join()
            self._warm = None
        self._last_draw = self.clock()
        if self._history:
            self._safe("curves.png", lambda: plots.plot_curves(
                self._history, self.run_dir / "curves.png", metric_panel=self.task.metric_panel,
                monitor=self.monitor, best_epoch=self._best_epoch))
        if self._pending_best is not None:
            epoch, val = self._pending_best
            self._pending_best = None
            self.task.write_best(self.run_dir, epoch, val, self.split, self.val_dataset, self.dcfg, self._safe)

    def on_train_end(self) -> None:
        """Draw whatever is still waiting, then close TensorBoard."""
        self.draw()
        self.close()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None
