"""The loss modules, one class per registered name, and the ``LOSSES`` registry they fill.

Each class only checks and holds hyper-parameters; :class:`Loss` brings logits and targets to one
dense form (mode inference, one-hot, ignore_index) in fp32 with autocast off; the maths is in
:mod:`kernel.losses.functional`. :mod:`kernel.losses` (names, shapes, modes documented there) builds
these from a spec and re-exports them: spec parsing and per-loss options are two concerns, two modules.
The class decorators register at import, so ``LOSSES`` is complete once this module is imported.
"""
from __future__ import annotations

import contextlib
import inspect
from typing import Any, Callable, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from . import functional as LF
from ..errors import ConfigError
from ..registry import Registry

__all__ = [
    "LOSSES", "Loss", "CrossEntropyLoss", "BCELoss", "MSELoss", "L1Loss", "SmoothL1Loss", "KLDivLoss",
    "FocalLoss", "DiceLoss", "IoULoss", "TverskyLoss", "DiceBCELoss", "QualityFocalLoss",
    "check", "to_fp32", "autocast_off",
]


LOSSES: Registry = Registry("loss")


def check(ok: bool, name: str, msg: str) -> None:
    """Raise ConfigError ``--loss NAME: MSG`` unless ``ok`` (shared with the spec parsing in losses.py)."""
    if not ok:
        raise ConfigError(f"--loss {name}: {msg}")


def to_fp32(t: Tensor) -> Tensor:
    """Half / bfloat16 -> float32; float64 (gradcheck) and integer tensors stay as they are."""
    return t.float() if t.is_floating_point() and t.element_size() < 4 else t


def autocast_off(device_type: str) -> Any:
    """A context that runs the loss in full precision, whatever autocast the caller has on."""
    try:
        return torch.autocast(device_type, enabled=False)
    except RuntimeError:  # a device type autocast does not know: nothing to switch off
        return contextlib.nullcontext()


def _vector(value: Any, name: str, option: str) -> Optional[Tensor]:
    """None, a number or a per-class list -> tensor (kept as a buffer so .to(device) moves it)."""
    if value is None:
        return None
    try:
        return torch.as_tensor(value, dtype=torch.float32)
    except (TypeError, ValueError, RuntimeError):
        raise ConfigError(f"--loss {name}: {option}={value!r} must be a number or a list of numbers, one per class")


def _number(value: Any, name: str, option: str, low: float = 0.0) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value >= low
    check(ok, name, f"{option}={value!r} must be a number >= {low}")
    return float(value)


class Loss(nn.Module):
    """Base class: ``forward(logits, target)`` brings the targets to dense form (mode inference,
    one-hot, ignore_index) and calls ``compute(x, targets)`` in fp32 with autocast off."""

    name = "loss"
    reductions: Tuple[str, ...] = ("mean", "sum", "none")
    one_hot = True  # whether compute() reads Targets.dense for integer class maps

    def __init__(self, mode: Optional[str] = None, ignore_index: Optional[int] = None, reduction: str = "mean"):
        super().__init__()
        check(mode is None or mode in LF.MODES, self.name, f"mode={mode!r}; use one of {', '.join(LF.MODES)} "
              "or leave it unset to infer it from the shapes")
        check(reduction in self.reductions, self.name, f"reduction={reduction!r}; use {' or '.join(self.reductions)}")
        check(ignore_index is None or isinstance(ignore_index, int), self.name, "ignore_index must be an integer")
        self.mode, self.ignore_index, self.reduction = mode, ignore_index, reduction

    def _mode_for(self, logits: Tensor) -> Optional[str]:
        return self.mode

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        """logits (N, C, *S) float; target (N, *S) int or (N, C, *S) float -> scalar (for reduction mean/sum)."""
        with autocast_off(logits.device.type):
            x, t = LF.prepare_targets(to_fp32(logits), to_fp32(target), self._mode_for(logits), self.ignore_index,
                                      self.name, self.one_hot)
            return self.compute(x, t)

    def compute(self, x: Tensor, t: LF.Targets) -> Tensor:
        raise NotImplementedError

    def extra_repr(self) -> str:
        names = [p for p in inspect.signature(type(self).__init__).parameters if p != "self"]
        return ", ".join(f"{p}={getattr(self, p)!r}" for p in names if hasattr(self, p))


