"""Dense CRF, pair affinities / labels and the sparse random walk of ``sipe.refine``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import iou
from sipe.io import save_npz, voc_palette
from sipe.refine.affinity import affinity_labels, edge_to_affinity, pair_displacement, pair_paths, path_pixels
from sipe.refine.crf import (
    confident_regions,
    crf_label_inference,
    crf_refine_cams,
    make_confident_regions,
    make_crf_labels,
)
from sipe.refine.random_walk import Walk, dense_random_walk, random_walk

pytestmark = pytest.mark.usefixtures("one_thread")


def _disc_scene(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A red disc on a grey-green background and a blurry, shifted IS-CAM of it."""
    rng = np.random.default_rng(seed)
    h, w = 64, 80
    yy, xx = np.mgrid[:h, :w]
    obj = (yy - 30) ** 2 + (xx - 40) ** 2 < 15**2
    image = np.full((h, w, 3), (90, 110, 100), np.float64)
    image[obj] = (200, 40, 40)
    image = np.clip(image + rng.normal(0, 6, image.shape), 0, 255).astype(np.uint8)
    fg = np.clip(1.2 - np.sqrt((yy - 33) ** 2 + (xx - 44) ** 2) / 22, 0, 1)
    maps = np.stack([np.full((h, w), 0.5), fg]).astype(np.float32)
    return image, obj, np.array([0, 7]), maps


# ---------------------------------------------------------------- dense CRF


def test_crf_recovers_object_edge() -> None:
    image, obj, keys, maps = _disc_scene()
    before = iou(maps.argmax(0) == 1, obj)
    out = crf_refine_cams(image, keys, maps)
    assert out.dtype == np.uint8 and out.shape == obj.shape
    assert set(np.unique(out)) == {0, 7}
    assert before < 0.75
    assert iou(out == 7, obj) > 0.97


def test_crf_label_inference_checks_and_single_label() -> None:
    image = np.zeros((5, 6, 3), np.uint8)
    assert np.array_equal(crf_label_inference(image, np.zeros((5, 6), int), 1), np.zeros((5, 6)))
    with pytest.raises(ValueError, match="does not match the image size"):
        crf_label_inference(image, np.zeros((6, 5), int), 2)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\)"):
        crf_label_inference(image, np.full((5, 6), 2), 2)
    with pytest.raises(ValueError, match="differs from the image size"):
        crf_refine_cams(image, np.array([0, 3]), np.zeros((2, 4, 4), np.float32))


