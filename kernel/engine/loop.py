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

import contextlib
import logging
import math
import time
from typing import Any, Callable, Dict, Optional, Protocol

import torch
from torch import nn

from ..errors import ConfigError
from .amp import autocast
from .checkpoint import unwrap_model
from .mixing import hard_targets
from .distributed import all_reduce_max, all_reduce_sum, world

__all__ = ["Meter", "TrainingDiverged", "train_one_epoch", "evaluate"]

log = logging.getLogger(__name__)
MAX_NONFINITE = 3     # consecutive non-finite losses that stop a run
MAX_SKIPPED = 25      # consecutive updates skipped by the GradScaler (its scale has then fallen ~2**25)
CHECK_EVERY = 4       # batches between host-side checks of the loss (each check waits for the device)


class TrainingDiverged(ConfigError):
    """The loss stayed non-finite (or the GradScaler kept skipping): training cannot recover by itself."""


class Meter(Protocol):
    """What the loop needs from a task's metrics: accumulate per batch (no host sync), then compute.

    ``state``/``load_state``: the accumulated sums (a mid-epoch checkpoint holds them); ``sync``: combine
    every process's sums (and kept outputs) before ``compute`` in a multi-process run.
    """

    def update(self, logits: torch.Tensor, targets: Any) -> None: ...

    def state(self) -> Dict[str, torch.Tensor]: ...

    def load_state(self, state: Dict[str, torch.Tensor]) -> None: ...

    def sync(self) -> None: ...

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


def _check_divergence(bad_streak: torch.Tensor, skip_streak: int, step: int, loss: torch.Tensor) -> None:
    """Stop a run whose loss stays non-finite, before a checkpoint of broken weights is ever saved.

    The processes of a run decide together (the longest streak): a NaN on one reaches the others an update
    later, through the gradients."""
    bad_streak = int(all_reduce_max(float(bad_streak)))
    fix = "lower --lr, add --clip-grad 1.0, or train in fp32 (without --amp); check the data and the loss"
    if bad_streak >= MAX_NONFINITE:
        raise TrainingDiverged(f"step {step}: the loss is {float(loss.detach())} for {bad_streak} steps in a row; "
                               f"{fix}. The last good checkpoint (last.pt) is kept")
    if skip_streak >= MAX_SKIPPED:
        raise TrainingDiverged(f"step {step}: the GradScaler skipped {skip_streak} updates in a row (inf/NaN "
                               f"gradients); {fix}. The last good checkpoint (last.pt) is kept")


def _forward_backward(model: nn.Module, images: torch.Tensor, targets: Any, loss_fn: Callable,
                      optimizer: torch.optim.Optimizer, *, device: torch.device, amp_dtype: Optional[torch.dtype],
                      scaler: Optional[torch.amp.GradScaler], group_size: int, first: bool, sync: bool) -> Any:
    """Forward, loss, backward of one batch -> (logits, loss); DDP all-reduces only when ``sync``."""
    with (contextlib.nullcontext() if sync or not hasattr(model, "no_sync") else model.no_sync()):
        with autocast(device, amp_dtype):
            logits = model(images)
            loss = loss_fn(logits, targets)
        if not torch.is_tensor(loss) or loss.ndim != 0:
            raise TypeError(f"the loss must return a scalar tensor, got {type(loss).__name__} "
                            f"{tuple(getattr(loss, 'shape', ()))}")
        if first:
            # Free the last update's gradients here, after the forward pass: freeing them before
            # it lets activations take their memory and costs ~5% throughput on CPU (measured).
            optimizer.zero_grad(set_to_none=True)
        scaled = loss / group_size if group_size > 1 else loss
        (scaler.scale(scaled) if scaler is not None else scaled).backward()
    return logits, loss


