"""Kaggle run-length encoding of binary masks, vectorized with numpy.

A mask is written as ``"start length start length ..."``: 1-based start pixels and run lengths,
pixels numbered column-major (top to bottom, then left to right; ``order="F"``, the usual Kaggle
convention) or row-major (``order="C"``). An empty mask is ``""``; pandas reads an empty cell as
float NaN, which decodes to an empty mask too.
"""
from __future__ import annotations

import math
import re
from typing import Any, Tuple

import numpy as np

from ...errors import ConfigError
from ...registry import did_you_mean

__all__ = ["ORDERS", "check_order", "rle_encode", "rle_decode"]

ORDERS = ("F", "C")
# ASCII digits only: str.isdigit() and int() also take '²', '٣' or '1_000', which are not RLE.
_INT_TOKEN = re.compile(r"[+-]?[0-9]+", re.ASCII)
_ALL_DIGITS = re.compile(r"[0-9\s]*", re.ASCII)


def check_order(order: Any) -> str:
    """Normalise a pixel order: ``"F"``/``"f"`` -> ``"F"``, ``"C"``/``"c"`` -> ``"C"``; else ConfigError."""
    if isinstance(order, str) and order.strip().upper() in ORDERS:
        return order.strip().upper()
    hint = did_you_mean(str(order).upper(), ORDERS)
    raise ConfigError(f"--rle-order: {order!r} is not a pixel order{hint}; choose 'F' (column-major, "
                      "top to bottom then left to right, the Kaggle default) or 'C' (row-major)")


def _check_shape(shape: Any) -> Tuple[int, int]:
    try:
        h, w = (int(s) for s in shape)
    except (TypeError, ValueError):
        raise ConfigError(f"RLE image shape {shape!r} is not (height, width); pass two positive integers") from None
    if h < 1 or w < 1:
        raise ConfigError(f"RLE image shape {shape!r} has a side < 1; pass (height, width) of the image")
    return h, w


def rle_encode(mask: np.ndarray, order: str = "F") -> str:
    """Encode an (H, W) mask (bool, or ints 0/1) as Kaggle RLE; an empty mask gives ``""``.

    Runs are found where consecutive pixels of the zero-padded flat mask differ, so the cost is a
    few passes over the H*W pixels, however many runs there are.
    """
    order = check_order(order)
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ConfigError(f"rle_encode: mask has shape {mask.shape}; pass one (H, W) mask per class")
    if mask.dtype != np.bool_:
        bad = (mask != 0) & (mask != 1)
        if bad.any():
            raise ConfigError(f"rle_encode: mask holds {mask[bad].flat[0]!r}, not only 0 and 1; "
                              "encode (mask == class_index) or a thresholded mask")
    pixels = np.zeros(mask.size + 2, dtype=np.int8)
    pixels[1:-1] = mask.ravel(order=order) != 0
    # Index i+1 of the padded array is 1-based pixel i+1: a change between padded i and i+1
    # starts (or ends) a run at pixel i+1.
    runs = np.flatnonzero(pixels[1:] != pixels[:-1]) + 1
    runs[1::2] -= runs[::2]
    return " ".join(map(str, runs.tolist()))


def _tokens(rle: str) -> np.ndarray:
    """The integers of an RLE string as int64; one-line ConfigError naming the first bad token."""
    tokens = rle.split()
    if not _ALL_DIGITS.fullmatch(rle):  # slow path only when something is not a plain digit
        for i, tok in enumerate(tokens):
            if not _INT_TOKEN.fullmatch(tok):
                raise ConfigError(f"RLE value {i + 1} is {tok[:20]!r}, not an integer; an RLE cell holds "
                                  "'start length' integer pairs separated by spaces")
    if len(tokens) % 2:
        raise ConfigError(f"RLE has {len(tokens)} values, an odd number; it must be 'start length' pairs "
                          "(is the cell cut short?)")
    try:
        return np.array(tokens, dtype=np.int64)
    except OverflowError:
        raise ConfigError("RLE holds a number too large for any image; check the cell holds "
                          "'start length' pairs") from None


def rle_decode(rle: Any, shape: Tuple[int, int], order: str = "F") -> np.ndarray:
    """Decode Kaggle RLE into an (H, W) uint8 mask of 0/1.

    ``rle`` may be None, ``""``, whitespace or float NaN (pandas' empty cell): an all-zero mask.
    Malformed RLE (odd count, non-integer, start < 1, length < 1, a run past the H*W image,
    unsorted or overlapping runs) raises a one-line ConfigError.
    """
    order = check_order(order)
    h, w = _check_shape(shape)
    n = h * w
    if rle is None or (isinstance(rle, float) and math.isnan(rle)):
        return np.zeros((h, w), dtype=np.uint8)
    if not isinstance(rle, str):
        raise ConfigError(f"RLE {rle!r} is a {type(rle).__name__}, not a string; an RLE cell holds "
                          "'start length' pairs or is empty")
    values = _tokens(rle)
    starts, lengths = values[0::2] - 1, values[1::2]  # starts now 0-based
    if starts.size == 0:
        return np.zeros((h, w), dtype=np.uint8)
    ends = _check_runs(starts, lengths, h, w, order)
    # +1 where a run starts, -1 one past where it ends; the running sum is 1 inside runs.
    # Starts are strictly increasing and so are ends (checked), so plain fancy-index
    # assignment never drops a repeated index.
    step = np.zeros(n + 1, dtype=np.int8)
    step[starts] = 1
    step[ends] -= 1
    flat = np.cumsum(step[:n], dtype=np.int8).astype(np.uint8)
    return flat.reshape((h, w), order=order)


def _check_runs(starts: np.ndarray, lengths: np.ndarray, h: int, w: int, order: str) -> np.ndarray:
    """The exclusive run ends for 0-based ``starts``; one-line ConfigError for the first invalid run."""
    n = h * w
    bad = np.flatnonzero(starts < 0)
    if bad.size:
        raise ConfigError(f"RLE run {bad[0] + 1} starts at pixel {starts[bad[0]] + 1}; starts are 1-based "
                          "(the first pixel is 1), so check the RLE was not written 0-based")
    bad = np.flatnonzero(lengths < 1)
    if bad.size:
        raise ConfigError(f"RLE run {bad[0] + 1} has length {lengths[bad[0]]}; lengths must be >= 1")
    # Compared as lengths > n - starts so that huge values cannot wrap around int64.
    bad = np.flatnonzero(lengths > n - starts)
    if bad.size:
        i = bad[0]
        raise ConfigError(f"RLE run {i + 1} ({starts[i] + 1} {lengths[i]}) ends at pixel {int(starts[i]) + int(lengths[i])}, "
                          f"past the end of the {h}x{w} image ({n} pixels); check the image size (height, width)")
    ends = starts + lengths
    bad = np.flatnonzero(starts[1:] < ends[:-1])
    if bad.size:
        i = bad[0]
        what = "starts before" if starts[i + 1] < starts[i] else "overlaps"
        raise ConfigError(f"RLE run {i + 2} ({starts[i + 1] + 1} {lengths[i + 1]}) {what} run {i + 1} "
                          f"({starts[i] + 1} {lengths[i]}); runs must be sorted by start and must not "
                          f"overlap: check --rle-order (now {order!r}) and that each cell holds one mask")
    return ends
