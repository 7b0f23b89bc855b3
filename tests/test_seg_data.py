"""Segmentation data: folder pairs, RLE CSVs and shapes as sources; multilabel bit masks; the seeded split."""
from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from PIL import Image

from kernel.data import ShapesSource
from kernel.errors import ConfigError
from kernel.tasks.segment.data import (MAX_MULTILABEL, RleCsvSource, SegFolderSource, build_seg_sources,
                                       decode_multilabel, encode_multilabel, infer_mode)
from kernel.tasks.segment.rle import rle_encode
from kernel.tasks.segment.shapes_seg import write_shapes_rle, write_shapes_seg

N, SIZE, SEED = 8, 32, 3


def _error(fn, *args, **kwargs) -> str:
    with pytest.raises(ConfigError) as info:
        fn(*args, **kwargs)
    msg = str(info.value)
    assert "\n" not in msg and ";" in msg  # one line: what is wrong; how to fix it
    return msg


def _shapes_masks(n: int = N) -> list:
    src = ShapesSource(n, SEED, SIZE)
    return [src[i][2] for i in range(n)]


def _write_pairs(root, masks, image_sizes=None) -> None:
    """images/<i>.png (grey noise) and masks/<i>.png (L index masks) for hand-made masks."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i, m in enumerate(masks):
        h, w = image_sizes[i] if image_sizes else m.shape
        Image.fromarray(np.full((h, w, 3), 40 + i, np.uint8)).save(root / "images" / f"im{i}.jpg")
        Image.fromarray(np.asarray(m, np.uint8)).save(root / "masks" / f"im{i}.png")


def _write_csv(path, header, rows) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)


def test_folder_pairs_round_trip(tmp_path):
    root = write_shapes_seg(tmp_path / "seg", n=N, seed=SEED, size=SIZE)
    src = SegFolderSource(str(root))
    assert src.classes == ["background", "circle", "square", "triangle", "cross"]  # from classes.txt
    assert src.mode == "multiclass" and len(src) == N
    for i, expected in enumerate(_shapes_masks()):
        image, target, mask = src[i]
        assert target is None and image.shape == (SIZE, SIZE, 3) and mask.dtype == np.int32
        np.testing.assert_array_equal(mask, expected)
        assert src.path(i).endswith(f"images/{i:05d}.png")
    assert src.targets == [i % 4 + 1 for i in range(N)]  # one shape per image, classes round-robin
    assert Image.open(root / "masks" / "00000.png").mode == "P"


def test_folder_numbered_classes_targets_and_ignore(tmp_path):
    masks = [np.array([[0, 1, 1], [0, 3, 255]]),       # class 1 has most pixels; 255 kept, not a class
             np.array([[0, 3, 3], [3, 1, 0]]),
             np.zeros((2, 3), int)]
    _write_pairs(tmp_path, masks)
    src = SegFolderSource(str(tmp_path))
    assert src.classes == ["background", "class_1", "class_2", "class_3"]
    assert src.targets == [1, 3, 0]
    np.testing.assert_array_equal(src[0][2], masks[0])


def test_folder_binary_masks_are_binary(tmp_path):
    _write_pairs(tmp_path, [np.array([[0, 255], [255, 255]]), np.array([[0, 0], [0, 255]])])
    src = SegFolderSource(str(tmp_path))
    assert src.classes == ["background", "class_1"] and src.mode == "binary"
    np.testing.assert_array_equal(src[0][2], [[0, 1], [1, 1]])


def test_missing_and_extra_masks_name_files(tmp_path):
    root = write_shapes_seg(tmp_path / "a", n=5, seed=0, size=SIZE)
    (root / "masks" / "00001.png").unlink()
    (root / "masks" / "00003.png").unlink()
    msg = _error(SegFolderSource, str(root))
    assert "2 of 5 image(s)" in msg and "00001.png" in msg and "00003.png" in msg and "no mask" in msg
    root = write_shapes_seg(tmp_path / "b", n=3, seed=0, size=SIZE)
    (root / "images" / "00002.png").unlink()
    msg = _error(SegFolderSource, str(root))
    assert "1 of 3 mask(s)" in msg and "00002.png" in msg and "no image" in msg


def test_size_mismatch_names_both_sizes(tmp_path):
    _write_pairs(tmp_path, [np.zeros((16, 32)), np.zeros((20, 24))], image_sizes=[(16, 32), (24, 20)])
    msg = _error(SegFolderSource, str(tmp_path))
    assert "im1.png is 24x20" in msg and "im1.jpg is 20x24" in msg


def test_classes_txt_names_and_out_of_range_value(tmp_path):
    _write_pairs(tmp_path, [np.array([[0, 1], [2, 2]])])
    (tmp_path / "classes.txt").write_text("bg\nroad\ncar\n")
    assert SegFolderSource(str(tmp_path)).classes == ["bg", "road", "car"]
    (tmp_path / "classes.txt").write_text("bg\nroad\n")
    msg = _error(SegFolderSource, str(tmp_path))
    assert "im0.png holds class 2" in msg and "2 classes" in msg


def test_colour_masks_through_classes_csv(tmp_path):
    table = {(0, 0, 0): 0, (128, 64, 128): 1, (244, 35, 232): 2}
    index = np.array([[0, 1, 2], [2, 2, 1]])
    colours = np.array(list(table), np.uint8)[index]  # index -> its colour, (2, 3, 3)
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    Image.fromarray(np.zeros((2, 3, 3), np.uint8)).save(tmp_path / "images" / "a.png")
    Image.fromarray(colours).save(tmp_path / "masks" / "a.png")
    (tmp_path / "classes.csv").write_text("name,r,g,b\nvoid,0,0,0\nroad,128,64,128\nwalk,244,35,232\n")
    src = SegFolderSource(str(tmp_path))
    assert src.classes == ["void", "road", "walk"] and src.targets == [2]
    np.testing.assert_array_equal(src[0][2], index)
    split = build_seg_sources(str(tmp_path), val_data=str(tmp_path))
    assert split.meta["colors"][:3] == [[0, 0, 0], [128, 64, 128], [244, 35, 232]]


def test_rle_csv_with_class_column_reproduces_shapes(tmp_path):
    root = write_shapes_rle(tmp_path, n=N, seed=SEED, size=SIZE)
    src = RleCsvSource(str(root / "train.csv"), str(root / "train_images"))
    assert src.mode == "multilabel" and src.classes == ["1", "2", "3", "4"] and len(src) == N
    multiclass = RleCsvSource(str(root / "train.csv"), str(root / "train_images"), mode="multiclass")
    assert multiclass.classes == ["background", "1", "2", "3", "4"]
    for i, expected in enumerate(_shapes_masks()):
        _, target, bits = src[i]
        assert target is None and bits.dtype == np.int32
        np.testing.assert_array_equal(bits, np.where(expected > 0, 1 << (expected.astype(np.int32) - 1), 0))
        np.testing.assert_array_equal(multiclass[i][2], expected)
    assert src.targets == [i % 4 + 1 for i in range(N)]


@pytest.mark.parametrize("order", ["F", "C"])
def test_rle_csv_without_class_column_is_binary(tmp_path, order):
    masks = _shapes_masks()
    src_shapes = ShapesSource(N, SEED, SIZE)
    (tmp_path / "train").mkdir()
    for i in range(N):
        Image.fromarray(src_shapes[i][0]).save(tmp_path / "train" / f"id{i}.png")
    _write_csv(tmp_path / "train.csv", ["id", "rle_mask"],
               [(f"id{i}", rle_encode(m > 0, order)) for i, m in enumerate(masks)])
    src = RleCsvSource(str(tmp_path / "train.csv"), str(tmp_path / "train"), order=order)
    assert src.mode == "binary" and src.classes == ["background", "foreground"]
    for i, m in enumerate(masks):
        np.testing.assert_array_equal(src[i][2], (m > 0).astype(np.int32))
    assert src.targets == [1] * N and src.path(2).endswith("id2.png")


def _tiny_overlap_csv(tmp_path):
    """H=2, W=3 image; class 1 '1 3' (F order: (0,0),(1,0),(0,1)), class 2 '3 2' ((0,1),(1,1)): overlap at (0,1)."""
    (tmp_path / "img").mkdir()
    Image.fromarray(np.zeros((2, 3, 3), np.uint8)).save(tmp_path / "img" / "x.jpg")
    Image.fromarray(np.zeros((2, 3, 3), np.uint8)).save(tmp_path / "img" / "y.jpg")
    _write_csv(tmp_path / "t.csv", ["ImageId", "ClassId", "EncodedPixels"],
               [("x.jpg", 1, "1 3"), ("x.jpg", 2, "3 2"), ("y.jpg", 1, ""), ("y.jpg", 2, "4 3")])
    return str(tmp_path / "t.csv"), str(tmp_path / "img")


def test_multilabel_overlap_bits_from_csv(tmp_path):
    csv_path, img_dir = _tiny_overlap_csv(tmp_path)
    src = RleCsvSource(csv_path, img_dir)
    np.testing.assert_array_equal(src[0][2], [[1, 3, 0], [1, 2, 0]])
    np.testing.assert_array_equal(src[1][2], [[0, 0, 2], [0, 2, 2]])  # F order: pixels 4, 5, 6
    assert src.targets == [1, 2]  # x: class 1 has 3 pixels, class 2 has 2
    msg = _error(lambda: RleCsvSource(csv_path, img_dir, mode="multiclass")[0])
    assert "'x.jpg'" in msg and "overlap on 1 pixels" in msg and "multilabel" in msg


def test_multilabel_encoding_round_trip():
    rng = np.random.default_rng(0)
    per_class = rng.random((5, 6, 7)) < 0.5  # overlapping by construction
    bits = encode_multilabel(list(per_class))
    assert bits.dtype == np.int32
    assert bits[0, 0] == sum(1 << k for k in range(5) if per_class[k, 0, 0])
    out = decode_multilabel(torch.from_numpy(bits), 5)
    assert out.dtype == torch.float32 and out.shape == (5, 6, 7)
    np.testing.assert_array_equal(out.numpy(), per_class.astype(np.float32))
    batch = decode_multilabel(torch.from_numpy(np.stack([bits, bits * 0])).long(), 5)
    assert batch.shape == (2, 5, 6, 7) and batch[1].sum() == 0
    np.testing.assert_array_equal(batch[0].numpy(), per_class)
    full = encode_multilabel([np.ones((1, 1), bool)] * MAX_MULTILABEL)
    assert int(full[0, 0]) == 2 ** MAX_MULTILABEL - 1
    assert "31 classes" in _error(encode_multilabel, [np.ones((1, 1), bool)] * (MAX_MULTILABEL + 1))


def test_infer_mode():
    assert infer_mode(2, False) == "binary"
    assert infer_mode(5, False) == "multiclass"
    assert infer_mode(4, True) == "multilabel"


def test_rle_column_guess_and_errors(tmp_path):
    (tmp_path / "img").mkdir()
    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(tmp_path / "img" / "a.png")
    _write_csv(tmp_path / "g.csv", ["name", "size", "RLE_Mask"], [("a", 4, "2 2")])
    src = RleCsvSource(str(tmp_path / "g.csv"), str(tmp_path / "img"))
    np.testing.assert_array_equal(src[0][2], [[0, 1], [1, 0]])  # pixels 2, 3 column-major
    _write_csv(tmp_path / "n.csv", ["name", "pixels"], [("a", "2 2")])
    msg = _error(RleCsvSource, str(tmp_path / "n.csv"), str(tmp_path / "img"))
    assert "--rle-col" in msg and "name, pixels" in msg
    msg = _error(RleCsvSource, str(tmp_path / "n.csv"), str(tmp_path / "img"), rle_col="pixel")
    assert "'pixel'" in msg and "did you mean 'pixels'" in msg
    _write_csv(tmp_path / "bad.csv", ["name", "rle"], [("a", "2 9")])
    msg = _error(lambda: RleCsvSource(str(tmp_path / "bad.csv"), str(tmp_path / "img"))[0])
    assert "image 'a'" in msg and "past the end" in msg


def test_build_seg_sources_split_sizes_and_determinism(tmp_path):
    root = write_shapes_seg(tmp_path / "seg", n=12, seed=0, size=SIZE)
    a = build_seg_sources(str(root), val_split=0.5, seed=7)
    b = build_seg_sources(str(root), val_split=0.5, seed=7)
    assert len(a.train) + len(a.val) == 12 and len(a.val) == 8  # 3 per class, round(1.5) = 2 held out each
    assert a.train.indices == b.train.indices and a.val.indices == b.val.indices
    assert not set(a.train.indices) & set(a.val.indices)
    seeds = {tuple(build_seg_sources(str(root), val_split=0.5, seed=s).val.indices) for s in range(4)}
    assert len(seeds) > 1
    assert a.meta["mode"] == "multiclass" and a.meta["ignore_index"] == 255 and not a.multilabel
    assert len(a.meta["colors"]) == 5


def test_build_seg_sources_csv_and_shapes(tmp_path):
    root = write_shapes_rle(tmp_path, n=N, seed=SEED, size=SIZE)
    split = build_seg_sources(str(root), csv_file="train.csv", image_dir="train_images", val_split=0.5, seed=0)
    assert split.multilabel and split.meta["mode"] == "multilabel" and split.meta["ignore_index"] is None
    assert split.classes == ["1", "2", "3", "4"] and len(split.train) == len(split.val) == 4
    shapes = build_seg_sources("shapes", val_split=0.5, shapes_n=8, seed=1)
    assert shapes.classes[0] == "background" and len(shapes.classes) == 5 and shapes.meta["mode"] == "multiclass"
    image, target, mask = shapes.train[0]
    assert target is None and mask.dtype == np.int32 and set(np.unique(mask)) <= {0, 1, 2, 3, 4}
    assert "did you mean 'multiclass'" in _error(build_seg_sources, "shapes", mode="multiclas")
    assert "--val-data" in _error(build_seg_sources, str(root), csv_file="train.csv", image_dir="train_images",
                                  val_data=str(root))
    assert "--val-data" in _error(build_seg_sources, "shapes", val_data=str(root))
    assert "one class per pixel" in _error(build_seg_sources, str(write_shapes_seg(tmp_path / "f", n=4, size=SIZE)),
                                           mode="multilabel")
