"""The loss factory: a spec (name, combination, user code) -> an ``nn.Module``.

Every loss takes logits, never probabilities: ``loss(logits, target)`` -> scalar fp32 tensor. It
runs in fp32 with autocast off (bf16/fp16 logs and sums lose the small terms that losses add up);
float64 inputs stay float64. The maths is in :mod:`kernel.losses.functional`; the modules, in
:mod:`kernel.losses.modules`, only hold hyper-parameters. This module turns a spec into a module:
registry names, combinations and user code.

Shapes and ``mode`` (inferred when not given): logits (N, C) or (N, C, H, W);
integer target shaped like the logits without dim 1 -> "multiclass" (C == 1: "binary" mask);
float target shaped like the logits -> "binary" if C == 1 else "multilabel".
Integer class maps are one-hot encoded for sigmoid-based losses (one-vs-rest).

Combinations: ``"dice+bce"`` (weights 1), ``"0.5*dice+0.5*focal"`` or ``{"dice": 0.5, "focal": 0.5}``.
Their kwargs are routed: ``dice__smooth=0`` (or ``"dice.smooth"`` in a mapping) goes to that member
only; an unprefixed kwarg goes to every member that accepts it, and is an error if none does.

Empty ground truth (dice / iou / tversky / dice_bce): see :class:`DiceLoss`.
"""
from __future__ import annotations

import functools
import inspect
from typing import Any, Callable, Dict, List, Mapping, Tuple, Union

from torch import Tensor, nn

from ..errors import ConfigError
from ..registry import did_you_mean, is_user_spec, load_user_object
from .modules import LOSSES, autocast_off, check, to_fp32

__all__ = ["create_loss", "CombinedLoss", "UserLoss"]

Spec = Union[str, Mapping[str, float], nn.Module]


class CombinedLoss(nn.Module):
    """Weighted sum of losses: ``sum(weight_i * loss_i(logits, target))``."""

    def __init__(self, members: Mapping[str, Tuple[float, nn.Module]]):
        super().__init__()
        self.weights = {k: float(w) for k, (w, _) in members.items()}
        self.members = nn.ModuleDict({k: m for k, (_, m) in members.items()})

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return sum(self.weights[k] * m(logits, target) for k, m in self.members.items())

    def extra_repr(self) -> str:
        return " + ".join(f"{w:g}*{k}" for k, w in self.weights.items())


class UserLoss(nn.Module):
    """Wraps a user function ``fn(output, target) -> tensor`` or module: fp32, autocast off, scalar check."""

    def __init__(self, fn: Callable[[Tensor, Tensor], Tensor], spec: str):
        super().__init__()
        self.spec = spec
        self.inner = fn if isinstance(fn, nn.Module) else None  # registered, so .to() and parameters work
        self.fn = None if isinstance(fn, nn.Module) else fn

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        with autocast_off(logits.device.type):
            out = (self.fn or self.inner)(to_fp32(logits), to_fp32(target))
        check(isinstance(out, Tensor), self.spec, f"returned {type(out).__name__}; a loss must return a tensor")
        check(out.numel() == 1, self.spec, f"returned shape {tuple(out.shape)}; reduce it to a scalar (e.g. .mean())")
        return to_fp32(out.reshape(()))

    def extra_repr(self) -> str:
        return repr(self.spec)


def _accepted(cls: type) -> List[str]:
    return [p for p in inspect.signature(cls.__init__).parameters if p != "self"]


def _build(name: str, kwargs: Dict[str, Any]) -> nn.Module:
    cls = LOSSES.get(name)
    ok = _accepted(cls)
    for key in kwargs:
        if key not in ok:
            hint = did_you_mean(key, ok)
            check(False, cls.name, f"unknown option {key!r}{hint}; it takes {', '.join(ok)}")
    return cls(**kwargs)


