"""Out-of-fold predictions of a segmentation fold: per-image scores, counts and masks; the CV mIoU.

Each validation image is predicted as :mod:`.predict` does it (logits resized bilinearly to the
image's own size, then argmax or threshold) and compared with its mask at that size. A row per
image: ``path`` (its id), ``fold``, ``iou`` and ``dice`` (the mean over the classes present in its
truth or prediction; 1.0 for a correct empty prediction), then its pixel counts ``tp_<class>``,
``fp_<class>``, ``fn_<class>``. The CV score sums the counts over every image of every fold, so it
is the whole OOF set's mIoU, computed exactly as ``val_miou`` is. Masks go to ``oof_masks/``.
"""
from __future__ import annotations

from pathlib import Path
from typing import AbstractSet, Any, Callable, List, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...engine.amp import forward
from ...engine.step import supervised_step, to_device
from .metrics import mean_present, scores, stat_counts
from .inference import logits_to_masks, mask_palette, write_masks

__all__ = ["table_names", "oof_table", "image_scores", "cv_miou"]


def table_names(mode: str, classes: Sequence[str]) -> List[str]:
    """The classes counted per image: binary counts background and foreground."""
    return ["background", classes[0]] if mode == "binary" and len(classes) == 1 else list(classes)


def image_scores(tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor, include_background: bool,
                 mode: str) -> Tuple[float, float]:
    """(IoU, Dice) of one image from its counts (C,): means over the counted classes present; 1.0 if none is."""
    start = 0 if mode == "multilabel" or include_background else 1
    tp, fp, fn = tp[start:].double(), fp[start:].double(), fn[start:].double()
    present = (tp + fp + fn) > 0
    if not bool(present.any()):
        return 1.0, 1.0
    iou = (tp / (tp + fp + fn).clamp_min(1))[present].mean()
    dice = (2 * tp / (2 * tp + fp + fn).clamp_min(1))[present].mean()
    return float(iou), float(dice)


def _pred_tensor(masks: np.ndarray, mode: str) -> torch.Tensor:
    """The masks as :func:`stat_counts` takes predictions: (1, H, W) int64, or (1, C, H, W) bool."""
    t = torch.from_numpy(np.ascontiguousarray(masks))
    return (t.bool() if mode == "multilabel" else t.long())[None]


@torch.no_grad()
def oof_table(model: nn.Module, loader: Any, raw_mask: Callable[[int], np.ndarray], target: Callable, ids: Sequence[str],
              fold: int, classes: Sequence[str], meta: dict, device: torch.device, amp_dtype: Any,
              mask_dir: Path, leave_out: AbstractSet[int] = frozenset()) -> Tuple[List[str], List[List[Any]]]:
    """(header, rows) for the images of ``loader`` (in order), but those at the positions ``leave_out`` (no row,
    no mask file): see the module docstring.

    ``raw_mask(j)``: the j-th image's mask at its own size, as the source stores it; ``target``: the
    task's mask -> target conversion (multilabel bits -> (C, H, W)).
    """
    model.eval()
    mode, names = meta["mode"], table_names(meta["mode"], classes)
    pal = mask_palette(meta, classes)
    rows, j = [], 0
    for images, _ in loader:
        _, logits = forward(supervised_step, model, (to_device(images, device),), None, device, amp_dtype)
        logits = logits.float()
        for k in range(logits.shape[0]):
            if j in leave_out:
                j += 1
                continue
            mask = raw_mask(j)
            lg = F.interpolate(logits[k:k + 1], size=mask.shape[:2], mode="bilinear", align_corners=False)[0].cpu()
            masks = logits_to_masks(lg, mode, meta["threshold"])
            truth = target(torch.from_numpy(np.asarray(mask)).long())[None]
            tp, fp, fn = (c[0] for c in stat_counts(_pred_tensor(masks, mode), truth, mode, len(classes),
                                                    meta.get("ignore_index")))
            iou, dice = image_scores(tp, fp, fn, meta["include_background"], mode)
            write_masks(masks, mask_dir, Path(ids[j]).stem, mode, classes, pal)
            rows.append([ids[j], fold, f"{iou:.9g}", f"{dice:.9g}", *tp.tolist(), *fp.tolist(), *fn.tolist()])
            j += 1
    header = ["path", "fold", "iou", "dice", *[f"{s}_{n}" for s in ("tp", "fp", "fn") for n in names]]
    return header, rows


def cv_miou(header: Sequence[str], rows: Sequence[Sequence[Any]], meta: dict, classes: Sequence[str]) -> float:
    """The OOF set's mIoU from the rows' summed counts (as ``val_miou``: present counted classes)."""
    names = table_names(meta["mode"], classes)
    cols = {s: [list(header).index(f"{s}_{n}") for n in names] for s in ("tp", "fp", "fn")}
    sums = {s: torch.tensor([sum(int(r[c]) for r in rows) for c in cols[s]], dtype=torch.int64) for s in cols}
    present = (sums["tp"] + sums["fp"] + sums["fn"]) > 0
    return mean_present(scores(sums["tp"], sums["fp"], sums["fn"])["iou"], present, meta["include_background"],
                        meta["mode"])
