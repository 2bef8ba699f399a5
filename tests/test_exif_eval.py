"""Phone photos with an EXIF orientation, end to end (sipe cam, sipe eval, sipe predict), and
``sipe eval`` going on past the files it cannot use."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sipe import io as sio
from sipe.cli import main

# EXIF orientation 6: the stored pixels are displayed turned 90 degrees clockwise.
ORIENTATION = 0x0112


def _rotated_photo(path: Path) -> np.ndarray:
    """A JPEG stored 90x150 (H x W) with orientation 6; returns the stored pixels."""
    rng = np.random.default_rng(0)
    stored = rng.integers(90, 140, (90, 150, 3)).astype(np.uint8)
    stored[:30, :40] = (230, 30, 30)  # a red block in the stored top-left corner
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    Image.fromarray(stored).save(path, quality=95, exif=exif)
    return stored


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A random-init ResNet-18 SIPE checkpoint for classes (background, red, blue), as 'sipe train' writes it."""
    from sipe.models import build_sipe
    from sipe.models.checkpoint import write_checkpoint

    torch.manual_seed(0)
    model = build_sipe("resnet18", num_classes=3, weights=None)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    write_checkpoint(path, model.state_dict(), {"class_names": ["background", "red", "blue"], "num_classes": 3})
    return path


def test_rotated_photo_gives_upright_is_cams_masks_and_predictions(tiny_checkpoint, tmp_path, capsys):
    from sipe.data import build_dataset
    from sipe.data.cam_format import read_cam_file
    from sipe.data.image import image_size, read_image

    photos, masks = tmp_path / "photos", tmp_path / "masks"
    photos.mkdir()
    stored = _rotated_photo(photos / "phone.jpg")
    Image.fromarray(np.full((64, 80, 3), 120, np.uint8)).save(photos / "plain.jpg", quality=95)
    (photos / "labels.csv").write_text("image,labels\nphone.jpg,red\nplain.jpg,blue\n")
    # the masks are drawn on the photos as displayed: the phone photo's is 150 x 90
    shown = np.rot90(stored, k=-1)  # what orientation 6 displays
    assert shown.shape == (150, 90, 3)
    mask = np.zeros((150, 90), np.uint8)
    mask[:40, -30:] = 2  # the red block (class 2 of the sorted blue, red), now in the top-right corner
    sio.save_label_png(masks / "phone.png", mask)
    sio.save_label_png(masks / "plain.png", np.zeros((64, 80), np.uint8))

    upright = read_image(photos / "phone.jpg")
    assert upright.shape == (150, 90, 3) and image_size(photos / "phone.jpg") == (150, 90)
    assert upright[:40, -30:, 0].mean() > 200 and upright[-40:, :30, 0].mean() < 160  # turned, not flipped
    ds = build_dataset("custom", str(photos), str(photos / "labels.csv"), mask_dir=str(masks))
    assert ds[0]["image"].shape[:2] == ds[0]["mask"].shape == (150, 90)

    out = tmp_path / "cams"
    common = ["--dataset", "custom", "--root", str(photos), "--split", str(photos / "labels.csv")]
    rc = main(["cam", "--checkpoint", str(tiny_checkpoint), *common, "--out", str(out), "--scales", "1.0", "0.5",
               "--workers", "0", "--device", "cpu", "--save-cam"])
    assert rc == 0, capsys.readouterr().err
    f = read_cam_file(out / "is_cam" / "phone.npz")
    assert f.maps.shape == (2, 150, 90) and f.keys.tolist() == [0, 2]
    assert read_cam_file(out / "cam" / "phone.npz").maps.shape == (1, 150, 90)

    report = tmp_path / "is_cam.json"
    rc = main(["eval", *common, "--mask-dir", str(masks), "--pred", str(out / "is_cam"), "--kind", "is_cam",
               "--out", str(report)])
    assert rc == 0, capsys.readouterr().err
    data = json.loads(report.read_text())
    assert (data["num_images"], data["failed"]) == (2, [])
    assert data["num_pixels"] == 150 * 90 + 64 * 80

    capsys.readouterr()
    rc = main(["predict", str(photos / "phone.jpg"), "--checkpoint", str(tiny_checkpoint), "--labels", "red",
               "--scales", "1.0", "--out", str(tmp_path / "pred"), "--device", "cpu"])
    assert rc == 0, capsys.readouterr().err
    assert np.asarray(Image.open(tmp_path / "pred" / "phone.png")).shape == (150, 90)


