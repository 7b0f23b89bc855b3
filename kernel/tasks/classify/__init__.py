"""The ``classify`` task: one label (or a set of labels) per image.

Data: ImageFolder trees, Kaggle-style CSVs (space-separated labels: multi-label) or ``shapes``.
Models: any timm or torchvision classifier with a new head. Metrics: top-1/top-5 accuracy; the
best checkpoint also gets ``per_class.csv``, ``confusion_matrix.png`` and ``predictions.png``.
Prediction writes ``predictions.csv`` (top-k) and, when asked, a Kaggle ``submission.csv``.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import AbstractSet, Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ...augment import build_transform
from ...data import DataSplit, ImageList, build_sources, settle_unreadable_inputs
from ...errors import ConfigError
from ...models import create_model, list_models, resolve_data_config
from ...options import PredictOptions
from ...report import plots
from ..base import Task
from ..predicting import predict_batches
from .metrics import ClassifyMeter, accuracy, per_class_stats, write_per_class_csv
from .oof import cv_accuracy, oof_table
from .outputs import class_prior, fallback_probs, unreadable_report, write_predictions_csv
from .submission import SubmitChoice, write_submission
from .pictures import label_text, plot_predictions, sample_indices

__all__ = ["ClassifyTask", "ClassifyMeter", "accuracy", "per_class_stats", "predict_probs"]

log = logging.getLogger("kernel")
N_PICTURES = 16  # validation images in predictions.png


class ClassifyTask(Task):
    name = "classify"
    auto_fallback = True  # --task auto: whatever no other task claims is classified

    def check_options(self, opts: Any) -> None:
        if "," in opts.label_col:
            raise ConfigError(f"--label-col {opts.label_col!r}: classification reads one label column (labels "
                              "space-separated within it); a list of columns is for numeric targets (--task regress)")
        if isinstance(opts.img_size, list):
            raise ConfigError(f"--img-size {opts.img_size[0]} {opts.img_size[1]}: classification crops a square; "
                              "give one size (height and width are for --task segment)")
    monitors = ("val_acc", "val_loss")
    columns = ("train_acc", "val_acc", "val_acc5")
    metric_panel = ("accuracy", [("train_acc", "train"), ("val_acc", "val"), ("val_acc5", "val top-5")])
    default_out = "predictions.csv"
    stratify_folds = True
    cv_name = "cv_acc"

    def build_data(self, opts: Any) -> DataSplit:
        return build_sources(opts.data, val_data=opts.val_data, val_split=opts.val_split, csv_file=opts.csv,
                             image_dir=opts.image_dir, image_col=opts.image_col, label_col=opts.label_col,
                             in_chans=opts.in_chans, seed=opts.seed)

    def default_loss(self, split: DataSplit) -> str:
        return "bce" if split.multilabel else "ce"

    def check(self, opts: Any, split: DataSplit, loss: Any) -> None:
        if split.multilabel and loss == "ce":  # softmax makes labels compete; a set of labels needs sigmoids
            raise ConfigError("--loss ce: this data is multi-label (several labels per image), and cross-entropy "
                              "picks one; use --loss bce (or auto)")

    def create_model(self, opts: Any, split: DataSplit, pretrained: str) -> nn.Module:
        return create_model(opts.model, len(split.classes), opts.in_chans, pretrained)

    def list_models(self, pattern: str) -> List[str]:
        return list_models(pattern)

    def data_config(self, model: nn.Module, opts: Any) -> Dict[str, Any]:
        return resolve_data_config(model, opts.img_size, opts.in_chans)

    def transform(self, opts: Any, dcfg: Dict[str, Any], train: bool) -> Callable:
        return build_transform(opts.aug, train=train, backend=opts.aug_backend, img_size=dcfg["img_size"],
                               mean=dcfg["mean"], std=dcfg["std"], interpolation=dcfg["interpolation"],
                               crop_pct=dcfg["crop_pct"], in_chans=opts.in_chans)

    def meter(self, split: DataSplit, train: bool) -> ClassifyMeter:
        return ClassifyMeter(keep_outputs=not train)  # validation probabilities feed the best-epoch pictures

    def row(self, train: Dict[str, Any], val: Dict[str, Any]) -> Dict[str, Any]:
        return {"train_acc": train["acc1"], "val_acc": val["acc1"], "val_acc5": val.get("acc5", "")}

    def describe(self, row: Dict[str, Any], part: str) -> str:
        return f" acc {row[f'{part}_acc']:.4f}"

    def write_best(self, run_dir: Path, epoch: int, val: Dict[str, Any], split: DataSplit, val_dataset: Any,
                   dcfg: Dict[str, Any], safe: Callable[..., None]) -> None:
        """per_class.csv, confusion_matrix.png and predictions.png from the best epoch's probabilities."""
        probs, targets = val["probs"].float().numpy(), val["targets"].numpy()
        if not len(probs):
            return
        multilabel = split.multilabel or targets.ndim == 2
        title = f"best checkpoint (epoch {epoch}), validation"
        stats: Dict[str, Any] = {}

        def per_class() -> None:
            stats.update(per_class_stats(probs, targets, multilabel))
            write_per_class_csv(stats, split.classes, run_dir / "per_class.csv")

        safe("per_class.csv", per_class, False)  # numpy and csv only: written even without matplotlib
        if "cm" in stats:  # single-label only: a multi-label confusion matrix is not defined
            safe("confusion_matrix.png", lambda: plots.plot_confusion_matrix(
                stats["cm"], split.classes, run_dir / "confusion_matrix.png", title=title), True)
        idx = sample_indices(len(probs), N_PICTURES)

        def predictions() -> None:
            with torch.random.fork_rng(devices=[]):  # a custom eval transform must not touch the run's RNG
                images = torch.stack([val_dataset[i][0] for i in idx])
            plot_predictions(images, probs[idx], targets[idx], split.classes, run_dir / "predictions.png",
                             mean=dcfg["mean"], std=dcfg["std"], multilabel=multilabel, title=title)

        if idx:
            safe("predictions.png", predictions, True)

    def export_meta(self, split: DataSplit) -> Dict[str, Any]:
        """Besides the split's facts: ``multilabel`` and the training prior (the fallback for unreadable inputs)."""
        n = len(split.classes)
        prior = class_prior(split.train, n, split.multilabel) if split.train is not None else [1.0 / n] * n
        return {**split.meta, "multilabel": bool(split.multilabel), "prior": prior}

    def show_aug(self, samples: Sequence[Tuple[Any, Any, Any]],
                 split: DataSplit) -> Tuple[List[Tuple[Any, Any]], Dict[str, Any]]:
        """Each tile titled with its label (multi-label: every label, '-' for none)."""
        return [(image, None) for image, _, _ in samples], {
            "titles": [label_text(target, split.classes) for _, target, _ in samples]}

    def predict(self, trained: Any, items: List[Tuple[str, str]], popts: PredictOptions,
                device: torch.device) -> Dict[str, Any]:
        """predictions.csv (top-k per image) and, when ``popts.submission`` names a file, the submission.

        An unreadable image gets the training prior as its probabilities, so every input has its row; it is
        named in the log and listed in ``<out stem>_bad_images.txt``; too many of them stop before anything is
        written (the training run's --bad-images-floor and --bad-images-limit)."""
        multilabel = bool(trained.meta.get("multilabel"))
        paths, bad = [p for _, p in items], {}
        probs = predict_probs(trained.model, trained.transform, paths, in_chans=trained.in_chans, draft=trained.draft,
                              multilabel=multilabel, device=device, batch_size=popts.batch_size,
                              workers=popts.workers, amp=popts.amp, tta=popts.tta, bad=bad)
        o = trained.options
        settle_unreadable_inputs(paths, bad, unreadable_report(popts.out), limit_fraction=o["bad_images_limit"],
                                 floor_files=o["bad_images_floor"],
                                 fallback="the training prior (the class frequencies of the training images)")
        if bad:
            probs[sorted(bad)] = fallback_probs(trained.meta, len(trained.classes))
        result: Dict[str, Any] = {"images": len(items), "unreadable": [paths[i] for i in sorted(bad)],
                                  "predictions": write_predictions_csv(paths, probs, trained.classes, popts.out,
                                                                       popts.topk or 5)}
        log.info("predicted %d images%s -> %s", len(items), " (flip TTA)" if popts.tta else "", popts.out)
        if popts.submission:
            choice = SubmitChoice(popts.submit_as, popts.topk, popts.threshold, popts.positive_class)
            header = [popts.id_col or o.get("image_col") or "id", popts.target_col or o.get("label_col") or "label"]
            result["submission"] = write_submission(
                [i for i, _ in items], probs, trained.classes, popts.submission, header=header,
                sample=popts.sample_submission, multilabel=multilabel, choice=choice, prior=trained.meta.get("prior"))
            log.info("wrote %s", popts.submission)
        return result

    def activation(self, meta: Dict[str, Any]) -> str:
        return "sigmoid" if meta.get("multilabel") else "softmax"

    def oof(self, model: nn.Module, loader: Any, split: DataSplit, ids: List[str], fold: int,
            device: torch.device, amp_dtype: Any, mask_dir: Any,
            leave_out: AbstractSet[int] = frozenset()) -> Tuple[List[str], List[List[Any]]]:
        return oof_table(model, loader, ids, fold, split.classes, split.multilabel, device, amp_dtype, leave_out)

    def cv_metric(self, header: List[str], rows: List[List[Any]], split: DataSplit) -> float:
        return cv_accuracy(header, rows, split.multilabel)


