"""Fine-tune an image classifier: ``python -m kernel.train [options]`` (or ``python kernel/train.py``).

This module only wires the parts together: options -> paths -> data -> model -> loss,
optimizer, schedule -> AMP loop -> checkpoints and logs. See ``--help`` for every option.
"""
from __future__ import annotations

if __name__ == "__main__" and not __package__:  # run as a file: make the package importable
    import os as _os
    import sys as _sys

    # sys.path[0] is kernel/ itself, where platform.py would shadow the standard library's.
    _sys.path[0] = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
    from kernel.train import main as _main

    _sys.exit(_main())

import logging
import math
import os
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import numpy as np
import torch

from . import __version__
from .augment import build_transform, save_aug_grid, seed_worker
from .checkpoint import (atomic_write, export_safetensors, load_checkpoint, rng_state,
                         save_checkpoint, set_rng_state, unwrap_model)
from .data import Subset, TransformedDataset, build_loader, build_sources
from .finetune import (create_model, create_optimizer, list_models, model_summary, param_groups,
                       resolve_data_config, set_backbone_frozen, train_mode)
from .loop import evaluate, make_scaler, resolve_amp_dtype, resolve_device, train_one_epoch
from .losses import create_loss
from .options import Options, options_to_dict, parse_options, save_config
from .platform import default_output_dir, detect_platform, find_in_inputs, resolve_path
from .predict import check_predict_spec, predict_after_training
from .registry import ConfigError, parse_kwargs
from .report import Progress, close_logging, setup_logging, write_json, write_metrics_csv
from .reporter import EpochReporter
from .scheduler import create_scheduler, format_lr_table, preview_lr

__all__ = ["main", "run"]

log = logging.getLogger("kernel")
DRY_RUN = dict(train_batches=3, val_batches=2, epochs=2, batch_size=8)


def _seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # required by deterministic cuBLAS
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True


def _run_dir(opts: Options) -> Path:
    return Path(opts.output) / opts.name if opts.output else default_output_dir(opts.name)


def _resume_path(opts: Options, run_dir: Path) -> Optional[Path]:
    """``--resume auto``: this run's last.pt, or on Kaggle a previous version's output under the inputs."""
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


def _subset(source: Any, n: int, seed: int) -> Subset:
    keep = np.random.default_rng(seed).permutation(len(source))[:n]
    return Subset(source, sorted(keep.tolist()))


def _epoch_seed(seed: int, epoch: int) -> int:
    return seed * 100_003 + epoch  # distinct per (seed, epoch); same on a resumed run


