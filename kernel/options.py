"""Every option in one dataclass; argparse and config files are generated from it.

Precedence, lowest first: dataclass defaults < baked config (``build.py``) < ``--config``
file (YAML or JSON) < command-line flags. The resolved options are saved beside the
outputs as ``config.yaml``. Values from files are checked with the same rules as flags.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from .registry import ConfigError, did_you_mean

__all__ = ["Options", "build_parser", "parse_options", "load_config_file", "save_config", "options_to_dict"]


def _choices_sched() -> List[str]:
    from .scheduler import SCHEDULERS
    return SCHEDULERS.names()


def _choices_aug() -> List[str]:
    from .aug_presets import PRESETS  # no torch/OpenCV import just to list names
    return list(PRESETS)


def _choices_aug_backend() -> List[str]:
    from .aug_presets import BACKENDS
    return list(BACKENDS)


def _opt(default: Any = None, help: str = "", group: str = "general", *, choices: Any = None,
         flags: Sequence[str] = (), cli: bool = True, factory: Optional[Callable[[], Any]] = None,
         metavar: Optional[str] = None) -> Any:
    meta = dict(help=help, group=group, choices=choices, flags=tuple(flags), cli=cli, metavar=metavar)
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class Options:
    """All run options with their defaults. Field order is the order of ``--help``."""

    # general
    config: str = _opt("", "YAML/JSON file of option values (flags override it)", metavar="FILE")
    name: str = _opt("exp", "run name: outputs go to OUTPUT/NAME")
    output: str = _opt("", "output root (default: /kaggle/working on Kaggle, ./runs elsewhere)")
    resume: str = _opt("", "checkpoint to continue from: PATH to last.pt, or 'auto' for this run's newest")
    seed: int = _opt(42, "random seed for data split, shuffling, augmentation and init")
    device: str = _opt("auto", "compute device ('--cuda' is the same as '--device cuda')",
                       choices=("auto", "cpu", "cuda"))
    workers: int = _opt(2, "DataLoader worker processes")
    deterministic: bool = _opt(False, "deterministic algorithms, for bit-identical resumes")
    dry_run: bool = _opt(False, "a few batches of training and validation on a tiny subset, to debug")
    log_every: int = _opt(20, "batches between progress lines when not on a terminal")
    tensorboard: bool = _opt(True, "write TensorBoard events when tensorboard is installed")
    list_models: str = _opt("", "print model names matching a pattern (e.g. '*resnet*', 'tv:*') and exit",
                            metavar="PATTERN")
    summary: bool = _opt(False, "print a layer table for the model and input size, then exit")
    preview_lr: bool = _opt(False, "write lr.png and print the LR per epoch, then exit")
    show_aug: int = _opt(0, "write a grid of N augmented training samples, then exit", metavar="N")
    # data
    data: str = _opt("shapes", "ImageFolder train dir, a CSV root with --csv, or 'shapes' (built-in)", "data")
    val_data: str = _opt("", "validation ImageFolder dir (default: split off --val-split)", "data")
    val_split: float = _opt(0.2, "fraction held out for validation when --val-data is not given", "data")
    csv: str = _opt("", "CSV of image ids and labels (Kaggle style), relative to --data", "data")
    image_dir: str = _opt("", "folder of the CSV's images, relative to --data", "data")
    image_col: str = _opt("", "CSV column of image ids (default: first column)", "data")
    label_col: str = _opt("", "CSV column of labels, space-separated for multi-label (default: second)", "data")
    img_size: int = _opt(0, "input size (default: the model's pretrained config)", "data")
    aug: Any = _opt("default", "augmentation preset (a YAML list gives a custom pipeline)", "data",
                    choices=_choices_aug)
    aug_backend: str = _opt("auto", "augmentation library (auto prefers imgaug when installed)", "data",
                            choices=_choices_aug_backend)
    # model
    model: str = _opt("resnet18", "timm name (resnet34, convnext_tiny, ...) or tv:NAME for torchvision", "model")
    pretrained: str = _opt("none", "weights: a .pth/.pt/.safetensors file, local-dir:PATH, 'hub' or 'none'", "model")
    in_chans: int = _opt(3, "input channels (the first convolution adapts)", "model")
    freeze: str = _opt("none", "train only the head with 'backbone'", "model", choices=("none", "backbone"))
    unfreeze_at: int = _opt(0, "epoch at which a frozen backbone starts training (0: never)", "model")
    backbone_lr_mult: float = _opt(1.0, "backbone LR = lr x this (the head keeps lr)", "model")
    # optimization
    epochs: int = _opt(10, "training epochs", "optimization", flags=("--epochs", "--niter"))
    batch_size: int = _opt(32, "images per batch", "optimization")
    lr: float = _opt(1e-3, "learning rate (of the head when --backbone-lr-mult is set)", "optimization")
    opt: str = _opt("adamw", "optimizer", "optimization", choices=("sgd", "adam", "adamw", "rmsprop"))
    momentum: float = _opt(0.9, "momentum (sgd, rmsprop)", "optimization")
    weight_decay: float = _opt(0.01, "weight decay (not applied to norms and biases)", "optimization")
    loss: Any = _opt("ce", "loss name, 'dice+bce', or file.py:fn (see kernel/losses.py)", "optimization")
    loss_kwargs: Any = _opt("", "loss options as k=v,... (e.g. gamma=2,alpha=0.25)", "optimization")
    sched: str = _opt("cosine", "LR scheduler", "optimization", choices=_choices_sched)
    sched_kwargs: Any = _opt("", "scheduler options as k=v,... (e.g. step_size=5)", "optimization")
    sched_interval: str = _opt("auto", "step the scheduler per optimizer update or per epoch", "optimization",
                               choices=("auto", "step", "epoch"))
    warmup_epochs: int = _opt(0, "linear warmup epochs in front of the scheduler", "optimization")
    warmup_steps: int = _opt(0, "linear warmup optimizer updates in front of the scheduler", "optimization")
    decay_every: int = _opt(30, "step_decay: epochs between decays", "optimization")
    decay_rate: float = _opt(0.1, "step_decay: LR factor at each decay", "optimization")
    amp: bool = _opt(False, "mixed precision with torch.autocast", "optimization")
    amp_dtype: str = _opt("auto", "autocast dtype (auto: bf16 on sm>=8.0 and CPU, fp16+GradScaler else)",
                          "optimization", choices=("auto", "fp16", "bf16"))
    accum_steps: int = _opt(1, "batches per optimizer update (gradient accumulation)", "optimization")
    clip_grad: float = _opt(0.0, "clip the gradient norm to this (0: off)", "optimization")
    channels_last: bool = _opt(False, "NHWC memory format (faster convolutions on tensor cores)", "optimization")
    compile: bool = _opt(False, "torch.compile the model", "optimization")
    monitor: str = _opt("val_acc", "metric that picks best.pt and drives plateau/early stopping",
                        "optimization", choices=("val_acc", "val_loss"))
    early_stop: int = _opt(0, "stop after this many epochs without improvement (0: off)", "optimization")
    # config-file only
    predict: Any = _opt(None, "prediction to run after training (config file only)", cli=False)


_GROUPS = ("general", "data", "model", "optimization")
_FIELDS = {f.name: f for f in dataclasses.fields(Options)}
_NOT_SAVED = ("config", "list_models", "summary", "preview_lr", "show_aug")


def _choices(f: dataclasses.Field) -> Optional[List[str]]:
    c = f.metadata.get("choices")
    return list(c()) if callable(c) else (list(c) if c else None)


class _Parser(argparse.ArgumentParser):
    """Argparse that reports a bad value in one line, with the closest valid choice."""

    def _check_value(self, action: argparse.Action, value: Any) -> None:
        if action.choices is not None and value not in action.choices:
            hint = did_you_mean(str(value), [str(c) for c in action.choices])
            raise argparse.ArgumentError(
                action, f"invalid choice {value!r}{hint} (choose from {', '.join(map(str, action.choices))})")

    def error(self, message: str) -> None:  # one line, no usage dump
        raise ConfigError(f"{message} (see --help)")


def build_parser() -> argparse.ArgumentParser:
    """Generate the argument parser from :class:`Options`; every default is SUPPRESS.

    SUPPRESS lets :func:`parse_options` tell flags given on the command line apart from
    defaults, so a config file can sit between the two.
    """
    p = _Parser(prog="python -m kernel.train", description="Fine-tune an image classifier (timm/torchvision).",
                argument_default=argparse.SUPPRESS)
    groups = {g: p.add_argument_group(g) for g in _GROUPS}
    for f in dataclasses.fields(Options):
        m = f.metadata
        if not m.get("cli", True):
            continue
        grp = groups[m["group"]]
        flags = m["flags"] or ("--" + f.name.replace("_", "-"),)
        default = f.default if f.default is not dataclasses.MISSING else None
        help_ = f"{m['help']} (default: {default!r})"
        if f.type in ("bool", bool):
            grp.add_argument(*flags, dest=f.name, action=argparse.BooleanOptionalAction, help=help_)
        else:
            typ = {"int": int, "float": float}.get(f.type if isinstance(f.type, str) else "", str)
            grp.add_argument(*flags, dest=f.name, type=typ, choices=_choices(f), help=help_,
                             metavar=m.get("metavar"))
    groups["general"].add_argument("--cuda", dest="device", action="store_const", const="cuda",
                                   help="same as --device cuda (the notes' switch)")
    return p


def load_config_file(path: str) -> Dict[str, Any]:
    """Read a YAML or JSON mapping of option names (dashes or underscores) to values."""
    if not os.path.isfile(path):
        raise ConfigError(f"--config: file {path!r} not found")
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
        if path.endswith(".json"):
            data = json.loads(text)
        else:
            import yaml
            data = yaml.safe_load(text)
    except Exception as e:  # a syntax error in the user's file: say where, in one line
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"--config: cannot parse {path!r}: {first}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"--config: {path!r} must hold a mapping of option: value, not {type(data).__name__}")
    return data


def _check(values: Dict[str, Any], source: str) -> Dict[str, Any]:
    """Normalise keys and check names, types and choices of values from a file or a baked dict."""
    out = {}
    for key, value in values.items():
        name = str(key).replace("-", "_")
        if name == "kaggle":  # build.py's section of kernel-metadata overrides; not a run option
            continue
        if name not in _FIELDS or name == "config":
            hint = did_you_mean(name, list(_FIELDS))
            raise ConfigError(f"{source}: unknown option {key!r}{hint}")
        f = _FIELDS[name]
        flag = "--" + name.replace("_", "-")
        if f.type in ("bool", bool) and not isinstance(value, bool):
            raise ConfigError(f"{source}: {flag} must be true or false, got {value!r}")
        if f.type in ("int", int) and (isinstance(value, bool) or not isinstance(value, int)):
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            else:
                raise ConfigError(f"{source}: {flag} must be an integer, got {value!r}")
        if f.type in ("float", float):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"{source}: {flag} must be a number, got {value!r}")
            value = float(value)
        if f.type in ("str", str) and not isinstance(value, str):
            value = "" if value is None else str(value)
        choices = _choices(f)
        if choices and isinstance(value, str) and value not in choices:
            hint = did_you_mean(value, choices)
            raise ConfigError(f"{source}: {flag} {value!r} is not one of {', '.join(choices)}{hint}")
        out[name] = value
    return out


def _check_ranges(o: Options) -> None:
    positive = ("epochs", "batch_size", "accum_steps", "in_chans")
    for name in positive:
        if getattr(o, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(o, name)}")
    for name in ("workers", "warmup_epochs", "warmup_steps", "early_stop", "unfreeze_at", "show_aug", "img_size"):
        if getattr(o, name) < 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(o, name)}")
    if not 0.0 <= o.val_split < 1.0:
        raise ConfigError(f"--val-split must be in [0, 1), got {o.val_split}")
    if o.lr <= 0:
        raise ConfigError(f"--lr must be > 0, got {o.lr}")
    if not re.fullmatch(r"[\w.\-]+", o.name):
        raise ConfigError(f"--name {o.name!r}: use letters, digits, '.', '-' and '_' only")


def parse_options(argv: Optional[Sequence[str]] = None, baked: Optional[Dict[str, Any]] = None) -> Options:
    """Resolve options: defaults < ``baked`` < ``--config`` file < flags. Raises ConfigError."""
    argv = list(sys.argv[1:] if argv is None else argv)
    flags = vars(build_parser().parse_args(argv))
    values: Dict[str, Any] = {}
    if baked:
        values.update(_check(baked, "baked config"))
    config = flags.get("config") or values.get("config") or ""
    if config:
        values.update(_check(load_config_file(config), f"--config {config}"))
    values.update(flags)
    opts = Options(**values)
    _check_ranges(opts)
    if opts.predict not in (None, False):  # a typo in the predict: section must fail now, not after training
        from .predict import check_predict_spec
        check_predict_spec(opts.predict)
    return opts


def options_to_dict(opts: Options) -> Dict[str, Any]:
    """The options as builtins, without the one-shot actions (safe for checkpoints and YAML)."""
    d = dataclasses.asdict(opts)
    return {k: v for k, v in d.items() if k not in _NOT_SAVED}


def save_config(opts: Options, path: str | os.PathLike) -> None:
    """Write the resolved options as YAML (a valid ``--config`` file for the next run)."""
    import yaml

    from .checkpoint import atomic_write

    text = yaml.safe_dump(options_to_dict(opts), sort_keys=False)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
