"""The learning-rate range test (Smith 2015, fastai's ``lr_find``): ramp the LR, watch the loss, suggest one.

:func:`find_lr` trains one batch per step while the LR grows exponentially from ``start_lr`` to
``end_lr`` (:func:`lr_schedule`), smooths the losses as it goes (:func:`smooth`), stops once that has
diverged, and suggests an LR two thirds of the way down the descent of the loss, or says that the curve
has no clear descent and its number is a guess (:func:`.lr_curve.suggest_lr`). It is a look, not a training: the model's parameters and buffers (BatchNorm
statistics included), their gradients and the modules' train/eval modes, the optimizer's state and
param-group values, the GradScaler, the RNGs (torch CPU/CUDA, numpy, Python) and the loader's own
generators are all put back as they were, also when a step raises. :func:`plot_lr_find` draws it.
"""
from __future__ import annotations

import copy
import logging
import math
import os
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch
from torch import nn

from ..engine import StepConfig, forward_backward, optimizer_step, rng_state, set_rng_state
from ..errors import ConfigError
from ..report.plots import new_figure, save_figure
from .lr_curve import lr_schedule, plot_ylim, smooth, suggest_lr

__all__ = ["find_lr", "plot_lr_find"]  # the maths it uses: :mod:`.lr_curve`

log = logging.getLogger("kernel")


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


def _train_step(model: nn.Module, batch: Any, optimizer: torch.optim.Optimizer, cfg: StepConfig) -> float:
    """One update on one batch with the loop's own step (forward, loss, backward, clip, step); the loss (host)."""
    if cfg.move is not None:
        batch = cfg.move(batch, cfg.device, cfg.channels_last)
    _, loss = forward_backward(model, batch, optimizer, cfg, group_size=1, first=True, sync=True)
    optimizer_step(optimizer, [p for g in optimizer.param_groups for p in g["params"]], cfg.scaler, cfg.clip_grad)
    return float(loss.detach().float().item())  # one host sync per step: the divergence test needs the value


def find_lr(model: nn.Module, loader: Any, optimizer: torch.optim.Optimizer, cfg: StepConfig, *,
            ramp: Tuple[float, float, int] = (1e-7, 10.0, 100), beta: float = 0.98,
            diverge: float = 4.0) -> Dict[str, Any]:
    """Run the LR range test and put everything back; see the module docstring.

    ``loader`` yields the batches the task's step takes (``cfg.step``, default ``(images (N,C,H,W), targets)``);
    the model is on ``cfg.device``. ``ramp = (start_lr, end_lr, steps)``. Step
    ``i`` sets every param group's LR to ``lr_schedule(start_lr, end_lr, steps)[i]`` times the
    group's multiplier (``lr_mult`` when every group has one, else its ratio to the first group),
    then trains one batch. A model in eval mode is switched to train mode; one already in train
    mode is left as the caller set it (e.g. a frozen backbone's BatchNorm in eval). The test stops
    after the step whose smoothed loss is not finite or exceeds ``best + (diverge - 1) * |best|``
    (``diverge`` x the best for positive losses). ``cfg`` (loss, precision, scaler, clipping) means what it
    means to ``train_one_epoch``: the same step runs; give the run's own.

    Returns ``lrs``, ``losses``, ``smoothed`` (float64 arrays (steps done,), ``lrs`` the nominal
    ramped LR, ``smoothed`` the running average the stop rule watches), ``suggestion`` (float),
    ``usable`` (bool: False when ``suggestion`` is a guess), ``note`` (str) and ``curve`` (the centred
    smoothing, up to the first non-finite loss), all from :func:`suggest_lr`; ``bottom`` (int, the end of
    the meaningful part), ``stopped_early`` (bool), ``steps`` (int, done).
    """
    scaler = cfg.scaler
    ramp = lr_schedule(*ramp)
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
            losses.append(_train_step(model, next(batches), optimizer, cfg))
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
