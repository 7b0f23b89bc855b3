"""The one-shot commands: look at something and exit, without training.

Each takes the effective options and returns a small dict (what it wrote or printed), the same
convention as a training run's summary; :data:`ONE_SHOTS` maps the option that asks for it to the
function, and :func:`requested` says which one (if any) the options ask for.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Dict, Optional

from ..augment import save_aug_grid
from ..data import TransformedDataset
from ..engine import resolve_device
from ..models import list_models
from ..options import Options
from ..report import summary_table
from ..schedule import format_lr_table, preview_lr
from ..tasks import get_task
from .prepare import prepare_data, prepare_loaders, prepare_model, prepare_optimization, run_dir_of

__all__ = ["ONE_SHOTS", "requested"]

log = logging.getLogger("kernel")


def _list_models(opts: Options) -> Dict[str, Any]:
    names = list_models(opts.list_models)
    print("\n".join(names) if names else f"no model matches {opts.list_models!r}")
    return {"list_models": len(names)}


def _summary(opts: Options) -> Dict[str, Any]:
    task = get_task(opts.task)
    model, dcfg = prepare_model(opts, task, prepare_data(opts, task))
    print(summary_table(model, (opts.in_chans, dcfg["img_size"], dcfg["img_size"])))
    return {"summary": True}


def _show_aug(opts: Options) -> Dict[str, Any]:
    task = get_task(opts.task)
    split = prepare_data(opts, task)
    _, dcfg = prepare_model(opts, task, split)
    ds = TransformedDataset(split.train, task.transform(opts, dcfg, train=True), with_mask=True)
    path = run_dir_of(opts) / "augmentations.png"
    save_aug_grid([ds[i % len(ds)][0::2] for i in range(opts.show_aug)], dcfg["mean"], dcfg["std"], path)
    log.info("wrote %s", path)
    return {"show_aug": str(path)}


def _preview_lr(opts: Options) -> Dict[str, Any]:
    task = get_task(opts.task)
    split = prepare_data(opts, task)
    model, dcfg = prepare_model(opts, task, split)
    train_loader, _, _ = prepare_loaders(opts, task, split, dcfg, resolve_device(opts.device))
    _, optimizer, schedule, spe = prepare_optimization(opts, task, split, model, len(train_loader))
    path = run_dir_of(opts) / "lr.png"
    rows = preview_lr(schedule, optimizer, epochs=opts.epochs, steps_per_epoch=spe, path=str(path))
    print(format_lr_table(rows))
    log.info("wrote %s", path)
    return {"preview_lr": str(path)}


ONE_SHOTS: Dict[str, Callable[[Options], Dict[str, Any]]] = {
    "list_models": _list_models, "summary": _summary, "show_aug": _show_aug, "preview_lr": _preview_lr}


def requested(opts: Options) -> Optional[str]:
    """The name of the one-shot command ``opts`` asks for, or None for a training run."""
    return next((name for name in ONE_SHOTS if getattr(opts, name)), None)
