"""Checkpoints: one schema, built by one function and read by one function; atomic writes.

Everything here loads with ``torch.load(path, weights_only=True)``: numpy RNG state is stored as
a tensor plus ints, and options as a plain dict. Files are written to a temporary name in the same
folder, then moved with ``os.replace``, so a run killed mid-write never leaves a truncated
``last.pt``. The schema (``FORMAT`` 3), every key a builtin or tensor:

    format, version          schema number; the bundle version that wrote it
    task, classes, meta      what was learned: task name, class names, task facts (e.g. multilabel)
    options                  the run's resolved options (a dict)
    model                    the unwrapped model's state_dict (no ``module.``/``_orig_mod.`` prefixes)
    optimizer, schedule,     training state for an exact resume (``scaler`` None without fp16); ``rng``
    scaler, rng, rng_ranks   this process's RNG states, ``rng_ranks`` every process's (a list, rank order)
    epoch, best_metric,      progress: last finished epoch, best monitored value and its epoch,
    best_epoch, history      one metrics row per epoch
    position, world_size     where training stands: {"epoch": the epoch in progress, "batch": its batches
                             done (0: at its start), "partial": each process's sums so far}; processes
    ema                      the moving average of the weights (``--ema``; None without): what prediction uses

``last.pt`` holds all of it. ``best.pt`` (:func:`prediction_checkpoint`) holds what prediction, fold ensembles,
out-of-fold predictions and ``--pretrained`` read: the same keys with the training state (``TRAINING_STATE``:
optimizer moments, schedule, scaler, RNG states) set to None, so it is the size of the weights (twice that with
``--ema``), not three times (AdamW keeps two moments per weight); it cannot be resumed from.

Formats 1 (kernel 0.1.0: no ``format``/``task``, ``multilabel`` at the top) and 2 (no ``position``) are
read as format 3, positioned at the end of their last epoch.
"""
from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch
from torch import nn

from .. import __version__
from ..paths import atomic_write, load_tensors
from ..errors import ConfigError

__all__ = ["RunIdentity", "RunProgress", "TrainingParts", "FORMAT", "TRAINING_STATE", "unwrap_model", "make_checkpoint", "prediction_checkpoint", "save_checkpoint",
           "load_checkpoint", "read_checkpoint", "load_trained", "rng_state", "set_rng_state", "export_safetensors", "write_classes_json"]

FORMAT = 3
_REQUIRED = ("model", "task", "classes", "meta", "options")
TRAINING_STATE = ("optimizer", "schedule", "scaler", "rng", "rng_ranks")  # what a resume needs, prediction not


def unwrap_model(model: nn.Module) -> nn.Module:
    """Strip DataParallel/DDP (``module.``) and torch.compile (``_orig_mod.``) wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        else:
            return model


def rng_state() -> Dict[str, Any]:
    """Torch (CPU and CUDA), numpy and Python RNG states as tensors and builtins."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": _to_lists(random.getstate()),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _to_lists(x: Any) -> Any:
    return [_to_lists(v) for v in x] if isinstance(x, (tuple, list)) else x


def _to_tuples(x: Any) -> Any:
    return tuple(_to_tuples(v) for v in x) if isinstance(x, list) else x


def set_rng_state(state: Dict[str, Any]) -> None:
    """Inverse of :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    random.setstate(_to_tuples(state["python"]))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tensor_bytes(x: Any) -> int:
    if torch.is_tensor(x):
        return x.numel() * x.element_size()
    if isinstance(x, dict):
        return sum(_tensor_bytes(v) for v in x.values())
    if isinstance(x, (list, tuple)):
        return sum(_tensor_bytes(v) for v in x)
    return 0


def save_checkpoint(state: Dict[str, Any], path: str | os.PathLike) -> None:
    """Atomically ``torch.save`` a dict of tensors and builtins (a full disk: one line, old file intact)."""
    atomic_write(path, lambda tmp: torch.save(state, tmp), size_hint=_tensor_bytes(state))


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """Load a file with ``torch.load(weights_only=True)`` (no arbitrary pickles); no schema check."""
    return torch.load(path, map_location=map_location, weights_only=True)


@dataclass
class RunIdentity:
    """What a checkpoint's weights are: the task, its classes and facts (``meta``), the run's options."""
    task: str
    classes: List[str]
    meta: Dict[str, Any]
    options: Dict[str, Any]


@dataclass
class RunProgress:
    """Where the run stands: the last finished epoch, the best, the history; ``position``: inside an epoch."""
    epoch: int
    best_metric: Optional[float]
    best_epoch: int
    history: List[Dict[str, Any]]
    position: Optional[Dict[str, Any]] = None


@dataclass
class TrainingParts:
    """The training state an exact resume needs (None: left out); ``rng_ranks``: every process's RNG state."""
    optimizer: Any = None
    schedule: Any = None
    scaler: Any = None
    rng_ranks: Optional[List[Dict[str, Any]]] = None


