"""From sources to batches: the transformed dataset, prediction image lists and the DataLoader.

A *source* yields raw samples ``(image (H, W, C) uint8, target, mask | None)``; a
:class:`TransformedDataset` applies the augmentation callable and returns tensors. The transform is
passed in, so this module does not depend on the augmentation backends.

A loader's workers leave SIGTERM and SIGINT to the main process: ``timeout``, SLURM, a container's stop and
Ctrl-C signal every process of the run, and a worker that died of it would end the run ("DataLoader worker is
killed by signal") before the main process, which saves first, could stop it. The main process's own SIGTERM
still ends a worker (its shutdown of stuck workers, multiprocessing's at exit).
"""
from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager
from functools import partial
from typing import Any, Callable, Iterator, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .guard import ReadGuard, read_error
from .images import Draft, decoding, load_image
from .sampler import sample_seed

__all__ = ["TransformedDataset", "ImageList", "build_loader", "transform_draft"]


def transform_draft(transform: Any, fast_decode: str) -> Draft:
    """The draft for ``--fast-decode`` (resolved: on/off) with ``transform``: the size of its first resize (the
    shorter side, or the exact (H, W)); None when off or when the transform has no such resize."""
    return getattr(transform, "resize_to", None) if fast_decode == "on" else None


class TransformedDataset(Dataset):
    """Apply ``transform(image, mask) -> (tensor (C, H, W), mask (H, W) | None)`` to a source's samples.

    Items are ``(image, target)`` for classification; with ``mask_target`` (segmentation) they are
    ``(image, mask_target(mask))``, the augmented mask turned into the loss's target; ``with_mask``
    gives ``(image, target, mask)`` (previews). Samples are read through ``guard`` (a
    :class:`~kernel.data.guard.ReadGuard`) when given, so an unreadable file is replaced instead of
    ending the run. ``draft`` (``--fast-decode``, see :func:`~kernel.data.images.load_image`): what a JPEG
    decoded at reduced scale must keep, the size of the transform's first resize.
    """

    def __init__(self, source: Any, transform: Callable, with_mask: bool = False, guard: Optional[ReadGuard] = None,
                 mask_target: Optional[Callable] = None, seed: Optional[int] = None, draft: Draft = None):
        self.source, self.transform, self.with_mask, self.guard = source, transform, with_mask, guard
        self.mask_target, self.seed, self.draft = mask_target, seed, draft

    def __len__(self) -> int:
        return len(self.source)

    def transformed(self, key: Any) -> Tuple[torch.Tensor, Any, Optional[torch.Tensor]]:
        """(image tensor, the source's target, augmented mask or None) of sample ``key``: an index, or the
        ``(epoch, index)`` of an :class:`~kernel.data.sampler.EpochSampler`.

        With ``seed``, the augmentation draws from torch's RNG seeded by (seed, epoch, index) and the
        caller's RNG is left as it was: the same sample is augmented the same way in any worker, process
        or resumed run.
        """
        epoch, i = key if isinstance(key, tuple) else (0, key)
        with decoding(self.draft):
            image, target, mask = self.guard.read(self.source, i) if self.guard is not None else self.source[i]
        use_mask = self.with_mask or self.mask_target is not None
        if self.seed is None:
            image, mask = self.transform(image, mask if use_mask else None)
        else:
            with torch.random.fork_rng(devices=[]):
                # the CPU generator alone: torch.manual_seed would seed every accelerator's too, and records a
                # stack trace for each while CUDA is not initialised (a data loader's worker): slow per sample
                torch.default_generator.manual_seed(sample_seed(self.seed, epoch, i))
                image, mask = self.transform(image, mask if use_mask else None)
        return image, target, mask

    def __getitem__(self, key: Any) -> Tuple[torch.Tensor, Any]:
        image, target, mask = self.transformed(key)
        if self.mask_target is not None:
            return image, self.mask_target(mask)
        return (image, target, mask) if self.with_mask else (image, target)


