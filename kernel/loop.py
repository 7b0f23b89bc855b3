"""The training loop: AMP in one place, gradient accumulation, clipping, metrics.

``train_one_epoch`` and ``evaluate`` take explicit arguments and return a metrics dict.
Mixed precision uses ``torch.autocast(device_type, dtype)``; a ``GradScaler`` only for
fp16, unscaled before clipping. A step the scaler skips (inf/NaN gradients) does not
advance a per-update LR schedule, so PyTorch's "scheduler before optimizer" warning
never fires and the schedule stays aligned with real updates.
"""
from __future__ import annotations

import contextlib
import logging
import math
import time
from typing import Any, Callable, Dict, Optional

import torch
from torch import nn

__all__ = ["resolve_device", "resolve_amp_dtype", "make_scaler", "autocast", "accuracy", "train_one_epoch", "evaluate"]

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu."""
    from .registry import ConfigError

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


def accuracy(logits: torch.Tensor, target: torch.Tensor, k: int = 1) -> torch.Tensor:
    """Count of correct top-k predictions (a 0-d tensor, no host sync).

    logits (N, C); target (N,) class indices, or (N, C) multi-hot, for which a sample is
    correct when its thresholded prediction (p > 0.5) equals the whole label set.
    """
    if target.ndim == 2:
        return ((logits > 0).float() == target).all(dim=1).sum()
    topk = logits.topk(min(k, logits.shape[1]), dim=1).indices
    return (topk == target[:, None]).any(dim=1).sum()


def _to(batch: Any, device: torch.device, channels_last: bool = False) -> Any:
    nb = device.type == "cuda"  # pinned host memory -> async copy
    if channels_last and batch.ndim == 4:
        return batch.to(device, non_blocking=nb, memory_format=torch.channels_last)
    return batch.to(device, non_blocking=nb)


def train_one_epoch(model: nn.Module, loader: Any, optimizer: torch.optim.Optimizer, loss_fn: Callable, *,
                    device: torch.device, amp_dtype: Optional[torch.dtype] = None,
                    scaler: Optional[torch.amp.GradScaler] = None, accum_steps: int = 1, clip_grad: float = 0.0,
                    schedule: Any = None, channels_last: bool = False, max_batches: Optional[int] = None,
                    progress: Optional[Callable[[int, int, Callable[[], Dict[str, float]]], None]] = None,
                    ) -> Dict[str, float]:
    """One pass over ``loader`` (batches of (images (N,C,H,W), targets)); returns loss, acc1, img_per_s...

    The caller puts the model in train mode (see ``finetune.train_mode``). Gradients of ``accum_steps`` batches are summed before each update; the last, shorter
    group of an epoch is weighted by its true size, so every update averages its batches.
    """
    n_batches = len(loader) if max_batches is None else min(len(loader), max_batches)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device)
    seen, updates, skipped = 0, 0, 0
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
        correct += accuracy(logits.detach(), targets)
        seen += images.shape[0]
        if i + 1 == group_start + group_size:  # end of an accumulation group: update
            if scaler is not None:
                if clip_grad > 0:
                    scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
                    torch.nn.utils.clip_grad_norm_(params, clip_grad)
                scale_before = scaler.get_scale()
                scaler.step(optimizer)
                scaler.update()
                stepped = scaler.get_scale() >= scale_before  # the scale drops only on a skipped step
            else:
                if clip_grad > 0:
                    torch.nn.utils.clip_grad_norm_(params, clip_grad)
                optimizer.step()
                stepped = True
            if stepped:
                updates += 1
                if schedule is not None:
                    schedule.step_update()
            else:
                skipped += 1
        if progress is not None:
            progress(i + 1, n_batches, lambda: {"loss": (loss_sum / max(seen, 1)).item()})
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - start
    loss_avg = (loss_sum / max(seen, 1)).item()
    if not math.isfinite(loss_avg):
        log.warning("training loss is %s: lower --lr, enable --clip-grad, or check the data", loss_avg)
    return {"loss": loss_avg, "acc1": (correct / max(seen, 1)).item() * 100, "images": seen,
            "updates": updates, "skipped_steps": skipped, "img_per_s": seen / max(elapsed, 1e-9),
            "time": elapsed}


@torch.no_grad()
def evaluate(model: nn.Module, loader: Any, loss_fn: Callable, *, device: torch.device,
             amp_dtype: Optional[torch.dtype] = None, channels_last: bool = False,
             max_batches: Optional[int] = None, return_outputs: bool = False) -> Dict[str, Any]:
    """Loss, top-1 (and top-5 with more than 5 classes) accuracy in %, img/s on ``loader``.

    With ``return_outputs`` the dict also holds ``probs`` (N, C) and ``targets`` on the CPU.
    """
    model.eval()
    loss_sum = torch.zeros((), device=device)
    c1 = torch.zeros((), device=device)
    c5 = torch.zeros((), device=device)
    seen, num_classes = 0, 0
    probs, targs = [], []
    start = time.perf_counter()
    for i, (images, targets) in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        images, targets = _to(images, device, channels_last), _to(targets, device)
        with autocast(device, amp_dtype):
            logits = model(images)
            loss = loss_fn(logits, targets)
        logits = logits.float()
        num_classes = logits.shape[1]
        loss_sum += loss.detach().float() * images.shape[0]
        c1 += accuracy(logits, targets, 1)
        if num_classes > 5 and targets.ndim == 1:
            c5 += accuracy(logits, targets, 5)
        seen += images.shape[0]
        if return_outputs:
            p = torch.sigmoid(logits) if targets.ndim == 2 else logits.softmax(dim=1)
            probs.append(p)  # moved to the CPU once at the end: no per-batch sync on CUDA
            targs.append(targets)
    elapsed = time.perf_counter() - start
    out: Dict[str, Any] = {"loss": (loss_sum / max(seen, 1)).item(), "acc1": (c1 / max(seen, 1)).item() * 100,
                           "images": seen, "img_per_s": seen / max(elapsed, 1e-9)}
    if num_classes > 5:
        out["acc5"] = (c5 / max(seen, 1)).item() * 100
    if return_outputs:
        out["probs"] = torch.cat(probs).cpu() if probs else torch.zeros(0, num_classes)
        out["targets"] = torch.cat(targs).cpu() if targs else torch.zeros(0, dtype=torch.long)
    return out
