"""Train an image model: ``python -m kernel.train [options]`` (or ``python kernel/train.py``).

This module only wires the stages of :mod:`kernel.run` together: options -> prepare (data, model,
optimization) -> resume -> fit -> finish, one of the one-shot commands, or one process per device
(:mod:`kernel.run.launch`; under ``torchrun`` this process joins the group). See ``--help``.
"""
from __future__ import annotations

if __name__ == "__main__" and not __package__:  # `python kernel/train.py`: run as kernel.train
    import os as _os
    import sys as _sys

    _sys.path[0] = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
    from kernel.cli import run_file

    run_file(__file__)

import dataclasses
import logging
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import torch

from .cli import one_line
from .config import parse_options, save_config
from .data import REPORT, collect_inputs
from .engine import write_classes_json
from .engine.distributed import barrier, destroy, init_from_env, world
from .options import Options
from .paths import remove_leftovers
from .errors import ConfigError
from .report import EpochReporter, attach_log_file, close_logging, read_json, setup_logging
from .run import (as_asked, dry_run_reductions, effective_options, finish, fit, input_shape, prepare, requested,
                  resume_state, run_one_shot, seed_everything)
from .run.budget import StopControl, StopSignals, process_start, resolve_durations
from .run.seams import SEAMS
from .run.resume import carry_over, repair_best
from .run.folder import resolve_run_folder
from .run.kfold import OOF, carry_over_root, clear_other_folds, fold_number, run_root, train_folds, write_plan
from .run.crossval import finish_cv, write_fold_oof
from .run.launch import devices_wanted, in_torchrun, launch

__all__ = ["main", "group_main", "run", "train"]

log = logging.getLogger("kernel")


def train(opts: Options) -> Dict[str, Any]:
    """One run, or with ``--folds K --fold all`` every fold in turn; returns the (CV) summary.

    It never writes into a folder that holds another run unless ``--resume`` or ``--overwrite`` says so: a
    fresh run takes the next free name (:func:`kernel.run.folder.resolve_run_folder`).
    """
    opts = resolve_run_folder(opts)
    if opts.folds:
        carry_over_root(opts)  # rank 0 copies; the others wait for a whole folder to plan from
        barrier()
    if opts.folds and opts.fold == "all":
        return train_folds(opts, run, lambda o: read_json(run_root(o) / "summary.json"))
    return run(opts)


def run(opts: Options, start_over: bool = False) -> Dict[str, Any]:
    """Train with ``opts`` (left unchanged); returns the summary dict (also written to ``summary.json``).

    In a k-fold run this trains fold ``--fold``; when it finishes, its out-of-fold predictions are
    written and, once every fold is finished, the CV score and the ``predict:`` section's ensemble.
    ``start_over``: the first fold of a fresh ``--fold all`` (a new split; the other folds cleared).
    """
    start = time.time()
    asked, opts = opts, effective_options(opts)
    if opts.dry_run:
        log.info("%s", dry_run_reductions(asked))
    durations = resolve_durations(opts.time_limit, opts.save_every)  # a typo fails before anything is written
    p = prepare(opts, new_folds=start_over)
    try:
        return _train_prepared(p, asked, opts, durations, start, start_over)
    finally:
        if p.cache is not None:  # its files in this process: one that trains again (k-fold, a notebook) keeps none
            p.cache.close()


def _train_prepared(p: Any, asked: Options, opts: Options, durations: Dict[str, Optional[float]], start: float,
                    start_over: bool) -> Dict[str, Any]:
    """:func:`run` from the prepared run ``p`` on: resume, fit, pictures, summary, out-of-fold and predictions."""
    state = resume_state(p)
    predict_spec, n_predict = _check_predict_section(opts)
    if world().main:
        attach_log_file(p.run_dir)  # from here on the run folder is ours to write
        _tidy_run_dir(p.run_dir, fresh=state.resumed_from is None)
        if p.split.folds is not None:
            write_plan(p.split.folds, run_root(opts))
            if start_over:
                clear_other_folds(run_root(opts), p.split.folds)
        carry_over(p, state)
        repair_best(p, state)
        save_config(as_asked(asked, opts), p.run_dir / "config.yaml")  # passed back, it asks for this run again
        write_classes_json(p.split.classes, p.run_dir / "classes.json")
    reporter = EpochReporter(p.run_dir, task=p.task, split=p.split, dcfg=p.dcfg, monitor=opts.monitor,
                             val_dataset=p.val_view, tensorboard=opts.tensorboard and world().main,
                             start_epoch=state.start_epoch, every=opts.plot_every, plots=opts.plots and world().main,
                             graph=opts.tb_graph)
    with StopSignals() as signals:
        control = StopControl(**durations, signals=signals, start=process_start(SEAMS.clock), clock=SEAMS.clock,
                              on_saved=SEAMS.on_saved,
                              predict_reserve=lambda: _after_training(control.val_time, p, n_predict))
        try:
            if state.start_epoch > opts.epochs:
                log.info("training already complete (epoch %d of %d): nothing to train", state.last_epoch,
                         opts.epochs)
            else:
                if world().main:
                    reporter.on_train_start(p.model, input_shape(p), p.device)
                state = fit(p, state, reporter, control)
        except BaseException:
            p.saver.wait(quiet=True)  # the files in flight are finished; the error at hand is the one raised
            raise
        finally:
            p.close_loaders()  # now, not when the collector finds them: see kernel.data.loader._Loader.close
        reporter.on_train_end()  # the last pictures are drawn while the last epoch's files are written
        p.saver.wait()  # those files, before anything reads them
    summary = finish(p, state, time.time() - start)
    summary["exit_code"] = StopSignals.CODES.get(signals.received, 0) if state.stopped == "signal" else 0
    stopped = state.stopped in ("time_limit", "signal")
    checkpoint: Optional[Path] = p.run_dir / "best.pt"
    if p.split.folds is not None:  # a k-fold run predicts with every fold's model, once all are trained
        checkpoint = None
        if not stopped and world().main and (p.run_dir / "best.pt").is_file():
            write_fold_oof(p)
            summary["cv"] = finish_cv(p)
            checkpoint = run_root(opts) if summary["cv"] else None
    if predict_spec is not None and state.stopped != "signal" and world().main and checkpoint is not None \
            and checkpoint.exists():
        from .predict import predict_after_training
        summary["predict"] = predict_after_training(predict_spec, checkpoint, opts)
    barrier()  # the processes leave together: none is ended while rank 0 is still writing
    return summary


