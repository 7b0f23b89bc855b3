"""Preparing a training run: options -> data -> model -> optimization, nothing written yet.

Each stage is a function of explicit arguments; :func:`prepare` chains them into a :class:`Prepared`
run. The one-shot commands (``--summary``, ``--show-aug``, ``--preview-lr``) call the same stages and
stop where they have what they need. Nothing here touches the run folder: a command that fails
while preparing leaves an existing run exactly as it was.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

import numpy as np
import torch
from torch import nn

from ..augment import resolve_backend, seed_worker
from ..data import (REPORT, DataSplit, DeviceLoader, EpochSampler, ReadGuard, Subset, TransformedDataset,
                    build_loader, transform_draft)
from ..engine import (check_soft_targets, create_ema, create_mixup, create_optimizer, make_scaler, param_groups,
                      resolve_amp_dtype, resolve_device)
from ..engine.distributed import world
from ..losses import create_loss
from ..models import model_summary, set_backbone_frozen
from ..options import Options
from .. import __version__
from ..paths import detect_platform, resolve_path
from ..errors import ConfigError
from ..registry import parse_kwargs
from ..schedule import LRSchedule, create_scheduler
from ..tasks import Task, detect_task, get_task
from .caching import RunCache, open_caches
from .kfold import fold_number, plan_folds, run_root, split_for_fold
from .saver import BackgroundSaver

__all__ = ["DRY_RUN", "Prepared", "hw", "backbone_frozen", "effective_options", "as_asked", "dry_run_reductions",
           "seed_everything", "run_dir_of", "read_guard", "prepare_data", "prepare_model", "Loaders", "batch_finisher", "prepare_loaders",
           "prepare_optimization", "prepare_mixing", "prepare"]

log = logging.getLogger("kernel")
DRY_RUN = dict(train_batches=3, val_batches=2, epochs=2, batch_size=8)  # what --dry-run shrinks the run to


@dataclass
class Prepared:
    """Everything a training run needs, built and checked; see :func:`prepare`."""

    opts: Options
    task: Task
    device: torch.device
    run_dir: Path
    split: DataSplit
    model: nn.Module            # the plain model, on the device
    train_model: Optional[nn.Module]  # what the loop calls: the model in DDP and/or torch.compile (fit builds it)
    dcfg: Dict[str, Any]        # input size, mean/std, interpolation, crop
    train_loader: Any
    val_loader: Any
    train_sampler: EpochSampler  # the epoch's order; set_epoch(epoch, batches already done) before each
    loss_fn: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: LRSchedule
    steps_per_epoch: int
    amp_dtype: Optional[torch.dtype]
    scaler: Optional[torch.amp.GradScaler]
    mix: Any = None             # timm Mixup (--mixup, --cutmix, --label-smoothing) or None
    ema: Any = None             # timm ModelEmaV3 (--ema) or None; .module is the average
    frozen: Optional[bool] = None  # the backbone's state when train_model was built
    cache: Optional[RunCache] = None  # the decoded-image cache (--cache), None when uncached
    val_view: Any = None        # the validation images as float tensors, for the pictures
    feed: Any = None            # another loader of these datasets -> batches as the step takes them (OOF)
    saver: BackgroundSaver = field(default_factory=BackgroundSaver)  # end-of-epoch files, written on a thread

    def close_loaders(self) -> None:
        """Stop the training and validation loaders' persistent workers: the run is done with them."""
        for loader in (self.train_loader, self.val_loader):
            loader.close()


def hw(size: Any) -> Tuple[int, int]:
    """(H, W) of an input size given as S or (H, W)."""
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def backbone_frozen(opts: Options, epoch: int) -> bool:
    """Whether the backbone is frozen during ``epoch`` (``--freeze backbone``, ``--unfreeze-at``)."""
    return opts.freeze == "backbone" and (opts.unfreeze_at == 0 or epoch < opts.unfreeze_at)


