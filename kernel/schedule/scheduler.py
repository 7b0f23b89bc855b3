"""Learning-rate schedules: every torch scheduler by name, step decay, warmup, who steps when, a preview.

:func:`create_scheduler` builds an :class:`LRSchedule` whose defaults come from the run's length
N (epochs, or updates when stepping per update; minus any warmup). The loop calls
``step_update()`` after every optimizer update that really happened (never after one that
GradScaler skipped) and ``step_epoch(metric)`` once per epoch after validation; the schedule
decides which of the two moves it. Warmup is linear, per update, in front of the main schedule
(plateau included: it watches the metric from the first epoch after warmup).

Names (defaults; ``interval="auto"`` steps per update only where marked *update*):
  step (step_size=N//3, gamma=0.1) | multistep (milestones at N/2, 3N/4) | exponential (gamma so
  that the LR ends at 1/100) | cosine (T_max=N) | cosine_restarts (T_0=ceil(N/3)) | plateau (mode
  from the monitored metric, factor=0.1, patience=clip(N//10, 1, 10)) | cyclic *update* (lr/10..lr,
  step_size_up=half an epoch, momentum cycled only if the optimizer has it) | onecycle *update*
  (max_lr=lr, total_steps=N, held at its end) | constant (torch's: factor 1/3 for one epoch) |
  linear (1 -> 0 over N; a ramp up when start_factor < 1 is given) | polynomial (power 0.9 to 0
  over N) | lambda ("0.95 ** epoch") | multiplicative ("0.95") | step_decay (lr * decay_rate **
  (epoch // decay_every), 30 and 0.1) | none (constant LR) | sequential / chained
  (schedulers=[{"name": ..., kwargs}, ...]; sequential's milestones count the same units).
Per update is refused for step, multistep, exponential, step_decay and plateau (they count in
epochs or need the validation metric); per epoch is refused for cyclic.
"""
from __future__ import annotations

import copy
import math
import os
import warnings
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch.optim import Optimizer
from torch.optim import lr_scheduler as tls

from .builders import SCHEDULERS, BuildCtx, canonical_name, check_kwargs, resolve_interval
from ..errors import ConfigError

__all__ = ["LRSchedule", "create_scheduler", "preview_lr", "format_lr_table",
           "warmup_factor"]

# Torch warns when a scheduler steps before its optimizer ever did. Under GradScaler the first
# updates of a run can all be skipped (inf grads at scale 2**16) while the order is still right,
# so that one warning is muted -- only while the optimizer has not stepped yet.
_ORDER_WARNING = r"Detected call of `lr_scheduler\.step\(\)` before `optimizer\.step\(\)`"


def warmup_factor(done: int, total: int) -> float:
    """Linear warmup factor after ``done`` of ``total`` updates: (done+1)/(total+1); 1 once done.

    It starts at 1/(total+1), not 0, so no update is wasted at LR 0.
    """
    return 1.0 if done >= total else (done + 1) / (total + 1)


def _plain(value: Any) -> Any:
    """A group value as a builtin float (or a cloned tensor), so checkpoints load with weights_only."""
    return value.detach().clone() if isinstance(value, torch.Tensor) else float(value)


