"""Image (+ mask) augmentation: imgaug or torchvision v2 pipelines, seeded per worker, picklable.

``build_transform(...)`` returns a callable ``(image (H, W, C) uint8, mask (H, W) int | None) ->
(FloatTensor (C, S, S) normalized, LongTensor (S, S) | None)``. Every pipeline is

    resize shorter side to floor(S / crop_pct)  ->  [train: augmentation ops]  ->
    (resize up if needed +) center crop S  ->  to float + normalize

Images stay uint8 until the last step. Geometric ops move the mask with the image (nearest
interpolation, fill 0); photometric ops touch the image only. Randomness comes from torch's RNG
(one draw per sample), so results repeat from torch's RNG state (num_workers=0, exact resume) and
differ across DataLoader workers and epochs (PyTorch seeds each worker's torch RNG).
"""
from __future__ import annotations

import logging
import math
import numbers
import os
import random
import sys
import warnings
from typing import Any, Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch

from . import imgaug_compat
from .aug_ops import IMGAUG_OPS, TORCHVISION_OPS, build_ops, check_names, describe, op_names, preset_ops
from .registry import ConfigError, Registry

__all__ = ["PRESETS", "BACKENDS", "build_transform", "preset_ops", "AugmentTransform", "augment_batch",
           "seed_worker", "save_aug_grid"]

PRESETS = ("none", "light", "default", "heavy")
BACKENDS = ("auto", "torchvision", "imgaug")
_INTERP = {"nearest": 0, "bilinear": 1, "bicubic": 2, "area": 3, "lanczos": 4, "random": 1}  # cv2.INTER_*
_log = logging.getLogger(__name__)
_WARNED: set = set()  # once-per-process warnings


def _warn_once(key: str, msg: str) -> None:
    if key not in _WARNED:
        _WARNED.add(key)
        _log.warning(msg)


def _channel_stats(values: Sequence[float], in_chans: int, what: str) -> Tuple[float, ...]:
    """Fit mean/std to ``in_chans``: 1 value repeats; RGB stats average for 1 channel, extend for 4."""
    values = tuple(float(v) for v in values)
    if len(values) == in_chans:
        return values
    if len(values) == 1:
        return values * in_chans
    if len(values) == 3 and in_chans == 1:
        return (sum(values) / 3,)
    if len(values) == 3 and in_chans > 3:
        return values + (sum(values) / 3,) * (in_chans - 3)
    raise ConfigError(f"{what}: {len(values)} values for in_chans={in_chans}; give {in_chans} values")


