"""Negatives (images without any class) as first-class data, presence from the classifier, and
``sipe.Predictor`` (one object for SIPE and segmentation checkpoints, the code ``sipe predict`` runs)."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import save_seg_checkpoint, tiny_seg_model, write_binary_set
from sipe import Predictor
from sipe import io as sio
from sipe.cams.predict import is_cam_label
from sipe.cams.presence import classifier_scores, labels_from_names
from sipe.cli import main
from sipe.config import DataConfig
from sipe.data import CustomDataset, dataset_from_config
from sipe.data.cam_format import read_cam_file, write_cam_file
from sipe.errors import UsageError
from sipe.metrics import evaluate_cam, evaluate_is_cam, evaluate_label_dir, format_report
from sipe.models import build_sipe
from sipe.seg.predict import predict_image
from sipe.train.inputs import label_contrast_warning

pytestmark = pytest.mark.usefixtures("one_thread")

BINARY = ["background", "defect"]


@pytest.fixture(scope="module")
def binary(tmp_path_factory):
    root = tmp_path_factory.mktemp("binary")
    return root, write_binary_set(root, n=4)


@pytest.fixture(scope="module")
def sipe_ckpt(tmp_path_factory):
    """An untrained two-class SIPE network (seed 0) saved as `sipe train` would, and the model."""
    torch.manual_seed(0)
    model = build_sipe("resnet18", num_classes=2, weights=None).eval()
    path = tmp_path_factory.mktemp("ckpt") / "sipe.pt"
    sio.save_torch({"model": model.state_dict(), "meta": {"class_names": BINARY}}, path)
    return path, model


# ---------------------------------------------------------------------- data


def test_negatives_are_kept_by_default_and_dropped_on_request(binary):
    root, csv = binary
    ds = CustomDataset(root, csv)
    assert ds.names == ["im0", "im1", "im2", "im3"] and len(ds.skipped) == 0
    assert ds.label_matrix[:, 0].tolist() == [1, 0, 1, 0]
    cfg = DataConfig(kind="custom", root=str(root), split=str(csv), mask_dir=str(root / "masks"))
    assert cfg.skip_unlabeled is None and len(dataset_from_config(cfg, str(csv), with_masks=True)) == 4
    cfg.skip_unlabeled = True
    dropped = dataset_from_config(cfg, str(csv), with_masks=True)
    assert dropped.names == ["im0", "im2"] and dropped.skipped.by_reason() == {"no labels": 2}


def test_label_sets_without_contrast_warn_in_one_line(binary):
    root, csv = binary
    assert label_contrast_warning(CustomDataset(root, csv)) is None
    (root / "same.csv").write_text("image,labels\nim0.png,defect\nim2.png,defect\n")
    msg = label_contrast_warning(CustomDataset(root, root / "same.csv"))
    assert msg is not None and "\n" not in msg
    assert "all 2 training images" in msg and "(defect)" in msg and "negatives" in msg


# ---------------------------------------------------------------------- evaluation


def _mask(root, name):
    return np.asarray(Image.open(root / "masks" / f"{name}.png"))


def test_evaluation_counts_false_positives_on_negatives(binary, tmp_path):
    root, csv = binary
    ds = CustomDataset(root, csv, mask_dir=root / "masks")
    h, w = _mask(root, "im0").shape
    # IS-CAMs: the positives exact; negative im1 calls its top 8 rows defect, im3 is clean.
    for name in ds.names:
        gt = _mask(root, name)
        fg = (gt == 1).astype(np.float32)
        if name == "im1":
            fg[:8] = 1.0
        keys = np.array([0, 1]) if name != "im3" else np.array([0])
        maps = np.stack([1 - fg, fg]) if name != "im3" else np.ones((1, h, w), np.float32)
        write_cam_file(tmp_path / "is_cam" / f"{name}.npz", keys, maps)
        cam_keys = keys[1:]
        write_cam_file(tmp_path / "cam" / f"{name}.npz", cam_keys, 0.8 * maps[1:], "cam")
        sio.save_label_png(tmp_path / "labels" / f"{name}.png", np.argmax(maps, 0).astype(np.uint8) * keys.max())
    expected = {"images": 2, "pixels": 2 * h * w, "fp_pixels": 8 * w,
                "fp_pixel_rate": round(8 * w / (2 * h * w), 6), "images_with_fp": 1}
    r = evaluate_is_cam(tmp_path / "is_cam", ds)
    assert r["num_images"] == 4 and r["negatives"] == expected
    assert evaluate_label_dir(tmp_path / "labels", ds)["negatives"] == expected
    cam = evaluate_cam(tmp_path / "cam", ds, thresholds=[0.5, 0.9])
    assert cam["threshold"] == 0.5 and cam["negatives"] == expected
    # Above every score the CAMs call nothing foreground, on the negatives too.
    assert evaluate_cam(tmp_path / "cam", ds, thresholds=[0.9])["negatives"]["fp_pixels"] == 0
    assert "negatives (no foreground in the ground truth): 2 images, 6.25% of their pixels" in format_report(r)


# ---------------------------------------------------------------------- presence and the predictor


def test_labels_from_names_allows_an_empty_set_only_when_asked():
    assert labels_from_names([], BINARY, allow_empty=True).tolist() == [0.0]
    with pytest.raises(UsageError, match="unknown class 'scratch'; the model knows: defect"):
        labels_from_names(["scratch"], BINARY, allow_empty=True)


def test_sipe_predictor_decides_presence_from_the_classifier(sipe_ckpt, binary):
    path, model = sipe_ckpt
    root, _ = binary
    image = np.asarray(Image.open(root / "im0.png").convert("RGB"))
    score = float(classifier_scores(model, image)[0])
    assert 0.0 < score < 1.0
    below = Predictor.from_checkpoint(path, device="cpu", scales=(1.0,), score_threshold=score - 1e-3)
    above = Predictor.from_checkpoint(path, device="cpu", scales=(1.0,), score_threshold=min(score + 1e-3, 0.999))
    present, absent = below.predict(image), above.predict(image)
    assert present.labels == ["defect"] and absent.labels == []
    np.testing.assert_allclose(present.scores, [score], rtol=1e-5)
    assert absent.mask.dtype == np.uint8 and absent.mask.shape == image.shape[:2] and not absent.mask.any()
    assert not absent.maps[1].any() and present.maps.shape == (2, *image.shape[:2])
    # The mask is the low-level IS-CAM argmax for the decided labels.
    assert np.array_equal(present.mask, is_cam_label(model, image, np.array([1.0], np.float32), scales=(1.0,)))
    # Given labels override the classifier, an empty list is a negative; lists are predicted per image.
    assert above.predict(image, labels=["defect"]).labels == ["defect"]
    assert not below.predict(image, labels=[]).mask.any()
    many = below.predict([image, root / "im1.png", Image.fromarray(image)], labels=[["defect"], [], None])
    assert [p.labels for p in many] == [["defect"], [], ["defect"]]
    assert np.array_equal(many[0].mask, many[2].mask)
    with pytest.raises(UsageError, match="unknown class 'scratch'"):
        below.predict(image, labels=["scratch"])


def test_the_score_threshold_comes_from_the_checkpoint_unless_given(sipe_ckpt, tmp_path):
    _, model = sipe_ckpt
    path = tmp_path / "t.pt"
    meta = {"class_names": BINARY, "sipe_config": {"method": {"score_threshold": 0.8}}}
    sio.save_torch({"model": model.state_dict(), "meta": meta}, path)
    assert Predictor.from_checkpoint(path, device="cpu").score_threshold == 0.8
    assert Predictor.from_checkpoint(path, device="cpu", score_threshold=0.2).score_threshold == 0.2
    assert Predictor.from_checkpoint(sipe_ckpt[0], device="cpu").score_threshold == 0.5  # none stored: 0.5
    with pytest.raises(UsageError, match=r"must be in \[0, 1\)"):
        Predictor.from_checkpoint(path, device="cpu", score_threshold=1.5)


def test_predictor_reads_paths_and_pil_images_upright_as_the_cli_does(sipe_ckpt, tmp_path):
    path, _ = sipe_ckpt
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (32, 48, 3), dtype=np.uint8)
    img = Image.fromarray(pixels)
    exif = img.getexif()
    exif[0x0112] = 6  # stored sideways: displayed rotated by 90 degrees
    img.save(tmp_path / "rot.jpg", exif=exif, quality=95)
    p = Predictor.from_checkpoint(path, device="cpu", scales=(1.0,), score_threshold=0.0)
    from_path = p.predict(tmp_path / "rot.jpg")
    from_pil = p.predict(Image.open(tmp_path / "rot.jpg"))
    assert from_path.mask.shape == (48, 32) and np.array_equal(from_path.mask, from_pil.mask)
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        p.predict(pixels.astype(np.float32))


def test_predictor_matches_sipe_predict_for_both_checkpoint_kinds(sipe_ckpt, binary, tmp_path, capsys):
    root, _ = binary
    files = [root / "im0.png", root / "im1.png"]
    seg_model, spec = tiny_seg_model(BINARY)
    seg_path = save_seg_checkpoint(seg_model, spec, tmp_path / "seg.pt")
    for ckpt, extra in ((sipe_ckpt[0], ["--scales", "1.0", "--score-threshold", "0.3"]), (seg_path, [])):
        out = tmp_path / ckpt.stem
        assert main(["predict", *map(str, files), "--checkpoint", str(ckpt), "--out", str(out), "--no-overlay",
                     "--device", "cpu", *extra]) == 0
        predictor = Predictor.from_checkpoint(ckpt, device="cpu", scales=(1.0,),
                                              score_threshold=0.3 if extra else None)
        for f, pred in zip(files, predictor.predict(files), strict=True):
            assert np.array_equal(np.asarray(Image.open(out / f.name)), pred.mask), (ckpt.stem, f.name)
    # The segmentation predictor is the network's own argmax (flip averaged, as `sipe predict` does).
    image = np.asarray(Image.open(files[0]).convert("RGB"))
    seg = Predictor.from_checkpoint(seg_path, device="cpu").predict(image)
    assert seg.scores is None and seg.class_names == BINARY and seg.maps.shape == (2, *image.shape[:2])
    np.testing.assert_allclose(seg.maps.sum(0), 1.0, atol=1e-5)
    assert np.array_equal(seg.mask, predict_image(seg_model, image, flip=True))
    with pytest.raises(UsageError, match="need a SIPE checkpoint"):
        Predictor.from_checkpoint(seg_path, device="cpu").predict(image, labels=["defect"])


def test_sipe_predict_labels_file_and_unknown_classes(sipe_ckpt, binary, tmp_path, capsys):
    path, model = sipe_ckpt
    root, _ = binary
    base = ["predict", str(root / "im0.png"), str(root / "im1.png"), "--checkpoint", str(path), "--scales", "1.0",
            "--no-overlay", "--device", "cpu"]
    labels = tmp_path / "tags.csv"
    labels.write_text("image,labels\nim0.png,defect\nim1.png,\n")
    assert main([*base, "--out", str(tmp_path / "a"), "--labels-file", str(labels)]) == 0
    image = np.asarray(Image.open(root / "im0.png").convert("RGB"))
    expected = is_cam_label(model, image, np.array([1.0], np.float32), scales=(1.0,))
    assert np.array_equal(np.asarray(Image.open(tmp_path / "a" / "im0.png")), expected)
    assert not np.asarray(Image.open(tmp_path / "a" / "im1.png")).any()  # tagged as a negative
    capsys.readouterr()
    for given in (["--labels", "scratch"], ["--labels-file", str(tmp_path / "bad.csv")]):
        (tmp_path / "bad.csv").write_text("image,labels\nim0.png,scratch\nim1.png,\n")
        assert main([*base, "--out", str(tmp_path / "b"), *given]) == 2
        err = capsys.readouterr().err.strip()
        assert "unknown class 'scratch'; the model knows: defect" in err and len(err.splitlines()) == 1
    assert main([*base, "--out", str(tmp_path / "c"), "--labels", "defect", "--score-threshold", "0.5"]) == 2
    assert "--score-threshold decides the classes when no labels are given" in capsys.readouterr().err
    labels.write_text("image,labels\nim0.png,defect\n")
    assert main([*base, "--out", str(tmp_path / "c"), "--labels-file", str(labels)]) == 1
    assert "1 inputs have no row in" in capsys.readouterr().err


# ---------------------------------------------------------------------- sipe cam


def test_sipe_cam_writes_background_only_maps_for_negatives(sipe_ckpt, binary, tmp_path, capsys):
    path, _ = sipe_ckpt
    root, csv = binary
    common = ["cam", "--checkpoint", str(path), "--dataset", "custom", "--root", str(root), "--split", str(csv),
              "--scales", "1.0", "--workers", "0", "--device", "cpu"]
    assert main([*common, "--out", str(tmp_path / "ds"), "--save-cam"]) == 0
    for name, positive in (("im0", True), ("im1", False), ("im2", True), ("im3", False)):
        f = read_cam_file(tmp_path / "ds" / "is_cam" / f"{name}.npz")
        assert f.keys.tolist() == ([0, 1] if positive else [0])
        cam = read_cam_file(tmp_path / "ds" / "cam" / f"{name}.npz")
        assert cam.maps.shape[0] == (1 if positive else 0) and cam.maps.shape[1:] == f.maps.shape[1:]
    capsys.readouterr()
    assert main(["eval", "--dataset", "custom", "--root", str(root), "--split", str(csv), "--mask-dir",
                 str(root / "masks"), "--pred", str(tmp_path / "ds" / "is_cam"), "--kind", "is_cam",
                 "--out", str(tmp_path / "r.json")]) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["num_images"] == 4 and report["negatives"]["images"] == 2
    assert report["negatives"]["fp_pixels"] == 0  # the dataset's labels: negatives keep the background alone
    # The classifier decides instead: threshold 0 keeps the class everywhere, near 1 nowhere.
    assert main([*common, "--out", str(tmp_path / "all"), "--labels-from", "classifier",
                 "--score-threshold", "0"]) == 0
    assert read_cam_file(tmp_path / "all" / "is_cam" / "im1.npz").keys.tolist() == [0, 1]
    assert main([*common, "--out", str(tmp_path / "none"), "--labels-from", "classifier",
                 "--score-threshold", "0.9999"]) == 0
    assert read_cam_file(tmp_path / "none" / "is_cam" / "im0.npz").keys.tolist() == [0]
    assert main([*common, "--out", str(tmp_path / "x"), "--score-threshold", "0.5"]) == 2


def test_sipe_cam_runs_networks_trained_with_batch_norm_statistics(tmp_path):
    # model.freeze_bn=false keeps plain batch norms, which cannot be folded: the maps come unfolded.
    from sipe.cams.multiscale import multiscale_is_cam, prepare_for_inference

    torch.manual_seed(0)
    model = build_sipe("resnet18", num_classes=2, weights=None, freeze_bn=False).eval()
    image = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    prepared = prepare_for_inference(model)
    assert not getattr(prepared.encoder, "bn_folded", False)
    np.testing.assert_allclose(multiscale_is_cam(prepared, image, np.ones(1, np.float32), scales=(1.0,))[1],
                               multiscale_is_cam(model, image, np.ones(1, np.float32), scales=(1.0,))[1],
                               atol=1e-4)  # channels-last: float rounding only


def test_sipe_train_warns_when_no_image_can_be_contrasted(binary, tmp_path, caplog):
    root, _ = binary
    (root / "same.csv").write_text("image,labels\nim0.png,defect\nim2.png,defect\n")
    from sipe.config import load_config
    from sipe.config.train import SIPETrainConfig
    from sipe.train.inputs import training_data

    cfg = load_config(SIPETrainConfig, None, ["data.kind=custom", f"data.root={root}",
                                              f"data.split={root / 'same.csv'}", "data.val_split=null",
                                              "engine.batch_size=2"])
    with caplog.at_level(logging.WARNING, logger="sipe.train"):
        training_data(cfg)
    assert [r.getMessage() for r in caplog.records if "nothing to contrast" in r.getMessage()]


# ---------------------------------------------------------------------- the whole pipeline, one class


@pytest.mark.slow
def test_single_class_pipeline_with_negatives(tmp_path, capsys):
    """train -> cam -> eval -> crf-regions -> train-irn -> labels -> seg train -> predict on a
    background + defect set, half negatives, at tiny size: every stage covers every image."""
    root = tmp_path / "data"
    csv = write_binary_set(root, n=4, size=(64, 64))
    data = ["--dataset", "custom", "--root", str(root), "--split", str(csv)]
    tiny = ["engine.num_workers=0", "engine.progress=false", "engine.device=cpu", "engine.epochs=1",
            "engine.batch_size=2"]
    assert main(["train", "--out", str(tmp_path / "sipe"), "data.kind=custom", f"data.root={root}",
                 f"data.split={csv}", "data.val_split=null", "model.backbone=resnet18", "model.weights=null",
                 "aug.resize_long=[64,80]", "aug.crop_size=64", *tiny]) == 0
    sipe_ckpt = tmp_path / "sipe" / "checkpoints" / "final.pt"
    assert torch.load(sipe_ckpt, weights_only=False)["step"] == 2  # all 4 images trained on, batch 2
    assert main(["cam", "--checkpoint", str(sipe_ckpt), *data, "--out", str(tmp_path / "cams"), "--scales", "1.0",
                 "--workers", "0", "--device", "cpu"]) == 0
    assert len(list((tmp_path / "cams" / "is_cam").glob("*.npz"))) == 4
    assert main(["eval", *data, "--mask-dir", str(root / "masks"), "--pred", str(tmp_path / "cams" / "is_cam"),
                 "--kind", "is_cam", "--out", str(tmp_path / "eval.json")]) == 0
    report = json.loads((tmp_path / "eval.json").read_text())
    assert report["num_images"] == 4 and report["negatives"]["images"] == 2
    cams = str(tmp_path / "cams" / "is_cam")
    assert main(["refine", "crf-regions", *data, "--cam-dir", cams, "--out", str(tmp_path / "ir"),
                 "--workers", "0"]) == 0
    assert main(["refine", "train-irn", *data, "--label-dir", str(tmp_path / "ir"), "--out", str(tmp_path / "irn"),
                 "backbone=resnet18", "weights=null", "crop_size=64", "radius=5", "mean_batch_size=2", *tiny]) == 0
    assert main(["refine", "labels", *data, "--irn", str(tmp_path / "irn" / "irn.pt"), "--cam-dir", cams,
                 "--out", str(tmp_path / "pseudo"), "--device", "cpu"]) == 0
    for i in range(4):
        regions = np.asarray(Image.open(tmp_path / "ir" / f"im{i}.png"))
        pseudo = np.asarray(Image.open(tmp_path / "pseudo" / f"im{i}.png"))
        if i % 2:  # a negative: background (or uncertain) only
            assert set(np.unique(regions).tolist()) <= {0, 255} and not pseudo.any()
    assert main(["seg", "train", "--out", str(tmp_path / "seg"), f"pseudo_labels={tmp_path / 'pseudo'}",
                 "data.kind=custom", f"data.root={root}", f"data.split={csv}", "model.backbone=resnet18",
                 "model.weights=null", "aug.crop_size=32", "engine.min_steps=null", *tiny]) == 0
    seg_ckpt = tmp_path / "seg" / "checkpoints" / "final.pt"
    for ckpt in (seg_ckpt, sipe_ckpt):
        out = tmp_path / f"pred_{ckpt.parent.parent.name}"
        assert main(["predict", str(root), "--checkpoint", str(ckpt), "--out", str(out), "--scales", "1.0",
                     "--no-overlay", "--device", "cpu"]) == 0
        predictor = Predictor.from_checkpoint(ckpt, device="cpu", scales=(1.0,))
        assert predictor.class_names == BINARY
        for i in range(4):
            written = np.asarray(Image.open(out / f"im{i}.png"))
            assert np.array_equal(written, predictor.predict(root / f"im{i}.png").mask)
