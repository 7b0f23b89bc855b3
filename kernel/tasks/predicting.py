"""The prediction pass every task shares: a task's step over the images to predict, batch by batch.

:func:`predict_batches` runs ``step(model, images, None)`` (see :mod:`kernel.engine.step`) under the run's
autocast over an :class:`~kernel.data.ImageList`, in order, and records the images that cannot be read.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import torch

from ..data import ImageList, build_loader
from ..engine.amp import forward, resolve_amp_dtype
from ..engine.step import to_device
from ..errors import ConfigError

__all__ = ["predict_batches"]


@torch.no_grad()
def predict_batches(model: Any, step: Callable, images: ImageList, *, device: torch.device, batch_size: int,
                    workers: int, amp: bool, bad: Optional[Dict[int, str]] = None) -> Iterator[Tuple[List[int], Any]]:
    """(the images' indices, the step's outputs on ``device``, e.g. (B, C) logits) per batch of ``images``.

    An image that cannot be read stops with one line naming it, unless ``bad`` is given: then it is recorded there
    (index -> why) and its row of the outputs, the model's output on a blank image, is the caller's to replace or
    leave out."""
    dtype = resolve_amp_dtype(device, amp)
    loader = build_loader(images, batch_size=batch_size, workers=workers, device=device,
                          persistent=False)  # one pass: no workers kept
    for batch, index, errors in loader:
        for i, error in zip(index.tolist(), errors):
            if error and bad is None:
                raise ConfigError(f"inputs: cannot read image {images.paths[i]!r} ({error})")
            if error:
                bad[i] = error
        _, outputs = forward(step, model, to_device(batch, device), None, device, dtype)
        yield index.tolist(), outputs
