"""The decoded-image cache (--cache): exact runs, rebuilds of what changed only, bad files, masks, no room."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from kernel.augment import build_transform
from kernel.data import FolderSource, ReadGuard
from kernel.data.cache import CachedReadError, CachedSource, PixelStore, file_key, namespace
from kernel.run.caching import PIXEL_OPTIONS, cache_spec

from conftest import go_on, paused_at, subprocess_env

ENV = subprocess_env()


def write_jpegs(root: Path, per_class: int = 12) -> Path:
    """Photographic-like JPEGs (smooth colour fields) of 80x60, two classes."""
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            base = Image.fromarray(rng.integers(0, 255, (6, 8, 3)).astype(np.uint8))
            base.resize((80, 60), Image.BICUBIC).save(root / c / f"{i:02d}.jpg", quality=90)
    return root


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory) -> Path:
    return write_jpegs(tmp_path_factory.mktemp("cache") / "data")


def _cmd(data: Path, out: Path, name: str, workers: str, *extra: str) -> list:
    return [sys.executable, "-m", "kernel.train", "--data", str(data), "--model", "test_resnet", "--img-size", "32",
            "--epochs", "3", "--batch-size", "4", "--workers", workers, "--device", "cpu", "--aug", "light",
            "--fast-decode", "off", "--output", str(out), "--name", name, "--no-tensorboard", "--no-plots", *extra]


def _killed_in(cmd: list, epoch: int) -> None:
    """Run ``cmd`` (saving every few updates) and SIGKILL it paused after its first save inside ``epoch``."""
    proc = subprocess.Popen([*cmd, "--save-every", "3"], env=subprocess_env(hooks=("ticks", "pause")),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    killed = False
    for line in proc.stderr:
        at = paused_at(line)
        if at is None:
            continue
        if at[1] == epoch and at[2] > 0:
            killed = True
            break
        go_on(at[0])
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert killed, f"no save inside epoch {epoch}"


@pytest.mark.parametrize("workers", ["0", "2"])
def test_a_cached_run_killed_twice_ends_with_the_uncached_runs_weights(jpegs, tmp_path, workers):
    subprocess.run(_cmd(jpegs, tmp_path, "plain", workers, "--cache", "off"), env=ENV, check=True,
                   capture_output=True, timeout=600)
    cached = _cmd(jpegs, tmp_path, "cached", workers, "--cache", "disk", "--cache-dir", str(tmp_path / "cache"))
    _killed_in(cached, 1)  # the cache half-built
    _killed_in([*cached, "--resume", "auto"], 2)
    done = subprocess.run([*cached, "--resume", "auto"], env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    a, b = (torch.load(tmp_path / n / "last.pt", weights_only=True) for n in ("plain", "cached"))
    assert a["epoch"] == b["epoch"] == 3
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    summary = json.loads((tmp_path / "cached" / "summary.json").read_text())["cache"]
    assert summary["entries"] == 24 and summary["bad"] == 0 and summary["hit_rate"] == 1.0
    assert "read 100% from it (0 new)" in done.stderr and "cache: 24 images" in done.stderr


def _store_source(data: Path, store: PixelStore, img_size: int = 32):
    t = build_transform("none", train=False, img_size=img_size, mean=(0.5,) * 3, std=(0.5,) * 3)
    return CachedSource(FolderSource(str(data)), store, t.presize), t


def test_a_changed_file_a_changed_size_and_a_truncated_store_rebuild_only_what_changed(tmp_path):
    data = write_jpegs(tmp_path / "data", per_class=4)
    store = PixelStore(tmp_path / "cache" / "ns")
    src, t = _store_source(data, store)
    first = [src[i][0] for i in range(len(src))]
    plain = FolderSource(str(data))
    for i, image in enumerate(first):  # what the transform's first resize makes of a fresh decode
        assert np.array_equal(image, t.presize(plain[i][0], None)[0])
        assert min(image.shape[:2]) == t.resize_to
    assert store.stats()["entries"] == 8
    assert all(np.array_equal(src[i][0], first[i]) for i in range(8)) and store.stats()["entries"] == 8

    # an edited file: its entry alone is built again (a new key), with the new pixels
    edited = Path(plain.path(3))
    Image.new("RGB", (80, 60), (200, 10, 10)).save(edited, quality=90)
    os.utime(edited, ns=(1, 1))  # a new mtime even on a coarse clock
    fresh = PixelStore(store.folder)  # another process: reads the shards
    src2, _ = _store_source(data, fresh)
    images = [src2[i][0] for i in range(8)]
    assert fresh.stats()["entries"] == 9
    assert np.array_equal(images[3], t.presize(plain[3][0], None)[0]) and not np.array_equal(images[3], first[3])
    assert all(np.array_equal(images[i], first[i]) for i in range(8) if i != 3)

    # another --img-size: another store folder (the run's namespace), the first one untouched
    opts = SimpleNamespace(**{k: "x" for k in PIXEL_OPTIONS})
    names = {size: namespace(cache_spec(opts, _store_source(data, store, size)[1])) for size in (32, 64)}
    assert names[32] != names[64] and names[32] == namespace(cache_spec(opts, t))

    # a shard cut short (a kill, a partial copy) and a half-written index line: the lost entries are built again
    shard = max(store.folder.glob("*.bin"), key=lambda f: f.stat().st_size)  # the first pass's 8 entries
    size = shard.stat().st_size
    with open(shard, "r+b") as fh:
        fh.truncate(size // 2)
    with open(next(store.folder.glob("*.idx")), "ab") as fh:
        fh.write(b'{"k":"half-writ')
    again = PixelStore(store.folder)
    src3, _ = _store_source(data, again)
    kept = sum(1 for i in range(8) if again.get(file_key(plain.files(i))) is not None)
    assert 0 < kept < 8
    lines = _index_lines(store.folder)
    images = [src3[i][0] for i in range(8)]
    assert _index_lines(store.folder) - lines == 8 - kept  # the lost ones, and nothing else, were built
    assert all(again.get(file_key(plain.files(i))) is not None for i in range(8))
    assert all(np.array_equal(images[i], first[i]) for i in range(8) if i != 3)


def _index_lines(folder: Path) -> int:
    return sum(f.read_bytes().count(b"\n") for f in folder.glob("*.idx"))


def test_a_bad_file_is_stored_as_bad_and_replaced_by_the_guard_every_time(tmp_path):
    data = write_jpegs(tmp_path / "data", per_class=3)
    bad = data / "a" / "01.jpg"
    bad.write_bytes(b"not a jpeg")
    store = PixelStore(tmp_path / "cache")
    src, _ = _store_source(data, store)
    guard = ReadGuard("skip", str(tmp_path / "bad_images.txt"), limit=0.5, floor=5)
    replaced = guard.read(src, 1)[0]
    assert np.array_equal(replaced, src[2][0])  # the next readable one, never stored under the bad file's key
    with pytest.raises(CachedReadError) as err:
        PixelStore(store.folder).get(file_key([str(bad)]))
    assert "UnidentifiedImageError" in err.value.reason
    reasons = {line.split("\t")[1] for line in (tmp_path / "bad_images.txt").read_text().splitlines()}
    assert len(reasons) == 1 and store.stats()["bad"] == 1


@pytest.mark.parametrize("values, stored", [
    ([0, 1, 255], np.uint8),                 # ignore_index 255 fits uint8
    ([0, 1 << 9, (1 << 10) - 1], np.int32),  # multi-label bit masks of 10 classes keep every bit
    ([0, 300], np.int32),                    # --ignore-index 300
])
def test_masks_keep_every_value(tmp_path, values, stored):
    store = PixelStore(tmp_path)
    mask = np.resize(np.array(values, dtype=np.int32), (3, 4))
    image = np.arange(3 * 4 * 3, dtype=np.uint8).reshape(3, 4, 3)
    store.put("k", image, mask, 0.0)
    got_image, got_mask = PixelStore(tmp_path).get("k")
    assert got_mask.dtype == np.int32 and np.array_equal(got_mask, mask) and np.array_equal(got_image, image)
    line = json.loads(next(tmp_path.glob("*.idx")).read_text())
    assert np.dtype(line["m"][1]) == np.dtype(stored)
    got_image[0, 0, 0] = 99  # reads are copies
    assert PixelStore(tmp_path).get("k")[0][0, 0, 0] == 0


def test_a_cache_that_does_not_fit_is_said_in_one_line_and_the_run_trains_uncached(jpegs, tmp_path):
    cmd = _cmd(jpegs, tmp_path, "small", "0", "--cache", "disk", "--cache-dir", str(tmp_path / "cache"),
               "--cache-limit", "0.00001", "--epochs", "2")
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (line,) = [ln for ln in done.stderr.splitlines() if "does not fit" in ln]
    assert "--cache disk" in line and "--cache-limit 1e-05 GB" in line and "training uncached" in line
    assert "cache" not in json.loads((tmp_path / "small" / "summary.json").read_text())
    assert not (tmp_path / "cache").exists()


def _open_files_under(folder: Path) -> list:
    """Files under ``folder`` this process holds open, as file descriptors or memory maps (Linux /proc)."""
    held = [os.path.realpath(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")]
    with open("/proc/self/maps") as fh:
        held += [line.split(maxsplit=5)[-1].strip() for line in fh if len(line.split()) >= 6]
    root = os.path.realpath(folder)
    return sorted({p for p in held if p.startswith(root + os.sep)})


def test_a_closed_store_holds_no_file_and_still_reads_and_writes(tmp_path):
    store = PixelStore(tmp_path / "ns")
    image = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    store.put("a", image, None, 0.0)
    assert np.array_equal(store.get("a")[0], image)
    assert _open_files_under(tmp_path)  # the shard being written and its map
    store.close()
    assert _open_files_under(tmp_path) == []
    store.put("b", image + 1, None, 0.0)  # opened again when needed
    assert np.array_equal(store.get("a")[0], image) and np.array_equal(store.get("b")[0], image + 1)
    store.close()
    assert _open_files_under(tmp_path) == [] and store.stats()["entries"] == 2


def test_a_cached_run_in_this_process_leaves_no_cache_file_open(jpegs, tmp_path):
    from kernel.train import main

    args = _cmd(jpegs, tmp_path, "held", "0", "--cache", "disk", "--cache-dir", str(tmp_path / "cache"),
                "--epochs", "2")[3:]
    assert main(args) == 0
    assert any((tmp_path / "cache").rglob("*.bin"))  # the run did build its cache
    assert _open_files_under(tmp_path / "cache") == []
