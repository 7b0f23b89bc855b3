"""The training loop: one epoch of training, one pass of validation; AMP, accumulation, clipping.

``train_one_epoch`` and ``evaluate`` take a :class:`~kernel.engine.step.StepConfig` and return an
:class:`~kernel.engine.step.EpochResult`. They know nothing of what a label is: the task's step turns a batch
into (loss, outputs), and a *meter* from the task (``meter.update(outputs, targets)`` per batch,
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
from typing import Any, Callable, Dict, Optional, Protocol, Tuple

import torch
from torch import nn

from ..errors import ConfigError
from .amp import forward
from .checkpoint import unwrap_model
from .mixing import hard_targets
from .distributed import all_reduce_max, all_reduce_sum, world
from .step import EpochResult, StepConfig, batch_size, targets_of

__all__ = ["Meter", "TrainingDiverged", "train_one_epoch", "evaluate", "forward_backward", "optimizer_step"]

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


def optimizer_step(optimizer: torch.optim.Optimizer, params: list, scaler: Optional[torch.amp.GradScaler],
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


def forward_backward(model: nn.Module, batch: Any, optimizer: torch.optim.Optimizer, cfg: StepConfig, *,
                      group_size: int, first: bool, sync: bool) -> Tuple[Any, torch.Tensor]:
    """The task's step (forward, loss) and the backward pass of one batch -> (outputs, loss); DDP all-reduces
    only when ``sync``."""
    with (contextlib.nullcontext() if sync or not hasattr(model, "no_sync") else model.no_sync()):
        loss, outputs = forward(cfg.step, model, batch, cfg.loss_fn, cfg.device, cfg.amp_dtype)
        if first:
            # Free the last update's gradients here, after the forward pass: freeing them before
            # it lets activations take their memory and costs ~5% throughput on CPU (measured).
            optimizer.zero_grad(set_to_none=True)
        scaled = loss / group_size if group_size > 1 else loss
        (cfg.scaler.scale(scaled) if cfg.scaler is not None else scaled).backward()
    return outputs, loss


def train_one_epoch(model: nn.Module, loader: Any, optimizer: torch.optim.Optimizer, cfg: StepConfig, *,
                    meter: Optional[Meter] = None, start: Tuple[int, Optional[Dict[str, Any]]] = (0, None),
                    on_update: Optional[Callable[[int, Callable[[], Dict[str, Any]]], bool]] = None,
                    progress: Optional[Callable[[int, int, Callable[[], Dict[str, float]]], None]] = None
                    ) -> EpochResult:
    """One pass over ``loader`` (batches the task's step takes: ``(inputs (N,C,H,W), targets, ...)``).

    The caller puts the model in train mode (see ``kernel.models.train_mode``). Gradients of
    ``cfg.accum_steps`` batches are summed before each update; the last, shorter group of an epoch is
    weighted by its true size, so every update averages its batches. In a multi-process run (``model``
    in DDP) the gradients are all-reduced only at each group's last batch, and the returned metrics
    are the whole group's.

    A resumed epoch: ``start = (start_batch, partial)``: ``loader`` yields the batches after ``start_batch`` and
    ``partial`` (from a mid-epoch checkpoint's ``snapshot``) restores the sums so far. ``on_update(batches_done,
    snapshot)`` runs after every optimizer update; returning True ends the epoch there (``stopped``).

    ``cfg.mix`` (timm ``Mixup``, see :mod:`kernel.engine.mixing`) turns each batch and its labels into a
    mixed batch and soft targets (N, C) for the loss; the meter gets their dominant labels. ``cfg.ema``
    (:mod:`kernel.engine.ema`) takes a step after every optimizer update the GradScaler did not skip.
    """
    start_batch, part = start[0], start[1] or {}
    n_batches = start_batch + (len(loader) if cfg.max_batches is None else min(len(loader), cfg.max_batches))
    params = [p for g in optimizer.param_groups for p in g["params"]]
    device, mix = cfg.device, cfg.mix
    loss_sum = torch.tensor(float(part.get("loss_sum", 0.0)), dtype=torch.float64, device=device)
    seen, updates, skipped = int(part.get("seen", 0)), int(part.get("updates", 0)), int(part.get("skipped", 0))
    if meter is not None and part.get("meter") is not None:
        meter.load_state(part["meter"])
    bad_streak = torch.zeros((), dtype=torch.long, device=device)  # consecutive non-finite losses, on the device
    skip_streak, stopped, data_time, i = 0, False, 0.0, start_batch - 1
    snapshot = lambda: {"loss_sum": float(loss_sum), "seen": seen, "updates": updates, "skipped": skipped,  # noqa
                        "meter": {k: v.detach().cpu() for k, v in meter.state().items()} if meter else None}
    begin = tick = time.perf_counter()
    for i, batch in enumerate(loader, start=start_batch):
        data_time += time.perf_counter() - tick
        if i >= n_batches:
            break
        if cfg.move is not None:
            batch = cfg.move(batch, device, cfg.channels_last)
        if mix is not None:
            batch = (*mix(batch[0], batch[1]), *batch[2:])
        n = batch_size(batch)
        group_start = (i // cfg.accum_steps) * cfg.accum_steps
        group_size = min(cfg.accum_steps, n_batches - group_start)
        last_of_group = i + 1 == group_start + group_size
        outputs, loss = forward_backward(model, batch, optimizer, cfg, group_size=group_size,
                                          first=i == group_start, sync=last_of_group)
        loss_sum += loss.detach().double() * n
        bad_streak = torch.where(torch.isfinite(loss.detach()), 0, bad_streak + 1)
        if meter is not None:
            targets = targets_of(batch)
            meter.update(outputs.detach(), targets if mix is None else hard_targets(targets, mix.multi_label))
        seen += n
        if last_of_group:
            if optimizer_step(optimizer, params, cfg.scaler, cfg.clip_grad):
                updates, skip_streak = updates + 1, 0
                if cfg.ema is not None:
                    cfg.ema.update(unwrap_model(model))
                if cfg.schedule is not None:
                    cfg.schedule.step_update()
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
    elapsed = time.perf_counter() - begin
    loss_mean, total, metrics = _reduce(loss_sum, seen, meter)
    if not math.isfinite(loss_mean):
        log.warning("training loss is %s: lower --lr, enable --clip-grad, or check the data", loss_mean)
    return EpochResult(loss=loss_mean, images=seen, images_total=total, img_per_s=seen / max(elapsed, 1e-9),
                       time=elapsed, metrics=metrics, updates=updates, skipped_steps=skipped, data_time=data_time,
                       stopped=stopped, batches_done=i + 1 if stopped else n_batches)


def _reduce(loss_sum: torch.Tensor, seen: int, meter: Optional[Meter]) -> Tuple[float, int, Dict[str, Any]]:
    """(loss mean, images, the meter's metrics) over every process (sums all-reduced; no-op in one process)."""
    totals = all_reduce_sum(torch.stack([loss_sum.double(), torch.tensor(float(seen), dtype=torch.float64,
                                                                         device=loss_sum.device)]))
    metrics: Dict[str, Any] = {}
    if meter is not None:
        if world().size > 1:
            meter.sync()
        metrics = meter.compute()
    return float(totals[0] / max(float(totals[1]), 1.0)), int(totals[1]), metrics


@torch.no_grad()
def evaluate(model: nn.Module, loader: Any, cfg: StepConfig, *, meter: Optional[Meter] = None) -> EpochResult:
    """Loss and img/s on ``loader`` in eval mode, plus the meter's metrics (computed over the whole pass)."""
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=cfg.device)
    seen = 0
    begin = time.perf_counter()
    for i, batch in enumerate(loader):
        if cfg.max_batches is not None and i >= cfg.max_batches:
            break
        if cfg.move is not None:
            batch = cfg.move(batch, cfg.device, cfg.channels_last)
        loss, outputs = forward(cfg.step, model, batch, cfg.loss_fn, cfg.device, cfg.amp_dtype)
        n = batch_size(batch)
        loss_sum += loss.detach().double() * n
        if meter is not None:
            meter.update(outputs.float(), targets_of(batch))
        seen += n
    elapsed = time.perf_counter() - begin
    loss_mean, total, metrics = _reduce(loss_sum, seen, meter)
    return EpochResult(loss=loss_mean, images=seen, images_total=total, img_per_s=seen / max(elapsed, 1e-9),
                       time=elapsed, metrics=metrics, batches_done=i + 1 if seen else 0)
