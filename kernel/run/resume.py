"""A run's checkpoints: where a run stands (:class:`FitState`), resuming it, saving it at an epoch's end or inside one.

``last.pt`` is written after every epoch, and inside an epoch by ``--save-every``, a signal or the time
limit; on improvement ``best.pt`` (the same checkpoint less the training state: what prediction needs) and
``model.safetensors``. Rank 0 alone writes; the checkpoint holds every process's RNG state and partial
sums. Resuming continues at the saved position (epoch and batch), so a run killed anywhere ends like an
uninterrupted one. A previous Kaggle version's
run folder (found under the inputs) is carried over into this version's, history and pictures included.
"""
from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch

from ..config import options_to_dict
from ..engine import (RunIdentity, RunProgress, TrainingParts, export_safetensors, load_checkpoint, make_checkpoint, prediction_checkpoint, read_checkpoint,
                      rng_state, save_checkpoint, set_rng_state)
from ..engine.distributed import gather_objects, world
from ..paths import TMP_SUFFIX, atomic_write, detect_platform, find_in_inputs, resolve_path
from ..errors import ConfigError
from ..report import write_metrics_csv
from .kfold import run_name
from .prepare import Prepared
from .saver import cpu_copy

__all__ = ["FitState", "BASE_COLUMNS", "TIME_COLUMNS", "resume_path", "resume_state", "repair_best", "carry_over",
           "save_epoch", "save_position"]

log = logging.getLogger("kernel")
BASE_COLUMNS = ("epoch", "lr", "train_loss", "val_loss")  # then the task's columns, then the timings
TIME_COLUMNS = ("epoch_time", "img_per_s")


@dataclass
class FitState:
    """How far a run has come: the epoch to train next (``batch`` of its batches already done, with each
    process's ``partial`` sums), the best monitored value so far, one history row per finished epoch."""

    start_epoch: int = 1
    batch: int = 0
    partial: Optional[List[Dict[str, Any]]] = None
    best: Optional[float] = None
    best_epoch: int = 0
    history: List[Dict[str, Any]] = field(default_factory=list)
    last_epoch: int = 0
    resumed_from: Optional[Path] = None
    stopped: str = ""  # "", "early_stop", "time_limit" or "signal"


def resume_path(opts: Any, run_dir: Path) -> Optional[Path]:
    """``--resume PATH``, or ``auto``: this run's last.pt, or on Kaggle a previous version's output."""
    if not opts.resume:
        return None
    if opts.resume == "auto":
        found = run_dir / "last.pt" if (run_dir / "last.pt").is_file() else None
        if found is None and detect_platform() == "kaggle":
            found = find_in_inputs(f"{run_name(opts)}/last.pt")
        if found is None:
            log.info("resume auto: no checkpoint yet, starting fresh")
        return found
    return Path(resolve_path(opts.resume, "resume"))


# What a resume must share with the run that wrote the checkpoint: the options that shape the data (which images,
# how many, the split, the sample order and its batches) and the model. Any other option is this command's: the
# length (--epochs, --time-limit, --save-every, --early-stop), where and how it runs (--device, --devices,
# --workers, --amp), logging and pictures, the predict: section (the optimizer's and the schedule's state come
# from the checkpoint). --aug-backend is recorded resolved (auto -> the library that was importable): a resume
# on a machine where auto would pick another library stops instead of changing the augmentation mid-run.
RESUME_MUST_MATCH = ("task", "dry_run", "data", "val_data", "val_split", "csv", "image_dir", "image_col",
                     "label_col", "rle_col", "class_col", "rle_order", "seg_mode", "ignore_index", "folds", "group_col",
                     "seed", "batch_size", "accum_steps", "model", "arch", "img_size", "in_chans", "aug_backend")
# an unresolved value (an older bundle's checkpoint, or a run without augmentation on either side): not compared
_UNRESOLVED = {"aug_backend": "auto"}


def _norm(key: str, value: Any) -> Any:
    """A value as compared on resume: paths as written but normalised (``data/`` is ``./data``)."""
    if key in ("data", "val_data") and isinstance(value, str) and value not in ("", "shapes"):
        return os.path.normpath(value)
    return list(value) if isinstance(value, tuple) else value


