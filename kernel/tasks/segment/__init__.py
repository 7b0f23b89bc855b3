"""The ``segment`` task: a class per pixel (binary, multiclass) or a set of classes per pixel (multilabel).

Data (:mod:`.data`): ``DIR/images`` + ``DIR/masks`` pairs (index, palette, 0/255 or colour masks), Kaggle RLE
CSVs (:mod:`.rle`) or ``shapes``. Models: smp decoders (``--arch``) on smp or timm encoders (``--model``),
or torchvision's segmentation models (:mod:`kernel.models.segmentation`). Losses default to ``dice+ce``
(multiclass) or ``dice+bce``. Metrics (:mod:`.metrics`): per-class IoU/Dice from counts over the whole
validation set; ``val_miou`` picks ``best.pt``. Pictures (:mod:`.pictures`): the worst validation images
as overlays, the per-class table, the pixel confusion matrix. Prediction (:mod:`.predict`): index-PNG
masks at each image's size and Kaggle RLE submissions.
"""
from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import AbstractSet, Any, Callable, Dict, List, Sequence, Tuple

import torch
from torch import nn

from ...augment import build_transform
from ...data import DEFAULT_DATA_CONFIG, DataSplit, fit_channel_stats
from ...models.segmentation import create_seg_model, list_seg_models
from ...errors import ConfigError
from ...options import PredictOptions
from ...report import plots
from ..base import Task
from .data import build_seg_sources, decode_multilabel
from .metrics import SegMeter
from .oof import cv_miou, oof_table, table_names
from .pictures import plot_overlays, write_seg_per_class_csv

__all__ = ["SegmentTask", "SegMeter", "CompactMask", "MaskTarget", "mask_dtype", "build_seg_sources", "SEG_IMG_SIZE", "N_PICTURES"]

SEG_IMG_SIZE = 256  # the input size when --img-size is not given (smp models have no pretrained config)
N_PICTURES = 8      # worst validation images in predictions.png


def out_channels(split: DataSplit) -> int:
    """Logit channels: 1 for binary (a foreground logit), else one per class."""
    return 1 if split.meta["mode"] == "binary" else len(split.classes)


def ignore_index(split: DataSplit) -> Any:
    return split.meta.get("ignore_index")


def mask_dtype(split: DataSplit) -> torch.dtype:
    """The smallest integer type that holds every value of this split's masks: class indices and the void label,
    or multilabel bit masks (one bit per class)."""
    m = split.meta
    top = (1 << len(split.classes)) - 1 if m["mode"] == "multilabel" else max(len(split.classes) - 1,
                                                                              m.get("ignore_index") or 0)
    return next(t for t in (torch.uint8, torch.int16, torch.int32, torch.int64) if top <= torch.iinfo(t).max)


class CompactMask:
    """The workers' target: an augmented (H, W) int64 mask in ``dtype`` (see :func:`mask_dtype`), 1/8 of the bytes
    for most data; :class:`MaskTarget` finishes it on the device."""

    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype

    def __call__(self, mask: torch.Tensor) -> torch.Tensor:
        return mask.to(self.dtype)


class MaskTarget:
    """The loss's target from (N, H, W) or (H, W) integer masks: int64 class indices, or multilabel bits ->
    (N, C, H, W) float."""

    def __init__(self, mode: str, num_classes: int):
        self.mode, self.num_classes = mode, num_classes

    def __call__(self, mask: torch.Tensor) -> torch.Tensor:
        return decode_multilabel(mask, self.num_classes) if self.mode == "multilabel" else mask.long()


