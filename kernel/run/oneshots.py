"""The one-shot commands: look at something and exit, without training.

Each takes the effective options and returns a small dict (what it wrote or printed; ``exit_code``
when it is not 0), the same convention as a training run's summary; :data:`ONE_SHOTS` maps the
option that asks for it to the function, :func:`requested` says which one (if any) is asked for and
:func:`run_one_shot` runs it (with the run folder made for those that write into it).
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Dict, Optional

import torch

from ..augment import save_aug_grid, seed_worker
from ..data import (REPORT, ReadGuard, TransformedDataset, build_loader, name_files, read_report, too_many_bad,
                    transform_draft)
from ..engine import StepConfig, make_scaler, resolve_amp_dtype, resolve_device
from ..options import Options
from ..report import summary_table
from ..schedule import format_lr_table, preview_lr
from ..tasks import get_task
from .lr_find import find_lr, plot_lr_find
from .prepare import hw, prepare_data, prepare_loaders, prepare_model, prepare_optimization, run_dir_of

__all__ = ["ONE_SHOTS", "WRITERS", "requested", "run_one_shot"]

log = logging.getLogger("kernel")


def _list_models(opts: Options) -> Dict[str, Any]:
    """The names ``--model`` takes for ``--task`` (classification: timm and torchvision classifiers)."""
    names = get_task(opts.task).list_models(opts.list_models)
    print("\n".join(names) if names else f"no --task {opts.task} model matches {opts.list_models!r}")
    return {"list_models": len(names)}


def _summary(opts: Options) -> Dict[str, Any]:
    task = get_task(opts.task)
    model, dcfg = prepare_model(opts, task, prepare_data(opts, task))
    print(summary_table(model, (opts.in_chans, *hw(dcfg["img_size"]))))
    return {"summary": True}


def _show_aug(opts: Options) -> Dict[str, Any]:
    task = get_task(opts.task)
    split = prepare_data(opts, task)
    _, dcfg = prepare_model(opts, task, split)
    transform = task.transform(opts, dcfg, train=True)
    ds = TransformedDataset(split.train, transform, with_mask=True, draft=transform_draft(transform, opts.fast_decode))
    path = run_dir_of(opts) / "augmentations.png"
    tiles, drawing = task.show_aug([ds[i % len(ds)] for i in range(opts.show_aug)], split)
    save_aug_grid(tiles, dcfg["mean"], dcfg["std"], path, **drawing)
    log.info("wrote %s", path)
    return {"show_aug": str(path), "titles": drawing["titles"], "tiles": tiles, "drawing": drawing}


def _preview_lr(opts: Options) -> Dict[str, Any]:
    task = get_task(opts.task)
    split = prepare_data(opts, task)
    model, dcfg = prepare_model(opts, task, split)
    train_loader = prepare_loaders(opts, task, split, dcfg, resolve_device(opts.device)).train
    _, optimizer, schedule, spe = prepare_optimization(opts, task, split, model, len(train_loader))
    path = run_dir_of(opts) / "lr.png"
    rows = preview_lr(schedule, optimizer, epochs=opts.epochs, steps_per_epoch=spe, path=str(path))
    print(format_lr_table(rows))
    log.info("wrote %s", path)
    return {"preview_lr": str(path)}


class _ReadOnly:
    """Items: 0 after reading sample i through the guard (no transform: only the files are checked)."""

    def __init__(self, source: Any, guard: ReadGuard):
        self.source, self.guard = source, guard

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> int:
        self.guard.read(self.source, i)
        return 0


def _check_data(opts: Options) -> Dict[str, Any]:
    """Read every training and validation file once (with the DataLoader workers); report the unreadable ones
    and whether a training run would go on (replacing them) or stop: the run's rule, over the same images."""
    task = get_task(opts.task)
    split = prepare_data(opts, task)
    run_dir = run_dir_of(opts)
    report = run_dir / REPORT
    run_dir.mkdir(parents=True, exist_ok=True)
    report.unlink(missing_ok=True)  # this check's findings only
    total = len(split.train) + len(split.val)
    # Nothing is trained: a bad file is recorded, not replaced, and the check never stops half-way.
    guard = ReadGuard("skip", str(report), limit=1.0, what="--check-data", total=total, replace=False)
    for source in (split.train, split.val):
        loader = build_loader(_ReadOnly(source, guard), batch_size=64, workers=opts.workers,
                              device=resolve_device("cpu"), worker_init_fn=seed_worker, persistent=False)
        for _ in loader:
            pass
    bad = [path for path, _ in read_report(report)]
    if bad:
        stops = too_many_bad(len(bad), total, opts.bad_images_limit, opts.bad_images_floor)
        verdict = (f"more than --bad-images-floor {opts.bad_images_floor} files and --bad-images-limit "
                   f"{opts.bad_images_limit:g} of the images: a training run would stop" if stops else
                   f"within --bad-images-floor {opts.bad_images_floor} files or --bad-images-limit "
                   f"{opts.bad_images_limit:g} of the images: a training run would go on")
        print(f"{len(bad)} of {total} images are unreadable ({name_files(bad)}), {verdict}; all are listed in {report}")
    else:
        report.unlink(missing_ok=True)
        print(f"all {total} images are readable")
    return {"check_data": len(bad), "exit_code": 1 if bad else 0}


