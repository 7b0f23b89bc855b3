"""An exponential moving average of the weights (``--ema DECAY``), kept by timm's ``ModelEmaV3``.

After every optimizer update ``ema = decay * ema + (1 - decay) * weights`` for every floating-point
entry of the state dict (parameters and BatchNorm statistics); the average starts as a copy of
the weights when it is created. The decay is constant (timm's warmup is off), so three updates
give exactly the average a hand computation does. The EMA copy lives on the model's device, is
always in eval mode, and is what validation, ``best.pt``'s prediction weights and the exported
``model.safetensors`` use when ``--ema`` is on.
"""
from __future__ import annotations

from typing import Any

from torch import nn

__all__ = ["create_ema"]


def create_ema(model: nn.Module, decay: float) -> Any:
    """timm ``ModelEmaV3`` of ``model`` (already on its device and memory format); ``.module`` is the average,
    ``.update(model)`` one step of it."""
    from timm.utils.model_ema import ModelEmaV3

    return ModelEmaV3(model, decay=decay, use_warmup=False)
