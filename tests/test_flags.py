"""The checks of a run's own numbers (sipe.report.flags): each threshold from both sides, on small synthetic
run folders, and a healthy run (the README's demo numbers) that raises none of them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from sipe.report.collect import Curves, RunContents
from sipe.report.flags import (
    BACKGROUND_IOU_MIN,
    END_DROP,
    EVERYWHERE_SHARE,
    ISCAM_TOLERANCE,
    LOSS_DROP_MIN,
    PRESENCE_FILE,
    SCORE_GAP_MIN,
    all_flags,
    run_flags,
)

NAMES = ["background", "circle", "square"]


def _rep(miou: float, ious=(0.8, 0.5, 0.5), pred=(600, 200, 200), gt=(600, 200, 200), **extra) -> dict:
    classes = [{"name": n, "iou": i, "pred_pixels": p, "gt_pixels": g}
               for n, i, p, g in zip(NAMES, ious, pred, gt, strict=True)]
    return {"miou": miou, "classes": classes, "split": "val", "num_images": 10, **extra}


def _healthy_evals() -> dict:
    """The README's demo table: CAM 40, IS-CAM 61, pseudo labels 63, segmentation 62 (mIoU %)."""
    sweep = [{"threshold": round(t, 2), "miou": 0.3} for t in np.arange(96) / 100]
    heat = {"inside": 0.62, "outside": 0.12}
    return {
        "cam": _rep(0.40, threshold=0.25, sweep=sweep, heat=heat),
        "is_cam": _rep(0.61, heat=heat),
        "pseudo_labels": _rep(0.63),
        "seg": _rep(0.62),
    }


def _healthy_curves() -> dict:
    steps = list(range(1, 11))
    loss = [0.69 * 0.85**s for s in range(10)]
    return {"sipe": Curves({"train/loss_cls": (steps, loss), "train/loss": (steps, loss)}, 10.0)}


def _contents(tmp_path: Path, **kw) -> RunContents:
    run = tmp_path / "run"
    run.mkdir(exist_ok=True)
    args = {"evals": _healthy_evals(), "curves": _healthy_curves(),
            "metrics": {"train_images_per_class": {"circle": 40, "square": 40}}, **kw}
    return RunContents(run_dir=run, **args)


def _codes(contents: RunContents, **kw) -> list[str]:
    return [f["code"] for f in all_flags(contents, **kw)]


def test_healthy_run_raises_no_flag(tmp_path):
    contents = _contents(tmp_path)
    (contents.run_dir / "sipe").mkdir()
    (contents.run_dir / "sipe" / "config.yaml").write_text(yaml.safe_dump(
        {"model": {"backbone": "resnet18", "weights": "pretrain/backbone.pth"}}))
    (contents.run_dir / "cams_val").mkdir()
    (contents.run_dir / "cams_train").mkdir()
    _presence(contents.run_dir, pos=[0.9, 0.8, 0.95], neg=[0.1, 0.2, 0.05])
    assert all_flags(contents) == []


def test_every_flag_has_code_stage_and_a_stated_threshold(tmp_path):
    evals = _healthy_evals()
    evals["is_cam"]["miou"] = 0.036
    evals["cam"]["threshold"] = 0.95
    contents = _contents(tmp_path, evals=evals)
    flags = all_flags(contents, eval_on_train=True)
    assert {f["code"] for f in flags} == {"is_cam_below_cam", "cam_threshold_at_end", "eval_on_training_images"}
    for f in flags:
        assert set(f) == {"code", "stage", "message"} and f["message"]
    by = {f["code"]: f for f in flags}
    assert "3.6 % mIoU is below the plain CAM's 40.0 %" in by["is_cam_below_cam"]["message"]
    assert "flagged beyond 1.0" in by["is_cam_below_cam"]["message"]
    assert "0.95 is at the highest end of the sweep (0.00-0.95" in by["cam_threshold_at_end"]["message"]