class LRSchedule:
    """A torch scheduler plus warmup, stepped at the right time; see the module docstring.

    Attributes: ``name`` (registry name), ``interval`` ("step" | "epoch"), ``scheduler`` (the torch
    scheduler), ``warmup_steps`` (updates of linear warmup), ``horizon`` (main steps after which the
    LR is held: stepping past the planned end never raises).
    """

    def __init__(self, name: str, scheduler: Any, optimizer: Optimizer, *, interval: str,
                 warmup_steps: int = 0, horizon: int) -> None:
        self.name, self.scheduler, self.optimizer, self.interval = name, scheduler, optimizer, interval
        self.warmup_steps, self.horizon = int(warmup_steps), int(horizon)
        self._warm_done = 0
        self._main_steps = 0
        # A per-epoch main schedule starts counting at the first epoch that begins after warmup.
        self._armed = self.warmup_steps == 0
        self._warned_no_metric = False
        # The main schedule's first LRs (its constructor has just set them): warmup ramps up to these.
        self._targets = [_plain(g["lr"]) for g in optimizer.param_groups]
        if self.warmup_steps:
            self._apply_warmup()

    def _apply_warmup(self) -> None:
        f = warmup_factor(self._warm_done, self.warmup_steps)
        for group, target in zip(self.optimizer.param_groups, self._targets):
            group["lr"] = target * f

    def _step_main(self, *args: float) -> None:
        if self._main_steps >= self.horizon:
            return  # hold the final LR: onecycle would raise "Tried to step N times", cosine would rise again
        self._main_steps += 1
        if getattr(self.optimizer, "_opt_called", False):
            self.scheduler.step(*args)
            return
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_ORDER_WARNING, category=UserWarning)
            self.scheduler.step(*args)

    def step_update(self) -> None:
        """Call after every optimizer update that really happened; moves warmup and per-update schedules."""
        if self._warm_done < self.warmup_steps:
            self._warm_done += 1
            self._apply_warmup()  # the last warmup update lands exactly on the main schedule's first LR
        elif self.interval == "step":
            self._step_main()

    def step_epoch(self, metric: Optional[float] = None) -> None:
        """Call once at the end of every epoch, after validation; moves per-epoch schedules.

        ``metric`` feeds ``plateau`` (the monitored value, e.g. val_acc); others ignore it.
        """
        if self.interval != "epoch" or self._warm_done < self.warmup_steps:
            return
        if not self._armed:  # warmup ended during this epoch: the main schedule's epoch 0 comes next
            self._armed = True
            return
        if isinstance(self.scheduler, tls.ReduceLROnPlateau):
            if metric is None:  # (a NaN metric is passed on: torch counts it as no improvement)
                if not self._warned_no_metric:
                    warnings.warn("plateau scheduler got no validation metric; the LR stays as it is",
                                  stacklevel=2)
                    self._warned_no_metric = True
                return
            self._step_main(float(metric))
        else:
            self._step_main()

    def get_last_lr(self) -> List[float]:
        """The LR of every param group now, i.e. what the next optimizer update will use."""
        return [float(g["lr"]) for g in self.optimizer.param_groups]

    def state_dict(self) -> Dict[str, Any]:
        """Tensors and builtins only (loads with ``torch.load(weights_only=True)``); LRs and momenta included."""
        groups = []
        for g in self.optimizer.param_groups:
            state = {"lr": _plain(g["lr"])}
            if "momentum" in g:
                state["momentum"] = float(g["momentum"])
            if "betas" in g:
                state["betas"] = [float(b) for b in g["betas"]]
            groups.append(state)
        return {"name": self.name, "interval": self.interval, "warmup_steps": self.warmup_steps,
                "warmup_done": self._warm_done, "horizon": self.horizon, "main_steps": self._main_steps,
                "armed": self._armed, "targets": list(self._targets), "scheduler": self.scheduler.state_dict(),
                "groups": groups}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restore the schedule exactly, warmup included, and the optimizer's LRs and momenta.

        Torch schedulers only restore their counters; chainable ones read ``group["lr"]`` on the
        next step, so the group values are restored here too, whatever order the loop loads in.
        """
        for key, mine in (("name", self.name), ("interval", self.interval)):
            if state.get(key) != mine:
                raise ConfigError(f"--resume: the checkpoint's LR schedule has {key} {state.get(key)!r} but this "
                                  f"run has {mine!r}; resume with the same --sched/--sched-interval")
        self.warmup_steps, self._warm_done = int(state["warmup_steps"]), int(state["warmup_done"])
        self.horizon, self._main_steps = int(state["horizon"]), int(state["main_steps"])
        self._armed, self._targets = bool(state["armed"]), list(state["targets"])
        self.scheduler.load_state_dict(copy.deepcopy(state["scheduler"]))  # torch keeps references
        for group, saved in zip(self.optimizer.param_groups, state["groups"]):
            if isinstance(group["lr"], torch.Tensor):
                group["lr"].fill_(float(saved["lr"]))
            else:
                group["lr"] = float(saved["lr"])
            if "momentum" in saved and "momentum" in group:
                group["momentum"] = saved["momentum"]
            if "betas" in saved and "betas" in group:
                group["betas"] = tuple(saved["betas"])


def _count(option: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) or value < minimum:
        raise ConfigError(f"--{option}: expected a whole number >= {minimum}, got {value!r}")
    return int(value)


def create_scheduler(name: str, optimizer: Optimizer, *, epochs: int, steps_per_epoch: int,
                     interval: str = "auto", warmup_epochs: int = 0, warmup_steps: int = 0,
                     monitor_mode: str = "max", **kwargs: Any) -> LRSchedule:
    """Build the LR schedule ``name`` for a run of ``epochs`` x ``steps_per_epoch`` optimizer updates.

    ``kwargs`` are the scheduler's own (already parsed from ``--sched-kwargs``); unknown ones are
    refused. ``interval``: "auto" (onecycle, cyclic and formulas in ``step`` per update, the rest
    per epoch), "step" or "epoch" (refused where it makes no sense, with the reason). Warmup is
    per update; the main schedule's default length is what remains of the run after it.
    """
    epochs = _count("epochs", epochs, 1)
    spe = _count("steps_per_epoch", steps_per_epoch, 1)
    if interval not in ("auto", "step", "epoch"):
        raise ConfigError(f"--sched-interval: expected auto, step or epoch, got {interval!r}")
    if monitor_mode not in ("min", "max"):
        raise ConfigError(f"monitor_mode: expected 'min' or 'max', got {monitor_mode!r}")
    key = canonical_name(name)
    spec = SCHEDULERS.get(key)
    kw = check_kwargs(key, spec, kwargs)
    interval = resolve_interval(key, kw, interval)
    w_epochs, w_steps = _count("warmup-epochs", warmup_epochs, 0), _count("warmup-steps", warmup_steps, 0)
    if w_epochs and w_steps:
        raise ConfigError("--warmup-epochs/--warmup-steps: give one of them, not both")
    warm = w_steps or w_epochs * spe  # warmup always runs per update, so epochs become updates
    per_update = interval == "step"
    length = epochs * spe - warm if per_update else epochs - math.ceil(warm / spe)
    if length < 1:
        raise ConfigError(f"--warmup-epochs/--warmup-steps: a warmup of {warm} updates leaves nothing of the "
                          f"{epochs} x {spe}-update run for {key!r}; shorten the warmup")
    groups = optimizer.param_groups
    ctx = BuildCtx(length=length, unit=spe if per_update else 1, steps_per_epoch=spe, per_update=per_update,
                   lrs=tuple(float(g.get("initial_lr", g["lr"])) for g in groups),
                   momentum="betas" in optimizer.defaults or any(float(g.get("momentum") or 0) > 0 for g in groups),
                   monitor_mode=monitor_mode)
    try:
        sched = spec.build(optimizer, ctx, kw)
    except (ValueError, TypeError, KeyError, ZeroDivisionError) as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"--sched-kwargs: scheduler {key!r} refused {kw or 'its defaults'}: {e}") from None
    horizon = length
    if isinstance(sched, tls.OneCycleLR):  # its last LR is at index total_steps - 1; hold it there
        horizon = max(0, min(length, sched.total_steps) - 1)
    return LRSchedule(key, sched, optimizer, interval=interval, warmup_steps=warm, horizon=horizon)


def preview_lr(schedule: LRSchedule, optimizer: Optimizer, *, epochs: int, steps_per_epoch: int,
               path: str) -> List[Tuple[int, float, float]]:
    """Simulate the run, plot LR vs optimizer update to ``path`` (a .png, or a folder for lr.png).

    Every update and epoch end is replayed (plateau sees a constant metric, i.e. the worst case);
    the schedule and the optimizer's LRs are restored afterwards. Returns one row per epoch:
    (epoch, LR of its first update, LR of its last update), for the first param group; epochs are
    numbered from 1, as the training log (``epoch 1/5``) and ``metrics.csv`` number them.
    """
    if optimizer is not schedule.optimizer:
        raise ValueError("preview_lr: optimizer is not the one the schedule was built for")
    snapshot = copy.deepcopy(schedule.state_dict())
    history: List[List[float]] = []
    rows: List[Tuple[int, float, float]] = []
    try:
        for epoch in range(epochs):
            first = len(history)
            for _ in range(steps_per_epoch):
                history.append([float(g["lr"]) for g in optimizer.param_groups])
                schedule.step_update()
            rows.append((epoch + 1, history[first][0], history[-1][0]))
            schedule.step_epoch(0.0)
    finally:
        schedule.load_state_dict(snapshot)
    title = schedule.name + (f" after {schedule.warmup_steps} warmup updates" if schedule.warmup_steps else "")
    _plot(history, steps_per_epoch, epochs, path, title)
    return rows


def _plot(history: Sequence[Sequence[float]], steps_per_epoch: int, epochs: int, path: str, title: str) -> str:
    # Figure + Agg canvas instead of pyplot: never opens a window and never switches the backend of
    # a notebook that imported us. Imported here so that training never pays for matplotlib.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    out = path if str(path).lower().endswith(".png") else os.path.join(path, "lr.png")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig = Figure(figsize=(8, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    stride = max(1, len(history) // 20000)  # plot at most ~20k points; the simulation itself is exact
    xs = list(range(0, len(history), stride))
    series: Dict[Tuple[float, ...], int] = {}  # groups with identical curves are drawn once
    for i in range(len(history[0]) if history else 0):
        series.setdefault(tuple(h[i] for h in history[::stride]), i)
    for ys, i in series.items():
        ax.plot(xs, ys, drawstyle="steps-post", label=f"group {i}" if len(series) > 1 else None)
    for e in range(1, epochs):  # epoch boundaries; too many lines would hide the curve
        if epochs <= 100:
            ax.axvline(e * steps_per_epoch, color="0.85", linewidth=0.8, linestyle="--", zorder=0)
    ax.set(xlabel=f"optimizer update ({steps_per_epoch} per epoch)", ylabel="learning rate",
           title=f"LR schedule: {title}")
    if len(series) > 1:
        ax.legend()
    fig.tight_layout()
    fig.savefig(out)
    return out


def format_lr_table(rows: Sequence[Tuple[int, float, float]]) -> str:
    """The preview's rows as a fixed-width text table (epoch from 1, LR at its start, LR at its end)."""
    lines = [f"{'epoch':>5}  {'lr_start':>11}  {'lr_end':>11}"]
    lines += [f"{e:>5d}  {a:>11.4e}  {b:>11.4e}" for e, a, b in rows]
    return "\n".join(lines)
