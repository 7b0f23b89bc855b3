"""Kaggle run-length encoding: hand-worked examples, the classic Kaggle reference, round trips, errors."""
from __future__ import annotations

import zlib

import numpy as np
import pytest

from kernel.errors import ConfigError
from kernel.tasks.segment.rle import check_order, rle_decode, rle_encode


def kaggle_reference_encode(m: np.ndarray, order: str) -> str:
    """The RLE snippet from Kaggle's competition kernels, as written there."""
    pixels = m.flatten(order=order)
    pixels = np.concatenate([[0], pixels, [0]])
    runs = np.where(pixels[1:] != pixels[:-1])[0] + 1
    runs[1::2] -= runs[::2]
    return " ".join(str(x) for x in runs)


def loop_reference_decode(rle: str, shape: tuple, order: str) -> np.ndarray:
    """The plain loop decoder: one slice assignment per run."""
    s = rle.split()
    flat = np.zeros(shape[0] * shape[1], dtype=np.uint8)
    for start, length in zip(s[0::2], s[1::2]):
        flat[int(start) - 1:int(start) - 1 + int(length)] = 1
    return flat.reshape(shape, order=order)


def _mask(rows: list) -> np.ndarray:
    return np.array(rows, dtype=np.uint8)


# Worked by hand. 3x3 with (r0,c0), (r1,c0), (r0,c2): column-major numbering is col*3+row+1 ->
# pixels 1, 2, 7; row-major is row*3+col+1 -> pixels 1, 4, 3.
# 2x4 [[0,1,1,0],[0,1,0,1]]: column-major pixels are 0,0 | 1,1 | 1,0 | 0,1 -> ones at 3,4,5,8;
# row-major 0,1,1,0,0,1,0,1 -> ones at 2,3,6,8.
HAND = [
    (_mask([[1, 0, 1], [1, 0, 0], [0, 0, 0]]), "F", "1 2 7 1"),
    (_mask([[1, 0, 1], [1, 0, 0], [0, 0, 0]]), "C", "1 1 3 2"),
    (_mask([[0, 1, 1, 0], [0, 1, 0, 1]]), "F", "3 3 8 1"),
    (_mask([[0, 1, 1, 0], [0, 1, 0, 1]]), "C", "2 2 6 1 8 1"),
    (_mask([[1], [0], [1], [1]]), "F", "1 1 3 2"),
    (_mask([[1, 0, 1, 1]]), "C", "1 1 3 2"),
    (_mask([[1, 0, 1, 1]]), "F", "1 1 3 2"),
    (_mask([[1, 1], [1, 1]]), "F", "1 4"),
    (_mask([[0, 0], [0, 0]]), "C", ""),
    (_mask([[0, 0], [0, 1]]), "F", "4 1"),
]


@pytest.mark.parametrize("mask,order,expected", HAND)
def test_hand_worked_examples(mask, order, expected):
    assert rle_encode(mask, order) == expected
    assert rle_encode(mask.astype(bool), order.lower()) == expected
    decoded = rle_decode(expected, mask.shape, order)
    assert decoded.dtype == np.uint8 and decoded.shape == mask.shape
    np.testing.assert_array_equal(decoded, mask)


SHAPES = [(1, 1), (5, 7), (7, 5), (1, 13), (32, 48), (256, 1600)]
DENSITIES = [0.0, 0.02, 0.5, 0.97, 1.0]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("order", ["F", "C"])
@pytest.mark.parametrize("density", DENSITIES)
def test_round_trip_matches_kaggle_reference(shape, order, density):
    rng = np.random.default_rng(zlib.crc32(repr((shape, order, density)).encode()))  # str hash() varies per run
    mask = (rng.random(shape) < density).astype(np.uint8)
    rle = rle_encode(mask, order)
    assert rle == kaggle_reference_encode(mask, order)
    np.testing.assert_array_equal(rle_decode(rle, shape, order), mask)
    np.testing.assert_array_equal(rle_decode(rle, shape, order), loop_reference_decode(rle, shape, order))
    # Column-major numbering of a mask is row-major numbering of its transpose.
    assert rle == rle_encode(mask.T, "C" if order == "F" else "F")
    if density == 0.0:
        assert rle == ""
    if density == 1.0:
        assert rle == f"1 {shape[0] * shape[1]}"