def _user_loss(spec: str, kwargs: Dict[str, Any]) -> nn.Module:
    obj = load_user_object(spec, what="--loss")
    if inspect.isclass(obj):
        try:
            obj = obj(**kwargs)
        except Exception as e:  # wrong kwargs or a failing __init__: one line, like a failing import
            raise ConfigError(f"--loss {spec}: cannot create {obj.__name__}(**{kwargs}): {type(e).__name__}: {e}") from e
        kwargs = {}
    check(callable(obj), spec, f"is a {type(obj).__name__}, not a function or nn.Module class")
    check(not kwargs or not isinstance(obj, nn.Module), spec, "a module object takes no --loss-kwargs")
    try:
        sig = inspect.signature(obj.forward if isinstance(obj, nn.Module) else obj)
    except (TypeError, ValueError):  # builtins without a signature: trust them
        sig = None
    if sig is not None:
        try:
            sig.bind(None, None, **kwargs)
        except TypeError as e:
            extra = ", **loss_kwargs" if kwargs else ""
            raise ConfigError(f"--loss {spec}: a loss is called as fn(output, target{extra}) but its signature "
                              f"is {sig} ({e})") from e
    return UserLoss(functools.partial(obj, **kwargs) if kwargs else obj, spec)


def _weight(text: Any, term: str) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        raise ConfigError(f"--loss: weight {text!r} of {term!r} is not a number; write e.g. 0.5*dice+0.5*bce")


def _combine(terms: List[Tuple[str, float]], kwargs: Dict[str, Any]) -> nn.Module:
    keys: Dict[str, str] = {}  # member key -> spec; user specs get their attribute name as key
    aliases: Dict[str, str] = {}  # every name a prefix may use -> member key
    for spec, _ in terms:
        key = spec.rpartition(":")[2] if is_user_spec(spec) else LOSSES.canonical(spec)
        check(key not in keys, spec, "appears twice in the combination; give it one weight")
        keys[key] = spec
        aliases.update({spec: key, key: key})
    routed: Dict[str, Dict[str, Any]] = {k: {} for k in keys}
    for name, value in kwargs.items():
        prefix, sep, option = name.partition("__") if "__" in name else name.partition(".")
        if sep and prefix not in aliases:
            raise ConfigError(f"--loss-kwargs {name}: {prefix!r} is not a member of {' + '.join(keys)}")
        if sep:
            routed[aliases[prefix]][option] = value
            continue
        takers = [k for k, s in keys.items() if not is_user_spec(s) and name in _accepted(LOSSES.get(s))]
        if not takers:
            raise ConfigError(f"--loss-kwargs {name}: no member of {' + '.join(keys)} takes this option; "
                              f"prefix it to send it to one member, e.g. {next(iter(keys))}__{name}=...")
        for k in takers:
            routed[k][name] = value
    members = {k: (w, create_loss(spec, **routed[k])) for (spec, w), k in zip(terms, keys)}
    return CombinedLoss(members)


def create_loss(spec: Spec, **kwargs: Any) -> nn.Module:
    """Build a loss module from a registry name (``LOSSES.names()``), a combination
    (``"dice+bce"``, ``"0.5*dice+0.5*focal"``, ``{"dice": 0.5, "focal": 0.5}``) or user code
    (``"path/to/file.py:fn"`` / ``"pkg.module:Cls"``: a function ``fn(output, target)``, called with
    the kwargs as keywords, or a class instantiated with them). Bad specs raise ConfigError."""
    if isinstance(spec, nn.Module):
        check(not kwargs, type(spec).__name__, "a ready module takes no kwargs")
        return spec
    if isinstance(spec, Mapping):
        check(len(spec) > 0, "{}", "an empty mapping names no loss")
        return _combine([(str(k).strip(), _weight(w, str(k))) for k, w in spec.items()], kwargs)
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"--loss: {spec!r} is not a loss; use one of {', '.join(LOSSES.names())} or file.py:fn")
    spec = spec.strip()
    if "+" in spec or "*" in spec:
        terms = []
        for part in spec.split("+"):
            left, star, right = (p.strip() for p in part.partition("*"))
            check(bool(left), spec, "an empty term; write e.g. dice+bce")
            terms.append((right, _weight(left, part)) if star else (left, 1.0))
        return _combine(terms, kwargs)
    if is_user_spec(spec):
        return _user_loss(spec, kwargs)
    return _build(spec, kwargs)