@pytest.mark.parametrize(("is_cam", "flagged"), [(0.40 - ISCAM_TOLERANCE - 0.001, True),
                                                 (0.40 - ISCAM_TOLERANCE + 0.001, False), (0.61, False)])
def test_is_cam_below_cam(tmp_path, is_cam, flagged):
    evals = _healthy_evals()
    evals["is_cam"]["miou"] = is_cam
    assert ("is_cam_below_cam" in _codes(_contents(tmp_path, evals=evals))) is flagged


@pytest.mark.parametrize(("threshold", "flagged"), [(0.0, True), (0.05, True), (0.06, False), (0.89, False),
                                                   (0.90, True), (0.93, True), (0.95, True)])
def test_cam_threshold_at_an_end_of_the_sweep(tmp_path, threshold, flagged):
    evals = _healthy_evals()
    evals["cam"]["threshold"] = threshold
    assert ("cam_threshold_at_end" in _codes(_contents(tmp_path, evals=evals))) is flagged


@pytest.mark.parametrize(("at_zero", "flagged"), [(0.408 - END_DROP - 0.001, False), (0.408 - END_DROP + 0.001, True)])
def test_a_peak_near_the_end_that_the_sweep_resolves_is_not_flagged(tmp_path, at_zero, flagged):
    """The demo's part-only CAMs peak at 0.05 (mIoU 0.408) and fall to 0.321 at 0.00: a real optimum."""
    evals = _healthy_evals()
    sweep = [{"threshold": round(t, 2), "miou": 0.3} for t in np.arange(96) / 100]
    sweep[0]["miou"], sweep[5]["miou"] = at_zero, 0.408
    evals["cam"].update(threshold=0.05, sweep=sweep)
    assert ("cam_threshold_at_end" in _codes(_contents(tmp_path, evals=evals))) is flagged


@pytest.mark.parametrize(("share", "flagged"), [(EVERYWHERE_SHARE, True), (EVERYWHERE_SHARE - 0.01, False)])
def test_class_predicted_everywhere(tmp_path, share, flagged):
    evals = _healthy_evals()
    total = 1000
    square = round(share * total)
    evals["seg"] = _rep(0.2, ious=(0.3, 0.0, 0.2), pred=(total - square, 0, square))
    flags = all_flags(_contents(tmp_path, evals=evals))
    every = [f for f in flags if f["code"] == "class_everywhere"]
    assert bool(every) is flagged
    if flagged:
        assert every[0]["stage"] == "seg" and "calls 90.0 % of all pixels square" in every[0]["message"]
    # a class whose ground truth covers as much is not "everywhere"
    evals["seg"] = _rep(0.9, pred=(50, 0, 950), gt=(50, 0, 950))
    assert "class_everywhere" not in _codes(_contents(tmp_path, evals=evals))


def test_class_never_predicted_and_all_background(tmp_path):
    evals = _healthy_evals()
    evals["cam"] = _rep(0.32, ious=(0.96, 0.0, 0.0), pred=(1000, 0, 0), threshold=0.5,
                        sweep=[{"threshold": 0.0, "miou": 0.1}, {"threshold": 0.95, "miou": 0.2}])
    evals["seg"] = _rep(0.3, ious=(0.8, 0.0, 0.4), pred=(700, 0, 300))
    flags = all_flags(_contents(tmp_path, evals=evals))
    assert [(f["code"], f["stage"]) for f in flags if f["code"] in ("all_background", "class_never_predicted")] == [
        ("all_background", "cam"), ("class_never_predicted", "seg")]


@pytest.mark.parametrize(("bg_iou", "flagged"), [(BACKGROUND_IOU_MIN - 0.001, True), (BACKGROUND_IOU_MIN, False)])
def test_background_iou_near_zero(tmp_path, bg_iou, flagged):
    evals = _healthy_evals()
    evals["seg"]["classes"][0]["iou"] = bg_iou
    assert ("background_iou_zero" in _codes(_contents(tmp_path, evals=evals))) is flagged


