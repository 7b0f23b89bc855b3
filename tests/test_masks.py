"""Mask files: every mask kind read back as class indices, classes.txt/csv, palettes, atomic PNG writes."""
from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from kernel.errors import ConfigError
from kernel.tasks.segment.masks import palette, read_class_names, read_mask, voc_colormap, write_mask_png

INDEX = np.array([[0, 1, 2, 2, 0],
                  [3, 3, 1, 0, 0],
                  [0, 2, 2, 1, 3]], dtype=np.uint8)  # (H=3, W=5): non-square on purpose
TABLE = {(0, 0, 0): 0, (128, 64, 128): 1, (244, 35, 232): 2, (70, 70, 70): 3}  # colour -> index


def _one_line_error(fn, *args, **kwargs) -> str:
    with pytest.raises(ConfigError) as info:
        fn(*args, **kwargs)
    msg = str(info.value)
    assert "\n" not in msg and ";" in msg  # what is wrong; how to fix it
    return msg


def test_l_index_mask(tmp_path):
    Image.fromarray(INDEX).save(tmp_path / "m.png")
    out = read_mask(tmp_path / "m.png")
    assert out.dtype == np.uint8 and out.shape == (3, 5)
    np.testing.assert_array_equal(out, INDEX)


def test_p_mask_reads_palette_index_not_colour(tmp_path):
    img = Image.fromarray(INDEX)
    # Colours deliberately unlike the indices: reading the colour would give 200, 10, 7, ...
    img.putpalette([0, 0, 0, 200, 10, 10, 10, 200, 10, 7, 7, 7] + [0] * (768 - 12))
    img.save(tmp_path / "p.png")
    assert Image.open(tmp_path / "p.png").mode == "P"
    np.testing.assert_array_equal(read_mask(tmp_path / "p.png"), INDEX)