def test_touching_runs_decode_as_one():
    np.testing.assert_array_equal(rle_decode("1 2 3 2", (2, 2)), np.ones((2, 2), np.uint8))
    assert rle_encode(rle_decode("1 2 3 2", (2, 2))) == "1 4"


@pytest.mark.parametrize("empty", [None, "", "   ", float("nan"), np.nan, np.float64("nan")])
def test_empty_cells_decode_to_zeros(empty):
    out = rle_decode(empty, (3, 4))
    assert out.shape == (3, 4) and out.dtype == np.uint8 and not out.any()


def test_extra_whitespace_is_tolerated():
    np.testing.assert_array_equal(rle_decode("  1 2\t 7  1\n", (3, 3)), rle_decode("1 2 7 1", (3, 3)))


@pytest.mark.parametrize("rle,shape,needle", [
    ("1 2 3", (3, 3), "odd number"),
    ("1 a", (3, 3), "not an integer"),
    ("1.5 2", (3, 3), "not an integer"),
    ("1 2,", (3, 3), "not an integer"),
    ("1 ²", (3, 3), "not an integer"),
    ("0 2", (3, 3), "1-based"),
    ("-1 2", (3, 3), "1-based"),
    ("1 0", (3, 3), "length 0"),
    ("1 -2", (3, 3), "length -2"),
    ("8 3", (3, 3), "3x3 image (9 pixels)"),
    ("10 1", (3, 3), "past the end"),
    ("9223372036854775807 9223372036854775807", (3, 3), "past the end"),
    ("1 99999999999999999999999", (3, 3), "too large"),
    ("5 2 1 1", (3, 3), "starts before"),
    ("1 3 2 2", (3, 3), "overlaps"),
    ("1 1 1 1", (3, 3), "overlaps"),
    (42, (3, 3), "not a string"),
    ("1 1", (0, 3), "side < 1"),
    ("1 1", (3,), "not (height, width)"),
])
def test_malformed_rle_raises_one_line(rle, shape, needle):
    with pytest.raises(ConfigError) as info:
        rle_decode(rle, shape)
    msg = str(info.value)
    assert needle in msg
    assert "\n" not in msg and ";" in msg  # one line: what is wrong; how to fix it


def test_overlap_error_points_at_rle_order():
    with pytest.raises(ConfigError, match="--rle-order"):
        rle_decode("4 2 1 2", (3, 3), "C")


@pytest.mark.parametrize("given,expected", [("F", "F"), ("f", "F"), ("C", "C"), (" c ", "C")])
def test_check_order_accepts_either_case(given, expected):
    assert check_order(given) == expected


@pytest.mark.parametrize("bad", ["X", "fortran", "", None, 1])
def test_check_order_names_the_choices(bad):
    with pytest.raises(ConfigError) as info:
        check_order(bad)
    msg = str(info.value)
    assert "'F'" in msg and "'C'" in msg and "\n" not in msg
    with pytest.raises(ConfigError):
        rle_decode("1 1", (2, 2), bad)


@pytest.mark.parametrize("mask,needle", [
    (np.zeros((2, 2, 1), np.uint8), "(H, W)"),
    (np.array([[0, 2], [1, 0]]), "not only 0 and 1"),
    (np.array([[0.0, 0.5]]), "not only 0 and 1"),
])
def test_encode_rejects_non_binary_masks(mask, needle):
    with pytest.raises(ConfigError) as info:
        rle_encode(mask)
    assert needle in str(info.value) and "\n" not in str(info.value)
