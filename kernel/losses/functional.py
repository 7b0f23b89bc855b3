"""Pure loss maths: tensors in, tensor out, no state (the nn.Module wrappers live in loss_modules.py).

Shapes: logits ``x`` are (N, C) for classification or (N, C, *S) for segmentation (S = H, W, ...).
Every function works from logits with log-sigmoid / log-softmax, never ``log(sigmoid(x))``,
so nothing saturates. Callers pass float tensors (losses.py casts to fp32 with autocast off).
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError

__all__ = [
    "MODES", "Targets", "infer_mode", "prepare_targets", "per_class", "reduce_masked",
    "cross_entropy", "binary_cross_entropy", "regression_loss", "kl_divergence",
    "sigmoid_focal_loss", "softmax_focal_loss", "quality_focal_loss",
    "overlap_counts", "dice_score", "iou_score", "tversky_score", "overlap_loss",
]

MODES = ("binary", "multiclass", "multilabel")
Weight = Union[None, float, Sequence[float], Tensor]


class Targets(NamedTuple):
    """Targets in one dense form, whatever shape they came in."""

    mode: str                 # "binary" | "multiclass" | "multilabel"
    dense: Optional[Tensor]   # (N, C, *S) float: one-hot / multi-hot / soft; 0 where ignored (None: one_hot=False)
    valid: Tensor             # (N, 1, *S) for multiclass, (N, C, *S) otherwise; 1 = counts, 0 = ignored
    labels: Optional[Tensor]  # (N, *S) int64 class map as given (ignore_index kept), or None


def _shape_error(name: str, x: Tensor, t: Tensor, why: str) -> ConfigError:
    return ConfigError(f"--loss {name}: logits {tuple(x.shape)} and target {tuple(t.shape)} {t.dtype} do not fit "
                       f"({why}); classification wants (N, C) with (N,) int or (N, C) float, segmentation "
                       "(N, C, H, W) with (N, H, W) int or (N, C, H, W) float; or set mode=...")


def infer_mode(x: Tensor, t: Tensor) -> Optional[str]:
    """Guess the mode from shapes: int target == x.shape without dim 1 -> multiclass (binary if C == 1);
    target of x's shape -> binary if C == 1 else multilabel. None when nothing fits."""
    squeezed = x.shape[:1] + x.shape[2:]
    if t.shape == x.shape:
        return "binary" if x.shape[1] == 1 else "multilabel"
    if t.shape == squeezed:
        if x.shape[1] == 1:  # (N, 1, H, W) logits with an (N, H, W) mask, or (N, 1) with (N,) targets
            return "binary"
        return "multiclass" if not t.is_floating_point() else None
    return None