def make_checkpoint(model: nn.Module, identity: RunIdentity, progress: RunProgress,
                    training: Optional[TrainingParts] = None, ema: Optional[nn.Module] = None) -> Dict[str, Any]:
    """The checkpoint dict of the schema above (with the current RNG states), from the unwrapped model;
    ``ema``: the module holding the weights' moving average."""
    t = training or TrainingParts()
    rng = rng_state()
    ranks = t.rng_ranks or [rng]
    return {"format": FORMAT, "version": __version__, "task": identity.task, "classes": list(identity.classes),
            "meta": dict(identity.meta), "options": dict(identity.options), "model": unwrap_model(model).state_dict(),
            "optimizer": t.optimizer.state_dict() if t.optimizer is not None else None,
            "schedule": t.schedule.state_dict() if t.schedule is not None else None,
            "scaler": t.scaler.state_dict() if t.scaler is not None else None, "rng": rng, "rng_ranks": ranks,
            "epoch": int(progress.epoch), "best_metric": progress.best_metric, "best_epoch": int(progress.best_epoch),
            "history": list(progress.history),
            "position": dict(progress.position or {"epoch": int(progress.epoch), "batch": 0, "partial": None}),
            "world_size": len(ranks), "ema": ema.state_dict() if ema is not None else None}


def prediction_checkpoint(ckpt: Dict[str, Any]) -> Dict[str, Any]:
    """``best.pt``'s content: the checkpoint ``ckpt`` (of the schema above) less its training state."""
    return {**ckpt, **{k: None for k in TRAINING_STATE}}


def read_checkpoint(path: str | os.PathLike, option: str = "checkpoint") -> Dict[str, Any]:
    """Load and check a checkpoint of this bundle -> the dict of the schema above (format 1 upgraded).

    Any problem is a one-line ConfigError naming ``--option`` and the file; for ``option`` ``"resume"`` a file
    without the training state (a ``best.pt``) is one too.
    """
    where = f"--{option}: {str(path)!r}"
    ckpt = load_tensors(path, option)
    if isinstance(ckpt, dict) and "format" not in ckpt and "model" in ckpt and "classes" in ckpt:
        ckpt = {**ckpt, "format": 2, "task": "classify", "meta": {"multilabel": bool(ckpt.get("multilabel"))}}
    if isinstance(ckpt, dict) and ckpt.get("format") == 2:
        ckpt = {**ckpt, "format": FORMAT, "position": {"epoch": int(ckpt.get("epoch", 0)), "batch": 0,
                                                        "partial": None},
                "rng_ranks": [ckpt["rng"]] if "rng" in ckpt else None, "world_size": 1}
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in _REQUIRED):
        raise ConfigError(f"{where} is not a kernel.train checkpoint (it has no model/task/classes); give a best.pt "
                          "or last.pt from a run folder")
    if not isinstance(ckpt["format"], int) or ckpt["format"] > FORMAT:
        raise ConfigError(f"{where} has checkpoint format {ckpt['format']!r}, newer than this bundle's {FORMAT} "
                          f"(kernel {__version__}); update the bundle")
    if option == "resume" and ckpt.get("optimizer") is None:
        raise ConfigError(f"{where} holds the weights only, not the training state (a best.pt); resume from the "
                          "run's last.pt (or --resume auto)")
    return ckpt


def export_safetensors(model: nn.Module | Dict[str, torch.Tensor], classes: List[str], path: str | os.PathLike, *,
                       task: str, meta: Dict[str, Any], model_name: str, in_chans: int) -> None:
    """Write the unwrapped weights (of ``model``, or the state dict given) as ``model.safetensors`` (what
    prediction needs in its metadata) and ``classes.json`` beside it."""
    from safetensors.torch import save_file

    state = model if isinstance(model, dict) else unwrap_model(model).state_dict()
    sd = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    info = {"classes": json.dumps(list(classes)), "task": task, "meta": json.dumps(meta), "model": model_name,
            "in_chans": str(in_chans)}
    atomic_write(path, lambda tmp: save_file(sd, tmp, metadata=info))
    write_classes_json(classes, Path(path).with_name("classes.json"))


def write_classes_json(classes: List[str], path: str | os.PathLike) -> None:
    """``classes.json``: the class names in index order, a JSON list."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(list(classes), indent=1)))


def load_trained(path: str | os.PathLike) -> Dict[str, Any]:
    """What prediction needs from ``best.pt``/``last.pt`` or ``model.safetensors`` (+ its sidecar files).

    Returns {"model": state_dict, "task", "classes", "meta", "options"}: the EMA weights when the run kept
    them (``--ema``); a safetensors file takes its classes from ``classes.json`` (or its metadata) and its
    options from ``config.yaml`` beside it.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        ckpt = read_checkpoint(path)
        out = {k: ckpt[k] for k in ("task", "classes", "meta", "options")}
        return {**out, "model": ckpt["ema"] if ckpt.get("ema") is not None else ckpt["model"]}
    from safetensors import safe_open

    state = load_tensors(path, "checkpoint")  # one-line errors for a cut or foreign file
    with safe_open(str(path), "pt") as fh:
        info = fh.metadata() or {}
    sidecar = path.with_name("classes.json")
    classes = json.loads(sidecar.read_text(encoding="utf-8")) if sidecar.is_file() else \
        json.loads(info.get("classes", "null") or "null")
    if not classes:
        raise ConfigError(f"--checkpoint: no classes.json beside {str(path)!r} and none in its metadata")
    cfg = path.with_name("config.yaml")
    if cfg.is_file():
        import yaml
        options = yaml.safe_load(cfg.read_text(encoding="utf-8")) or {}
    else:
        options = {"model": info.get("model", ""), "in_chans": int(info.get("in_chans", 3))}
    meta = json.loads(info["meta"]) if "meta" in info else {"multilabel": info.get("multilabel") == "true"}
    return {"model": state, "task": info.get("task", "classify"), "classes": list(classes),
            "meta": meta, "options": options, "has_config": cfg.is_file()}
