"""The decoded-image cache (``--cache``): each training and validation image decoded and pre-resized once.

What is stored is exactly what the transform would compute first (the image decoded, converted to
``--in-chans``, with ``--fast-decode``'s draft, resized as the transform's first resize; the mask likewise,
nearest): every later read skips the decode and the resize, and augmentation still runs every epoch on
identical pixels, so per-sample seeding, worker-count invariance and exact resume hold unchanged (the
transform's first resize is then the identity: the pixels are already at its size).

The store is a folder of append-only shards, one per writing process (a DataLoader worker, a rank of a
multi-GPU run): ``<id>.bin`` holds the raw pixels, ``<id>.idx`` one JSON line per entry, written after its
pixels are. Any process reads every shard (memory-mapped), so what one worker stored serves the others, the
validation set, the next folds of a k-fold run and the other ranks. An index line whose pixels run past the
end of its ``.bin`` (a kill, a truncated copy), or a half-written line, is ignored: the entry is built again.

The folder is named by what shapes the pixels (:func:`namespace`), an entry by its files' paths, sizes and
modification times (:func:`file_key`): a changed option rebuilds everything, a changed file its entry only.
An unreadable file is stored as bad (with its reason), never with the pixels that replace it (the replacement
is the guard's, above the cache, and depends on the fold).
"""
from __future__ import annotations

import hashlib
import json
import logging
import mmap
import os
import secrets
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from .guard import read_error

__all__ = ["CACHE_MODES", "MANIFEST", "FORMAT", "CachedReadError", "PixelStore", "CachedSource", "cacheable",
           "file_key", "namespace", "estimate_bytes", "fits", "export_store", "find_exports", "cache_folder"]

log = logging.getLogger("kernel")
CACHE_MODES = ("auto", "off", "ram", "disk")
MANIFEST = "kernel-cache.json"  # marks an exported cache (--cache-export) that a later run may read
FORMAT = 1  # of the shards and index lines; part of the namespace, so a new format never reads an old one
ESTIMATE_FILES = 32  # files whose headers the size estimate reads


