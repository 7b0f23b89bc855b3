"""Thin calls into albumentations: importing it offline, its serialized pipelines, seeding and calling a Compose.

albumentations draws from its own numpy/Python generators, not torch's. So that the sample seed alone
decides the augmentation (any worker count, any resume point, as for the other backends), every call
takes one draw from torch's RNG (which :class:`kernel.data.TransformedDataset` seeds per sample) and
reseeds the Compose's generators from it; all ops share those two generators, as imgaug's share one.
Masks are moved by albumentations itself, with nearest interpolation.

The import is inside the functions: nothing is imported at import time of this module, and
``NO_ALBUMENTATIONS_UPDATE=1`` is set first (its import otherwise asks the package index for a newer
release, which stalls an offline kernel). Kaggle ships albumentations (or AlbumentationsX, which
installs under the same import name): whichever is installed is used, and named once in the log.
"""
from __future__ import annotations

import importlib
import json
import logging
import os
import random
from pathlib import Path
from typing import Any, List, Optional, Tuple

import numpy as np
import torch

from .backends import first_time, warn_once
from ..errors import ConfigError
from ..registry import did_you_mean

__all__ = ["HOW_TO_INSTALL", "import_albumentations", "albumentations_available", "albumentations_distribution",
           "is_serialized", "serialized_dict", "serialized_names", "albu_state", "albu_call"]

HOW_TO_INSTALL = ("install it with `pip install albumentations==2.0.8` (the last MIT-licensed release; Kaggle's "
                  "image ships it), or use --aug-backend imgaug or torchvision")
_log = logging.getLogger(__name__.rpartition(".")[0] + ".augment")  # the augmentation modules' one logger name


def import_albumentations() -> Any:
    """Import albumentations without its update check; return the module. ImportError (with
    :data:`HOW_TO_INSTALL`) when it is not importable."""
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # before the import: it checks for updates online
    try:
        module = importlib.import_module("albumentations")
    except Exception as e:  # ImportError, or a broken install (e.g. a clashing OpenCV)
        raise ImportError(f"albumentations is not importable ({type(e).__name__}: {e}); {HOW_TO_INSTALL}") from e
    if first_time("albumentations_version"):
        dist, version = albumentations_distribution()
        _log.info("augmentation: albumentations backend from %s %s", dist, version or getattr(module, "__version__", "?"))
    return module


def albumentations_available() -> bool:
    """True when :func:`import_albumentations` succeeds."""
    try:
        import_albumentations()
        return True
    except ImportError:
        return False


def albumentations_distribution() -> Tuple[str, str]:
    """(distribution, version) that provides ``import albumentations``: ``albumentations`` (MIT, up to 2.0.8)
    or ``albumentationsx`` (its AGPL-3.0 successor, same import name); ("unknown", "") when neither is
    recorded (e.g. a vendored copy on sys.path)."""
    from importlib import metadata

    for name in ("albumentations", "albumentationsx"):
        try:
            return name, metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return "unknown", ""


# -- serialized pipelines (A.to_dict / A.save) --------------------------------------------------------------
def is_serialized(spec: Any) -> bool:
    """True for albumentations' own serialized form: ``A.to_dict(compose)`` (``{"__version__", "transform"}``),
    a bare ``{"__class_fullname__": ...}`` transform, or the path of a ``.yaml``/``.json`` file ``A.save`` wrote."""
    if isinstance(spec, dict):
        body = spec.get("transform", spec)
        return isinstance(body, dict) and "__class_fullname__" in body
    return isinstance(spec, (str, Path)) and str(spec).lower().endswith((".yaml", ".yml", ".json")) \
        and Path(spec).is_file()


def serialized_dict(spec: Any) -> dict:
    """The ``A.to_dict`` form of a serialized spec (a file is read here: the pipeline keeps plain data)."""
    if isinstance(spec, dict):
        return spec if "transform" in spec else {"__version__": "", "transform": spec}
    text = Path(spec).read_text(encoding="utf-8")
    if str(spec).lower().endswith(".json"):
        data = json.loads(text)
    else:
        import yaml

        data = yaml.safe_load(text)
    if not is_serialized(data if isinstance(data, dict) else None):
        raise ConfigError(f"augmentation: {str(spec)!r} is not a pipeline saved by albumentations (A.save)")
    return serialized_dict(data)