def _register(name: str, aliases: Sequence[str] = ()) -> Callable[[type], type]:
    """Class decorator: register under ``name`` and set ``cls.name``, which every error message uses."""
    def add(cls: type) -> type:
        cls.name = name
        return LOSSES.register(name, cls, aliases=aliases)
    return add


@_register("ce", aliases=("cross_entropy",))
class CrossEntropyLoss(Loss):
    """Softmax cross-entropy (F.cross_entropy). Float (N, C) targets are soft labels; multi-hot rows
    are normalised to sum to 1. ``weight`` (C,) class weights; ``label_smoothing`` in [0, 1)."""

    one_hot = False

    def __init__(self, weight: Any = None, label_smoothing: float = 0.0, ignore_index: Optional[int] = None,
                 mode: Optional[str] = None, reduction: str = "mean"):
        super().__init__(mode, ignore_index, reduction)
        self.label_smoothing = _number(label_smoothing, self.name, "label_smoothing")
        self.register_buffer("weight", _vector(weight, self.name, "weight"), persistent=False)

    def compute(self, x: Tensor, t: LF.Targets) -> Tensor:
        check(t.mode != "binary", self.name, "softmax cross-entropy needs C >= 2 outputs; use bce for one output")
        return LF.cross_entropy(x, t, self.weight, self.label_smoothing, self.ignore_index, self.reduction)


@_register("bce", aliases=("bce_with_logits",))
class BCELoss(Loss):
    """Binary cross-entropy with logits per element; int class maps are one-hot encoded.
    ``weight`` / ``pos_weight``: a number or one per class."""

    def __init__(self, weight: Any = None, pos_weight: Any = None, ignore_index: Optional[int] = None,
                 mode: Optional[str] = None, reduction: str = "mean"):
        super().__init__(mode, ignore_index, reduction)
        self.register_buffer("weight", _vector(weight, self.name, "weight"), persistent=False)
        self.register_buffer("pos_weight", _vector(pos_weight, self.name, "pos_weight"), persistent=False)

    def compute(self, x: Tensor, t: LF.Targets) -> Tensor:
        return LF.binary_cross_entropy(x, t, self.weight, self.pos_weight, self.reduction)


class _Regression(Loss):
    """Element-wise regression loss. activation "auto": multiclass integer labels compare softmax
    probabilities with one-hot (Brier-style); other targets compare the raw outputs (regression).
    "none" | "sigmoid" | "softmax" force it. ``beta`` (smooth_l1, huber): end of the quadratic part."""

    kind = "mse"

    def __init__(self, activation: str = "auto", beta: float = 1.0, ignore_index: Optional[int] = None,
                 mode: Optional[str] = None, reduction: str = "mean"):
        super().__init__(mode, ignore_index, reduction)
        check(activation in ("auto", "none", "sigmoid", "softmax"), self.name,
              f"activation={activation!r}; use auto, none, sigmoid or softmax")
        self.activation, self.beta = activation, _number(beta, self.name, "beta")

    def compute(self, x: Tensor, t: LF.Targets) -> Tensor:
        return LF.regression_loss(x, t, self.kind, self.activation, self.beta, self.reduction)


@_register("mse", aliases=("l2",))
class MSELoss(_Regression):
    kind = "mse"


@_register("l1", aliases=("mae",))
class L1Loss(_Regression):
    kind = "l1"


@_register("smooth_l1")
class SmoothL1Loss(_Regression):
    kind = "smooth_l1"


@_register("huber")
class HuberLoss(_Regression):
    """Huber: quadratic within ``beta`` (torch's ``delta``) of the target, linear beyond."""
    kind = "huber"


@_register("kl", aliases=("kl_div",))
class KLDivLoss(Loss):
    """KL(target || prediction). C > 1: softmax class distributions (int labels -> one-hot smoothed
    by ``label_smoothing``; float targets normalised over classes). C == 1 or mode binary/multilabel:
    per-element Bernoulli KL. Mean over samples/pixels ("batchmean")."""

    def __init__(self, label_smoothing: float = 0.0, ignore_index: Optional[int] = None,
                 mode: Optional[str] = None, reduction: str = "mean"):
        super().__init__(mode, ignore_index, reduction)
        self.label_smoothing = _number(label_smoothing, self.name, "label_smoothing")

    def _mode_for(self, logits: Tensor) -> Optional[str]:
        # float (N, C) targets are read as class distributions, not as C independent labels
        return self.mode or ("multiclass" if logits.ndim > 1 and logits.shape[1] > 1 else None)

    def compute(self, x: Tensor, t: LF.Targets) -> Tensor:
        return LF.kl_divergence(x, t, self.label_smoothing, self.reduction)