def train_one_epoch(model: nn.Module, loader: Any, optimizer: torch.optim.Optimizer, loss_fn: Callable, *,
                    device: torch.device, meter: Optional[Meter] = None, amp_dtype: Optional[torch.dtype] = None,
                    scaler: Optional[torch.amp.GradScaler] = None, accum_steps: int = 1, clip_grad: float = 0.0,
                    schedule: Any = None, channels_last: bool = False, max_batches: Optional[int] = None,
                    progress: Optional[Callable[[int, int, Callable[[], Dict[str, float]]], None]] = None,
                    start_batch: int = 0, partial: Optional[Dict[str, Any]] = None,
                    on_update: Optional[Callable[[int, Callable[[], Dict[str, Any]]], bool]] = None,
                    mix: Optional[Any] = None, ema: Optional[Any] = None) -> Dict[str, Any]:
    """One pass over ``loader`` (batches of (images (N,C,H,W), targets)) -> loss, img_per_s, ... + meter's.

    The caller puts the model in train mode (see ``kernel.models.train_mode``). Gradients of
    ``accum_steps`` batches are summed before each update; the last, shorter group of an epoch is
    weighted by its true size, so every update averages its batches. In a multi-process run (``model``
    in DDP) the gradients are all-reduced only at each group's last batch, and the returned metrics
    are the whole group's.

    A resumed epoch: ``loader`` yields the batches after ``start_batch`` and ``partial`` (from a
    mid-epoch checkpoint's ``snapshot``) restores the sums so far. ``on_update(batches_done, snapshot)``
    runs after every optimizer update; returning True ends the epoch there (``stopped`` in the result).

    ``mix`` (timm ``Mixup``, see :mod:`kernel.engine.mixing`) turns each batch and its labels into a
    mixed batch and soft targets (N, C) for the loss; the meter gets their dominant labels. ``ema``
    (:mod:`kernel.engine.ema`) takes a step after every optimizer update the GradScaler did not skip.
    """
    n_batches = start_batch + (len(loader) if max_batches is None else min(len(loader), max_batches))
    params = [p for g in optimizer.param_groups for p in g["params"]]
    part = partial or {}
    loss_sum = torch.tensor(float(part.get("loss_sum", 0.0)), dtype=torch.float64, device=device)
    seen, updates, skipped = int(part.get("seen", 0)), int(part.get("updates", 0)), int(part.get("skipped", 0))
    if meter is not None and part.get("meter") is not None:
        meter.load_state(part["meter"])
    bad_streak = torch.zeros((), dtype=torch.long, device=device)  # consecutive non-finite losses, on the device
    skip_streak, stopped, data_time, i = 0, False, 0.0, start_batch - 1
    snapshot = lambda: {"loss_sum": float(loss_sum), "seen": seen, "updates": updates, "skipped": skipped,  # noqa
                        "meter": {k: v.detach().cpu() for k, v in meter.state().items()} if meter else None}
    start = tick = time.perf_counter()
    for i, (images, targets) in enumerate(loader, start=start_batch):
        data_time += time.perf_counter() - tick
        if i >= n_batches:
            break
        images, targets = _to(images, device, channels_last), _to(targets, device)
        if mix is not None:
            images, targets = mix(images, targets)
        group_start = (i // accum_steps) * accum_steps
        group_size = min(accum_steps, n_batches - group_start)
        last_of_group = i + 1 == group_start + group_size
        logits, loss = _forward_backward(model, images, targets, loss_fn, optimizer, device=device,
                                         amp_dtype=amp_dtype, scaler=scaler, group_size=group_size,
                                         first=i == group_start, sync=last_of_group)
        loss_sum += loss.detach().double() * images.shape[0]
        bad_streak = torch.where(torch.isfinite(loss.detach()), 0, bad_streak + 1)
        if meter is not None:
            meter.update(logits.detach(), targets if mix is None else hard_targets(targets, mix.multi_label))
        seen += images.shape[0]
        if last_of_group:
            if _optimizer_step(optimizer, params, scaler, clip_grad):
                updates, skip_streak = updates + 1, 0
                if ema is not None:
                    ema.update(unwrap_model(model))
                if schedule is not None:
                    schedule.step_update()
            else:
                skipped, skip_streak = skipped + 1, skip_streak + 1
        if (i + 1) % CHECK_EVERY == 0 or i + 1 == n_batches:
            _check_divergence(bad_streak, skip_streak, i + 1, loss)
        if progress is not None:
            progress(i + 1, n_batches, lambda: {"loss": (loss_sum / max(seen, 1)).item()})
        if last_of_group and on_update is not None and i + 1 < n_batches and on_update(i + 1, snapshot):
            stopped = True
            break
        tick = time.perf_counter()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - start
    out = {"images": seen, "updates": updates, "skipped_steps": skipped, "img_per_s": seen / max(elapsed, 1e-9),
           "time": elapsed, "data_time": data_time, "stopped": stopped, "batches_done": i + 1 if stopped else n_batches}
    out.update(_reduce(loss_sum, seen, meter))
    if not math.isfinite(out["loss"]):
        log.warning("training loss is %s: lower --lr, enable --clip-grad, or check the data", out["loss"])
    return out


def _reduce(loss_sum: torch.Tensor, seen: int, meter: Optional[Meter]) -> Dict[str, Any]:
    """The loss mean and the meter's metrics over every process (sums all-reduced; no-op in one process)."""
    totals = all_reduce_sum(torch.stack([loss_sum.double(), torch.tensor(float(seen), dtype=torch.float64,
                                                                         device=loss_sum.device)]))
    out: Dict[str, Any] = {"loss": float(totals[0] / max(float(totals[1]), 1.0)), "images_total": int(totals[1])}
    if meter is not None:
        if world().size > 1:
            meter.sync()
        out.update(meter.compute())
    return out


@torch.no_grad()
def evaluate(model: nn.Module, loader: Any, loss_fn: Callable, *, device: torch.device, meter: Optional[Meter] = None,
             amp_dtype: Optional[torch.dtype] = None, channels_last: bool = False,
             max_batches: Optional[int] = None) -> Dict[str, Any]:
    """Loss and img/s on ``loader`` in eval mode, plus the meter's metrics (computed over the whole pass)."""
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    seen = 0
    start = time.perf_counter()
    for i, (images, targets) in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        images, targets = _to(images, device, channels_last), _to(targets, device)
        with autocast(device, amp_dtype):
            logits = model(images)
            loss = loss_fn(logits, targets)
        loss_sum += loss.detach().double() * images.shape[0]
        if meter is not None:
            meter.update(logits.float(), targets)
        seen += images.shape[0]
    elapsed = time.perf_counter() - start
    return {"images": seen, "img_per_s": seen / max(elapsed, 1e-9), **_reduce(loss_sum, seen, meter)}