class AugmentTransform:
    """The picklable pipeline returned by :func:`build_transform` (built lazily in each process)."""

    def __init__(self, ops: List[Any], *, backend: str, train: bool, img_size: int, mean: Sequence[float],
                 std: Sequence[float], interpolation: str, crop_pct: float, in_chans: int, warn_skips: bool) -> None:
        self.ops, self.backend, self.train = ops, backend, train  # backend: "imgaug" | "torchvision" | "none"
        self.img_size, self.in_chans = int(img_size), int(in_chans)
        self.resize_to = max(self.img_size, int(math.floor(self.img_size / crop_pct)))
        self.mean = _channel_stats(mean, in_chans, "mean")
        self.std = _channel_stats(std, in_chans, "std")
        self.interpolation = _INTERP[interpolation]
        self.strict = False  # True: re-raise augmentation errors instead of falling back (tests)
        self.warn_skips = warn_skips
        self._state: Optional[dict] = None

    def __getstate__(self) -> dict:  # library objects are rebuilt in the worker, after compat patches
        return {k: v for k, v in self.__dict__.items() if k != "_state"} | {"_state": None}

    def __repr__(self) -> str:
        return (f"AugmentTransform(backend={self.backend}, train={self.train}, size={self.img_size}, "
                f"resize={self.resize_to}, ops=[{describe(self.ops)}])")

    # -- building ------------------------------------------------------------------------------
    def _build(self) -> dict:
        scale = torch.tensor([1.0 / (255.0 * s) for s in self.std]).view(-1, 1, 1)
        bias = torch.tensor([-m / s for m, s in zip(self.mean, self.std)]).view(-1, 1, 1)
        state = {"scale": scale, "bias": bias, "pipe": None}
        if self.backend != "none":
            _quiet_library_warnings()
            skipped: List[str] = []
            built = build_ops(self.ops, self.backend, img_size=self.img_size, in_chans=self.in_chans, skipped=skipped)
            if skipped and self.warn_skips:
                _warn_once(f"skip{skipped}", f"augmentation: skipped {', '.join(skipped)} (they need RGB input, "
                                             f"in_chans={self.in_chans})")
            names = op_names(self.ops)
            registry = IMGAUG_OPS if self.backend == "imgaug" else TORCHVISION_OPS
            state["no_masks"] = [n for n in names if n in registry and not registry.get(n).masks]
            if self.backend == "imgaug":
                state.update(_imgaug_state(built))
            else:
                from torchvision.transforms import v2

                state["pipe"] = v2.Compose(built)
        self._state = state
        return state

    # -- calling -------------------------------------------------------------------------------
    def __call__(self, image: np.ndarray, mask: Optional[np.ndarray] = None) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """(H, W, C) uint8 [+ (H, W) int mask] -> ((C, S, S) float32 normalized, (S, S) int64 | None)."""
        state = self._state or self._build()
        image, mask = self._prepare(image, mask)
        if state["pipe"] is not None:
            image, mask = self._augment(state, image, mask)
        return self._finish(state, image, mask)

    def _prepare(self, image: Any, mask: Any) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        """Validate, then resize the shorter side to ``resize_to`` (mask: nearest)."""
        image = np.asarray(image)
        if image.ndim == 2:
            image = image[..., None]
        if image.ndim != 3 or image.shape[2] != self.in_chans or image.dtype != np.uint8:
            raise ConfigError(f"augmentation: expected an (H, W, {self.in_chans}) uint8 image, got "
                              f"{image.shape} {image.dtype}; check --in-chans and the image loader")
        if mask is not None:
            mask = np.asarray(mask)
            if mask.ndim == 3 and mask.shape[2] == 1:
                mask = mask[..., 0]
            if mask.shape != image.shape[:2] or not (mask.dtype.kind in "iub"):
                raise ConfigError(f"augmentation: mask must be (H, W) integer matching image {image.shape[:2]}, "
                                  f"got {mask.shape} {mask.dtype}")
            mask = mask.astype(np.int32, copy=False)  # imgaug segmaps accept int8/16/32 only
        out = _resize_shorter(image, mask, self.resize_to, self.interpolation)
        if out[0] is image and self.backend == "imgaug":  # imgaug may augment in place: never the caller's array
            out = (image.copy(), out[1])
        return out

    def _augment(self, state: dict, image: np.ndarray, mask: Optional[np.ndarray]) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        if mask is not None and state["no_masks"]:
            raise ConfigError(f"augmentation: {', '.join(state['no_masks'])} cannot transform masks; "
                              "use them for classification only")
        try:
            if self.backend == "imgaug":
                return _imgaug_call(state, [image], None if mask is None else [mask])[0]
            return _tv_call(state["pipe"], image, mask)
        except ConfigError:
            raise
        except Exception as e:  # never kill a long run inside a worker: log, return the sample unaugmented
            if self.strict:
                raise
            _warn_once(f"fail{type(e).__name__}", f"augmentation failed ({type(e).__name__}: {e}) on a "
                                                   f"{image.shape} image; using it unaugmented. Pipeline: {self!r}")
            return image, mask

    def _finish(self, state: dict, image: np.ndarray, mask: Optional[np.ndarray]) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Resize up if smaller than S, center-crop S x S, then to float CHW + normalize in one pass."""
        s = self.img_size
        if min(image.shape[:2]) < s:
            image, mask = _resize_shorter(image, mask, s, self.interpolation)
        h, w = image.shape[:2]
        top, left = int(round((h - s) / 2.0)), int(round((w - s) / 2.0))
        image = image[top:top + s, left:left + s]
        out = torch.empty((image.shape[2], s, s), dtype=torch.float32)
        out.copy_(torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1))  # transpose + cast, one pass
        out.mul_(state["scale"]).add_(state["bias"])
        if mask is None:
            return out, None
        return out, torch.from_numpy(np.ascontiguousarray(mask[top:top + s, left:left + s])).long()


def _quiet_library_warnings() -> None:
    """Silence per-call warnings from library internals we cannot act on (once per process).

    skimage>=0.26 FutureWarnings inside imgaug's PiecewiseAffine, imageio's ``pilmode`` notice in
    JpegCompression, and v2.RandomErasing announcing that it leaves masks alone (intended here:
    erasing is photometric, like Cutout) would otherwise print once per sample.
    """
    if "filters" in _WARNED:
        return
    _WARNED.add("filters")
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"imgaug\.")
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"(imgaug|imageio)\.")
    warnings.filterwarnings("ignore", message=r"RandomErasing\(\) is currently passing through", category=UserWarning)


def _resize_shorter(image: np.ndarray, mask: Optional[np.ndarray], size: int, interp: int) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    import cv2

    h, w = image.shape[:2]
    scale = size / min(h, w)
    if scale == 1.0:
        return image, mask
    image = np.ascontiguousarray(image)  # e.g. a flipped view (negative strides) from the loader
    new = (max(size, int(round(w * scale))), max(size, int(round(h * scale))))  # cv2 wants (W, H)
    # plain bilinear/bicubic alias when shrinking by > 2x; INTER_AREA is cv2's antialiased downscale
    flag = cv2.INTER_AREA if scale < 0.5 and interp in (1, 2) else interp
    out = cv2.resize(image, new, interpolation=flag).reshape(new[1], new[0], image.shape[2])
    if mask is not None:
        # INTER_NEAREST samples at floor(x * scale), shifted up to a pixel against the bilinear
        # image; INTER_NEAREST_EXACT (OpenCV >= 4.5.1) uses pixel centers like INTER_LINEAR
        mask = cv2.resize(np.ascontiguousarray(mask), new,
                          interpolation=getattr(cv2, "INTER_NEAREST_EXACT", cv2.INTER_NEAREST))
    return out, mask


def _imgaug_state(built: List[Any]) -> dict:
    """One imgaug Sequential whose augmenters all share one RNG, reseeded per call from torch."""
    iaa = imgaug_compat.import_imgaug()
    import imgaug.random as iarandom
    from imgaug.augmentables.segmaps import SegmentationMapsOnImage

    seq = iaa.Sequential(built)
    rng = iarandom.RNG(np.random.Generator(np.random.PCG64(0)))
    stack, seen = [seq], set()
    while stack:  # every augmenter, including the Sequentials imgaug wraps then/else lists in
        aug = stack.pop()
        if id(aug) in seen:
            continue
        seen.add(id(aug))
        aug.random_state = rng  # shared: one cheap reseed per call instead of seq.seed_() (~140 us)
        for lst in aug.get_children_lists():
            stack.extend([lst] if isinstance(lst, iaa.meta.Augmenter) else [])
            stack.extend(lst)
    try:  # imgaug 0.4.0 is the last release, so its internal batch class is a fixed target
        from imgaug.augmentables.batches import _BatchInAugmentation as batch_cls
    except ImportError:
        batch_cls = None
    return {"pipe": seq, "rng": rng, "segmap": SegmentationMapsOnImage, "batch": batch_cls}


def _imgaug_call(state: dict, images: List[np.ndarray], masks: Optional[List[np.ndarray]]) -> List[Tuple[np.ndarray, Optional[np.ndarray]]]:
    """Augment a batch with one imgaug call; the seed comes from torch's RNG (see module doc)."""
    seed = int(torch.randint(0, 2 ** 62, ()))
    state["rng"].generator = np.random.Generator(np.random.PCG64(seed))
    seq = state["pipe"]
    segmaps = None if masks is None else [state["segmap"](m, shape=img.shape) for img, m in zip(images, masks)]
    if state["batch"] is not None:
        # augment_batch_ on a ready "in-augmentation" batch skips imgaug's normalize/copy/unnormalize
        # round trip (~0.2 ms per call); inputs are ours (resized copies), so in-place is fine
        batch = seq.augment_batch_(state["batch"](images=list(images), segmentation_maps=segmaps))
        images, segmaps = batch.images, batch.segmentation_maps
    elif masks is None:
        images = seq(images=images)
    else:
        images, segmaps = seq(images=images, segmentation_maps=segmaps)
    if segmaps is None:
        return [(img, None) for img in images]
    out = []
    for img, sm in zip(images, segmaps):
        m = sm.get_arr()
        if m.shape != img.shape[:2]:  # defensive: imgaug keeps them equal for every op we register
            import cv2

            m = cv2.resize(m, (img.shape[1], img.shape[0]), interpolation=getattr(cv2, "INTER_NEAREST_EXACT", 0))
        out.append((img, m))
    return out


