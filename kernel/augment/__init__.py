"""Image (+ mask) augmentation: imgaug, torchvision v2 or albumentations pipelines, seeded per sample, picklable.

``build_transform(...)`` returns a callable ``(image (H, W, C) uint8, mask (H, W) int | None) ->
(FloatTensor (C, S, S) normalized, LongTensor (S, S) | None)``. Every pipeline is

    resize shorter side to floor(S / crop_pct)  ->  [train: augmentation ops]  ->
    (resize up if needed +) center crop S  ->  to float + normalize

Images stay uint8 until the last step. Geometric ops move the mask with the image (nearest
interpolation, fill 0); photometric ops touch the image only. Randomness comes from torch's RNG
(one draw per sample), so results repeat from torch's RNG state (num_workers=0, exact resume) and
differ across DataLoader workers and epochs (PyTorch seeds each worker's torch RNG).

This module is the public API: it checks the arguments, resolves the backend, seeds workers and
re-exports the rest. Below it: :mod:`kernel.augment.pipeline` (the transform), :mod:`kernel.augment.backends`
and :mod:`kernel.augment.albu` (library calls), :mod:`kernel.augment.ops` and :mod:`kernel.augment.albu_ops`
(op registries), :mod:`kernel.augment.presets`,
:mod:`kernel.augment.noise` and :mod:`kernel.augment.grid` (the preview PNG).
"""
from __future__ import annotations

import numbers
import random
import sys
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import numpy as np
import torch

from . import imgaug_compat
from .albu import (albumentations_available, check_serialized, import_albumentations, is_serialized, serialized_dict,
                   warn_fallback)
from .albu_ops import ALBU_AUTOMATIC
from .backends import first_time
from .grid import aug_figure, aug_tile, save_aug_grid
from .ops import REGISTRIES, check_names, op_names
from .pipeline import INTERP, AugmentTransform, augment_batch, smoke_test
from .presets import AUTO_ORDER, BACKENDS, PRESETS, preset_ops
from ..data.images import DEFAULT_DATA_CONFIG
from ..errors import ConfigError
from ..registry import Registry

__all__ = ["PRESETS", "BACKENDS", "AUTO_ORDER", "resolve_backend", "build_transform", "preset_ops", "AugmentTransform", "augment_batch",
           "seed_worker", "aug_tile", "aug_figure", "save_aug_grid"]



def resolve_backend(spec: Any, backend: str = "auto") -> str:
    """The library :func:`build_transform` trains ``spec`` with: ``backend`` itself, or for ``auto`` the first
    of :data:`AUTO_ORDER` that is importable and (for a custom op list) knows every name. Runs record it
    (options, checkpoint), so a resume elsewhere keeps the library. ``auto``'s preset fallback is warned once."""
    _known("augmentation backend (--aug-backend)", backend, BACKENDS)
    if backend != "auto" or spec is None or (isinstance(spec, str) and spec == "none"):
        return backend  # nothing to augment under auto: no library to pick (or import)
    if is_serialized(spec):
        return "albumentations"
    if spec is None or isinstance(spec, str):
        _known("augmentation preset (--aug; or give a list of ops in the config file)", spec, PRESETS)
        chosen = next(b for b in AUTO_ORDER if _AVAILABLE[b]())  # torchvision, last, is always there
        missing = list(AUTO_ORDER[:AUTO_ORDER.index(chosen)])
        if missing:
            warn_fallback(missing, chosen)
        return chosen
    names = op_names(spec)
    knows = [b for b in AUTO_ORDER if all(n in REGISTRIES[b] for n in names)]
    if knows:  # none of them importable: the first, whose explicit import error says how to install it
        return next((b for b in knows if _AVAILABLE[b]()), knows[0])
    # report the unknown names against the registry that knows most of the list (ties: AUTO_ORDER's first)
    return max(AUTO_ORDER, key=lambda b: sum(n in REGISTRIES[b] for n in names))


_AVAILABLE: Dict[str, Callable[[], bool]] = {"imgaug": imgaug_compat.imgaug_available,
                                             "albumentations": albumentations_available, "torchvision": lambda: True}


def _resolve_backend(spec: Any, backend: str, train: bool) -> Tuple[Any, str, bool]:
    """-> (op list or saved albumentations pipeline, concrete backend or "none", is_custom)."""
    _known("augmentation backend (--aug-backend)", backend, BACKENDS)
    if is_serialized(spec):  # albumentations' own A.to_dict / A.save form
        if backend not in ("auto", "albumentations"):
            raise ConfigError(f"augmentation: a pipeline saved by albumentations needs --aug-backend albumentations "
                              f"(or auto), not {backend}")
        spec = serialized_dict(spec)  # plain data from here on (a file is read once, here)
        if not train:
            return spec, "none", True
        _require("albumentations")
        check_serialized(spec, ALBU_AUTOMATIC)
        return spec, "albumentations", True
    if spec is None or isinstance(spec, str):
        preset = _known("augmentation preset (--aug; or give a list of ops in the config file)", spec or "none",
                        PRESETS)
        if not train or preset == "none":
            return [], "none", False
        backend = resolve_backend(preset, backend)
        _require(backend)
        return preset_ops(preset, backend), backend, False
    names = op_names(spec)
    backend = resolve_backend(spec, backend)
    check_names(names, backend)
    if not train or not names:
        return list(spec), "none", True
    _require(backend)
    return list(spec), backend, True


def _known(kind: str, name: Any, names: Sequence[str]) -> str:
    reg: Registry[str] = Registry(kind)
    for n in names:
        reg.register(n, n)
    return reg.canonical(str(name))  # ConfigError with the known names and the closest match


