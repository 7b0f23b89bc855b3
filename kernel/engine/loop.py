"""The training loop: one epoch of training, one pass of validation; AMP, accumulation, clipping.

``train_one_epoch`` and ``evaluate`` take explicit arguments and return a metrics dict. They know
nothing of what a label is: a *meter* from the task (``meter.update(logits, targets)`` per batch,
``meter.compute() -> dict`` at the end) turns outputs into metrics (accuracy for ``classify``, IoU
for ``segment``). Mixed precision goes through :mod:`kernel.engine.amp`; a ``GradScaler`` (fp16
only) is unscaled before clipping. A step the scaler skips (inf/NaN gradients) does not advance a
per-update LR schedule, so PyTorch's "scheduler before optimizer" warning never fires and the
schedule stays aligned with real updates.
"""
from __future__ import annotations

import logging
import math
import time
from typing import Any, Callable, Dict, Optional, Protocol

import torch
from torch import nn

from ..registry import ConfigError
from .amp import autocast

__all__ = ["Meter", "TrainingDiverged", "train_one_epoch", "evaluate"]

log = logging.getLogger(__name__)
MAX_NONFINITE = 3     # consecutive non-finite losses that stop a run
MAX_SKIPPED = 25      # consecutive updates skipped by the GradScaler (its scale has then fallen ~2**25)
CHECK_EVERY = 4       # batches between host-side checks of the loss (each check waits for the device)


class TrainingDiverged(ConfigError):
    """The loss stayed non-finite (or the GradScaler kept skipping): training cannot recover by itself."""


class Meter(Protocol):
    """What the loop needs from a task's metrics: accumulate per batch (no host sync), then compute."""

    def update(self, logits: torch.Tensor, targets: Any) -> None: ...

    def compute(self) -> Dict[str, Any]: ...


def _to(batch: Any, device: torch.device, channels_last: bool = False) -> Any:
    nb = device.type == "cuda"  # pinned host memory -> async copy
    if channels_last and batch.ndim == 4:
        return batch.to(device, non_blocking=nb, memory_format=torch.channels_last)
    return batch.to(device, non_blocking=nb)


def _optimizer_step(optimizer: torch.optim.Optimizer, params: list, scaler: Optional[torch.amp.GradScaler],
                    clip_grad: float) -> bool:
    """Clip (true gradients) and step; returns False when the GradScaler skipped the step (inf/NaN)."""
    if scaler is None:
        if clip_grad > 0:
            torch.nn.utils.clip_grad_norm_(params, clip_grad)
        optimizer.step()
        return True
    if clip_grad > 0:
        scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
        torch.nn.utils.clip_grad_norm_(params, clip_grad)
    scale_before = scaler.get_scale()
    scaler.step(optimizer)
    scaler.update()
    return scaler.get_scale() >= scale_before  # the scale drops only on a skipped step


def _check_divergence(bad_streak: int, skip_streak: int, step: int, loss: torch.Tensor) -> None:
    """Stop a run whose loss stays non-finite, before a checkpoint of broken weights is ever saved."""
    fix = "lower --lr, add --clip-grad 1.0, or train in fp32 (without --amp); check the data and the loss"
    if bad_streak >= MAX_NONFINITE:
        raise TrainingDiverged(f"step {step}: the loss is {float(loss.detach())} for {bad_streak} steps in a row; "
                               f"{fix}. The last good checkpoint (last.pt) is kept")
    if skip_streak >= MAX_SKIPPED:
        raise TrainingDiverged(f"step {step}: the GradScaler skipped {skip_streak} updates in a row (inf/NaN "
                               f"gradients); {fix}. The last good checkpoint (last.pt) is kept")


