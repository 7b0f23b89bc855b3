"""Fitting a prepared run: the epoch loop with its checkpoints, reports, time budget and stops; the summary.

:func:`fit` trains from the resumed position to ``--epochs`` (or until early stopping, the time limit or
a signal), saving ``last.pt`` after every epoch and inside epochs when :class:`~kernel.run.budget.StopControl`
says so; :func:`finish` writes ``summary.json``. The loop is task-blind: the task gives the meters, the
history columns and the log text. In a multi-process run every process runs this; rank 0 writes.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Dict, Optional

import torch

from .. import __version__
from ..data import REPORT, name_files, read_report, too_many_bad, too_many_error
from ..engine import EpochResult, StepConfig, TrainingDiverged, amp_name, evaluate, train_one_epoch
from ..engine.distributed import wrap_ddp, world
from ..models import set_backbone_frozen, train_mode
from ..report import EpochReporter, Progress, write_json
from .budget import StopControl
from .resume import FitState, save_epoch, save_position
from .prepare import Prepared, backbone_frozen, hw

__all__ = ["fit", "finish", "input_shape", "step_config", "EpochOutcome"]

log = logging.getLogger("kernel")


def _train_model(p: Prepared, epoch: int) -> None:
    """Freeze or release the backbone for ``epoch``; (re)build the DDP wrapper when that changed."""
    o = p.opts
    frozen = backbone_frozen(o, epoch)
    set_backbone_frozen(p.model, frozen)
    if o.freeze == "backbone" and not frozen and backbone_frozen(o, epoch - 1):
        log.info("epoch %d: backbone unfrozen", epoch)
    if p.train_model is None or frozen != p.frozen:  # DDP only reduces the parameters that trained when built
        model = wrap_ddp(p.model, p.device)
        p.train_model, p.frozen = (torch.compile(model) if o.compile else model), frozen
    train_mode(p.model, frozen)


@dataclass
class EpochOutcome:
    """One epoch's end: its history row and validation metrics, or where it stopped (``stopped_at`` batches)."""
    row: Dict[str, Any] = field(default_factory=dict)
    val: Dict[str, Any] = field(default_factory=dict)
    stopped_at: Optional[int] = None


def step_config(p: Prepared, train: bool) -> StepConfig:
    """The run's step settings for the training (with schedule, EMA and Mixup) or the validation pass."""
    o = p.opts
    common = dict(loss_fn=p.loss_fn, device=p.device, amp_dtype=p.amp_dtype, channels_last=o.channels_last,
                  step=p.task.step, move=None)  # the loaders finish batches on the device
    if not train:
        return StepConfig(**common)
    return StepConfig(**common, scaler=p.scaler, accum_steps=o.accum_steps, clip_grad=o.clip_grad,
                      schedule=p.schedule, mix=p.mix, ema=p.ema)


def _train_epoch(p: Prepared, epoch: int, state: FitState, control: StopControl) -> EpochOutcome:
    """One epoch (from its saved position) of training and validation."""
    o, t0 = p.opts, time.perf_counter()
    skip = state.batch if epoch == state.start_epoch else 0
    partial = state.partial[world().rank] if skip and state.partial else None
    _train_model(p, epoch)
    p.train_sampler.set_epoch(epoch, skip)
    lr = p.optimizer.param_groups[-1]["lr"]  # the head's group: the nominal LR
    def on_update(done: int, snap: Any) -> bool:
        p.saver.poll()  # the last epoch's files, written meanwhile: their callbacks here, on this thread
        return control.after_update(epoch, done, snap, lambda e, b, s: save_position(p, state, e, b, s))

    tr = train_one_epoch(p.train_model, p.train_loader, p.optimizer, step_config(p, train=True),
                         meter=p.task.meter(p.split, train=True), start=(skip, partial), on_update=on_update,
                         progress=Progress(f"epoch {epoch}/{o.epochs}", o.log_every))
    if tr.stopped:
        return EpochOutcome(stopped_at=tr.batches_done)
    t1 = time.perf_counter()
    va = evaluate(p.ema.module if p.ema is not None else p.train_model, p.val_loader, step_config(p, train=False),
                  meter=p.task.meter(p.split, train=False))
    control.val_time = time.perf_counter() - t1
    _time_report(epoch, tr, p.cache is not None)
    train, val = tr.summary(), va.summary()
    row = {"epoch": epoch, "lr": lr, "train_loss": tr.loss, "val_loss": va.loss, **p.task.row(train, val),
           "epoch_time": time.perf_counter() - t0, "img_per_s": tr.img_per_s}
    return EpochOutcome(row=row, val=val)


def _time_report(epoch: int, tr: EpochResult, cached: bool) -> None:
    """Where the epoch's time went: waiting for data against compute; say when the input is the bottleneck, and
    (``cached``: whether the decoded-image cache is on) what would help."""
    if tr.skipped_steps:
        log.info("GradScaler skipped %d of %d updates (inf/NaN gradients)", tr.skipped_steps,
                 tr.updates + tr.skipped_steps)
    share = tr.data_time / max(tr.time, 1e-9)
    if share > 0.4 and tr.time > 1.0:
        fix = "raise --workers or lighten --aug" if cached else \
            "give --cache disk (each image decoded once, not every epoch), raise --workers or lighten --aug"
        log.warning("epoch %d: data loading took %.0f%% of the epoch: %s", epoch, 100 * share, fix)