def _tv_call(pipe: Callable, image: np.ndarray, mask: Optional[np.ndarray]) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    from torchvision import tv_tensors

    timg = tv_tensors.Image(torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1))
    if mask is None:
        return pipe(timg).permute(1, 2, 0).numpy(), None
    timg, tmask = pipe(timg, tv_tensors.Mask(torch.from_numpy(mask.astype(np.int64))))
    return timg.permute(1, 2, 0).numpy(), tmask.numpy()


def _resolve_backend(spec: Any, backend: str, train: bool) -> Tuple[List[Any], str, bool]:
    """-> (op list, concrete backend "imgaug" | "torchvision" | "none", is_custom)."""
    _known("augmentation backend (--aug-backend)", backend, BACKENDS)
    if spec is None or isinstance(spec, str):
        preset = _known("augmentation preset (--aug; or give a list of ops in the config file)", spec or "none",
                        PRESETS)
        if not train or preset == "none":
            return [], "none", False
        if backend == "auto":
            backend = "imgaug" if imgaug_compat.imgaug_available() else "torchvision"
            if backend == "torchvision":
                _warn_once("fallback", "augmentation: imgaug is not importable, using the torchvision backend; "
                                       "imgaug is faster: `pip install imgaug`, or attach the kernel code dataset "
                                       "that vendors it (Kaggle)")
        _require(backend)
        return preset_ops(preset, backend), backend, False
    names = op_names(spec)
    if backend == "auto":  # the registry that knows every name; imgaug first (faster) when importable
        in_ia, in_tv = all(n in IMGAUG_OPS for n in names), all(n in TORCHVISION_OPS for n in names)
        if in_ia and (not in_tv or imgaug_compat.imgaug_available()):
            backend = "imgaug"
        elif in_tv:
            backend = "torchvision"
        else:  # report against the registry that knows more of the list
            backend = "imgaug" if sum(n in IMGAUG_OPS for n in names) >= sum(n in TORCHVISION_OPS for n in names) \
                else "torchvision"
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
    if backend == "imgaug":
        try:
            imgaug_compat.import_imgaug()
        except ImportError as e:
            raise ConfigError(f"--aug-backend imgaug: {e}") from None


