"""The learning-rate range test (Smith 2015, fastai's ``lr_find``): ramp the LR, watch the loss, suggest one.

:func:`find_lr` trains one batch per step while the LR grows exponentially from ``start_lr`` to
``end_lr`` (:func:`lr_schedule`), smooths the losses as it goes (:func:`smooth`), stops once that has
diverged, and suggests an LR two thirds of the way down the descent of the loss, or says that the curve
has no clear descent and its number is a guess (:func:`suggest_lr`). It is a look, not a training: the model's parameters and buffers (BatchNorm
statistics included), their gradients and the modules' train/eval modes, the optimizer's state and
param-group values, the GradScaler, the RNGs (torch CPU/CUDA, numpy, Python) and the loader's own
generators are all put back as they were, also when a step raises. :func:`plot_lr_find` draws it.
"""
from __future__ import annotations

import copy
import logging
import math
import os
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch
from torch import nn

from ..engine import autocast, rng_state, set_rng_state
from ..registry import ConfigError
from ..report.plots import new_figure, save_figure

__all__ = ["lr_schedule", "smooth", "centred_mean", "Suggestion", "suggest_lr", "find_lr", "plot_ylim",
           "plot_lr_find"]

log = logging.getLogger("kernel")


def lr_schedule(start_lr: float, end_lr: float, steps: int) -> np.ndarray:
    """``steps`` LRs from ``start_lr`` to ``end_lr`` (both included), geometrically spaced: float64 (steps,).

    LR ``i`` is ``start_lr * (end_lr / start_lr) ** (i / (steps - 1))``.
    """
    if not (math.isfinite(start_lr) and start_lr > 0):
        raise ConfigError(f"lr_find: start_lr={start_lr!r} must be a positive number; pass e.g. 1e-7")
    if not (math.isfinite(end_lr) and end_lr > start_lr):
        raise ConfigError(f"lr_find: end_lr={end_lr!r} must be finite and above start_lr={start_lr!r}; pass e.g. 10")
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 2:
        raise ConfigError(f"lr_find: steps={steps!r} must be an integer >= 2; pass e.g. 100")
    lrs = np.geomspace(start_lr, end_lr, int(steps))
    lrs[0], lrs[-1] = start_lr, end_lr  # exact endpoints (geomspace goes through exp/log)
    return lrs


def smooth(losses: Any, beta: float = 0.98) -> np.ndarray:
    """Exponentially weighted average with bias correction (fastai's): float64 (N,) from N losses.

    ``avg_i = beta * avg_{i-1} + (1 - beta) * loss_i`` with ``avg_{-1} = 0``, and
    ``smoothed_i = avg_i / (1 - beta ** (i + 1))``: the early values are not pulled towards 0.
    A NaN or inf loss makes every later value non-finite (that is what divergence looks like).
    """
    if not (0.0 <= beta < 1.0):
        raise ConfigError(f"lr_find: beta={beta!r} must be in [0, 1); pass e.g. 0.98")
    x = np.asarray(losses, dtype=np.float64).reshape(-1)
    out = np.empty_like(x)
    avg = 0.0
    for i, v in enumerate(x):
        avg = beta * avg + (1.0 - beta) * v
        out[i] = avg / (1.0 - beta ** (i + 1))
    return out


def centred_mean(values: Any, half: int) -> np.ndarray:
    """Mean over ``2 * half + 1`` neighbours centred on each point: float64 (N,), no lag (unlike :func:`smooth`).

    Near the ends the window shrinks symmetrically (point ``i`` averages ``i - k .. i + k`` with
    ``k = min(half, i, N - 1 - i)``), so the ends are never pulled towards the middle.
    """
    y = np.asarray(values, dtype=np.float64).reshape(-1)
    if half < 0:
        raise ValueError(f"centred_mean: half={half!r} must be >= 0")
    csum = np.concatenate([[0.0], np.cumsum(y)])
    i = np.arange(y.size)
    k = np.minimum(half, np.minimum(i, y.size - 1 - i))
    return (csum[i + k + 1] - csum[i - k]) / (2 * k + 1)


