"""What a regression run writes: predictions, submissions in the sample's columns, OOF rows, pictures.

Every number is in the targets' own units. ``predictions.csv`` is ``path,pred`` (``pred_<name>`` per target when
there are several); a submission takes the sample submission's header and id order (``Id,Pawpularity``), or
``id,<target>...`` without one. ``oof.csv`` is ``path,label,fold,pred`` (one target) or ``path,fold`` and
``label_<name>,pred_<name>`` per target; the CV RMSE recomputes from it.
"""
from __future__ import annotations

import csv
import os
from typing import Any, List, Sequence, Tuple

import numpy as np

from ...data import index_sample_ids
from ...errors import ConfigError
from ...report.files import write_csv
from ...report.plots import new_figure, save_figure
from .metrics import regression_scores

__all__ = ["prediction_columns", "write_predictions", "write_submission", "oof_rows", "cv_rmse",
           "plot_scatter", "plot_residuals"]


def prediction_columns(names: Sequence[str], prefix: str = "pred") -> List[str]:
    """``pred`` for one target, ``pred_<name>`` for each of several."""
    return [prefix] if len(names) == 1 else [f"{prefix}_{n}" for n in names]


def _fmt(values: Sequence[float]) -> List[str]:
    return [f"{v:.9g}" for v in values]


def write_predictions(paths: Sequence[str], preds: np.ndarray, names: Sequence[str], out: str | os.PathLike) -> str:
    """``path,pred...`` per input, preds (N, T) in original units."""
    return write_csv([["path", *prediction_columns(names)]] + [[p, *_fmt(v)] for p, v in zip(paths, preds)], out)


def write_submission(ids: Sequence[str], preds: np.ndarray, names: Sequence[str], out: str | os.PathLike, *,
                     id_col: str, sample: str = "") -> str:
    """A submission of numbers: the sample's header (its target columns by name, any order) and its ids in its
    order, each id matched by name or stem; without a sample ``id_col`` and the target names, in input order."""
    if not sample:
        return write_csv([[id_col, *names]] + [[i, *_fmt(v)] for i, v in zip(ids, preds)], out)
    with open(sample, newline="", encoding="utf-8") as fh:
        rows = [r for r in csv.reader(fh) if r]
    if not rows or len(rows[0]) < 2:
        raise ConfigError(f"--sample-submission: {sample!r} needs a header with an id column and target columns")
    header, order = rows[0], [r[0] for r in rows[1:]]
    unknown = [c for c in header[1:] if c not in names]
    if unknown:
        raise ConfigError(f"--sample-submission: column {unknown[0]!r} is not a target of this run "
                          f"({', '.join(names)})")
    col = [list(names).index(c) for c in header[1:]]
    out_rows: List[List[Any]] = [header]
    for ident, n in zip(order, index_sample_ids(ids, order)):
        out_rows.append([ident, *_fmt([preds[n, j] for j in col])])
    return write_csv(out_rows, out)


def oof_rows(ids: Sequence[str], preds: np.ndarray, trues: np.ndarray, names: Sequence[str],
             fold: int) -> Tuple[List[str], List[List[Any]]]:
    """(header, rows) of a fold's ``oof.csv``: see the module docstring."""
    if len(names) == 1:
        return ["path", "label", "fold", "pred"], [[i, *_fmt(t), fold, *_fmt(p)] for i, p, t in zip(ids, preds, trues)]
    header = ["path", "fold", *prediction_columns(names, "label"), *prediction_columns(names)]
    return header, [[i, fold, *_fmt(t), *_fmt(p)] for i, p, t in zip(ids, preds, trues)]


def cv_rmse(header: Sequence[str], rows: Sequence[Sequence[Any]], names: Sequence[str]) -> float:
    """The RMSE (mean over targets) of every fold's OOF rows, as ``val_rmse``."""
    if not rows:
        return float("nan")
    cols = lambda prefix: [header.index(c) for c in prediction_columns(names, prefix)]  # noqa: E731
    pred = np.asarray([[float(r[j]) for j in cols("pred")] for r in rows])
    true = np.asarray([[float(r[j]) for j in cols("label")] for r in rows])
    return regression_scores(pred, true)["rmse"]


def plot_scatter(preds: np.ndarray, trues: np.ndarray, names: Sequence[str], path: str | os.PathLike,
                 title: str) -> str:
    """Predicted against true, one panel per target, with the diagonal."""
    fig = new_figure(4.5 * len(names), 4.2)
    for j, name in enumerate(names):
        ax = fig.add_subplot(1, len(names), j + 1)
        ax.scatter(trues[:, j], preds[:, j], s=8, alpha=0.6)
        lo, hi = float(min(trues[:, j].min(), preds[:, j].min())), float(max(trues[:, j].max(), preds[:, j].max()))
        ax.plot([lo, hi], [lo, hi], color="grey", linewidth=1)
        ax.set_xlabel(f"true {name}")
        ax.set_ylabel(f"predicted {name}")
    fig.suptitle(title)
    return save_figure(fig, path)


def plot_residuals(preds: np.ndarray, trues: np.ndarray, names: Sequence[str], path: str | os.PathLike,
                   title: str) -> str:
    """Residual (predicted - true) against the prediction, one panel per target."""
    fig = new_figure(4.5 * len(names), 4.2)
    for j, name in enumerate(names):
        ax = fig.add_subplot(1, len(names), j + 1)
        ax.scatter(preds[:, j], preds[:, j] - trues[:, j], s=8, alpha=0.6)
        ax.axhline(0.0, color="grey", linewidth=1)
        ax.set_xlabel(f"predicted {name}")
        ax.set_ylabel("residual")
    fig.suptitle(title)
    return save_figure(fig, path)
