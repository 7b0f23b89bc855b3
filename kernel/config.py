"""Options from the command line and config files: parsers, checks, precedence, ``config.yaml``.

Precedence, lowest first: dataclass defaults (:mod:`kernel.options`) < baked config (``build.py``) <
``--config`` file (YAML or JSON) < flags. Values from files are checked with the same rules as flags;
the resolved options are saved beside the outputs as ``config.yaml``, a valid ``--config`` file for
the next run. Importing this module imports no torch (``build.py`` checks configs with it).
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

from .cli import parser_from_dataclass
from .errors import ConfigError
from .options import ONE_SHOT_FLAGS, FromRegistry, InferOptions, Options, PredictOptions
from .registry import did_you_mean, is_user_spec

__all__ = ["field_choices", "build_parser", "parse_options", "parse_img_size", "parse_count", "load_config_file", "check_values", "save_config", "options_to_dict",
           "check_predict_spec", "check_predict_ranges"]

_FIELDS = {f.name: f for f in dataclasses.fields(Options)}
_PREDICT_FIELDS = {f.name: f for f in dataclasses.fields(PredictOptions)}
_NOT_SAVED = ("config", *ONE_SHOT_FLAGS)


# The registries behind FromRegistry choices, imported only when asked: build.py checks configs without torch.
def _tasks() -> List[str]:
    from .tasks import TASKS
    return TASKS.names()


def _monitors() -> List[str]:
    from .tasks import monitor_names
    return monitor_names()


def _seg_modes() -> List[str]:
    from .tasks.segment.data import MODES
    return list(MODES)


def _bad_images() -> List[str]:
    from .data.guard import BAD_IMAGES
    return list(BAD_IMAGES)


def _aug_presets() -> List[str]:
    from .augment.presets import PRESETS
    return list(PRESETS)


def _aug_backends() -> List[str]:
    from .augment.presets import BACKENDS
    return list(BACKENDS)


def _seg_archs() -> List[str]:
    from .models.segmentation import SEG_ARCHS
    return SEG_ARCHS.names()


def _optimizers() -> List[str]:
    from .engine.optim import OPTIMIZERS
    return OPTIMIZERS.names()


def _schedulers() -> List[str]:
    from .schedule import SCHEDULERS
    return SCHEDULERS.names()


REGISTRY_CHOICES: Dict[str, Callable[[], List[str]]] = {
    "tasks": _tasks, "monitors": _monitors, "seg_modes": _seg_modes, "bad_images": _bad_images,
    "aug_presets": _aug_presets, "aug_backends": _aug_backends, "seg_archs": _seg_archs,
    "optimizers": _optimizers, "schedulers": _schedulers}


def field_choices(f: dataclasses.Field) -> Optional[List[str]]:
    """A field's choices: its fixed tuple, or the names of the registry it names (:class:`FromRegistry`)."""
    c = f.metadata.get("choices")
    if isinstance(c, FromRegistry):
        return [*c.first, *REGISTRY_CHOICES[c.name]()]
    return list(c) if c else None


def build_parser() -> Any:
    """The ``kernel.train`` parser, generated from :class:`Options` (every default SUPPRESS)."""
    p = parser_from_dataclass(Options, "python -m kernel.train", "Train an image model (timm/torchvision).",
                              ("general", "data", "model", "optimization", "competing"), field_choices)
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
        known = field_choices(f) if choices or not isinstance(f.metadata.get("choices"), FromRegistry) else None
        if known and isinstance(value, str) and value not in known and not (f.metadata.get("user_code")
                                                                             and is_user_spec(value)):
            raise ConfigError(f"{source}: {flag} {value!r} is not one of {', '.join(known)}"
                              f"{did_you_mean(value, known)}")
        out[name] = value
    return out


def parse_img_size(value: Any) -> Any:
    """``--img-size``: 0 (the model's), S, or H W: from flags (strings), YAML (int, list) or ``"HxW"``.

    Returns an int (square, or 0) or an [H, W] list; anything else is a one-line ConfigError.
    """
    items = value if isinstance(value, (list, tuple)) else [value]
    parts: List[Any] = []
    for item in items:
        parts += str(item).lower().replace("x", " ").split() if isinstance(item, str) else [item]
    try:
        sizes = [int(p) for p in parts if not isinstance(p, bool)]
    except (TypeError, ValueError):
        sizes = []
    if len(sizes) != len(parts) or len(sizes) not in (1, 2) or any(v < 0 for v in sizes):
        raise ConfigError(f"--img-size {value!r}: give one size S (e.g. 224) or height and width (256 512, or "
                          "256x512)")
    return sizes[0] if len(sizes) == 1 or sizes[0] == sizes[1] else sizes


