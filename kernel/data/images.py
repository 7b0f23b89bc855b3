"""Reading images: any PIL mode to (H, W, C) uint8, the image file extensions, per-channel statistics.

Every loader of the bundle (training sources, prediction inputs, segmentation masks' images) reads
through :func:`load_image`, so odd modes (palette, 16-bit, CMYK, alpha) are handled the same
everywhere. :func:`fit_channel_stats` is the one rule that fits mean/std to the input channels.
"""
from __future__ import annotations

import math
import os
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image

from ..errors import ConfigError

__all__ = ["IMAGE_EXTENSIONS", "DEFAULT_DATA_CONFIG", "Draft", "is_image_file", "load_image", "draft_request", "decoding",
           "fit_channel_stats"]

# What a reduced-scale JPEG decode must keep: the shorter side (int) or the exact (H, W) of the first resize.
Draft = Union[int, Tuple[int, int], None]
# The draft of the sample being read: set around a source's read by the dataset (the sources call load_image
# without knowing the transform); a context variable, so each thread and worker process sees its own.
_DRAFT: ContextVar[Draft] = ContextVar("kernel_draft", default=None)


@contextmanager
def decoding(draft: Draft) -> Iterator[None]:
    """Images read by :func:`load_image` inside this block use ``draft`` unless they pass their own."""
    token = _DRAFT.set(draft)
    try:
        yield
    finally:
        _DRAFT.reset(token)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif")
# Preprocessing for models without a pretrained config (torchvision's, smp's): ImageNet statistics,
# 224 px, timm's default crop and interpolation. The one place these numbers live.
DEFAULT_DATA_CONFIG: Dict[str, Any] = dict(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), img_size=224,
                                           interpolation="bilinear", crop_pct=0.875)


def is_image_file(path: str | os.PathLike) -> bool:
    """True for a visible file name with an image extension (the file itself is not opened)."""
    p = Path(path)
    return p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    """Scale 16-bit / 32-bit / float pixel data into uint8 (the full range of the dtype)."""
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * 255
    if np.issubdtype(arr.dtype, np.floating):  # float images: [0, 1] when they fit, else min-max
        lo, hi = float(arr.min()), float(arr.max())
        if lo < 0 or hi > 1:
            arr = (arr - lo) / max(hi - lo, 1e-12)
        return np.round(arr * 255).astype(np.uint8)
    hi = 65535 if arr.max() > 255 else 255  # 16-bit data stored as I;16 or I
    return (arr.astype(np.float64) * (255.0 / hi)).round().clip(0, 255).astype(np.uint8)


def draft_request(size: Tuple[int, int], draft: Draft) -> Optional[Tuple[int, int]]:
    """The (W, H) a JPEG of ``size`` (W, H) must at least decode to for ``draft``: its shorter side scaled to the
    int, or exactly the (H, W) given; None without a draft."""
    if draft is None:
        return None
    if isinstance(draft, int):
        k = draft / min(size)
        return max(1, math.ceil(size[0] * k)), max(1, math.ceil(size[1] * k))
    return int(draft[1]), int(draft[0])


def load_image(path: str | os.PathLike, in_chans: int = 3, draft: Draft = None) -> np.ndarray:
    """Read any PIL-readable image as (H, W, in_chans) uint8.

    Handles 1, L, LA, P (with transparency), RGB, RGBA, CMYK, I;16, I and F modes:
    ``in_chans`` 1 -> grayscale, 3 -> RGB, 4 -> RGBA; other counts repeat the RGB channels.
    ``draft`` (``--fast-decode``): a JPEG at least twice the size the first resize needs (see
    :func:`draft_request`) is decoded at 1/2, 1/4 or 1/8 scale by libjpeg itself (PIL's ``draft``), never below
    that size; other files, and JPEGs too small to halve, read exactly as without it.
    """
    draft = _DRAFT.get() if draft is None else draft
    with Image.open(path) as img:
        need = draft_request(img.size, draft) if img.format == "JPEG" else None
        if need is not None:
            img.draft(img.mode, need)  # keeps the mode: only the scale changes
        img.load()
        if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            gray = _to_uint8(np.asarray(img))
            img = Image.fromarray(gray)
        elif img.mode == "P":  # palette: go through RGBA so transparency is honoured
            img = img.convert("RGBA")
        if in_chans == 1:
            arr = np.asarray(img.convert("L"))[..., None]
        elif in_chans == 4:
            arr = np.asarray(img.convert("RGBA"))
        else:
            rgb = np.asarray(img.convert("RGB"))
            arr = rgb if in_chans == 3 else rgb[..., [i % 3 for i in range(in_chans)]]
    return np.ascontiguousarray(arr)


def fit_channel_stats(values: Sequence[float], in_chans: int, what: str = "mean/std") -> Tuple[float, ...]:
    """Fit per-channel mean or std to ``in_chans`` channels, the one rule of the bundle.

    As many values as channels: unchanged. One value: repeated. RGB statistics: averaged for one
    channel; for more than three channels the extra ones get the RGB average (an added channel,
    e.g. near-infrared, has no statistics of its own). Anything else is a ConfigError.
    """
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
