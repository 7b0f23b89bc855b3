"""uint8 batches (--uint8-batches, the default): workers hand over uint8 images and compact masks, finished on the
device. On a CPU every value must equal the float path's (--no-uint8-batches): the batches, hence the weights."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

from kernel.augment import BACKENDS, PRESETS, build_transform
from kernel.config import parse_options
from kernel.data import DataSplit
from kernel.run import effective_options, prepare
from kernel.tasks import TASKS, get_task
from kernel.tasks.segment import CompactMask, MaskTarget, mask_dtype

from test_cache import write_jpegs

BACKEND_NAMES = [b for b in BACKENDS if b != "auto"]


def _images(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (50 + 7 * i, 61 + 3 * i, 3), dtype=np.uint8) for i in range(n)]


@pytest.mark.parametrize("backend", BACKEND_NAMES)
@pytest.mark.parametrize("preset", list(PRESETS))
@pytest.mark.parametrize("fit", ["crop", "resize"])
def test_the_device_conversion_gives_the_workers_float_values_exactly(backend, preset, fit):
    kw = dict(train=True, backend=backend, img_size=32 if fit == "crop" else (32, 40), mean=(0.485, 0.456, 0.406),
              std=(0.229, 0.224, 0.225), interpolation="bilinear", in_chans=3, fit=fit)
    floats = build_transform(preset, **kw)
    as_uint8 = floats.for_device()
    assert as_uint8.uint8_out and not floats.uint8_out
    for i, image in enumerate(_images(3)):
        torch.manual_seed(i)
        want, _ = floats(image)
        torch.manual_seed(i)
        got, _ = as_uint8(image)
        assert got.dtype == torch.uint8 and got.shape == want.shape
        assert torch.equal(as_uint8.normalizer()(got[None])[0], want)
    # the normalizer keeps channels-last (what --channels-last asks of the batch)
    batch = torch.stack([as_uint8(im)[0] for im in _images(2)]).contiguous(memory_format=torch.channels_last)
    assert as_uint8.normalizer()(batch).is_contiguous(memory_format=torch.channels_last)


def _split(mode: str, classes: int, ignore: object = None) -> DataSplit:
    return DataSplit(None, None, [f"c{k}" for k in range(classes)],
                     meta={"mode": mode, "ignore_index": ignore})


@pytest.mark.parametrize("mode,classes,ignore,dtype", [
    ("binary", 2, None, torch.uint8),
    ("multiclass", 5, 255, torch.uint8),
    ("multiclass", 5, 300, torch.int16),     # --ignore-index 300
    ("multilabel", 8, None, torch.uint8),    # eight bits
    ("multilabel", 10, None, torch.int16),   # ten classes: bit 9 needs more than a byte
    ("multilabel", 20, None, torch.int32),
])
def test_compact_masks_keep_every_label_and_the_void_value(mode, classes, ignore, dtype):
    split = _split(mode, classes, ignore)
    assert mask_dtype(split) == dtype
    if mode == "multilabel":
        values = [0, 1, 1 << (classes - 1), (1 << classes) - 1, 0b101]
    else:
        values = [0, classes - 1] + ([ignore] if ignore is not None else [])
    masks = torch.tensor((values * 12)[:12], dtype=torch.int64).view(1, 3, 4).repeat(2, 1, 1)
    compact = torch.stack([CompactMask(dtype)(m) for m in masks])
    target = MaskTarget(mode, classes)
    assert compact.dtype == dtype
    assert torch.equal(target(compact), target(masks))
    task = get_task("segment")
    images = torch.zeros(2, 3, 3, 4, dtype=torch.uint8)
    done = task.on_device((images, compact), split, lambda x: x.float())
    assert done[0].dtype == torch.float32 and torch.equal(done[1], target(masks))
    assert done[1].dtype == (torch.float32 if mode == "multilabel" else torch.int64)


def _prepared(name: str, tmp_path: Path, *extra: str):
    flags = ["--task", name, *get_task(name).smoke_flags, "--img-size", "32", "--workers", "0", "--device", "cpu",
             "--batch-size", "8", "--dry-run", "--output", str(tmp_path), "--name", "p", "--no-tensorboard",
             "--no-plots", *extra]
    return prepare(effective_options(parse_options(flags)))


def _batches(p, n_train: int = 2) -> list:
    p.train_sampler.set_epoch(1)
    out = []
    for i, batch in enumerate(p.train_loader):
        if i == n_train:
            break
        out.append(batch)
    return out + list(p.val_loader)


@pytest.mark.parametrize("name", TASKS.names())
def test_every_tasks_batches_equal_the_float_paths(name, tmp_path):
    on, off = _prepared(name, tmp_path / "on"), _prepared(name, tmp_path / "off", "--no-uint8-batches")
    assert on.train_loader.dataset.transform.uint8_out and not off.train_loader.dataset.transform.uint8_out
    for a, b in zip(_batches(on), _batches(off), strict=True):
        assert a[0].dtype == b[0].dtype == torch.float32
        assert torch.equal(a[0], b[0])
        assert a[1].dtype == b[1].dtype and torch.equal(a[1], b[1])
    raw = on.train_loader.dataset[0][0]
    assert raw.dtype == torch.uint8  # what the workers hand over
    assert on.val_view[0][0].dtype == torch.float32  # what the pictures draw


def _metrics(run: Path) -> list:
    with open(run / "metrics.csv", newline="") as fh:
        return [{k: v for k, v in row.items() if k not in ("epoch_time", "img_per_s")}
                for row in csv.DictReader(fh)]


def test_a_run_on_uint8_batches_ends_with_the_float_paths_weights(tmp_path):
    from kernel.train import main

    data = write_jpegs(tmp_path / "data", per_class=8)
    base = ["--data", str(data), "--model", "test_resnet", "--img-size", "32", "--epochs", "2", "--batch-size", "4",
            "--workers", "0", "--device", "cpu", "--aug", "default", "--output", str(tmp_path), "--no-tensorboard",
            "--no-plots", "--cache", "off"]
    assert main([*base, "--name", "u8"]) == 0
    assert main([*base, "--name", "f32", "--no-uint8-batches"]) == 0
    a = torch.load(tmp_path / "u8" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "f32" / "last.pt", weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert _metrics(tmp_path / "u8") == _metrics(tmp_path / "f32")
