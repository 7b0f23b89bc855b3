"""Optimizers by name, and the parameter groups they get: head/backbone x decay/no-decay.

The groups carry an ``lr_mult`` (the backbone's ``--backbone-lr-mult``); :func:`create_optimizer`
sets each group's LR from it, and the LR schedules scale from there.
"""
from __future__ import annotations

from typing import Any, Dict, List, Tuple

import torch
from torch import nn

from ..models.freeze import head_parameters
from ..registry import Registry

__all__ = ["param_groups", "OPTIMIZERS", "create_optimizer"]


def param_groups(model: nn.Module, weight_decay: float, backbone_lr_mult: float = 1.0) -> List[Dict[str, Any]]:
    """Head and backbone groups, each split into decay / no-decay (norms, biases: ndim <= 1).

    Frozen parameters are included: they have no gradient until unfrozen, so the optimizer
    skips them, and the groups stay the same across a resume.
    """
    head = {id(p) for p in head_parameters(model)}
    groups: Dict[Tuple[str, bool], List[nn.Parameter]] = {}
    for _, p in model.named_parameters():
        key = ("head" if id(p) in head else "backbone", p.ndim > 1)
        groups.setdefault(key, []).append(p)
    out = []
    for (part, decay), params in sorted(groups.items()):
        out.append({"params": params, "weight_decay": weight_decay if decay else 0.0,
                    "lr_mult": backbone_lr_mult if part == "backbone" else 1.0,
                    "name": f"{part}_{'decay' if decay else 'no_decay'}"})
    return out


OPTIMIZERS: Registry = Registry("optimizer")
OPTIMIZERS.register("sgd", lambda g, lr, m: torch.optim.SGD(g, lr=lr, momentum=m, nesterov=m > 0))
OPTIMIZERS.register("adam", lambda g, lr, m: torch.optim.Adam(g, lr=lr))
OPTIMIZERS.register("adamw", lambda g, lr, m: torch.optim.AdamW(g, lr=lr))
OPTIMIZERS.register("rmsprop", lambda g, lr, m: torch.optim.RMSprop(g, lr=lr, momentum=m))


def create_optimizer(name: str, groups: List[Dict[str, Any]], lr: float, momentum: float) -> torch.optim.Optimizer:
    """Build the optimizer; each group's LR is ``lr * lr_mult`` (schedulers scale it from there)."""
    groups = [dict(g, lr=lr * g["lr_mult"]) for g in groups]
    return OPTIMIZERS.get(name)(groups, lr, momentum)
