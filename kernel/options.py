"""Every option in one dataclass per command; argparse, config files and checks come from them.

:class:`Options` holds ``kernel.train``'s options, :class:`PredictOptions` ``kernel.predict``'s (and the
keys of a config file's ``predict:`` section). Each default is written once, here. Precedence, lowest
first: dataclass defaults < baked config (``build.py``) < ``--config`` file (YAML or JSON) < flags. The
resolved options are saved beside the outputs as ``config.yaml``. Values from files are checked with
the same rules as flags. Importing this module imports no torch (``build.py`` checks configs with it).
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from .cli import field_choices, parser_from_dataclass
from .registry import ConfigError, did_you_mean

__all__ = ["Options", "PredictOptions", "DEVICES", "ONE_SHOTS", "build_parser", "parse_options",
           "load_config_file", "check_values", "save_config", "options_to_dict", "check_predict_spec"]

DEVICES = ("auto", "cpu", "cuda")
ONE_SHOTS = ("list_models", "summary", "preview_lr", "show_aug")  # options that do one thing and exit


# Choices that come from registries, imported only when a parser or a check needs them.
def _choices_sched() -> List[str]:
    from .schedule import SCHEDULERS
    return SCHEDULERS.names()


def _choices_aug() -> List[str]:
    from .augment.presets import PRESETS
    return list(PRESETS)


def _choices_aug_backend() -> List[str]:
    from .augment.presets import BACKENDS
    return list(BACKENDS)


def _choices_opt() -> List[str]:
    from .engine.optim import OPTIMIZERS
    return OPTIMIZERS.names()


def _choices_task() -> List[str]:
    from .tasks import TASKS
    return TASKS.names()


def _choices_monitor() -> List[str]:
    from .tasks import monitor_names
    return ["auto", *monitor_names()]


def _opt(default: Any = None, help: str = "", group: str = "general", *, choices: Any = None,
         flags: Sequence[str] = (), cli: bool = True, metavar: Optional[str] = None, **meta: Any) -> Any:
    return field(default=default, metadata=dict(help=help, group=group, choices=choices, flags=tuple(flags),
                                                cli=cli, metavar=metavar, **meta))


@dataclass
class Options:
    """All run options with their defaults. Field order is the order of ``--help``."""

    # general
    config: str = _opt("", "YAML/JSON file of option values (flags override it)", metavar="FILE")
    name: str = _opt("exp", "run name: outputs go to OUTPUT/NAME")
    output: str = _opt("", "output root (default: /kaggle/working on Kaggle, ./runs elsewhere)")
    resume: str = _opt("", "checkpoint to continue from: PATH to last.pt, or 'auto' for this run's newest")
    seed: int = _opt(42, "random seed for data split, shuffling, augmentation and init")
    device: str = _opt("auto", "compute device ('--cuda' is the same as '--device cuda')", choices=DEVICES)
    workers: int = _opt(2, "DataLoader worker processes")
    deterministic: bool = _opt(False, "deterministic algorithms, for bit-identical resumes")
    dry_run: bool = _opt(False, "a few batches of training and validation on a tiny subset, to debug")
    log_every: int = _opt(20, "batches between progress lines when not on a terminal")
    plot_every: float = _opt(60.0, "seconds between redraws of the run's pictures (0: every epoch; always at the end)")
    tensorboard: bool = _opt(True, "write TensorBoard events when tensorboard is installed")
    list_models: str = _opt("", "print model names matching a pattern (e.g. '*resnet*', 'tv:*') and exit",
                            metavar="PATTERN")
    summary: bool = _opt(False, "print a layer table for the model and input size, then exit")
    preview_lr: bool = _opt(False, "write lr.png and print the LR per epoch, then exit")
    show_aug: int = _opt(0, "write a grid of N augmented training samples, then exit", metavar="N")
    # data
    task: str = _opt("classify", "what to learn: classify (one label per image)", "data", choices=_choices_task)
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
    opt: str = _opt("adamw", "optimizer", "optimization", choices=_choices_opt)
    momentum: float = _opt(0.9, "momentum (sgd, rmsprop)", "optimization")
    weight_decay: float = _opt(0.01, "weight decay (not applied to norms and biases)", "optimization")
    loss: Any = _opt("auto", "loss name, 'dice+bce', file.py:fn, or auto (the task's default)", "optimization")
    loss_kwargs: Any = _opt("", "loss options as k=v,... (e.g. gamma=2,alpha=0.25)", "optimization")
    sched: str = _opt("cosine", "LR scheduler", "optimization", choices=_choices_sched)
    sched_kwargs: Any = _opt("", "scheduler options as k=v,... (e.g. step_size=5)", "optimization")
    sched_interval: str = _opt("auto", "step the scheduler per optimizer update or per epoch", "optimization",
                               choices=("auto", "step", "epoch"))
    warmup_epochs: int = _opt(0, "linear warmup epochs in front of the scheduler", "optimization")
    warmup_steps: int = _opt(0, "linear warmup optimizer updates in front of the scheduler", "optimization")
    decay_every: Optional[int] = _opt(None, "step_decay: epochs between decays (unset: the scheduler's, see "
                                      "kernel/schedule)", "optimization")
    decay_rate: Optional[float] = _opt(None, "step_decay: LR factor at each decay (unset: the scheduler's)",
                                       "optimization")
    amp: bool = _opt(False, "mixed precision with torch.autocast", "optimization")
    amp_dtype: str = _opt("auto", "autocast dtype (auto: bf16 on sm>=8.0 and CPU, fp16+GradScaler else)",
                          "optimization", choices=("auto", "fp16", "bf16"))
    accum_steps: int = _opt(1, "batches per optimizer update (gradient accumulation)", "optimization")
    clip_grad: float = _opt(0.0, "clip the gradient norm to this (0: off)", "optimization")
    channels_last: bool = _opt(False, "NHWC memory format (faster convolutions on tensor cores)", "optimization")
    compile: bool = _opt(False, "torch.compile the model", "optimization")
    monitor: str = _opt("auto", "metric that picks best.pt and drives plateau/early stopping (auto: the task's)",
                        "optimization", choices=_choices_monitor)
    early_stop: int = _opt(0, "stop after this many epochs without improvement (0: off)", "optimization")
    # config-file only
    predict: Any = _opt(None, "prediction to run after training (config file only)", cli=False)


@dataclass
class PredictOptions:
    """``python -m kernel.predict`` options; also the keys of a training config's ``predict:`` section.

    In a ``predict:`` section, ``batch_size``, ``device``, ``amp`` and ``workers`` not given take the
    training run's values, and relative outputs land in the run folder.
    """

    inputs: List[str] = _opt(None, "image files, folders, or a CSV of image ids", positional=True)
    checkpoint: str = _opt("", "RUN/best.pt, RUN/model.safetensors, or the RUN folder", required=True,
                           show_default=False)
    out: str = _opt("predictions.csv", "predictions CSV")
    topk: int = _opt(5, "labels per image in the predictions CSV")
    tta: bool = _opt(False, "average with the horizontally flipped image")
    batch_size: int = _opt(64, "images per batch")
    device: str = _opt("auto", "compute device", choices=DEVICES)
    amp: bool = _opt(False, "mixed precision (bf16/fp16 autocast)")
    workers: int = _opt(2, "DataLoader worker processes")
    image_dir: str = _opt("", "folder of a CSV input's images (default: the CSV's folder)")
    image_col: str = _opt("", "CSV column of image ids (default: first column)")
    submission: bool = _opt(False, "also write a Kaggle submission.csv beside --out (in a config: true or a file name)")
    submission_file: str = _opt("", "write the submission to this file (implies a submission)")
    id_col: str = _opt("", "submission id column (default: the training --image-col, or 'id')")
    target_col: str = _opt("", "submission target column (default: the training --label-col, or 'label')")
    sample_submission: str = _opt("", "CSV whose header and id order the submission copies (implies a submission)")


_FIELDS = {f.name: f for f in dataclasses.fields(Options)}
_PREDICT_FIELDS = {f.name: f for f in dataclasses.fields(PredictOptions)}
_NOT_SAVED = ("config", *ONE_SHOTS)


def build_parser() -> Any:
    """The ``kernel.train`` parser, generated from :class:`Options` (every default SUPPRESS)."""
    p = parser_from_dataclass(Options, "python -m kernel.train", "Train an image model (timm/torchvision).",
                              ("general", "data", "model", "optimization"))
    p.groups["general"].add_argument("--cuda", dest="device", action="store_const", const="cuda",
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
            data = json.loads(text) if text.strip() else None
        else:
            import yaml
            data = yaml.safe_load(text)
    except Exception as e:  # a syntax error in the user's file: say where, in one line
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"--config: cannot parse {path!r}: {first}") from e
    if data is None:  # an empty file trains on defaults: almost always the wrong file
        siblings = sorted(p.name for p in Path(path).parent.glob("*.y*ml") if p.name != Path(path).name
                          and p.stat().st_size)
        hint = f"; did you mean {siblings[0]!r}?" if siblings else "; write option: value lines into it"
        raise ConfigError(f"--config: {path!r} is empty{hint}")
    if not isinstance(data, dict):
        raise ConfigError(f"--config: {path!r} must hold a mapping of option: value, not {type(data).__name__}")
    return data


def _check_type(f: dataclasses.Field, value: Any, where: str) -> Any:
    """``value`` converted to the field's type, or a one-line ConfigError naming ``where``."""
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "")
    if kind.startswith("Optional["):
        if value is None:
            return None
        kind = kind[len("Optional["):-1]
    if kind == "bool" and not isinstance(value, bool):
        raise ConfigError(f"{where} must be true or false, got {value!r}")
    if kind == "int" and (isinstance(value, bool) or not isinstance(value, int)):
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{where} must be an integer, got {value!r}")
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        return float(value)
    if kind == "str" and not isinstance(value, str):
        return "" if value is None else str(value)
    return value