@pytest.mark.parametrize(("outside", "flagged"), [(0.62, True), (0.7, True), (0.619, False)])
def test_map_hotter_outside_than_inside(tmp_path, outside, flagged):
    evals = _healthy_evals()
    evals["cam"]["heat"] = {"inside": 0.62, "outside": outside}
    flags = [f for f in all_flags(_contents(tmp_path, evals=evals)) if f["code"] == "hotter_outside"]
    assert bool(flags) is flagged
    assert all(f["stage"] == "cam" for f in flags)


@pytest.mark.parametrize(("drop", "flagged"),
                         [(0.0, True), (LOSS_DROP_MIN - 0.01, True), (LOSS_DROP_MIN + 0.01, False)])
def test_classifier_loss_not_below_its_start(tmp_path, drop, flagged):
    steps = [1, 10, 12]
    loss = [0.70, 0.70 * (1 - drop), 0.70 * (1 - drop)]
    curves = {"train": Curves({"train/loss_cls": (steps, loss), "train/loss": (steps, [1.0, 0.1, 0.1])}, 3.0)}
    flags = [f for f in all_flags(_contents(tmp_path, curves=curves)) if f["code"] == "classifier_loss_flat"]
    assert bool(flags) is flagged
    if flagged:
        assert "train/loss_cls" in flags[0]["message"] and "at step 1" in flags[0]["message"]
    # the segmentation network's loss is not the classifier's
    assert "classifier_loss_flat" not in _codes(_contents(tmp_path, curves={"seg": curves["train"]}))


def _presence(run: Path, pos: list[float], neg: list[float]) -> None:
    images = [{"name": f"p{i}", "tags": ["circle"], "scores": [s, 0.1]} for i, s in enumerate(pos)]
    images += [{"name": f"n{i}", "tags": [], "scores": [s, 0.1]} for i, s in enumerate(neg)]
    (run / PRESENCE_FILE).write_text(json.dumps({"class_names": ["circle", "square"], "images": images}))


@pytest.mark.parametrize(("gap", "flagged"), [(0.0, True), (SCORE_GAP_MIN - 0.01, True), (SCORE_GAP_MIN + 0.01, False)])
def test_classifier_scores_of_positives_and_negatives_not_separated(tmp_path, gap, flagged):
    contents = _contents(tmp_path)
    _presence(contents.run_dir, pos=[0.53 + gap, 0.53 + gap], neg=[0.53, 0.53])
    flags = [f for f in all_flags(contents) if f["code"] == "classifier_not_separated"]
    assert bool(flags) is flagged
    if flagged:
        assert "circle" in flags[0]["message"] and "square" not in flags[0]["message"]  # square: no positives


def test_random_backbone_weights(tmp_path):
    contents = _contents(tmp_path)
    for stage, weights in (("train", None), ("seg", "IMAGENET1K_V1")):
        (contents.run_dir / stage).mkdir()
        (contents.run_dir / stage / "config.yaml").write_text(
            yaml.safe_dump({"model": {"backbone": "resnet18", "weights": weights}}))
    flags = [f for f in all_flags(contents) if f["code"] == "random_weights"]
    assert len(flags) == 1 and "train/config.yaml model" in flags[0]["message"]
    assert "seg/" not in flags[0]["message"]
    (contents.run_dir / "train" / "config.yaml").write_text(
        yaml.safe_dump({"model": {"backbone": "resnet18", "weights": "backbone.pth"}}))
    assert "random_weights" not in _codes(contents)


def test_evaluation_on_the_training_images(tmp_path):
    contents = _contents(tmp_path)
    assert "eval_on_training_images" in _codes(contents, eval_on_train=True)
    assert "eval_on_training_images" not in _codes(contents, eval_on_train=False)
    # inferred from sipe run's layout: CAMs of the evaluation read from cams_train/, no cams_val/
    (contents.run_dir / "cams_train").mkdir()
    assert "eval_on_training_images" in _codes(contents)
    (contents.run_dir / "cams_val").mkdir()
    assert "eval_on_training_images" not in _codes(contents)