class SegmentTask(Task):
    name = "segment"
    fast_decode = False  # masks are read at full size: an image decoded smaller would not align with its mask
    smoke_flags = ("--data", "shapes", "--model", "tu-test_resnet")  # a U-Net on a timm test encoder

    def detect(self, opts: Any, data: str) -> bool:
        """Masks: ``DIR/images`` + ``DIR/masks``, an RLE column in the CSV, or --rle-col/--class-col given."""
        from .data import RLE_COLUMNS

        if opts.rle_col or opts.class_col:
            return True
        root = Path(data)
        if data != "shapes" and (root / "images").is_dir() and (root / "masks").is_dir():
            return True
        csv_path = Path(opts.csv) if os.path.isabs(opts.csv) else root / opts.csv
        if opts.csv and csv_path.is_file():
            with open(csv_path, newline="", encoding="utf-8") as fh:
                header = next(csv.reader(fh), [])
            return any(h.strip().lower() in RLE_COLUMNS for h in header)
        return False
    monitors = ("val_miou", "val_dice", "val_loss")
    columns = ("train_miou", "val_miou", "val_dice", "val_image_miou", "val_pixel_acc")
    metric_panel = ("IoU / Dice", [("train_miou", "train mIoU"), ("val_miou", "val mIoU"), ("val_dice", "val Dice")])
    default_out = "masks"
    out_is_folder = True
    cv_name = "cv_miou"

    def build_data(self, opts: Any) -> DataSplit:
        split = build_seg_sources(opts.data, val_data=opts.val_data, val_split=opts.val_split, csv_file=opts.csv,
                                  image_dir=opts.image_dir, image_col=opts.image_col, rle_col=opts.rle_col,
                                  class_col=opts.class_col, rle_order=opts.rle_order, mode=opts.seg_mode,
                                  in_chans=opts.in_chans, seed=opts.seed)
        if split.meta["ignore_index"] is not None:  # --ignore-index -1: no void pixels
            split.meta["ignore_index"] = None if opts.ignore_index < 0 else opts.ignore_index
        split.meta.update(threshold=opts.threshold, include_background=opts.seg_include_background)
        return split

    def default_loss(self, split: DataSplit) -> str:
        return "dice+ce" if split.meta["mode"] == "multiclass" else "dice+bce"

    def loss_kwargs(self, split: DataSplit) -> Dict[str, Any]:
        return {} if ignore_index(split) is None else {"ignore_index": ignore_index(split)}

    def check(self, opts: Any, split: DataSplit, loss: Any) -> None:
        mixing = [f"--{n.replace('_', '-')}" for n in ("mixup", "cutmix", "label_smoothing") if getattr(opts, n)]
        if mixing:
            raise ConfigError(f"{mixing[0]}: mixes the labels of whole images (classification); segmentation masks "
                              "are not mixed this way: drop it")
        if split.meta["mode"] != "multiclass" and loss in ("ce", "dice+ce"):
            raise ConfigError(f"--loss {loss}: this is {split.meta['mode']} segmentation (one sigmoid per class); "
                              "use --loss dice+bce (or auto)")

    def create_model(self, opts: Any, split: DataSplit, pretrained: str) -> nn.Module:
        return create_seg_model(opts.arch, opts.model, out_channels(split), opts.in_chans, pretrained)

    def list_models(self, pattern: str) -> List[str]:
        return list_seg_models(pattern)

    def data_config(self, model: nn.Module, opts: Any) -> Dict[str, Any]:
        size = opts.img_size or SEG_IMG_SIZE
        hw = (size, size) if isinstance(size, int) else tuple(size)
        return dict(DEFAULT_DATA_CONFIG, img_size=hw, mean=fit_channel_stats(DEFAULT_DATA_CONFIG["mean"], opts.in_chans),
                    std=fit_channel_stats(DEFAULT_DATA_CONFIG["std"], opts.in_chans))

    def transform(self, opts: Any, dcfg: Dict[str, Any], train: bool) -> Callable:
        return build_transform(opts.aug, train=train, backend=opts.aug_backend, img_size=dcfg["img_size"],
                               mean=dcfg["mean"], std=dcfg["std"], interpolation=dcfg["interpolation"],
                               in_chans=opts.in_chans, fit="resize")

    def target(self, split: DataSplit) -> Callable:
        return CompactMask(mask_dtype(split))

    def on_device(self, batch: Any, split: DataSplit, inputs: Any) -> Any:
        images, masks, *rest = super().on_device(batch, split, inputs)
        return (images, MaskTarget(split.meta["mode"], len(split.classes))(masks), *rest)

    def meter(self, split: DataSplit, train: bool) -> SegMeter:
        m = split.meta
        return SegMeter(len(split.classes), m["mode"], m["ignore_index"], m["threshold"], m["include_background"],
                        keep_worst=0 if train else N_PICTURES)

    def row(self, train: Dict[str, Any], val: Dict[str, Any]) -> Dict[str, Any]:
        return {"train_miou": train["miou"], "val_miou": val["miou"], "val_dice": val["mdice"],
                "val_image_miou": val["image_miou"], "val_pixel_acc": val["pixel_acc"]}

    def describe(self, row: Dict[str, Any], part: str) -> str:
        return f" mIoU {row[f'{part}_miou']:.4f}" + (f" Dice {row['val_dice']:.4f}" if part == "val" else "")

    def write_best(self, run_dir: Path, epoch: int, val: Dict[str, Any], split: DataSplit, val_dataset: Any,
                   dcfg: Dict[str, Any], safe: Callable[..., None]) -> None:
        """per_class.csv, the pixel confusion matrix and overlays of the worst images, best epoch."""
        title = f"best checkpoint (epoch {epoch}), validation"
        names = table_names(split.meta["mode"], split.classes)
        safe("per_class.csv", lambda: write_seg_per_class_csv(val["per_class"], names, run_dir / "per_class.csv"), False)
        if "confusion" in val:
            safe("confusion_matrix.png", lambda: plots.plot_confusion_matrix(
                val["confusion"].numpy(), names, run_dir / "confusion_matrix.png", title=title, unit="pixels"), True)
        worst = val.get("worst")
        if worst is not None and len(worst["index"]):
            safe("predictions.png", lambda: _draw_worst(worst, split, val_dataset, dcfg, run_dir, title), True)

    def show_aug(self, samples: Sequence[Tuple[Any, Any, Any]],
                 split: DataSplit) -> Tuple[List[Tuple[Any, Any]], Dict[str, Any]]:
        """Each mask overlaid in its classes' colours (those of predictions.png, with a legend), each tile titled
        with the classes its mask holds ('-': background only)."""
        shown = [display_masks(torch.as_tensor(mask)[None], split) for _, _, mask in samples]
        _, names, colors = shown[0]
        titles = [", ".join(mask_classes(torch.as_tensor(mask), split)) or "-" for _, _, mask in samples]
        tiles = [(image, index[0]) for (image, _, _), (index, _, _) in zip(samples, shown)]
        return tiles, {"titles": titles, "colors": colors, "ignore_index": ignore_index(split), "names": names}

    def export_meta(self, split: DataSplit) -> Dict[str, Any]:
        return dict(split.meta)

    def predict(self, trained: Any, items: List[Tuple[str, str]], popts: PredictOptions,
                device: torch.device) -> Dict[str, Any]:
        from .inference import predict_masks
        return predict_masks(trained, items, popts, device)

    def activation(self, meta: Dict[str, Any]) -> str:
        return "softmax" if meta["mode"] == "multiclass" else "sigmoid"

    def oof(self, model: nn.Module, loader: Any, split: DataSplit, ids: List[str], fold: int,
            device: torch.device, amp_dtype: Any, mask_dir: Any,
            leave_out: AbstractSet[int] = frozenset()) -> Tuple[List[str], List[List[Any]]]:
        guard = getattr(loader.dataset, "guard", None)  # reads masks as the loader read the images
        return oof_table(model, loader, lambda j: (guard.read(split.val, j) if guard else split.val[j])[2],
                         MaskTarget(split.meta["mode"], len(split.classes)), ids, fold, split.classes, split.meta, device, amp_dtype, Path(mask_dir),
                         leave_out)

    def cv_metric(self, header: List[str], rows: List[List[Any]], split: DataSplit) -> float:
        return cv_miou(header, rows, split.meta, split.classes)