def _band_scene() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Three colour bands; the class score is high, middling and low in them."""
    image = np.zeros((20, 60, 3), np.uint8)
    image[:, :20] = (220, 30, 30)
    image[:, 20:40] = (30, 220, 30)
    image[:, 40:] = (30, 30, 220)
    fg = np.zeros((20, 60), np.float32)
    fg[:, :20], fg[:, 20:40], fg[:, 40:] = 0.9, 0.4, 0.1
    return image, np.array([0, 5]), np.stack([np.full_like(fg, 0.6), fg])


def test_confident_regions_combines_two_passes() -> None:
    image, keys, maps = _band_scene()
    out = confident_regions(image, keys, maps, bg_scale=0.5)
    # Foreground pass: class only in band 1; background pass (bg x 0.5): class in bands 1-2.
    assert (out[:, :20] == 5).all()
    assert (out[:, 20:40] == 255).all()
    assert (out[:, 40:] == 0).all()
    # With bg_scale 1 both passes agree: no ignore pixels.
    assert 255 not in confident_regions(image, keys, maps, bg_scale=1.0)


def test_make_confident_regions_writes_palette_pngs_and_resumes(tmp_path) -> None:
    image, keys, maps = _band_scene()
    d_image, _, d_keys, d_maps = _disc_scene()
    dataset = [{"image": image, "name": "bands"}, {"image": d_image, "name": "disc"}]
    save_npz(tmp_path / "cams" / "bands.npz", keys=keys.astype(np.int64), maps=maps.astype(np.float16))
    np.save(tmp_path / "cams" / "disc.npy", {"keys": d_keys, "IS_CAM": d_maps}, allow_pickle=True)
    stats = make_confident_regions(dataset, tmp_path / "cams", tmp_path / "ir", num_workers=0)
    assert (stats.written, stats.skipped) == (2, 0)
    png = Image.open(tmp_path / "ir" / "bands.png")
    assert png.mode == "P"
    assert np.array_equal(np.asarray(png.getpalette(), np.uint8).reshape(-1, 3)[:21], voc_palette()[:21])
    assert np.array_equal(np.asarray(png), confident_regions(image, keys, maps))
    again = make_confident_regions(dataset, tmp_path / "cams", tmp_path / "ir", num_workers=0)
    assert (again.written, again.skipped) == (0, 2)
    # Two worker processes give the same files as the in-process run.
    stats = make_crf_labels(dataset, tmp_path / "cams", tmp_path / "crf", num_workers=2)
    assert stats.written == 2
    assert np.array_equal(np.asarray(Image.open(tmp_path / "crf" / "disc.png")),
                          crf_refine_cams(d_image, d_keys, d_maps))


def test_missing_cam_file_names_the_fix(tmp_path) -> None:
    dataset = [{"image": np.zeros((4, 4, 3), np.uint8), "name": "lost"}]
    with pytest.raises(FileNotFoundError, match=r"lost.*sipe cam"):
        make_crf_labels(dataset, tmp_path / "cams", tmp_path / "out", num_workers=0)


# ---------------------------------------------------------------- pairs and affinity labels


def test_path_pixels_by_hand() -> None:
    assert path_pixels(0, 3).tolist() == [[0, 3], [0, 2], [0, 1], [0, 0]]
    # A diagonal step passes through both 4-neighbours (distance to the line 1/sqrt(2) < 1).
    assert sorted(path_pixels(1, -1).tolist()) == [[0, -1], [0, 0], [1, -1], [1, 0]]
    assert path_pixels(1, -1)[0].tolist() == [1, -1]
    assert sorted(path_pixels(2, 1).tolist()) == [[0, 0], [0, 1], [1, 0], [1, 1], [2, 0], [2, 1]]
    # (dy, dx) = (2, 3): |2x - 3y| / sqrt(13) < 1 keeps 8 of the 12 box pixels.
    assert sorted(path_pixels(2, 3).tolist()) == [[0, 0], [0, 1], [1, 0], [1, 1], [1, 2], [1, 3], [2, 2], [2, 3]]


@pytest.mark.parametrize("radius", [2, 5, 10])
def test_pair_offsets_are_the_half_disc(radius: int) -> None:
    pp = pair_paths(radius)
    expect = {(dy, dx) for dy in range(radius) for dx in range(-radius + 1, radius)
              if dy * dy + dx * dx < radius * radius and (dy > 0 or dx > 0)}
    assert {tuple(o) for o in pp.offsets.tolist()} == expect
    assert len(pp.offsets) == len(expect)
    assert [len(p) for p in pp.paths] == sorted(len(p) for p in pp.paths)
    for path, offset in zip(pp.paths, pp.offsets, strict=True):
        assert path[0].tolist() == offset.tolist() and path[-1].tolist() == [0, 0]


def test_pair_counts_official() -> None:
    assert len(pair_paths(5).offsets) == 34
    assert len(pair_paths(10).offsets) == 152


def test_affinity_labels_hand_computed() -> None:
    # radius 2: offsets (0,1), (1,0), (1,-1), (1,1); sources = rows 0-1, columns 1-2.
    assert pair_paths(2).offsets.tolist() == [[0, 1], [1, 0], [1, -1], [1, 1]]
    label = np.array([[0, 0, 1, 1],
                      [0, 255, 1, 45],   # 45: any class id other than 255 is valid (COCO, custom)
                      [0, 0, 0, 45]], np.uint8)
    bg_pos, fg_pos, neg = affinity_labels(label, radius=2)
    z = [[0, 0], [0, 0]]
    assert bg_pos.tolist() == [z, z, [[1, 0], [0, 0]], z]
    assert fg_pos.tolist() == [[[0, 1], [0, 0]], [[0, 1], [0, 0]], z, z]
    assert neg.tolist() == [[[1, 0], [0, 1]], [[0, 0], [0, 1]], [[0, 0], [0, 1]], [[1, 1], [0, 1]]]
    assert bg_pos.dtype == torch.float32


def test_edge_to_affinity_matches_brute_force() -> None:
    g = torch.Generator().manual_seed(3)
    edge = torch.rand(2, 8, 11, generator=g)
    radius, rf = 3, 2
    aff = edge_to_affinity(edge, radius)
    pp = pair_paths(radius)
    assert aff.shape == (2, len(pp.offsets), 8 - rf, 11 - 2 * rf)
    for d, path in enumerate(pp.paths):
        for y in range(8 - rf):
            for x in range(11 - 2 * rf):
                vals = edge[:, y + path[:, 0], x + rf + path[:, 1]]
                assert torch.allclose(aff[:, d, y, x], 1 - vals.max(dim=1).values)


def test_edge_to_affinity_gradient() -> None:
    edge = torch.rand(1, 7, 9, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda e: edge_to_affinity(e, 3), (edge,))


def test_pair_displacement_targets() -> None:
    # A displacement field pointing every pixel at one centre: disp[src] - disp[dst] = offset.
    h, w = 9, 12
    yy, xx = torch.meshgrid(torch.arange(float(h)), torch.arange(float(w)), indexing="ij")
    disp = torch.stack([4.0 - yy, 6.0 - xx])[None]
    pd = pair_displacement(disp, 3)
    off = torch.as_tensor(pair_paths(3).offsets, dtype=torch.float32)
    assert pd.shape == (1, 2, len(off), h - 2, w - 4)
    assert torch.allclose(pd, off.t()[None, :, :, None, None].expand_as(pd))


# ---------------------------------------------------------------- random walk


@pytest.mark.parametrize("backend", ["scipy", "torch"])
@pytest.mark.parametrize("exp_times", [2, 8])
def test_sparse_random_walk_equals_dense(backend: str, exp_times: int) -> None:
    g = torch.Generator().manual_seed(exp_times)
    cams = torch.rand(3, 20, 20, generator=g)
    edge = torch.rand(1, 20, 20, generator=g) ** 3
    dense = dense_random_walk(cams, edge, Walk(exp_times=exp_times))  # float64, the official formula
    exact = random_walk(cams, edge, Walk(exp_times=exp_times), backend=backend, dtype=torch.float64)
    assert exact.shape == (3, 20, 20)
    assert (exact - dense).abs().max() < 1e-5
    # float32 (default) drifts like the official float32 matrix powers do.
    fast = random_walk(cams, edge, Walk(exp_times=exp_times), backend=backend)
    official32 = dense_random_walk(cams, edge, Walk(exp_times=exp_times), dtype=torch.float32)
    assert (fast - dense).abs().max() < 1e-4
    assert (official32 - dense).abs().max() < 1e-4


def test_random_walk_respects_boundaries() -> None:
    # A closed vertical boundary: mass on the left never reaches the right.
    cams = torch.zeros(2, 12, 16)
    cams[0, :, :4] = 1.0
    cams[1, :, 12:] = 1.0
    edge = torch.zeros(1, 12, 16)
    edge[0, :, 8] = 1.0
    out = random_walk(cams, edge)
    assert out[0, :, 9:].abs().max() < 1e-6
    assert out[1, :, :8].abs().max() < 1e-6
    assert out[0, :, :8].min() > 0.01  # spreads within its side
    assert torch.all(out[:, :, 8] == 0)  # maps are multiplied by 1 - edge


def test_random_walk_input_checks() -> None:
    with pytest.raises(ValueError, match="edge must be"):
        random_walk(torch.rand(2, 5, 5), torch.rand(1, 5, 6))
    with pytest.raises(ValueError, match="unknown random-walk backend"):
        random_walk(torch.rand(2, 5, 5), torch.rand(1, 5, 5), backend="dense")
