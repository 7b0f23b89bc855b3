"""Fitting a prepared run: resume, the epoch loop with checkpoints and reports, the summary.

:func:`resume_state` reads where an earlier run of the same name stopped (``--resume``);
:func:`fit` trains the remaining epochs, saving ``last.pt`` (and ``best.pt`` on improvement)
after every epoch; :func:`finish` writes ``summary.json``. The loop is task-blind: the task gives
the meters, the history columns and the log text.
"""
from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from .. import __version__
from ..data import REPORT, read_report
from ..engine import (TrainingDiverged, amp_name, evaluate, export_safetensors, make_checkpoint, read_checkpoint,
                      save_checkpoint, set_rng_state, train_one_epoch)
from ..models import set_backbone_frozen, train_mode
from ..config import options_to_dict
from ..paths import atomic_write, detect_platform, find_in_inputs, resolve_path
from ..registry import ConfigError
from ..report import EpochReporter, Progress, write_json, write_metrics_csv
from ..tasks import monitor_mode
from .prepare import Prepared, backbone_frozen, hw

__all__ = ["FitState", "resume_path", "resume_state", "repair_best", "fit", "finish", "epoch_seed", "input_shape",
           "BASE_COLUMNS"]

log = logging.getLogger("kernel")
BASE_COLUMNS = ("epoch", "lr", "train_loss", "val_loss")  # then the task's columns, then the timings
TIME_COLUMNS = ("epoch_time", "img_per_s")


@dataclass
class FitState:
    """How far a run has come: the next epoch, the best monitored value so far, one history row per epoch."""

    start_epoch: int = 1
    best: Optional[float] = None
    best_epoch: int = 0
    history: List[Dict[str, Any]] = field(default_factory=list)
    last_epoch: int = 0
    resumed_from: Optional[Path] = None


def epoch_seed(seed: int, epoch: int) -> int:
    """The training shuffle's seed for ``epoch``: distinct per (seed, epoch), the same on a resumed run."""
    return seed * 100_003 + epoch


def resume_path(opts: Any, run_dir: Path) -> Optional[Path]:
    """``--resume PATH``, or ``auto``: this run's last.pt, or on Kaggle a previous version's output."""
    if not opts.resume:
        return None
    if opts.resume == "auto":
        found = run_dir / "last.pt" if (run_dir / "last.pt").is_file() else None
        if found is None and detect_platform() == "kaggle":
            found = find_in_inputs(f"{opts.name}/last.pt")
        if found is None:
            log.info("resume auto: no checkpoint yet, starting fresh")
        return found
    return Path(resolve_path(opts.resume, "resume"))


def resume_state(p: Prepared) -> FitState:
    """Load ``--resume``'s checkpoint into the prepared model, optimizer, schedule, scaler and RNGs."""
    path = resume_path(p.opts, p.run_dir)
    if path is None:
        return FitState()
    ckpt = read_checkpoint(path, "resume")
    was, now = _trained_as(ckpt["task"], ckpt["options"], ckpt["classes"]), \
        _trained_as(p.task.name, options_to_dict(p.opts), p.split.classes)
    if was != now or ckpt["classes"] != p.split.classes:
        raise ConfigError(f"--resume: {str(path)!r} was trained as {was}; this run is {now}. Resume with the same "
                          "--model and data, or start a new run with another --name")
    try:
        p.model.load_state_dict(ckpt["model"])
        p.optimizer.load_state_dict(ckpt["optimizer"])
        p.schedule.load_state_dict(ckpt["schedule"])
        if p.scaler is not None and ckpt.get("scaler"):
            p.scaler.load_state_dict(ckpt["scaler"])
    except (RuntimeError, ValueError, KeyError) as e:
        raise ConfigError(f"--resume: {str(path)!r} does not fit this run ({str(e).strip().splitlines()[0][:120]}); "
                          "resume with the options it was trained with (see its config.yaml)") from None
    set_rng_state(ckpt["rng"])
    log.info("resumed from %s at epoch %d", path, ckpt["epoch"] + 1)
    return FitState(start_epoch=ckpt["epoch"] + 1, best=ckpt["best_metric"], best_epoch=ckpt["best_epoch"],
                    history=list(ckpt["history"]), last_epoch=ckpt["epoch"], resumed_from=Path(path))


