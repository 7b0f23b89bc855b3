"""Data: odd image modes, ImageFolder and CSV sources (multi-label too), stratified splits."""
import multiprocessing
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import torch
from torch.utils.data import TensorDataset

from kernel.data import CsvSource, FolderSource, build_loader, build_sources, load_image, stratified_split
from kernel.errors import ConfigError
from kernel.data import SHAPE_CLASSES, ShapesSource

from conftest import subprocess_env


def _odd_images():
    rgb = np.random.default_rng(0).integers(0, 256, (6, 5, 3), dtype=np.uint8)
    return {
        "1": Image.fromarray(rgb[..., 0] > 127),
        "L": Image.fromarray(rgb[..., 0]),
        "LA": Image.fromarray(rgb[..., 0]).convert("LA"),
        "P": Image.fromarray(rgb).convert("P"),
        "RGBA": Image.fromarray(rgb).convert("RGBA"),
        "CMYK": Image.fromarray(rgb).convert("CMYK"),
        "I;16": Image.fromarray(rgb[..., 0].astype(np.uint16) * 257),
        "I": Image.fromarray(rgb[..., 0].astype(np.int32) * 257),
        "F": Image.fromarray(rgb[..., 0].astype(np.float32) / 255),
    }


@pytest.mark.parametrize("mode", list(_odd_images()))
@pytest.mark.parametrize("in_chans", [1, 3, 4, 5])
def test_odd_modes_load_as_uint8_with_in_chans(tmp_path, mode, in_chans):
    img = _odd_images()[mode]
    ext = ".tif" if mode in ("I;16", "I", "F", "CMYK") else ".png"
    path = tmp_path / f"x{ext}"
    img.save(path)
    arr = load_image(path, in_chans)
    assert arr.dtype == np.uint8 and arr.shape == (6, 5, in_chans)


def test_sixteen_bit_is_scaled_not_clipped(tmp_path):
    ramp = (np.arange(30, dtype=np.uint16).reshape(6, 5) * 2000)
    Image.fromarray(ramp).save(tmp_path / "r.png")
    arr = load_image(tmp_path / "r.png", 1)[..., 0]
    expected = np.round(ramp.astype(np.float64) * 255 / 65535).astype(np.uint8)
    assert np.array_equal(arr, expected)  # a clip to 255 would saturate most pixels


def test_shapes_are_deterministic_with_masks():
    a, b = ShapesSource(8, seed=3), ShapesSource(8, seed=3)
    for i in range(8):
        ia, la, ma = a[i]
        ib, lb, mb = b[i]
        assert np.array_equal(ia, ib) and la == lb == i % 4
        assert set(np.unique(ma)) == {0, la + 1}
    assert not np.array_equal(ShapesSource(1, seed=4)[0][0], a[0][0])


def test_folder_and_csv_sources(shapes_dir):
    folder = FolderSource(str(shapes_dir / "train"))
    assert folder.classes == sorted(SHAPE_CLASSES) and len(folder) == 240
    csv = CsvSource(str(shapes_dir / "train.csv"), str(shapes_dir / "images"))  # ids lack ".png"
    assert sorted(csv.classes) == sorted(SHAPE_CLASSES) and len(csv) == 240 and not csv.multilabel
    img, target, _ = csv[0]
    assert img.shape == (32, 32, 3) and csv.classes[target] == "circle"


def test_multilabel_csv(tmp_path):
    for i in range(4):
        Image.fromarray(np.full((4, 4, 3), i * 40, np.uint8)).save(tmp_path / f"im{i}.jpg")
    (tmp_path / "labels.csv").write_text("image,tags\nim0,cat dog\nim1,dog\nim2.jpg,bird cat\nim3,cat\n")
    src = CsvSource(str(tmp_path / "labels.csv"), str(tmp_path))
    assert src.multilabel and src.classes == ["bird", "cat", "dog"]
    assert src[0][1].tolist() == [0.0, 1.0, 1.0]
    assert src[2][1].tolist() == [1.0, 1.0, 0.0]


