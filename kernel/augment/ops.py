"""Augmentation op registries (imgaug and torchvision v2) and the builder for YAML-style op lists.

An op list is what a config file holds, one op per entry::

    [{"Affine": {"rotate": [-25, 25]}}, "Fliplr",
     {"Sometimes": {"p": 0.5, "then": [{"GaussianBlur": {"sigma": [0, 1]}}], "else": ["Identity"]}}]

A bare string is the op with no kwargs; a non-mapping value is the op's first positional argument
(``{"RandomRotation": 15}``). Only registered names are looked up (never an arbitrary module
attribute), so an unknown op gets the known names and the closest match, and bad kwargs raise
ConfigError naming the op. Nothing heavy is imported here at import time.

Own module because the registries are the single list of what a config may name. Our own ops
live in :mod:`kernel.augment.noise`, the presets' op lists in :mod:`kernel.augment.presets` (re-exported).
"""
from __future__ import annotations

import warnings
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .albu_ops import ALBU_AUTOMATIC, ALBU_OPS, albu_size_value, albu_value
from .noise import custom_factory
from .opinfo import OpInfo
from ..errors import ConfigError
from ..registry import Registry

__all__ = ["OpInfo", "IMGAUG_OPS", "TORCHVISION_OPS", "ALBU_OPS", "AUTOMATIC_OPS", "REGISTRIES", "build_ops", "split_entry",
           "op_names", "describe", "check_names"]


IMGAUG_OPS: Registry[OpInfo] = Registry("imgaug augmentation op")
TORCHVISION_OPS: Registry[OpInfo] = Registry("torchvision augmentation op")
# ToTensor/Normalize are always appended with the model's mean/std; listing them would apply them twice.
AUTOMATIC_OPS = ("ToTensor", "ToImage", "PILToTensor", "ToDtype", "ConvertImageDtype", "Normalize")