def check_values(values: Dict[str, Any], source: str, choices: bool = True) -> Dict[str, Any]:
    """Normalise keys and check names, types and (with ``choices``) choices of values from a file.

    ``choices=False`` skips the checks that import registries (torch): ``build.py`` stays fast.
    """
    out = {}
    for key, value in values.items():
        name = str(key).replace("-", "_")
        if name == "kaggle":  # build.py's section of kernel-metadata overrides; not a run option
            continue
        if name not in _FIELDS or name == "config":
            raise ConfigError(f"{source}: unknown option {key!r}{did_you_mean(name, list(_FIELDS))}")
        f = _FIELDS[name]
        flag = "--" + name.replace("_", "-")
        value = _check_type(f, value, f"{source}: {flag}")
        known = field_choices(f) if choices or not callable(f.metadata.get("choices")) else None
        if known and isinstance(value, str) and value not in known:
            raise ConfigError(f"{source}: {flag} {value!r} is not one of {', '.join(known)}"
                              f"{did_you_mean(value, known)}")
        out[name] = value
    return out


def _check_ranges(o: Options) -> None:
    for name in ("epochs", "batch_size", "accum_steps", "in_chans"):
        if getattr(o, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(o, name)}")
    for name in ("workers", "warmup_epochs", "warmup_steps", "early_stop", "unfreeze_at", "show_aug", "img_size",
                 "plot_every"):
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
        values.update(check_values(baked, "baked config"))
    config = flags.get("config") or values.get("config") or ""
    if config:
        values.update(check_values(load_config_file(config), f"--config {config}"))
    values.update(flags)
    opts = Options(**values)
    _check_ranges(opts)
    if opts.predict not in (None, False):  # a typo in the predict: section must fail now, not after training
        check_predict_spec(opts.predict)
    return opts