def effective_options(opts: Options) -> Options:
    """A copy of ``opts`` as the run uses them: dry-run limits applied, ``auto`` task, monitor, workers and
    augmentation backend resolved.

    The caller's object is never changed; the copy is what checkpoints record (``config.yaml`` records it
    without the dry run's reductions, see :func:`as_asked`).
    """
    changes: Dict[str, Any] = {}
    if opts.task == "auto":
        data = opts.data if opts.data == "shapes" else resolve_path(opts.data, "data")
        changes["task"] = detect_task(opts, data)
    task = get_task(changes.get("task", opts.task))
    task.check_options(opts)
    if opts.dry_run:
        changes.update(epochs=min(opts.epochs, DRY_RUN["epochs"]), batch_size=min(opts.batch_size, DRY_RUN["batch_size"]))
    if opts.workers == "auto":
        from .launch import auto_workers, devices_wanted
        changes["workers"] = auto_workers(world().size if world().size > 1 else devices_wanted(opts.devices, opts.device))
    monitor = task.monitors[0] if opts.monitor == "auto" else opts.monitor
    if monitor not in task.monitors:
        raise ConfigError(f"--monitor {monitor}: not a metric of --task {task.name}; use one of "
                          f"{', '.join(task.monitors)} (or auto)")
    changes["monitor"] = monitor
    if opts.fast_decode == "on" and not task.fast_decode:
        raise ConfigError(f"--fast-decode on: --task {task.name} reads masks at full size, which an image decoded at "
                          "reduced scale would not align with; use --fast-decode off (or auto)")
    changes["fast_decode"] = ("on" if task.fast_decode else "off") if opts.fast_decode == "auto" else opts.fast_decode
    # the library auto picks here, recorded in config.yaml and checkpoints: a resume elsewhere keeps it
    changes["aug_backend"] = resolve_backend(opts.aug, opts.aug_backend)
    return dataclasses.replace(opts, **changes)


def as_asked(asked: Options, effective: Options) -> Options:
    """``effective`` with the dry run's reductions undone: what ``config.yaml`` records, so that passed back with
    ``--config`` it asks for the same run (``auto`` values resolved from the data stay resolved)."""
    return dataclasses.replace(effective, **{key: getattr(asked, key) for key in ("epochs", "batch_size")})


def dry_run_reductions(asked: Options) -> str:
    """What ``--dry-run`` shrinks the run to, in words, for the log (``config.yaml`` keeps ``asked``)."""
    return (f"--dry-run: epochs {asked.epochs} -> {min(asked.epochs, DRY_RUN['epochs'])}, batch size "
            f"{asked.batch_size} -> {min(asked.batch_size, DRY_RUN['batch_size'])}, {DRY_RUN['train_batches']} "
            f"training and {DRY_RUN['val_batches']} validation batches of images; config.yaml keeps the options "
            "as given")


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed Python, numpy and torch; with ``deterministic``, deterministic kernels (and cuBLAS) wherever torch has
    them, a warning where it has none."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # required by deterministic cuBLAS
    # Both ways, so a later run in the same process (a notebook, the tests) does not inherit an earlier one's;
    # only when it changes something: the call imports torch's compiler stack (seconds per process).
    if deterministic or torch.are_deterministic_algorithms_enabled():
        # warn_only: an operation with no deterministic CUDA kernel (the loss reductions of 2-D cross-entropy,
        # nll_loss2d, among them) warns and runs as it is instead of ending the run (Lightning's "warn")
        torch.use_deterministic_algorithms(deterministic, warn_only=True)
    torch.backends.cudnn.benchmark = not deterministic


def run_dir_of(opts: Options) -> Path:
    """The run folder: ``--output``/``--name`` (``/kaggle/working/NAME`` on Kaggle), ``.../fold{i}`` in a k-fold run."""
    root = run_root(opts)
    return root / f"fold{fold_number(opts)}" if opts.folds else root


