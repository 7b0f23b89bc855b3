"""Checkpoints that hold only tensors and builtins, written atomically.

Everything here loads with ``torch.load(path, weights_only=True)``: numpy RNG state is
stored as a tensor plus ints, and options as a plain dict. Files are written to a
temporary name in the same folder, then moved with ``os.replace``, so a run killed
mid-write never leaves a truncated ``last.pt``.
"""
from __future__ import annotations

import json
import os
import random
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import torch
from torch import nn

__all__ = [
    "unwrap_model", "atomic_write", "save_checkpoint", "load_checkpoint", "rng_state",
    "set_rng_state", "export_safetensors",
]


def unwrap_model(model: nn.Module) -> nn.Module:
    """Strip DataParallel/DDP (``module.``) and torch.compile (``_orig_mod.``) wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        else:
            return model


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)``, then move the temp file over ``path`` in one step."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; outputs are meant to be read (and downloaded)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


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


def save_checkpoint(state: Dict[str, Any], path: str | os.PathLike) -> None:
    """Atomically ``torch.save`` a dict of tensors and builtins."""
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` (no arbitrary pickles)."""
    return torch.load(path, map_location=map_location, weights_only=True)


def export_safetensors(model: nn.Module, classes: List[str], path: str | os.PathLike,
                       metadata: Optional[Dict[str, str]] = None) -> None:
    """Write the unwrapped weights as ``model.safetensors`` and ``classes.json`` beside it."""
    from safetensors.torch import save_file

    sd = {k: v.detach().cpu().contiguous() for k, v in unwrap_model(model).state_dict().items()}
    meta = {"classes": json.dumps(classes), **(metadata or {})}
    atomic_write(path, lambda tmp: save_file(sd, tmp, metadata=meta))
    classes_path = Path(path).with_name("classes.json")
    atomic_write(classes_path, lambda tmp: Path(tmp).write_text(json.dumps(classes, indent=1)))