def _trained_as(task: str, options: Dict[str, Any], classes: List[str]) -> str:
    """How a run describes itself in a resume error: ``resnet18 on 3 classes`` (+ the task when not classify)."""
    what = f"{options.get('model')} on {len(classes)} classes"
    return what if task == "classify" else f"{task} {what}"


def repair_best(p: Prepared, state: FitState) -> None:
    """After a kill between writing last.pt and copying it to best.pt, make the best files match the record.

    When the last finished epoch was the best one, best.pt must hold that epoch and model.safetensors its
    weights; a kill in between leaves them one best epoch behind. Called once the run folder is ours.
    """
    last, best = p.run_dir / "last.pt", p.run_dir / "best.pt"
    if state.resumed_from is None or state.resumed_from.resolve() != last.resolve() \
            or state.best_epoch != state.last_epoch or state.best_epoch == 0:
        return
    try:
        best_epoch = torch.load(best, map_location="cpu", weights_only=True, mmap=True)["epoch"]
    except Exception:  # missing or cut by the kill
        best_epoch = None
    safetensors = p.run_dir / "model.safetensors"
    if best_epoch == state.best_epoch and safetensors.is_file() and safetensors.stat().st_mtime >= best.stat().st_mtime:
        return
    log.info("best.pt held epoch %s but the best epoch is %d (a kill between saves): rewritten from last.pt",
             best_epoch, state.best_epoch)
    atomic_write(best, lambda tmp: shutil.copyfile(last, tmp))
    export_safetensors(p.model, p.split.classes, safetensors, task=p.task.name, meta=p.task.export_meta(p.split),
                       model_name=p.opts.model, in_chans=p.opts.in_chans)


def _save(p: Prepared, state: FitState, improved: bool) -> None:
    """last.pt every epoch; on improvement best.pt (a copy) and model.safetensors; metrics.csv."""
    ckpt = make_checkpoint(model=p.model, task=p.task.name, classes=p.split.classes, meta=p.task.export_meta(p.split),
                           options=options_to_dict(p.opts), epoch=state.last_epoch, best_metric=state.best,
                           best_epoch=state.best_epoch, history=state.history, optimizer=p.optimizer,
                           schedule=p.schedule, scaler=p.scaler)
    save_checkpoint(ckpt, p.run_dir / "last.pt")
    if improved:
        atomic_write(p.run_dir / "best.pt", lambda tmp: shutil.copyfile(p.run_dir / "last.pt", tmp))
        export_safetensors(p.model, p.split.classes, p.run_dir / "model.safetensors", task=p.task.name,
                           meta=ckpt["meta"], model_name=p.opts.model, in_chans=p.opts.in_chans)
    write_metrics_csv(state.history, (*BASE_COLUMNS, *p.task.columns, *TIME_COLUMNS), p.run_dir / "metrics.csv")


def _train_epoch(p: Prepared, epoch: int) -> Dict[str, Any]:
    """One epoch of training and validation -> its history row (plus the validation outputs under "_val")."""
    o, t0 = p.opts, time.perf_counter()
    frozen = backbone_frozen(o, epoch)
    set_backbone_frozen(p.model, frozen)  # every epoch: cheap, and right after any resume point
    if o.freeze == "backbone" and not frozen and backbone_frozen(o, epoch - 1):
        log.info("epoch %d: backbone unfrozen", epoch)
    p.generator.manual_seed(epoch_seed(o.seed, epoch))
    train_mode(p.model, frozen)
    lr = p.optimizer.param_groups[-1]["lr"]  # the head's group: the nominal LR
    tr = train_one_epoch(p.train_model, p.train_loader, p.optimizer, p.loss_fn, device=p.device,
                         meter=p.task.meter(p.split, train=True), amp_dtype=p.amp_dtype, scaler=p.scaler,
                         accum_steps=o.accum_steps, clip_grad=o.clip_grad, schedule=p.schedule,
                         channels_last=o.channels_last, progress=Progress(f"epoch {epoch}/{o.epochs}", o.log_every))
    va = evaluate(p.train_model, p.val_loader, p.loss_fn, device=p.device, meter=p.task.meter(p.split, train=False),
                  amp_dtype=p.amp_dtype, channels_last=o.channels_last)
    if tr["skipped_steps"]:
        log.info("GradScaler skipped %d of %d updates (inf/NaN gradients)", tr["skipped_steps"],
                 tr["updates"] + tr["skipped_steps"])
    return {"epoch": epoch, "lr": lr, "train_loss": tr["loss"], "val_loss": va["loss"], **p.task.row(tr, va),
            "epoch_time": time.perf_counter() - t0, "img_per_s": tr["img_per_s"], "_val": va}