_RGB, _GRAY_RGB = (3,), (1, 3)
_G, _P, _M = "geometric", "photometric", "meta"
_IMGAUG_TABLE: List[Tuple[str, OpInfo]] = [
    ("Fliplr", OpInfo("Fliplr", _G, example={"p": 0.5})),
    ("Flipud", OpInfo("Flipud", _G, example={"p": 0.5})),
    ("Affine", OpInfo("Affine", _G, example={"rotate": [-25, 25], "scale": [0.9, 1.1]})),
    ("Rotate", OpInfo("Rotate", _G, example={"rotate": [-20, 20]})),
    ("ShearX", OpInfo("ShearX", _G, example={"shear": [-10, 10]})),
    ("ShearY", OpInfo("ShearY", _G, example={"shear": [-10, 10]})),
    ("TranslateX", OpInfo("TranslateX", _G, example={"percent": [-0.1, 0.1]})),
    ("TranslateY", OpInfo("TranslateY", _G, example={"percent": [-0.1, 0.1]})),
    ("ScaleX", OpInfo("ScaleX", _G, example={"scale": [0.8, 1.2]})),
    ("ScaleY", OpInfo("ScaleY", _G, example={"scale": [0.8, 1.2]})),
    ("Rot90", OpInfo("Rot90", _G, example={"k": [0, 3]})),
    ("Crop", OpInfo("Crop", _G, example={"percent": [0, 0.1]})),
    ("Pad", OpInfo("Pad", _G, example={"percent": [0, 0.1]})),
    ("CropAndPad", OpInfo("CropAndPad", _G, example={"percent": [-0.1, 0.1]})),
    ("CropToFixedSize", OpInfo("CropToFixedSize", _G, size_kwargs=("width", "height"))),
    ("CenterCropToFixedSize", OpInfo("CenterCropToFixedSize", _G, size_kwargs=("width", "height"))),
    ("PadToFixedSize", OpInfo("PadToFixedSize", _G, size_kwargs=("width", "height"))),
    ("Resize", OpInfo("Resize", _G, example={"size": [0.8, 1.2]}, size_kwargs=("size",))),
    ("PerspectiveTransform", OpInfo("PerspectiveTransform", _G, example={"scale": [0.01, 0.1]})),
    ("PiecewiseAffine", OpInfo("PiecewiseAffine", _G, example={"scale": [0.01, 0.03]})),
    ("ElasticTransformation", OpInfo("ElasticTransformation", _G, example={"alpha": [0, 5], "sigma": 0.25})),
    ("GaussianNoise", OpInfo(None, _P, example={"sigma": [0, 0.05]})),  # ours: cv2 noise, ~5x faster
    ("AdditiveGaussianNoise", OpInfo("AdditiveGaussianNoise", _P, example={"scale": [0, 12.75]})),
    ("AdditiveLaplaceNoise", OpInfo("AdditiveLaplaceNoise", _P, example={"scale": [0, 12.75]})),
    ("AdditivePoissonNoise", OpInfo("AdditivePoissonNoise", _P, example={"lam": [0, 16]})),
    ("Add", OpInfo("Add", _P, example={"value": [-20, 20]})),
    ("Multiply", OpInfo("Multiply", _P, example={"mul": [0.8, 1.2]})),
    ("LinearContrast", OpInfo("LinearContrast", _P, example={"alpha": [0.75, 1.25]})),
    ("GammaContrast", OpInfo("GammaContrast", _P, example={"gamma": [0.7, 1.5]})),
    ("SigmoidContrast", OpInfo("SigmoidContrast", _P, example={"gain": [5, 10], "cutoff": [0.4, 0.6]})),
    ("CLAHE", OpInfo("CLAHE", _P)),
    ("HistogramEqualization", OpInfo("HistogramEqualization", _P)),
    ("GaussianBlur", OpInfo("GaussianBlur", _P, example={"sigma": [0, 1.0]})),
    ("AverageBlur", OpInfo("AverageBlur", _P, example={"k": [1, 3]})),
    ("MedianBlur", OpInfo("MedianBlur", _P, example={"k": [1, 3]})),
    ("MotionBlur", OpInfo("MotionBlur", _P, example={"k": 5})),
    ("Sharpen", OpInfo("Sharpen", _P, example={"alpha": [0, 0.5]})),
    ("Emboss", OpInfo("Emboss", _P, example={"alpha": [0, 0.5]})),
    ("Dropout", OpInfo("Dropout", _P, example={"p": [0, 0.05]})),
    ("CoarseDropout", OpInfo("CoarseDropout", _P, example={"p": [0.02, 0.1], "size_percent": [0.05, 0.2]})),
    ("Cutout", OpInfo("Cutout", _P, example={"nb_iterations": [1, 2]})),
    ("SaltAndPepper", OpInfo("SaltAndPepper", _P, example={"p": [0, 0.03]})),
    ("Invert", OpInfo("Invert", _P, example={"p": 0.1})),
    ("Solarize", OpInfo("Solarize", _P, example={"p": 0.2})),
    ("JpegCompression", OpInfo("JpegCompression", _P, _GRAY_RGB, example={"compression": [70, 95]})),
    ("Grayscale", OpInfo("Grayscale", _P, _RGB, example={"alpha": [0, 1]})),
    ("AddToHueAndSaturation", OpInfo("AddToHueAndSaturation", _P, _RGB, example={"value": [-20, 20]})),
    ("MultiplyHueAndSaturation", OpInfo("MultiplyHueAndSaturation", _P, _RGB, example={"mul": [0.8, 1.2]})),
    ("ChangeColorTemperature", OpInfo("ChangeColorTemperature", _P, _RGB, example={"kelvin": [4000, 9000]})),
    ("Clouds", OpInfo("Clouds", _P)),  # works through the np.complex alias in imgaug_compat
    ("Fog", OpInfo("Fog", _P)),
    ("Snowflakes", OpInfo("Snowflakes", _P, _GRAY_RGB)),
    ("Rain", OpInfo("Rain", _P, _GRAY_RGB)),
    ("Sequential", OpInfo("Sequential", _M, example={"children": ["Fliplr"]}, children=("children",))),
    ("Sometimes", OpInfo("Sometimes", _M, example={"p": 0.5, "then": ["Fliplr"], "else": ["Flipud"]},
                         children=("then", "else"), renames={"then": "then_list", "else": "else_list"})),
    ("OneOf", OpInfo("OneOf", _M, example={"children": ["Fliplr", "Flipud"]}, children=("children",))),
    ("SomeOf", OpInfo("SomeOf", _M, example={"n": [0, 2], "children": ["Fliplr", "Flipud"]}, children=("children",))),
    ("Identity", OpInfo("Identity", _M)),
]
_TV_TABLE: List[Tuple[str, OpInfo]] = [
    ("RandomHorizontalFlip", OpInfo("RandomHorizontalFlip", _G)),
    ("RandomVerticalFlip", OpInfo("RandomVerticalFlip", _G)),
    ("RandomRotation", OpInfo("RandomRotation", _G, example={"degrees": 25})),
    ("RandomAffine", OpInfo("RandomAffine", _G, example={"degrees": 10, "translate": [0.1, 0.1], "scale": [0.9, 1.1]})),
    ("RandomPerspective", OpInfo("RandomPerspective", _G)),
    ("ElasticTransform", OpInfo("ElasticTransform", _G)),
    ("RandomResizedCrop", OpInfo("RandomResizedCrop", _G, size_kwargs=("size",))),
    ("RandomCrop", OpInfo("RandomCrop", _G, size_kwargs=("size",), defaults={"pad_if_needed": True})),
    ("CenterCrop", OpInfo("CenterCrop", _G, size_kwargs=("size",))),
    ("Resize", OpInfo("Resize", _G, size_kwargs=("size",))),
    ("Pad", OpInfo("Pad", _G, example={"padding": 4})),
    ("RandomZoomOut", OpInfo("RandomZoomOut", _G, example={"side_range": [1.0, 1.5]})),
    ("ColorJitter", OpInfo("ColorJitter", _P, _GRAY_RGB, example={"brightness": 0.2, "contrast": 0.2,
                                                                  "saturation": 0.2, "hue": 0.05})),
    ("RandomGrayscale", OpInfo("RandomGrayscale", _P, _GRAY_RGB, example={"p": 0.2})),
    ("Grayscale", OpInfo("Grayscale", _P, _GRAY_RGB, defaults={"num_output_channels": 3})),
    ("RandomPhotometricDistort", OpInfo("RandomPhotometricDistort", _P, _GRAY_RGB)),
    ("GaussianBlur", OpInfo("GaussianBlur", _P, example={"kernel_size": 3, "sigma": [0.1, 1.0]},
                            defaults={"kernel_size": 3})),
    ("GaussianNoise", OpInfo(None, _P, example={"sigma": [0, 0.05]})),  # ours: uint8, sigma range
    ("RandomInvert", OpInfo("RandomInvert", _P)),
    ("RandomPosterize", OpInfo("RandomPosterize", _P, example={"bits": 4}, defaults={"bits": 4})),
    ("RandomSolarize", OpInfo("RandomSolarize", _P, example={"threshold": 128}, defaults={"threshold": 128})),
    ("RandomAdjustSharpness", OpInfo("RandomAdjustSharpness", _P, _GRAY_RGB, example={"sharpness_factor": 2},
                                     defaults={"sharpness_factor": 2})),
    ("RandomAutocontrast", OpInfo("RandomAutocontrast", _P)),
    ("RandomEqualize", OpInfo("RandomEqualize", _P)),
    ("RandomErasing", OpInfo("RandomErasing", _P, example={"p": 0.5})),  # erases the image, not the mask
    ("AutoAugment", OpInfo("AutoAugment", _P, masks=False)),  # torchvision refuses masks for these four
    ("RandAugment", OpInfo("RandAugment", _P, masks=False)),
    ("TrivialAugmentWide", OpInfo("TrivialAugmentWide", _P, masks=False)),
    ("AugMix", OpInfo("AugMix", _P, masks=False)),
    ("Compose", OpInfo("Compose", _M, example={"transforms": ["RandomHorizontalFlip"]}, children=("transforms",))),
    ("RandomApply", OpInfo("RandomApply", _M, example={"transforms": ["RandomVerticalFlip"], "p": 0.5},
                           children=("transforms",))),
    ("RandomChoice", OpInfo("RandomChoice", _M, example={"transforms": ["RandomHorizontalFlip", "RandomVerticalFlip"]},
                            children=("transforms",))),
    ("RandomOrder", OpInfo("RandomOrder", _M, example={"transforms": ["RandomHorizontalFlip", "RandomInvert"]},
                           children=("transforms",))),
    ("Identity", OpInfo("Identity", _M)),
]
for _name, _info in _IMGAUG_TABLE:
    IMGAUG_OPS.register(_name, _info, aliases=("Noop",) if _name == "Identity" else ())
