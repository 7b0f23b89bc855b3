"""The ``regress`` task: one or several numbers per image (a score, an age, Pawpularity's 1-100).

Data (:mod:`.data`): ``--csv`` under ``--data`` with an id column and ``--label-col a,b`` numeric columns, or
``--data shapes`` (each shape's share of the image). Targets are standardized for training with the labelled
set's mean and std (saved in the checkpoint's ``meta``); every metric, prediction and picture is in the original
units. Losses: ``mse`` (``--loss auto``), ``l1``, ``smooth_l1``, ``huber``. Metrics (:mod:`.metrics`): RMSE
(monitored: ``best.pt`` has the lowest), MAE, R², Pearson's r. Pictures: predicted against true and the
residuals. ``--task auto`` picks it when the CSV's target column holds numbers that are not all integers;
integer labels stay classes. Mixup and CutMix are refused (their mixed targets are class distributions).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import AbstractSet, Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from ...data import DataSplit, ImageList, read_csv_rows, settle_unreadable_inputs
from ...engine.amp import forward
from ...errors import ConfigError
from ...losses import LOSSES
from ...options import PredictOptions
from ..base import Task
from ..classify import ClassifyTask
from ..predicting import predict_batches
from .data import build_regress_data, is_numeric_column, raw_targets
from .metrics import RegressMeter, regression_scores
from .outputs import cv_rmse, oof_rows, plot_residuals, plot_scatter, write_predictions, write_submission

__all__ = ["RegressTask", "RegressMeter", "regression_scores", "clip_to_training_range"]

log = logging.getLogger("kernel")
LOSS_NAMES = ("mse", "l1", "smooth_l1", "huber")


class RegressTask(Task):
    name = "regress"
    monitors = ("val_rmse", "val_mae", "val_r2", "val_pearson", "val_loss")
    columns = ("train_rmse", "val_rmse", "val_mae", "val_r2", "val_pearson")
    metric_panel = ("RMSE", [("train_rmse", "train"), ("val_rmse", "val")])
    default_out = "predictions.csv"
    stratify_folds = True  # by the first target's quantile bin (the sources' ``targets``)
    cv_name = "cv_rmse"

    # -- choosing the task and checking options ------------------------------------------------
    def detect(self, opts: Any, data: str) -> bool:
        """A CSV whose target column(s) hold numbers that are not all integers (or several columns given)."""
        if not opts.csv or data == "shapes":
            return False
        if "," in opts.label_col:
            return True
        path = Path(opts.csv) if Path(opts.csv).is_absolute() else Path(data) / opts.csv
        if not path.is_file():
            return False
        rows = read_csv_rows(path, "csv")
        cols = list(rows[0].keys())
        column = opts.label_col or (cols[1] if len(cols) > 1 else "")
        if column not in cols:
            return False
        numeric, integer = is_numeric_column([str(r[column]).strip() for r in rows])
        if numeric and integer:
            log.info("--task auto: column %r holds integers: treated as classes; give --task regress to learn them "
                     "as numbers", column)
        return numeric and not integer

    def check_options(self, opts: Any) -> None:
        if isinstance(opts.img_size, list):
            raise ConfigError(f"--img-size {opts.img_size[0]} {opts.img_size[1]}: regression crops a square like "
                              "classification; give one size")

    def monitor_mode(self, monitor: str) -> str:
        return "max" if monitor.endswith(("r2", "pearson")) else "min"

    # -- data and model ---------------------------------------------------------------------
    def build_data(self, opts: Any) -> DataSplit:
        train, val, full, stats = build_regress_data(opts)
        return DataSplit(train, val, list(stats["targets"]), False, {**stats, "clip": bool(opts.clip_target)},
                         full=full)

    def default_loss(self, split: DataSplit) -> str:
        return "mse"

    def check(self, opts: Any, split: DataSplit, loss: Any) -> None:
        if opts.mixup or opts.cutmix or opts.label_smoothing:
            raise ConfigError("--mixup/--cutmix/--label-smoothing: their mixed targets are class distributions; "
                              "regression trains on the numbers themselves: leave them off")
        if isinstance(loss, str) and loss in LOSSES.names() and loss not in LOSS_NAMES:
            raise ConfigError(f"--loss {loss}: a classification or segmentation loss; regression takes "
                              f"{', '.join(LOSS_NAMES)} (or auto: mse)")

    # An image-level model and transforms, as classification's: a timm/torchvision model whose head has one
    # output per target (len(split.classes) is the number of targets), and the same crops and augmentation.
    create_model = ClassifyTask.create_model
    list_models = ClassifyTask.list_models
    data_config = ClassifyTask.data_config
    transform = ClassifyTask.transform

    # -- metrics and outputs -----------------------------------------------------------------
    def meter(self, split: DataSplit, train: bool) -> RegressMeter:
        m = split.meta
        return RegressMeter(m["mean"], m["std"], m["targets"], keep_outputs=not train)

    def row(self, train: Dict[str, Any], val: Dict[str, Any]) -> Dict[str, Any]:
        return {"train_rmse": train["rmse"], "val_rmse": val["rmse"], "val_mae": val["mae"], "val_r2": val["r2"],
                "val_pearson": val["pearson"]}

    def describe_labels(self, split: DataSplit) -> str:
        m = split.meta
        return f"{len(m['targets'])} numeric target{'s' if len(m['targets']) > 1 else ''} (" + ", ".join(
            f"{n}: {lo:.4g} to {hi:.4g}" for n, lo, hi in zip(m["targets"], m["min"], m["max"])) + ")"

    def describe(self, row: Dict[str, Any], part: str) -> str:
        extra = f" r2 {row['val_r2']:.3f}" if part == "val" else ""
        return f" rmse {row[f'{part}_rmse']:.4f}{extra}"

    def write_best(self, run_dir: Path, epoch: int, val: Dict[str, Any], split: DataSplit, val_dataset: Any,
                   dcfg: Dict[str, Any], safe: Callable[..., None]) -> None:
        """scatter.png (predicted against true) and residuals.png from the best epoch's validation pass."""
        preds, trues = val["preds"].double().numpy(), val["trues"].double().numpy()
        if not len(preds):
            return
        title = f"best checkpoint (epoch {epoch}), validation"
        names = split.classes
        safe("scatter.png", lambda: plot_scatter(preds, trues, names, run_dir / "scatter.png", title), True)
        safe("residuals.png", lambda: plot_residuals(preds, trues, names, run_dir / "residuals.png", title), True)

    def show_aug(self, samples: Sequence[Tuple[Any, Any, Any]],
                 split: DataSplit) -> Tuple[List[Tuple[Any, Any]], Dict[str, Any]]:
        """Each tile titled with its target values in the original units."""
        m = split.meta
        titles = [", ".join(f"{float(v) * s + mu:.3g}" for v, s, mu in zip(y, m["std"], m["mean"]))
                  for _, y, _ in samples]
        return [(image, None) for image, _, _ in samples], {"titles": titles}

    def predict(self, trained: Any, items: List[Tuple[str, str]], popts: PredictOptions,
                device: torch.device) -> Dict[str, Any]:
        """predictions.csv and, when asked, the submission, in the original units (clipped to the training range
        with --clip-target); an unreadable image gets the training mean."""
        paths, bad = [p for _, p in items], {}
        preds = predict_values(trained, paths, device=device, popts=popts, bad=bad)
        o, meta = trained.options, trained.meta
        settle_unreadable_inputs(paths, bad, Path(popts.out).with_name(f"{Path(popts.out).stem}_bad_images.txt"),
                                 limit_fraction=o["bad_images_limit"], floor_files=o["bad_images_floor"],
                                 fallback="the training targets' mean")
        if bad:
            preds[sorted(bad)] = np.asarray(meta["mean"])
        result: Dict[str, Any] = {"images": len(items), "unreadable": [paths[i] for i in sorted(bad)],
                                  "predictions": write_predictions(paths, preds, trained.classes, popts.out)}
        log.info("predicted %d images%s -> %s", len(items), " (flip TTA)" if popts.tta else "", popts.out)
        if popts.submission:
            result["submission"] = write_submission([i for i, _ in items], preds, trained.classes,
                                                    popts.submission, id_col=popts.id_col or o.get("image_col")
                                                    or "id", sample=popts.sample_submission)
            log.info("wrote %s", popts.submission)
        return result

    # -- k-fold -------------------------------------------------------------------------------
    def activation(self, meta: Dict[str, Any]) -> str:
        return "identity"  # fold members' values are averaged as they are

    @torch.no_grad()
    def oof(self, model: nn.Module, loader: Any, split: DataSplit, ids: List[str], fold: int, device: torch.device,
            amp_dtype: Any, mask_dir: Any, leave_out: AbstractSet[int] = frozenset()) -> Tuple[List[str], List[List[Any]]]:
        model.eval()
        meter = self.meter(split, train=False)
        for batch in loader:
            batch = self.move(batch, device)
            _, outputs = forward(self.step, model, batch, None, device, amp_dtype)
            meter.update(outputs.float(), batch[1])
        out = meter.compute()
        preds, trues = clip_to_training_range(out["preds"].double().numpy(), split.meta), raw_targets(split.val)
        keep = [n for n in range(len(ids)) if n not in leave_out]
        return oof_rows([ids[n] for n in keep], preds[keep], trues[keep], split.classes, fold)

    def cv_metric(self, header: List[str], rows: List[List[Any]], split: DataSplit) -> float:
        return cv_rmse(header, rows, split.classes)