def run(opts: Options) -> Dict[str, Any]:
    """Train with ``opts``; returns the summary dict (also written to ``summary.json``)."""
    start_time = time.time()
    if opts.dry_run:
        opts.epochs = min(opts.epochs, DRY_RUN["epochs"])
        opts.batch_size = min(opts.batch_size, DRY_RUN["batch_size"])
    _seed_everything(opts.seed, opts.deterministic)
    device = resolve_device(opts.device)
    run_dir = _run_dir(opts)
    setup_logging(None if opts.summary else run_dir)
    log.info("kernel %s on %s (%s), torch %s", __version__, detect_platform(), device, torch.__version__)

    split = build_sources(
        opts.data if opts.data == "shapes" else resolve_path(opts.data, "data"), val_data=resolve_path(opts.val_data, "val-data") or "",
        val_split=opts.val_split, csv_file=opts.csv, image_dir=opts.image_dir, image_col=opts.image_col,
        label_col=opts.label_col, in_chans=opts.in_chans, seed=opts.seed)
    train_src, val_src = split.train, split.val
    if opts.dry_run:
        train_src = _subset(train_src, DRY_RUN["train_batches"] * opts.batch_size, opts.seed)
        val_src = _subset(val_src, DRY_RUN["val_batches"] * opts.batch_size, opts.seed)
    log.info("data: %d train / %d val images, %d classes%s", len(train_src), len(val_src), len(split.classes),
             " (multi-label)" if split.multilabel else "")

    pretrained = opts.pretrained if opts.pretrained in ("none", "hub") or opts.pretrained.startswith("local-dir:") \
        else resolve_path(opts.pretrained, "pretrained")
    model = create_model(opts.model, len(split.classes), opts.in_chans, pretrained)
    frozen_at = lambda epoch: opts.freeze == "backbone" and (opts.unfreeze_at == 0 or epoch < opts.unfreeze_at)
    set_backbone_frozen(model, frozen_at(1))
    log.info(model_summary(model, opts.model))
    dcfg = resolve_data_config(model, opts.img_size, opts.in_chans)
    if opts.summary:
        from .summary import summary_table
        print(summary_table(model, (opts.in_chans, dcfg["img_size"], dcfg["img_size"])))
        return {"summary": True}

    tf_kwargs = dict(img_size=dcfg["img_size"], mean=dcfg["mean"], std=dcfg["std"],
                     interpolation=dcfg["interpolation"], crop_pct=dcfg["crop_pct"], in_chans=opts.in_chans)
    train_tf = build_transform(opts.aug, train=True, backend=opts.aug_backend, **tf_kwargs)
    eval_tf = build_transform(opts.aug, train=False, backend=opts.aug_backend, **tf_kwargs)
    log.info("input %dpx, mean %s, std %s, %s; augmentation %s", dcfg["img_size"],
             tuple(round(m, 3) for m in dcfg["mean"]), tuple(round(s, 3) for s in dcfg["std"]),
             dcfg["interpolation"], opts.aug if isinstance(opts.aug, str) else "custom")
    if opts.show_aug:
        ds = TransformedDataset(train_src, train_tf, with_mask=True)
        path = run_dir / "augmentations.png"
        save_aug_grid([ds[i % len(ds)][0::2] for i in range(opts.show_aug)], dcfg["mean"], dcfg["std"], path)
        log.info("wrote %s", path)
        return {"show_aug": str(path)}

    generator = torch.Generator()
    train_loader = build_loader(TransformedDataset(train_src, train_tf), batch_size=opts.batch_size, train=True,
                                workers=opts.workers, device=device, generator=generator,
                                worker_init_fn=seed_worker, persistent=not opts.deterministic)
    val_loader = build_loader(TransformedDataset(val_src, eval_tf), batch_size=opts.batch_size, train=False,
                              workers=opts.workers, device=device, worker_init_fn=seed_worker)

    loss_spec = opts.loss
    if split.multilabel and loss_spec == "ce":
        log.warning("multi-label data: using --loss bce instead of ce (pass --loss to choose another)")
        loss_spec = "bce"
    loss_fn = create_loss(loss_spec, **parse_kwargs(opts.loss_kwargs, "loss-kwargs")).to(device)
    optimizer = create_optimizer(opts.opt, param_groups(model, opts.weight_decay, opts.backbone_lr_mult),
                                 opts.lr, opts.momentum)
    steps_per_epoch = math.ceil(len(train_loader) / opts.accum_steps)
    sched_kwargs = parse_kwargs(opts.sched_kwargs, "sched-kwargs")
    if opts.sched == "step_decay":
        sched_kwargs.setdefault("decay_every", opts.decay_every)
        sched_kwargs.setdefault("decay_rate", opts.decay_rate)
    schedule = create_scheduler(opts.sched, optimizer, epochs=opts.epochs, steps_per_epoch=steps_per_epoch,
                                interval=opts.sched_interval, warmup_epochs=opts.warmup_epochs,
                                warmup_steps=opts.warmup_steps,
                                monitor_mode="max" if opts.monitor == "val_acc" else "min", **sched_kwargs)
    if opts.preview_lr:
        rows = preview_lr(schedule, optimizer, epochs=opts.epochs, steps_per_epoch=steps_per_epoch,
                          path=run_dir / "lr.png")
        print(format_lr_table(rows))
        log.info("wrote %s", run_dir / "lr.png")
        return {"preview_lr": str(run_dir / "lr.png")}

    amp_dtype = resolve_amp_dtype(device, opts.amp, opts.amp_dtype)
    scaler = make_scaler(device, amp_dtype)
    log.info("precision: %s%s", "fp32" if amp_dtype is None else str(amp_dtype).replace("torch.", ""),
             " + GradScaler" if scaler else "")
    model.to(device)
    if opts.channels_last:
        model.to(memory_format=torch.channels_last)
    train_model = torch.compile(model) if opts.compile else model

    start_epoch, best, best_epoch, history = 1, None, 0, []
    resume = _resume_path(opts, run_dir)
    if resume is not None:
        ckpt = load_checkpoint(resume)
        if ckpt.get("classes") != split.classes:
            raise ConfigError(f"--resume: {resume} was trained on classes {ckpt.get('classes')}, not these")
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        schedule.load_state_dict(ckpt["schedule"])
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        start_epoch, best, best_epoch = ckpt["epoch"] + 1, ckpt["best_metric"], ckpt["best_epoch"]
        history = list(ckpt["history"])
        set_rng_state(ckpt["rng"])
        log.info("resumed from %s at epoch %d", resume, start_epoch)

    predict_spec = check_predict_spec(opts.predict, resolve_paths=True) if opts.predict else None
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(opts, run_dir / "config.yaml")
    write_json(split.classes, run_dir / "classes.json")  # same format as export_safetensors
    reporter = EpochReporter(run_dir, classes=split.classes, mean=dcfg["mean"], std=dcfg["std"],
                             monitor=opts.monitor, multilabel=split.multilabel,
                             val_dataset=val_loader.dataset, tensorboard=opts.tensorboard,
                             start_epoch=start_epoch)
    reporter.on_train_start(unwrap_model(model), (opts.in_chans, dcfg["img_size"], dcfg["img_size"]), device)
    maximize = opts.monitor == "val_acc"
    stale = 0 if best_epoch == 0 else start_epoch - 1 - best_epoch
    epoch = start_epoch - 1
    for epoch in range(start_epoch, opts.epochs + 1):
        t0 = time.perf_counter()
        frozen = frozen_at(epoch)
        if frozen != frozen_at(epoch - 1) or epoch == start_epoch:
            set_backbone_frozen(model, frozen)
            if not frozen and opts.freeze == "backbone":
                log.info("epoch %d: backbone unfrozen", epoch)
        generator.manual_seed(_epoch_seed(opts.seed, epoch))
        train_mode(model, frozen)
        lr = optimizer.param_groups[-1]["lr"]  # the head's group: the nominal LR
        tr = train_one_epoch(train_model, train_loader, optimizer, loss_fn, device=device, amp_dtype=amp_dtype,
                             scaler=scaler, accum_steps=opts.accum_steps, clip_grad=opts.clip_grad,
                             schedule=schedule, channels_last=opts.channels_last,
                             progress=Progress(f"epoch {epoch}/{opts.epochs}", opts.log_every))
        va = evaluate(train_model, val_loader, loss_fn, device=device, amp_dtype=amp_dtype,
                      channels_last=opts.channels_last, return_outputs=True)  # probs feed the best-epoch plots
        metric = va["acc1"] if maximize else va["loss"]
        schedule.step_epoch(metric)
        improved = best is None or (metric > best if maximize else metric < best)
        if improved:
            best, best_epoch, stale = metric, epoch, 0
        else:
            stale += 1
        row = dict(epoch=epoch, lr=lr, train_loss=tr["loss"], train_acc=tr["acc1"], val_loss=va["loss"],
                   val_acc=va["acc1"], val_acc5=va.get("acc5", ""), epoch_time=time.perf_counter() - t0,
                   img_per_s=tr["img_per_s"])
        history.append(row)
        state = {"model": unwrap_model(model).state_dict(), "optimizer": optimizer.state_dict(),
                 "schedule": schedule.state_dict(), "scaler": scaler.state_dict() if scaler else None,
                 "epoch": epoch, "best_metric": best, "best_epoch": best_epoch, "rng": rng_state(),
                 "options": options_to_dict(opts), "classes": split.classes, "multilabel": split.multilabel,
                 "history": history, "version": __version__}
        save_checkpoint(state, run_dir / "last.pt")
        if improved:
            atomic_write(run_dir / "best.pt", lambda tmp: shutil.copyfile(run_dir / "last.pt", tmp))
            export_safetensors(model, split.classes, run_dir / "model.safetensors",
                               {"model": opts.model, "in_chans": str(opts.in_chans),
                                "multilabel": str(split.multilabel).lower()})
        write_metrics_csv(history, run_dir / "metrics.csv")
        reporter.on_epoch_end(epoch, history, va, improved=improved, best_epoch=best_epoch)
        log.info("epoch %d/%d  lr %.3g  train loss %.4f acc %.2f  val loss %.4f acc %.2f%s  %.0f img/s  %.1fs",
                 epoch, opts.epochs, lr, tr["loss"], tr["acc1"], va["loss"], va["acc1"],
                 "  *best*" if improved else "", tr["img_per_s"], row["epoch_time"])
        if tr["skipped_steps"]:
            log.info("GradScaler skipped %d of %d updates (inf/NaN gradients)", tr["skipped_steps"],
                     tr["updates"] + tr["skipped_steps"])
        if opts.early_stop and stale >= opts.early_stop:
            log.info("early stop: %s has not improved for %d epochs", opts.monitor, stale)
            break

    summary = {"best_metric": best, "best_epoch": best_epoch, "monitor": opts.monitor,
               "epochs_run": len(history), "last_epoch": epoch, "device": str(device),
               "amp_dtype": "fp32" if amp_dtype is None else str(amp_dtype).replace("torch.", ""),
               "wall_time": round(time.time() - start_time, 3), "run_dir": str(run_dir),
               "classes": split.classes, "version": __version__}
    write_json(summary, run_dir / "summary.json")
    reporter.on_train_end()
    log.info("done: best %s %.4g at epoch %d; outputs in %s", opts.monitor, best if best is not None else float("nan"),
             best_epoch, run_dir.resolve())
    if predict_spec is not None and (run_dir / "best.pt").is_file():
        summary["predict"] = predict_after_training(predict_spec, run_dir, opts)
    return summary


def main(argv: Optional[Sequence[str]] = None, baked: Optional[Dict[str, Any]] = None) -> int:
    """Command-line entry: returns 0 on success, 2 on a user error (one line, no traceback)."""
    try:
        opts = parse_options(argv, baked)
        if opts.list_models:
            names = list_models(opts.list_models)
            print("\n".join(names) if names else f"no model matches {opts.list_models!r}")
            return 0
        run(opts)
        return 0
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except torch.OutOfMemoryError:
        print("error: out of memory; lower --batch-size or --img-size, or use --amp", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print("interrupted; resume with --resume auto", file=sys.stderr)
        return 130
    finally:
        close_logging()


if __name__ == "__main__":
    sys.exit(main())
