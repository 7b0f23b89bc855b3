"""The maths of the learning-rate range test, pure functions on arrays: the exponential ramp
(:func:`lr_schedule`), the running and centred smoothings (:func:`smooth`, :func:`centred_mean`), the
suggestion two thirds down the descent of the loss, or a guess when there is none (:func:`suggest_lr`),
and the y-range of its plot (:func:`plot_ylim`). :mod:`.lr_find` runs the test and draws it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Tuple

import numpy as np

from ..errors import ConfigError

__all__ = ["lr_schedule", "smooth", "centred_mean", "Suggestion", "suggest_lr", "plot_ylim", "SIGNIFICANCE",
           "MIN_DROP", "DEPTH", "BOTTOM_MARGIN", "DIVERGED"]


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