def test_p_mask_keeps_255_as_an_index(tmp_path):
    """In P masks (Pascal VOC) 255 is a class/ignore index, never a binary foreground."""
    arr = np.array([[0, 255], [255, 0]], np.uint8)
    img = Image.fromarray(arr)
    img.putpalette(palette(256))
    img.save(tmp_path / "voc.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "voc.png"), arr)


@pytest.mark.parametrize("values,expected", [
    ([[0, 255], [255, 0]], [[0, 1], [1, 0]]),       # 0/255 binary
    ([[255, 255], [255, 255]], [[1, 1], [1, 1]]),   # all foreground
    ([[0, 1], [1, 0]], [[0, 1], [1, 0]]),           # 0/1 binary
    ([[0, 1], [255, 2]], [[0, 1], [255, 2]]),       # indices with a 255 ignore label stay
    ([[0, 0], [0, 0]], [[0, 0], [0, 0]]),
])
def test_l_binary_masks(tmp_path, values, expected):
    Image.fromarray(np.array(values, np.uint8)).save(tmp_path / "b.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "b.png"), np.array(expected, np.uint8))


def test_mode_1_mask(tmp_path):
    arr = np.array([[True, False, True], [False, False, True]])
    img = Image.fromarray(arr)
    assert img.mode == "1"
    img.save(tmp_path / "one.png")
    out = read_mask(tmp_path / "one.png")
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, arr.astype(np.uint8))


def _colour_image(index: np.ndarray, table: dict, mode: str = "RGB") -> Image.Image:
    lut = np.zeros((256, 3), np.uint8)
    for color, i in table.items():
        lut[i] = color
    rgb = lut[index]
    if mode == "RGBA":
        rgb = np.dstack([rgb, np.full(index.shape, 255, np.uint8)])
    return Image.fromarray(rgb)


@pytest.mark.parametrize("mode", ["RGB", "RGBA"])
def test_colour_mask_with_table(tmp_path, mode):
    _colour_image(INDEX, TABLE, mode).save(tmp_path / "c.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "c.png", colors=TABLE), INDEX)


def test_colour_mask_unknown_colour(tmp_path):
    img = np.asarray(_colour_image(INDEX, TABLE)).copy()
    img[1, 2] = (9, 8, 7)  # first in raster order
    img[2, 4] = (1, 2, 3)
    Image.fromarray(img).save(tmp_path / "bad.png")
    msg = _one_line_error(read_mask, tmp_path / "bad.png", colors=TABLE)
    assert "bad.png" in msg and "(9, 8, 7)" in msg and "row 1, column 2" in msg
    assert "2 unknown" in msg and "classes.csv" in msg and ",9,8,7" in msg


def test_grey_rgb_without_table_reads_as_l(tmp_path):
    grey = np.where(INDEX > 0, 255, 0).astype(np.uint8)
    Image.fromarray(np.dstack([grey] * 3)).save(tmp_path / "g.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "g.png"), (INDEX > 0).astype(np.uint8))


def test_colour_rgb_without_table_needs_classes_csv(tmp_path):
    _colour_image(INDEX, TABLE).save(tmp_path / "c.png")
    msg = _one_line_error(read_mask, tmp_path / "c.png")
    assert "c.png" in msg and "classes.csv" in msg and "name,r,g,b" in msg


def test_16_bit_index_mask(tmp_path):
    Image.fromarray(INDEX.astype(np.uint16)).save(tmp_path / "i16.png")
    assert Image.open(tmp_path / "i16.png").mode.startswith("I")
    out = read_mask(tmp_path / "i16.png")
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, INDEX)


def test_32_bit_index_mask(tmp_path):
    Image.fromarray(INDEX.astype(np.int32)).save(tmp_path / "i32.tif")
    assert Image.open(tmp_path / "i32.tif").mode == "I"
    np.testing.assert_array_equal(read_mask(tmp_path / "i32.tif"), INDEX)


def test_16_bit_value_above_255_is_refused(tmp_path):
    arr = INDEX.astype(np.uint16)
    arr[0, 0] = 300
    Image.fromarray(arr).save(tmp_path / "big.png")
    msg = _one_line_error(read_mask, tmp_path / "big.png")
    assert "big.png" in msg and "300" in msg


def test_unreadable_and_missing_files(tmp_path):
    (tmp_path / "text.png").write_text("not an image")
    assert "text.png" in _one_line_error(read_mask, tmp_path / "text.png")
    assert "missing.png" in _one_line_error(read_mask, tmp_path / "missing.png")


def test_float_image_is_not_a_mask(tmp_path):
    Image.fromarray(np.zeros((2, 3), np.float32)).save(tmp_path / "f.tif")
    assert "'F'" in _one_line_error(read_mask, tmp_path / "f.tif")


# --- classes.txt / classes.csv ---------------------------------------------------------------

def test_classes_txt(tmp_path):
    (tmp_path / "classes.txt").write_text("background\n\n  road \ncar\n\n")
    assert read_class_names(tmp_path) == (["background", "road", "car"], None)


def test_classes_csv(tmp_path):
    # BOM, upper-case header, spaces and a blank line: all as a spreadsheet might save it.
    text = "\ufeffName, R, G, B\nbackground,0,0,0\n\nroad, 128, 64, 128\nsidewalk,244,35,232\n"
    (tmp_path / "classes.csv").write_text(text, encoding="utf-8")
    names, colors = read_class_names(tmp_path)
    assert names == ["background", "road", "sidewalk"]
    assert colors == {(0, 0, 0): 0, (128, 64, 128): 1, (244, 35, 232): 2}


def test_classes_csv_drives_read_mask(tmp_path):
    rows = ["name,r,g,b"] + [f"c{i},{r},{g},{b}" for (r, g, b), i in sorted(TABLE.items(), key=lambda kv: kv[1])]
    (tmp_path / "classes.csv").write_text("\n".join(rows) + "\n")
    _colour_image(INDEX, TABLE).save(tmp_path / "c.png")
    _, colors = read_class_names(tmp_path)
    np.testing.assert_array_equal(read_mask(tmp_path / "c.png", colors), INDEX)


def test_no_class_files(tmp_path):
    assert read_class_names(tmp_path) == (None, None)


def test_both_class_files_refused(tmp_path):
    (tmp_path / "classes.txt").write_text("a\nb\n")
    (tmp_path / "classes.csv").write_text("name,r,g,b\na,0,0,0\n")
    msg = _one_line_error(read_class_names, tmp_path)
    assert "classes.txt" in msg and "classes.csv" in msg


@pytest.mark.parametrize("text,needle", [
    ("label,r,g,b\na,0,0,0\n", "line 1"),
    ("name,r,g\na,0,0\n", "line 1"),
    ("name,r,g,b\na,0,0,0\nb,1,1\n", "line 3"),
    ("name,r,g,b\na,0,0,0\nb,1,1,1,1\n", "line 3"),
    ("name,r,g,b\na,0,0,0\n\nb,256,0,0\n", "line 4"),
    ("name,r,g,b\na,0,0,0\nb,x,0,0\n", "line 3"),
    ("name,r,g,b\na,0,0,0\nb,-1,0,0\n", "line 3"),
    ("name,r,g,b\na,0,0,0\n,1,1,1\n", "line 3"),
    ("name,r,g,b\na,0,0,0\nb,0,0,0\n", "line 3"),
    ("name,r,g,b\na,0,0,0\na,1,1,1\n", "line 3"),
    ("name,r,g,b\n", "no classes"),
])
def test_malformed_classes_csv(tmp_path, text, needle):
    (tmp_path / "classes.csv").write_text(text)
    msg = _one_line_error(read_class_names, tmp_path)
    assert needle in msg and "classes.csv" in msg


@pytest.mark.parametrize("text,needle", [("a\nb\n\na\n", "line 4"), ("\n \n", "no classes")])
def test_malformed_classes_txt(tmp_path, text, needle):
    (tmp_path / "classes.txt").write_text(text)
    assert needle in _one_line_error(read_class_names, tmp_path)


# --- palettes ---------------------------------------------------------------------------------

def _voc_reference(n: int) -> list:
    """The Pascal VOC devkit's colormap, written as the devkit's loop."""
    out = []
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        out.append((r, g, b))
    return out


def _triples(pal: list) -> list:
    return [tuple(pal[i:i + 3]) for i in range(0, len(pal), 3)]


def test_voc_colormap_matches_devkit():
    assert [tuple(c) for c in voc_colormap(256).tolist()] == _voc_reference(256)
    # Well-known VOC colours: background, aeroplane, bicycle, bird, person, the 255 'void' border.
    known = {0: (0, 0, 0), 1: (128, 0, 0), 2: (0, 128, 0), 3: (128, 128, 0), 15: (192, 128, 128),
             255: (224, 224, 192)}
    cmap = voc_colormap(256)
    for i, rgb in known.items():
        assert tuple(cmap[i].tolist()) == rgb


@pytest.mark.parametrize("num_classes", [1, 2, 21, 256])
def test_default_palette_is_full_and_distinct(num_classes):
    pal = palette(num_classes)
    assert len(pal) == 768 and all(isinstance(v, int) and 0 <= v <= 255 for v in pal)
    assert len(set(_triples(pal))) == 256
    assert _triples(pal) == _voc_reference(256)


@pytest.mark.parametrize("colors", [
    {(128, 0, 0): 0, (0, 0, 0): 1, (5, 6, 7): 2},
    [(128, 0, 0), (0, 0, 0), (5, 6, 7)],
])
def test_palette_puts_given_colours_first(colors):
    pal = _triples(palette(4, colors))
    assert pal[:3] == [(128, 0, 0), (0, 0, 0), (5, 6, 7)]
    assert len(set(pal)) == 256  # the VOC fill skips the colours already taken
    # VOC 0 (0,0,0) and 1 (128,0,0) are taken, so the fill starts at VOC 2 and 3.
    assert pal[3:5] == [(0, 128, 0), (128, 128, 0)]


@pytest.mark.parametrize("args", [(0,), (257,), (True,), ("3",), (2, {(1, 2, 3): 2}), (2, [(1, 2, 3), (1, 2, 3)]),
                                  (2, {(1, 2, 3): 0, (4, 5, 6): 0}), (2, [(1, 2, 300)]), (2, [(1, 2)])])
def test_palette_errors(args):
    _one_line_error(palette, *args)


# --- writing ----------------------------------------------------------------------------------

def test_write_read_round_trip_keeps_indices_and_palette(tmp_path):
    rng = np.random.default_rng(0)
    mask = rng.integers(0, 21, size=(17, 23)).astype(np.int64)
    mask[0, 0] = 255  # an ignore index must survive too
    pal = palette(21)
    out = tmp_path / "new" / "m.png"
    write_mask_png(mask, out, pal)
    assert sorted(os.listdir(out.parent)) == ["m.png"]  # no temp file left behind
    with Image.open(out) as img:
        assert img.format == "PNG" and img.mode == "P"
        assert img.getpalette()[:768] == pal
        np.testing.assert_array_equal(np.asarray(img), mask)
    np.testing.assert_array_equal(read_mask(out), mask)


def test_write_pads_a_short_palette_and_overwrites(tmp_path):
    out = tmp_path / "m.png"
    write_mask_png(np.zeros((2, 2), np.uint8), out, palette(2))
    write_mask_png(np.array([[0, 1], [1, 1]], bool), out, [0, 0, 0, 255, 0, 0])
    with Image.open(out) as img:
        assert img.getpalette()[:6] == [0, 0, 0, 255, 0, 0]
        np.testing.assert_array_equal(np.asarray(img), [[0, 1], [1, 1]])


@pytest.mark.parametrize("mask,needle", [
    (np.array([[0, 256]]), "256"),
    (np.array([[0, -1]]), "-1"),
    (np.zeros((2, 2), np.float32), "integer"),
    (np.zeros((2, 2, 3), np.uint8), "(H, W)"),
])
def test_write_refuses_bad_masks(tmp_path, mask, needle):
    msg = _one_line_error(write_mask_png, mask, tmp_path / "m.png", palette(2))
    assert needle in msg and "m.png" in msg
    assert not os.listdir(tmp_path)


def test_write_refuses_bad_palette(tmp_path):
    _one_line_error(write_mask_png, np.zeros((2, 2), np.uint8), tmp_path / "m.png", [0, 0])
    _one_line_error(write_mask_png, np.zeros((2, 2), np.uint8), tmp_path / "m.png", [0, 0, 256])


def test_failed_write_leaves_no_temp_file_and_keeps_the_old_mask(tmp_path, monkeypatch):
    out = tmp_path / "m.png"
    write_mask_png(np.ones((2, 2), np.uint8), out, palette(2))
    before = out.read_bytes()

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    msg = _one_line_error(write_mask_png, np.zeros((2, 2), np.uint8), out, palette(2))
    assert "m.png" in msg and "No space left" in msg
    assert sorted(os.listdir(tmp_path)) == ["m.png"] and out.read_bytes() == before
