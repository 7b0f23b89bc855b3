"""Head and backbone: which parameters are which, freezing the backbone, train mode that respects it.

Every model the bundle builds names its head on itself: ``model.kernel_head`` is a dotted submodule
name (``"fc"``, ``"head.fc"``) or a tuple of them (a segmentation model's decoder and head). The
backbone is every other parameter. Freezing, unfreezing at an epoch and the per-group learning
rates all go through this one rule, whatever library built the model.
"""
from __future__ import annotations

from typing import List, Sequence

from torch import nn

__all__ = ["head_modules", "head_parameters", "backbone_parameters", "set_backbone_frozen", "train_mode"]


def head_modules(model: nn.Module) -> List[nn.Module]:
    """The submodules named by ``model.kernel_head`` (a dotted name or a tuple of them)."""
    names: Sequence[str] = (model.kernel_head,) if isinstance(model.kernel_head, str) else model.kernel_head
    return [model.get_submodule(n) for n in names]


def head_parameters(model: nn.Module) -> List[nn.Parameter]:
    """The head's parameters (no duplicates)."""
    seen, out = set(), []
    for m in head_modules(model):
        for p in m.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                out.append(p)
    return out


def backbone_parameters(model: nn.Module) -> List[nn.Parameter]:
    """Every parameter outside the head."""
    head = {id(p) for p in head_parameters(model)}
    return [p for p in model.parameters() if id(p) not in head]


def set_backbone_frozen(model: nn.Module, frozen: bool) -> None:
    """Freeze (or unfreeze) every parameter outside the head."""
    for p in backbone_parameters(model):
        p.requires_grad_(not frozen)


def train_mode(model: nn.Module, backbone_frozen: bool) -> None:
    """``model.train()``, but a frozen backbone's norm layers stay in eval mode.

    Frozen weights with moving BatchNorm statistics would still change the backbone.
    """
    model.train()
    if backbone_frozen:
        head = {id(m) for h in head_modules(model) for m in h.modules()}
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and id(m) not in head:
                m.eval()