@_register("focal")
class FocalLoss(Loss):
    """Focal loss, per element. Binary / multilabel, and multiclass with ``multiclass="sigmoid"``
    (one-vs-rest): alpha_t (1 - p_t)^gamma BCE, alpha="auto" = 0.25 (RetinaNet). Multiclass with
    ``multiclass="softmax"`` (default): -alpha_c (1 - p_t)^gamma log p_t; alpha="auto" = none,
    a per-class list weights classes (a single number has no meaning there). alpha=None: off."""

    def __init__(self, alpha: Any = "auto", gamma: float = 2.0, multiclass: str = "softmax",
                 ignore_index: Optional[int] = None, mode: Optional[str] = None, reduction: str = "mean"):
        super().__init__(mode, ignore_index, reduction)
        self.gamma = _number(gamma, self.name, "gamma")
        check(multiclass in ("softmax", "sigmoid"), self.name, f"multiclass={multiclass!r}; use softmax or sigmoid")
        self.multiclass = multiclass
        self.auto_alpha = alpha == "auto"
        a = None if self.auto_alpha else _vector(alpha, self.name, "alpha")
        check(a is None or bool(((a >= 0) & (a <= 1)).all()), self.name, f"alpha={alpha!r} must lie in [0, 1]")
        self.register_buffer("alpha", a, persistent=False)

    def extra_repr(self) -> str:
        return super().extra_repr().replace("alpha=None", "alpha='auto'" if self.auto_alpha else "alpha=None")

    def compute(self, x: Tensor, t: LF.Targets) -> Tensor:
        if t.mode == "multiclass" and self.multiclass == "softmax":
            check(self.alpha is None or self.alpha.ndim == 1, self.name, "a single alpha has no meaning for "
                  "softmax focal (no negatives); give alpha=[one per class], alpha=None or multiclass=sigmoid")
            return LF.softmax_focal_loss(x, t, self.alpha, self.gamma, self.reduction)
        alpha = 0.25 if self.auto_alpha else self.alpha
        return LF.sigmoid_focal_loss(x, t, alpha, self.gamma, self.reduction)


class _Overlap(Loss):
    kind = "dice"

    def __init__(self, smooth: float = 1.0, eps: float = 1e-7, per_image: bool = False,
                 classes: Optional[Sequence[int]] = None, weight: Any = None, from_logits: bool = True,
                 ignore_index: Optional[int] = None, mode: Optional[str] = None, reduction: str = "mean"):
        super().__init__(mode, ignore_index, reduction)
        self.smooth, self.eps = _number(smooth, self.name, "smooth"), _number(eps, self.name, "eps")
        self.per_image, self.from_logits = bool(per_image), bool(from_logits)
        classes = [classes] if isinstance(classes, int) else classes
        check(classes is None or (len(classes) > 0 and all(isinstance(c, int) and c >= 0 for c in classes)), self.name,
              f"classes={classes!r} must be a list of class indices, e.g. classes=[1,2]")
        self.classes = None if classes is None else list(classes)
        self.register_buffer("weight", _vector(weight, self.name, "weight"), persistent=False)

    def compute(self, x: Tensor, t: LF.Targets) -> Tensor:
        check(self.classes is None or max(self.classes) < x.shape[1], self.name,
              f"classes={self.classes} but the logits have {x.shape[1]} classes")
        return LF.overlap_loss(x, t, self.kind, from_logits=self.from_logits, smooth=self.smooth, eps=self.eps,
                               per_image=self.per_image, classes=self.classes, weight=self.weight,
                               alpha=getattr(self, "alpha", 0.3), beta=getattr(self, "beta", 0.7),
                               gamma=getattr(self, "gamma", 1.0), reduction=self.reduction)