def prepare_targets(x: Tensor, t: Tensor, mode: Optional[str] = None, ignore_index: Optional[int] = None,
                    name: str = "loss", one_hot: bool = True) -> Tuple[Tensor, Targets]:
    """Bring (logits, target) to logits (N, C, *S) and :class:`Targets`; (N,) logits become (N, 1).

    Integer class maps become one-hot (for sigmoid modes too: ``bce`` on int labels is one-vs-rest);
    one_hot=False skips that for multiclass labels (dense=None; F.cross_entropy needs only labels).
    ``ignore_index`` marks ignored labels (multiclass) or ignored elements (binary/multilabel masks).
    """
    if x.ndim == 1:
        x = x.unsqueeze(1)
        t = t.unsqueeze(1) if t.ndim == 1 else t
    if x.ndim < 2:
        raise _shape_error(name, x, t, "logits need a batch and a class dimension")
    c = x.shape[1]
    found = infer_mode(x, t)
    mode = mode or found
    if mode is None:
        raise _shape_error(name, x, t, "no mode fits these shapes")
    if mode not in MODES:
        raise ConfigError(f"--loss {name}: mode={mode!r} is unknown; use one of {', '.join(MODES)}")
    if mode == "binary" and c != 1:
        raise _shape_error(name, x, t, f"mode=binary needs 1 output channel, got C={c}")
    if mode == "multiclass" and c < 2:
        raise _shape_error(name, x, t, "mode=multiclass needs C >= 2 output channels")
    squeezed = x.shape[:1] + x.shape[2:]
    if t.shape == squeezed and c == 1:
        t = t.unsqueeze(1)  # binary mask without its channel dimension
    if t.shape == squeezed and not t.is_floating_point():  # class map -> one-hot
        # No ignore_index: a stride-0 view of one 1, not a full tensor of ones on every call.
        valid = (torch.ones((), dtype=x.dtype, device=x.device).expand(t.shape) if ignore_index is None
                 else (t != ignore_index).to(x.dtype))
        if not one_hot and mode == "multiclass":  # an (N, C, H, W) one-hot is big; skip it when unused
            return x, Targets(mode, None, valid.unsqueeze(1), t.long())
        safe = t.long() if ignore_index is None else t.long().masked_fill(t == ignore_index, 0)
        try:
            dense = F.one_hot(safe, c).movedim(-1, 1).to(x.dtype)
        except RuntimeError as e:
            raise ConfigError(f"--loss {name}: target labels must lie in [0, {c}) (or equal ignore_index): {e}") from e
        if ignore_index is not None:
            dense = dense * valid.unsqueeze(1)
        if mode != "multiclass":  # one-vs-rest: an ignored pixel is ignored in every channel
            valid = valid.unsqueeze(1).expand_as(dense)
            return x, Targets(mode, dense, valid, None)
        return x, Targets(mode, dense, valid.unsqueeze(1), t.long())
    if t.shape != x.shape:
        raise _shape_error(name, x, t, f"mode={mode} needs the target shaped like the logits"
                           + ("" if mode != "multiclass" else " or like the logits without dim 1"))
    if ignore_index is None:
        valid = torch.ones((), dtype=x.dtype, device=x.device).expand_as(x)
        dense = t.to(x.dtype)
    else:
        keep = t != ignore_index
        valid = keep.to(x.dtype)
        dense = torch.where(keep, t, torch.zeros_like(t)).to(x.dtype)
    if mode == "multiclass":  # soft class distributions: a pixel counts unless every channel is ignored
        valid = valid.amax(1, keepdim=True)
    return x, Targets(mode, dense, valid, None)


def per_class(value: Weight, x: Tensor, flat: bool = False) -> Optional[Tensor]:
    """A scalar or (C,) value as a tensor that broadcasts against (N, C, *S) logits ((C,) if flat)."""
    if value is None:
        return None
    v = torch.as_tensor(value, dtype=x.dtype, device=x.device)
    if v.ndim > 1 or (v.ndim == 1 and v.numel() != x.shape[1]):
        raise ConfigError(f"--loss-kwargs: a per-class value has shape {tuple(v.shape)} but the logits have "
                          f"{x.shape[1]} classes; give one number per class (or a single number)")
    if flat:
        return v.expand(x.shape[1]).contiguous() if v.ndim == 0 else v
    return v if v.ndim == 0 else v.reshape(-1, *([1] * (x.ndim - 2)))


def reduce_masked(loss: Tensor, valid: Tensor, reduction: str = "mean") -> Tensor:
    """Reduce an element/pixel loss over the valid entries: mean = sum / number of valid entries."""
    loss = loss * valid
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    return loss.sum() / valid.expand_as(loss).sum().clamp_min(1)


def cross_entropy(x: Tensor, t: Targets, weight: Weight = None, label_smoothing: float = 0.0,
                  ignore_index: Optional[int] = None, reduction: str = "mean") -> Tensor:
    """Softmax cross-entropy; x (N, C, *S). Hard labels go to F.cross_entropy as they are; float
    targets (soft or multi-hot) are normalised to sum to 1 over classes (softmax multi-label CE)."""
    w = per_class(weight, x, flat=True)
    if t.labels is not None:
        ii = -100 if ignore_index is None else ignore_index
        return F.cross_entropy(x, t.labels, w, ignore_index=ii, label_smoothing=label_smoothing, reduction=reduction)
    q = t.dense / t.dense.sum(1, keepdim=True).clamp_min(1e-12)
    loss = F.cross_entropy(x, q, w, label_smoothing=label_smoothing, reduction="none")
    return reduce_masked(loss, t.valid.amax(1), reduction)


def binary_cross_entropy(x: Tensor, t: Targets, weight: Weight = None, pos_weight: Weight = None,
                         reduction: str = "mean") -> Tensor:
    """Per-element BCE with logits; ``weight``/``pos_weight`` scalar or per class (C,)."""
    loss = F.binary_cross_entropy_with_logits(x, t.dense, reduction="none", pos_weight=per_class(pos_weight, x))
    w = per_class(weight, x)
    return reduce_masked(loss if w is None else loss * w, t.valid, reduction)


