"""Sample order that depends only on (seed, epoch): any resume point, any worker count, any process count.

:class:`EpochSampler` yields ``(epoch, index)`` keys: a seeded permutation of the dataset for the epoch
(or the plain order for validation), sharded over the processes of a distributed run, starting after
the batches a resumed run has already seen (they are skipped, not loaded). The dataset seeds each
sample's augmentation from :func:`sample_seed` (seed, epoch, index), so the same sample gets the same
augmentation whichever worker, process or resume point reads it.
"""
from __future__ import annotations

from typing import Iterator, List, Tuple

import numpy as np
from torch.utils.data import Sampler

__all__ = ["EpochSampler", "sample_seed"]


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 32-bit seed for one sample's augmentation, distinct per (seed, epoch, index)."""
    return int(np.random.SeedSequence([seed & 0xFFFFFFFF, epoch, index]).generate_state(1)[0])


class EpochSampler(Sampler):
    """Keys ``(epoch, index)`` for one epoch; call :meth:`set_epoch` before each epoch.

    ``shuffle`` (training): a permutation seeded by (seed, epoch); with ``world`` processes it is padded to
    a multiple of ``world`` (repeating its start, as torch's DistributedSampler does) and process ``rank``
    takes every ``world``-th key, so the processes' batches together are the single-process batches.
    Without ``shuffle`` (validation) the order is plain and not padded: every image is counted exactly
    once across the processes. ``drop_last`` drops each process's last, incomplete batch.
    """

    def __init__(self, n: int, *, seed: int, shuffle: bool, batch_size: int, drop_last: bool, rank: int = 0,
                 world: int = 1):
        self.n, self.seed, self.shuffle, self.batch_size, self.drop_last = n, seed, shuffle, batch_size, drop_last
        self.rank, self.world = rank, world
        self.epoch, self.skip = 1, 0

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        """The epoch to draw, and how many of this process's batches were already seen (a mid-epoch resume)."""
        self.epoch, self.skip = int(epoch), int(skip_batches)

    def order(self) -> List[int]:
        """This process's indices for the epoch, all of them (before skipping)."""
        if self.shuffle:
            idx = np.random.default_rng([self.seed & 0xFFFFFFFF, self.epoch]).permutation(self.n)
            if self.world > 1:
                idx = np.concatenate([idx, idx[: (-self.n) % self.world]])
        else:
            idx = np.arange(self.n)
        idx = idx[self.rank::self.world]
        if self.drop_last and len(idx) > self.batch_size:
            idx = idx[: len(idx) // self.batch_size * self.batch_size]
        return idx.tolist()

    def __iter__(self) -> Iterator[Tuple[int, int]]:
        for i in self.order()[self.skip * self.batch_size:]:
            yield self.epoch, i

    def __len__(self) -> int:
        return max(0, len(self.order()) - self.skip * self.batch_size)
