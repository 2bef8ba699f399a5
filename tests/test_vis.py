"""Visualisation: palette colours, jet colour map, overlays, CAM panels and overlay files."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from sipe import vis

NAMES = ["background", "aeroplane", "bicycle", "bird"]


def test_colorize_voc_palette():
    label = np.array([[0, 1, 2], [15, 255, 3]], dtype=np.uint8)
    out = vis.colorize(label)
    assert out.shape == (2, 3, 3) and out.dtype == np.uint8
    assert out[0, 0].tolist() == [0, 0, 0]
    assert out[0, 1].tolist() == [128, 0, 0]
    assert out[0, 2].tolist() == [0, 128, 0]
    assert out[1, 0].tolist() == [192, 128, 128]  # person
    assert out[1, 1].tolist() == [255, 255, 255]  # ignore
    assert out[1, 2].tolist() == [128, 128, 0]
    np.testing.assert_array_equal(vis.colorize(label.astype(np.int64)), out)
    with pytest.raises(ValueError, match=r"\[0, 255\]"):
        vis.colorize(np.array([[256]]))
    with pytest.raises(ValueError, match="2-D"):
        vis.colorize(np.zeros((2, 2, 1), np.uint8))


def test_jet_colour_map():
    c = vis.jet(np.array([0.0, 0.25, 0.5, 0.75, 1.0, 2.0, -1.0, np.nan]))
    assert c.dtype == np.uint8 and c.shape == (8, 3)
    assert c[0].tolist() == [0, 0, 128]  # dark blue
    assert c[1].tolist() == [0, 128, 255]
    assert c[2].tolist() == [128, 255, 128]
    assert c[3].tolist() == [255, 128, 0]
    assert c[4].tolist() == [128, 0, 0]  # dark red
    assert c[5].tolist() == c[4].tolist() and c[6].tolist() == c[0].tolist() and c[7].tolist() == c[0].tolist()


def _image(h=20, w=30):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_heatmap_overlay_blends():
    img = _image()
    heat = np.tile(np.linspace(0, 1, 30, dtype=np.float32), (20, 1))
    out = vis.heatmap_overlay(img, heat, alpha=0.5)
    assert out.shape == img.shape and out.dtype == np.uint8
    expected = np.round(0.5 * img.astype(np.float32) + 0.5 * vis.jet(heat).astype(np.float32))
    assert np.abs(out.astype(np.int32) - expected).max() <= 1
    np.testing.assert_array_equal(vis.heatmap_overlay(img, heat, alpha=0.0), img)
    np.testing.assert_array_equal(vis.heatmap_overlay(img, heat, alpha=1.0), vis.jet(heat))
    with pytest.raises(ValueError, match="differs from the image"):
        vis.heatmap_overlay(img, heat[:10])
    with pytest.raises(ValueError, match="uint8"):
        vis.heatmap_overlay(img.astype(np.float32), heat)


def test_label_overlay():
    img = np.full((4, 5, 3), 100, np.uint8)
    label = np.zeros((4, 5), np.uint8)
    label[1:3, 1:4] = 1
    out = vis.label_overlay(img, label, alpha=0.5)
    assert out.shape == (4, 5, 3) and out.dtype == np.uint8
    assert out[0, 0].tolist() == [50, 50, 50]  # background is black in the palette
    assert out[1, 1].tolist() == [114, 50, 50]  # (100 + 128) / 2 = 114 on red


def test_cam_grid_panel():
    img = _image(24, 32)
    keys = np.array([0, 1, 3])
    maps = np.random.default_rng(1).random((3, 24, 32)).astype(np.float32)
    grid = vis.cam_grid(img, maps, keys, NAMES, gap=4)
    assert grid.dtype == np.uint8 and grid.ndim == 3 and grid.shape[2] == 3
    # image + two foreground classes (the background channel is left out by default)
    assert grid.shape[1] == 3 * 32 + 2 * 4
    caption = grid.shape[0] - 24
    assert caption > 0
    np.testing.assert_array_equal(grid[caption:, :32], img)
    np.testing.assert_array_equal(grid[caption:, 36:68], vis.heatmap_overlay(img, maps[1]))
    np.testing.assert_array_equal(grid[caption:, 72:104], vis.heatmap_overlay(img, maps[2]))
    assert (grid[:caption, 36:68] < 128).any()  # a class name was written in the caption strip
    assert (grid[caption:, 32:36] == 255).all()  # white gap between panels
    with_bg = vis.cam_grid(img, maps, keys, NAMES, include_background=True, gap=4)
    assert with_bg.shape[1] == 4 * 32 + 3 * 4
    with pytest.raises(ValueError, match="M = len"):
        vis.cam_grid(img, maps[:2], keys, NAMES)


def test_save_overlays_writes_one_png_per_class(tmp_path):
    img = _image(16, 12)
    keys = np.array([0, 2, 3])
    maps = np.random.default_rng(2).random((3, 16, 12)).astype(np.float32)
    names = ["background", "aeroplane", "potted plant", "bird"]
    paths = vis.save_overlays(tmp_path / "vis", "img_001", img, maps, keys, names)
    assert [p.name for p in paths] == ["img_001_2_potted_plant.png", "img_001_3_bird.png"]
    assert sorted(p.name for p in (tmp_path / "vis").iterdir()) == [p.name for p in paths]
    got = np.asarray(Image.open(paths[1]))
    np.testing.assert_array_equal(got, vis.heatmap_overlay(img, maps[2]))
