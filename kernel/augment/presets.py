"""Training augmentation presets: the op list behind each ``--aug`` name, per backend.

Own module because the presets are data (YAML-style op lists, see :mod:`kernel.augment.ops`), read by
the registry builder and the public API alike; it imports nothing, so everything can depend on it.
"""
from __future__ import annotations

from typing import Any, List

__all__ = ["PRESETS", "BACKENDS", "AUTO_ORDER", "preset_ops"]

PRESETS = ("none", "light", "default", "heavy")
BACKENDS = ("auto", "torchvision", "imgaug", "albumentations")
# What --aug-backend auto takes: the first of these that is importable (and, for a custom op list, knows every
# name). Fastest first, as measured by bench/augment.py (BENCHMARKS.md): imgaug's default preset is 2.3x the
# equivalent torchvision v2 pipeline per core. albumentations was only checked quickly (bench/augment.py --quick
# --images 150 on a loaded 2-core machine: within 6% of imgaug on default and heavy, faster on light), so it goes
# between them and imgaug keeps auto's place until the lead's full measurement of all three (--json) says
# otherwise. torchvision is always installed: last.
AUTO_ORDER = ("imgaug", "albumentations", "torchvision")


def preset_ops(preset: str, backend: str) -> List[Any]:
    """The op list of a training preset for ``backend`` ("imgaug" | "torchvision" | "albumentations").

    Crops default to the output size S; colour ops are dropped later for non-RGB inputs. The three backends
    draw the same ops with the same ranges (noise sigma as a fraction of 255, one value for all channels).
    """
    if preset == "none":
        return []
    if backend == "albumentations":
        return _albumentations(preset)
    if backend == "imgaug":
        flip = {"Fliplr": {"p": 0.5}}
        if preset == "light":
            return [flip, "CropToFixedSize"]
        if preset == "default":  # the notes' Sequential: flip, Affine rotate, crop, Gaussian noise
            return [flip, {"Affine": {"rotate": [-15, 15]}}, "CropToFixedSize", {"GaussianNoise": {"sigma": [0, 0.04]}}]
        return [flip, {"Flipud": {"p": 0.2}},
                {"Affine": {"rotate": [-25, 25], "scale": [0.85, 1.15], "shear": [-8, 8],
                            "translate_percent": {"x": [-0.06, 0.06], "y": [-0.06, 0.06]}}},
                "CropToFixedSize",
                {"Sometimes": {"p": 0.5, "then": [{"GaussianBlur": {"sigma": [0, 1.0]}}],
                               "else": [{"GaussianNoise": {"sigma": [0, 0.05]}}]}},
                {"Multiply": {"mul": [0.8, 1.2]}}, {"LinearContrast": {"alpha": [0.8, 1.2]}},
                {"AddToHueAndSaturation": {"value": [-15, 15]}},
                {"Sometimes": {"p": 0.1, "then": [{"Grayscale": {"alpha": 1.0}}]}}]
    flip = "RandomHorizontalFlip"
    if preset == "light":
        return [flip, "RandomCrop"]
    if preset == "default":
        return [flip, {"RandomRotation": {"degrees": 15, "interpolation": "bilinear"}}, "RandomCrop",
                {"GaussianNoise": {"sigma": [0, 0.04]}}]
    return [flip, {"RandomVerticalFlip": {"p": 0.2}},
            {"RandomAffine": {"degrees": 25, "translate": [0.06, 0.06], "scale": [0.85, 1.15], "shear": 8,
                              "interpolation": "bilinear"}},
            "RandomCrop",
            {"RandomChoice": {"transforms": [{"GaussianBlur": {"kernel_size": 5, "sigma": [0.1, 1.0]}},
                                             {"GaussianNoise": {"sigma": [0, 0.05]}}]}},
            {"ColorJitter": {"brightness": 0.2, "contrast": 0.2, "saturation": 0.2, "hue": 0.03}},
            {"RandomGrayscale": {"p": 0.1}}]


def _albumentations(preset: str) -> List[Any]:
    """albumentations' op list of ``preset``: p=1 where the other libraries always apply the op (its default is 0.5)."""
    flip = {"HorizontalFlip": {"p": 0.5}}
    if preset == "light":
        return [flip, "RandomCrop"]
    if preset == "default":
        return [flip, {"Rotate": {"limit": 15, "interpolation": "bilinear", "border_mode": "constant", "p": 1.0}},
                "RandomCrop", {"GaussNoise": {"std_range": [0, 0.04], "per_channel": False, "p": 1.0}}]
    return [flip, {"VerticalFlip": {"p": 0.2}},
            {"Affine": {"rotate": [-25, 25], "scale": [0.85, 1.15], "shear": [-8, 8],
                        "translate_percent": [-0.06, 0.06], "interpolation": "bilinear", "p": 1.0}},
            "RandomCrop",
            {"OneOf": {"p": 1.0, "transforms": [
                {"GaussianBlur": {"blur_limit": [5, 5], "sigma_limit": [0.1, 1.0], "p": 1.0}},
                {"GaussNoise": {"std_range": [0, 0.05], "per_channel": False, "p": 1.0}}]}},
            {"ColorJitter": {"brightness": 0.2, "contrast": 0.2, "saturation": 0.2, "hue": 0.03, "p": 1.0}},
            {"ToGray": {"p": 0.1}}]