@torch.no_grad()
def predict_probs(model: nn.Module, transform: Callable, paths: Sequence[str], *, in_chans: int, multilabel: bool,
                  device: torch.device, batch_size: int, workers: int, amp: bool, tta: bool,
                  bad: Optional[Dict[int, str]] = None, draft: Any = None) -> torch.Tensor:
    """Probabilities (N, C) for ``paths``: softmax, or sigmoid for multi-label; ``tta`` averages a flip.

    An image that cannot be read stops with one line naming it, unless ``bad`` is given: then it is recorded
    there (index -> why) and its row, the model's output on a blank image, is the caller's to replace."""
    act = torch.sigmoid if multilabel else (lambda z: z.softmax(dim=1))

    def probs(m: nn.Module, x: torch.Tensor, _: Any) -> Tuple[None, torch.Tensor]:
        p = act(m(x).float())
        if tta:  # horizontal flip: probabilities averaged, so they still sum to 1
            p = (p + act(m(x.flip(3)).float())) / 2
        return None, p

    out = [p.float().cpu() for _, p in predict_batches(model, probs, ImageList(paths, transform, in_chans, draft), device=device,
                                                        batch_size=batch_size, workers=workers, amp=amp, bad=bad)]
    return torch.cat(out) if out else torch.zeros(0, 0)
