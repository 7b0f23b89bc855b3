"""The albumentations backend (kernel.augment.albu, albu_ops): every registry entry, presets, seeding, saved
pipelines, the fallback when it is missing, and the resolved backend kept by a resume."""
from __future__ import annotations

import logging
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch.utils.data import DataLoader

from conftest import ROOT, small_args
from kernel.augment import AUTO_ORDER, BACKENDS, build_transform, resolve_backend
from kernel.augment import backends as aug_backends
from kernel.augment.albu import albumentations_distribution, import_albumentations
from kernel.augment.albu_ops import ALBU_OPS
from kernel.config import parse_options
from kernel.data import EpochSampler, TransformedDataset, fit_channel_stats, sample_seed
from kernel.errors import ConfigError

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
LABELS = (0, 2, 5)
SEEDS = range(6)


def shapes_sample(h: int = 48, w: int = 56, c: int = 3):
    """Black image with a white rectangle (label 2) and disc (label 5); mask = the labels."""
    import cv2

    mask = np.zeros((h, w), np.int32)
    cv2.rectangle(mask, (w // 8, h // 6), (w // 2, h // 2), 2, -1)
    cv2.circle(mask, (int(w * 0.68), int(h * 0.66)), h // 4, 5, -1)
    img = np.zeros((h, w, c), np.uint8)
    img[mask > 0] = 255
    return img, mask.astype(np.int64)


def noisy_sample(h: int = 48, w: int = 56):
    """The shapes sample with noise on the image (photometric ops have texture to act on); the mask unchanged."""
    img, mask = shapes_sample(h, w)
    noise = np.random.default_rng(3).integers(0, 64, img.shape, dtype=np.uint8)
    return np.clip(img.astype(np.int16) - noise + 32, 0, 255).astype(np.uint8), mask


def build(spec, backend="albumentations", *, train=True, size=32, in_chans=3, **kw):
    t = build_transform(spec, train=train, backend=backend, img_size=size, mean=MEAN, std=STD, in_chans=in_chans, **kw)
    t.strict = True  # an op failure must fail the test, not fall back to the unaugmented image
    return t


def seeded(t, seed: int, *args):
    """``t(*args)`` with torch's generator seeded as TransformedDataset seeds each sample."""
    torch.default_generator.manual_seed(seed)
    return t(*args)


def denorm_gray(img: torch.Tensor) -> np.ndarray:
    c = img.shape[0]
    m = torch.tensor(fit_channel_stats(MEAN, c, "mean")).view(-1, 1, 1)
    s = torch.tensor(fit_channel_stats(STD, c, "std")).view(-1, 1, 1)
    return (img * s + m).mean(0).numpy()


def aligned(x: torch.Tensor, m: torch.Tensor) -> float:
    """How well image and mask agree away from the shapes' edges (interpolation blurs a pixel there): the
    fraction of mask pixels with a uniform 3x3 neighbourhood whose image pixel is bright exactly where the mask
    holds a shape."""
    import cv2

    fg, bright = (m.numpy() > 0).astype(np.uint8), denorm_gray(x) > 0.5
    inner, outer = cv2.erode(fg, np.ones((3, 3), np.uint8)) > 0, cv2.dilate(fg, np.ones((3, 3), np.uint8)) == 0
    return float(np.concatenate([bright[inner], ~bright[outer]]).mean())


def _kind(name: str) -> str:
    """What an entry does to masks: its own kind; a meta op by its children (the examples' children are geometric)."""
    info = ALBU_OPS.get(name)
    if info.kind != "meta":
        return info.kind
    return "identity" if not info.children else "geometric"


# 1. every registry entry: geometric ops move image and mask together, photometric ops leave the mask alone ----
@pytest.mark.parametrize("name", ALBU_OPS.names())
def test_every_albumentations_op_moves_image_and_mask_together(name):
    t = build([{name: ALBU_OPS.get(name).example}])
    kind = _kind(name)
    img, mask = shapes_sample() if kind == "geometric" else noisy_sample()
    ref_img, ref_mask = build("none")(img, mask)
    changed = 0
    for s in SEEDS:
        x, m = seeded(t, s, img, mask)
        assert x.shape == (3, 32, 32) and m.shape == (32, 32) and m.dtype == torch.int64
        assert set(m.unique().tolist()) <= set(LABELS)  # nearest interpolation: no new label values
        if kind == "geometric":
            agree = aligned(x, m)
            assert agree > 0.99, f"image and mask disagree on {1 - agree:.1%} of the pixels off the edges (seed {s})"
            changed += not torch.equal(m, ref_mask)
        elif kind == "photometric":
            assert torch.equal(m, ref_mask), "a photometric op changed the mask"
            changed += not torch.equal(x, ref_img)
        else:  # NoOp: exactly the unaugmented pipeline
            assert torch.equal(x, ref_img) and torch.equal(m, ref_mask)
            changed += 1
        assert torch.equal(seeded(t, s, img)[0], x)  # without a mask: the same pixels for the same seed
    assert changed >= 1, f"{name} never changed the {'mask' if kind == 'geometric' else 'image'} in {len(SEEDS)} seeds"


@pytest.mark.parametrize("name, flip", [("HorizontalFlip", lambda a: a.flip(-1)), ("VerticalFlip", lambda a: a.flip(-2)),
                                        ("Transpose", lambda a: a.transpose(-1, -2))])
def test_flips_put_each_marked_pixel_of_image_and_mask_in_the_same_place(name, flip):
    """A square input (its center crop is symmetric), one marked pixel: image and mask land exactly where the
    flip of the unaugmented output puts them."""
    img, mask = np.zeros((36, 36, 3), np.uint8), np.zeros((36, 36), np.int64)
    img[5, 9] = 255
    mask[5, 9] = 2
    ref = build("none", crop_pct=1.0, size=36)(img, mask)
    x, m = seeded(build([{name: {"p": 1.0}}], crop_pct=1.0, size=36), 0, img, mask)
    assert torch.equal(x, flip(ref[0])) and torch.equal(m, flip(ref[1]))
    assert m[tuple(int(v) for v in np.argwhere(denorm_gray(x) > 0.5)[0])] == 2  # the marked image pixel is the marked mask pixel


# 2. presets ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("in_chans", [1, 3, 4])
@pytest.mark.parametrize("preset", ["light", "default", "heavy"])
def test_presets_run_on_any_channel_count_and_keep_masks_aligned(preset, in_chans):
    t = build(preset, in_chans=in_chans, size=40)
    assert t.backend == "albumentations"
    img, mask = shapes_sample(56, 64, in_chans)
    for s in SEEDS:
        x, m = seeded(t, s, img, mask)
        assert x.shape == (in_chans, 40, 40) and torch.isfinite(x).all() and set(m.unique().tolist()) <= set(LABELS)
        if preset != "heavy":  # heavy's colour ops move the gray level off 0.5 on some pixels: alignment is geometric
            assert aligned(x, m) > 0.99


def test_presets_draw_the_same_ops_as_the_other_backends():
    """Same number of ops per preset, the same kinds in the same order (flip, rotation/affine, crop, noise...)."""
    from kernel.augment import preset_ops
    from kernel.augment.ops import REGISTRIES, split_entry

    def kinds(backend, preset):
        names = [split_entry(e, "t")[0] for e in preset_ops(preset, backend)]
        return [REGISTRIES[backend].get(n).kind for n in names]

    for preset in ("light", "default"):
        assert kinds("albumentations", preset) == kinds("torchvision", preset) == kinds("imgaug", preset)
    assert kinds("albumentations", "heavy") == kinds("torchvision", "heavy")


@pytest.mark.parametrize("preset", ["light", "default", "heavy"])
def test_presets_draw_a_grid_with_show_aug(tmp_path, preset):
    from kernel.run import effective_options, seed_everything
    from kernel.run.oneshots import ONE_SHOTS

    opts = effective_options(parse_options(small_args(tmp_path, "--show-aug", "4", "--name", "aug", "--data", "shapes",
                                                      "--dry-run", "--aug", preset, "--aug-backend", "albumentations")))
    seed_everything(opts.seed, False)
    result = ONE_SHOTS["show_aug"](opts)
    assert opts.aug_backend == "albumentations" and len(result["tiles"]) == 4
    assert Path(result["show_aug"]).is_file() and Path(result["show_aug"]).stat().st_size > 1000


# 3. unknown names -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("spec, backend, match", [
    ([{"HorizontalFlp": {"p": 1}}], "albumentations", "Did you mean 'HorizontalFlip'"),
    (["HorizontalFlip", "RandomBrightnesContrast"], "auto", "Did you mean 'RandomBrightnessContrast'"),
    (["Normalize"], "albumentations", "added automatically"),
    (["ToTensorV2"], "albumentations", "added automatically"),
    ([{"Rotate": {"limit": 10, "interpolation": "bilinaer"}}], "albumentations", "did you mean 'bilinear'"),
    ([{"Rotate": {"limitt": 10}}], "albumentations", "op 'Rotate' rejected its arguments"),
])
def test_unknown_names_get_the_known_names_and_the_closest_match(spec, backend, match):
    with pytest.raises(ConfigError, match=match) as e:
        build(spec, backend)
    if "Did you mean" in match:
        assert "albumentations augmentation op" in str(e.value) and "Known: HorizontalFlip" in str(e.value)


def test_auto_picks_albumentations_for_its_own_names():
    assert build(["HorizontalFlip", {"GaussNoise": {"p": 1.0}}], "auto").backend == "albumentations"
    assert resolve_backend(["HorizontalFlip", "CoarseDropout"]) == "albumentations"
    assert "albumentations" in BACKENDS and set(AUTO_ORDER) == set(BACKENDS) - {"auto"}


# 4. seeding: the sample seed alone decides ------------------------------------------------------------------
def test_same_sample_seed_same_output_fresh_instance_too_other_seeds_differ():
    img, mask = shapes_sample()
    t = build("heavy")
    seed = sample_seed(7, 1, 3)
    x1, m1 = seeded(t, seed, img, mask)
    x2, m2 = seeded(t, seed, img, mask)
    fresh = pickle.loads(pickle.dumps(build("heavy")))  # another instance, its library objects rebuilt
    x3, m3 = seeded(fresh, seed, img, mask)
    assert torch.equal(x1, x2) and torch.equal(m1, m2) and torch.equal(x1, x3) and torch.equal(m1, m3)
    others = [seeded(t, sample_seed(7, 1, i), img, mask)[0] for i in (4, 5, 6)]
    assert all(not torch.equal(x1, o) for o in others)
    np_state, py_state = np.random.get_state()[1].tolist(), __import__("random").getstate()
    seeded(t, seed, img, mask)
    assert np.random.get_state()[1].tolist() == np_state and __import__("random").getstate() == py_state


class _Source:
    """Six copies of the shapes sample: any difference between items comes from augmentation."""

    def __len__(self) -> int:
        return 6

    def __getitem__(self, i: int):
        img, mask = shapes_sample()
        return img, 0, mask


def _epoch(workers: int, skip: int = 0):
    ds = TransformedDataset(_Source(), build("default"), with_mask=True, seed=11)
    sampler = EpochSampler(len(ds), seed=11, shuffle=True, batch_size=2, drop_last=True)
    sampler.set_epoch(2, skip)
    loader = DataLoader(ds, batch_size=2, sampler=sampler, num_workers=workers, timeout=60 if workers else 0)
    return [(b[0].clone(), b[2].clone()) for b in loader]


def test_any_worker_count_and_a_resume_inside_the_epoch_see_the_same_augmentations():
    inline, forked = _epoch(0), _epoch(2)
    assert len(inline) == 3 and not torch.equal(inline[0][0][0], inline[0][0][1])  # samples really differ
    for (x, m), (y, n) in zip(inline, forked):
        assert torch.equal(x, y) and torch.equal(m, n)
    for (x, m), (y, n) in zip(inline[1:], _epoch(0, skip=1)):  # resumed after one batch
        assert torch.equal(x, y) and torch.equal(m, n)


class _UserCompose(torch.utils.data.Dataset):
    """The notes' pattern with albumentations: a Compose owned by the dataset (its RNG state copied into each fork)."""

    def __init__(self):
        A = import_albumentations()
        self.transform = A.Compose([A.Affine(rotate=(-30, 30), p=1.0), A.GaussNoise(std_range=(0, 0.1), p=1.0)])

    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(self.transform(image=shapes_sample()[0])["image"])


def test_seed_worker_reseeds_user_albumentations_pipelines():
    from kernel.augment import seed_worker

    def first_items(init):
        loader = DataLoader(_UserCompose(), batch_size=2, num_workers=2, worker_init_fn=init, timeout=60,
                            generator=torch.Generator().manual_seed(0))
        b0, b1 = list(loader)
        return b0[0], b1[0]

    assert torch.equal(*first_items(None))  # forked workers repeat each other without reseeding
    a, b = first_items(seed_worker)
    assert not torch.equal(a, b) and torch.equal(first_items(seed_worker)[0], a)  # distinct, yet repeatable


# 5. albumentations' own saved pipelines ----------------------------------------------------------------------
def _compose():
    A = import_albumentations()
    return A.Compose([A.HorizontalFlip(p=0.5), A.Affine(rotate=(-20, 20), p=1.0), A.GaussNoise(std_range=(0, 0.05))])


OPS = [{"HorizontalFlip": {"p": 0.5}}, {"Affine": {"rotate": [-20, 20], "p": 1.0}}, {"GaussNoise": {"std_range": [0, 0.05]}}]


def test_a_saved_compose_loads_as_a_custom_pipeline(tmp_path):
    """A.to_dict, A.save (YAML and JSON, by path) and the YAML read back all give the op list's augmentations."""
    A = import_albumentations()
    A.save(_compose(), str(tmp_path / "p.yaml"), data_format="yaml")
    A.save(_compose(), str(tmp_path / "p.json"), data_format="json")
    specs = [A.to_dict(_compose()), str(tmp_path / "p.yaml"), str(tmp_path / "p.json"),
             yaml.safe_load((tmp_path / "p.yaml").read_text())]
    img, mask = shapes_sample()
    want = [seeded(build(OPS), s, img, mask) for s in SEEDS]
    assert len({w[1].numpy().tobytes() for w in want}) > 1  # the seeds do differ
    for spec in specs:
        t = build(spec, "auto")
        assert t.backend == "albumentations" and isinstance(t.ops, dict)  # plain data: pickles to workers
        for s, (x, m) in zip(SEEDS, want):
            y, n = seeded(pickle.loads(pickle.dumps(t)), s, img, mask)
            assert torch.equal(x, y) and torch.equal(m, n)
    assert build(specs[0], train=False).backend == "none"


def test_a_saved_pipeline_with_bad_names_or_another_backend_is_refused():
    A = import_albumentations()
    saved = A.to_dict(_compose())
    saved["transform"]["transforms"][0]["__class_fullname__"] = "HorizontalFlp"
    with pytest.raises(ConfigError, match="Did you mean 'HorizontalFlip'"):
        build(saved, "auto")
    with pytest.raises(ConfigError, match="added automatically"):
        build(A.to_dict(A.Compose([A.HorizontalFlip(), A.Normalize()])))
    with pytest.raises(ConfigError, match="needs --aug-backend albumentations"):
        build(A.to_dict(_compose()), "imgaug")


# 6. albumentations missing, and importing it offline --------------------------------------------------------
def test_missing_albumentations_falls_back_once_and_explicit_raises(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "albumentations", None)  # as if it were not installed (Colab)
    monkeypatch.setitem(sys.modules, "imgaug.augmenters", None)  # and imgaug neither: torchvision is what is left
    aug_backends.forget_first_times()
    with caplog.at_level(logging.WARNING, logger="kernel.augment"):
        ts = [build(p, "auto") for p in ("default", "heavy", "light")]
    assert [t.backend for t in ts] == ["torchvision"] * 3
    warned = [r.getMessage() for r in caplog.records if "torchvision backend" in r.getMessage()]
    assert len(warned) == 1 and "albumentations" in warned[0] and "imgaug" in warned[0]
    with pytest.raises(ConfigError, match="pip install albumentations==2.0.8"):
        build("default", "albumentations")
    with pytest.raises(ConfigError, match="albumentations is not importable"):
        build(["HorizontalFlip", "CoarseDropout"], "auto")  # albumentations-only names cannot fall back
    with pytest.raises(ConfigError, match="albumentations is not importable"):
        build({"__version__": "2.0.8", "transform": {"__class_fullname__": "HorizontalFlip", "p": 1.0}}, "auto")
    assert build("default", "albumentations", train=False).backend == "none"  # eval needs no library


def test_missing_albumentations_alone_leaves_auto_on_the_next_library(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "albumentations", None)
    aug_backends.forget_first_times()
    rest = [b for b in AUTO_ORDER if b != "albumentations"]
    with caplog.at_level(logging.WARNING, logger="kernel.augment"):
        assert build("default", "auto").backend == rest[0]
    before = AUTO_ORDER.index("albumentations") < AUTO_ORDER.index(rest[0])
    assert any("albumentations is not importable" in r.getMessage() for r in caplog.records) == before


def test_import_sets_no_update_check_first_and_names_the_distribution():
    """A fresh interpreter: importing kernel.augment imports no albumentations; building one sets
    NO_ALBUMENTATIONS_UPDATE=1 before albumentations is imported, and logs which distribution it is."""
    code = textwrap.dedent("""
        import builtins, json, logging, os, sys
        logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
        seen = {}
        real_import = builtins.__import__
        def spy(name, *a, **k):
            if name == "albumentations" and "at_import" not in seen:
                seen["at_import"] = os.environ.get("NO_ALBUMENTATIONS_UPDATE")
            return real_import(name, *a, **k)
        builtins.__import__ = spy
        import kernel.augment as ka
        lazy = "albumentations" in sys.modules
        ka.build_transform("default", train=True, backend="albumentations", img_size=16, mean=(0.5,) * 3,
                           std=(0.5,) * 3)
        print(json.dumps({"lazy": lazy, "env": seen.get("at_import")}))
    """)
    env = {k: v for k, v in os.environ.items() if k != "NO_ALBUMENTATIONS_UPDATE"}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    import json

    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result == {"lazy": False, "env": "1"}
    dist, version = albumentations_distribution()
    assert f"albumentations backend from {dist} {version}" in out.stdout
    assert (dist, version) == ("albumentations", import_albumentations().__version__)


# 7. the resolved backend is recorded, and a resume keeps it -------------------------------------------------
def test_auto_is_recorded_resolved_and_a_resume_elsewhere_keeps_it(tmp_path, monkeypatch):
    from kernel.run import effective_options, prepare, resume_state
    from kernel.train import main

    args = small_args(tmp_path, "--data", "shapes", "--dry-run", "--aug", "light", "--aug-backend", "auto",
                      "--name", "r", "--no-tensorboard", "--no-plots", "--epochs", "1")
    assert main(args) == 0
    last = tmp_path / "r" / "last.pt"
    saved = torch.load(last, weights_only=False)["options"]
    assert saved["aug_backend"] == AUTO_ORDER[0]  # imgaug: the first library of auto's order, installed here
    assert yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())["aug_backend"] == AUTO_ORDER[0]
    resume = [*args[:-1], "2", "--resume", "auto"]
    opts = effective_options(parse_options(resume))
    assert resume_state(prepare(opts)).start_epoch == 2 and opts.aug_backend == saved["aug_backend"]
    monkeypatch.setitem(sys.modules, "imgaug.augmenters", None)  # elsewhere: auto would pick another library
    opts = effective_options(parse_options(resume))
    assert opts.aug_backend != saved["aug_backend"]
    with pytest.raises(ConfigError, match=f"--aug-backend '{saved['aug_backend']}'"):
        resume_state(prepare(opts))
    ckpt = torch.load(last, weights_only=False)  # an older bundle's checkpoint recorded "auto": not compared
    ckpt["options"]["aug_backend"] = "auto"
    torch.save(ckpt, last)
    assert resume_state(prepare(opts)).start_epoch == 2