@_register("dice")
class DiceLoss(_Overlap):
    """Soft Dice loss 1 - (2TP + smooth) / (2TP + FP + FN + smooth), per class, from softmax
    (multiclass) or sigmoid probabilities, mean over ``classes`` (default all).

    Aggregation: per_image=False (default) sums TP/FP/FN over the whole batch (one score per
    class); per_image=True scores each image alone and averages.
    Empty ground truth, smooth > 0 (default 1): an empty mask scores smooth / (FP + smooth), so
    predicting nothing is perfect (loss 0) and false positives are penalised. Per image every empty
    image gets that score on its own; note it saturates (loss -> 1, gradient ~ smooth / FP^2) once
    FP >> smooth, so pair Dice with BCE (``dice_bce``) to keep pushing large false blobs down. In
    batch mode an empty image has no score of its own: its false positives join the batch FP sum,
    penalised at d loss / d FP = (2TP + smooth) / (2TP + FP + FN + smooth)^2, which shrinks as the
    other images of the batch hold more object (dilution).
    With smooth=0 an empty (image, class) scores 0 / max(FP, eps) = 0: loss 1, no gradient at all.
    """

    kind = "dice"


@_register("iou", aliases=("jaccard",))
class IoULoss(_Overlap):
    """Soft Jaccard loss 1 - (TP + smooth) / (TP + FP + FN + smooth); options and empty-mask
    behaviour as :class:`DiceLoss`."""

    kind = "iou"


@_register("tversky")
class TverskyLoss(_Overlap):
    """Tversky loss (1 - (TP + smooth) / (TP + alpha FP + beta FN + smooth))^gamma; beta > alpha
    weighs misses over false alarms; gamma != 1 is the focal Tversky loss. Else as :class:`DiceLoss`."""

    kind = "tversky"

    def __init__(self, alpha: float = 0.3, beta: float = 0.7, gamma: float = 1.0, smooth: float = 1.0,
                 eps: float = 1e-7, per_image: bool = False, classes: Optional[Sequence[int]] = None,
                 weight: Any = None, from_logits: bool = True, ignore_index: Optional[int] = None,
                 mode: Optional[str] = None, reduction: str = "mean"):
        super().__init__(smooth, eps, per_image, classes, weight, from_logits, ignore_index, mode, reduction)
        self.alpha, self.beta = _number(alpha, self.name, "alpha"), _number(beta, self.name, "beta")
        self.gamma = _number(gamma, self.name, "gamma")


@_register("dice_bce", aliases=("bce_dice",))
class DiceBCELoss(Loss):
    """dice_weight * Dice + bce_weight * BCE: Dice follows the overlap, BCE gives every pixel a
    gradient, so false positives on empty masks are always penalised. Multiclass: Dice on softmax,
    BCE one-vs-rest on the one-hot labels (``"dice+ce"`` is the softmax-only alternative)."""

    reductions = ("mean",)

    def __init__(self, dice_weight: float = 1.0, bce_weight: float = 1.0, smooth: float = 1.0, eps: float = 1e-7,
                 per_image: bool = False, classes: Optional[Sequence[int]] = None, pos_weight: Any = None,
                 ignore_index: Optional[int] = None, mode: Optional[str] = None, reduction: str = "mean"):
        super().__init__(mode, ignore_index, reduction)
        self.dice_weight = _number(dice_weight, self.name, "dice_weight")
        self.bce_weight = _number(bce_weight, self.name, "bce_weight")
        self.dice = DiceLoss(smooth, eps, per_image, classes, ignore_index=ignore_index, mode=mode)
        self.bce = BCELoss(pos_weight=pos_weight, ignore_index=ignore_index, mode=mode)

    def compute(self, x: Tensor, t: LF.Targets) -> Tensor:
        return self.dice_weight * self.dice.compute(x, t) + self.bce_weight * self.bce.compute(x, t)


@_register("qfl", aliases=("quality_focal",))
class QualityFocalLoss(Loss):
    """Quality Focal Loss: -|y - s|^beta ((1 - y) log(1 - s) + y log s), s = sigmoid(logit), soft
    targets y in [0, 1] (int class maps -> one-hot). Mean over elements."""

    def __init__(self, beta: float = 2.0, ignore_index: Optional[int] = None, mode: Optional[str] = None,
                 reduction: str = "mean"):
        super().__init__(mode, ignore_index, reduction)
        self.beta = _number(beta, self.name, "beta")

    def compute(self, x: Tensor, t: LF.Targets) -> Tensor:
        return LF.quality_focal_loss(x, t, self.beta, self.reduction)