def _subset(source: Any, n: int, seed: int) -> Subset:
    keep = np.random.default_rng(seed).permutation(len(source))[:n]
    return Subset(source, sorted(keep.tolist()))


def prepare_data(opts: Options, task: Task, new_folds: bool = False) -> DataSplit:
    """The task's train/val sources for ``opts`` (paths found on Kaggle too): ``--fold``'s split in a k-fold
    run (``new_folds``: split again, see :func:`kernel.run.kfold.plan_folds`); a subset for ``--dry-run``."""
    paths = {k: getattr(opts, k) if getattr(opts, k) in ("", "shapes") else resolve_path(getattr(opts, k), k.replace("_", "-"))
             for k in ("data", "val_data")}
    resolved = dataclasses.replace(opts, **paths)
    split = task.build_data(resolved)
    if opts.folds:
        split = split_for_fold(split, plan_folds(resolved, task, split, new=new_folds))
    if opts.dry_run:
        split.train = _subset(split.train, DRY_RUN["train_batches"] * opts.batch_size, opts.seed)
        split.val = _subset(split.val, DRY_RUN["val_batches"] * opts.batch_size, opts.seed)
    log.info("data: %d train / %d val images, %s%s", len(split.train), len(split.val), task.describe_labels(split),
             f"; fold {split.folds.fold} of {split.folds.k}" if split.folds is not None else "")
    return split


def prepare_model(opts: Options, task: Task, split: DataSplit) -> Tuple[nn.Module, Dict[str, Any]]:
    """The task's model (pretrained weights found on Kaggle too) and its data config."""
    pretrained = opts.pretrained
    if pretrained not in ("none", "hub") and not pretrained.startswith("local-dir:"):
        pretrained = resolve_path(pretrained, "pretrained")
    model = task.create_model(opts, split, pretrained)
    set_backbone_frozen(model, backbone_frozen(opts, 1))
    log.info(model_summary(model, opts.model))
    dcfg = task.data_config(model, opts)
    log.info("input %s px, mean %s, std %s, %s; augmentation %s", "x".join(map(str, hw(dcfg["img_size"]))),
             tuple(round(m, 3) for m in dcfg["mean"]), tuple(round(s, 3) for s in dcfg["std"]),
             dcfg["interpolation"], opts.aug if isinstance(opts.aug, str) else "custom")
    return model, dcfg


def read_guard(opts: Options, total: int) -> ReadGuard:
    """How samples are read: unreadable files skipped or fatal, logged in the run folder's bad_images.txt.
    One guard per dataset, each counting against the whole run's ``total`` images (training and validation),
    as the epoch check does: where a bad file falls does not change the decision."""
    return ReadGuard(opts.bad_images, str(run_dir_of(opts) / REPORT), opts.bad_images_limit, "--data",
                     floor=opts.bad_images_floor, total=total)


@dataclass
class Loaders:
    """This process's share of the data: the training and validation loaders (batches on the device, see
    :class:`~kernel.data.DeviceLoader`), the training sampler, the decoded-image cache they read through (None:
    uncached), the validation images as float tensors for the pictures (``val_view``), and ``feed``, which
    turns another loader of these datasets (the OOF pass) into one that yields batches as the step takes them."""

    train: Any
    val: Any
    sampler: EpochSampler
    val_view: TransformedDataset
    feed: Callable[[Any], DeviceLoader]
    cache: Optional[RunCache] = None

    def close(self) -> None:
        """Stop both loaders' persistent workers (when the run or the one-shot that uses them is done)."""
        for loader in (self.train, self.val):
            loader.close()


def batch_finisher(task: Task, split: DataSplit, device: torch.device, channels_last: bool,
                   inputs: Optional[Callable]) -> Callable[[Any], Any]:
    """What a collated batch goes through on its way to the step: the task's move to ``device``, then its
    :meth:`~kernel.tasks.Task.on_device` (``inputs``: the uint8 -> normalized float conversion, or None)."""
    def finish(batch: Any) -> Any:
        return task.on_device(task.move(batch, device, channels_last), split, inputs)
    return finish


