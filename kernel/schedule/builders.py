"""The scheduler registry: one builder per name, with defaults taken from the run's length.

Each :class:`SchedSpec` says which kwargs a scheduler accepts and whether it may step per
optimizer update (``intervals``; the first one is what ``interval="auto"`` picks) and, if not,
why. :mod:`kernel.schedule` wraps the built torch scheduler in an ``LRSchedule``.
Builders receive kwargs already checked by :func:`check_kwargs`.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass, replace
from typing import Any, Callable, Dict, List, Sequence, Tuple

from torch.optim import Optimizer
from torch.optim import lr_scheduler as tls

from .expr import compile_lr_expr, eval_lr_expr
from ..errors import ConfigError
from ..registry import Registry, did_you_mean, is_user_spec, load_user_object

__all__ = ["SCHEDULERS", "SchedSpec", "BuildCtx", "canonical_name", "check_kwargs", "resolve_interval", "uses_step",
           "step_decay_factor"]

# Kwargs torch wants as int, with their minimum: "3.0" from YAML is accepted, 2.5 or 0 is refused
# here with a clear message (torch accepts T_max=0 and only fails with ZeroDivisionError mid-run).
_INT_KWARGS = {"step_size": 1, "T_0": 1, "T_mult": 1, "T_max": 1, "total_iters": 1, "total_steps": 1,
               "step_size_up": 1, "step_size_down": 1, "decay_every": 1, "patience": 0, "cooldown": 0}


def step_decay_factor(epoch: int, decay_every: int, decay_rate: float) -> float:
    """The notes' ``adjust_learning_rate``: LR factor ``decay_rate ** (epoch // decay_every)``."""
    return decay_rate ** (epoch // decay_every)


@dataclass(frozen=True)
class BuildCtx:
    """What a builder needs: run length in its own units, one epoch in those units, LRs, momentum."""
    length: int
    unit: int  # 1 per epoch, or steps_per_epoch when per update
    steps_per_epoch: int
    per_update: bool
    lrs: Tuple[float, ...]
    momentum: bool
    monitor_mode: str


@dataclass(frozen=True)
class SchedSpec:
    """A registry entry: builder, accepted kwargs, intervals (first = auto) and why others are refused."""
    build: Callable[[Optimizer, BuildCtx, Dict[str, Any]], Any]
    kwargs: Tuple[str, ...]
    intervals: Tuple[str, ...] = ("epoch", "step")
    why: str = ""


SCHEDULERS: Registry[SchedSpec] = Registry("scheduler")


def _reg(name: str, kwargs: Sequence[str], intervals: Sequence[str] = ("epoch", "step"), why: str = ""):
    """Decorator: register the builder below under ``name``."""
    def add(fn: Callable[[Optimizer, BuildCtx, Dict[str, Any]], Any]) -> Callable:
        SCHEDULERS.register(name, SchedSpec(fn, tuple(kwargs), tuple(intervals), why))
        return fn
    return add


def _d(kw: Dict[str, Any], **defaults: Any) -> Dict[str, Any]:
    return {**defaults, **kw}


_PER_EPOCH_WHY = "it counts {what} in epochs and changes the LR in jumps; per update it would decay every few batches"


@_reg("step", ["step_size", "gamma"], ["epoch"], _PER_EPOCH_WHY.format(what="step_size"))
def _step(opt, c, kw):
    return tls.StepLR(opt, **_d(kw, step_size=max(1, c.length // 3), gamma=0.1))


@_reg("multistep", ["milestones", "gamma"], ["epoch"], _PER_EPOCH_WHY.format(what="milestones"))
def _multistep(opt, c, kw):
    milestones = sorted({max(1, int(c.length * f)) for f in (0.5, 0.75)})  # 1/2 and 3/4 of the run
    return tls.MultiStepLR(opt, **_d(kw, milestones=milestones, gamma=0.1))


@_reg("exponential", ["gamma"], ["epoch"], "gamma is a per-epoch factor; per update it would compound "
      "steps_per_epoch times faster")
def _exponential(opt, c, kw):  # default: 1/100 of the LR by the end of the run, whatever its length
    return tls.ExponentialLR(opt, **_d(kw, gamma=0.01 ** (1.0 / max(1, c.length))))


@_reg("cosine", ["T_max", "eta_min"])
def _cosine(opt, c, kw):
    return tls.CosineAnnealingLR(opt, **_d(kw, T_max=max(1, c.length), eta_min=0.0))


@_reg("cosine_restarts", ["T_0", "T_mult", "eta_min"])
def _cosine_restarts(opt, c, kw):  # three cycles over the run by default
    return tls.CosineAnnealingWarmRestarts(opt, **_d(kw, T_0=max(1, -(-c.length // 3)), T_mult=1, eta_min=0.0))


_PLATEAU_KW = ["mode", "factor", "patience", "threshold", "threshold_mode", "cooldown", "min_lr", "eps"]


@_reg("plateau", _PLATEAU_KW, ["epoch"], "it reacts to the validation metric, which exists only at epoch ends")
def _plateau(opt, c, kw):
    if kw.get("mode", c.monitor_mode) != c.monitor_mode:  # mode follows the monitored metric (acc/loss)
        raise ConfigError(f"--sched-kwargs: plateau mode={kw['mode']!r} contradicts the monitored metric "
                          f"(mode {c.monitor_mode!r}); drop mode= or change the monitored metric")
    kw = _d(kw, mode=c.monitor_mode, factor=0.1, patience=min(10, max(1, c.length // 10)))
    return tls.ReduceLROnPlateau(opt, **kw)


@_reg("cyclic", ["base_lr", "max_lr", "step_size_up", "step_size_down", "mode", "gamma", "scale_mode",
                 "cycle_momentum", "base_momentum", "max_momentum"], ["step"],
      "it cycles within an epoch: step_size_up counts optimizer updates")
def _cyclic(opt, c, kw):  # lr/10 .. lr, up in half an epoch of updates
    kw = _d(kw, base_lr=[lr / 10 for lr in c.lrs], max_lr=list(c.lrs), step_size_up=max(1, c.unit // 2),
            cycle_momentum=c.momentum)
    return tls.CyclicLR(opt, **kw)


@_reg("onecycle", ["max_lr", "total_steps", "pct_start", "anneal_strategy", "cycle_momentum", "base_momentum",
                   "max_momentum", "div_factor", "final_div_factor", "three_phase"], ["step", "epoch"])
def _onecycle(opt, c, kw):
    return tls.OneCycleLR(opt, **_d(kw, max_lr=list(c.lrs), total_steps=max(1, c.length), cycle_momentum=c.momentum))


@_reg("constant", ["factor", "total_iters"])
def _constant(opt, c, kw):  # torch's ConstantLR: factor x LR for the first epoch. For a flat LR use 'none'.
    return tls.ConstantLR(opt, **_d(kw, factor=1.0 / 3, total_iters=max(1, c.unit)))


@_reg("linear", ["start_factor", "end_factor", "total_iters"])
def _linear(opt, c, kw):
    # Alone: a decay from LR to 0 over the run. Given a start_factor below 1 (as in a sequential's
    # first part, {"name": "linear", "start_factor": 0.1}) it is torch's ramp up to LR instead.
    ramp = float(kw.get("start_factor", 1.0)) < 1.0
    return tls.LinearLR(opt, **_d(kw, start_factor=1.0, end_factor=1.0 if ramp else 0.0, total_iters=max(1, c.length)))


@_reg("polynomial", ["total_iters", "power"])
def _polynomial(opt, c, kw):  # the "poly" policy of segmentation papers: power 0.9 to 0 over the run
    return tls.PolynomialLR(opt, **_d(kw, total_iters=max(1, c.length), power=0.9))


def _make_lambda(spec: Any, c: BuildCtx, option: str) -> Callable[[int], float]:
    """Turn a formula string, a ``file.py:fn`` spec or a callable into a plain function of the counter.

    A formula sees ``epoch`` (fractional when per update) and ``step`` (updates); a user function
    gets the scheduler's own counter (epochs, or updates when stepping per update).

    The result is always a ``def`` function (never a callable object), so torch's LambdaLR leaves it
    out of ``state_dict`` and checkpoints stay ``weights_only``-loadable.
    """
    if callable(spec) or is_user_spec(spec):
        user = spec if callable(spec) else load_user_object(spec, option)
        if not callable(user):
            raise ConfigError(f"{option}: {spec!r} is not callable; point it at a function of the epoch")

        def call_user(i: int) -> float:
            return float(user(i))
        return call_user
    text = str(spec)
    tree = compile_lr_expr(text, option=option)

    def formula(i: int) -> float:
        # epoch may be fractional when stepping per update; step is the update count either way.
        spe = c.steps_per_epoch
        env = {"epoch": i / spe, "step": float(i)} if c.per_update else {"epoch": float(i), "step": float(i * spe)}
        return eval_lr_expr(tree, env, text, option)
    formula(0), formula(1)  # fail now, not in epoch 3, on 1/epoch and friends
    return formula


def uses_step(spec: Any) -> bool:
    """Whether an lr_lambda formula mentions ``step`` (then interval="auto" means per update)."""
    if not isinstance(spec, str) or is_user_spec(spec):
        return False
    return any(isinstance(n, ast.Name) and n.id == "step" for n in ast.walk(compile_lr_expr(spec)))


@_reg("lambda", ["lr_lambda"])
def _lambda(opt, c, kw):  # default: x0.95 per epoch
    return tls.LambdaLR(opt, _make_lambda(kw.get("lr_lambda", "0.95 ** epoch"), c, "lambda lr_lambda"))


@_reg("multiplicative", ["lr_lambda"])
def _multiplicative(opt, c, kw):
    return tls.MultiplicativeLR(opt, _make_lambda(kw.get("lr_lambda", "0.95"), c, "multiplicative lr_lambda"))


@_reg("step_decay", ["decay_every", "decay_rate"], ["epoch"], _PER_EPOCH_WHY.format(what="decay_every"))
def _step_decay(opt, c, kw):  # the notes' values: x0.1 every 30 epochs (--decay-every, --decay-rate)
    every, rate = int(kw.get("decay_every", 30)), float(kw.get("decay_rate", 0.1))  # every >= 1: check_kwargs

    def factor(epoch: int) -> float:
        return step_decay_factor(epoch, every, rate)
    return tls.LambdaLR(opt, factor)


def _one(_: int) -> float:
    return 1.0


@_reg("none", [])
def _none(opt, c, kw):  # an explicit constant LR
    return tls.LambdaLR(opt, _one)


def _sub_specs(name: str, kw: Dict[str, Any], c: BuildCtx) -> List[Tuple[str, Dict[str, Any]]]:
    """Normalise ``schedulers=[{"name": "linear", ...}, "cosine"]`` and check each entry's kwargs."""
    subs = kw.get("schedulers")
    if subs is None:  # default: a linear ramp over the first tenth, then (sequential) / times (chained) cosine
        ramp = {"name": "linear", "start_factor": 0.1, "end_factor": 1.0, "total_iters": max(1, c.length // 10)}
        subs = [ramp, {"name": "cosine"}] if name == "sequential" else [{"name": "cosine"}, ramp]
    if not isinstance(subs, (list, tuple)) or not subs:
        raise ConfigError(f"--sched-kwargs: {name} schedulers must be a non-empty list such as "
                          f"[{{'name': 'linear', 'total_iters': 2}}, {{'name': 'cosine'}}]")
    out = []
    for i, sub in enumerate(subs):
        sub = {"name": sub} if isinstance(sub, str) else sub
        if not isinstance(sub, dict) or not isinstance(sub.get("name"), str):
            raise ConfigError(f"--sched-kwargs: {name} schedulers[{i}] must be a name or a dict with 'name'")
        sub_name = canonical_name(sub["name"])
        if sub_name in ("plateau", "sequential", "chained"):
            raise ConfigError(f"--sched-kwargs: {name} cannot contain {sub_name!r} (torch does not support it); "
                              f"use {sub_name!r} on its own")
        sub_kw = {k: v for k, v in sub.items() if k != "name"}
        sub_kw = check_kwargs(f"{name} -> {sub_name}", SCHEDULERS.get(sub_name), sub_kw)
        out.append((sub_name, sub_kw))
    return out


def _build_subs(opt: Optimizer, c: BuildCtx, subs, lengths: Sequence[int], owner: str) -> List[Any]:
    built = []
    for (sub_name, sub_kw), length in zip(subs, lengths):
        s = SCHEDULERS.get(sub_name).build(opt, replace(c, length=max(1, length)), sub_kw)
        if isinstance(s, tls.OneCycleLR) and s.total_steps < length:  # would raise mid-run otherwise
            raise ConfigError(f"--sched-kwargs: {owner} onecycle total_steps={s.total_steps} is shorter than "
                              f"its {length} steps; drop total_steps to fit it")
        built.append(s)
    return built


@_reg("sequential", ["schedulers", "milestones"])
def _sequential(opt, c, kw):
    subs = _sub_specs("sequential", kw, c)
    k = len(subs)
    default = [max(1, round(c.length * i / k)) for i in range(1, k)]  # evenly split when not given...
    if k == 2 and "total_iters" in subs[0][1]:
        default = [subs[0][1]["total_iters"]]  # ...or switch when a ramp/constant first part ends
    milestones = kw.get("milestones", default)
    if (len(milestones) != k - 1 or any(m < 1 for m in milestones)
            or any(b <= a for a, b in zip(milestones, milestones[1:]))):
        raise ConfigError(f"--sched-kwargs: sequential needs {k - 1} increasing milestones >= 1 for {k} "
                          f"schedulers, got {milestones}")
    edges = [0, *milestones, c.length]  # each part's defaults fit its own segment of the run
    built = _build_subs(opt, c, subs, [b - a for a, b in zip(edges, edges[1:])], "sequential")
    return tls.SequentialLR(opt, built, milestones)


@_reg("chained", ["schedulers"])
def _chained(opt, c, kw):
    subs = _sub_specs("chained", kw, c)
    return tls.ChainedScheduler(_build_subs(opt, c, subs, [c.length] * len(subs), "chained"), opt)


def canonical_name(name: Any) -> str:
    """``"Cosine-Restarts"`` -> ``"cosine_restarts"``; unknown names raise ConfigError with the closest match."""
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"--sched: expected a scheduler name, got {name!r}; known: {', '.join(SCHEDULERS.names())}")
    return SCHEDULERS.canonical(name.strip().lower().replace("-", "_"))


def _as_int(label: str, key: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) or value < minimum:
        raise ConfigError(f"--sched-kwargs: {label} {key}={value!r} must be a whole number >= {minimum}")
    return int(value)


def check_kwargs(label: str, spec: SchedSpec, kwargs: Dict[str, Any]) -> Dict[str, Any]:
    """Refuse kwargs ``spec`` does not accept (naming the scheduler and what it accepts); coerce ints."""
    unknown = [k for k in kwargs if k not in spec.kwargs]
    if unknown:
        hint = did_you_mean(unknown[0], spec.kwargs, sentence=True)
        accepted = ", ".join(spec.kwargs) or "no kwargs"
        raise ConfigError(f"--sched-kwargs: scheduler {label!r} does not take {', '.join(unknown)}.{hint} "
                          f"It accepts: {accepted}")
    out = dict(kwargs)
    for key, value in kwargs.items():
        if key in _INT_KWARGS and value is not None:
            out[key] = _as_int(label, key, value, _INT_KWARGS[key])
        elif key == "milestones":
            if not isinstance(value, (list, tuple)):
                raise ConfigError(f"--sched-kwargs: {label} milestones={value!r} must be a list, e.g. milestones=[3,6]")
            out[key] = [_as_int(label, key, v, 1) for v in value]
    return out


def _auto_interval(key: str, kwargs: Dict[str, Any]) -> str:
    if key in ("lambda", "multiplicative") and uses_step(kwargs.get("lr_lambda")):
        return "step"  # a formula in `step` means per-update
    return SCHEDULERS.get(key).intervals[0]


def resolve_interval(key: str, kwargs: Dict[str, Any], interval: str) -> str:
    """Pick "step" or "epoch" for ``interval`` in ("auto", "step", "epoch"), refusing pairs that make no sense.

    sequential/chained follow their parts: all parts must allow the interval; auto is per update
    when one part needs it (onecycle, cyclic, a formula in ``step``).
    """
    if key in ("sequential", "chained"):
        subs = kwargs.get("schedulers") or ["linear", "cosine"]
        subs = subs if isinstance(subs, (list, tuple)) else []  # the builder explains a malformed list
        parts = [(canonical_name(s), {}) if isinstance(s, str) else (canonical_name(s.get("name")), s)
                 for s in subs if isinstance(s, str) or isinstance(s, dict) and isinstance(s.get("name"), str)]
    else:
        parts = [(key, kwargs)]
    if interval == "auto":
        interval = "step" if any(_auto_interval(k, kw) == "step" for k, kw in parts) else "epoch"
    for k, _ in parts:
        spec = SCHEDULERS.get(k)
        if interval not in spec.intervals:
            where = f"{key} (its part {k!r})" if k != key else repr(key)
            unit = "per optimizer update" if interval == "step" else "per epoch"
            ok = [n for n in SCHEDULERS.names() if interval in SCHEDULERS.get(n).intervals]
            raise ConfigError(f"--sched-interval {interval}: {where} cannot step {unit}: {spec.why}. "
                              f"Use --sched-interval auto, or a scheduler that can: {', '.join(ok)}")
    return interval
