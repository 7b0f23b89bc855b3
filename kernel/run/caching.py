"""The run's decoded-image cache: whether ``--cache`` is on, where it lives, what it reports and exports.

:func:`open_caches` decides once per run, before the loaders are built: ``auto`` is on when the run has more
than one epoch, its data are files, and the cache fits (:func:`~kernel.data.cache.estimate_bytes` against the
free space or ``--cache-limit``); an explicit ``ram``/``disk`` that cannot be honoured says why in one line and
the run trains uncached. :class:`RunCache` holds the stores of the run's datasets (one, unless training and
validation resize differently), counts what each epoch built, and writes the ``summary.json`` entry.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional

from ..data.cache import (CachedSource, PixelStore, cache_folder, cacheable, estimate_bytes, export_store,
                          find_exports, fits, namespace)
from ..data.split import DataSplit
from ..engine.distributed import world
from ..options import Options
from ..paths import mounted_roots, scratch_root

__all__ = ["RunCache", "open_caches", "cache_spec"]

log = logging.getLogger("kernel")
# The options that shape the stored pixels besides the transform's first resize: which files, and how masks
# are made from them. Labels are not among them: targets are never cached.
PIXEL_OPTIONS = ("task", "data", "val_data", "csv", "image_dir", "image_col", "in_chans", "fast_decode", "seg_mode",
                 "rle_col", "class_col", "rle_order")


@dataclass
class RunCache:
    """The stores the run's datasets read through, and the counts of the last epoch."""

    mode: str
    stores: Dict[str, PixelStore]        # namespace -> store
    reads_per_epoch: int                 # images an epoch reads, every process together (the loaders set it)
    _entries: int = 0
    last: Dict[str, Any] = field(default_factory=dict)

    def wrap(self, source: Any, transform: Any, opts: Options) -> CachedSource:
        """``source`` read through the store of ``transform``'s pixels."""
        return CachedSource(source, self.stores[namespace(cache_spec(opts, transform))], transform.presize)

    def stats(self) -> Dict[str, Any]:
        totals = {"entries": 0, "bad": 0, "bytes": 0, "build_s": 0.0}
        for store in self.stores.values():
            for key, value in store.stats().items():
                totals[key] += value
        return totals

    def end_epoch(self, epoch: int) -> None:
        """Log the cache's size, build time and this epoch's hit rate (main process)."""
        s = self.stats()
        built, self._entries = s["entries"] - self._entries, s["entries"]
        hit = max(0.0, 1.0 - built / max(1, self.reads_per_epoch))
        self.last = {"mode": self.mode, "dir": [str(st.folder) for st in self.stores.values()], **s,
                     "build_s": round(s["build_s"], 1), "hit_rate": round(hit, 4), "epoch": epoch}
        if world().main:
            log.info("cache: %d images, %.1f MB, built in %.1f s; epoch %d read %.0f%% from it (%d new)",
                     s["entries"], s["bytes"] / 2**20, s["build_s"], epoch, 100 * hit, built)

    def summary(self) -> Dict[str, Any]:
        """The ``cache`` entry of ``summary.json``."""
        return self.last or {"mode": self.mode, "dir": [str(st.folder) for st in self.stores.values()],
                             **self.stats()}

    def close(self) -> None:
        """Close the stores' files in this process (see :meth:`~kernel.data.cache.PixelStore.close`)."""
        for store in self.stores.values():
            store.close()

    def export(self, target: str) -> None:
        """``--cache-export DIR`` (main process): copy every store there, marked for later runs."""
        if not world().main:
            return
        for store in self.stores.values():
            dest = export_store(store, Path(target))
            log.info("cache exported to %s: attach %s as a dataset and later runs read it instead of decoding",
                     dest, target)


def _skip(mode: str, why: str) -> None:
    if mode != "auto" and world().main:
        log.warning("--cache %s: %s; training uncached", mode, why)


def open_caches(opts: Options, split: DataSplit, transforms: Dict[str, Any]) -> Optional[RunCache]:
    """The run's cache for the datasets ``transforms`` (``"train"``/``"val"`` -> transform), or None (off: the
    mode, one epoch, generated data, a transform without a first resize, or no room)."""
    mode = opts.cache
    if mode == "off":
        return None
    if mode == "auto" and opts.epochs <= 1:
        return None  # one pass: a cache would only cost its writes
    sources = {"train": split.train, "val": split.val}
    if not all(cacheable(sources[k]) for k in transforms if len(sources[k])):
        _skip(mode, "the data are not image files (generated data has nothing to decode)")
        return None
    if not all(callable(getattr(t, "presize", None)) for t in transforms.values()):
        _skip(mode, "the transform has no first resize to store")
        return None
    folder = cache_folder(mode, opts.cache_dir, scratch_root())
    if mode == "ram" and not opts.cache_dir and not folder.parent.is_dir():
        _skip(mode, f"{folder.parent} (shared memory) does not exist here; use --cache disk")
        return None
    stores: Dict[str, PixelStore] = {}
    need = 0
    for kind, transform in transforms.items():
        ns = namespace(cache_spec(opts, transform))
        if ns not in stores:
            stores[ns] = PixelStore(folder / ns, find_exports(mounted_roots(), ns))
        have = stores[ns].stats()["bytes"]
        need += max(0, estimate_bytes(sources[kind], transform.presized_shape, opts.in_chans,
                                      with_mask=opts.task == "segment") - have // max(1, len(transforms)))
    ok, words = fits(need, folder, opts.cache_limit)
    if not ok:
        if world().main:
            log.warning("--cache %s: the decoded-image cache does not fit (%s); training uncached: free space in %s "
                        "or raise --cache-limit", mode, words, folder)
        return None
    if world().main:
        log.info("cache: decoded images in %s (%s)%s", folder, words,
                 "".join(f"; reading the export {p}" for st in stores.values() for p in st.extra))
    return RunCache("disk" if mode == "auto" else mode, stores, len(split.train) + len(split.val))


def cache_spec(opts: Options, transform: Any) -> Dict[str, Any]:
    """What shapes a dataset's stored pixels: the transform's first resize and :data:`PIXEL_OPTIONS`."""
    return {"resize_to": transform.resize_to, "fit": transform.fit, "interpolation": transform.interpolation,
            **{k: getattr(opts, k) for k in PIXEL_OPTIONS}}