for _name, _info in _TV_TABLE:
    TORCHVISION_OPS.register(_name, _info)
# each concrete backend's registry (the albumentations table lives in kernel.augment.albu_ops)
REGISTRIES: Dict[str, Registry[OpInfo]] = {"imgaug": IMGAUG_OPS, "torchvision": TORCHVISION_OPS, "albumentations": ALBU_OPS}


def split_entry(entry: Any, where: str) -> Tuple[str, Any]:
    """``"Fliplr"`` -> ("Fliplr", {}); ``{"Affine": {...}}`` -> ("Affine", {...}); else ConfigError."""
    if isinstance(entry, str):
        return entry, {}
    if isinstance(entry, dict) and len(entry) == 1:
        name, args = next(iter(entry.items()))
        if isinstance(name, str):
            return name, {} if args is None else args
    raise ConfigError(f"{where}: each op is a name or a one-key mapping {{Name: {{kwarg: value}}}}, got {entry!r}")


def op_names(ops: Any, where: str = "augmentation") -> List[str]:
    """All op names in an op list, nested ones included (used to pick a backend for ``auto``)."""
    names: List[str] = []
    for entry in _as_list(ops, where):
        name, args = split_entry(entry, where)
        names.append(name)
        if isinstance(args, dict):
            for key in ("children", "then", "else", "then_list", "else_list", "transforms"):
                if isinstance(args.get(key), (list, dict, str)):
                    names.extend(op_names(args[key], where))
    return names