def test_sipe_eval_goes_on_past_bad_files_lists_them_and_exits_1(tmp_path, capsys):
    photos, masks, pred = tmp_path / "photos", tmp_path / "masks", tmp_path / "pred"
    photos.mkdir()
    rows = ["image,labels"]
    gt = np.zeros((8, 10), np.uint8)
    gt[2:6, 3:8] = 1
    for name in ("good1", "good2", "small", "gone", "broken"):
        Image.fromarray(np.full((8, 10, 3), 100, np.uint8)).save(photos / f"{name}.png")
        rows.append(f"{name}.png,thing")
        sio.save_label_png(masks / f"{name}.png", gt)
    (photos / "labels.csv").write_text("\n".join(rows) + "\n")
    perfect = gt.copy()
    half = gt.copy()
    half[2:6, 3:5] = 0  # 8 of the 20 object pixels called background
    sio.save_label_png(pred / "good1.png", perfect)
    sio.save_label_png(pred / "good2.png", half)
    sio.save_label_png(pred / "small.png", gt[:, :9])  # one column short
    (pred / "broken.png").write_bytes(b"not a png")
    # "gone" has no prediction

    report = tmp_path / "rep.json"
    rc = main(["eval", "--dataset", "custom", "--root", str(photos), "--split", str(photos / "labels.csv"),
               "--mask-dir", str(masks), "--pred", str(pred), "--kind", "labels", "--out", str(report)])
    assert rc == 1
    captured = capsys.readouterr()
    assert "mIoU" in captured.out  # the metrics of the readable files are printed ...
    data = json.loads(report.read_text())  # ... and written
    assert data["num_images"] == 2
    # good1 + good2: object 40 pixels, 32 found; background 120 pixels + 8 wrongly called background
    assert data["miou"] == pytest.approx((120 / 128 + 32 / 40) / 2)
    failed = {f["name"]: f["reason"] for f in data["failed"]}
    assert sorted(failed) == ["broken", "gone", "small"]
    assert failed["small"].startswith("size mismatch: ") and "8x9 but the ground-truth mask is 8x10" in failed["small"]
    assert failed["gone"].startswith("missing: ") and "broken.png" in failed["broken"]
    err = captured.err
    assert "3 of 5 images could not be evaluated" in err
    assert all(f"  {n}: " in err for n in ("small", "gone", "broken"))

    # every file bad: nothing to report, one clear line, exit 1
    rc = main(["eval", "--dataset", "custom", "--root", str(photos), "--split", str(photos / "labels.csv"),
               "--mask-dir", str(masks), "--pred", str(tmp_path / "empty"), "--kind", "labels"])
    assert rc == 1
    assert "no image could be evaluated (labels): all 5 failed" in capsys.readouterr().err


def test_voc_layout_phone_photo_follows_the_orientation_its_mask_was_drawn_on(tmp_path):
    """VOC reads stored pixels (exif_transpose=False), but a photo whose mask only fits the displayed
    (EXIF-turned) photo is read turned; where both fit (a square photo, no tag) the VOC rule stands."""
    from sipe.data import VOCDataset

    root = tmp_path / "voc"
    for d in ("JPEGImages", "Annotations", "SegmentationClass"):
        (root / d).mkdir(parents=True)
    stored = _rotated_photo(root / "JPEGImages" / "phone.jpg")  # stored 90x150, displayed 150x90
    sio.save_label_png(root / "SegmentationClass" / "phone.png", np.zeros((150, 90), np.uint8))
    square = np.full((64, 64, 3), 120, np.uint8)
    square[:20, :30] = (230, 30, 30)  # red block top-left in the stored pixels
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    Image.fromarray(square).save(root / "JPEGImages" / "square.jpg", quality=95, exif=exif)
    sio.save_label_png(root / "SegmentationClass" / "square.png", np.zeros((64, 64), np.uint8))
    Image.fromarray(stored).save(root / "JPEGImages" / "stored.jpg", quality=95, exif=exif)  # mask on stored pixels
    sio.save_label_png(root / "SegmentationClass" / "stored.png", np.zeros((90, 150), np.uint8))
    names = ["phone", "square", "stored"]
    for n in names:
        (root / "Annotations" / f"{n}.xml").write_text("<annotation><object><name>cat</name></object></annotation>")
    (root / "split.txt").write_text("\n".join(names) + "\n")

    ds = VOCDataset(root, root / "split.txt", cache_dir=tmp_path / "cache")
    assert [ds.exif_transpose_for(i) for i in range(3)] == [True, False, False]
    phone, sq, st = ds[0], ds[1], ds[2]
    assert phone["image"].shape[:2] == phone["mask"].shape == (150, 90)
    # turned as a viewer shows it: the stored top-left red block is now top-right
    assert phone["image"][:40, -30:, 0].mean() > 200 and phone["image"][:30, :40, 0].mean() < 160
    assert sq["image"].shape[:2] == (64, 64) and sq["image"][:20, :30, 0].mean() > 200  # stored pixels, not turned
    assert st["image"].shape[:2] == st["mask"].shape == (90, 150)
    # without masks (e.g. `sipe cam` on the split) the image comes out the same way, so CAMs fit the masks
    assert VOCDataset(root, root / "split.txt", cache_dir=tmp_path / "cache", with_masks=False)[0]["image"].shape[:2] \
        == (150, 90)
