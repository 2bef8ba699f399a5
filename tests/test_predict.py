"""Prediction on new images: arrays from Python, palette PNGs and overlays on disk, the CLI."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import save_seg_checkpoint, tiny_seg_model
from sipe import io as sio
from sipe.cams.predict import is_cam_label, labels_from_names, predict_paths_is_cam
from sipe.cli import main
from sipe.data.image import collect_images
from sipe.data.transforms import image_to_tensor
from sipe.models import build_sipe
from sipe.seg.predict import predict_image, predict_paths

CLASSES = ["background", "cat", "dog", "sofa"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def seg_model():
    model, spec = tiny_seg_model(CLASSES)
    # Push the classifier's bias apart so the argmax is not a tie-break between near-equal logits.
    with torch.no_grad():
        model.classifier[-1].bias.copy_(torch.tensor([0.0, 0.05, -0.05, 0.02]))
    return model, spec


def _photo(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_predict_image_shapes_and_single_scale_equals_logit_argmax(seg_model):
    model, _ = seg_model
    image = _photo(np.random.default_rng(0), 37, 53)
    label = predict_image(model, image)
    assert label.shape == (37, 53) and label.dtype == np.int64
    with torch.no_grad():
        logits = model(image_to_tensor(image))["out"][0]
    assert np.array_equal(label, logits.argmax(0).numpy())
    tta = predict_image(model, image, scales=(0.5, 1.0, 1.5), flip=True)
    assert tta.shape == (37, 53) and set(np.unique(tta)) <= set(range(4))
    model.train()
    predict_image(model, image)
    assert model.training, "the caller's train/eval mode is restored"
    model.eval()


def test_predict_image_rejects_bad_arrays(seg_model):
    model, _ = seg_model
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        predict_image(model, np.zeros((20, 20), np.uint8))
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        predict_image(model, np.zeros((20, 20, 3), np.float32))


def _inputs(tmp_path: Path) -> tuple[Path, Path, Path]:
    rng = np.random.default_rng(1)
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(_photo(rng, 40, 48)).save(folder / "a.jpg")
    Image.fromarray(_photo(rng, 33, 41)).convert("L").save(folder / "b.png")  # greyscale input
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (folder / "notes.txt").write_text("not an image")
    single = tmp_path / "c.jpg"
    Image.fromarray(_photo(rng, 30, 30)).save(single)
    return folder, single, folder / "broken.jpg"


def test_predict_paths_writes_palette_pngs_and_overlays(seg_model, tmp_path, caplog):
    model, _ = seg_model
    folder, single, _ = _inputs(tmp_path)
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING):
        result = predict_paths(model, [folder, single], out)
    assert sorted(p.name for p in result.labels) == ["a.png", "b.png", "c.png"]
    assert len(result.skipped) == 1 and result.skipped.names == ["broken.jpg"]
    assert "skipped 1 of 4 images: 1 unreadable" in caplog.text
    for name, src in (("a", folder / "a.jpg"), ("c", single)):
        png = Image.open(out / f"{name}.png")
        assert png.mode == "P"
        assert np.array_equal(np.array(png.getpalette(), dtype=np.uint8).reshape(-1, 3), sio.voc_palette())
        image = np.asarray(Image.open(src).convert("RGB"))
        assert np.array_equal(np.asarray(png), predict_image(model, image))
        overlay = Image.open(out / "overlay" / f"{name}.jpg")
        assert overlay.size == png.size and overlay.mode == "RGB"
    assert not (out / "broken.png").exists() and not (out / "notes.png").exists()


def test_predict_paths_refuses_clashing_names_and_missing_inputs(seg_model, tmp_path):
    model, _ = seg_model
    for sub in ("x", "y"):
        (tmp_path / sub).mkdir()
        Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(tmp_path / sub / "same.png")
    with pytest.raises(ValueError, match="would both be written as same.png"):
        predict_paths(model, [tmp_path / "x", tmp_path / "y"], tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        collect_images([tmp_path / "missing.jpg"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images found"):
        collect_images([tmp_path / "empty"])


def test_labels_from_names():
    assert labels_from_names(["dog", " sofa"], CLASSES).tolist() == [0.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="unknown class 'horse'"):
        labels_from_names(["horse"], CLASSES)
    with pytest.raises(ValueError, match="at least one"):
        labels_from_names([""], CLASSES)


@pytest.fixture(scope="module")
def sipe_model():
    torch.manual_seed(0)
    return build_sipe("resnet18", num_classes=4).eval()


def test_is_cam_predictions_use_only_the_given_classes(sipe_model, tmp_path):
    image = _photo(np.random.default_rng(2), 48, 64)
    labels = labels_from_names(["sofa"], CLASSES)
    label = is_cam_label(sipe_model, image, labels, scales=(1.0,))
    assert label.shape == (48, 64) and set(np.unique(label)) <= {0, 3}
    Image.fromarray(image).save(tmp_path / "img.png")
    result = predict_paths_is_cam(sipe_model, [tmp_path / "img.png"], labels, tmp_path / "out", scales=(1.0,))
    written = np.asarray(Image.open(result.labels[0]))
    assert np.array_equal(written, label)


def test_predict_cli_segmentation_checkpoint(seg_model, tmp_path, capsys):
    model, spec = seg_model
    ckpt = save_seg_checkpoint(model, spec, tmp_path / "seg.pt")
    folder, single, _ = _inputs(tmp_path)
    out = tmp_path / "pred"
    assert main(["predict", "--checkpoint", str(ckpt), "--out", str(out), "--no-overlay", str(single)]) == 0
    image = np.asarray(Image.open(single).convert("RGB"))
    assert np.array_equal(np.asarray(Image.open(out / "c.png")), predict_image(model, image, flip=True))
    assert not (out / "overlay").exists()
    assert main(["predict", "--checkpoint", str(ckpt), "--labels", "cat", "--out", str(out), str(single)]) == 2
    assert "needs a SIPE checkpoint" in capsys.readouterr().err


def test_predict_cli_is_cam_with_labels(sipe_model, tmp_path, capsys):
    ckpt = tmp_path / "sipe.pt"
    sio.save_torch({"model": sipe_model.state_dict(), "meta": {"class_names": CLASSES}}, ckpt)
    _, single, _ = _inputs(tmp_path)
    out = tmp_path / "pred"
    args = ["predict", str(single), "--checkpoint", str(ckpt), "--out", str(out), "--scales", "1.0"]
    assert main([*args, "--labels", "cat,sofa"]) == 0
    assert set(np.unique(np.asarray(Image.open(out / "c.png")))) <= {0, 1, 3}
    assert main(args) == 0  # without --labels the classifier decides (tests/test_negatives.py)
    assert main([*args, "--labels", "horse"]) == 2  # a class the checkpoint does not know: a command-line mistake
    assert "unknown class 'horse'" in capsys.readouterr().err


def test_predictor_skips_an_unreadable_file_and_the_batch_goes_on(sipe_model, tmp_path, caplog):
    from sipe.predictor import Predictor

    folder, single, broken = _inputs(tmp_path)
    predictor = Predictor(sipe_model, "sipe", CLASSES, scales=(1.0,))
    with caplog.at_level(logging.WARNING, logger="sipe.predict"):
        outs = predictor.predict([folder / "a.jpg", broken, single], labels=["cat"])
    assert [o.error is None for o in outs] == [True, False, True]
    assert outs[0].mask.shape == (40, 48) and outs[2].mask.shape == (30, 30)
    assert outs[1].mask.shape == (0, 0) and outs[1].labels == [] and "broken.jpg" in caplog.text
    alone = predictor.predict(single, labels=["cat"])
    assert np.array_equal(alone.mask, outs[2].mask)  # the same mask as in the batch
    with pytest.raises(Exception, match="broken.jpg"):  # a single image still raises
        predictor.predict(broken)


def test_predict_cli_prints_a_summary_and_writes_each_images_scores(sipe_model, tmp_path, capsys):
    import json

    ckpt = tmp_path / "sipe.pt"
    sio.save_torch({"model": sipe_model.state_dict(), "meta": {"class_names": CLASSES}}, ckpt)
    folder, single, _ = _inputs(tmp_path)
    out = tmp_path / "pred"
    args = ["predict", str(folder), str(single), "--checkpoint", str(ckpt), "--out", str(out), "--scales", "1.0"]
    assert main([*args, "--score-threshold", "0.0"]) == 0  # every class above 0: every image holds all
    data = json.loads((out / "scores.json").read_text())
    assert data["class_names"] == CLASSES[1:] and sorted(i["name"] for i in data["images"]) == ["a.jpg", "b.png",
                                                                                               "c.jpg"]
    assert all(len(i["scores"]) == 3 and i["labels"] == CLASSES[1:] for i in data["images"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1].startswith("3 images: cat 3, dog 3, sofa 3, none 0")
    assert main([*args, "--labels", "dog"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("3 images: cat 0, dog 3, sofa 0, none 0")
