"""The picklable augmentation pipeline: resize, [ops], center crop, normalize (see :mod:`kernel.augment`).

Own module because :class:`AugmentTransform` is what DataLoader workers receive and run per sample;
it builds its library objects lazily in each process (:mod:`kernel.augment.ops`) and calls them through
:mod:`kernel.augment.backends`. :func:`augment_batch` and :func:`smoke_test` live here because they
drive the same per-sample steps (``_prepare`` / ``_augment`` / ``_finish``).
"""
from __future__ import annotations

import math
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np
import torch

from .albu import albu_call, albu_state, is_serialized, load_serialized
from .backends import (imgaug_call, imgaug_state, quiet_library_warnings, resize_exact, resize_shorter, tv_call,
                       warn_once)
from .ops import REGISTRIES, build_ops, describe, op_names
from ..data.images import fit_channel_stats
from ..errors import ConfigError

__all__ = ["INTERP", "AugmentTransform", "Normalize", "normalize_affine", "augment_batch", "smoke_test"]

INTERP = {"nearest": 0, "bilinear": 1, "bicubic": 2, "area": 3, "lanczos": 4, "random": 1}  # cv2.INTER_*


def normalize_affine(mean: Sequence[float], std: Sequence[float]) -> Tuple[torch.Tensor, torch.Tensor]:
    """(scale, bias), each (C, 1, 1) float32: ``x * scale + bias`` is ``(x / 255 - mean) / std`` for uint8 ``x``."""
    scale = torch.tensor([1.0 / (255.0 * s) for s in std]).view(-1, 1, 1)
    bias = torch.tensor([-m / s for m, s in zip(mean, std)]).view(-1, 1, 1)
    return scale, bias


