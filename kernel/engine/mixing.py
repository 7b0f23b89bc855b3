"""Mixup, CutMix and label smoothing for classification batches, through timm's ``Mixup``.

``--mixup ALPHA``/``--cutmix ALPHA`` draw a mixing ratio per batch from Beta(alpha, alpha)
(``--mixup-prob``: how often a batch is mixed; ``--mixup-switch-prob``: CutMix instead of Mixup
when both are on) and turn the labels into soft targets (N, C), smoothed by ``--label-smoothing``.
timm draws with numpy's global RNG, which checkpoints hold, so a resumed run mixes the same way.
The loss then receives probabilities, not class indices: :func:`check_soft_targets` refuses a
loss that cannot take them, before training starts.
"""
from __future__ import annotations

from typing import Any, Optional

import torch

from ..errors import ConfigError

__all__ = ["create_mixup", "check_soft_targets", "hard_targets"]


def create_mixup(mixup: float, cutmix: float, prob: float, switch_prob: float, label_smoothing: float,
                 num_classes: int, multilabel: bool) -> Optional[Any]:
    """timm ``Mixup`` for these options, or None when none is on. With only label smoothing nothing is mixed
    (timm's ``mixup_enabled`` off) but targets are still smoothed one-hot vectors."""
    if not (mixup > 0 or cutmix > 0 or label_smoothing > 0):
        return None
    from timm.data import Mixup

    mix = Mixup(mixup_alpha=mixup, cutmix_alpha=cutmix, prob=prob, switch_prob=switch_prob, mode="batch",
                label_smoothing=label_smoothing, num_classes=num_classes, multi_label=multilabel)
    mix.mixup_enabled = mixup > 0 or cutmix > 0
    return mix


def check_soft_targets(loss_fn: Any, loss_name: str, num_classes: int) -> None:
    """Refuse, in one line, a loss that cannot take soft targets (N, C) of probabilities."""
    logits = torch.zeros(2, num_classes)
    soft = torch.full((2, num_classes), 1.0 / num_classes)
    try:
        out = loss_fn(logits, soft)
        ok = torch.is_tensor(out) and out.ndim == 0 and bool(torch.isfinite(out))
    except Exception:  # the loss's own check of its targets: it takes class indices only
        ok = False
    if not ok:
        raise ConfigError(f"--loss {loss_name}: takes class labels only, not the soft targets that --mixup, "
                          "--cutmix and --label-smoothing make; use ce (or auto), bce or kl")


def hard_targets(soft: torch.Tensor, multilabel: bool) -> torch.Tensor:
    """The dominant labels of soft targets (N, C), for accuracy meters: argmax (N,), or multi-hot p > 0.5 (N, C)."""
    return (soft > 0.5).float() if multilabel else soft.argmax(dim=1)