def check_predict_spec(spec: Any) -> Dict[str, Any]:
    """Check a config's ``predict:`` section -> only the keys it gives (ConfigError on anything wrong).

    A string or a list is shorthand for ``{inputs: ...}``. Keys it leaves out take the training run's
    values (batch_size, device, amp, workers) or :class:`PredictOptions`' defaults.
    """
    if isinstance(spec, (str, list)):
        spec = {"inputs": spec}
    if not isinstance(spec, dict):
        raise ConfigError(f"predict: expected a mapping such as {{inputs: [test/], submission: true}}, got {spec!r}")
    keys = [k for k in _PREDICT_FIELDS if k != "checkpoint"]
    out: Dict[str, Any] = {}
    for key, value in spec.items():
        name = str(key).replace("-", "_")
        if name not in keys:
            raise ConfigError(f"predict: unknown key {key!r}{did_you_mean(name, keys)} (keys: {', '.join(keys)})")
        f = _PREDICT_FIELDS[name]
        if name == "inputs":
            value = [value] if isinstance(value, str) else value
            if not isinstance(value, list) or not value or not all(isinstance(i, str) and i for i in value):
                raise ConfigError("predict: 'inputs' must be a path or a non-empty list of paths (files, folders, CSV)")
        elif name == "submission":
            if not isinstance(value, (bool, str)):
                raise ConfigError(f"predict: 'submission' must be true/false or a file name, got {value!r}")
        else:
            value = _check_type(f, value, f"predict: {name!r}")
            known = field_choices(f)
            if known and value not in known:
                raise ConfigError(f"predict: {name!r} must be one of {', '.join(known)}, got {value!r}")
        out[name] = value
    if "inputs" not in out:
        raise ConfigError("predict: 'inputs' is missing; give the images to predict, e.g. inputs: [my-comp/test]")
    check_predict_ranges(out)
    return out


def check_predict_ranges(values: Dict[str, Any]) -> None:
    """topk, batch_size >= 1 and workers >= 0, for the CLI and the config section alike."""
    for name, low in (("topk", 1), ("batch_size", 1), ("workers", 0)):
        if name in values and values[name] < low:
            raise ConfigError(f"predict: --{name.replace('_', '-')} must be >= {low}, got {values[name]}")


def options_to_dict(opts: Any) -> Dict[str, Any]:
    """The options as builtins, without the one-shot actions (safe for checkpoints and YAML)."""
    d = dataclasses.asdict(opts)
    return {k: v for k, v in d.items() if k not in _NOT_SAVED}


def save_config(opts: Options, path: str | os.PathLike) -> None:
    """Write the resolved options as YAML (a valid ``--config`` file for the next run)."""
    import yaml

    from .paths import atomic_write

    text = yaml.safe_dump(options_to_dict(opts), sort_keys=False)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
