"""Dataset-level IS-CAM generation: files, formats, resume, sharding, bad images."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sipe.cams.generate import CamConfig, generate_cams, output_path
from sipe.cams.multiscale import multiscale_is_cam
from sipe.data.cam_format import read_cam_file
from sipe.data.image import ImageReadError
from sipe.models import build_sipe


class FakeDataset:
    class_names = ["background", "a", "b", "c"]

    def __init__(self, n=4, broken=()):
        rng = np.random.default_rng(0)
        self.images = [rng.integers(0, 255, (40 + 4 * i, 56, 3), dtype=np.uint8) for i in range(n)]
        self.names = [f"img{i}" for i in range(n)]
        self.labels = np.eye(3, dtype=np.float32)[np.arange(n) % 3]
        self.broken = set(broken)

    def __len__(self):
        return len(self.names)

    def read_image(self, i):
        if i in self.broken:
            raise ImageReadError(f"cannot read {self.names[i]}.jpg")
        return self.images[i]

    def get_labels(self, i):
        return self.labels[i].copy()


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_sipe("resnet18", num_classes=4).eval()


def test_files_match_single_image_api_and_resume(model, tmp_path):
    ds = FakeDataset()
    cfg = CamConfig(scales=(1.0, 0.5), num_workers=0, save_cam=True)
    summary = generate_cams(model, ds, tmp_path, cfg)
    assert summary["written"] == 4 and summary["existing"] == 0
    f = read_cam_file(output_path(tmp_path, "img1"))
    keys, maps = multiscale_is_cam(model, ds.images[1], ds.labels[1], scales=(1.0, 0.5))
    assert f.kind == "is_cam" and np.array_equal(f.keys, keys) and f.keys.tolist() == [0, 2]
    np.testing.assert_allclose(f.maps, maps, atol=1e-3)  # stored as float16
    cam = read_cam_file(tmp_path / "cam" / "img1.npz")
    assert cam.kind == "cam" and cam.keys.tolist() == [2] and cam.maps.shape == (1, 44, 56)
    # An interrupted run resumes: only the missing file is recomputed.
    output_path(tmp_path, "img2").unlink()
    again = generate_cams(model, ds, tmp_path, cfg)
    assert again["written"] == 1 and again["existing"] == 3


def test_official_layout_and_sharding(model, tmp_path):
    ds = FakeDataset(n=5)
    cfg = CamConfig(scales=(1.0,), format="npy", num_workers=0)
    r0 = generate_cams(model, ds, tmp_path, cfg, rank=0, world_size=2)
    r1 = generate_cams(model, ds, tmp_path, cfg, rank=1, world_size=2)
    assert (r0["written"], r1["written"]) == (3, 2)
    obj = np.load(tmp_path / "is_cam" / "img4.npy", allow_pickle=True).item()
    assert set(obj) == {"keys", "IS_CAM"} and obj["IS_CAM"].dtype == np.float32
    assert obj["keys"].tolist() == [0, 2] and obj["IS_CAM"].shape == (2, 56, 56)


def test_unreadable_image_is_skipped_and_counted(model, tmp_path):
    ds = FakeDataset(n=3, broken={1})
    summary = generate_cams(model, ds, tmp_path, CamConfig(scales=(1.0,), num_workers=1, overlays=True))
    assert summary["written"] == 2 and summary["skipped"] == 1 and summary["skipped_names"] == ["img1"]
    assert not output_path(tmp_path, "img1").exists()
    assert sorted(p.name for p in (tmp_path / "overlays").iterdir())[0].startswith("img0_1")
    assert not list(tmp_path.rglob("*.tmp"))