def _after_training(val_time: float, p: Any, n_predict: int) -> float:
    """Seconds to keep for what follows training, at the validation's pace (``val_time``: this process's
    share of the validation images): a fold's out-of-fold pass (every validation image) and, after the last
    fold, the ``predict:`` section (every fold's model on each image); rank 0 does both alone."""
    opts, n_val = p.opts, max(len(p.split.val), 1)
    per_image = val_time * world().size / n_val
    last = not opts.folds or fold_number(opts) == opts.folds - 1
    return per_image * ((n_val if opts.folds else 0) + (n_predict * max(opts.folds, 1) if last else 0))


def _tidy_run_dir(run_dir: Path, fresh: bool) -> None:
    """Remove what a killed save left behind; a fresh run's stale list of unreadable images and a fresh
    fold's earlier out-of-fold predictions (they mark a fold finished)."""
    freed = remove_leftovers(run_dir)
    if freed:
        log.info("removed the temporary files of an interrupted save (%.1f MB)", freed / 2**20)
    if fresh:
        (run_dir / REPORT).unlink(missing_ok=True)
        (run_dir / OOF).unlink(missing_ok=True)


def _check_predict_section(opts: Options) -> Tuple[Optional[Dict[str, Any]], int]:
    """The config's ``predict:`` section with its paths found and its images counted, before hours of
    training, not after: (section or None, number of images)."""
    if not opts.predict:
        return None, 0
    from .predict import resolve_predict_section
    spec = resolve_predict_section(opts.predict)
    return spec, len(collect_inputs(spec["inputs"], image_dir=spec.get("image_dir") or "",
                                    image_col=spec.get("image_col") or ""))


def in_group(payload: Dict[str, Any]) -> int:
    """One process of a multi-process run (spawned by :func:`kernel.run.launch.launch`, or by torchrun):
    join the group, check it, train; errors propagate (the launcher prints them once)."""
    opts = parse_options(payload["argv"], payload.get("baked"))
    if requested(opts) is not None:
        raise ConfigError(f"--{requested(opts).replace('_', '-')} runs in one process: start it without torchrun")
    device = torch.device("cuda" if opts.device != "cpu" and torch.cuda.is_available() else "cpu")
    w = init_from_env(device.type)
    setup_logging(logging.INFO if w.main else logging.WARNING)
    try:
        if device.type == "cuda":
            device = torch.device("cuda", w.local_rank)
        SEAMS.self_test(device)
        log.info("process group of %d (%s); global batch %d", w.size, "nccl" if device.type == "cuda" else "gloo",
                 w.size * opts.batch_size)
        return train(opts)["exit_code"]
    finally:
        close_logging()
        destroy()


def group_main(payload: Dict[str, Any]) -> int:
    """:func:`in_group` with the user errors as exit statuses (the launcher's and torchrun's entry)."""
    return _user_errors(lambda: in_group(payload))


def main(argv: Optional[Sequence[str]] = None, baked: Optional[Dict[str, Any]] = None) -> int:
    """Command-line entry: 0 on success, 2 on a user error (one line, no traceback); 143/130 after a signal."""
    if in_torchrun():  # started by torchrun (several machines): join its group
        return group_main({"argv": list(sys.argv[1:] if argv is None else argv), "baked": baked})
    setup_logging()
    try:
        return _user_errors(lambda: _start(argv, baked))
    except Exception:  # a bug, not a user error: the traceback, on the console and in train.log
        log.exception("unexpected error; please report it with this traceback")
        return 1
    finally:
        close_logging()


def _start(argv: Optional[Sequence[str]], baked: Optional[Dict[str, Any]]) -> int:
    """Options -> a one-shot command, one process per device, or the run here."""
    opts = parse_options(argv, baked)
    shot = requested(opts)
    if shot is not None:
        eff = effective_options(opts)
        seed_everything(eff.seed, eff.deterministic)
        return run_one_shot(shot, eff).get("exit_code", 0)
    n = devices_wanted(opts.devices, opts.device)
    if n > 1:
        resolve_durations(opts.time_limit, opts.save_every)  # a typo: one line here, not one per process
        return launch(opts, n, group_main, lambda: train(dataclasses.replace(opts, devices=1))["exit_code"])
    return train(opts)["exit_code"]


def _user_errors(fn: Callable[[], int]) -> int:
    """``fn()``; a user error becomes one line on stderr (and in train.log when open) and its exit status:
    2 bad input, 3 out of memory, 130 interrupted. Anything else propagates."""
    try:
        return fn()
    except ConfigError as e:
        log.error("%s", one_line(e), extra={"console": False})
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    except torch.OutOfMemoryError:
        print("error: out of memory; lower --batch-size or --img-size, or use --amp", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print("interrupted; resume with --resume auto", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
