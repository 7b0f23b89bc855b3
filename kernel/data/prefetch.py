"""Batches on the training device: the copy, the float conversion and the target decoding after it.

Workers hand over uint8 images (and masks in the smallest integer type that holds them); a
:class:`DeviceLoader` wraps the DataLoader and yields each batch as the step takes it, ``finish(batch)`` having
copied it to the device and normalized it there. On CUDA it does so on a side stream for the *next* batch
while the current one trains (timm's ``PrefetchLoader``): the loader's pinned memory makes the copy
asynchronous, and the main stream waits for the side stream before it uses a batch. Elsewhere each batch is
finished when it is taken, with the same operations, so a CPU run is bit-identical either way.
"""
from __future__ import annotations

from typing import Any, Callable, Iterator

import torch

__all__ = ["DeviceLoader"]


def _tensors(batch: Any) -> Iterator[torch.Tensor]:
    """Every tensor of a nested batch (tuples, lists, dicts)."""
    if torch.is_tensor(batch):
        yield batch
    elif isinstance(batch, dict):
        for v in batch.values():
            yield from _tensors(v)
    elif isinstance(batch, (list, tuple)):
        for v in batch:
            yield from _tensors(v)


class DeviceLoader:
    """Iterate ``loader``'s batches finished on ``device`` by ``finish(batch) -> batch`` (see the module doc).

    ``len``, ``dataset``, ``sampler`` and ``batch_size`` are the loader's, so it stands wherever the loader did.
    """

    def __init__(self, loader: Any, finish: Callable[[Any], Any], device: torch.device) -> None:
        self.loader, self.finish, self.device = loader, finish, device

    def __len__(self) -> int:
        return len(self.loader)

    @property
    def dataset(self) -> Any:
        return self.loader.dataset

    @property
    def sampler(self) -> Any:
        return self.loader.sampler

    @property
    def batch_size(self) -> Any:
        return self.loader.batch_size

    def close(self) -> None:
        """Stop the loader's persistent workers (see :meth:`kernel.data.loader._Loader.close`); a plain
        DataLoader has nothing to stop."""
        close = getattr(self.loader, "close", None)
        if close is not None:
            close()

    def __iter__(self) -> Iterator[Any]:
        if self.device.type != "cuda":
            for batch in self.loader:
                yield self.finish(batch)
            return
        stream, main = torch.cuda.Stream(self.device), torch.cuda.current_stream(self.device)
        ready, have = None, False
        for batch in self.loader:
            stream.wait_stream(main)  # the side stream may reuse memory the main stream has just freed
            with torch.cuda.stream(stream):
                nxt = self.finish(batch)
            if have:
                yield ready
            main.wait_stream(stream)
            for t in _tensors(nxt):  # made on the side stream, used on the main one: keep the allocator off them
                if t.is_cuda:
                    t.record_stream(main)
            ready, have = nxt, True
        if have:
            yield ready