def clip_to_training_range(preds: np.ndarray, meta: Dict[str, Any]) -> np.ndarray:
    """``preds`` (N, T) clipped to the training targets' range when the run asked (--clip-target)."""
    return np.clip(preds, meta["min"], meta["max"]) if meta.get("clip") else preds


@torch.no_grad()
def predict_values(trained: Any, paths: Sequence[str], *, device: torch.device, popts: PredictOptions,
                   bad: Optional[Dict[int, str]] = None) -> np.ndarray:
    """(N, T) predictions in the original units for ``paths`` (``tta``: the mean with the flipped image's)."""
    meta, tta = trained.meta, popts.tta

    def values(m: nn.Module, x: torch.Tensor, _: Any) -> Tuple[None, torch.Tensor]:
        y = m(x).float()
        return None, (y + m(x.flip(3)).float()) / 2 if tta else y

    batches = predict_batches(trained.model, values, ImageList(paths, trained.transform, trained.in_chans, trained.draft),
                              device=device, batch_size=popts.batch_size, workers=popts.workers, amp=popts.amp,
                              bad=bad)
    out = [y.double().cpu().numpy() * np.asarray(meta["std"]) + np.asarray(meta["mean"]) for _, y in batches]
    preds = np.concatenate(out) if out else np.zeros((0, len(trained.classes)))
    return clip_to_training_range(preds, meta)
