"""Our own augmentation ops (uint8 Gaussian noise) for both backends, built on first use.

Own module because these are op implementations, not registry data: :mod:`kernel.augment.ops` looks
them up through :func:`custom_factory`. Their base classes live in imgaug / torchvision, so the
classes are defined lazily and nothing heavy is imported here at import time.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

__all__ = ["add_gaussian_noise", "custom_factory"]


# Our Gaussian noise: uint8 in, uint8 out, sigma as a fraction of 255 (same unit as v2.GaussianNoise).
# imgaug's AdditiveGaussianNoise samples float64 per pixel and then goes through generic dtype code:
# ~0.9 ms per 224px image; cv2.randn into int16 + saturating cv2.add takes ~0.15 ms.


def add_gaussian_noise(image: np.ndarray, sigma: float, seed: int, per_channel: bool = False) -> np.ndarray:
    """Add N(0, (sigma*255)^2) noise to an (H, W, C) uint8 image, saturating; deterministic in ``seed``."""
    import cv2

    h, w, c = image.shape
    if sigma <= 0:
        return image
    cv2.setRNGSeed(int(seed) % (2 ** 31))
    # one channel shaped (H, W*C): cv2.randn's scalar stddev applies to the first channel only
    noise = np.empty((h, w * c) if per_channel else (h, w), np.int16)
    cv2.randn(noise, 0.0, float(sigma) * 255.0)
    noise = noise.reshape(h, w, c) if per_channel else (noise[..., None] if c == 1 else cv2.merge([noise] * c))
    out = cv2.add(image, noise.reshape(h, w, c), dtype=cv2.CV_8U)
    return out.reshape(h, w, c)


_CUSTOM: Dict[str, Callable[..., Any]] = {}


def custom_factory(name: str, backend: str, module: Any) -> Callable[..., Any]:
    """Our own ops, defined lazily (their base classes live in imgaug / torchvision)."""
    key = f"{backend}.{name}"
    if key not in _CUSTOM:
        _CUSTOM[key] = _make_imgaug_noise(module) if backend == "imgaug" else _make_tv_noise()
    return _CUSTOM[key]


def _check_sigma(sigma: Any) -> Tuple[float, float]:
    lo, hi = (sigma, sigma) if isinstance(sigma, (int, float)) else tuple(sigma)
    if not 0 <= lo <= hi:
        raise ValueError(f"sigma must be a number or [low, high] with 0 <= low <= high, got {sigma!r}")
    return float(lo), float(hi)


def _make_imgaug_noise(iaa: Any) -> Callable[..., Any]:
    class GaussianNoise(iaa.meta.Augmenter):
        """imgaug augmenter: uint8 Gaussian noise, sigma ~ U(lo, hi) per image (fraction of 255)."""

        def __init__(self, sigma: Any = (0.0, 0.05), per_channel: bool = False, seed: Any = None,
                     name: Optional[str] = None) -> None:
            super().__init__(seed=seed, name=name)
            self.sigma = _check_sigma(sigma)
            self.per_channel = bool(per_channel)

        def _augment_batch_(self, batch: Any, random_state: Any, parents: Any, hooks: Any) -> Any:
            if batch.images is None:
                return batch
            n = len(batch.images)
            sigmas = random_state.uniform(self.sigma[0], self.sigma[1], size=(n,))
            seeds = random_state.integers(0, 2 ** 31 - 1, size=(n,))
            for i in range(n):
                img = batch.images[i]
                if img.dtype != np.uint8:
                    raise ValueError(f"GaussianNoise expects uint8 images, got {img.dtype}")
                batch.images[i] = add_gaussian_noise(img, sigmas[i], seeds[i], self.per_channel)
            return batch

        def get_parameters(self) -> List[Any]:
            return [self.sigma, self.per_channel]

    return GaussianNoise


def _make_tv_noise() -> Callable[..., Any]:
    import torch
    from torchvision import tv_tensors
    from torchvision.transforms import v2

    class GaussianNoise(v2.Transform):
        """v2 transform: uint8 Gaussian noise on tv_tensors.Image only (masks pass through)."""

        _transformed_types = (tv_tensors.Image,)

        def __init__(self, sigma: Any = (0.0, 0.05), per_channel: bool = False, p: float = 1.0) -> None:
            super().__init__()
            self.sigma = _check_sigma(sigma)
            self.per_channel, self.p = bool(per_channel), float(p)

        def make_params(self, flat_inputs: List[Any]) -> Dict[str, Any]:
            # torch's RNG, like every v2 transform: reproducible from torch's state, distinct per worker
            apply = float(torch.rand(())) < self.p
            sigma = self.sigma[0] + float(torch.rand(())) * (self.sigma[1] - self.sigma[0])
            return {"sigma": sigma if apply else 0.0, "seed": int(torch.randint(0, 2 ** 31 - 1, ()))}

        _get_params = make_params  # torchvision < 0.21 name

        def transform(self, inpt: Any, params: Dict[str, Any]) -> Any:
            if params["sigma"] <= 0 or inpt.dtype != torch.uint8:
                return inpt
            hwc = inpt.permute(1, 2, 0).contiguous().numpy()
            out = add_gaussian_noise(hwc, params["sigma"], params["seed"], self.per_channel)
            return tv_tensors.wrap(torch.from_numpy(out).permute(2, 0, 1), like=inpt)

        _transform = transform  # torchvision < 0.21 name

    return GaussianNoise
