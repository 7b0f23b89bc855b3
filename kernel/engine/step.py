"""One step of a model on one batch, as a task defines it, and how batches reach the device.

A *step* is ``step(model, batch, loss_fn) -> (loss or None, outputs)``: the task's forward pass and loss
(:meth:`kernel.tasks.Task.step`; :func:`supervised_step` is the default, ``batch = (inputs, targets)``). Every
forward pass of the bundle runs a step through :func:`kernel.engine.amp.forward`, under the run's autocast.
:func:`to_device` moves any nested batch (tensors in tuples, lists and dicts), as Lightning Fabric does.
:class:`StepConfig` holds what the epoch loops need besides the model, the data and the optimizer.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional, Tuple

import torch
from torch import nn

__all__ = ["Step", "StepConfig", "EpochResult", "supervised_step", "to_device", "batch_size", "targets_of"]

Step = Callable[[nn.Module, Any, Optional[Callable]], Tuple[Optional[torch.Tensor], Any]]


def supervised_step(model: nn.Module, batch: Any, loss_fn: Optional[Callable]) -> Tuple[Optional[torch.Tensor], Any]:
    """The default step: ``batch = (inputs (N, ...), targets)`` -> (``loss_fn(outputs, targets)`` or None without
    a loss, ``model(inputs)``)."""
    outputs = model(batch[0])
    return (None if loss_fn is None else loss_fn(outputs, batch[1])), outputs


def to_device(batch: Any, device: torch.device, channels_last: bool = False) -> Any:
    """``batch`` with every tensor on ``device`` (asynchronously from pinned memory on CUDA), in the same nesting
    of tuples, lists and dicts; 4-D floating or uint8 image tensors in channels-last memory when asked."""
    if torch.is_tensor(batch):
        nb = device.type == "cuda"
        if channels_last and batch.ndim == 4 and (batch.is_floating_point() or batch.dtype == torch.uint8):
            return batch.to(device, non_blocking=nb, memory_format=torch.channels_last)
        return batch.to(device, non_blocking=nb)
    if isinstance(batch, dict):
        return {k: to_device(v, device, channels_last) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        moved = [to_device(v, device, channels_last and i == 0) for i, v in enumerate(batch)]  # inputs come first
        return type(batch)(moved) if not hasattr(batch, "_fields") else type(batch)(*moved)
    return batch


def batch_size(batch: Any) -> int:
    """The number of samples of a batch: the first dimension of its first tensor."""
    first = batch
    while not torch.is_tensor(first):
        first = next(iter(first.values())) if isinstance(first, dict) else first[0]
    return int(first.shape[0])


def targets_of(batch: Any) -> Any:
    """The targets of a ``(inputs, targets, ...)`` batch (what the meter is given)."""
    return batch[1]


@dataclass
class StepConfig:
    """How the epoch loops run a step: the loss, the device and precision, accumulation, clipping, the task's
    step and device move (None when the loader yields batches finished on the device, a run's
    :class:`~kernel.data.DeviceLoader`), and the per-update companions (schedule, EMA, Mixup)."""
    loss_fn: Callable
    device: torch.device
    amp_dtype: Optional[torch.dtype] = None
    scaler: Optional[torch.amp.GradScaler] = None
    accum_steps: int = 1
    clip_grad: float = 0.0
    channels_last: bool = False
    max_batches: Optional[int] = None
    step: Step = supervised_step
    move: Optional[Callable[[Any, torch.device, bool], Any]] = to_device  # None: batches come on the device
    schedule: Any = None
    mix: Any = None
    ema: Any = None


@dataclass
class EpochResult:
    """What one pass of :func:`kernel.engine.train_one_epoch` or :func:`~kernel.engine.evaluate` measured: the loss
    mean and the meter's ``metrics`` over every process, counts, speed, and where a stopped epoch stopped."""
    loss: float
    images: int
    images_total: int
    img_per_s: float
    time: float
    metrics: Dict[str, Any] = field(default_factory=dict)
    updates: int = 0
    skipped_steps: int = 0
    data_time: float = 0.0
    stopped: bool = False
    batches_done: int = 0

    def summary(self) -> Dict[str, Any]:
        """The loss, counts and speed with the meter's metrics, as one dict: what a task's row and pictures read."""
        return {"loss": self.loss, "images": self.images, "images_total": self.images_total,
                "img_per_s": self.img_per_s, **self.metrics}
