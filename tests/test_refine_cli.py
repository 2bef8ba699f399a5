"""``sipe refine`` end to end on a small synthetic dataset (real layout, real dataset readers)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from sipe.cli import main
from sipe.data import build_dataset, generate_synthetic
from sipe.data.cam_format import write_cam_file

pytestmark = pytest.mark.usefixtures("one_thread")


def test_refine_pipeline_on_synthetic(tmp_path, capsys) -> None:
    root = generate_synthetic(tmp_path / "syn", seed=3, n_train=4, n_val=1, image_size=64, progress=False)
    data = build_dataset("synthetic", root, "train")
    # IS-CAM stand-ins: each present class scores 0.9 on a shrunken copy of its mask.
    for item in data:
        mask = item["mask"]
        keys = np.concatenate([[0], np.flatnonzero(item["labels"]) + 1]).astype(np.int64)
        maps = np.stack([np.full(mask.shape, 0.3, np.float32)] + [0.9 * (mask == k) for k in keys[1:]])
        write_cam_file(tmp_path / "cam" / f"{item['name']}.npz", keys, maps)
    common = ["--dataset", "synthetic", "--root", str(root), "--split", "train"]

    assert main(["refine", "crf-regions", *common, "--cam-dir", str(tmp_path / "cam"),
                 "--out", str(tmp_path / "ir"), "--workers", "0"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report == {"skipped_before": 0, "written": 4, "skipped_existing": 0, "skipped_bad": 0}
    assert main(["refine", "train-irn", *common, "--label-dir", str(tmp_path / "ir"), "--out", str(tmp_path / "irn"),
                 "backbone=resnet18", "weights=null", "crop_size=64", "radius=5", "mean_batch_size=2",
                 "engine.batch_size=2", "engine.epochs=1", "engine.num_workers=0", "engine.device=cpu",
                 "engine.progress=false"]) == 0
    assert (tmp_path / "irn" / "irn.pt").is_file()
    assert main(["refine", "labels", *common, "--irn", str(tmp_path / "irn" / "irn.pt"), "--cam-dir",
                 str(tmp_path / "cam"), "--out", str(tmp_path / "pseudo"), "--device", "cpu"]) == 0
    assert main(["refine", "crf", *common, "--cam-dir", str(tmp_path / "cam"), "--out", str(tmp_path / "crf"),
                 "--workers", "0"]) == 0
    for item in data:
        for folder in ("ir", "pseudo", "crf"):
            png = Image.open(tmp_path / folder / f"{item['name']}.png")
            assert png.mode == "P" and png.size == item["image"].shape[1::-1]
            present = {0, *(np.flatnonzero(item["labels"]) + 1).tolist()}
            assert set(np.unique(np.asarray(png)).tolist()) <= present | ({255} if folder == "ir" else set())
    # The CRF labels follow the (sharp) stand-in IS-CAMs closely.
    item = data[0]
    crf = np.asarray(Image.open(tmp_path / "crf" / f"{item['name']}.png"))
    assert (crf == item["mask"]).mean() > 0.9


def test_refine_reports_missing_cams(tmp_path, capsys) -> None:
    root = generate_synthetic(tmp_path / "syn", seed=3, n_train=2, n_val=1, image_size=48, progress=False)
    code = main(["refine", "crf", "--dataset", "synthetic", "--root", str(root), "--split", "train",
                 "--cam-dir", str(tmp_path / "none"), "--out", str(tmp_path / "out"), "--workers", "0"])
    assert code == 1  # the inputs are missing, not the options wrong
    assert "run `sipe cam`" in capsys.readouterr().err