class CachedReadError(OSError):
    """A file the cache knows to be unreadable: raised again on every read, with the reason first seen."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason  # read_error() reports it unchanged


def cacheable(source: Any) -> bool:
    """True when the source names the files behind each sample (``files(i)``) and gives targets without reading
    pixels (``target(i)``): generated data (``--data shapes``) has nothing to cache."""
    files = getattr(source, "files", None)
    return callable(files) and callable(getattr(source, "target", None)) and len(source) > 0 and \
        files(0) is not None


def file_key(files: Sequence[str]) -> str:
    """An entry's key: its files' real paths, sizes and modification times (an edited file gets a new key).
    Raises OSError for a missing file, as reading it would."""
    parts = []
    for f in files:
        st = os.stat(f)
        parts.append(f"{os.path.realpath(f)}|{st.st_size}|{st.st_mtime_ns}")
    return hashlib.sha1("\n".join(parts).encode()).hexdigest()


def namespace(spec: Dict[str, Any]) -> str:
    """The store folder's name: a digest of everything that shapes the stored pixels (``spec``: the first
    resize's size, fit and interpolation, ``in_chans``, the draft, the source's own mask options)."""
    text = json.dumps({**spec, "format": FORMAT}, sort_keys=True, default=str)
    return "v%d-%s" % (FORMAT, hashlib.sha1(text.encode()).hexdigest()[:16])


def cache_folder(mode: str, cache_dir: str, scratch: Path) -> Path:
    """Where the stores live: ``--cache-dir``, else shared memory (``ram``: ``/dev/shm``, seen by every worker
    and process), else the platform's scratch space (``/kaggle/temp`` on Kaggle, the system's temporary
    folder elsewhere); never the kept output unless asked."""
    if cache_dir:
        return Path(cache_dir)
    if mode == "ram":
        return Path("/dev/shm") / f"kernel-cache-{os.getuid()}"
    return scratch / f"kernel-cache-{os.getuid()}"


def _smallest_mask_dtype(mask: np.ndarray) -> np.dtype:
    """uint8 where it holds every value; otherwise the mask's own dtype (multi-label bit masks, ignore_index
    above 255)."""
    if mask.size and mask.min() >= 0 and mask.max() <= 255:
        return np.dtype(np.uint8)
    return mask.dtype


@dataclass
class _Entry:
    shard: str          # the .bin file's name
    offset: int
    image: Tuple[Tuple[int, ...], str]           # shape, dtype
    mask: Optional[Tuple[Tuple[int, ...], str, str]]  # shape, stored dtype, dtype to return
    seconds: float      # decode + resize time when built
    bad: str = ""       # the read error of an unreadable file

    @property
    def nbytes(self) -> int:
        n = int(np.prod(self.image[0])) * np.dtype(self.image[1]).itemsize if self.image[0] else 0
        if self.mask is not None:
            n += int(np.prod(self.mask[0])) * np.dtype(self.mask[1]).itemsize
        return n


class PixelStore:
    """The shards of one namespace folder, and the read-only exported ones (``extra``); picklable, so it travels
    to DataLoader workers, where each process opens its own files."""

    def __init__(self, folder: Path, extra: Sequence[Path] = ()):
        self.folder, self.extra = Path(folder), [Path(p) for p in extra]
        self._reset()

    def _reset(self) -> None:
        self._index: Dict[str, _Entry] = {}
        self._read_to: Dict[Path, int] = {}  # index file -> bytes of it already read
        self._maps: Dict[Path, mmap.mmap] = {}
        self._writer: Optional[Tuple[int, Any, Any, str]] = None  # (pid, bin, idx, shard name)

    def __getstate__(self) -> dict:
        return {"folder": self.folder, "extra": self.extra}

    def __setstate__(self, state: dict) -> None:
        self.folder, self.extra = state["folder"], state["extra"]
        self._reset()

    # -- reading -------------------------------------------------------------------------------
    def refresh(self) -> None:
        """Read the index lines written since the last call, by any process (complete lines only)."""
        for folder in [*self.extra, self.folder]:
            if not folder.is_dir():
                continue
            for idx in sorted(folder.glob("*.idx")):
                start = self._read_to.get(idx, 0)
                with open(idx, "rb") as fh:
                    fh.seek(start)
                    data = fh.read()
                end = data.rfind(b"\n") + 1  # a line still being written (or cut by a kill) waits
                for line in data[:end].splitlines():
                    try:
                        self._remember(folder, json.loads(line))
                    except (ValueError, KeyError, TypeError, IndexError):
                        continue  # a damaged line: that entry is built again
                self._read_to[idx] = start + end

    def _remember(self, folder: Path, rec: Dict[str, Any]) -> None:
        self._index[rec["k"]] = _Entry(
            str(folder / rec["s"]), int(rec["o"]), (tuple(rec["i"][0]), rec["i"][1]),
            (tuple(rec["m"][0]), rec["m"][1], rec["m"][2]) if rec.get("m") else None, float(rec.get("t", 0.0)),
            rec.get("bad", ""))

    def _bytes(self, entry: _Entry) -> Optional[memoryview]:
        """The entry's bytes, or None when its shard is shorter than the index says (truncated)."""
        path = Path(entry.shard)
        end = entry.offset + entry.nbytes
        mapped = self._maps.get(path)
        if mapped is None or len(mapped) < end:
            try:
                size = path.stat().st_size
            except OSError:
                return None
            if size < end:
                return None
            with open(path, "rb") as fh:  # remapped as the shard grows
                mapped = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
            self._maps[path] = mapped  # the old map is dropped, not closed: reads copy out of their slice first
        return memoryview(mapped)[entry.offset:end]

    def get(self, key: str) -> Optional[Tuple[np.ndarray, Optional[np.ndarray]]]:
        """(image, mask) copies of a stored entry; raises :class:`CachedReadError` for a file stored as bad; None
        when it is not stored (or its pixels were cut off)."""
        entry = self._index.get(key)
        raw = None if entry is None or entry.bad else self._bytes(entry)
        if entry is None or (raw is None and not entry.bad):  # not known yet, or cut off: another process may
            self.refresh()                                     # have stored it since
            entry = self._index.get(key)
            raw = None if entry is None or entry.bad else self._bytes(entry)
        if entry is None:
            return None
        if entry.bad:
            raise CachedReadError(entry.bad)
        if raw is None:
            return None
        n_image = int(np.prod(entry.image[0])) * np.dtype(entry.image[1]).itemsize
        # copies: imgaug may augment in place, and the map may be replaced while the sample lives
        image = np.frombuffer(raw[:n_image], dtype=entry.image[1]).reshape(entry.image[0]).copy()
        mask = None
        if entry.mask is not None:
            shape, stored, returned = entry.mask
            mask = np.frombuffer(raw[n_image:], dtype=stored).reshape(shape).astype(returned)
        raw.release()
        return image, mask

    # -- writing -------------------------------------------------------------------------------
    def _files(self) -> Tuple[Any, Any, str]:
        pid = os.getpid()
        if self._writer is None or self._writer[0] != pid:  # a forked worker writes its own shard
            self.folder.mkdir(parents=True, exist_ok=True)
            name = f"{pid}-{secrets.token_hex(4)}"
            self._writer = (pid, open(self.folder / f"{name}.bin", "ab"), open(self.folder / f"{name}.idx", "ab"),
                            f"{name}.bin")
        return self._writer[1], self._writer[2], self._writer[3]

    def _append(self, record: Dict[str, Any], blobs: Sequence[bytes] = ()) -> None:
        data, index, shard = self._files()
        record["s"], record["o"] = shard, data.tell()
        for blob in blobs:
            data.write(blob)
        data.flush()  # the pixels first: an index line never names bytes that were not written
        index.write((json.dumps(record, separators=(",", ":")) + "\n").encode())
        index.flush()
        self._remember(self.folder, record)

    def put(self, key: str, image: np.ndarray, mask: Optional[np.ndarray], seconds: float) -> None:
        """Store an entry's pixels (the mask in the smallest dtype that holds it)."""
        image = np.ascontiguousarray(image)
        record: Dict[str, Any] = {"k": key, "i": [list(image.shape), image.dtype.str], "t": round(seconds, 6)}
        blobs = [image.tobytes()]
        if mask is not None:
            stored = _smallest_mask_dtype(mask)
            record["m"] = [list(mask.shape), stored.str, mask.dtype.str]
            blobs.append(np.ascontiguousarray(mask.astype(stored)).tobytes())
        self._append(record, blobs)

    def put_bad(self, key: str, reason: str) -> None:
        """Store that the files of ``key`` cannot be read, and why."""
        self._append({"k": key, "i": [[], "|u1"], "bad": reason})

    def close(self) -> None:
        """Close this process's shard files and maps (a run's end); a later read or write opens them again."""
        writer, maps, self._writer, self._maps = self._writer, self._maps, None, {}
        for fh in (writer[1:3] if writer is not None and writer[0] == os.getpid() else ()):
            fh.close()
        for mapped in maps.values():
            try:
                mapped.close()
            except BufferError:  # a slice still in use: the map closes with its last reader
                pass

    def stats(self) -> Dict[str, Any]:
        """Entries stored (readable and bad), their bytes, and the seconds spent building them."""
        self.refresh()
        entries = list(self._index.values())
        return {"entries": len(entries), "bad": sum(1 for e in entries if e.bad),
                "bytes": sum(e.nbytes for e in entries), "build_s": round(sum(e.seconds for e in entries), 3)}


