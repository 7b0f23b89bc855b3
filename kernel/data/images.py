"""Reading images: any PIL mode to (H, W, C) uint8, the image file extensions, per-channel statistics.

Every loader of the bundle (training sources, prediction inputs, segmentation masks' images) reads
through :func:`load_image`, so odd modes (palette, 16-bit, CMYK, alpha) are handled the same
everywhere. :func:`fit_channel_stats` is the one rule that fits mean/std to the input channels.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Sequence, Tuple

import numpy as np
from PIL import Image

from ..errors import ConfigError

__all__ = ["IMAGE_EXTENSIONS", "DEFAULT_DATA_CONFIG", "is_image_file", "load_image", "fit_channel_stats"]

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


def load_image(path: str | os.PathLike, in_chans: int = 3) -> np.ndarray:
    """Read any PIL-readable image as (H, W, in_chans) uint8.

    Handles 1, L, LA, P (with transparency), RGB, RGBA, CMYK, I;16, I and F modes:
    ``in_chans`` 1 -> grayscale, 3 -> RGB, 4 -> RGBA; other counts repeat the RGB channels.
    """
    with Image.open(path) as img:
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