def serialized_names(spec: Any) -> List[str]:
    """Every ``__class_fullname__`` in a serialized pipeline, in order (the outer Compose first), short names."""
    names: List[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if "__class_fullname__" in node:
                names.append(str(node["__class_fullname__"]).rpartition(".")[2])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(serialized_dict(spec)["transform"])
    return names


def check_serialized(spec: Any, automatic: Tuple[str, ...]) -> None:
    """ConfigError for ops the pipeline appends itself and for names albumentations does not know."""
    A = import_albumentations()
    from albumentations.core.serialization import SERIALIZABLE_REGISTRY

    known = sorted({k.rpartition(".")[2] for k in SERIALIZABLE_REGISTRY})
    for n in serialized_names(spec):
        if n in automatic:
            raise ConfigError(f"augmentation: {n!r} is added automatically at the end of every pipeline "
                              "(to tensor + normalize with the model's mean/std); remove it from the saved pipeline")
        if n not in known and not hasattr(A, n):
            raise ConfigError(f"unknown albumentations transform {n!r} in the saved pipeline."
                              f"{did_you_mean(n, known, sentence=True)} Known: {', '.join(known)}")


def load_serialized(spec: Any) -> Any:
    """The Compose of a serialized pipeline (``A.from_dict``); constructor errors become ConfigError."""
    A = import_albumentations()
    try:
        return A.from_dict(serialized_dict(spec))
    except Exception as e:
        raise ConfigError(f"augmentation: albumentations could not load the saved pipeline: "
                          f"{type(e).__name__}: {e}") from None


# -- calling ---------------------------------------------------------------------------------------------
def albu_state(built: Any) -> dict:
    """One Compose (``built``: a list of ops, or a loaded Compose) with masks at nearest interpolation."""
    A = import_albumentations()
    import cv2

    if not isinstance(built, A.Compose):  # an op list, or a saved OneOf/Sequential at the top
        built = A.Compose(built if isinstance(built, list) else [built], mask_interpolation=cv2.INTER_NEAREST)
    else:
        built.set_mask_interpolation(cv2.INTER_NEAREST)
    # the pipeline checks shapes itself (_prepare); albumentations' per-call argument checks cost time
    built.is_check_shapes = False
    return {"pipe": built}


def albu_call(state: dict, image: np.ndarray, mask: Optional[np.ndarray]) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """Augment one (H, W, C) uint8 image (+ (H, W) int32 mask), seeded by one draw from torch's RNG."""
    seed = int(torch.randint(0, 2 ** 62, ()))
    pipe = state["pipe"]
    # fresh generators per sample: the sample seed alone decides the draws (no state carried between samples)
    pipe.set_random_state(np.random.Generator(np.random.PCG64(seed)), random.Random(seed))
    if mask is None:
        out = pipe(image=image)
        return _channels(out["image"], image), None
    out = pipe(image=image, mask=mask)
    return _channels(out["image"], image), out["mask"]


def _channels(out: np.ndarray, like: np.ndarray) -> np.ndarray:
    """(H, W, C) as given: some OpenCV paths drop a single channel's axis."""
    return out[..., None] if out.ndim == 2 and like.ndim == 3 else out


def warn_fallback(missing: List[str], used: str) -> None:
    """The one warning of ``--aug-backend auto`` when the faster libraries are not importable."""
    names = " and ".join(missing)
    warn_once("fallback", f"augmentation: {names} {'is' if len(missing) == 1 else 'are'} not importable, using the "
                          f"{used} backend; {'it is' if len(missing) == 1 else 'they are'} faster: `pip install "
                          f"{' '.join(missing)}`, or attach the kernel code dataset that vendors imgaug (Kaggle)")