class ImageList(Dataset):
    """Items ``(image (C, S, S) normalized, index, error)`` for prediction: files read with :func:`load_image`.

    An unreadable file does not raise (one bad test image must not cost the other predictions): its item
    holds a blank image and ``error`` says why (``""`` when the file was read), so the caller gives it a
    fallback prediction and names it.
    """

    def __init__(self, paths: Sequence[str], transform: Callable, in_chans: int, draft: Draft = None):
        self.paths, self.transform, self.in_chans, self.draft = list(paths), transform, in_chans, draft

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> Tuple[torch.Tensor, int, str]:
        try:
            image = load_image(self.paths[i], self.in_chans, self.draft)
        except Exception as e:  # any read failure, as in training (see guard.ReadGuard)
            # a blank image through the same transform: a tensor of the batch's shape, whose output is discarded
            blank = np.zeros((8, 8, self.in_chans), dtype=np.uint8)
            return self.transform(blank, None)[0], i, read_error(e)
        return self.transform(image, None)[0], i, ""


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _leave_stop_signals(init_fn: Optional[Callable[[int], None]], worker_id: int) -> None:
    """A worker's first step, then the loader's own ``worker_init_fn``: SIGINT is ignored (nothing sends it to a
    worker alone); SIGTERM stays held for a thread that ends the worker when its main process sends it, as the
    loader's shutdown and multiprocessing's at exit do (ignored, they would wait for it for ever), and leaves any
    other sender's to the main process, which got its own."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # also drops one that came while it was held
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # in every thread started from here on
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    threading.Thread(target=_exit_on_parents_sigterm, args=(os.getppid(),), name="sigterm", daemon=True).start()
    if init_fn is not None:
        init_fn(worker_id)


def _exit_on_parents_sigterm(parent: int) -> None:
    """Take each SIGTERM sent to this worker; exit at once (as torch's own handler does) when ``parent`` sent it."""
    while True:
        if signal.sigwaitinfo({signal.SIGTERM}).si_pid == parent:
            os._exit(0)


@contextmanager
def _stop_signals_held() -> Iterator[None]:
    """Hold the stop signals in this thread while workers start: a forked worker inherits the mask, so a signal
    sent before it ignores them cannot kill it; this process receives its own when they are released."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


class _Loader(DataLoader):
    """A DataLoader whose workers leave the stop signals to the main process (see the module doc)."""

    def __iter__(self) -> Any:
        if self.num_workers == 0:
            return super().__iter__()
        # workers start here (persistent ones at the first iterator only), and the pin-memory thread on CUDA:
        # it keeps them held, so they reach the main thread, which handles them
        with _stop_signals_held():
            return super().__iter__()

    def close(self) -> None:
        """Stop the persistent workers now (a later ``iter`` starts new ones), as Lightning does when a loop ends.

        Left to the garbage collector, they cost seconds: a loader in a reference cycle is collected with its
        iterator, and the collector runs the iterator's queues' finalizers (which stop the threads that feed the
        workers' index queues) before the iterator's ``__del__``, so the workers never receive the request to exit
        and torch waits 5 s for each before it kills it. A process that runs several trainings (k-fold, a notebook,
        the tests) met that at the next run's start; one that exits is cleaned up by torch at exit."""
        iterator = getattr(self, "_iterator", None)  # torch keeps a persistent-worker iterator here
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()
        self._iterator = None


def build_loader(dataset: Dataset, *, batch_size: int, workers: int, device: torch.device,
                 sampler: Optional[Sampler] = None, worker_init_fn: Optional[Callable] = None,
                 persistent: bool = True, seed: int = 0, collate_fn: Optional[Callable] = None) -> DataLoader:
    """A DataLoader with the usual care: pin_memory on CUDA; the order from ``sampler`` (training and
    validation: an :class:`~kernel.data.sampler.EpochSampler`) or the dataset's (prediction).

    The loader has its own generator (seeded with ``seed``) for its workers' base seed: without one, every
    new iterator takes a number from torch's global generator, so a resumed run (whose first iterator starts
    after the saved state is restored) would draw dropout and drop-path one number off the uninterrupted run.
    Its workers leave SIGTERM and SIGINT to the main process (see the module doc), then run ``worker_init_fn``.
    ``collate_fn``: how samples become a batch (the task's; None: torch's default).
    """
    return _Loader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=workers, pin_memory=device.type == "cuda",
        persistent_workers=persistent and workers > 0, worker_init_fn=partial(_leave_stop_signals, worker_init_fn),
        generator=torch.Generator().manual_seed(seed), collate_fn=collate_fn)