def display_masks(masks: torch.Tensor, split: DataSplit) -> Tuple[Any, List[str], List[List[int]]]:
    """Masks as index images for pictures, with their names and colours (multilabel bits: highest class)."""
    colors = [list(c) for c in split.meta["colors"]]
    if split.meta["mode"] != "multilabel":
        return masks.numpy(), table_names(split.meta["mode"], split.classes), colors
    m = masks.long()
    index = torch.zeros_like(m)
    for k in range(len(split.classes)):
        index = torch.where((m >> k) & 1 == 1, k + 1, index)
    return index.numpy(), ["none", *split.classes], [[0, 0, 0], *colors]


def mask_classes(mask: torch.Tensor, split: DataSplit) -> List[str]:
    """The classes an (H, W) mask holds, background and void pixels aside (multilabel: every class bit set)."""
    m = mask.long()
    if split.meta["mode"] == "multilabel":
        return [c for k, c in enumerate(split.classes) if bool(((m >> k) & 1).any())]
    names = table_names(split.meta["mode"], split.classes)
    return [names[k] for k in torch.unique(m).tolist() if 0 < k < len(names)]


def _draw_worst(worst: Dict[str, torch.Tensor], split: DataSplit, val_dataset: Any, dcfg: Dict[str, Any],
                run_dir: Path, title: str) -> None:
    idx = worst["index"].tolist()
    with torch.random.fork_rng(devices=[]):  # a custom eval transform must not touch the run's RNG
        samples = [val_dataset.transformed(i) for i in idx]
    images = torch.stack([s[0] for s in samples])
    truth, names, colors = display_masks(torch.stack([s[2] for s in samples]), split)
    pred, _, _ = display_masks(worst["pred"].long(), split)
    plot_overlays(images, truth, pred, worst["iou"].tolist(), names, colors, run_dir / "predictions.png",
                  mean=dcfg["mean"], std=dcfg["std"], ignore_index=ignore_index(split),
                  title=f"{title}: worst images first")
