"""The albumentations op registry: the class names a custom pipeline may give with ``--aug-backend albumentations``.

Names are albumentations' own class names (``HorizontalFlip``, ``Affine``, ``OneOf``...), so a pipeline
written for albumentations reads the same here. Only registered names are built (never an arbitrary
attribute of the package), so an unknown name gets the known names and the closest match. Dual
transforms that move pixels are "geometric": albumentations moves the mask with the image (nearest
interpolation, see :mod:`kernel.augment.albu`). Dropout-style dual transforms leave masks alone unless
given ``fill_mask``, so they are "photometric" like imgaug's Cutout.

Own module because it is registry data, read by the builder (:mod:`kernel.augment.ops`) and the backend
choice; it imports nothing heavy (values are converted to cv2 flags without importing cv2).
"""
from __future__ import annotations

from typing import Any, Dict, List, Tuple

from .opinfo import GEOMETRIC as _G, META as _M, PHOTOMETRIC as _P, OpInfo
from ..errors import ConfigError
from ..registry import Registry, did_you_mean

__all__ = ["ALBU_OPS", "ALBU_AUTOMATIC", "albu_value", "albu_size_value"]

ALBU_OPS: Registry[OpInfo] = Registry("albumentations augmentation op")
# always appended by the pipeline (to float + normalize with the model's mean/std): listing them doubles them
ALBU_AUTOMATIC = ("Normalize", "ToTensorV2", "ToFloat", "FromFloat")

