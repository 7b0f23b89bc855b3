"""predictions.png of a segmentation run: the colours laid over each image, the tiles scaled and placed in one
grid, and the PNG holding exactly those pixels, checked against values computed here by hand."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from kernel.tasks.segment.pictures import GAP, blend, fit_tile, overlay_grid, plot_overlays

COLORS = [[0, 0, 0], [255, 0, 0], [0, 128, 255]]


def test_blend_lays_each_class_colour_over_the_image_and_leaves_the_background_alone():
    base = np.random.default_rng(0).random((4, 5, 3))
    mask = np.array([[0, 1, 2, 255, 0]] * 4)
    out = blend(base, mask, COLORS, ignore_index=255)
    np.testing.assert_allclose(out[:, 0], base[:, 0])  # background: transparent
    np.testing.assert_allclose(out[:, 1], 0.45 * base[:, 1] + 0.55 * np.array([1.0, 0.0, 0.0]))
    np.testing.assert_allclose(out[:, 2], 0.45 * base[:, 2] + 0.55 * np.array([0.0, 128 / 255, 1.0]))
    np.testing.assert_allclose(out[:, 3], 0.65 * base[:, 3] + 0.35)  # void: a white haze


@pytest.mark.parametrize("size, box", [(64, 256), (1024, 256), (200, 256), (100, 256)])
def test_fit_tile_grows_by_whole_blocks_shrinks_by_area_and_keeps_the_rest(size, box):
    tile = np.random.default_rng(1).random((size, size, 3)).astype(np.float32)
    out = fit_tile(tile, box)
    if box / size >= 2:
        k = box // size
        assert out.shape == (size * k, size * k, 3)
        np.testing.assert_array_equal(out[::k, ::k], tile)  # each pixel a k x k block
        np.testing.assert_array_equal(out[k - 1::k, k - 1::k], tile)
    elif size > box:
        k = size // box
        assert out.shape == (box, box, 3)
        np.testing.assert_allclose(out, tile.reshape(box, k, box, k, 3).mean(axis=(1, 3)), atol=1e-6)
    else:
        np.testing.assert_array_equal(out, tile)


def test_overlay_grid_places_image_truth_and_prediction_in_rows_with_white_gaps():
    rng = np.random.default_rng(2)
    pics = rng.random((2, 8, 8, 1))  # gray: shown in all three channels
    truth, pred = rng.integers(0, 3, (2, 8, 8)), rng.integers(0, 3, (2, 8, 8))
    grid, tile = overlay_grid(pics, truth, pred, COLORS, box=32)
    gy, gx = GAP
    assert tile == (32, 32) and grid.shape == (2 * 32 + gy, 3 * 32 + 2 * gx, 3) and grid.dtype == np.float32
    for i in range(2):
        base = np.repeat(pics[i], 3, axis=-1)
        for j, want in enumerate((base, blend(base, truth[i], COLORS), blend(base, pred[i], COLORS))):
            y, x = i * (32 + gy), j * (32 + gx)
            np.testing.assert_allclose(grid[y:y + 32, x:x + 32], np.repeat(np.repeat(want, 4, 0), 4, 1), atol=1e-6)
    assert (grid[32:32 + gy] == 1).all() and (grid[:, 32:32 + gx] == 1).all()


def test_plot_overlays_writes_the_grid_pixels_labels_and_legend(tmp_path):
    rng = np.random.default_rng(3)
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    images = torch.from_numpy(rng.normal(size=(3, 3, 16, 16)).astype(np.float32))
    truth, pred = rng.integers(0, 3, (3, 16, 16)), rng.integers(0, 3, (3, 16, 16))
    path = plot_overlays(images, truth, pred, [0.1, 0.2, 0.3], ["background", "red", "blue"], COLORS,
                         tmp_path / "predictions.png", mean=mean, std=std, title="worst images first")
    with Image.open(path) as im:
        assert im.format == "PNG"
        arr = np.asarray(im.convert("RGB"))
    pics = (images * 0.25 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    grid, (side, _) = overlay_grid(pics, truth, pred, COLORS)
    want = (grid * 255 + 0.5).astype(np.uint8)
    top, left = 52, 10  # where plot_overlays puts the grid; the IoU lines are written in the gaps below rows
    gy, gx = GAP
    assert side == 256  # 16 px tiles grow 16 times
    for i in range(3):
        for j in range(3):
            y, x = i * (side + gy), j * (side + gx)
            np.testing.assert_array_equal(arr[top + y:top + y + side, left + x:left + x + side],
                                          want[y:y + side, x:x + side])
    right = arr[:, left + grid.shape[1]:]  # the legend's colour boxes
    for color in COLORS[1:]:
        assert (right == color).all(axis=-1).sum() > 50
    assert (arr[:top] < 100).any() and (arr[top + grid.shape[0]:] < 100).any()  # title and IoU lines drawn
    assert not list(tmp_path.glob(".*"))  # written atomically: no temp file left