def regression_loss(x: Tensor, t: Targets, kind: str = "mse", activation: str = "auto", beta: float = 1.0,
                    reduction: str = "mean") -> Tensor:
    """Element-wise mse / l1 / smooth_l1 / huber between a prediction and the dense target (``beta``: smooth_l1's
    end of the quadratic part, huber's ``delta``; huber = beta * smooth_l1).

    activation "auto": softmax probabilities vs one-hot for multiclass integer labels (a Brier-style
    score), the raw outputs otherwise (real regression); or "none" | "sigmoid" | "softmax".
    """
    if activation == "auto":
        activation = "softmax" if t.labels is not None else "none"
    pred = torch.sigmoid(x) if activation == "sigmoid" else torch.softmax(x, 1) if activation == "softmax" else x
    if kind == "mse":
        loss = F.mse_loss(pred, t.dense, reduction="none")
    elif kind == "l1":
        loss = F.l1_loss(pred, t.dense, reduction="none")
    elif kind == "huber":
        loss = F.huber_loss(pred, t.dense, reduction="none", delta=beta)
    else:
        loss = F.smooth_l1_loss(pred, t.dense, reduction="none", beta=beta)
    return reduce_masked(loss, t.valid, reduction)


def kl_divergence(x: Tensor, t: Targets, label_smoothing: float = 0.0, reduction: str = "mean") -> Tensor:
    """KL(target || prediction) per pixel/sample, mean over them. Multiclass: softmax distributions,
    float targets normalised over classes; binary/multilabel: per-element Bernoulli KL."""
    if t.mode == "multiclass":
        q = t.dense / t.dense.sum(1, keepdim=True).clamp_min(1e-12)
        q = q * (1 - label_smoothing) + label_smoothing / x.shape[1]
        loss = (torch.xlogy(q, q) - q * F.log_softmax(x, 1)).sum(1)
        return reduce_masked(loss, t.valid[:, 0], reduction)
    q = t.dense * (1 - label_smoothing) + label_smoothing / 2
    loss = torch.xlogy(q, q) + torch.xlogy(1 - q, 1 - q) - q * F.logsigmoid(x) - (1 - q) * F.logsigmoid(-x)
    return reduce_masked(loss, t.valid, reduction)


def _focal_factor(one_minus_pt: Tensor, gamma: float) -> Tensor:
    """(1 - p_t)^gamma; a saturated p_t = 1 would give 0^gamma an infinite gradient when gamma < 1."""
    if gamma == 0:
        return torch.ones_like(one_minus_pt)
    return (one_minus_pt.clamp_min(1e-6) if gamma < 1 else one_minus_pt).pow(gamma)


def sigmoid_focal_loss(x: Tensor, t: Targets, alpha: Weight = 0.25, gamma: float = 2.0,
                       reduction: str = "mean") -> Tensor:
    """Per-element focal loss (Lin et al. 2017): alpha_t (1 - p_t)^gamma BCE, mean over elements.

    The factor is per element (a batch-mean factor would rescale every element alike and focus
    on nothing); alpha_t = alpha for positives, 1 - alpha for negatives; alpha=None switches it off.
    """
    y = t.dense
    ce = F.binary_cross_entropy_with_logits(x, y, reduction="none")
    p = torch.sigmoid(x)
    one_minus_pt = p * (1 - y) + (1 - p) * y
    loss = ce * _focal_factor(one_minus_pt, gamma)
    a = per_class(alpha, x)
    if a is not None:
        loss = (a * y + (1 - a) * (1 - y)) * loss
    return reduce_masked(loss, t.valid, reduction)


def softmax_focal_loss(x: Tensor, t: Targets, alpha: Weight = None, gamma: float = 2.0,
                       reduction: str = "mean") -> Tensor:
    """Softmax focal loss: -sum_c alpha_c q_c (1 - p_c)^gamma log p_c per pixel (q = one-hot or soft
    target), mean over valid pixels. ``alpha``: None or per-class weights (C,)."""
    logp = F.log_softmax(x, 1)
    loss = -t.dense * _focal_factor(-torch.expm1(logp), gamma) * logp  # -expm1: exact 1 - p near p = 1
    a = per_class(alpha, x)
    loss = (loss if a is None else loss * a).sum(1)
    return reduce_masked(loss, t.valid[:, 0], reduction)