def _find_lr(opts: Options) -> Dict[str, Any]:
    """The LR range test on the training data with the run's model, loss and optimizer; nothing is saved but
    the picture (the model is built here and thrown away; find_lr also puts everything back)."""
    task, device = get_task(opts.task), resolve_device(opts.device)
    split = prepare_data(opts, task)
    model, dcfg = prepare_model(opts, task, split)
    loaders = prepare_loaders(opts, task, split, dcfg, device)
    train_loader, sampler = loaders.train, loaders.sampler
    sampler.set_epoch(1)
    loss_fn, optimizer, _, _ = prepare_optimization(opts, task, split, model, len(train_loader))
    model.to(device)
    if opts.channels_last:
        model.to(memory_format=torch.channels_last)
    amp_dtype = resolve_amp_dtype(device, opts.amp, opts.amp_dtype)
    cfg = StepConfig(loss_fn.to(device), device, amp_dtype, make_scaler(device, amp_dtype), clip_grad=opts.clip_grad,
                     channels_last=opts.channels_last, step=task.step, move=None)
    try:
        result = find_lr(model, train_loader, optimizer, cfg, ramp=(1e-7, 10.0, opts.find_lr_steps))
    finally:
        loaders.close()
    path = plot_lr_find(result, run_dir_of(opts) / "lr_find.png")
    if not result["usable"]:  # say so before the number: a guess must not pass for a measurement
        log.warning("--find-lr: the loss shows no clear descent over %d steps; the LR below is a guess. Try more "
                    "--find-lr-steps, a larger --batch-size, or check the data and --loss", result["steps"])
    print(f"suggested LR: {result['suggestion']:.3g} ({result['note']}; {result['steps']} steps"
          f"{', stopped when the loss diverged' if result['stopped_early'] else ''}); plot: {path}")
    return {"find_lr": result["suggestion"], "usable": result["usable"], "plot": path, "steps": result["steps"]}


ONE_SHOTS: Dict[str, Callable[[Options], Dict[str, Any]]] = {
    "list_models": _list_models, "summary": _summary, "show_aug": _show_aug, "preview_lr": _preview_lr,
    "check_data": _check_data, "find_lr": _find_lr}
WRITERS = ("show_aug", "preview_lr", "check_data", "find_lr")  # the one-shots that write into the run folder


def run_one_shot(name: str, opts: Options) -> Dict[str, Any]:
    """Run the one-shot ``name`` (see :data:`ONE_SHOTS`) with the effective options ``opts``.

    A one-shot that writes a file gets its run folder made first (a fresh clone has no ``runs/``), and a
    folder made here that is left empty (nothing to report, or the command failed) is removed again.
    """
    made = []  # the folders this call creates, deepest first
    if name in WRITERS:
        folder = run_dir_of(opts)
        made = [d for d in (folder, *folder.parents) if not d.exists()]
        folder.mkdir(parents=True, exist_ok=True)
    try:
        return ONE_SHOTS[name](opts)
    finally:
        for d in made:
            if not d.is_dir() or any(d.iterdir()):
                break
            d.rmdir()


def requested(opts: Options) -> Optional[str]:
    """The name of the one-shot command ``opts`` asks for, or None for a training run."""
    return next((name for name in ONE_SHOTS if getattr(opts, name)), None)