@dataclass(frozen=True)
class Suggestion:
    """What :func:`suggest_lr` makes of a range test.

    ``lr``: the suggested LR (always finite, within the ramp); ``usable``: the loss clearly descends
    before it diverges (False: ``lr`` is a guess and ``note`` says why); ``note``: one line on how
    ``lr`` was chosen; ``curve``: the centred smoothing the choice was made on (float64, the losses
    up to the first non-finite one); ``start``, ``top``, ``bottom``: indices of the first point
    considered, the top of the descent and its bottom (the end of the meaningful part of the curve).
    """
    lr: float
    usable: bool
    note: str
    curve: np.ndarray
    start: int
    top: int
    bottom: int


SIGNIFICANCE = 4.5   # standard errors the descent must exceed to count (pure noise: 1 % of 100-point ramps pass 3.8)
MIN_DROP = 0.01      # ... and a fraction of the starting loss (a numerically flat curve is no descent)
DEPTH = 2 / 3        # how far down the descent (in loss) the suggestion lies
BOTTOM_MARGIN = 3.0  # the suggestion stays this factor below the bottom's LR: past the bottom the loss blows up
DIVERGED = 0.25      # the curve has diverged once it is this fraction above its starting level


def suggest_lr(lrs: Any, losses: Any) -> Suggestion:
    """A trainable LR from a range test's raw losses (fastai's "valley" idea, made robust to short, noisy ramps).

    ``lrs`` and ``losses``: float arrays (N,), LRs positive and increasing; only the losses before the
    first non-finite one count. The steps:

    1. ``curve = centred_mean(losses, h)`` with ``h = max(1, N // 25)``: smoothing without the lag of
       the running average, whose minimum lies past the real one (and, on a 20-step ramp, barely moves).
    2. The first ``start = max(h, N // 10)`` points are skipped (noise around the starting value).
       The curve is cut where it first climbs :data:`DIVERGED` above the median of the losses up to
       ``start`` (the loss has diverged: a fall after that is no descent to train at) and before the
       last ``h`` points (their windows are cut short); ``bottom`` is its minimum in between: the end
       of the descent.
    3. The descent is usable when the plateau (the mean of the first third of the losses up to
       ``bottom``, at least ``2h + 1`` of them) lies :data:`SIGNIFICANCE` standard errors and
       :data:`MIN_DROP` of its value above ``curve[bottom]``; the noise is the median absolute
       residual around the curve (scaled to a standard deviation).
    4. Usable: ``top`` is the curve's highest point in ``[start, bottom]``, and the suggestion is the
       first LR at which the curve has come :data:`DEPTH` of the way down from ``curve[top]`` to
       ``curve[bottom]``, and at most ``lrs[bottom] / BOTTOM_MARGIN``. Not usable: a guess, a tenth
       of the LR where the loss starts to climb (the last point on or below the plateau's mean before
       the curve first lies :data:`SIGNIFICANCE` standard errors above it), else of ``lrs[bottom]``
       (fastai's "minimum / 10"); with fewer than 3 finite losses, ``lrs[0]``.
    Every result is clipped into ``[lrs[0], lrs[-1]]``.
    """
    lrs = np.asarray(lrs, dtype=np.float64).reshape(-1)
    raw = np.asarray(losses, dtype=np.float64).reshape(-1)
    if lrs.size == 0 or lrs.shape != raw.shape:
        raise ValueError(f"suggest_lr needs two arrays of the same non-zero length, got {lrs.shape} and {raw.shape}")
    if not (np.all(np.isfinite(lrs)) and np.all(lrs > 0)):
        raise ValueError("suggest_lr needs finite positive LRs")
    n = raw.size
    finite = np.isfinite(raw)
    k = n if finite.all() else int(np.argmin(finite))  # a NaN/inf loss: everything from there on is divergence
    raw = raw[:k]

    def clip(lr: float) -> float:
        return float(np.clip(lr, lrs[0], lrs[-1]))

    if k < 3:
        return Suggestion(clip(lrs[0]), False, f"only {k} finite loss{'es' if k != 1 else ''}: the first LR, a guess",
                          raw.copy(), 0, 0, max(k - 1, 0))
    h = max(1, n // 25)
    w = 2 * h + 1
    curve = centred_mean(raw, h)
    start = min(max(h, n // 10), k - 1)
    stop = max(start + 1, k - h)  # full windows only: a shrunken one at the end is a lone noisy loss
    base = float(np.median(raw[:start + 1]))
    above = np.flatnonzero(curve[start:stop] > base + DIVERGED * abs(base))
    if above.size:  # well above where it started: diverged, whatever comes later
        stop = start + max(1, int(above[0]))
    bottom = start + int(np.argmin(curve[start:stop]))
    plateau = raw[:max(w, (bottom + 1) // 3)]
    inner = np.arange(h, max(h, min(k - h, bottom + h + 1)))  # full windows only: the ends are the losses
    resid = raw[inner] - curve[inner]
    sigma = 1.4826 * float(np.median(np.abs(resid))) / math.sqrt(1.0 - 1.0 / w) if resid.size else 0.0
    drop = float(plateau.mean()) - float(curve[bottom])
    se = sigma * math.sqrt(1.0 / plateau.size + 1.0 / w)
    usable = drop > MIN_DROP * abs(float(plateau.mean())) and drop >= SIGNIFICANCE * se
    if not usable:
        why = "the loss does not fall" if drop <= 0 else "the loss falls no more than its noise"
        rise = np.flatnonzero(curve[bottom:k - h] > plateau.mean() + SIGNIFICANCE * se)
        if rise.size:  # where the rate starts to hurt is known even when where it helps is not
            flat = np.flatnonzero(curve[bottom:bottom + int(rise[0])] <= plateau.mean())
            onset = bottom + (int(flat[-1]) if flat.size else 0)  # the last point still on the plateau
            lr, where = float(lrs[onset]), "where the loss starts to climb"
        else:
            lr, where = float(lrs[bottom]), "at the lowest loss"
        return Suggestion(clip(lr / 10.0), False, f"no clear descent, {why}: a guess, a tenth of the LR {where}",
                          curve, start, bottom, bottom)
    top = start + int(np.argmax(curve[start:bottom + 1]))
    level = curve[top] - DEPTH * (curve[top] - curve[bottom])
    at = top + int(np.argmax(curve[top:bottom + 1] <= level))
    lr = min(float(lrs[at]), float(lrs[bottom]) / BOTTOM_MARGIN)
    return Suggestion(clip(lr), True, f"{DEPTH:.0%} down the descent from {lrs[top]:.2g} to {lrs[bottom]:.2g}",
                      curve, start, top, bottom)


def _lr_mults(optimizer: torch.optim.Optimizer) -> List[float]:
    """Each group's LR as a multiple of the ramped (nominal) LR.

    Groups made by ``kernel.engine.create_optimizer`` carry ``lr_mult`` (the backbone's
    ``--backbone-lr-mult``; the head has 1): the ratio is that, whatever a warmup has done to the
    LRs now. Otherwise the ratio is each group's LR over the first group's (1 for all when that is 0).
    """
    groups = optimizer.param_groups
    if all("lr_mult" in g for g in groups):
        return [float(g["lr_mult"]) for g in groups]
    first = float(groups[0]["lr"])
    return [float(g["lr"]) / first if first > 0 else 1.0 for g in groups]


def _set_lrs(optimizer: torch.optim.Optimizer, lr: float, mults: List[float]) -> None:
    for group, mult in zip(optimizer.param_groups, mults):
        if isinstance(group["lr"], torch.Tensor):  # a capturable/fused optimizer's tensor LR: keep the object
            group["lr"].fill_(lr * mult)
        else:
            group["lr"] = lr * mult


def _loader_generators(loader: Any) -> List[torch.Generator]:
    """The loader's and its sampler's own generators (not torch's global one), each once."""
    found: List[torch.Generator] = []
    batch_sampler = getattr(loader, "batch_sampler", None)
    for owner in (loader, getattr(loader, "sampler", None), getattr(batch_sampler, "sampler", None)):
        g = getattr(owner, "generator", None)
        if isinstance(g, torch.Generator) and all(g is not h for h in found):
            found.append(g)
    return found


def _snapshot(model: nn.Module, optimizer: torch.optim.Optimizer, scaler: Any, loader: Any) -> Dict[str, Any]:
    """Copies of everything a range test changes; the tensors go to host memory (no second model on the GPU)."""
    tensors = [t for _, t in model.named_parameters()] + [b for _, b in model.named_buffers()]
    params = [p for g in optimizer.param_groups for p in g["params"]] + [p for p in model.parameters()]
    grads = {p: (None if p.grad is None else p.grad.detach().to("cpu", copy=True)) for p in params}
    return {
        "tensors": [(t, t.detach().to("cpu", copy=True)) for t in tensors],
        "grads": grads,
        "modes": [(m, m.training) for m in model.modules()],
        "opt_state": {p: copy.deepcopy(s) for p, s in optimizer.state.items()},
        "groups": [{k: copy.deepcopy(v) for k, v in g.items() if k != "params"} for g in optimizer.param_groups],
        "scaler": None if scaler is None else copy.deepcopy(scaler.state_dict()),
        "rng": rng_state(),
        "generators": [(g, g.get_state()) for g in _loader_generators(loader)],
    }


@torch.no_grad()
def _restore(snap: Dict[str, Any], optimizer: torch.optim.Optimizer, scaler: Any) -> None:
    """Put back a :func:`_snapshot` in place: the same tensor, group and state objects the caller holds."""
    for t, saved in snap["tensors"]:
        t.copy_(saved)
    for p, g in snap["grads"].items():
        p.grad = None if g is None else g.to(p.device)
    for m, training in snap["modes"]:
        m.training = training
    optimizer.state.clear()
    optimizer.state.update(snap["opt_state"])
    for group, saved in zip(optimizer.param_groups, snap["groups"]):
        for k, v in saved.items():
            if isinstance(group.get(k), torch.Tensor) and isinstance(v, torch.Tensor):
                group[k].copy_(v)
            else:
                group[k] = v
    if scaler is not None:
        scaler.load_state_dict(snap["scaler"])
        # A step that raised between unscale_ and update leaves per-optimizer bookkeeping behind;
        # update() clears it the same way after every good step.
        getattr(scaler, "_per_optimizer_states", {}).clear()
    set_rng_state(snap["rng"])
    for g, state in snap["generators"]:
        g.set_state(state)


def _batches(loader: Any) -> Iterator[Any]:
    """The loader's batches forever: a loader shorter than the ramp starts over."""
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise ConfigError("lr_find: the training loader yields no batch; give it at least one batch of data")


def _train_step(model: nn.Module, batch: Any, loss_fn: Callable, optimizer: torch.optim.Optimizer, *,
                device: torch.device, amp_dtype: Optional[torch.dtype], scaler: Any, clip_grad: float,
                channels_last: bool) -> float:
    """One update on one batch, as ``kernel.engine.train_one_epoch`` does it; returns the loss (host float)."""
    nb = device.type == "cuda"  # pinned host memory -> async copy
    fmt = torch.channels_last if channels_last and batch[0].ndim == 4 else torch.preserve_format
    images, targets = batch[0].to(device, non_blocking=nb, memory_format=fmt), batch[1].to(device, non_blocking=nb)
    with autocast(device, amp_dtype):
        loss = loss_fn(model(images), targets)
    if not torch.is_tensor(loss) or loss.ndim != 0:
        raise TypeError(f"the loss must return a scalar tensor, got {type(loss).__name__} "
                        f"{tuple(getattr(loss, 'shape', ()))}")
    optimizer.zero_grad(set_to_none=True)
    (scaler.scale(loss) if scaler is not None else loss).backward()
    params = [p for g in optimizer.param_groups for p in g["params"]]
    if scaler is not None:
        if clip_grad > 0:
            scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
            torch.nn.utils.clip_grad_norm_(params, clip_grad)
        scaler.step(optimizer)
        scaler.update()
    else:
        if clip_grad > 0:
            torch.nn.utils.clip_grad_norm_(params, clip_grad)
        optimizer.step()
    return float(loss.detach().float().item())  # one host sync per step: the divergence test needs the value


def find_lr(model: nn.Module, loader: Any, loss_fn: Callable, optimizer: torch.optim.Optimizer, *,
            device: torch.device, start_lr: float = 1e-7, end_lr: float = 10.0, steps: int = 100,
            beta: float = 0.98, diverge: float = 4.0, amp_dtype: Optional[torch.dtype] = None,
            scaler: Optional[torch.amp.GradScaler] = None, channels_last: bool = False,
            clip_grad: float = 0.0) -> Dict[str, Any]:
    """Run the LR range test and put everything back; see the module docstring.

    ``loader`` yields ``(images (N,C,H,W), targets, ...)`` batches; the model is on ``device``. Step
    ``i`` sets every param group's LR to ``lr_schedule(start_lr, end_lr, steps)[i]`` times the
    group's multiplier (``lr_mult`` when every group has one, else its ratio to the first group),
    then trains one batch. A model in eval mode is switched to train mode; one already in train
    mode is left as the caller set it (e.g. a frozen backbone's BatchNorm in eval). The test stops
    after the step whose smoothed loss is not finite or exceeds ``best + (diverge - 1) * |best|``
    (``diverge`` x the best for positive losses). ``amp_dtype``, ``scaler``, ``clip_grad`` (0: off)
    and ``channels_last`` mean what they mean to ``train_one_epoch``; give the run's own values.

    Returns ``lrs``, ``losses``, ``smoothed`` (float64 arrays (steps done,), ``lrs`` the nominal
    ramped LR, ``smoothed`` the running average the stop rule watches), ``suggestion`` (float),
    ``usable`` (bool: False when ``suggestion`` is a guess), ``note`` (str) and ``curve`` (the centred
    smoothing, up to the first non-finite loss), all from :func:`suggest_lr`; ``bottom`` (int, the end of
    the meaningful part), ``stopped_early`` (bool), ``steps`` (int, done).
    """
    ramp = lr_schedule(start_lr, end_lr, steps)
    if not (0.0 <= beta < 1.0):
        raise ConfigError(f"lr_find: beta={beta!r} must be in [0, 1); pass e.g. 0.98")
    if not (math.isfinite(diverge) and diverge > 1):
        raise ConfigError(f"lr_find: diverge={diverge!r} must be a number above 1; pass e.g. 4")
    mults = _lr_mults(optimizer)
    snap = _snapshot(model, optimizer, scaler, loader)
    losses: List[float] = []
    stopped = False
    batches = _batches(loader)
    try:
        if not model.training:
            model.train()
        avg, best = 0.0, math.inf
        for i, lr in enumerate(ramp):
            _set_lrs(optimizer, float(lr), mults)
            losses.append(_train_step(model, next(batches), loss_fn, optimizer, device=device, amp_dtype=amp_dtype,
                                      scaler=scaler, clip_grad=clip_grad, channels_last=channels_last))
            avg = beta * avg + (1.0 - beta) * losses[-1]
            s = avg / (1.0 - beta ** (i + 1))  # the same value smooth() gives
            if not math.isfinite(s) or s > best + (diverge - 1.0) * abs(best):
                stopped = True
                break
            best = min(best, s)
    finally:
        batches.close()  # shuts the loader's workers down now, not at garbage collection
        _restore(snap, optimizer, scaler)
    lrs = ramp[:len(losses)].copy()
    smoothed = smooth(losses, beta)
    s = suggest_lr(lrs, losses)
    log.info("lr_find: %d steps from %.2e to %.2e%s, suggested LR %.2e (%s)", len(losses), lrs[0], lrs[-1],
             " (stopped: the loss diverged)" if stopped else "", s.lr, s.note)
    return {"lrs": lrs, "losses": np.asarray(losses, dtype=np.float64), "smoothed": smoothed,
            "suggestion": s.lr, "usable": s.usable, "note": s.note, "curve": s.curve, "bottom": s.bottom,
            "stopped_early": stopped, "steps": len(losses)}


def plot_ylim(losses: Any, curve: Any, bottom: int) -> Tuple[float, float]:
    """The y-range of the LR plot: the losses and their smoothing up to ``bottom`` (the end of the descent).

    ``lo``/``hi`` are the lowest finite loss or curve value and the highest curve value in
    ``[0, bottom]``; the range is ``(lo - 0.1 * span, hi + 0.5 * span)`` with ``span = hi - lo``
    (5 % of ``|lo|``, at least 1e-3, when the curve is flat), so a diverging tail runs off the top instead
    of flattening the part that matters. ``(0, 1)`` when there is no finite value.
    """
    raw = np.asarray(losses, dtype=np.float64).reshape(-1)[:bottom + 1]
    sm = np.asarray(curve, dtype=np.float64).reshape(-1)[:bottom + 1]
    low = np.concatenate([raw[np.isfinite(raw)], sm[np.isfinite(sm)]])
    high = sm[np.isfinite(sm)]
    if not low.size:
        return 0.0, 1.0
    lo = float(low.min())
    hi = float(high.max()) if high.size else float(low.max())
    span = hi - lo if hi > lo else max(0.05 * abs(lo), 1e-3)
    return lo - 0.1 * span, hi + 0.5 * span


def plot_lr_find(result: Dict[str, Any], path: str | os.PathLike) -> str:
    """Loss against LR (log axis) from :func:`find_lr`'s result: raw faint, the suggestion's smoothing bold,
    the suggestion marked; the y-axis is :func:`plot_ylim`'s. Writes a PNG atomically; returns the path."""
    lrs, raw = (np.asarray(result[k], dtype=np.float64) for k in ("lrs", "losses"))
    curve = np.asarray(result["curve"], dtype=np.float64)
    sugg = float(result["suggestion"])
    fig = new_figure(7, 4.5)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(lrs, raw, lw=1, alpha=0.3, color="C0", label="loss")
    if curve.size:
        ax.plot(lrs[:curve.size], curve, lw=2.2, color="C0", label="smoothed")
        ax.set_ylim(*plot_ylim(raw, curve, int(result["bottom"])))
        i = int(np.argmin(np.abs(np.log(lrs[:curve.size]) - math.log(sugg))))
        ax.plot([sugg], [curve[i]], "o", ms=9, color="#cf222e", zorder=5, label=f"suggestion {sugg:.2e}")
    ax.axvline(sugg, color="#cf222e", ls="--", lw=1)
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    stop = "; stopped early: the loss diverged" if result.get("stopped_early") else ""
    guess = "" if result.get("usable", True) else " (a guess)"
    ax.set_title(f"LR range test ({int(result.get('steps', lrs.size))} steps): suggested LR {sugg:.2e}{guess}{stop}",
                 fontsize=10)
    return save_figure(fig, path)