def _cv2_sequential() -> None:
    """Run OpenCV sequentially in this process, before it ever starts its thread pool.

    A DataLoader forks its workers from this process. A child that inherits a started OpenCV
    pool hangs for ever in pthread_cond_destroy as soon as it touches the pool (setNumThreads
    included; OpenCV 5.0 pthreads backend). With no pool there is nothing to inherit, and N
    workers x all-core pools cannot oversubscribe the CPU either. albumentations does the same.
    """
    if "cv2_threads" not in _WARNED:
        _WARNED.add("cv2_threads")
        import cv2

        cv2.setNumThreads(0)


def build_transform(preset_or_ops: Any, *, train: bool, backend: str = "auto", img_size: int,
                    mean: Sequence[float], std: Sequence[float], interpolation: str = "bilinear",
                    crop_pct: float = 0.875, in_chans: int = 3) -> AugmentTransform:
    """Build the (image, mask) -> (tensor (C, S, S), mask (S, S) | None) pipeline; see the module doc.

    ``preset_or_ops``: a name in :data:`PRESETS` or a YAML-style op list (see :mod:`kernel.aug_ops`).
    ``train=False`` ignores it: resize + center crop + normalize only. Config problems raise
    ConfigError here (the pipeline is smoke-tested once), not later inside a DataLoader worker.
    """
    _cv2_sequential()
    interpolation = str(interpolation).lower()
    if interpolation not in _INTERP:
        raise ConfigError(f"interpolation {interpolation!r} unknown; use one of {', '.join(_INTERP)}")
    if not (isinstance(img_size, numbers.Integral) and img_size > 0) or not 0 < crop_pct <= 4:
        raise ConfigError(f"augmentation: need img_size > 0 and 0 < crop_pct, got {img_size!r}, {crop_pct!r}")
    if in_chans < 1:
        raise ConfigError(f"--in-chans must be >= 1, got {in_chans}")
    ops, concrete, custom = _resolve_backend(preset_or_ops, backend, train)
    t = AugmentTransform(ops, backend=concrete, train=train, img_size=img_size, mean=mean, std=std,
                         interpolation=interpolation, crop_pct=crop_pct, in_chans=in_chans, warn_skips=custom)
    if concrete != "none":
        _smoke_test(t)
    return t


