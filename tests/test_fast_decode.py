"""--fast-decode: a JPEG at least twice the size of the first resize decodes at reduced scale; nothing else changes.

The reduced decode is libjpeg's own (PIL's ``draft``): the image keeps at least the size the transform's first
resize needs, so after that resize the pixels differ only slightly from a full decode. PNGs and JPEGs too small
to halve read exactly as without it. The resolved setting is saved with the run and prediction uses it: a
prediction of the validation images reproduces the training run's validation accuracy. Segmentation refuses it
(its masks are read at full size).
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from kernel.augment import build_transform
from kernel.data import decoding, draft_request, load_image
from kernel.predict import load_for_prediction, main as predict_main
from kernel.train import main as train_main


def _photo(path: Path, size=(512, 384), seed=0, fmt="JPEG") -> Path:
    """A smooth photographic-like picture (low-frequency colour fields plus a little noise)."""
    rng = np.random.default_rng(seed)
    w, h = size
    small = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
    img = np.asarray(Image.fromarray(small).resize((w, h), Image.BICUBIC)).astype(np.int16)
    img = np.clip(img + rng.integers(-6, 7, img.shape), 0, 255).astype(np.uint8)
    Image.fromarray(img).save(path, format=fmt, quality=90)
    return path


@pytest.mark.parametrize("size, draft, want", [
    ((512, 384), 64, (128, 96)),       # shorter side 384 -> 1/4 keeps 96 >= 64; 1/8 would give 48
    ((512, 384), 200, (512, 384)),     # 1/2 would give 192 < 200: full size
    ((512, 384), (40, 60), (64, 48)),  # exact (H, W): 1/8 keeps 64 x 48 >= 60 x 40
    ((100, 80), 32, (50, 40)),         # 1/2: 40 >= 32
])
def test_a_jpeg_decodes_at_the_smallest_scale_that_keeps_the_first_resize(tmp_path, size, draft, want):
    path = _photo(tmp_path / "a.jpg", size)
    arr = load_image(path, 3, draft)
    assert (arr.shape[1], arr.shape[0]) == want and arr.dtype == np.uint8


def test_draft_request_asks_for_the_shorter_side_or_the_exact_size():
    assert draft_request((512, 384), 64) == (86, 64) and draft_request((300, 600), 100) == (100, 200)
    assert draft_request((512, 384), (40, 60)) == (60, 40) and draft_request((512, 384), None) is None


def test_pngs_small_jpegs_and_no_draft_read_exactly_as_before(tmp_path):
    png = _photo(tmp_path / "a.png", fmt="PNG")
    jpg = _photo(tmp_path / "b.jpg", (100, 80))
    assert np.array_equal(load_image(png, 3, 32), load_image(png, 3))
    assert np.array_equal(load_image(jpg, 3, 60), load_image(jpg, 3))  # 1/2 would give 40 < 60
    with decoding(64):  # the dataset's context: the sources' plain load_image calls take it
        assert load_image(_photo(tmp_path / "c.jpg"), 3).shape == (96, 128, 3)
    assert load_image(tmp_path / "c.jpg", 3).shape == (384, 512, 3)  # and only inside it


def test_after_the_first_resize_the_pixels_differ_only_slightly(tmp_path):
    t = build_transform("none", train=False, img_size=64, mean=(0.5,) * 3, std=(0.5,) * 3, crop_pct=1.0)
    path = _photo(tmp_path / "a.jpg", (1024, 768), seed=3)
    full, _ = t(load_image(path, 3))
    fast, _ = t(load_image(path, 3, t.resize_to))
    diff = (full - fast).abs() * 0.5 * 255  # back to pixel levels
    assert full.shape == fast.shape == (3, 64, 64)
    assert 0 < float(diff.mean()) < 3.0, float(diff.mean())  # measured: 0.36 levels of 255


def _jpeg_folder(root: Path, per_class: int = 8) -> Path:
    for c, name in enumerate(("dark", "light")):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            rng = np.random.default_rng([c, i])
            img = np.full((256, 320, 3), 60 + 120 * c, np.int16) + rng.integers(-40, 41, (256, 320, 3))
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(root / name / f"{i}.jpg", quality=90)
    return root


def test_the_run_saves_the_resolved_setting_and_prediction_decodes_as_validation_did(tmp_path):
    data = _jpeg_folder(tmp_path / "data")
    assert train_main(["--data", str(data), "--val-data", str(data), "--model", "test_resnet", "--img-size", "32",
                       "--epochs", "1", "--workers", "0", "--device", "cpu", "--batch-size", "8", "--no-plots",
                       "--no-tensorboard", "--output", str(tmp_path / "runs"), "--name", "r"]) == 0
    run = tmp_path / "runs" / "r"
    ckpt = torch.load(run / "best.pt", weights_only=True)
    assert ckpt["options"]["fast_decode"] == "on"  # auto, resolved for classification
    trained = load_for_prediction(str(run), torch.device("cpu"))
    assert trained.draft == trained.transform.resize_to == 33  # 32 px / test_resnet's crop_pct 0.95: the first resize
    out = tmp_path / "pred.csv"
    assert predict_main(["--checkpoint", str(run), str(data), "--out", str(out), "--workers", "0", "--device",
                         "cpu"]) == 0
    rows = list(csv.DictReader(open(out, newline="")))
    acc = np.mean([Path(r["path"]).parent.name == r["label"] for r in rows])
    assert acc == pytest.approx(json.loads((run / "summary.json").read_text())["best_metric"], abs=1e-6)


def test_segmentation_leaves_it_off_and_refuses_it_on(tmp_path, capsys):
    from kernel.tasks.segment.shapes_seg import write_shapes_seg

    data = write_shapes_seg(tmp_path / "seg", n=12, seed=0, size=32)
    args = ["--data", str(data), "--model", "tu-test_resnet", "--img-size", "32", "--epochs", "1", "--workers", "0",
            "--device", "cpu", "--batch-size", "4", "--no-plots", "--no-tensorboard", "--output", str(tmp_path / "runs")]
    assert train_main([*args, "--name", "refused", "--fast-decode", "on"]) == 2
    assert "--fast-decode on: --task segment reads masks at full size" in capsys.readouterr().err
    assert not (tmp_path / "runs" / "refused").exists()
    assert train_main([*args, "--name", "s"]) == 0
    assert torch.load(tmp_path / "runs" / "s" / "best.pt", weights_only=True)["options"]["fast_decode"] == "off"