def _option_differences(saved: Dict[str, Any], now: Dict[str, Any]) -> List[str]:
    """``--flag saved (this run: now)`` for each option of :data:`RESUME_MUST_MATCH` that differs (options the
    checkpoint does not record, from an older bundle, are not compared)."""
    def show(key: str, value: Any) -> str:
        flag = "--" + key.replace("_", "-")
        return (flag if value else f"no {flag}") if isinstance(value, bool) else f"{flag} {value!r}"

    out = {key: f"{show(key, saved[key])} (this run: {show(key, now.get(key))})" for key in RESUME_MUST_MATCH
           if key in saved and not (key in _UNRESOLVED and _UNRESOLVED[key] in (saved[key], now.get(key)))
           and _norm(key, saved[key]) != _norm(key, now.get(key))}
    if "dry_run" in out:  # its smaller batches follow from it: name the cause only
        out.pop("batch_size", None)
    return list(out.values())


def _trained_as(task: str, options: Dict[str, Any], classes: List[str]) -> str:
    """How a run describes itself in a resume error: ``classify resnet18 on 3 classes``."""
    return f"{task} {options.get('model')} on {len(classes)} classes"


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
    differences = _option_differences(ckpt["options"], options_to_dict(p.opts))
    if differences:  # e.g. the demo's --dry-run checkpoint continued as a full run: 24 images become 640
        raise ConfigError(f"--resume: {str(path)!r} was written with {', '.join(differences)}; resume with the "
                          "options it was trained with (its config.yaml), or drop --resume to start a new run")
    try:
        p.model.load_state_dict(ckpt["model"])
        p.optimizer.load_state_dict(ckpt["optimizer"])
        p.schedule.load_state_dict(ckpt["schedule"])
        if p.scaler is not None and ckpt.get("scaler"):
            p.scaler.load_state_dict(ckpt["scaler"])
        if p.ema is not None:
            _resume_ema(p, ckpt, path)
    except (RuntimeError, ValueError, KeyError) as e:
        raise ConfigError(f"--resume: {str(path)!r} does not fit this run ({str(e).strip().splitlines()[0][:120]}); "
                          "resume with the options it was trained with (see its config.yaml)") from None
    w, pos = world(), ckpt["position"]
    same_world = ckpt["world_size"] == w.size
    set_rng_state(ckpt["rng_ranks"][w.rank] if same_world and ckpt.get("rng_ranks") else ckpt["rng"])
    batch = pos["batch"] if same_world else 0
    if pos["batch"] and not same_world:
        log.warning("last.pt was saved inside epoch %d by %d processes; this run has %d: epoch %d starts over",
                    pos["epoch"], ckpt["world_size"], w.size, pos["epoch"])
    log.info("resumed from %s at epoch %d, batch %d", path, pos["epoch"] if batch else ckpt["epoch"] + 1, batch)
    return FitState(start_epoch=pos["epoch"] if batch else ckpt["epoch"] + 1, batch=batch,
                    partial=pos["partial"] if batch else None, best=ckpt["best_metric"],
                    best_epoch=ckpt["best_epoch"], history=list(ckpt["history"]), last_epoch=ckpt["epoch"],
                    resumed_from=Path(path))


def _resume_ema(p: Prepared, ckpt: Dict[str, Any], path: Path) -> None:
    """The moving average continues from the checkpoint's; one saved without --ema starts from its weights."""
    if ckpt.get("ema") is not None:
        p.ema.module.load_state_dict(ckpt["ema"])
    else:
        log.warning("--ema: %s was trained without it; the average starts from its weights", path)
        p.ema.module.load_state_dict(ckpt["model"])


