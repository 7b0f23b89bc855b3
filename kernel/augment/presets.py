"""Training augmentation presets: the op list behind each ``--aug`` name, per backend.

Own module because the presets are data (YAML-style op lists, see :mod:`kernel.augment.ops`), read by
the registry builder and the public API alike; it imports nothing, so everything can depend on it.
"""
from __future__ import annotations

from typing import Any, List

__all__ = ["PRESETS", "BACKENDS", "preset_ops"]

PRESETS = ("none", "light", "default", "heavy")
BACKENDS = ("auto", "torchvision", "imgaug")


def preset_ops(preset: str, backend: str) -> List[Any]:
    """The op list of a training preset for ``backend`` ("imgaug" | "torchvision").

    Crops default to the output size S; colour ops are dropped later for non-RGB inputs.
    """
    if preset == "none":
        return []
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