_RGB, _GRAY_RGB = (3,), (1, 3)
_ALL = {"p": 1.0}  # the examples apply every time: the tests see each op act
_TABLE: List[Tuple[str, OpInfo]] = [
    ("HorizontalFlip", OpInfo("HorizontalFlip", _G, example=_ALL)),
    ("VerticalFlip", OpInfo("VerticalFlip", _G, example=_ALL)),
    ("Transpose", OpInfo("Transpose", _G, example=_ALL)),
    ("RandomRotate90", OpInfo("RandomRotate90", _G, example=_ALL)),
    ("D4", OpInfo("D4", _G, example=_ALL)),
    ("Rotate", OpInfo("Rotate", _G, example={"limit": [-30, 30], "p": 1.0})),
    ("SafeRotate", OpInfo("SafeRotate", _G, example={"limit": [-30, 30], "p": 1.0})),
    ("Affine", OpInfo("Affine", _G, example={"rotate": [-25, 25], "scale": [0.9, 1.1], "p": 1.0})),
    ("Perspective", OpInfo("Perspective", _G, example={"scale": [0.05, 0.1], "p": 1.0})),
    ("ElasticTransform", OpInfo("ElasticTransform", _G, example={"alpha": 30, "sigma": 5, "p": 1.0})),
    ("GridDistortion", OpInfo("GridDistortion", _G, example={"distort_limit": 0.3, "p": 1.0})),
    ("OpticalDistortion", OpInfo("OpticalDistortion", _G, example={"distort_limit": 0.3, "p": 1.0})),
    ("PiecewiseAffine", OpInfo("PiecewiseAffine", _G, example={"scale": [0.03, 0.05], "p": 1.0})),
    ("ThinPlateSpline", OpInfo("ThinPlateSpline", _G, example={"scale_range": [0.1, 0.2], "p": 1.0})),
    ("GridElasticDeform", OpInfo("GridElasticDeform", _G, _GRAY_RGB, example={"num_grid_xy": [4, 4], "magnitude": 6, "p": 1.0})),
    ("RandomGridShuffle", OpInfo("RandomGridShuffle", _G, example={"grid": [2, 2], "p": 1.0})),
    ("RandomCrop", OpInfo("RandomCrop", _G, size_kwargs=("height", "width"), defaults={"pad_if_needed": True})),
    ("CenterCrop", OpInfo("CenterCrop", _G, example={"height": 20, "width": 20}, size_kwargs=("height", "width"))),
    ("Crop", OpInfo("Crop", _G, example={"x_min": 2, "y_min": 3, "x_max": 30, "y_max": 33})),
    ("RandomResizedCrop", OpInfo("RandomResizedCrop", _G, example={"scale": [0.4, 1.0]}, size_kwargs=("size",))),
    ("RandomSizedCrop", OpInfo("RandomSizedCrop", _G, example={"min_max_height": [16, 28]}, size_kwargs=("size",))),
    ("CropAndPad", OpInfo("CropAndPad", _G, example={"percent": [-0.15, 0.15], "p": 1.0})),
    ("RandomScale", OpInfo("RandomScale", _G, example={"scale_limit": [-0.3, 0.3], "p": 1.0})),
    ("Resize", OpInfo("Resize", _G, example={"height": 24, "width": 40}, size_kwargs=("height", "width"))),
    ("LongestMaxSize", OpInfo("LongestMaxSize", _G, example={"max_size": 24}, size_kwargs=("max_size",))),
    ("SmallestMaxSize", OpInfo("SmallestMaxSize", _G, example={"max_size": 44}, size_kwargs=("max_size",))),
    ("PadIfNeeded", OpInfo("PadIfNeeded", _G, example={"min_height": 48, "min_width": 48, "position": "top_left"},
                           size_kwargs=("min_height", "min_width"))),
    ("Pad", OpInfo("Pad", _G, example={"padding": [2, 4, 8, 10], "p": 1.0})),
    ("GaussNoise", OpInfo("GaussNoise", _P, example={"std_range": [0.02, 0.1], "p": 1.0})),
    ("ISONoise", OpInfo("ISONoise", _P, _RGB, example=_ALL)),
    ("MultiplicativeNoise", OpInfo("MultiplicativeNoise", _P, example={"multiplier": [0.8, 1.2], "p": 1.0})),
    ("ShotNoise", OpInfo("ShotNoise", _P, example=_ALL)),
    ("SaltAndPepper", OpInfo("SaltAndPepper", _P, example={"amount": [0.02, 0.06], "p": 1.0})),
    ("RandomBrightnessContrast", OpInfo("RandomBrightnessContrast", _P, example=_ALL)),
    ("RandomGamma", OpInfo("RandomGamma", _P, example={"gamma_limit": [60, 140], "p": 1.0})),
    ("CLAHE", OpInfo("CLAHE", _P, _GRAY_RGB, example=_ALL)),
    ("Equalize", OpInfo("Equalize", _P, _GRAY_RGB, example=_ALL)),
    ("AutoContrast", OpInfo("AutoContrast", _P, example=_ALL)),
    ("HueSaturationValue", OpInfo("HueSaturationValue", _P, _RGB, example=_ALL)),
    ("RGBShift", OpInfo("RGBShift", _P, _RGB, example=_ALL)),
    ("ColorJitter", OpInfo("ColorJitter", _P, _GRAY_RGB, example={"brightness": 0.2, "contrast": 0.2,
                                                                  "saturation": 0.2, "hue": 0.05, "p": 1.0})),
    ("ToGray", OpInfo("ToGray", _P, _RGB, example=_ALL)),
    ("ToSepia", OpInfo("ToSepia", _P, _RGB, example=_ALL)),
    ("ChannelShuffle", OpInfo("ChannelShuffle", _P, _RGB, example=_ALL)),
    ("ChannelDropout", OpInfo("ChannelDropout", _P, _RGB, example=_ALL)),
    ("InvertImg", OpInfo("InvertImg", _P, example=_ALL)),
    ("Solarize", OpInfo("Solarize", _P, example=_ALL)),
    ("Posterize", OpInfo("Posterize", _P, example={"num_bits": 3, "p": 1.0})),
    ("Sharpen", OpInfo("Sharpen", _P, example=_ALL)),
    ("Emboss", OpInfo("Emboss", _P, example=_ALL)),
    ("UnsharpMask", OpInfo("UnsharpMask", _P, example=_ALL)),
    ("GaussianBlur", OpInfo("GaussianBlur", _P, example={"blur_limit": [3, 5], "p": 1.0})),
    ("Blur", OpInfo("Blur", _P, example={"blur_limit": [3, 5], "p": 1.0})),
    ("MedianBlur", OpInfo("MedianBlur", _P, example={"blur_limit": [3, 5], "p": 1.0})),
    ("MotionBlur", OpInfo("MotionBlur", _P, example={"blur_limit": [3, 7], "p": 1.0})),
    ("Defocus", OpInfo("Defocus", _P, example={"radius": [2, 4], "p": 1.0})),
    ("ZoomBlur", OpInfo("ZoomBlur", _P, example=_ALL)),
    ("GlassBlur", OpInfo("GlassBlur", _P, example={"iterations": 1, "p": 1.0})),
    ("AdvancedBlur", OpInfo("AdvancedBlur", _P, example=_ALL)),
    ("ImageCompression", OpInfo("ImageCompression", _P, _GRAY_RGB, example={"quality_range": [40, 80], "p": 1.0})),
    ("Downscale", OpInfo("Downscale", _P, example={"scale_range": [0.25, 0.5], "p": 1.0})),
    ("RandomFog", OpInfo("RandomFog", _P, _RGB, example=_ALL)),
    ("RandomRain", OpInfo("RandomRain", _P, _RGB, example=_ALL)),
    ("RandomSnow", OpInfo("RandomSnow", _P, _RGB, example=_ALL)),
    ("RandomShadow", OpInfo("RandomShadow", _P, _GRAY_RGB, example=_ALL)),
    ("RandomSunFlare", OpInfo("RandomSunFlare", _P, _RGB, example={"src_radius": 20, "p": 1.0})),
    ("RandomToneCurve", OpInfo("RandomToneCurve", _P, example={"scale": 0.3, "p": 1.0})),
    ("PlanckianJitter", OpInfo("PlanckianJitter", _P, _RGB, example=_ALL)),
    ("FancyPCA", OpInfo("FancyPCA", _P, _RGB, example={"alpha": 0.5, "p": 1.0})),
    ("CoarseDropout", OpInfo("CoarseDropout", _P, example={"num_holes_range": [1, 3], "hole_height_range": [0.1, 0.3],
                                                           "hole_width_range": [0.1, 0.3], "p": 1.0})),
    ("GridDropout", OpInfo("GridDropout", _P, example={"ratio": 0.3, "p": 1.0})),
    ("PixelDropout", OpInfo("PixelDropout", _P, example={"dropout_prob": 0.05, "p": 1.0})),
    ("Erasing", OpInfo("Erasing", _P, example=_ALL)),
    ("OneOf", OpInfo("OneOf", _M, example={"transforms": ["HorizontalFlip", "VerticalFlip"], "p": 1.0},
                     children=("transforms",))),
    ("SomeOf", OpInfo("SomeOf", _M, example={"transforms": ["Transpose", "VerticalFlip"], "n": 1},
                      children=("transforms",))),
    ("Sequential", OpInfo("Sequential", _M, example={"transforms": ["HorizontalFlip", "VerticalFlip"], "p": 1.0},
                          children=("transforms",))),
    ("RandomOrder", OpInfo("RandomOrder", _M, example={"transforms": ["Transpose", "VerticalFlip"], "n": 2},
                           children=("transforms",))),
    ("NoOp", OpInfo("NoOp", _M)),
]
for _name, _info in _TABLE:
    ALBU_OPS.register(_name, _info, aliases=("Identity",) if _name == "NoOp" else ())