def check_names(names: Sequence[str], backend: str, where: str = "augmentation") -> None:
    """ConfigError for ToTensor/Normalize (always appended) and for names unknown to ``backend``."""
    for n in names:
        if n in AUTOMATIC_OPS or n in ALBU_AUTOMATIC:
            raise ConfigError(f"{where}: {n!r} is added automatically at the end of every pipeline "
                              "(to tensor + normalize with the model's mean/std); remove it from the list")
    registry = REGISTRIES[backend]
    for n in names:
        registry.canonical(n)  # unknown op -> ConfigError with the known names and the closest match


def _as_list(ops: Any, where: str) -> List[Any]:
    if ops is None:
        return []
    if isinstance(ops, (str, dict)):
        return [ops]
    if isinstance(ops, (list, tuple)):
        return list(ops)
    raise ConfigError(f"{where}: expected a list of ops, got {type(ops).__name__}")


def _imgaug_value(value: Any) -> Any:
    """YAML lists -> imgaug tuples (a tuple is imgaug's uniform range; a list would mean 'pick one').

    Lists of strings stay lists (categorical choice, e.g. ``mode: [constant, edge]``);
    ``{"choice": [0, 90, 180]}`` gives an explicit discrete choice.
    """
    if isinstance(value, dict):
        if set(value) == {"choice"}:
            return list(value["choice"])
        return {k: _imgaug_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        if value and all(isinstance(v, str) for v in value):
            return list(value)
        return tuple(_imgaug_value(v) for v in value)
    return value


def _tv_value(key: str, value: Any) -> Any:
    """YAML lists -> tuples; interpolation names -> torchvision InterpolationMode."""
    if key == "interpolation" and isinstance(value, str):
        from torchvision.transforms import InterpolationMode

        try:
            return InterpolationMode(value.lower())
        except ValueError:
            known = ", ".join(m.value for m in InterpolationMode)
            raise ConfigError(f"interpolation {value!r} unknown; use one of {known}") from None
    if isinstance(value, list):
        return tuple(_tv_value("", v) for v in value)
    return value


def _size_value(key: str, img_size: Any) -> Any:
    """The default of a size argument: S for a square output, or from (H, W): width W, height H, size [H, W]."""
    if isinstance(img_size, int):
        return img_size
    h, w = img_size
    return {"width": w, "height": h}.get(key, [h, w])


def build_ops(ops: Any, backend: str, *, img_size: Any, in_chans: int, where: str = "augmentation",
              skipped: Optional[List[str]] = None) -> List[Any]:
    """Instantiate an op list for ``backend`` ("imgaug" | "torchvision" | "albumentations"); returns library objects.

    Ops that cannot handle ``in_chans`` channels (colour ops on 1/4-channel data) are skipped and
    their names appended to ``skipped``. Constructor errors become ConfigError naming the op.
    """
    registry = REGISTRIES[backend]
    if backend == "imgaug":
        from .imgaug_compat import import_imgaug

        module = import_imgaug()
    elif backend == "albumentations":
        from .albu import import_albumentations

        module = import_albumentations()
    else:
        from torchvision.transforms import v2 as module
    out = []
    for entry in _as_list(ops, where):
        name, args = split_entry(entry, where)
        check_names([name], backend, where)
        info = registry.get(name)  # ConfigError with known names + closest match
        name = registry.canonical(name)
        if info.channels is not None and in_chans not in info.channels:
            if skipped is not None:
                skipped.append(name)
            continue
        pos: Tuple[Any, ...] = ()
        if not isinstance(args, dict):
            pos, args = (args,), {}
        kwargs: Dict[str, Any] = dict(info.defaults)
        for key, value in args.items():
            if key in info.children:
                value = build_ops(value, backend, img_size=img_size, in_chans=in_chans, where=f"{where}: {name}.{key}",
                                  skipped=skipped) if value is not None else None
                if backend == "imgaug" and not value and name != "Sequential":
                    value = None  # imgaug wants None, not [], for an empty branch
            elif backend == "imgaug":
                value = _imgaug_value(value)
            elif backend == "albumentations":
                value = albu_value(key, value)
            else:
                value = _tv_value(key, value)
            kwargs[info.renames.get(key, key)] = value
        if not pos:
            for key in info.size_kwargs:
                kwargs.setdefault(key, (albu_size_value if backend == "albumentations" else _size_value)(key, img_size))
        factory = custom_factory(name, backend, module) if info.attr is None else getattr(module, info.attr)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                # albumentations only warns about an unknown kwarg and drops it: a typo must fail like elsewhere
                warnings.filterwarnings("error", message=r"Argument\(s\) .* are not valid for transform")
                out.append(factory(*pos, **kwargs))
        except Exception as e:  # TypeError (bad kwarg), ValueError/AssertionError (bad value)
            example = {name: info.example} if info.example else name
            raise ConfigError(f"{where}: op {name!r} rejected its arguments {args!r}: {type(e).__name__}: {e}; "
                              f"example: {example!r}") from None
    return out


def describe(ops: Sequence[Any]) -> str:
    """Short text of an op list for logs: ``Fliplr, Affine, Sometimes`` (a saved albumentations pipeline: its ops)."""
    from .albu import is_serialized, serialized_names

    if is_serialized(ops):
        return "saved albumentations " + ", ".join(serialized_names(ops))
    return ", ".join(split_entry(e, "augmentation")[0] for e in ops) or "(none)"