def test_run_flags_reads_the_folder_and_prefers_the_given_metrics(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    evals = _healthy_evals()
    evals["is_cam"]["miou"] = 0.1
    for key, rep in evals.items():
        (run / f"eval_{key}.json").write_text(json.dumps(rep))
    (run / "metrics.json").write_text(json.dumps({"train_images_per_class": {"circle": 1, "square": 40}}))
    codes = [f["code"] for f in run_flags(run)]
    assert "is_cam_below_cam" in codes and "few_images" in codes
    codes = [f["code"] for f in run_flags(run, {"train_images_per_class": {"circle": 9, "square": 9}})]
    assert "is_cam_below_cam" in codes and "few_images" not in codes


def test_heat_stats_measure_maps_inside_and_outside_the_labelled_objects():
    from sipe.metrics.evaluate import HeatStats

    mask = np.zeros((4, 4), np.uint8)
    mask[:2, :2] = 1  # circle: 4 pixels; background: 12
    mask[3, 3] = 255  # ignored
    maps = np.full((2, 4, 4), 0.2, np.float32)
    maps[0, :2, :2] = 0.9  # circle hot on itself
    maps[1] = 0.7  # square is not in the image: not counted
    heat = HeatStats()
    heat.add(np.array([1, 2]), maps, mask)
    assert heat.report() == {"inside": 0.9, "outside": pytest.approx(0.2)}
    hot_bg = HeatStats()
    hot_bg.add(np.array([0, 1]), np.stack([maps[0], 1.0 - maps[0]]), mask)  # background channel (key 0) skipped
    assert hot_bg.report()["inside"] == pytest.approx(0.1) and hot_bg.report()["outside"] == pytest.approx(0.8)
    assert HeatStats().report() == {"inside": None, "outside": None}


class _Photos:
    """The dataset protocol write_presence reads: names, read_image, get_labels, class_names."""

    class_names = NAMES

    def __init__(self, n: int) -> None:
        rng = np.random.default_rng(0)
        self.images = [rng.integers(0, 256, (40 + 8 * (i % 2), 56, 3), dtype=np.uint8) for i in range(n)]
        self.names = [f"im{i}" for i in range(n)]

    def __len__(self) -> int:
        return len(self.images)

    def read_image(self, i: int) -> np.ndarray:
        return self.images[i]

    def get_labels(self, i: int) -> np.ndarray:
        return np.array([1.0, float(i % 3 == 0)] if i % 4 else [0.0, 0.0], np.float32)  # every 4th: no tag


def test_write_presence_scores_the_images_with_their_tags(tmp_path):
    from sipe.cams.presence import classifier_scores, write_presence
    from sipe.models import build_sipe

    model = build_sipe("resnet18", num_classes=3, weights=None).eval()
    ds = _Photos(7)
    data = write_presence(model, ds, tmp_path / PRESENCE_FILE, threshold=0.4, max_images=4)
    assert json.loads((tmp_path / PRESENCE_FILE).read_text()) == data
    assert data["class_names"] == ["circle", "square"] and data["score_threshold"] == 0.4
    assert data["images_total"] == 7 and [im["name"] for im in data["images"]] == ["im0", "im2", "im4", "im6"]
    assert [im["tags"] for im in data["images"]] == [[], ["circle"], [], ["circle", "square"]]
    np.testing.assert_allclose(data["images"][1]["scores"], classifier_scores(model, ds.images[2]), atol=1e-6)
    # a random network does not separate anything: the flag fires on the file it wrote
    contents = _contents(tmp_path)
    (contents.run_dir / PRESENCE_FILE).write_text((tmp_path / PRESENCE_FILE).read_text())
    assert "classifier_not_separated" in _codes(contents)