class Normalize:
    """uint8 images (N, C, H, W) -> float32 normalized, on the images' device (the second half of a pipeline whose
    workers return uint8, see :meth:`AugmentTransform.for_device`).

    The same two float32 operations, in the same order, as the workers' path (cast, ``* scale``, ``+ bias``), so
    the result is bit-identical to it on a CPU; the memory format (channels-last) is kept.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.scale, self.bias = normalize_affine(mean, std)
        self._on: dict = {}  # device -> (scale, bias) there, copied once

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if images.device not in self._on:
            self._on[images.device] = (self.scale.to(images.device), self.bias.to(images.device))
        scale, bias = self._on[images.device]
        return images.to(torch.float32).mul_(scale).add_(bias)


class AugmentTransform:
    """The picklable pipeline returned by :func:`kernel.augment.build_transform` (built lazily in each process)."""

    def __init__(self, ops: List[Any], *, backend: str, train: bool, img_size: Any, mean: Sequence[float],
                 std: Sequence[float], interpolation: str, crop_pct: float, in_chans: int, warn_skips: bool,
                 fit: str = "crop") -> None:
        # ops: an op list, or albumentations' saved form (A.to_dict); backend: imgaug | torchvision | albumentations | none
        self.ops, self.backend, self.train = ops, backend, train
        # fit "crop": resize the shorter side, center-crop S x S (classification); "resize": the whole image
        # to exactly (H, W), nothing cut off (segmentation: every pixel has a label).
        self.fit, self.in_chans = fit, int(in_chans)
        self.img_size = (int(img_size[0]), int(img_size[1])) if fit == "resize" else int(img_size)
        self.resize_to = self.img_size if fit == "resize" else max(self.img_size, int(math.floor(self.img_size / crop_pct)))
        self.mean = fit_channel_stats(mean, in_chans, "mean")
        self.std = fit_channel_stats(std, in_chans, "std")
        self.interpolation = INTERP[interpolation]
        self.strict = False  # True: re-raise augmentation errors instead of falling back (tests)
        self.warn_skips = warn_skips
        self.uint8_out = False  # True: images leave as uint8 (C, S, S), normalized on the device (see for_device)
        self._state: Optional[dict] = None

    def __getstate__(self) -> dict:  # library objects are rebuilt in the worker, after compat patches
        return {k: v for k, v in self.__dict__.items() if k != "_state"} | {"_state": None}

    def __repr__(self) -> str:
        return (f"AugmentTransform(backend={self.backend}, train={self.train}, size={self.img_size}, "
                f"resize={self.resize_to}, ops=[{describe(self.ops)}]{', uint8 out' if self.uint8_out else ''})")

    def for_device(self) -> "AugmentTransform":
        """A copy whose images leave as uint8 (C, S, S), for :meth:`normalizer` to finish on the training device:
        a quarter of the bytes through the workers' queues and the host-to-device copy, and no float work on the
        workers' CPUs. Every op keeps uint8 (ops that change the dtype are refused when the pipeline is built);
        the masks are unchanged."""
        copy = object.__new__(AugmentTransform)
        copy.__dict__.update(self.__getstate__())
        copy.uint8_out = True
        return copy

    def normalizer(self) -> Normalize:
        """What turns this pipeline's uint8 output into its float output, on any device."""
        return Normalize(self.mean, self.std)

    # -- building ------------------------------------------------------------------------------
    def _build(self) -> dict:
        scale, bias = normalize_affine(self.mean, self.std)
        state = {"scale": scale, "bias": bias, "pipe": None}
        if self.backend != "none":
            quiet_library_warnings()
            skipped: List[str] = []
            saved = is_serialized(self.ops)  # albumentations' own form: built by albumentations, as saved
            built = load_serialized(self.ops) if saved else \
                build_ops(self.ops, self.backend, img_size=self.img_size, in_chans=self.in_chans, skipped=skipped)
            if skipped and self.warn_skips:
                warn_once(f"skip{skipped}", f"augmentation: skipped {', '.join(skipped)} (they need RGB input, "
                                            f"in_chans={self.in_chans})")
            names = [] if saved else op_names(self.ops)
            registry = REGISTRIES[self.backend]
            state["no_masks"] = [n for n in names if n in registry and not registry.get(n).masks]
            if self.backend == "imgaug":
                state.update(imgaug_state(built))
            elif self.backend == "albumentations":
                state.update(albu_state(built))
            else:
                from torchvision.transforms import v2

                state["pipe"] = v2.Compose(built)
        self._state = state
        return state

    # -- calling -------------------------------------------------------------------------------
    def __call__(self, image: np.ndarray, mask: Optional[np.ndarray] = None) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """(H, W, C) uint8 [+ (H, W) int mask] -> ((C, S, S) float32 normalized (uint8 with ``uint8_out``),
        (S, S) int64 | None)."""
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
        out = self.presize(image, mask)
        if out[0] is image and self.backend == "imgaug":  # imgaug may augment in place: never the caller's array
            out = (image.copy(), out[1])
        return out

    def presize(self, image: np.ndarray, mask: Optional[np.ndarray]) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        """The first resize alone (the decoded-image cache stores its result): (H, W, C) [+ (H, W)] to the shorter
        side ``resize_to`` (fit "crop") or exactly ``resize_to`` (fit "resize"); the identity on an image already
        at that size, so a presized image goes through :meth:`__call__` exactly as the original would."""
        resize = resize_exact if self.fit == "resize" else resize_shorter
        return resize(image, mask, self.resize_to, self.interpolation)

    def presized_shape(self, h: int, w: int) -> Tuple[int, int]:
        """(H, W) of an (h, w) image after :meth:`presize`, without resizing it (the cache's size estimate)."""
        if self.fit == "resize":
            return self.resize_to
        scale = self.resize_to / min(h, w)
        return max(self.resize_to, int(round(h * scale))), max(self.resize_to, int(round(w * scale)))

    def _augment(self, state: dict, image: np.ndarray, mask: Optional[np.ndarray]) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        if mask is not None and state["no_masks"]:
            raise ConfigError(f"augmentation: {', '.join(state['no_masks'])} cannot transform masks; "
                              "use them for classification only")
        try:
            if self.backend == "imgaug":
                return imgaug_call(state, [image], None if mask is None else [mask])[0]
            if self.backend == "albumentations":
                return albu_call(state, image, mask)
            return tv_call(state["pipe"], image, mask)
        except ConfigError:
            raise
        except Exception as e:  # never kill a long run inside a worker: log, return the sample unaugmented
            if self.strict:
                raise
            warn_once(f"fail{type(e).__name__}", f"augmentation failed ({type(e).__name__}: {e}) on a "
                                                  f"{image.shape} image; using it unaugmented. Pipeline: {self!r}")
            return image, mask

    def _finish(self, state: dict, image: np.ndarray, mask: Optional[np.ndarray]) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """To the output size (crop: resize up if smaller, center-crop S x S; resize: exactly (H, W)), then
        to float CHW + normalize in one pass (``uint8_out``: uint8 CHW, normalized later by :class:`Normalize`)."""
        if self.fit == "resize":
            image, mask = resize_exact(image, mask, self.img_size, self.interpolation)
            sh, sw, top, left = self.img_size[0], self.img_size[1], 0, 0
        else:
            s = self.img_size
            if min(image.shape[:2]) < s:
                image, mask = resize_shorter(image, mask, s, self.interpolation)
            h, w = image.shape[:2]
            sh = sw = s
            top, left = int(round((h - s) / 2.0)), int(round((w - s) / 2.0))
        image = image[top:top + sh, left:left + sw]
        if self.uint8_out:  # CHW in one copy (np.array copies: never a view of the caller's or a read-only array)
            out = torch.from_numpy(np.array(image.transpose(2, 0, 1), order="C"))
        else:
            out = self._to_float(state, image, sh, sw)
        if mask is None:
            return out, None
        return out, torch.from_numpy(np.ascontiguousarray(mask[top:top + sh, left:left + sw])).long()

    @staticmethod
    def _to_float(state: dict, image: np.ndarray, sh: int, sw: int) -> torch.Tensor:
        out = torch.empty((image.shape[2], sh, sw), dtype=torch.float32)
        if not image.flags.writeable:  # a read-only view (an image already at its size): torch wants writable
            image = image.copy()
        out.copy_(torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1))  # transpose + cast, one pass
        return out.mul_(state["scale"]).add_(state["bias"])


def smoke_test(t: AugmentTransform) -> None:
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
        pairs = imgaug_call(state, [p[0] for p in prepared], [p[1] for p in prepared] if with_masks else None)
        outs = [transform._finish(state, img, m) for img, m in pairs]
    else:
        outs = [transform(i, m) for i, m in zip(images, masks_in)]
    imgs = torch.stack([o[0] for o in outs])
    return imgs, (torch.stack([o[1] for o in outs]) if masks is not None else None)
