"""Tests for kernel.augment / kernel.aug_ops / kernel.imgaug_compat (fast: tiny images, few workers)."""
from __future__ import annotations

import json
import logging
import os
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from kernel.augment import backends as aug_backends, imgaug_compat, ops as aug_ops
from kernel.augment.ops import IMGAUG_OPS, TORCHVISION_OPS
from kernel.data import fit_channel_stats
from kernel.augment import (BACKENDS, PRESETS, aug_figure, aug_tile, augment_batch, build_transform, save_aug_grid,
                            seed_worker)
from kernel.errors import ConfigError

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LABELS = (0, 2, 5)


def shapes_sample(h: int = 110, w: int = 128, c: int = 3):
    """Black image with a bright rectangle (label 2) and disc (label 5); mask = the labels."""
    import cv2

    img = np.zeros((h, w, c), np.uint8)
    mask = np.zeros((h, w), np.int32)  # cv2 draws on int32, not int64
    cv2.rectangle(mask, (w // 8, h // 6), (w // 2, h // 2), 2, -1)
    cv2.circle(mask, (int(w * 0.68), int(h * 0.66)), h // 4, 5, -1)
    img[mask > 0] = 255
    return img, mask.astype(np.int64)


def noise_image(h: int = 40, w: int = 44, c: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, c), dtype=np.uint8)


def build(spec, backend, *, train=True, size=32, in_chans=3, **kw):
    t = build_transform(spec, train=train, backend=backend, img_size=size, mean=MEAN, std=STD, in_chans=in_chans, **kw)
    t.strict = True  # an op failure must fail the test, not fall back to the unaugmented image
    return t


def check_output(out, size: int, chans: int, with_mask: bool) -> None:
    img, mask = out
    assert img.shape == (chans, size, size) and img.dtype == torch.float32 and img.is_contiguous()
    assert torch.isfinite(img).all()
    if with_mask:
        assert mask.shape == (size, size) and mask.dtype == torch.int64
        assert set(mask.unique().tolist()) <= set(LABELS)
    else:
        assert mask is None


def denorm_gray(img: torch.Tensor) -> np.ndarray:
    c = img.shape[0]
    m = torch.tensor(fit_channel_stats(MEAN, c, "mean")).view(-1, 1, 1)
    s = torch.tensor(fit_channel_stats(STD, c, "std")).view(-1, 1, 1)
    return (img * s + m).mean(0).numpy()


# 1. every registry op, both backends, on uint8 RGB (+ mask when the op can take one) ---------------
@pytest.mark.parametrize("name", IMGAUG_OPS.names())
def test_every_imgaug_op_runs(name):
    info = IMGAUG_OPS.get(name)
    t = build([{name: info.example}], "imgaug")
    assert t.backend == "imgaug"
    img, mask = shapes_sample(48, 56)
    img = np.clip(img.astype(np.int16) + noise_image(48, 56) // 4, 0, 255).astype(np.uint8)
    torch.manual_seed(1)
    check_output(t(img, mask), 32, 3, True)
    check_output(t(img), 32, 3, False)


@pytest.mark.parametrize("name", ["ElasticTransformation", "Clouds", "Fog"])
def test_compat_ops_really_change_the_image(name):
    """These crashed on NumPy 2 / OpenCV 5 before imgaug_compat; they must work, not be skipped."""
    kwargs = {"alpha": 8, "sigma": 2} if name == "ElasticTransformation" else {}
    t = build([{name: kwargs}], "imgaug", size=48, crop_pct=1.0)
    img, mask = shapes_sample(48, 48)
    ref = build("none", "imgaug", size=48, crop_pct=1.0)(img, mask)
    torch.manual_seed(0)
    out = t(img, mask)
    assert not torch.equal(out[0], ref[0])
    if name == "ElasticTransformation":  # geometric: the mask moves too
        assert not torch.equal(out[1], ref[1])


@pytest.mark.parametrize("name", TORCHVISION_OPS.names())
def test_every_torchvision_op_runs(name):
    info = TORCHVISION_OPS.get(name)
    t = build([{name: info.example}], "torchvision")
    assert t.backend == "torchvision"
    img, mask = shapes_sample(48, 56)
    torch.manual_seed(1)
    if info.masks:
        check_output(t(img, mask), 32, 3, True)
    else:
        with pytest.raises(ConfigError, match="cannot transform masks"):
            t(img, mask)
    check_output(t(img), 32, 3, False)


@pytest.mark.parametrize("in_chans", [1, 3, 4])
@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("backend", ["imgaug", "torchvision"])
def test_presets_shapes(backend, preset, train, in_chans):
    t = build(preset, backend, train=train, in_chans=in_chans)
    img, mask = shapes_sample(50, 70, in_chans)
    check_output(t(img, mask), 32, in_chans, True)
    check_output(t(img[..., 0] if in_chans == 1 else img), 32, in_chans, False)  # (H, W) accepted for 1 channel
    assert t.backend == ("none" if preset == "none" or not train else backend)


def test_eval_is_resize_center_crop_normalize_and_uses_no_rng():
    import cv2

    img = noise_image(60, 90)
    state = torch.get_rng_state()
    outs = [build(p, b, train=False, size=48)(img)[0] for p in PRESETS for b in BACKENDS]
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(o, outs[0]) for o in outs)
    r = int(48 / 0.875)  # shorter side to floor(S / crop_pct), then center crop
    ref = cv2.resize(img, (round(90 * r / 60), r), interpolation=cv2.INTER_LINEAR)
    top, left = round((r - 48) / 2), round((ref.shape[1] - 48) / 2)
    ref = ref[top:top + 48, left:left + 48].astype(np.float32) / 255
    ref = (ref - np.array(MEAN, np.float32)) / np.array(STD, np.float32)
    assert np.allclose(outs[0].permute(1, 2, 0).numpy(), ref, atol=1e-5)


def test_pickle_roundtrip_and_augment_batch():
    for backend in ("imgaug", "torchvision"):
        t = build("heavy", backend)
        t2 = pickle.loads(pickle.dumps(t))
        assert t2._state is None  # library objects are rebuilt in the worker
        img, mask = shapes_sample(40, 48)
        torch.manual_seed(3)
        a = t(img, mask)
        torch.manual_seed(3)
        b = t2(img, mask)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        x, m = augment_batch(t, [img] * 3, [mask] * 3)
        assert x.shape == (3, 3, 32, 32) and m.shape == (3, 32, 32) and m.dtype == torch.int64
        mixed = augment_batch(t, [img, img[:30]])  # mixed shapes: the per-sample path
        assert mixed[0].shape == (2, 3, 32, 32) and mixed[1] is None


def test_runtime_failure_falls_back_with_one_warning(caplog, monkeypatch):
    t = build("default", "imgaug")
    t.strict = False

    class Broken:
        def augment_batch_(self, batch):
            raise RuntimeError("boom")

    t._state["pipe"] = Broken()
    aug_backends.forget_first_times()
    img = noise_image()
    with caplog.at_level(logging.WARNING, logger="kernel.augment"):
        outs = [t(img) for _ in range(3)]
    assert sum("boom" in r.getMessage() for r in caplog.records) == 1
    assert torch.equal(outs[0][0], build("none", "imgaug")(img)[0])


# 2. workers differ, epochs differ, runs repeat ---------------------------------------------------
IMG = noise_image(40, 40, seed=7)


class SameImage(Dataset):
    """n copies of one image: any difference between items comes from augmentation."""

    def __init__(self, transform, n: int = 8):
        self.transform, self.n = transform, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.transform(IMG)[0]


def _epochs(transform, seed: int, epochs: int = 2, workers: int = 2, ctx=None):
    # timeout: a worker that hangs (see test_forked_workers_after_parent_used_opencv_threads) fails the test
    loader = DataLoader(SameImage(transform), batch_size=4, num_workers=workers, worker_init_fn=seed_worker,
                        generator=torch.Generator().manual_seed(seed), multiprocessing_context=ctx, timeout=60)
    return [[b.clone() for b in loader] for _ in range(epochs)]


@pytest.mark.parametrize("backend", ["imgaug", "torchvision"])
def test_workers_differ_epochs_differ_runs_repeat(backend):
    t = build("default", backend)
    run1, run2 = _epochs(t, 123), _epochs(t, 123)
    (a0, a1), (b0, b1) = run1[0], run1[1]  # batch 0 from worker 0, batch 1 from worker 1
    assert not torch.equal(a0, a1), "the two workers produced the same augmentations"
    assert all(not torch.equal(a0[0], a0[i]) for i in range(1, 4)), "samples within a worker repeat"
    assert not torch.equal(a0, b0) and not torch.equal(a1, b1), "epoch 2 repeats epoch 1"
    for e in range(2):
        for x, y in zip(run1[e], run2[e]):
            assert torch.equal(x, y), "same generator seed must give the same augmentations"
    assert not torch.equal(_epochs(t, 124, epochs=1)[0][0], a0)


@pytest.mark.parametrize("backend", ["imgaug", "torchvision"])
def test_workers0_repeats_from_torch_rng_state(backend):
    t = build("heavy", backend)
    np_state, py_state = np.random.get_state(), __import__("random").getstate()
    state = torch.get_rng_state()
    first = [t(IMG)[0] for _ in range(3)]
    torch.set_rng_state(state)
    second = [t(IMG)[0] for _ in range(3)]
    assert all(torch.equal(x, y) for x, y in zip(first, second))
    assert not torch.equal(first[0], first[1])
    assert np.random.get_state()[1].tolist() == np_state[1].tolist()  # numpy's global RNG untouched
    assert __import__("random").getstate() == py_state


def test_forked_workers_after_parent_used_opencv_threads():
    """cv2.setNumThreads(1) in a forked child whose parent ran OpenCV's thread pool hangs forever
    (OpenCV 5.0, pthreads); seed_worker must use a setting that does not."""
    import cv2

    cv2.setNumThreads(2)
    cv2.resize(noise_image(1200, 1200), (900, 900))  # start the pool in the parent
    (batches,) = _epochs(build("default", "imgaug"), 9, epochs=1)
    assert len(batches) == 2


def test_spawn_workers_unpickle_and_run():
    t = build("default", "imgaug")
    (batches,) = _epochs(t, 5, epochs=1, workers=1, ctx="spawn")
    assert len(batches) == 2 and batches[0].shape == (4, 3, 32, 32)


class UserImgaug(Dataset):
    """The notes' pattern: an imgaug Sequential owned by the dataset (fixed RNG copied into forks)."""

    def __init__(self):
        iaa = imgaug_compat.import_imgaug()
        self.transform = iaa.Sequential([iaa.Affine(rotate=(-30, 30)), iaa.AdditiveGaussianNoise(scale=(0, 20))])

    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(self.transform.augment_image(IMG))


def test_seed_worker_reseeds_user_imgaug_pipelines():
    loader = DataLoader(UserImgaug(), batch_size=2, num_workers=2, worker_init_fn=seed_worker,
                        generator=torch.Generator().manual_seed(0), timeout=60)
    b0, b1 = list(loader)
    assert not torch.equal(b0[0], b1[0])


# 3. masks stay aligned -----------------------------------------------------------------------------
GEOMETRIC = {
    "imgaug": [{"Fliplr": {"p": 0.5}}, {"Affine": {"rotate": [-30, 30], "scale": [0.9, 1.2], "shear": [-10, 10]}},
               {"ElasticTransformation": {"alpha": [0, 20], "sigma": 5}}, {"PerspectiveTransform": {"scale": 0.05}},
               "CropToFixedSize"],
    "torchvision": ["RandomHorizontalFlip", "RandomVerticalFlip",
                    {"RandomAffine": {"degrees": 30, "scale": [0.9, 1.2], "shear": 10, "interpolation": "bilinear"}},
                    {"RandomPerspective": {"distortion_scale": 0.2, "p": 1.0}}, "RandomCrop"],
}


@pytest.mark.parametrize("spec", ["geometric", "default", "heavy"])
@pytest.mark.parametrize("backend", ["imgaug", "torchvision"])
def test_masks_stay_aligned(backend, spec):
    t = build(GEOMETRIC[backend] if spec == "geometric" else spec, backend, size=96)
    img, mask = shapes_sample()
    torch.manual_seed(0)
    moved = 0
    for _ in range(6):
        x, m = t(img, mask)
        assert m.dtype == torch.int64 and set(m.unique().tolist()) <= set(LABELS)
        agree = ((denorm_gray(x) > 0.5) == (m.numpy() > 0)).mean()
        assert agree > 0.98, f"image and mask disagree on {1 - agree:.1%} of pixels"
        moved += not torch.equal(m, build("none", backend, size=96)(img, mask)[1])
    assert moved >= 4  # the geometry really changed


# 4. missing imgaug -------------------------------------------------------------------------------
def test_missing_imgaug_auto_falls_back_once_and_explicit_raises(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "imgaug.augmenters", None)  # as if imgaug were not installed
    monkeypatch.setitem(sys.modules, "albumentations", None)  # and albumentations (auto's next library) neither
    aug_backends.forget_first_times()
    with caplog.at_level(logging.WARNING, logger="kernel.augment"):
        ts = [build(p, "auto") for p in ("default", "heavy", "light")]
    assert [t.backend for t in ts] == ["torchvision"] * 3
    assert len([r for r in caplog.records if "torchvision backend" in r.getMessage()]) == 1
    with pytest.raises(ConfigError, match="pip install imgaug"):
        build("default", "imgaug")
    with pytest.raises(ConfigError, match="Kaggle"):
        build([{"Affine": {"rotate": 10}}], "auto")  # imgaug-only op names cannot fall back
    assert build("default", "imgaug", train=False).backend == "none"  # eval needs no imgaug


def test_missing_imgaug_subprocess_meta_path_blocker():
    """A fresh interpreter where `import imgaug` fails, as on Kaggle/Colab without the vendored copy."""
    code = textwrap.dedent("""
        import importlib.abc, json, logging, sys
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.partition(".")[0] in ("imgaug", "albumentations"):  # auto's libraries before torchvision
                    raise ImportError(f"No module named {name!r} (blocked)")
        sys.meta_path.insert(0, Block())
        import kernel.augment as A
        lazy = [m for m in ("imgaug", "albumentations", "cv2", "matplotlib", "torchvision") if m in sys.modules]
        records = []
        logging.getLogger("kernel.augment").addHandler(type("H", (logging.Handler,), {"emit": lambda s, r: records.append(r.getMessage())})())
        kw = dict(img_size=32, mean=(0.5,) * 3, std=(0.5,) * 3)
        backends = [A.build_transform(p, train=True, **kw).backend for p in ("default", "heavy")]
        try:
            A.build_transform("default", train=True, backend="imgaug", **kw)
            err = None
        except A.ConfigError as e:
            err = str(e)
        print(json.dumps({"lazy": lazy, "backends": backends, "warnings": records, "err": err}))
    """)
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["lazy"] == [], "kernel.augment must not import these at import time"
    assert out["backends"] == ["torchvision", "torchvision"]
    assert len(out["warnings"]) == 1 and "imgaug" in out["warnings"][0]
    assert "pip install imgaug" in out["err"] and "Kaggle" in out["err"]


def test_compat_aliases_only_added_when_missing():
    imgaug_compat.import_imgaug()
    assert imgaug_compat.apply_numpy_aliases() == []  # everything present now: nothing re-added
    assert np.sctypes["uint"][0] is np.uint8 and np.complex is complex
    assert np.bool is np.bool_  # NumPy 2 has np.bool again: left alone
    assert any("ElasticTransformation" in p for p in imgaug_compat.patches_applied())
    iaa = imgaug_compat.import_imgaug()
    assert getattr(iaa.ElasticTransformation, "_kernel_compat_patched")


# 5. custom op lists --------------------------------------------------------------------------------
def test_custom_lists_each_backend():
    ia_ops = [{"Affine": {"rotate": [-25, 25]}}, "Fliplr",
              {"Sometimes": {"p": 0.5, "then": [{"GaussianBlur": {"sigma": [0, 1]}}], "else": ["Identity"]}},
              {"OneOf": {"children": [{"Multiply": {"mul": [0.8, 1.2]}}, {"Add": {"value": {"choice": [-10, 10]}}}]}}]
    tv_ops = [{"ColorJitter": {"brightness": 0.2}}, {"RandomRotation": 15},
              {"RandomApply": {"transforms": [{"GaussianBlur": {"kernel_size": 3}}], "p": 0.5}}]
    img, mask = shapes_sample(48, 56)
    for ops, backend in ((ia_ops, "imgaug"), (tv_ops, "torchvision")):
        t = build(ops, "auto")
        assert t.backend == backend
        check_output(t(img, mask), 32, 3, True)
    seq = build(ia_ops, "imgaug")._state["pipe"]
    assert seq[0].rotate.a.value == -25 and seq[0].rotate.b.value == 25  # YAML list -> uniform range
    assert aug_ops._imgaug_value([1, 2]) == (1, 2) and aug_ops._imgaug_value(["edge", "constant"]) == ["edge", "constant"]
    assert aug_ops._imgaug_value({"x": [0, 1]}) == {"x": (0, 1)} and aug_ops._imgaug_value({"choice": [0, 9]}) == [0, 9]


def test_rgb_only_ops_skipped_for_other_channel_counts(caplog, monkeypatch):
    aug_backends.forget_first_times()  # the warning is once per process
    with caplog.at_level(logging.WARNING, logger="kernel.augment"):
        t = build(["Fliplr", "Grayscale", {"AddToHueAndSaturation": {"value": 10}}], "imgaug", in_chans=4)
    check_output(t(shapes_sample(40, 40, 4)[0]), 32, 4, False)
    assert any("Grayscale" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("spec, backend, match", [
    (["Flipr"], "imgaug", "Did you mean 'Fliplr'"),
    ([{"RandomHorizontalFlp": {}}], "torchvision", "Did you mean 'RandomHorizontalFlip'"),
    ([{"Affine": {"rotat": [-5, 5]}}], "imgaug", "op 'Affine'"),
    ([{"ColorJitter": {"brightnes": 0.2}}], "torchvision", "op 'ColorJitter'"),
    ([{"GaussianBlur": {"kernel_size": 4}}], "torchvision", "op 'GaussianBlur'"),
    ([{"Sometimes": {"p": 0.5, "then": [{"Fliplr": {"q": 1}}]}}], "imgaug", "op 'Fliplr'"),
    (["RandomHorizontalFlip", "ToTensor"], "torchvision", "added automatically"),
    ([{"Fliplr": 0.5}, {"Affine": 1}, 5], "imgaug", "one-key mapping"),
    (["Fliplr", "RandomRotation"], "auto", "unknown"),
    ("defualt", "auto", "Did you mean 'default'"),
    ("default", "imgaugg", "Did you mean 'imgaug'"),
])
def test_config_errors(spec, backend, match):
    with pytest.raises(ConfigError, match=match):
        build(spec, backend)


def test_bad_inputs_are_config_errors():
    t = build("light", "imgaug")
    with pytest.raises(ConfigError, match="uint8"):
        t(noise_image().astype(np.float32))
    with pytest.raises(ConfigError, match="mask"):
        t(noise_image(), np.zeros((3, 3), np.int64))
    with pytest.raises(ConfigError, match="in_chans"):
        build("light", "imgaug", in_chans=2)  # 3 mean values cannot fit 2 channels


def test_save_aug_grid(tmp_path):
    samples = [build("heavy", "imgaug")(*shapes_sample(40, 48)) for _ in range(3)]
    samples.append(build("default", "torchvision", in_chans=1)(shapes_sample(40, 48, 1)[0]))
    path = save_aug_grid(samples, MEAN, STD, tmp_path)  # a directory (Path): augmentations.png inside
    assert path.endswith("augmentations.png") and os.path.getsize(path) > 1000
    assert save_aug_grid(samples[:1], MEAN, STD, tmp_path / "one.png", ncol=1) == str(tmp_path / "one.png")


def _gray_with_a_mask(size: int = 24):
    """A flat mid-gray image (normalized with mean = std = 0.5: all zeros) and a mask holding class 2 in a block,
    class 1 in another and void (255) in one corner pixel."""
    mask = torch.zeros(size, size, dtype=torch.int64)
    mask[4:12, 6:18], mask[14:20, 2:8], mask[0, 0] = 2, 1, 255
    return torch.zeros(3, size, size), mask


COLORS = [(0, 0, 0), (255, 0, 0), (0, 0, 255)]  # background, class 1 red, class 2 blue


def test_aug_tile_puts_each_class_colour_exactly_where_the_mask_holds_it():
    image, mask = _gray_with_a_mask()
    tile = aug_tile(image, mask, (0.5,) * 3, (0.5,) * 3, COLORS, ignore_index=255)
    a = 0.5  # grid.MASK_ALPHA
    expected = np.full((24, 24, 3), 0.5)
    for k in (1, 2):
        expected[mask.numpy() == k] = 0.5 * (1 - a) + a * np.asarray(COLORS[k]) / 255
    expected[0, 0] = 0.5 * (1 - 0.35) + 0.35  # void: a white haze
    np.testing.assert_allclose(tile, expected, atol=1e-6)
    # A one-channel image is shown in gray, coloured the same way.
    gray = aug_tile(image[:1], mask, (0.5,), (0.5,), COLORS, ignore_index=255)
    np.testing.assert_allclose(gray, expected, atol=1e-6)


def test_aug_grid_draws_the_overlaid_tiles_with_their_titles_and_the_png_shows_the_colours(tmp_path):
    from PIL import Image

    image, mask = _gray_with_a_mask()
    samples = [(image, mask), (image, torch.zeros_like(mask))]
    fig = aug_figure(samples, (0.5,) * 3, (0.5,) * 3, titles=["circle, square", "-"], colors=COLORS,
                     ignore_index=255, names=["background", "circle", "square"])
    tiles = [ax for ax in fig.axes if ax.images]
    assert [ax.get_title() for ax in tiles] == ["circle, square", "-"]
    np.testing.assert_allclose(tiles[0].images[0].get_array(), aug_tile(image, mask, (0.5,) * 3, (0.5,) * 3,
                                                                        COLORS, ignore_index=255))
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["circle", "square"]  # background has no colour
    path = save_aug_grid(samples, (0.5,) * 3, (0.5,) * 3, tmp_path / "new" / "grid.png", colors=COLORS,
                         ignore_index=255)  # a folder that does not exist yet is made
    png = np.asarray(Image.open(path).convert("RGB")).astype(int)
    blue = np.round(255 * (0.25 + 0.5 * np.asarray([0, 0, 1]))).astype(int)  # class 2 over mid-gray
    red = np.round(255 * (0.25 + 0.5 * np.asarray([1, 0, 0]))).astype(int)
    n_blue = int((np.abs(png - blue).max(axis=2) <= 2).sum())
    n_red = int((np.abs(png - red).max(axis=2) <= 2).sum())
    assert n_blue > 1.5 * n_red > 0  # both classes show, class 2 over the larger area (96 vs 36 mask pixels)