def _smoke_test(t: AugmentTransform) -> None:
    """Run the pipeline once on a small image (+ mask) without touching torch's global RNG."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (67, 75, t.in_chans), dtype=np.uint8)
    mask = rng.integers(0, 3, (67, 75), dtype=np.int32)
    state = t._state or t._build()
    strict, t.strict = t.strict, True
    try:
        with torch.random.fork_rng(devices=[]):
            t(image, None if state["no_masks"] else mask)
    except ConfigError:
        raise
    except Exception as e:
        raise ConfigError(f"augmentation pipeline [{describe(t.ops)}] fails on a uint8 image with "
                          f"{t.in_chans} channels: {type(e).__name__}: {e}") from None
    finally:
        t.strict = strict


def augment_batch(transform: AugmentTransform, images: Sequence[np.ndarray],
                  masks: Optional[Sequence[np.ndarray]] = None) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Augment N images at once -> ((N, C, S, S), (N, S, S) | None); imgaug batch mode when shapes match."""
    masks_in = list(masks) if masks is not None else [None] * len(images)
    state = transform._state or transform._build()
    prepared = [transform._prepare(i, m) for i, m in zip(images, masks_in)]
    if transform.backend == "imgaug" and len({p[0].shape for p in prepared}) == 1:
        with_masks = masks is not None
        pairs = _imgaug_call(state, [p[0] for p in prepared], [p[1] for p in prepared] if with_masks else None)
        outs = [transform._finish(state, img, m) for img, m in pairs]
    else:
        outs = [transform(i, m) for i, m in zip(images, masks_in)]
    imgs = torch.stack([o[0] for o in outs])
    return imgs, (torch.stack([o[1] for o in outs]) if masks is not None else None)


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: seed numpy, random, imgaug and cv2 from torch's per-worker seed.

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
    """Reseed imgaug augmenters reachable from a dataset (transform, transforms, dataset(s), Compose)."""
    if obj is None or id(obj) in seen or depth > 5 or isinstance(obj, (str, bytes, np.ndarray, torch.Tensor)):
        return
    seen.add(id(obj))
    if hasattr(obj, "seed_") and hasattr(obj, "get_children_lists"):  # an imgaug Augmenter
        obj.seed_((seed + 7919 * len(seen)) % 2 ** 32)  # distinct streams when a dataset holds several
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


def save_aug_grid(samples: Sequence[Tuple[torch.Tensor, Optional[torch.Tensor]]], mean: Sequence[float],
                  std: Sequence[float], path: "str | os.PathLike[str]", ncol: Optional[int] = None) -> str:
    """Write a grid of augmented samples ((C, H, W) normalized, (H, W) mask | None); masks overlaid.

    ``path`` is a file or a directory (then ``augmentations.png`` inside it). Returns the file path.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # no pyplot: leaves the user's backend alone
    from matplotlib.figure import Figure

    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, "augmentations.png")
    n = max(1, len(samples))
    ncol = ncol or int(math.ceil(math.sqrt(n)))
    nrow = int(math.ceil(n / ncol))
    fig = Figure(figsize=(2.4 * ncol, 2.4 * nrow))
    FigureCanvasAgg(fig)
    for i, (img, mask) in enumerate(samples):
        c = img.shape[0]
        m = torch.tensor(_channel_stats(mean, c, "mean")).view(-1, 1, 1)
        s = torch.tensor(_channel_stats(std, c, "std")).view(-1, 1, 1)
        x = (img.detach().float().cpu() * s + m).clamp(0, 1)
        x = x[:3].permute(1, 2, 0).numpy() if c >= 3 else x[0].numpy()
        ax = fig.add_subplot(nrow, ncol, i + 1)
        ax.imshow(x, cmap="gray" if x.ndim == 2 else None, vmin=0, vmax=1)
        if mask is not None:
            mk = mask.detach().cpu().numpy()
            ax.imshow(np.ma.masked_where(mk == 0, mk), cmap="tab20", alpha=0.45, interpolation="nearest",
                      vmin=0, vmax=max(19, int(mk.max())))
        ax.set_axis_off()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path