def prepare_loaders(opts: Options, task: Task, split: DataSplit, dcfg: Dict[str, Any],
                    device: torch.device, cache: bool = False) -> Loaders:
    """The training and validation loaders; ``cache``: read through ``--cache`` (a whole run; the one-shot
    commands read each image once and leave it off).

    The order depends only on (seed, epoch) and each sample's augmentation on (seed, epoch, index), so
    the result is the same for any worker count, process count or resume point; the cache changes no pixel, and
    uint8 batches (``--uint8-batches``) normalized on the device give the workers' float values.
    """
    total = len(split.train) + len(split.val)
    transforms = {kind: task.transform(opts, dcfg, train=kind == "train") for kind in ("train", "val")}
    run_cache = open_caches(opts, split, transforms) if cache else None
    # uint8 batches normalized on the device (a task's own transform without for_device keeps the float path)
    device_side = opts.uint8_batches and all(hasattr(t, "for_device") for t in transforms.values())
    as_uint8 = {kind: t.for_device() if device_side else None for kind, t in transforms.items()}
    inputs = as_uint8["train"].normalizer() if device_side else None

    def dataset(source: Any, train: bool, float_view: bool = False) -> TransformedDataset:
        kind = "train" if train else "val"
        transform = transforms[kind] if float_view or as_uint8[kind] is None else as_uint8[kind]
        if run_cache is not None:  # below the guard: a bad file is stored as bad, never as its replacement
            source = run_cache.wrap(source, transforms[kind], opts)
        return TransformedDataset(source, transform, guard=read_guard(opts, total), mask_target=task.target(split),
                                  seed=opts.seed if train else None, draft=transform_draft(transform, opts.fast_decode))

    finish = batch_finisher(task, split, device, opts.channels_last, inputs)

    def feed(loader: Any) -> DeviceLoader:
        return DeviceLoader(loader, finish, device)

    w = world()
    samplers = [EpochSampler(len(source), seed=opts.seed, shuffle=train, batch_size=opts.batch_size,
                             drop_last=train, rank=w.rank, world=w.size) for source, train in ((split.train, True),
                                                                                            (split.val, False))]
    loaders = [feed(build_loader(dataset(source, train), batch_size=opts.batch_size, workers=opts.workers,
                                 device=device, sampler=sampler, worker_init_fn=seed_worker, seed=opts.seed,
                                 collate_fn=task.collate))
               for (source, train), sampler in zip(((split.train, True), (split.val, False)), samplers)]
    if run_cache is not None:  # what an epoch reads, every process together (drop_last leaves a few out)
        run_cache.reads_per_epoch = (len(samplers[0]) + len(samplers[1])) * w.size
    return Loaders(loaders[0], loaders[1], samplers[0], dataset(split.val, False, float_view=True), feed, run_cache)


def prepare_optimization(opts: Options, task: Task, split: DataSplit, model: nn.Module,
                         batches_per_epoch: int) -> Tuple[nn.Module, torch.optim.Optimizer, LRSchedule, int]:
    """(loss, optimizer, LR schedule, optimizer updates per epoch)."""
    loss_spec = task.default_loss(split) if opts.loss == "auto" else opts.loss
    task.check(opts, split, loss_spec)
    loss_fn = create_loss(loss_spec, **{**task.loss_kwargs(split), **parse_kwargs(opts.loss_kwargs, "loss-kwargs")})
    optimizer = create_optimizer(opts.opt, param_groups(model, opts.weight_decay, opts.backbone_lr_mult),
                                 opts.lr, opts.momentum)
    steps_per_epoch = math.ceil(batches_per_epoch / opts.accum_steps)
    sched_kwargs = parse_kwargs(opts.sched_kwargs, "sched-kwargs")
    if opts.sched == "step_decay":  # the flags, when given, are step_decay's kwargs
        for key in ("decay_every", "decay_rate"):
            if getattr(opts, key) is not None:
                sched_kwargs.setdefault(key, getattr(opts, key))
    schedule = create_scheduler(opts.sched, optimizer, epochs=opts.epochs, steps_per_epoch=steps_per_epoch,
                                interval=opts.sched_interval, warmup_epochs=opts.warmup_epochs,
                                warmup_steps=opts.warmup_steps, monitor_mode=task.monitor_mode(opts.monitor),
                                **sched_kwargs)
    return loss_fn, optimizer, schedule, steps_per_epoch