def test_stratified_split_is_seeded_and_balanced():
    targets = [i % 4 for i in range(100)]
    tr, va = stratified_split(targets, 0.2, seed=1)
    assert len(va) == 20 and sorted(tr + va) == list(range(100))
    assert [sum(targets[i] == c for i in va) for c in range(4)] == [5, 5, 5, 5]
    assert stratified_split(targets, 0.2, seed=1) == (tr, va)
    assert stratified_split(targets, 0.2, seed=2) != (tr, va)


def test_missing_data_errors(tmp_path):
    with pytest.raises(ConfigError, match="--data"):
        build_sources(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no class folders"):
        build_sources(str(tmp_path / "empty"))


@pytest.mark.parametrize("workers", [0, 1])
def test_a_loader_leaves_torchs_global_generator_alone(workers):
    """A resumed run restores torch's generator, then starts its loader: the dropout that follows must draw the
    numbers the uninterrupted run drew, so starting and running an iterator may not take any of them."""
    before = torch.get_rng_state()
    loader = build_loader(TensorDataset(torch.arange(8.0)), batch_size=4, workers=workers,
                          device=torch.device("cpu"), persistent=False)
    for _ in range(2):
        assert [b[0].tolist() for b in loader] == [[0.0, 1.0, 2.0, 3.0], [4.0, 5.0, 6.0, 7.0]]
    assert torch.equal(torch.get_rng_state(), before)


def test_closing_a_loader_ends_its_persistent_workers_and_a_later_epoch_starts_new_ones():
    before = set(multiprocessing.active_children())
    loader = build_loader(TensorDataset(torch.arange(8.0)), batch_size=4, workers=2, device=torch.device("cpu"))
    assert [b[0].tolist() for b in loader] == [[0.0, 1.0, 2.0, 3.0], [4.0, 5.0, 6.0, 7.0]]
    workers = set(multiprocessing.active_children()) - before
    assert len(workers) == 2 and all(w.is_alive() for w in workers)  # persistent: kept for the next epoch
    loader.close()
    assert not any(w.is_alive() for w in workers)
    assert [b[0].tolist() for b in loader] == [[0.0, 1.0, 2.0, 3.0], [4.0, 5.0, 6.0, 7.0]]
    loader.close()
    assert set(multiprocessing.active_children()) <= before


class _SignalledInWorkers(TensorDataset):
    """Each item read by a DataLoader worker first sends that worker SIGTERM and SIGINT, as ``timeout`` or a
    container's stop (SIGTERM) and Ctrl-C (SIGINT) signal every process of the run's group."""

    def __getitem__(self, i):
        if torch.utils.data.get_worker_info() is not None:
            for signum in (signal.SIGTERM, signal.SIGINT):
                os.kill(os.getpid(), signum)
        return super().__getitem__(i)


@pytest.mark.parametrize("persistent", [True, False])
def test_loader_workers_leave_stop_signals_to_the_main_process(persistent):
    """A worker that died of the signal would end the run ("DataLoader worker is killed by signal") before the
    main process, which handles it, could save: the workers ignore SIGTERM and SIGINT, persistent or not."""
    loader = build_loader(_SignalledInWorkers(torch.arange(8.0)), batch_size=2, workers=2,
                          device=torch.device("cpu"), persistent=persistent)
    for _ in range(2):  # a persistent loader's workers live on into the next epoch
        assert [b[0].tolist() for b in loader] == [[0.0, 1.0], [2.0, 3.0], [4.0, 5.0], [6.0, 7.0]]


AT_EXIT = """
import torch
from kernel.data import build_loader
from torch.utils.data import TensorDataset
loader = build_loader(TensorDataset(torch.arange(8.0)), batch_size=2, workers=2, device=torch.device("cpu"))
batches = iter(loader)
print(next(batches)[0].tolist())
"""


def test_persistent_workers_alive_at_exit_are_still_ended_by_their_process():
    """At exit, multiprocessing ends the workers of a loader still in use with SIGTERM and waits for them: a worker
    leaves other senders' SIGTERM to the main process, but its own main process's ends it (no hang at exit)."""
    r = subprocess.run([sys.executable, "-c", AT_EXIT], env=subprocess_env(), capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "[0.0, 1.0]", r.stderr[-2000:]
