"""K-fold cross-validation: the split, a run folder per fold, the folds in turn.

``--folds K`` splits the labelled data once (:func:`kernel.data.make_folds`: stratified by label for
classification, by image for segmentation, grouped by ``--group-col``, seeded) and keeps the split
as ``RUN/folds.csv``. Fold ``i`` validates on fold ``i`` and trains on the others, in ``RUN/fold{i}/``,
a complete run folder (checkpoints, metrics, pictures). A run folder keeps its folds: a later
``--fold i``, a resume or the next Kaggle version reads ``folds.csv`` back; only a fresh ``--fold all``
(or ``--folds-file``, another run's split) replaces it. A fold is finished once its ``oof.csv``
exists (:mod:`kernel.run.crossval`): ``--fold all --resume auto`` skips finished folds and continues the
one in progress where it stopped.
"""
from __future__ import annotations

import dataclasses
import logging
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np

from ..data import DataSplit, Subset, fold_indices, make_folds, read_folds_csv, sample_ids, write_folds_csv
from ..engine.distributed import barrier, world
from ..options import Options
from ..paths import TMP_SUFFIX, default_output_dir, detect_platform, find_in_inputs, resolve_path
from ..errors import ConfigError

__all__ = ["FOLDS_CSV", "OOF", "FoldPlan", "run_root", "run_name", "fold_number", "plan_folds", "split_for_fold",
           "fold_finished", "clear_other_folds", "carry_over_root", "train_folds"]

log = logging.getLogger("kernel")
FOLDS_CSV = "folds.csv"  # image,fold: the split of the run folder
OOF = "oof.csv"          # a fold's out-of-fold predictions; its presence marks the fold finished


@dataclass
class FoldPlan:
    """The k-fold split of ``DataSplit.full`` and the fold this run validates on."""

    k: int
    fold: int
    ids: List[str]          # one per sample of the full set (folds.csv's image column)
    assignment: np.ndarray  # (N,) int64: each sample's validation fold
    origin: str             # "new", or the folds file it was read from


def run_root(opts: Options) -> Path:
    """``--output``/``--name``, or the platform's default output root (``/kaggle/working`` on Kaggle)."""
    return Path(opts.output) / opts.name if opts.output else default_output_dir(opts.name)


def fold_number(opts: Options) -> int:
    """The fold a k-fold run validates on; ``--fold all`` means its first (one-shot commands look at it)."""
    return 0 if opts.fold == "all" else int(opts.fold)


def run_name(opts: Options) -> str:
    """The run folder relative to the output root: NAME, or NAME/fold{i} in a k-fold run."""
    return f"{opts.name}/fold{fold_number(opts)}" if opts.folds else opts.name


def plan_folds(opts: Options, task: Any, split: DataSplit, new: bool = False) -> FoldPlan:
    """The split for ``--folds``: ``--folds-file``, else the run folder's ``folds.csv`` (unless ``new``: a
    fresh ``--fold all`` splits again), else a new one. Reads only; the run writes ``folds.csv``."""
    if split.full is None:
        raise ConfigError("--folds: k-fold cross-validation splits one labelled set; drop --val-data (every image "
                          "lands in exactly one validation fold)")
    source = split.full
    ids = sample_ids(source, "" if opts.data == "shapes" else opts.data)
    own = run_root(opts) / FOLDS_CSV
    file = resolve_path(opts.folds_file, "folds-file") if opts.folds_file else (
        str(own) if own.is_file() and not new else "")
    if file:
        assignment = read_folds_csv(file, ids, opts.folds)
        log.info("folds: %d folds from %s", opts.folds, file)
    else:
        groups = None
        if opts.group_col:
            if not hasattr(source, "column"):
                raise ConfigError(f"--group-col {opts.group_col}: groups are a CSV column; give CSV data (--csv)")
            groups = source.column(opts.group_col, "group-col")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assignment = make_folds(len(ids), opts.folds, opts.seed, groups=groups, **task.fold_labels(split, source))
        for w in caught:
            log.warning("folds: %s", w.message)
        log.info("folds: %d folds of %d images (seed %d%s)", opts.folds, len(ids), opts.seed,
                 f", grouped by {opts.group_col}" if groups is not None else "")
    return FoldPlan(opts.folds, fold_number(opts), ids, assignment, file or "new")


