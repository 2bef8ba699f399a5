"""IS-CAM generation with images of one size batched through the backbone (``CamConfig.batch_images``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sipe.cams.generate import CamConfig, _SizeGroups, generate_cams, output_path
from sipe.cams.multiscale import (
    batch_chunk,
    fused_maps,
    fused_maps_batch,
    prepare_for_inference,
    rescale_image,
    scale_batch,
    to_tensor,
)
from sipe.core.sipe_net import SIPENet
from sipe.data.cam_format import read_cam_file
from sipe.models import build_sipe
from test_cam import FakeDataset

# Batched convolutions may round differently from one image at a time (oneDNN picks kernels by batch
# size): measured up to 3e-7 on these maps (ResNet-18, fp32), 0 for images that went alone.
ATOL = 1e-5
SIZES = [(48, 64), (64, 48), (48, 64), (48, 64), (64, 48), (40, 56), (48, 64), (64, 48), (52, 44)]
RARE = {"img5", "img8"}  # the only images of their size


class MixedSizes(FakeDataset):
    """tests/test_cam.py's fake dataset with images of several sizes, some of them alone in theirs."""

    def __init__(self, sizes=SIZES):
        super().__init__(n=len(sizes))
        rng = np.random.default_rng(0)
        self.images = [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for h, w in sizes]
        self.labels[::2, 2] = 1  # some images with two classes


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_sipe("resnet18", num_classes=4).eval()


def _maps(folder, name):
    obj = np.load(folder / "is_cam" / f"{name}.npy", allow_pickle=True).item()
    return obj["keys"], obj["IS_CAM"]


def test_batched_files_equal_one_at_a_time(model, tmp_path, monkeypatch):
    ds = MixedSizes()
    outs, seen = {}, {}
    infer_batch = SIPENet.infer_batch

    def spy(self, x, labels, *args, **kwargs):  # which (H, W) went through the backbone, how many at once
        seen[batch].append((tuple(x.shape[2:]), labels.shape[0]))
        return infer_batch(self, x, labels, *args, **kwargs)

    monkeypatch.setattr(SIPENet, "infer_batch", spy)
    for batch in (1, 5):
        seen[batch] = []
        cfg = CamConfig(scales=(1.0, 0.5, 1.5), num_workers=0, format="npy", save_cam=True, batch_images=batch)
        summary = generate_cams(model, ds, tmp_path / str(batch), cfg)
        assert summary["written"] == len(ds) and summary["existing"] == 0
        outs[batch] = tmp_path / str(batch)
    assert {n for _, n in seen[1]} == {1} and len(seen[1]) == 3 * len(ds)
    # 5 per batch at scale 1.0 (4 and 3 images of the two common sizes), 2 at 1.5; the rare sizes alone.
    assert ((48, 64), 4) in seen[5] and ((64, 48), 3) in seen[5] and ((72, 96), 2) in seen[5]
    assert [n for size, n in seen[5] if size in ((40, 56), (52, 44))] == [1, 1]
    for name in ds.names:
        (k1, m1), (k3, m3) = _maps(outs[1], name), _maps(outs[5], name)
        assert np.array_equal(k1, k3) and m1.shape == m3.shape and m1.dtype == m3.dtype == np.float32
        np.testing.assert_allclose(m3, m1, atol=ATOL, rtol=0)
        c1, c3 = (read_cam_file(outs[b] / "cam" / f"{name}.npz") for b in (1, 5))
        np.testing.assert_allclose(c3.maps.astype(np.float32), c1.maps.astype(np.float32), atol=1e-3, rtol=0)
        if name in RARE:  # went alone through the same path: the very same bytes
            one, batched = ((outs[b] / "is_cam" / f"{name}.npy").read_bytes() for b in (1, 5))
            assert one == batched


@pytest.mark.parametrize("flip", [True, False])
def test_batched_maps_match_the_single_image_function(model, flip):
    """fused_maps_batch on four same-size images equals each image's scale_batch + infer path."""
    ds = MixedSizes()
    prepared = prepare_for_inference(model, channels_last=False)
    idx = [0, 2, 3, 6]  # all 48x64
    scales = (1.0, 0.5)
    images = [ds.images[i] for i in idx]
    inputs = [[to_tensor(rescale_image(im, s)) for s in scales] for im in images]
    got = fused_maps_batch(prepared, images, [ds.labels[i] for i in idx], inputs, scales, flip, batch_images=4)
    for (keys, maps, cam), im, i in zip(got, images, idx, strict=True):
        ref_keys, ref, _ = fused_maps(prepared, im, ds.labels[i], [scale_batch(im, s, flip) for s in scales], flip)
        assert cam is None and np.array_equal(keys, ref_keys) and maps.shape == (len(keys), 48, 64)
        torch.testing.assert_close(maps, ref, atol=ATOL, rtol=0)


def test_resume_and_shards_with_batching(model, tmp_path):
    ds = MixedSizes()
    cfg = CamConfig(scales=(1.0,), num_workers=1, batch_images=4)
    r0 = generate_cams(model, ds, tmp_path, cfg, rank=0, world_size=2)
    r1 = generate_cams(model, ds, tmp_path, cfg, rank=1, world_size=2)
    assert (r0["written"], r1["written"]) == (5, 4)
    assert sorted(p.stem for p in (tmp_path / "is_cam").iterdir()) == sorted(ds.names)
    for name in ("img1", "img4", "img5"):
        output_path(tmp_path, name).unlink()
    again = generate_cams(model, ds, tmp_path, cfg)
    assert again["written"] == 3 and again["existing"] == 6
    f = read_cam_file(output_path(tmp_path, "img4"))
    assert f.maps.shape == (len(f.keys), 64, 48)


def _item(name, h, w):
    return {"name": name, "image": np.zeros((h, w, 3), np.uint8)}


def test_size_groups_batch_equal_sizes_and_let_rare_ones_go_alone():
    groups = _SizeGroups(batch=2)  # at most 4 images wait

    def names(ready):
        return [[it["name"] for it in g] for g in ready]

    assert groups.add(_item("a", 10, 20)) == []
    assert groups.add(_item("rare", 7, 9)) == []
    assert names(groups.add(_item("b", 10, 20))) == [["a", "b"]]
    assert groups.add(_item("c", 20, 10)) == []
    assert names(groups.add(_item("d", 20, 10))) == [["c", "d"]]
    for name, side in (("x", 30), ("y", 40), ("z", 50)):
        assert groups.add(_item(name, side, side)) == []
    # A fifth image waiting: the smallest group, the oldest among equals, leaves as it is.
    assert names(groups.add(_item("w", 60, 60))) == [["rare"]]
    assert groups.pending == 4
    assert names(groups.drain()) == [["x"], ["y"], ["z"], ["w"]] and groups.pending == 0


def test_batch_chunk_and_bad_option():
    assert [batch_chunk(8, s) for s in (1.0, 0.5, 1.5, 2.0)] == [8, 32, 3, 2]
    assert batch_chunk(1, 2.0) == 1
    with pytest.raises(ValueError, match="batch_images must be an integer >= 1"):
        CamConfig(batch_images=0)
