"""What the op registries record about one allowed op (:class:`OpInfo`), shared by every backend's table.

Own module because the imgaug/torchvision tables (:mod:`kernel.augment.ops`) and the albumentations table
(:mod:`kernel.augment.albu_ops`) both describe ops this way, and the builder reads either; it imports
nothing heavy.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

__all__ = ["OpInfo", "GEOMETRIC", "PHOTOMETRIC", "META"]

GEOMETRIC, PHOTOMETRIC, META = "geometric", "photometric", "meta"


@dataclass(frozen=True)
class OpInfo:
    """One allowed op: library attribute, what it touches, the channel counts it supports."""

    attr: Optional[str]  # class name in the library's namespace (imgaug.augmenters, v2, albumentations); None = ours
    kind: str  # "geometric" (moves masks too) | "photometric" (image only) | "meta" (holds op lists)
    channels: Optional[Tuple[int, ...]] = None  # None = any channel count
    example: Dict[str, Any] = field(default_factory=dict)  # kwargs giving a valid instance (docs, tests)
    children: Tuple[str, ...] = ()  # kwargs that hold nested op lists
    renames: Dict[str, str] = field(default_factory=dict)  # config key -> library kwarg
    size_kwargs: Tuple[str, ...] = ()  # kwargs that default to the output size
    defaults: Dict[str, Any] = field(default_factory=dict)  # our defaults, where the library's are odd
    masks: bool = True  # False: the library cannot take a mask alongside the image