def _require(backend: str) -> None:
    importer = {"imgaug": imgaug_compat.import_imgaug, "albumentations": import_albumentations}.get(backend)
    if importer is not None:
        try:
            importer()
        except ImportError as e:
            raise ConfigError(f"--aug-backend {backend}: {e}") from None


def _cv2_sequential() -> None:
    """Run OpenCV sequentially in this process, before it ever starts its thread pool.

    A DataLoader forks its workers from this process. A child that inherits a started OpenCV
    pool hangs for ever in pthread_cond_destroy as soon as it touches the pool (setNumThreads
    included; OpenCV 5.0 pthreads backend). With no pool there is nothing to inherit, and N
    workers x all-core pools cannot oversubscribe the CPU either. albumentations does the same.
    """
    if first_time("cv2_threads"):
        import cv2

        cv2.setNumThreads(0)


def build_transform(preset_or_ops: Any, *, train: bool, backend: str = "auto", img_size: Any,
                    mean: Sequence[float], std: Sequence[float], interpolation: Optional[str] = None,
                    crop_pct: Optional[float] = None, in_chans: int = 3, fit: str = "crop") -> AugmentTransform:
    """Build the (image, mask) -> (tensor (C, H, W), mask (H, W) | None) pipeline; see the module doc.

    ``preset_or_ops``: a name in :data:`PRESETS` or a YAML-style op list (see :mod:`kernel.augment.ops`).
    ``train=False`` ignores it: resize + center crop + normalize only. ``fit="resize"`` (segmentation)
    resizes the whole image to ``img_size`` = (H, W) instead of cropping. ``interpolation`` and
    ``crop_pct`` default to :data:`kernel.data.DEFAULT_DATA_CONFIG`'s. Config problems raise
    ConfigError here (the pipeline is smoke-tested once), not later inside a DataLoader worker.
    """
    _cv2_sequential()
    interpolation = DEFAULT_DATA_CONFIG["interpolation"] if interpolation is None else interpolation
    crop_pct = DEFAULT_DATA_CONFIG["crop_pct"] if crop_pct is None else crop_pct
    interpolation = str(interpolation).lower()
    if interpolation not in INTERP:
        raise ConfigError(f"interpolation {interpolation!r} unknown; use one of {', '.join(INTERP)}")
    sizes = list(img_size) if fit == "resize" else [img_size]
    if fit not in ("crop", "resize") or not all(isinstance(v, numbers.Integral) and v > 0 for v in sizes) \
            or len(sizes) not in (1, 2) or (fit == "resize" and len(sizes) != 2) or not 0 < crop_pct <= 4:
        raise ConfigError(f"augmentation: need fit crop (img_size S > 0) or resize (img_size (H, W)) and "
                          f"0 < crop_pct, got {fit!r}, {img_size!r}, {crop_pct!r}")
    if in_chans < 1:
        raise ConfigError(f"--in-chans must be >= 1, got {in_chans}")
    ops, concrete, custom = _resolve_backend(preset_or_ops, backend, train)
    t = AugmentTransform(ops, backend=concrete, train=train, img_size=img_size, mean=mean, std=std,
                         interpolation=interpolation, crop_pct=crop_pct, in_chans=in_chans, warn_skips=custom, fit=fit)
    if concrete != "none":
        smoke_test(t)
    return t


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: seed numpy, random, imgaug, albumentations and cv2 from torch's per-worker seed.

    PyTorch already seeds each worker's torch RNG with base_seed + worker_id (base_seed drawn from
    the loader's generator, so new per epoch). Our pipelines draw from torch, so they need nothing
    more; this covers user code using numpy/random/imgaug globals and imgaug augmenters that own an
    RNG (forked workers would otherwise all inherit the same state).
    """
    seed = torch.initial_seed() % 2 ** 32
    random.seed(seed)
    np.random.seed(seed)
    # OpenCV threads are not touched here: build_transform already made the parent sequential
    # (see _cv2_sequential), and touching an inherited pool in a forked child can hang.
    cv2 = sys.modules.get("cv2")
    if cv2 is not None:
        cv2.setRNGSeed(seed % 2 ** 31)
    iarandom = sys.modules.get("imgaug.random")
    if iarandom is not None:
        iarandom.seed(seed)
    info = torch.utils.data.get_worker_info()
    if info is not None:
        _reseed_owned(info.dataset, seed, set(), 0)


def _reseed_owned(obj: Any, seed: int, seen: set, depth: int) -> None:
    """Reseed imgaug augmenters and albumentations Composes reachable from a dataset (transform, transforms,
    dataset(s), Compose)."""
    if obj is None or id(obj) in seen or depth > 5 or isinstance(obj, (str, bytes, np.ndarray, torch.Tensor)):
        return
    seen.add(id(obj))
    if hasattr(obj, "seed_") and hasattr(obj, "get_children_lists"):  # an imgaug Augmenter
        obj.seed_((seed + 7919 * len(seen)) % 2 ** 32)  # distinct streams when a dataset holds several
        return
    if hasattr(obj, "set_random_state") and hasattr(obj, "transforms"):  # an albumentations Compose
        # one pair of generators shared by its ops (its own set_random_seed gives every op the same stream)
        s = (seed + 7919 * len(seen)) % 2 ** 32
        obj.set_random_state(np.random.default_rng(s), random.Random(s))
        return
    if isinstance(obj, (list, tuple)):
        for item in obj[:64]:
            _reseed_owned(item, seed, seen, depth + 1)
        return
    for attr in ("transform", "transforms", "target_transform", "augment", "augmenter", "aug", "seq",
                 "dataset", "datasets"):
        child = getattr(obj, attr, None) if not isinstance(obj, AugmentTransform) else None
        if child is not None and not callable(getattr(type(obj), attr, None)):
            _reseed_owned(child, seed, seen, depth + 1)