class CachedSource:
    """A source read through a :class:`PixelStore`: ``presize(image, mask)`` (the transform's first resize) runs
    once per file, when it is first read; later reads return the stored pixels and the source's target."""

    def __init__(self, source: Any, store: PixelStore, presize: Callable[[np.ndarray, Any], Tuple[np.ndarray, Any]]):
        self.source, self.store, self.presize = source, store, presize
        self.targets = source.targets

    def __len__(self) -> int:
        return len(self.source)

    def path(self, i: int) -> str:
        fn = getattr(self.source, "path", None)
        return fn(i) if callable(fn) else f"sample {i}"

    def __getitem__(self, i: int) -> Tuple[np.ndarray, Any, Optional[np.ndarray]]:
        key = file_key(self.source.files(i))
        stored = self.store.get(key)
        if stored is not None:
            return stored[0], self.source.target(i), stored[1]
        start = time.perf_counter()
        try:
            image, target, mask = self.source[i]
        except Exception as e:  # unreadable: remembered as such, then the guard above replaces it
            self.store.put_bad(key, read_error(e))
            raise
        image, mask = self.presize(image, mask)
        self.store.put(key, image, mask, time.perf_counter() - start)
        return image, target, mask


def estimate_bytes(source: Any, shape_after: Callable[[int, int], Tuple[int, int]], in_chans: int,
                   with_mask: bool) -> int:
    """The store's size for ``source``, from the headers of up to :data:`ESTIMATE_FILES` of its images
    (``shape_after(h, w)``: the (H, W) after the first resize), plus 10 %."""
    n = len(source)
    picks = sorted({int(round(k * (n - 1) / max(1, ESTIMATE_FILES - 1))) for k in range(min(n, ESTIMATE_FILES))})
    sizes = []
    for i in picks:
        try:
            with Image.open(source.files(i)[0]) as img:
                w, h = img.size
        except Exception:  # an unreadable file: the guard says so later; it stores nothing
            continue
        H, W = shape_after(h, w)
        sizes.append(H * W * (in_chans + (1 if with_mask else 0)))
    return int(1.1 * n * (sum(sizes) / len(sizes))) if sizes else 0