def parse_count(value: Any, option: str, minimum: int) -> Any:
    """``auto`` or a whole number >= ``minimum`` (from a flag's string or a file's int)."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    try:
        n = int(str(value).strip())
    except ValueError:
        raise ConfigError(f"--{option} {value!r}: give a whole number or auto") from None
    if n < minimum or isinstance(value, bool):
        raise ConfigError(f"--{option} must be >= {minimum} (or auto), got {value!r}")
    return n


def _check_ranges(o: Options) -> None:
    for name in ("epochs", "batch_size", "accum_steps", "in_chans"):
        if getattr(o, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(o, name)}")
    for name in ("warmup_epochs", "warmup_steps", "early_stop", "unfreeze_at", "show_aug", "plot_every"):
        if getattr(o, name) < 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(o, name)}")
    if not 0.0 <= o.val_split < 1.0:
        raise ConfigError(f"--val-split must be in [0, 1), got {o.val_split}")
    if not 0.0 < o.threshold < 1.0:
        raise ConfigError(f"--threshold must be a probability in (0, 1), got {o.threshold}")
    if not 0.0 <= o.bad_images_limit <= 1.0:
        raise ConfigError(f"--bad-images-limit must be a fraction in [0, 1], got {o.bad_images_limit}")
    if o.bad_images_floor < 0:
        raise ConfigError(f"--bad-images-floor must be a number of files >= 0, got {o.bad_images_floor}")
    _check_competing(o)
    if o.lr <= 0:
        raise ConfigError(f"--lr must be > 0, got {o.lr}")
    if not re.fullmatch(r"[\w.\-]+", o.name):
        raise ConfigError(f"--name {o.name!r}: use letters, digits, '.', '-' and '_' only")


def _check_competing(o: Options) -> None:
    """--folds/--fold and the EMA, Mixup and LR-finder values."""
    if o.folds == 1 or o.folds < 0:
        raise ConfigError(f"--folds {o.folds}: use 2 or more folds (0: no cross-validation)")
    if not o.folds and (o.folds_file or o.group_col):
        raise ConfigError(f"--{'folds-file' if o.folds_file else 'group-col'} splits folds: give --folds K too")
    fold = str(o.fold).strip().lower()
    if fold != "all" and not (fold.isdigit() and (not o.folds or int(fold) < o.folds)):
        raise ConfigError(f"--fold {o.fold!r}: give a fold number 0..{max(o.folds, 2) - 1} or all")
    o.fold = fold
    if not 0.0 <= o.ema < 1.0:
        raise ConfigError(f"--ema must be a decay in [0, 1) such as 0.999 (0: off), got {o.ema}")
    for name in ("mixup", "cutmix"):
        if getattr(o, name) < 0:
            raise ConfigError(f"--{name} must be an alpha >= 0 (0: off), got {getattr(o, name)}")
    for name in ("mixup_prob", "mixup_switch_prob"):
        if not 0.0 <= getattr(o, name) <= 1.0:
            raise ConfigError(f"--{name.replace('_', '-')} must be a probability in [0, 1], got {getattr(o, name)}")
    if not 0.0 <= o.label_smoothing < 1.0:
        raise ConfigError(f"--label-smoothing must be in [0, 1), got {o.label_smoothing}")
    if o.find_lr_steps < 2:
        raise ConfigError(f"--find-lr-steps must be >= 2, got {o.find_lr_steps}")


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
    opts.img_size = parse_img_size(opts.img_size)
    opts.workers = parse_count(opts.workers, "workers", minimum=0)
    opts.devices = parse_count(opts.devices, "devices", minimum=1)
    _check_ranges(opts)
    if opts.predict not in (None, False):  # a typo in the predict: section must fail now, not after training
        check_predict_spec(opts.predict)
    return opts


def check_predict_spec(spec: Any, need_inputs: bool = True) -> Dict[str, Any]:
    """Check a config's ``predict:`` section -> only the keys it gives (ConfigError on anything wrong).

    A string or a list is shorthand for ``{inputs: ...}``. Keys it leaves out take the training run's
    values (batch_size, device, amp, workers) or :class:`PredictOptions`' defaults. ``need_inputs`` False: the
    inference kernel's section, whose inputs default to the competition's test folder.
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
    if "inputs" not in out and need_inputs:
        raise ConfigError("predict: 'inputs' is missing; give the images to predict, e.g. inputs: [my-comp/test]")
    check_predict_ranges(out)
    return out


def check_infer_config(config: Dict[str, Any], where: str = "inference config") -> Dict[str, Any]:
    """The inference kernel's config -> its keys (:class:`InferOptions`' fields, underscores), checked: unknown keys
    get the closest match, ``predict:`` is checked as a predict section whose inputs may be left out."""
    fields = {f.name: f for f in dataclasses.fields(InferOptions)}
    out: Dict[str, Any] = {}
    for key, value in config.items():
        name = str(key).replace("-", "_")
        if name not in fields:
            raise ConfigError(f"{where}: unknown key {key!r}{did_you_mean(name, list(fields))} (keys: "
                              f"{', '.join(fields)}, and kaggle: for build.py)")
        if name == "predict":
            out[name] = check_predict_spec(value if value is not None else {}, need_inputs=False)
            if "checkpoint" in out[name] or "folds" in out[name]:
                raise ConfigError(f"{where}: predict: the run is the top-level checkpoint: key (folds are chosen "
                                  "by the time budget)")
        else:
            out[name] = _check_type(fields[name], value, f"{where}: {name!r}")
    return out


def check_predict_ranges(values: Dict[str, Any]) -> None:
    """topk, batch_size >= 1 and workers >= 0, for the CLI and the config section alike."""
    for name, low in (("topk", 1), ("batch_size", 1), ("workers", 0)):
        if values.get(name) is not None and values[name] < low:
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