def split_for_fold(split: DataSplit, plan: FoldPlan) -> DataSplit:
    """Train on every fold but ``plan.fold``, validate on it."""
    train, val = fold_indices(plan.assignment, plan.fold)
    return dataclasses.replace(split, train=Subset(split.full, train.tolist()), val=Subset(split.full, val.tolist()),
                               folds=plan)


def write_plan(plan: FoldPlan, root: Path) -> None:
    """``RUN/folds.csv`` (rank 0, once the run folder is ours), unless it is where the plan came from."""
    target = root / FOLDS_CSV
    if plan.origin != str(target):
        write_folds_csv(target, plan.ids, plan.assignment)


def fold_finished(root: Path, fold: int) -> bool:
    return (root / f"fold{fold}" / OOF).is_file()


def clear_other_folds(root: Path, plan: FoldPlan) -> None:
    """A fresh ``--fold all`` starts over: the other folds' folders and the CV outputs of an earlier run go,
    so that a later ``--resume auto`` never mistakes them for this run's, nor the ensemble a fold of an
    earlier run with more folds."""
    for folder in root.glob("fold*"):
        if folder.is_dir() and folder.name[4:].isdigit() and int(folder.name[4:]) != plan.fold:
            shutil.rmtree(folder)
    for name in (OOF, "cv.png", "summary.json"):
        (root / name).unlink(missing_ok=True)
    shutil.rmtree(root / "oof_masks", ignore_errors=True)


def carry_over_root(opts: Options) -> None:
    """On Kaggle, resuming a k-fold run whose folder is a previous version's output (mounted read-only under
    the inputs): copy it here first, finished folds and the fold in progress included."""
    root = run_root(opts)
    if not (opts.folds and opts.resume == "auto" and detect_platform() == "kaggle" and world().main) \
            or (root / FOLDS_CSV).is_file():
        return
    found = find_in_inputs(f"{opts.name}/{FOLDS_CSV}")
    if found is None:
        return
    shutil.copytree(found.parent, root, dirs_exist_ok=True, ignore=shutil.ignore_patterns(f"*{TMP_SUFFIX}"))
    log.info("carried over the previous version's k-fold run from %s", found.parent)


def train_folds(opts: Options, run_one: Callable[..., Dict[str, Any]],
                cv_summary: Callable[[Options], Optional[Dict[str, Any]]]) -> Dict[str, Any]:
    """``--fold all``: train each fold in turn with ``run_one(opts, start_over)``; with ``--resume`` skip the
    finished ones. ``start_over`` (fold 0 of a fresh run): split again and clear the other folds.

    Stops at the first fold stopped by the time limit or a signal (its summary is returned: the next
    run resumes inside it); otherwise returns ``cv_summary(opts)``, the cross-validation summary.
    """
    if opts.resume not in ("", "auto"):
        raise ConfigError(f"--resume {opts.resume} with --fold all: each fold resumes from its own last.pt; use "
                          "--resume auto (or --fold N --resume PATH)")
    root = run_root(opts)
    finished = [bool(opts.resume) and fold_finished(root, i) for i in range(opts.folds)]
    if all(finished) and cv_summary(opts) is None:  # killed after the last fold, before the CV score: the
        finished[-1] = False                         # last fold again ("already complete"), then the CV
    for i in range(opts.folds):
        if finished[i]:
            log.info("fold %d of %d: finished earlier (fold%d/%s), not retrained", i, opts.folds, i, OOF)
            continue
        log.info("fold %d of %d", i, opts.folds)
        summary = run_one(dataclasses.replace(opts, fold=str(i)), start_over=i == 0 and not opts.resume)
        if summary.get("stopped") in ("time_limit", "signal"):
            return summary
    barrier()
    return {**(cv_summary(opts) or {}), "exit_code": 0}
