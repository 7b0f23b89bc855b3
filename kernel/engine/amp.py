"""Devices and mixed precision, in one place: the device, the autocast dtype, the GradScaler, autocast.

Every forward pass of the bundle (training, validation, the LR finder, out-of-fold and test predictions)
is a step run by :func:`forward`, the one place that opens :func:`autocast`, and every choice of dtype goes
through :func:`resolve_amp_dtype`, so the rules below hold everywhere.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Optional, Tuple

import torch

from ..errors import ConfigError

__all__ = ["resolve_device", "resolve_amp_dtype", "make_scaler", "autocast", "forward", "amp_name"]


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu."""
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA GPU is visible; use --device cpu (or enable a GPU)")
    return torch.device("cuda" if name in ("auto", "cuda") and torch.cuda.is_available() else "cpu")


def resolve_amp_dtype(device: torch.device, amp: bool, amp_dtype: str = "auto") -> Optional[torch.dtype]:
    """The autocast dtype, or None for full fp32.

    ``auto``: bf16 on CUDA compute capability >= 8.0 (Ampere+), fp16 on older GPUs such as
    Kaggle's T4 (``is_bf16_supported()`` says True there, but bf16 is emulated and slow),
    bf16 on CPU (CPU autocast has no fp16 speed-up).
    """
    if not amp:
        return None
    if amp_dtype == "fp16":
        return torch.float16
    if amp_dtype == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.get_device_capability(device) >= (8, 0) else torch.float16
    return torch.bfloat16


def make_scaler(device: torch.device, dtype: Optional[torch.dtype]) -> Optional[torch.amp.GradScaler]:
    """A GradScaler for fp16 only: bf16 has fp32's exponent range and needs no loss scaling."""
    return torch.amp.GradScaler(device.type) if dtype == torch.float16 else None


def autocast(device: torch.device, dtype: Optional[torch.dtype]) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def forward(step: Callable[[Any, Any, Optional[Callable]], Tuple[Optional[torch.Tensor], Any]], model: Any, batch: Any,
            loss_fn: Optional[Callable], device: torch.device,
            amp_dtype: Optional[torch.dtype]) -> Tuple[Optional[torch.Tensor], Any]:
    """``step(model, batch, loss_fn)`` (see :mod:`kernel.engine.step`) under the run's autocast -> (loss or None,
    outputs). A loss must be a scalar tensor."""
    with autocast(device, amp_dtype):
        loss, outputs = step(model, batch, loss_fn)
    if loss_fn is not None and (not torch.is_tensor(loss) or loss.ndim != 0):
        raise TypeError(f"the loss must return a scalar tensor, got {type(loss).__name__} "
                        f"{tuple(getattr(loss, 'shape', ()))}")
    return loss, outputs


def amp_name(dtype: Optional[torch.dtype]) -> str:
    """How logs and ``summary.json`` name a precision: ``fp32``, ``float16``, ``bfloat16``."""
    return "fp32" if dtype is None else str(dtype).replace("torch.", "")