# OpenCV flag values (cv2.INTER_* / cv2.BORDER_*), so YAML may say "bilinear" or "reflect" instead of 1 or 2
_INTERPOLATION = {"nearest": 0, "bilinear": 1, "linear": 1, "bicubic": 2, "cubic": 2, "area": 3, "lanczos": 4,
                  "nearest_exact": 6}
_BORDER = {"constant": 0, "replicate": 1, "reflect": 2, "wrap": 3, "reflect_101": 4}
_FLAGS: Dict[str, Dict[str, int]] = {"interpolation": _INTERPOLATION, "mask_interpolation": _INTERPOLATION,
                                     "border_mode": _BORDER}


def albu_value(key: str, value: Any) -> Any:
    """A YAML value as albumentations takes it: lists -> tuples (its ranges); interpolation and border
    names -> OpenCV flags. Lists of strings stay lists (choices)."""
    if key in _FLAGS and isinstance(value, str):
        table = _FLAGS[key]
        if value.lower() not in table:
            raise ConfigError(f"{key} {value!r} unknown (use one of {', '.join(table)}, or the OpenCV flag number)"
                              f"{did_you_mean(value.lower(), list(table))}")
        return table[value.lower()]
    if isinstance(value, dict):
        return {k: albu_value(k, v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        if value and all(isinstance(v, str) for v in value):
            return list(value)
        return tuple(albu_value("", v) for v in value)
    return value


def albu_size_value(key: str, img_size: Any) -> Any:
    """The default of a size argument: S or from (H, W): height H, width W, size (H, W); max sizes the larger,
    min sizes their own side."""
    h, w = (img_size, img_size) if isinstance(img_size, int) else (int(img_size[0]), int(img_size[1]))
    return {"height": h, "min_height": h, "width": w, "min_width": w, "max_size": max(h, w)}.get(key, (h, w))