def prepare_mixing(opts: Options, task: Task, split: DataSplit, loss_fn: nn.Module) -> Any:
    """timm ``Mixup`` for ``--mixup``/``--cutmix``/``--label-smoothing`` (None when off), its loss checked."""
    mix = create_mixup(opts.mixup, opts.cutmix, opts.mixup_prob, opts.mixup_switch_prob, opts.label_smoothing,
                       len(split.classes), split.multilabel)
    if mix is None:
        return None
    if opts.batch_size % 2:  # timm mixes each image with the batch's mirror image
        raise ConfigError(f"--batch-size {opts.batch_size}: Mixup/CutMix pair the images of a batch; use an even "
                          "batch size")
    check_soft_targets(loss_fn, task.default_loss(split) if opts.loss == "auto" else str(opts.loss),
                       len(split.classes))
    return mix


def prepare(opts: Options, new_folds: bool = False) -> Prepared:
    """Build every part of a run from effective options (see :func:`effective_options`).

    Seeds first, so data splits, initial weights and augmentations follow ``--seed``. ``new_folds``:
    a fresh ``--fold all`` makes a new k-fold split (see :func:`prepare_data`).
    """
    seed_everything(opts.seed, opts.deterministic)
    task, device = get_task(opts.task), resolve_device(opts.device)
    log.info("kernel %s on %s (%s), torch %s; task %s", __version__, detect_platform(), device, torch.__version__,
             task.name)
    split = prepare_data(opts, task, new_folds)
    model, dcfg = prepare_model(opts, task, split)
    loaders = prepare_loaders(opts, task, split, dcfg, device, cache=True)
    loss_fn, optimizer, schedule, spe = prepare_optimization(opts, task, split, model, len(loaders.train))
    mix = prepare_mixing(opts, task, split, loss_fn)
    amp_dtype = resolve_amp_dtype(device, opts.amp, opts.amp_dtype)
    scaler = make_scaler(device, amp_dtype)
    if opts.sync_bn and world().size > 1:
        if device.type != "cuda":
            raise ConfigError("--sync-bn: SyncBatchNorm runs on GPUs only; drop it on CPU")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device)
    loss_fn.to(device)
    if opts.channels_last:
        model.to(memory_format=torch.channels_last)
    ema = create_ema(model, opts.ema) if opts.ema else None  # a copy of the weights as placed on the device
    if ema is not None:
        log.info("EMA of the weights (decay %g): validation, best.pt and model.safetensors use it", opts.ema)
    return Prepared(opts=opts, task=task, device=device, run_dir=run_dir_of(opts), split=split, model=model,
                    train_model=None, dcfg=dcfg, train_loader=loaders.train, val_loader=loaders.val,
                    train_sampler=loaders.sampler, cache=loaders.cache,
                    val_view=loaders.val_view, feed=loaders.feed, loss_fn=loss_fn, optimizer=optimizer, schedule=schedule,
                    steps_per_epoch=spe, amp_dtype=amp_dtype, scaler=scaler, mix=mix, ema=ema,
                    # several processes write before going on: they hear of each save at the same step
                    saver=BackgroundSaver(opts.async_save and world().size == 1))