def carry_over(p: Prepared, state: FitState) -> None:
    """Resumed from another folder (a previous Kaggle version's output, mounted read-only): copy that run's
    files here first, so best.pt, metrics, pictures and TensorBoard events cover every version."""
    src = state.resumed_from.parent if state.resumed_from is not None else None
    if src is None or src.resolve() == p.run_dir.resolve() or not world().main:
        return
    for item in sorted(src.iterdir()):
        target = p.run_dir / item.name
        if item.name.endswith(TMP_SUFFIX) or target.exists():
            continue
        if item.is_dir():
            shutil.copytree(item, target)
        else:  # a kill mid-copy must not leave a truncated last.pt to resume from
            atomic_write(target, lambda tmp, item=item: shutil.copy2(item, tmp))
    log.info("carried over the previous run's files from %s", src)


def repair_best(p: Prepared, state: FitState) -> None:
    """After a kill between writing last.pt and best.pt, make the best files match the record.

    When the last finished epoch was the best one, best.pt must hold that epoch and model.safetensors its
    weights; a kill in between leaves them one best epoch behind. Called once the run folder is ours.
    """
    last, best = p.run_dir / "last.pt", p.run_dir / "best.pt"
    if state.resumed_from is None or not last.is_file() or state.best_epoch != state.last_epoch \
            or state.best_epoch == 0 or not world().main:
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
    save_checkpoint(prediction_checkpoint(load_checkpoint(last)), best)
    _export(p)


def _export(p: Prepared, weights: Any = None) -> None:
    """model.safetensors of ``weights`` (a state dict; None: the run's model, or its EMA)."""
    if weights is None:
        weights = p.ema.module if p.ema is not None else p.model
    export_safetensors(weights, p.split.classes, p.run_dir / "model.safetensors", task=p.task.name,
                       meta=p.task.export_meta(p.split), model_name=p.opts.model, in_chans=p.opts.in_chans)


def _checkpoint(p: Prepared, state: FitState, position: Optional[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    """The checkpoint dict on rank 0 (None elsewhere); every process's RNG state gathered into it."""
    ranks = gather_objects(rng_state())
    if not world().main:
        return None
    return make_checkpoint(p.model, RunIdentity(p.task.name, p.split.classes, p.task.export_meta(p.split),
                                                options_to_dict(p.opts)),
                           RunProgress(state.last_epoch, state.best, state.best_epoch, state.history, position),
                           TrainingParts(p.optimizer, p.schedule, p.scaler, ranks),
                           ema=p.ema.module if p.ema is not None else None)


def save_epoch(p: Prepared, state: FitState, improved: bool, done: Callable[[], None]) -> None:
    """At an epoch's end: last.pt; on improvement best.pt (its prediction part) and model.safetensors; metrics.csv.

    The checkpoint is copied now; the files are written by ``p.saver`` (:mod:`kernel.run.saver`: on a thread
    unless ``--no-async-save``), then ``done()`` runs on this thread. Other ranks write nothing: ``done()`` now."""
    ckpt = _checkpoint(p, state, None)
    if ckpt is None:
        done()
        return
    ckpt = cpu_copy(ckpt) if p.saver.enabled else ckpt  # the next step changes the live tensors
    history, columns = list(state.history), (*BASE_COLUMNS, *p.task.columns, *TIME_COLUMNS)

    def write() -> None:
        save_checkpoint(ckpt, p.run_dir / "last.pt")
        if improved:
            save_checkpoint(prediction_checkpoint(ckpt), p.run_dir / "best.pt")
            _export(p, ckpt["ema"] if ckpt.get("ema") is not None else ckpt["model"])
        write_metrics_csv(history, columns, p.run_dir / "metrics.csv")

    p.saver.submit(write, done)


def save_position(p: Prepared, state: FitState, epoch: int, batch: int,
                  snapshot: Callable[[], Dict[str, Any]]) -> None:
    """Inside epoch ``epoch`` after ``batch`` batches: last.pt with every process's partial sums (after the
    end-of-epoch write in flight, which it replaces)."""
    p.saver.wait()
    partial = gather_objects(snapshot())
    ckpt = _checkpoint(p, state, {"epoch": epoch, "batch": batch, "partial": partial})
    if ckpt is not None:
        save_checkpoint(ckpt, p.run_dir / "last.pt")
        log.info("saved last.pt inside epoch %d after batch %d", epoch, batch)