def train_one_epoch(model: nn.Module, loader: Any, optimizer: torch.optim.Optimizer, loss_fn: Callable, *,
                    device: torch.device, meter: Optional[Meter] = None, amp_dtype: Optional[torch.dtype] = None,
                    scaler: Optional[torch.amp.GradScaler] = None, accum_steps: int = 1, clip_grad: float = 0.0,
                    schedule: Any = None, channels_last: bool = False, max_batches: Optional[int] = None,
                    progress: Optional[Callable[[int, int, Callable[[], Dict[str, float]]], None]] = None,
                    ) -> Dict[str, Any]:
    """One pass over ``loader`` (batches of (images (N,C,H,W), targets)) -> loss, img_per_s, ... + meter's.

    The caller puts the model in train mode (see ``kernel.models.train_mode``). Gradients of
    ``accum_steps`` batches are summed before each update; the last, shorter group of an epoch is
    weighted by its true size, so every update averages its batches.
    """
    n_batches = len(loader) if max_batches is None else min(len(loader), max_batches)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    loss_sum = torch.zeros((), device=device)
    bad_streak = torch.zeros((), dtype=torch.long, device=device)  # consecutive non-finite losses, on the device
    seen, updates, skipped, skip_streak = 0, 0, 0, 0
    start = time.perf_counter()
    for i, (images, targets) in enumerate(loader):
        if i >= n_batches:
            break
        images, targets = _to(images, device, channels_last), _to(targets, device)
        group_start = (i // accum_steps) * accum_steps
        group_size = min(accum_steps, n_batches - group_start)
        with autocast(device, amp_dtype):
            logits = model(images)
            loss = loss_fn(logits, targets)
        if not torch.is_tensor(loss) or loss.ndim != 0:
            raise TypeError(f"the loss must return a scalar tensor, got {type(loss).__name__} "
                            f"{tuple(getattr(loss, 'shape', ()))}")
        if i == group_start:
            # Free the last update's gradients here, after the forward pass: freeing them before
            # it lets activations take their memory and costs ~5% throughput on CPU (measured).
            optimizer.zero_grad(set_to_none=True)
        scaled = loss / group_size if group_size > 1 else loss
        (scaler.scale(scaled) if scaler is not None else scaled).backward()
        loss_sum += loss.detach().float() * images.shape[0]
        bad_streak = torch.where(torch.isfinite(loss.detach()), 0, bad_streak + 1)
        if meter is not None:
            meter.update(logits.detach(), targets)
        seen += images.shape[0]
        if i + 1 == group_start + group_size:  # end of an accumulation group: update
            if _optimizer_step(optimizer, params, scaler, clip_grad):
                updates, skip_streak = updates + 1, 0
                if schedule is not None:
                    schedule.step_update()
            else:
                skipped, skip_streak = skipped + 1, skip_streak + 1
        if (i + 1) % CHECK_EVERY == 0 or i + 1 == n_batches:
            _check_divergence(int(bad_streak), skip_streak, i + 1, loss)
        if progress is not None:
            progress(i + 1, n_batches, lambda: {"loss": (loss_sum / max(seen, 1)).item()})
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - start
    loss_avg = (loss_sum / max(seen, 1)).item()
    if not math.isfinite(loss_avg):
        log.warning("training loss is %s: lower --lr, enable --clip-grad, or check the data", loss_avg)
    return {"loss": loss_avg, "images": seen, "updates": updates, "skipped_steps": skipped,
            "img_per_s": seen / max(elapsed, 1e-9), "time": elapsed, **(meter.compute() if meter else {})}


@torch.no_grad()
def evaluate(model: nn.Module, loader: Any, loss_fn: Callable, *, device: torch.device, meter: Optional[Meter] = None,
             amp_dtype: Optional[torch.dtype] = None, channels_last: bool = False,
             max_batches: Optional[int] = None) -> Dict[str, Any]:
    """Loss and img/s on ``loader`` in eval mode, plus the meter's metrics (computed over the whole pass)."""
    model.eval()
    loss_sum = torch.zeros((), device=device)
    seen = 0
    start = time.perf_counter()
    for i, (images, targets) in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        images, targets = _to(images, device, channels_last), _to(targets, device)
        with autocast(device, amp_dtype):
            logits = model(images)
            loss = loss_fn(logits, targets)
        loss_sum += loss.detach().float() * images.shape[0]
        if meter is not None:
            meter.update(logits.float(), targets)
        seen += images.shape[0]
    elapsed = time.perf_counter() - start
    return {"loss": (loss_sum / max(seen, 1)).item(), "images": seen, "img_per_s": seen / max(elapsed, 1e-9),
            **(meter.compute() if meter else {})}