def fit(p: Prepared, state: FitState, reporter: EpochReporter) -> FitState:
    """Train epochs ``state.start_epoch .. --epochs`` (or until early stopping); returns the final state."""
    o = p.opts
    maximize = monitor_mode(o.monitor) == "max"
    stale = 0 if state.best_epoch == 0 else state.start_epoch - 1 - state.best_epoch
    for epoch in range(state.start_epoch, o.epochs + 1):
        try:
            row = _train_epoch(p, epoch)
        except TrainingDiverged as e:
            raise TrainingDiverged(f"epoch {epoch}, {e}") from None
        val = row.pop("_val")
        _check_bad_images(p, epoch)
        metric = row[o.monitor]
        p.schedule.step_epoch(metric)
        improved = state.best is None or (metric > state.best if maximize else metric < state.best)
        if improved:
            state.best, state.best_epoch, stale = metric, epoch, 0
        else:
            stale += 1
        state.history.append(row)
        state.last_epoch = epoch
        _save(p, state, improved)
        reporter.on_epoch_end(epoch, state.history, val, improved=improved, best_epoch=state.best_epoch)
        log.info("epoch %d/%d  lr %.3g  train loss %.4f%s  val loss %.4f%s%s  %.0f img/s  %.1fs", epoch, o.epochs,
                 row["lr"], row["train_loss"], p.task.describe(row, "train"), row["val_loss"],
                 p.task.describe(row, "val"), "  *best*" if improved else "", row["img_per_s"], row["epoch_time"])
        if o.early_stop and stale >= o.early_stop:
            log.info("early stop: %s has not improved for %d epochs", o.monitor, stale)
            break
    return state


def _check_bad_images(p: Prepared, epoch: int) -> None:
    """Say how many unreadable images were replaced so far, and stop when they exceed the limit."""
    bad = read_report(p.run_dir / REPORT)
    if not bad:
        return
    total = len(p.split.train) + len(p.split.val)
    log.info("epoch %d: %d unreadable image%s replaced so far (listed in %s)", epoch, len(bad),
             "" if len(bad) == 1 else "s", p.run_dir / REPORT)
    if len(bad) > p.opts.bad_images_limit * total:
        raise ConfigError(f"--data: {len(bad)} of {total} images are unreadable, more than --bad-images-limit "
                          f"{p.opts.bad_images_limit:g}; the data is broken, not one file: check it with --check-data")


def finish(p: Prepared, state: FitState, wall_time: float) -> Dict[str, Any]:
    """Write ``summary.json`` and return it."""
    summary = {"task": p.task.name, "best_metric": state.best, "best_epoch": state.best_epoch,
               "monitor": p.opts.monitor, "epochs_run": len(state.history), "last_epoch": state.last_epoch,
               "device": str(p.device), "amp_dtype": amp_name(p.amp_dtype), "wall_time": round(wall_time, 3),
               "run_dir": str(p.run_dir), "classes": p.split.classes, "version": __version__}
    write_json(summary, p.run_dir / "summary.json")
    log.info("done: best %s %.4g at epoch %d; outputs in %s", p.opts.monitor,
             state.best if state.best is not None else float("nan"), state.best_epoch, p.run_dir.resolve())
    return summary


def input_shape(p: Prepared) -> tuple:
    """(C, H, W) of the model's input."""
    return (p.opts.in_chans, *hw(p.dcfg["img_size"]))
