"""Make imgaug 0.4.0 (the last release) import and run on NumPy >= 2 and OpenCV 4.14 / 5.x.

imgaug is unmaintained; on today's stack it breaks in four places:

* ``imgaug/imgaug.py`` reads ``np.sctypes`` at import (removed in NumPy 2.0);
* ``parameters.py`` uses ``np.complex`` (removed in NumPy 1.24) in ``FrequencyNoise`` and the
  ``power`` of ``FromLowerResolution``-style parameters, so ``Clouds`` and ``Fog`` crash;
* ``meta.py`` / ``polys.py`` use ``np.bool`` (removed in 1.24, back as ``np.bool_`` in 2.0);
* ``ElasticTransformation._map_coordinates`` passes float64 maps to ``cv2.convertMaps``, which
  OpenCV 4.14+ rejects (it wants float32 maps).

One correctness patch rides along: imgaug resizes segmentation maps with ``cv2.INTER_NEAREST``,
which is offset by up to a pixel from the bilinear image; it is switched to INTER_NEAREST_EXACT.

Everything here is patched at runtime, never in site-packages, so the same code works on the
copy of imgaug vendored into the Kaggle code dataset. The NumPy aliases are only added when
missing, so older NumPy is left alone. Call :func:`import_imgaug` instead of ``import imgaug``.
"""
from __future__ import annotations

import importlib
import threading
from types import ModuleType
from typing import Any, Dict, List

__all__ = ["import_imgaug", "imgaug_available", "apply_numpy_aliases", "patches_applied", "HOW_TO_INSTALL"]

HOW_TO_INSTALL = (
    "install it with `pip install imgaug` (or `pip install --no-deps imgaug` when its pinned "
    "dependencies clash), or on Kaggle attach the kernel code dataset that vendors imgaug and put "
    "its folder on sys.path; or use --aug-backend torchvision"
)

_LOCK = threading.Lock()
_APPLIED: List[str] = []  # names of the patches made in this process, for reports and tests
_SENTINEL = "_kernel_compat_patched"


def apply_numpy_aliases() -> List[str]:
    """Restore the NumPy names imgaug 0.4.0 reads, only where they are missing; return those added.

    ``np.object`` / ``np.str`` are deliberately NOT restored: imgaug does not use them and NumPy
    plans to reuse those names for scalar types (it warns with a FutureWarning on access).
    """
    import numpy as np

    added: List[str] = []
    # hasattr() on a removed alias raises inside numpy's __getattr__ -> False; that is the test.
    if not _has(np, "sctypes"):
        np.sctypes = _build_sctypes(np)  # type: ignore[attr-defined]
        added.append("np.sctypes")
    for name, value in (("complex", complex), ("float", float), ("int", int), ("bool", bool)):
        if not _has(np, name):
            setattr(np, name, value)
            added.append(f"np.{name}")
    return added


def _has(module: ModuleType, name: str) -> bool:
    try:
        getattr(module, name)
        return True
    except AttributeError:
        return False


def _build_sctypes(np: Any) -> Dict[str, list]:
    """The NumPy 1.x ``np.sctypes`` table (only the keys imgaug reads must be exact)."""
    floats = [np.float16, np.float32, np.float64] + ([np.longdouble] if np.longdouble is not np.float64 else [])
    complexes = [np.complex64, np.complex128] + ([np.clongdouble] if np.clongdouble is not np.complex128 else [])
    return {
        "int": [np.int8, np.int16, np.int32, np.int64],
        "uint": [np.uint8, np.uint16, np.uint32, np.uint64],
        "float": floats,
        "complex": complexes,
        "others": [bool, object, bytes, str, np.void],
    }


def _patch_scipy() -> List[str]:
    """imgaug calls ``scipy.ndimage.interpolation.map_coordinates``; that namespace goes in SciPy 2."""
    try:
        from scipy import ndimage
    except ImportError:  # imgaug itself will report the missing dependency
        return []
    if _has(ndimage, "interpolation"):
        return []
    ndimage.interpolation = ndimage  # type: ignore[attr-defined]
    return ["scipy.ndimage.interpolation"]


