"""Train an image model: ``python -m kernel.train [options]`` (or ``python kernel/train.py``).

This module only wires the stages of :mod:`kernel.run` together: options -> prepare (data, model,
optimization) -> resume -> fit -> finish, or one of the one-shot commands. See ``--help``.
"""
from __future__ import annotations

if __name__ == "__main__" and not __package__:  # `python kernel/train.py`: run as kernel.train
    import os as _os
    import sys as _sys

    _sys.path[0] = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
    from kernel.cli import run_file

    run_file(__file__)

import logging
import sys
import time
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import torch

from .cli import one_line
from .engine import write_classes_json
from .data import REPORT
from .config import parse_options, save_config
from .options import Options
from .paths import remove_leftovers
from .registry import ConfigError
from .report import EpochReporter, attach_log_file, close_logging, setup_logging
from .run import (ONE_SHOTS, effective_options, finish, fit, input_shape, prepare, repair_best, requested,
                  resume_state, seed_everything)

__all__ = ["main", "run"]

log = logging.getLogger("kernel")


def run(opts: Options) -> Dict[str, Any]:
    """Train with ``opts`` (left unchanged); returns the summary dict (also written to ``summary.json``)."""
    start = time.time()
    opts = effective_options(opts)
    p = prepare(opts)
    state = resume_state(p)
    predict_spec = _check_predict_section(opts)
    attach_log_file(p.run_dir)  # from here on the run folder is ours to write
    _tidy_run_dir(p.run_dir, fresh=state.resumed_from is None)
    repair_best(p, state)
    save_config(opts, p.run_dir / "config.yaml")
    write_classes_json(p.split.classes, p.run_dir / "classes.json")
    reporter = EpochReporter(p.run_dir, task=p.task, split=p.split, dcfg=p.dcfg, monitor=opts.monitor,
                             val_dataset=p.val_loader.dataset, tensorboard=opts.tensorboard,
                             start_epoch=state.start_epoch, every=opts.plot_every)
    reporter.on_train_start(p.model, input_shape(p), p.device)
    state = fit(p, state, reporter)
    reporter.on_train_end()
    summary = finish(p, state, time.time() - start)
    if predict_spec is not None and (p.run_dir / "best.pt").is_file():
        from .predict import predict_after_training
        summary["predict"] = predict_after_training(predict_spec, p.run_dir, opts)
    return summary


def _tidy_run_dir(run_dir: Path, fresh: bool) -> None:
    """Remove what a killed save left behind, and a fresh run's stale list of unreadable images."""
    freed = remove_leftovers(run_dir)
    if freed:
        log.info("removed the temporary files of an interrupted save (%.1f MB)", freed / 2**20)
    if fresh:
        (run_dir / REPORT).unlink(missing_ok=True)


def _check_predict_section(opts: Options) -> Optional[Dict[str, Any]]:
    """The config's ``predict:`` section with its paths found, before hours of training, not after."""
    if not opts.predict:
        return None
    from .predict import resolve_predict_section
    return resolve_predict_section(opts.predict)


def main(argv: Optional[Sequence[str]] = None, baked: Optional[Dict[str, Any]] = None) -> int:
    """Command-line entry: 0 on success, 2 on a user error (one line, no traceback)."""
    setup_logging()
    try:
        opts = parse_options(argv, baked)
        shot = requested(opts)
        if shot is None:
            run(opts)
            return 0
        eff = effective_options(opts)
        seed_everything(eff.seed, eff.deterministic)
        return ONE_SHOTS[shot](eff).get("exit_code", 0)
    except ConfigError as e:
        log.error("%s", one_line(e), extra={"console": False})  # into train.log when it is open
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    except torch.OutOfMemoryError:
        print("error: out of memory; lower --batch-size or --img-size, or use --amp", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print("interrupted; resume with --resume auto", file=sys.stderr)
        return 130
    except Exception:  # a bug, not a user error: the traceback, on the console and in train.log
        log.exception("unexpected error; please report it with this traceback")
        return 1
    finally:
        close_logging()


if __name__ == "__main__":
    sys.exit(main())
