"""Segmentation prediction: masks at each image's own size, flip TTA, small regions dropped, RLE submissions.

Each image goes through the evaluation transform (resized to the training size), the model gives
logits, and the logits -- never a nearest-resized mask -- are resized bilinearly to the image's size
before the argmax (multiclass) or the threshold (binary, multilabel). Outputs in ``--out``:

* ``<stem>.png``: an index mask with the run's palette, for binary and multiclass models;
  multilabel models write one 0/1 mask per class, ``<stem>_<class>.png``;
* ``submission.csv`` (``--submission``): Kaggle RLE, a row per image (``id,rle_mask``, binary) or per image
  and class (``ImageId,ClassId,EncodedPixels``); a ``--sample-submission`` gives the columns and row order
  (:mod:`.submission`, checked before the first mask is written);
* ``bad_images.txt``: the inputs that could not be read. Each keeps its submission rows with the fallback
  prediction, an all-background (empty) mask, but gets no mask file: its size is unknown.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ...data import REPORT, ImageList, settle_unreadable_inputs
from ...options import PredictOptions
from ..predicting import predict_batches
from ...report.files import write_csv
from .masks import palette, write_mask_png
from .rle import rle_encode
from .submission import plan_submission

__all__ = ["predict_logits", "logits_to_masks", "remove_small_regions", "mask_palette", "write_masks", "predict_masks"]

log = logging.getLogger("kernel")


def _plain_step(model: Any, images: torch.Tensor, _: Any) -> Tuple[None, torch.Tensor]:
    return None, model(images).float()


def _tta_step(model: Any, images: torch.Tensor, _: Any) -> Tuple[None, torch.Tensor]:
    """Horizontal flip: the flipped image's logits, flipped back, averaged with the plain ones."""
    return None, (model(images).float() + model(images.flip(3)).float().flip(3)) / 2


@torch.no_grad()
def predict_logits(trained: Any, paths: Sequence[str], *, device: torch.device, batch_size: int, workers: int,
                   amp: bool, tta: bool, bad: Optional[Dict[int, str]] = None) -> Iterator[Tuple[int, torch.Tensor]]:
    """(index, logits (C, H0, W0) float32 on the CPU) per image, at the image's own size H0 x W0.

    An image that cannot be read stops with one line naming it, unless ``bad`` is given: then it is recorded
    there (index -> why) and yields nothing."""
    batches = predict_batches(trained.model, _tta_step if tta else _plain_step,
                              ImageList(paths, trained.transform, trained.in_chans, trained.draft), device=device,
                              batch_size=batch_size, workers=workers, amp=amp, bad=bad)
    for index, logits in batches:
        for k, i in enumerate(index):
            if bad is not None and i in bad:
                continue
            with Image.open(paths[i]) as img:
                w0, h0 = img.size
            yield i, F.interpolate(logits[k:k + 1], size=(h0, w0), mode="bilinear", align_corners=False)[0].cpu()


def logits_to_masks(logits: torch.Tensor, mode: str, threshold: float) -> np.ndarray:
    """(C, H, W) logits -> (H, W) uint8 class indices (binary: 0/1), or (C, H, W) bool for multilabel."""
    if mode == "multiclass":
        return logits.argmax(0).numpy().astype(np.uint8)
    on = torch.sigmoid(logits) > threshold
    return on[0].numpy().astype(np.uint8) if mode == "binary" else on.numpy()


def remove_small_regions(mask: np.ndarray, min_area: int) -> np.ndarray:
    """Set connected regions (8-connectivity) smaller than ``min_area`` pixels to 0, per class; (H, W) ints."""
    if min_area <= 0:
        return mask
    import cv2

    out = mask.copy()
    for value in np.unique(mask):
        if value == 0:
            continue
        n, labels, stats, _ = cv2.connectedComponentsWithStats((mask == value).astype(np.uint8), connectivity=8)
        small = [k for k in range(1, n) if stats[k, cv2.CC_STAT_AREA] < min_area]
        if small:
            out[np.isin(labels, small)] = 0
    return out


def _safe_name(name: str) -> str:
    return re.sub(r"[^\w.-]+", "_", str(name))


def mask_palette(meta: Dict[str, Any], classes: Sequence[str]) -> List[int]:
    """The PNG palette of a run's index masks: its class colours (multilabel masks are 0/1 per class)."""
    mode = meta["mode"]
    return palette(max(len(classes), 2), [tuple(c) for c in meta["colors"]] if mode != "multilabel" else None)


def write_masks(masks: np.ndarray, out: Path, stem: str, mode: str, classes: Sequence[str], pal: List[int]) -> None:
    """``out/<stem>.png`` (an index mask (H, W), palette ``pal``), or for multilabel masks (C, H, W) one 0/1
    ``out/<stem>_<class>.png`` per class."""
    if mode == "multilabel":
        for name, m in zip(classes, masks):
            write_mask_png(m.astype(np.uint8), out / f"{stem}_{_safe_name(name)}.png", palette(2))
    else:
        write_mask_png(masks, out / f"{stem}.png", pal)


def predict_masks(trained: Any, items: List[Tuple[str, str]], popts: PredictOptions,
                  device: torch.device) -> Dict[str, Any]:
    """Write one mask per image into ``popts.out`` and, when asked, the RLE submission; see the module doc.

    The submission (a sample submission's columns, ids and classes) is checked first: a refusal writes nothing."""
    mode, classes = trained.meta["mode"], trained.classes
    out = Path(popts.out)
    pal = mask_palette(trained.meta, classes)
    order = trained.options.get("rle_order", "F")
    fg = list(classes) if mode == "multilabel" else classes[1:] if len(classes) > 1 else list(classes)
    plan = plan_submission([ident for ident, _ in items], fg, popts, trained.options,
                           per_class=mode != "binary") if popts.submission else None
    rles: Dict[int, List[str]] = {}  # image index -> RLE per foreground class (fg's order)
    paths, bad = [p for _, p in items], {}
    for i, logits in predict_logits(trained, paths, device=device, batch_size=popts.batch_size,
                                    workers=popts.workers, amp=popts.amp, tta=popts.tta, bad=bad):
        masks = logits_to_masks(logits, mode, popts.threshold)
        if mode == "multilabel":
            masks = np.stack([remove_small_regions(m.astype(np.uint8), popts.min_area) for m in masks])
            rles[i] = [rle_encode(m, order) for m in masks]
        else:
            masks = remove_small_regions(masks, popts.min_area)
            rles[i] = [rle_encode(masks == k + 1, order) for k in range(len(fg))]
        write_masks(masks, out, Path(items[i][1]).stem, mode, classes, pal)
    settle_unreadable_inputs(paths, bad, out / REPORT, limit_fraction=trained.options["bad_images_limit"],
                             floor_files=trained.options["bad_images_floor"],
                             fallback="an all-background mask in the submission (and no mask file)")
    for i in bad:  # the fallback: nothing found, an empty run-length code for every class
        rles[i] = [""] * len(fg)
    log.info("predicted %d masks%s -> %s", len(items) - len(bad), " (flip TTA)" if popts.tta else "", out)
    result: Dict[str, Any] = {"images": len(items), "masks": str(out), "unreadable": [paths[i] for i in sorted(bad)]}
    if plan is not None:
        result["submission"] = write_csv(plan.table(rles), popts.submission)
        log.info("wrote %s", popts.submission)
    return result