def _patch_elastic(iaa: ModuleType) -> List[str]:
    """Cast the displacement fields to float32 so cv2.convertMaps / cv2.remap accept them.

    imgaug builds ``x + (-1) * dx`` with float64 ``dx`` (from its Gaussian smoothing), which
    OpenCV >= 4.14 rejects in ``convertMaps``. float32 is what OpenCV always used internally, so
    results match imgaug on older OpenCV.
    """
    import numpy as np

    cls = iaa.ElasticTransformation
    if getattr(cls, _SENTINEL, False):
        return []
    original = cls.__dict__["_map_coordinates"].__func__

    def _map_coordinates(klass: Any, image: Any, dx: Any, dy: Any, order: int = 1, cval: Any = 0,
                         mode: str = "constant") -> Any:
        dx = np.asarray(dx, dtype=np.float32)
        dy = np.asarray(dy, dtype=np.float32)
        return original(klass, image, dx, dy, order=order, cval=cval, mode=mode)

    cls._map_coordinates = classmethod(_map_coordinates)
    setattr(cls, _SENTINEL, True)
    return ["ElasticTransformation._map_coordinates(float32 maps)"]


class _Cv2NearestExact:
    """Stand-in for the ``cv2`` module inside ``imgaug.imgaug``: resize with INTER_NEAREST_EXACT.

    imgaug resizes segmentation maps with cv2.INTER_NEAREST, which samples at floor(x * scale)
    and so shifts masks by up to one source pixel against the bilinear image (CropAndPad,
    PerspectiveTransform and Resize with keep_size). INTER_NEAREST_EXACT samples pixel centers.
    """

    def __init__(self, cv2: ModuleType):
        self._cv2 = cv2

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cv2, name)

    def resize(self, src: Any, dsize: Any, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("interpolation") == self._cv2.INTER_NEAREST:
            kwargs["interpolation"] = self._cv2.INTER_NEAREST_EXACT
        return self._cv2.resize(src, dsize, *args, **kwargs)


def _patch_nearest_resize() -> List[str]:
    import cv2

    core = importlib.import_module("imgaug.imgaug")
    if not hasattr(cv2, "INTER_NEAREST_EXACT") or isinstance(getattr(core, "cv2", None), _Cv2NearestExact):
        return []
    core.cv2 = _Cv2NearestExact(cv2)
    return ["imgaug.imgaug resize: INTER_NEAREST -> INTER_NEAREST_EXACT (mask alignment)"]


def import_imgaug() -> ModuleType:
    """Patch NumPy/SciPy names, import imgaug, patch its OpenCV-facing code; return ``imgaug.augmenters``.

    Raises ImportError (with :data:`HOW_TO_INSTALL` in the message) when imgaug is not importable.
    Safe to call repeatedly and from several threads; patches are applied once per process.
    """
    with _LOCK:
        if not _APPLIED:
            _APPLIED.extend(apply_numpy_aliases())
            _APPLIED.extend(_patch_scipy())
        try:
            iaa = importlib.import_module("imgaug.augmenters")
        except Exception as e:  # ImportError, or an API break we have no patch for yet
            raise ImportError(f"imgaug is not importable ({type(e).__name__}: {e}); {HOW_TO_INSTALL}") from e
        _APPLIED.extend(_patch_elastic(iaa))
        _APPLIED.extend(_patch_nearest_resize())
        if "imported" not in _APPLIED:
            _APPLIED.append("imported")
        return iaa


def imgaug_available() -> bool:
    """True when :func:`import_imgaug` succeeds (imgaug installed or vendored on sys.path)."""
    try:
        import_imgaug()
        return True
    except ImportError:
        return False


def patches_applied() -> List[str]:
    """The compatibility patches this process made so far (e.g. ``['np.sctypes', 'np.complex', ...]``)."""
    return [p for p in _APPLIED if p != "imported"]