def fit(p: Prepared, state: FitState, reporter: EpochReporter, control: StopControl) -> FitState:
    """Train from ``state``'s position to ``--epochs``; returns the final state (``stopped`` says why early)."""
    o = p.opts
    maximize = p.task.monitor_mode(o.monitor) == "max"
    stale = 0 if state.best_epoch == 0 else state.start_epoch - 1 - state.best_epoch
    for epoch in range(state.start_epoch, o.epochs + 1):
        if control.before_epoch():
            state.stopped = control.reason
            break
        try:
            outcome = _train_epoch(p, epoch, state, control)
        except TrainingDiverged as e:
            raise TrainingDiverged(f"epoch {epoch}, {e}") from None
        if outcome.stopped_at is not None:
            state.stopped, state.start_epoch, state.batch = control.reason, epoch, outcome.stopped_at
            break
        row, val = outcome.row, outcome.val
        _check_bad_images(p, epoch)
        if p.cache is not None:
            p.cache.end_epoch(epoch)
        metric = row[o.monitor]
        p.schedule.step_epoch(metric)
        improved = state.best is None or (metric > state.best if maximize else metric < state.best)
        if improved:
            state.best, state.best_epoch, stale = metric, epoch, 0
        else:
            stale += 1
        state.history.append(row)
        state.last_epoch, state.start_epoch, state.batch, state.partial = epoch, epoch + 1, 0, None
        save_epoch(p, state, improved, done=lambda e=epoch: control.saved(e, 0))
        if world().main:
            reporter.on_epoch_end(epoch, state.history, val, improved=improved, best_epoch=state.best_epoch)
        log.info("epoch %d/%d  lr %.3g  train loss %.4f%s  val loss %.4f%s%s  %.0f img/s  %.1fs", epoch, o.epochs,
                 row["lr"], row["train_loss"], p.task.describe(row, "train"), row["val_loss"],
                 p.task.describe(row, "val"), "  *best*" if improved else "", row["img_per_s"], row["epoch_time"])
        if o.early_stop and stale >= o.early_stop:
            log.info("early stop: %s has not improved for %d epochs", o.monitor, stale)
            state.stopped = "early_stop"
            break
    return state


def _check_bad_images(p: Prepared, epoch: int) -> None:
    """Say how many unreadable images were replaced so far, and stop when they are too many: the guard's rule
    (:func:`~kernel.data.too_many_bad`) over the run's training and validation images, now that every
    process and worker has read its share of both."""
    report = p.run_dir / REPORT
    bad = [path for path, _ in read_report(report)]
    if not bad:
        return
    total, o = len(p.split.train) + len(p.split.val), p.opts
    if too_many_bad(len(bad), total, o.bad_images_limit, o.bad_images_floor):
        raise too_many_error("--data", bad, total, o.bad_images_limit, o.bad_images_floor, str(report))
    log.info("epoch %d: %d unreadable image%s replaced so far (%s; listed in %s)", epoch, len(bad),
             "" if len(bad) == 1 else "s", name_files(bad), report)


def finish(p: Prepared, state: FitState, wall_time: float) -> Dict[str, Any]:
    """Write ``summary.json`` (rank 0) and return it; a stopped run says why and where."""
    summary = {"task": p.task.name, "best_metric": state.best, "best_epoch": state.best_epoch,
               "monitor": p.opts.monitor, "epochs_run": len(state.history), "last_epoch": state.last_epoch,
               "device": str(p.device), "devices": world().size, "amp_dtype": amp_name(p.amp_dtype),
               "wall_time": round(wall_time, 3), "run_dir": str(p.run_dir), "classes": p.split.classes,
               "version": __version__}
    if state.stopped:
        summary.update(stopped=state.stopped, epoch=state.start_epoch, step=state.batch)
    if p.cache is not None:
        summary["cache"] = p.cache.summary()
        if p.opts.cache_export:
            p.cache.export(p.opts.cache_export)
    if world().main:
        write_json(summary, p.run_dir / "summary.json")
    if state.stopped in ("time_limit", "signal"):
        why = "the time limit" if state.stopped == "time_limit" else "a signal"
        log.info("stopped by %s in epoch %d after batch %d; last.pt is saved: continue with --resume auto "
                 "(on Kaggle: push the next version)", why, state.start_epoch, state.batch)
    else:
        log.info("done: best %s %.4g at epoch %d; outputs in %s", p.opts.monitor,
                 state.best if state.best is not None else float("nan"), state.best_epoch, p.run_dir.resolve())
    return summary


def input_shape(p: Prepared) -> tuple:
    """(C, H, W) of the model's input."""
    return (p.opts.in_chans, *hw(p.dcfg["img_size"]))
