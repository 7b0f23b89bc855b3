"""Out-of-fold predictions and the cross-validation score of a k-fold run.

When fold ``i`` finishes, its ``best.pt`` (the EMA weights with ``--ema``) predicts the fold's
validation images with the evaluation transform: ``RUN/fold{i}/oof.csv``, the task's columns
(:meth:`kernel.tasks.Task.oof`). Its presence marks the fold finished. Once every fold has one,
``RUN/oof.csv`` holds them all in the data's order, ``RUN/summary.json`` the CV score computed on the
whole OOF set (:meth:`kernel.tasks.Task.cv_metric`, not a mean of the folds' scores), each fold's own
score and best validation metric, and ``RUN/cv.png`` the folds' curves.
"""
from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any, Dict, List, Optional

from .. import __version__
from ..data import REPORT, build_loader, name_files, read_report, source_path
from ..engine import load_trained, unwrap_model
from ..report import read_json, write_csv, write_json
from ..report.plots import plot_cv
from .kfold import OOF, fold_finished, run_root
from .prepare import Prepared

__all__ = ["write_fold_oof", "finish_cv", "read_table"]

log = logging.getLogger("kernel")


def read_table(path: Path) -> List[List[str]]:
    """A CSV file's rows, the header first."""
    with open(path, newline="", encoding="utf-8") as fh:
        return [row for row in csv.reader(fh)]


def write_fold_oof(p: Prepared) -> Path:
    """Predict this fold's validation images with its best.pt -> ``RUN/fold{i}/oof.csv`` (rank 0)."""
    plan, o = p.split.folds, p.opts
    model = unwrap_model(p.model)
    model.load_state_dict(load_trained(p.run_dir / "best.pt")["model"])
    loader = p.feed(build_loader(p.val_loader.dataset, batch_size=o.batch_size, workers=o.workers, device=p.device,
                                 persistent=False, collate_fn=p.task.collate))  # every validation image once, in order
    ids = [plan.ids[j] for j in _full_indices(p.split.val, p.split.full)]
    # An unreadable image was replaced by the next readable one (--bad-images skip): its row (and mask) would hold
    # that image's prediction under its own id, so it is left out.
    bad = {path for path, _ in read_report(p.run_dir / REPORT)}
    leave_out = {j for j in range(len(ids)) if source_path(p.split.val, j) in bad}
    if leave_out:
        log.warning("fold %d: %d unreadable images left out of %s (%s)", plan.fold, len(leave_out), OOF,
                    name_files([source_path(p.split.val, j) for j in sorted(leave_out)]))
    header, rows = p.task.oof(model, loader, p.split, ids, plan.fold, p.device, p.amp_dtype,
                              run_root(o) / "oof_masks", leave_out)
    path = write_csv([header, *rows], p.run_dir / OOF)
    log.info("fold %d: out-of-fold predictions of %d images -> %s", plan.fold, len(rows), path)
    if o.dry_run:
        log.warning("--dry-run: %s holds only the dry run's %d validation images of fold %d, so the CV score is "
                    "partial", OOF, len(rows), plan.fold)
    return Path(path)


def _full_indices(dataset: Any, full: Any) -> List[int]:
    """Each sample of ``dataset`` (a Subset, maybe of a Subset: --dry-run) as an index into ``full``."""
    index = list(range(len(dataset)))
    while dataset is not full:
        index = [dataset.indices[i] for i in index]
        dataset = dataset.source
    return index


def _history(path: Path) -> List[Dict[str, Any]]:
    """metrics.csv as rows of floats (blank cells skipped)."""
    if not path.is_file():
        return []
    rows = read_table(path)
    out = []
    for row in rows[1:]:
        out.append({k: float(v) for k, v in zip(rows[0], row) if v not in ("", None)})
    return out


def finish_cv(p: Prepared) -> Optional[Dict[str, Any]]:
    """Once every fold is finished: ``RUN/oof.csv``, the CV summary and ``cv.png`` (rank 0); else None."""
    plan, root, task = p.split.folds, run_root(p.opts), p.task
    if not all(fold_finished(root, i) for i in range(plan.k)):
        done = sum(fold_finished(root, i) for i in range(plan.k))
        log.info("k-fold: %d of %d folds finished; the CV score comes with the last", done, plan.k)
        return None
    order = {ident: n for n, ident in enumerate(plan.ids)}
    header, rows, fold_metrics, fold_best, histories = None, [], [], [], []
    for i in range(plan.k):
        table = read_table(root / f"fold{i}" / OOF)
        header = table[0]
        rows += table[1:]
        fold_metrics.append(task.cv_metric(table[0], table[1:], p.split))
        summary = read_json(root / f"fold{i}" / "summary.json") or {}
        fold_best.append(summary.get("best_metric"))
        histories.append(_history(root / f"fold{i}" / "metrics.csv"))
    rows.sort(key=lambda r: order.get(r[0], len(order)))
    write_csv([header, *rows], root / OOF)
    cv = task.cv_metric(header, rows, p.split)
    summary = {"task": task.name, "folds": plan.k, "cv_metric": cv, "cv_metric_name": task.cv_name,
               "fold_metrics": fold_metrics, "monitor": p.opts.monitor, "fold_best_metric": fold_best,
               "oof": str(root / OOF), "images": len(rows), "run_dir": str(root), "version": __version__}
    write_json(summary, root / "summary.json")
    try:
        plot_cv(histories, task.monitors[0], root / "cv.png", cv_name=task.cv_name, cv_value=cv)
    except Exception as e:  # a picture must never cost the run's results
        log.warning("cv.png not written: %s", e)
    log.info("%d-fold CV: %s %.4f over %d out-of-fold images (folds: %s)", plan.k, task.cv_name, cv, len(rows),
             ", ".join(f"{m:.4f}" for m in fold_metrics))
    return summary