def fits(need: int, folder: Path, limit_gb: float) -> Tuple[bool, str]:
    """Whether ``need`` bytes fit: under ``limit_gb`` when given (> 0), else in the free space of ``folder``'s
    file system less 1 GiB; and the words that say so."""
    probe = folder
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    room = int(limit_gb * 2**30) if limit_gb > 0 else free - 2**30
    room = min(room, free)
    what = f"--cache-limit {limit_gb:g} GB" if limit_gb > 0 else f"{free / 2**30:.1f} GB free in {probe}"
    return need <= room, f"needs about {need / 2**20:.1f} MB, {what}"


def export_store(store: PixelStore, target: Path) -> Path:
    """Copy the store's shards into ``target/<namespace>/`` and mark ``target`` with :data:`MANIFEST`: a folder
    to upload as a dataset, whose later runs read it instead of building (each file written then renamed)."""
    dest = Path(target) / store.folder.name
    dest.mkdir(parents=True, exist_ok=True)
    for f in sorted(store.folder.glob("*.bin")) + sorted(store.folder.glob("*.idx")):
        tmp = dest / f".{f.name}.tmp"
        shutil.copyfile(f, tmp)
        os.replace(tmp, dest / f.name)
    manifest = Path(target) / MANIFEST
    known = json.loads(manifest.read_text()).get("namespaces", []) if manifest.is_file() else []
    tmp = manifest.with_name(f".{MANIFEST}.tmp")
    tmp.write_text(json.dumps({"format": FORMAT, "namespaces": sorted({*known, store.folder.name})}, indent=1))
    os.replace(tmp, manifest)
    return dest


def find_exports(roots: Sequence[Path], name: str) -> List[Path]:
    """The exported stores of namespace ``name`` under ``roots`` (mounted inputs): a :data:`MANIFEST` in a mount's
    top folder or one level below it."""
    found = []
    for root in roots:
        for manifest in [root / MANIFEST, *sorted(root.glob(f"*/{MANIFEST}"))]:
            if manifest.is_file() and (manifest.parent / name).is_dir():
                found.append(manifest.parent / name)
    return found