def quality_focal_loss(x: Tensor, t: Targets, beta: float = 2.0, reduction: str = "mean") -> Tensor:
    """Quality Focal Loss (Li et al. 2020, GFL): |y - sigma|^beta * BCE(sigma, y), y soft in [0, 1]."""
    y = t.dense
    loss = F.binary_cross_entropy_with_logits(x, y, reduction="none") * (y - torch.sigmoid(x)).abs().pow(beta)
    return reduce_masked(loss, t.valid, reduction)


def overlap_counts(p: Tensor, y: Tensor, valid: Tensor, per_image: bool) -> Tuple[Tensor, Tensor, Tensor]:
    """Soft TP, FP, FN of probabilities p vs targets y (N, C, *S): (N, C) per image, else (C,)."""
    dims = tuple(range(2, p.ndim)) if per_image else (0,) + tuple(range(2, p.ndim))
    p, y = p * valid, y * valid
    tp = (p * y).sum(dims)
    return tp, (p * (1 - y)).sum(dims), ((1 - p) * y).sum(dims)


def dice_score(tp: Tensor, fp: Tensor, fn: Tensor, smooth: float = 1.0, eps: float = 1e-7) -> Tensor:
    """(2 TP + smooth) / (2 TP + FP + FN + smooth); the denominator is clamped to eps."""
    return (2 * tp + smooth) / (2 * tp + fp + fn + smooth).clamp_min(eps)


def iou_score(tp: Tensor, fp: Tensor, fn: Tensor, smooth: float = 1.0, eps: float = 1e-7) -> Tensor:
    """Jaccard: (TP + smooth) / (TP + FP + FN + smooth); the denominator is clamped to eps."""
    return (tp + smooth) / (tp + fp + fn + smooth).clamp_min(eps)


def tversky_score(tp: Tensor, fp: Tensor, fn: Tensor, alpha: float = 0.3, beta: float = 0.7,
                  smooth: float = 1.0, eps: float = 1e-7) -> Tensor:
    """Tversky index (TP + smooth) / (TP + alpha FP + beta FN + smooth); alpha = beta = 1/2 is Dice."""
    return (tp + smooth) / (tp + alpha * fp + beta * fn + smooth).clamp_min(eps)


def overlap_loss(x: Tensor, t: Targets, kind: str = "dice", *, from_logits: bool = True, smooth: float = 1.0,
                 eps: float = 1e-7, per_image: bool = False, classes: Optional[Sequence[int]] = None,
                 weight: Weight = None, alpha: float = 0.3, beta: float = 0.7, gamma: float = 1.0,
                 reduction: str = "mean") -> Tensor:
    """1 - score for kind "dice" | "iou" | "tversky" (tversky: (1 - score)^gamma), per class.

    Probabilities: softmax over classes for multiclass, sigmoid otherwise (as given when
    from_logits=False). per_image=False sums counts over the whole batch: (C,) scores;
    per_image=True scores every image alone: (N, C). ``classes`` picks the classes averaged,
    ``weight`` (C,) weights that average. reduction "none" returns the (C,) / (N, C) losses.
    """
    p = (torch.softmax(x, 1) if t.mode == "multiclass" else torch.sigmoid(x)) if from_logits else x
    tp, fp, fn = overlap_counts(p, t.dense, t.valid, per_image)
    if kind == "dice":
        loss = 1 - dice_score(tp, fp, fn, smooth, eps)
    elif kind == "iou":
        loss = 1 - iou_score(tp, fp, fn, smooth, eps)
    else:
        loss = (1 - tversky_score(tp, fp, fn, alpha, beta, smooth, eps)).clamp_min(0).pow(gamma)
    w = per_class(weight, x, flat=True)
    if classes is not None:
        idx = torch.as_tensor(list(classes), dtype=torch.long, device=loss.device)
        loss = loss.index_select(-1, idx)
        w = None if w is None else w.index_select(0, idx)
    if reduction == "none":
        return loss
    if w is None:
        return loss.mean() if reduction == "mean" else loss.sum()
    total = (loss * w).sum()
    return total / (w.sum() * (loss.numel() // loss.shape[-1])).clamp_min(1e-12) if reduction == "mean" else total
