"""Thin calls into the augmentation libraries (OpenCV resize, imgaug, torchvision v2) on numpy arrays.

Own module because this is the only place that knows each library's calling conventions (imgaug
batches and segmaps, tv_tensors, cv2 flags); :mod:`kernel.augment.pipeline` just calls these. It also
holds the once-per-process state (warnings, library warning filters) shared by the aug_* modules.
Libraries are imported inside the functions, so nothing heavy is imported here at import time.
"""
from __future__ import annotations

import logging
import warnings
from typing import Any, Callable, List, Optional, Tuple

import numpy as np
import torch

from . import imgaug_compat

__all__ = ["first_time", "warn_once", "quiet_library_warnings", "resize_shorter", "imgaug_state", "imgaug_call",
           "tv_call"]

# every augmentation message goes to the "kernel.augment" logger, whichever aug_* module logs it:
# that is the name users (and the tests) filter on, from before the code was split into modules
_log = logging.getLogger(__name__.rpartition(".")[0] + ".augment")
_WARNED: set = set()  # once-per-process keys: warnings, filters, OpenCV threads


def first_time(key: str) -> bool:
    """True the first time ``key`` is seen in this process (then False): one-off side effects."""
    if key in _WARNED:
        return False
    _WARNED.add(key)
    return True


def forget_first_times() -> None:
    """Every key of :func:`first_time` is new again (its warnings are given once more): for tests and for a
    notebook that builds its pipelines afresh."""
    _WARNED.clear()


def warn_once(key: str, msg: str) -> None:
    """Log ``msg`` as a warning once per process per ``key`` (workers would repeat it per sample)."""
    if first_time(key):
        _log.warning(msg)


def quiet_library_warnings() -> None:
    """Silence per-call warnings from library internals we cannot act on (once per process).

    skimage>=0.26 FutureWarnings inside imgaug's PiecewiseAffine, imageio's ``pilmode`` notice in
    JpegCompression, and v2.RandomErasing announcing that it leaves masks alone (intended here:
    erasing is photometric, like Cutout) would otherwise print once per sample.
    """
    if not first_time("filters"):
        return
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"imgaug\.")
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"(imgaug|imageio)\.")
    warnings.filterwarnings("ignore", message=r"RandomErasing\(\) is currently passing through", category=UserWarning)


def resize_shorter(image: np.ndarray, mask: Optional[np.ndarray], size: int, interp: int) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """Resize so the shorter side is ``size`` (cv2 ``interp`` flag for the image, nearest for the mask)."""
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


def resize_exact(image: np.ndarray, mask: Optional[np.ndarray], size: Tuple[int, int],
                 interp: int) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """Resize to exactly ``size`` = (H, W) (segmentation: the whole image is kept); mask nearest-exact."""
    import cv2

    h, w = image.shape[:2]
    if (h, w) == tuple(size):
        return image, mask
    new = (int(size[1]), int(size[0]))  # cv2 wants (W, H)
    flag = cv2.INTER_AREA if (size[0] < h / 2 or size[1] < w / 2) and interp in (1, 2) else interp
    out = cv2.resize(np.ascontiguousarray(image), new, interpolation=flag).reshape(new[1], new[0], image.shape[2])
    if mask is not None:
        mask = cv2.resize(np.ascontiguousarray(mask), new, interpolation=getattr(cv2, "INTER_NEAREST_EXACT", 0))
    return out, mask


def imgaug_state(built: List[Any]) -> dict:
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


def imgaug_call(state: dict, images: List[np.ndarray], masks: Optional[List[np.ndarray]]) -> List[Tuple[np.ndarray, Optional[np.ndarray]]]:
    """Augment a batch with one imgaug call; the seed comes from torch's RNG (see kernel.augment's doc)."""
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


_EXACT_MASK: list = []  # the ExactMask class, made (and its kernels registered) once per process


def exact_mask_type() -> type:
    """A ``tv_tensors.Mask`` whose resizes sample pixel centres (nearest-exact), like the image's resize.

    torchvision's own mask kernels resize with floor-based nearest (``x * scale``), which shifts masks up
    to a pixel against the bilinear image on RandomResizedCrop/Resize. Kernels can be registered for a
    subclass (not for the builtin Mask), so resize and resized_crop get centre-sampling ones; every other
    op falls through to the Mask kernels (affine and rotate already sample at centres).
    """
    if not _EXACT_MASK:
        from torchvision import tv_tensors
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms.v2 import functional as F

        class ExactMask(tv_tensors.Mask):
            pass

        exact = InterpolationMode.NEAREST_EXACT

        @F.register_kernel(F.resize, ExactMask)
        def _resize(inpt, size, interpolation=None, max_size=None, **kwargs):
            out = F.resize_mask(inpt.as_subclass(torch.Tensor), size, interpolation=exact, max_size=max_size)
            return tv_tensors.wrap(out, like=inpt)

        @F.register_kernel(F.resized_crop, ExactMask)
        def _resized_crop(inpt, top, left, height, width, size, **kwargs):
            out = F.crop_mask(inpt.as_subclass(torch.Tensor), top, left, height, width)
            return tv_tensors.wrap(F.resize_mask(out, size, interpolation=exact), like=inpt)

        _EXACT_MASK.append(ExactMask)
    return _EXACT_MASK[0]


def tv_call(pipe: Callable, image: np.ndarray, mask: Optional[np.ndarray]) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """Run a v2 pipeline on an (H, W, C) uint8 array (+ mask) through tv_tensors; back to numpy."""
    from torchvision import tv_tensors

    timg = tv_tensors.Image(torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1))
    if mask is None:
        return pipe(timg).permute(1, 2, 0).numpy(), None
    timg, tmask = pipe(timg, exact_mask_type()(torch.from_numpy(mask.astype(np.int64))))
    return timg.permute(1, 2, 0).numpy(), tmask.numpy()
