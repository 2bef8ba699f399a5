"""Evaluation: confusion matrices against hand-computed values, CAM sweeps, file formats, reports, CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from sipe import io as sio
from sipe.data.cam_format import find_cam_file, is_cam_to_label, read_cam_file, write_cam_file
from sipe.data.image import read_label_png
from sipe.metrics import ConfusionMatrix, evaluate_cam, evaluate_is_cam, evaluate_label_dir, format_report, write_report

# gt / pred pairs, read column by column in the comment below:
# (0,0) (0,1) (1,1) | (1,1) (2,2) (2,0) | (255,2) ignored-gt (2,2) (0,255) ignored-pred
GT = np.array([[0, 0, 1], [1, 2, 2], [255, 2, 0]], dtype=np.uint8)
PRED = np.array([[0, 1, 1], [1, 2, 0], [2, 2, 255]], dtype=np.uint8)
EXPECTED = np.array([[1, 1, 0], [0, 2, 0], [1, 0, 2]])


def _load_cam_file(path):
    f = read_cam_file(path)
    return f.keys, f.maps


def _cam_to_label(keys, maps, threshold):
    """The official rule (a background channel of constant ``threshold`` prepended, argmax, ties to
    the background): the reference that evaluate_cam's one-pass sweep is checked against."""
    if maps.shape[0] == 0:
        return np.zeros(maps.shape[1:], dtype=np.int64)
    padded = np.concatenate([np.full((1, *maps.shape[1:]), threshold, maps.dtype), maps])
    return np.concatenate([[0], keys])[np.argmax(padded, axis=0)]


class TinyDataset:
    """Stand-in for a sipe dataset: items are dicts with image, labels, name, mask; has class_names."""

    def __init__(self, masks: dict[str, np.ndarray | None], class_names: list[str]) -> None:
        self.class_names = class_names
        self.names = list(masks)
        self._masks = masks

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int) -> dict:
        name = self.names[i]
        mask = self._masks[name]
        shape = (4, 4) if mask is None else mask.shape
        return {
            "image": np.zeros((*shape, 3), np.uint8),
            "labels": np.zeros(len(self.class_names) - 1, np.float32),
            "name": name,
            "mask": mask,
        }


class MaskReadingDataset(TinyDataset):
    """Like a sipe ``SegDataset``: ``read_mask(i)`` reads the mask alone, so evaluation never decodes images."""

    def __getitem__(self, i: int) -> dict:
        raise AssertionError("evaluation should not decode images when read_mask exists")

    def read_mask(self, i: int) -> np.ndarray | None:
        return self._masks[self.names[i]]


NAMES3 = ["background", "cat", "dog"]


# ---------------------------------------------------------------- confusion matrix
def test_confusion_matrix_hand_computed():
    cm = ConfusionMatrix(3)
    cm.update(PRED, GT)
    assert cm.matrix.dtype == np.int64
    np.testing.assert_array_equal(cm.matrix, EXPECTED)
    np.testing.assert_allclose(cm.iou(), [1 / 3, 2 / 3, 2 / 3])
    np.testing.assert_allclose(cm.precision(), [1 / 2, 2 / 3, 1.0])
    np.testing.assert_allclose(cm.recall(), [1 / 2, 1.0, 2 / 3])
    assert cm.miou() == pytest.approx(5 / 9)
    assert cm.pixel_accuracy() == pytest.approx(5 / 7)
    cm.update(PRED, GT)  # accumulates
    np.testing.assert_array_equal(cm.matrix, 2 * EXPECTED)


def test_confusion_matrix_nan_handling():
    # Class 3 appears nowhere: its IoU is undefined and left out of the mean.
    cm = ConfusionMatrix(4)
    cm.update(PRED, GT)
    iou = cm.iou()
    assert math.isnan(iou[3]) and math.isnan(cm.precision()[3]) and math.isnan(cm.recall()[3])
    assert cm.miou() == pytest.approx(5 / 9)
    # Predicted but absent from the ground truth: IoU 0, counted in the mean; recall undefined.
    cm.update(np.array([3]), np.array([0]))
    assert cm.iou()[3] == 0.0
    assert math.isnan(cm.recall()[3]) and cm.precision()[3] == 0.0
    assert cm.iou()[0] == pytest.approx(1 / 4)  # tp 1, gt 3, pred 2
    assert cm.miou() == pytest.approx((1 / 4 + 2 / 3 + 2 / 3 + 0) / 4)
    empty = ConfusionMatrix(3)
    assert math.isnan(empty.miou()) and math.isnan(empty.pixel_accuracy())


def test_confusion_matrix_torch_matches_numpy_and_rejects_bad_values():
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 5, (3, 17, 13))
    gt[0, :2] = 255
    pred = rng.integers(0, 5, (3, 17, 13))
    a, b = ConfusionMatrix(5), ConfusionMatrix(5)
    a.update(pred, gt)
    b.update(torch.from_numpy(pred), torch.from_numpy(gt))
    np.testing.assert_array_equal(a.matrix, b.matrix)
    assert a.matrix.sum() == gt.size - 2 * 13
    with pytest.raises(ValueError, match=r"prediction holds values \[7\]"):
        a.update(np.array([7]), np.array([0]))
    with pytest.raises(ValueError, match=r"ground truth holds values \[9\]"):
        b.update(torch.tensor([0]), torch.tensor([9]))
    with pytest.raises(ValueError, match="shape"):
        a.update(np.zeros((2, 2)), np.zeros((2, 3)))


def test_report_and_format_table():
    cm = ConfusionMatrix(4)
    cm.update(PRED, GT)
    rep = cm.report(NAMES3 + ["bird"])
    assert rep["miou"] == pytest.approx(5 / 9)
    assert rep["num_pixels"] == 7
    assert rep["classes"][1] == {
        "index": 1,
        "name": "cat",
        "iou": pytest.approx(2 / 3),
        "precision": pytest.approx(2 / 3),
        "recall": 1.0,
        "gt_pixels": 2,
        "pred_pixels": 3,
    }
    assert rep["classes"][3]["iou"] is None
    assert rep["confusion_matrix"][2] == [1, 0, 2, 0]
    table = format_report(cm.report(NAMES3 + ["bird"]))
    assert "mIoU 55.56" in table
    lines = table.splitlines()
    assert lines[3].split() == ["2", "dog", "66.67", "100.00", "66.67"]
    assert lines[4].split() == ["3", "bird", "-", "-", "-"]
    with pytest.raises(ValueError, match="2 class names given for 4 classes"):
        cm.report(["a", "b"])


def test_write_report_json(tmp_path):
    cm = ConfusionMatrix(4)
    cm.update(PRED, GT)
    path = tmp_path / "sub" / "report.json"
    write_report(path, {"extra": np.float32(0.5), "nan": float("nan"), **cm.report()})
    data = json.loads(path.read_text())
    assert data["miou"] == pytest.approx(5 / 9)
    assert data["nan"] is None and data["extra"] == 0.5
    assert data["classes"][3]["iou"] is None
    assert [p.name for p in path.parent.iterdir()] == ["report.json"]  # no temporary left behind


# ---------------------------------------------------------------- CAM files
def _is_cam_example():
    keys = np.array([0, 2], dtype=np.int64)  # background and class 2 ("dog"); class 1 absent
    maps = np.zeros((2, 2, 3), dtype=np.float32)
    maps[0] = [[0.9, 0.2, 0.1], [0.5, 0.5, 0.3]]
    maps[1] = [[0.1, 0.8, 0.4], [0.6, 0.4, 0.3]]  # ties go to the first channel (background)
    expected = np.array([[0, 2, 2], [2, 0, 0]])
    return keys, maps, expected


def test_is_cam_argmax_through_keys():
    keys, maps, expected = _is_cam_example()
    np.testing.assert_array_equal(is_cam_to_label(keys, maps), expected)


def test_cam_file_formats_round_trip(tmp_path):
    keys, maps, _ = _is_cam_example()
    sio.save_npz(tmp_path / "a.npz", keys=keys, maps=maps.astype(np.float16), kind=np.array("is_cam"))
    sio.save_npy_dict(tmp_path / "b.npy", {"keys": keys, "IS_CAM": maps})  # official SIPE layout
    sio.save_npy_dict(tmp_path / "c.npy", {"keys": np.array([1]), "cam": maps[:1], "high_res": maps[1:]})  # IRN
    sio.save_npz(tmp_path / "d.npz", keys=np.array([2]), maps=maps[1:])  # no kind: inferred from keys
    sio.save_npz(tmp_path / "e.npz", keys=np.array([2]), maps=maps[1:], kind=np.array(b"cam"))
    for name in ("a.npz", "b.npy"):
        k, m = _load_cam_file(tmp_path / name)
        assert k.dtype == np.int64 and m.dtype == np.float32 and m.shape == (2, 2, 3)
        np.testing.assert_array_equal(k, keys)
        np.testing.assert_allclose(m, maps, atol=1e-3)
        assert read_cam_file(tmp_path / name).kind == "is_cam"
    irn = read_cam_file(tmp_path / "c.npy")
    assert irn.kind == "cam" and irn.keys.tolist() == [2]  # IRN counts foreground classes from 0
    np.testing.assert_array_equal(irn.maps, maps[1:])
    assert read_cam_file(tmp_path / "d.npz").kind == "cam"
    assert read_cam_file(tmp_path / "e.npz").kind == "cam"
    assert find_cam_file(tmp_path, "a") == tmp_path / "a.npz"
    assert find_cam_file(tmp_path, "zzz") is None


@pytest.mark.parametrize("suffix", [".npz", ".npy"])
@pytest.mark.parametrize("kind", ["is_cam", "cam"])
def test_write_cam_file_round_trip(tmp_path, suffix, kind):
    keys = np.array([0, 3]) if kind == "is_cam" else np.array([1, 3])
    maps = np.random.default_rng(0).random((2, 5, 4)).astype(np.float32)
    write_cam_file(tmp_path / f"a{suffix}", keys, maps, kind)
    f = read_cam_file(tmp_path / f"a{suffix}")
    assert f.kind == kind and f.keys.tolist() == keys.tolist()
    np.testing.assert_allclose(f.maps, maps, atol=1e-3 if suffix == ".npz" else 0)
    if suffix == ".npy":  # the official layouts
        d = np.load(tmp_path / "a.npy", allow_pickle=True).item()
        assert sorted(d) == (["IS_CAM", "keys"] if kind == "is_cam" else ["high_res", "keys"])
        assert d["keys"].tolist() == (keys.tolist() if kind == "is_cam" else (keys - 1).tolist())
    with pytest.raises(ValueError, match="background 0" if kind == "is_cam" else "foreground classes only"):
        write_cam_file(tmp_path / f"b{suffix}", np.array([1, 0]), maps, kind)


def test_cam_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "broken.npz"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ValueError, match=r"broken\.npz.*rerun `sipe cam`"):
        _load_cam_file(bad)
    trunc = tmp_path / "trunc.npy"
    sio.save_npy_dict(trunc, {"keys": np.array([0]), "IS_CAM": np.zeros((1, 4, 4), np.float32)})
    trunc.write_bytes(trunc.read_bytes()[:60])
    with pytest.raises(ValueError, match=r"trunc\.npy"):
        _load_cam_file(trunc)
    with pytest.raises(FileNotFoundError, match=r"nothere\.npz"):
        _load_cam_file(tmp_path / "nothere.npz")
    sio.save_npz(tmp_path / "shape.npz", keys=np.array([0, 1]), maps=np.zeros((3, 2, 2)))
    with pytest.raises(ValueError, match=r"shape\.npz.*M = len\(keys\) = 2"):
        _load_cam_file(tmp_path / "shape.npz")
    sio.save_npz(tmp_path / "nobg.npz", keys=np.array([1]), maps=np.zeros((1, 2, 2)), kind=np.array("is_cam"))
    with pytest.raises(ValueError, match="background channel"):
        _load_cam_file(tmp_path / "nobg.npz")


@pytest.mark.parametrize("dataset_cls", [TinyDataset, MaskReadingDataset])
def test_evaluate_is_cam_both_formats(tmp_path, dataset_cls):
    keys, maps, expected = _is_cam_example()
    gt = np.array([[0, 2, 1], [2, 255, 0]], dtype=np.uint8)
    ds = dataset_cls({"x": gt, "y": gt, "nomask": None}, NAMES3)
    sio.save_npz(tmp_path / "x.npz", keys=keys, maps=maps.astype(np.float16), kind=np.array("is_cam"))
    sio.save_npy_dict(tmp_path / "y.npy", {"keys": keys, "IS_CAM": maps})
    rep = evaluate_is_cam(tmp_path, ds)
    cm = ConfusionMatrix(3)
    cm.update(expected, gt)
    cm.update(expected, gt)
    assert rep["confusion_matrix"] == cm.matrix.tolist()
    # per image: (0,0) (2,2) (1,2) (2,2) (0,0): bg iou 1, cat iou 0, dog 2/3
    assert rep["miou"] == pytest.approx((1 + 0 + 2 / 3) / 3)
    assert (rep["num_images"], rep["skipped"], rep["missing"], rep["kind"]) == (2, 1, 0, "is_cam")
    assert evaluate_is_cam(tmp_path, ds, names=["y"])["num_pixels"] == 5
    with pytest.raises(ValueError, match="not in the dataset"):
        evaluate_is_cam(tmp_path, ds, names=["y", "q"])


def test_evaluate_missing_prediction_and_masks(tmp_path):
    keys, maps, _ = _is_cam_example()
    gt = np.zeros((2, 3), np.uint8)
    ds = TinyDataset({"x": gt, "gone": gt}, NAMES3)
    sio.save_npz(tmp_path / "x.npz", keys=keys, maps=maps, kind=np.array("is_cam"))
    rep = evaluate_is_cam(tmp_path, ds)  # a missing prediction is a failure listed at the end, not a stop
    assert (rep["num_images"], rep["missing"]) == (1, 0)
    assert [f["name"] for f in rep["failed"]] == ["gone"] and rep["failed"][0]["reason"].startswith("missing: ")
    rep = evaluate_is_cam(tmp_path, ds, missing="skip")
    assert (rep["num_images"], rep["missing"], rep["failed"]) == (1, 1, [])
    with pytest.raises(ValueError, match="no image of this split has a ground-truth mask"):
        evaluate_is_cam(tmp_path, TinyDataset({"x": None}, NAMES3))
    with pytest.raises(ValueError, match=r"x\.npz holds IS-CAMs \(kind 'is_cam'\)"):
        evaluate_cam(tmp_path, TinyDataset({"x": gt}, NAMES3))
    mismatch = r"all 1 failed.*size mismatch: .*x\.npz is 2x3 but the ground-truth mask is 3x3"
    with pytest.raises(ValueError, match=mismatch):
        evaluate_is_cam(tmp_path, TinyDataset({"x": np.zeros((3, 3), np.uint8)}, NAMES3))


# ---------------------------------------------------------------- CAM threshold sweep
def test_cam_sweep_picks_the_right_threshold(tmp_path):
    # Foreground (cat) pixels score 0.5 and 0.42, background pixels 0.37 and 0.2:
    # 0.37-0.41 are the thresholds of the default sweep that label every pixel correctly (a score
    # equal to the threshold is background, as in the official argmax with background first); the
    # first wins.
    gt = np.array([[1, 1, 0, 0]], dtype=np.uint8)
    maps = np.array([[[0.5, 0.42, 0.37, 0.2]]], dtype=np.float32)
    sio.save_npz(tmp_path / "x.npz", keys=np.array([1]), maps=maps, kind=np.array("cam"))
    ds = TinyDataset({"x": gt}, NAMES3)
    rep = evaluate_cam(tmp_path, ds)
    assert rep["threshold"] == pytest.approx(0.37)
    assert rep["miou"] == pytest.approx(1.0)
    sweep = {round(s["threshold"], 2): s["miou"] for s in rep["sweep"]}
    assert len(sweep) == 96 and min(sweep) == 0.0 and max(sweep) == 0.95
    assert [t for t, m in sweep.items() if m == pytest.approx(1.0)] == [0.37, 0.38, 0.39, 0.40, 0.41]
    # t=0.35: bg pixel 0.37 turns cat -> bg iou 1/2, cat iou 2/3; t=0.45: cat pixel 0.42 lost -> 2/3, 1/2
    assert sweep[0.35] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert sweep[0.45] == pytest.approx((2 / 3 + 1 / 2) / 2)
    # t >= 0.5: everything background -> bg iou 1/2, cat iou 0
    assert sweep[0.5] == pytest.approx(0.25) and sweep[0.9] == pytest.approx(0.25)
    assert rep["confusion_matrix"] == [[2, 0, 0], [0, 2, 0], [0, 0, 0]]


def test_cam_sweep_matches_brute_force(tmp_path):
    rng = np.random.default_rng(3)
    masks = {}
    for i in range(3):
        h, w = 9 + i, 7
        gt = rng.integers(0, 4, (h, w)).astype(np.uint8)
        gt[0, :3] = 255
        keys = np.sort(rng.choice([1, 2, 3], size=i, replace=False)).astype(np.int64)  # image 0 has no class
        maps = rng.random((i, h, w)).astype(np.float16)
        sio.save_npz(tmp_path / f"im{i}.npz", keys=keys, maps=maps, kind=np.array("cam"))
        masks[f"im{i}"] = gt
    ds = TinyDataset(masks, ["bg", "a", "b", "c"])
    thresholds = [0.6, 0.1, 0.35, 0.8]  # unsorted on purpose
    rep = evaluate_cam(tmp_path, ds, thresholds=thresholds)
    mious = []
    for t in thresholds:
        cm = ConfusionMatrix(4)
        for name, gt in masks.items():
            keys, maps = _load_cam_file(tmp_path / f"{name}.npz")
            cm.update(_cam_to_label(keys, maps, t), gt)
        mious.append(cm.miou())
        if t == rep["threshold"]:
            assert rep["confusion_matrix"] == cm.matrix.tolist()
    assert [s["threshold"] for s in rep["sweep"]] == thresholds
    np.testing.assert_allclose([s["miou"] for s in rep["sweep"]], mious)
    assert rep["threshold"] == thresholds[int(np.argmax(mious))]


def test_cam_sweep_ties_go_to_background(tmp_path):
    # A score equal to the threshold is background (the official argmax picks the padded channel first).
    gt = np.array([[1, 0]], dtype=np.uint8)
    maps = np.array([[[0.3, 0.3]]], dtype=np.float32)
    write_cam_file(tmp_path / "x.npy", [1], maps, "cam")
    rep = evaluate_cam(tmp_path, TinyDataset({"x": gt}, NAMES3), thresholds=[0.3, 0.25])
    assert [s["miou"] for s in rep["sweep"]] == [pytest.approx(0.25), pytest.approx(0.25)]
    assert rep["confusion_matrix"] == [[1, 0, 0], [1, 0, 0], [0, 0, 0]]  # t=0.3: all background
    # t=0.25: both pixels cat -> bg iou 0, cat iou 1/2


def test_cam_to_label_official_tie_rule():
    maps = np.array([[[0.3, 0.31]], [[0.1, 0.5]]], dtype=np.float32)
    np.testing.assert_array_equal(_cam_to_label(np.array([4, 7]), maps, 0.3), [[0, 7]])
    np.testing.assert_array_equal(_cam_to_label(np.zeros(0, np.int64), np.zeros((0, 2, 2)), 0.3), np.zeros((2, 2)))


# ---------------------------------------------------------------- label PNGs
def test_evaluate_label_dir_palette_and_rgb_pngs(tmp_path):
    gt = np.array([[0, 1, 2], [2, 2, 255]], dtype=np.uint8)
    pred_a = np.array([[0, 1, 1], [2, 255, 0]], dtype=np.uint8)  # 255 in a prediction is not counted
    pred_b = np.array([[0, 1, 2], [2, 2, 1]], dtype=np.uint8)
    sio.save_label_png(tmp_path / "a.png", pred_a)
    rgb = sio.voc_palette()[pred_b]  # an RGB colour-coded PNG decodes through the palette
    sio.save_image(tmp_path / "b.png", rgb)
    assert Image.open(tmp_path / "a.png").mode == "P" and Image.open(tmp_path / "b.png").mode == "RGB"
    np.testing.assert_array_equal(read_label_png(tmp_path / "b.png"), pred_b)
    rep = evaluate_label_dir(tmp_path, TinyDataset({"a": gt, "b": gt}, NAMES3))
    # a: (0,0) (1,1) (2,1) (2,2) [ (2,255) dropped, (255,0) dropped ];  b: (0,0) (1,1) (2,2) (2,2) (2,2)
    assert rep["confusion_matrix"] == [[2, 0, 0], [0, 2, 0], [0, 1, 4]]
    assert rep["classes"][1]["iou"] == pytest.approx(2 / 3)
    assert rep["classes"][2]["iou"] == pytest.approx(4 / 5)
    assert rep["miou"] == pytest.approx((1 + 2 / 3 + 4 / 5) / 3)
    assert rep["kind"] == "labels" and rep["num_images"] == 2
    sio.save_image(tmp_path / "c.png", np.full((2, 3, 3), 7, np.uint8))
    with pytest.raises(ValueError, match=r"c\.png holds colour \[7, 7, 7\]"):
        read_label_png(tmp_path / "c.png")
    sio.save_label_png(tmp_path / "d.png", np.full((2, 3), 9, np.uint8))
    with pytest.raises(ValueError, match=r"d\.png: prediction holds values \[9\]"):
        evaluate_label_dir(tmp_path, TinyDataset({"d": gt}, NAMES3))


# ---------------------------------------------------------------- CLI
def test_cli_eval_end_to_end(tmp_path, monkeypatch, capsys):
    import sipe.data
    from sipe.cli import main

    gt = np.array([[0, 1, 2], [2, 2, 255]], dtype=np.uint8)
    ds = TinyDataset({"a": gt}, NAMES3)
    calls = []

    def fake_build(kind, root, split, **kw):
        calls.append((kind, root, split, kw))
        return ds

    monkeypatch.setattr(sipe.data, "build_dataset", fake_build, raising=False)
    sio.save_label_png(tmp_path / "pred" / "a.png", gt)
    out = tmp_path / "rep.json"
    argv = ["eval", "--dataset", "custom", "--root", str(tmp_path), "--split", "l.csv"]
    rc = main(argv + ["--pred", str(tmp_path / "pred"), "--kind", "labels", "--out", str(out)])
    assert rc == 2 and "needs --split LABELS_FILE and --mask-dir DIR" in capsys.readouterr().err
    argv += ["--mask-dir", "m"]
    rc = main(argv + ["--pred", str(tmp_path / "pred"), "--kind", "labels", "--out", str(out)])
    assert rc == 0
    # a custom dataset's split is its labels file
    assert calls == [("custom", str(tmp_path), "l.csv", {"mask_dir": "m"})]
    printed = capsys.readouterr().out
    assert "mIoU 100.00" in printed and "  1  cat" in printed
    data = json.loads(out.read_text())
    assert data["miou"] == 1.0 and data["kind"] == "labels" and data["split"] == "l.csv"

    keys = np.array([1, 2])
    maps = np.stack([(gt == 1) * 0.9, (gt == 2) * 0.7]).astype(np.float32)
    sio.save_npz(tmp_path / "cam" / "a.npz", keys=keys, maps=maps, kind=np.array("cam"))
    voc = ["eval", "--dataset", "voc", "--root", "r", "--pred", str(tmp_path / "cam")]
    rc = main(voc + ["--kind", "cam", "--thresholds", "0.5", "0.8"])
    assert rc == 0
    assert "best background threshold 0.50" in capsys.readouterr().out
    assert calls[-1] == ("voc", "r", "train", {})
    rc = main(voc + ["--kind", "is_cam"])
    assert rc == 1
    assert "kind 'cam'" in capsys.readouterr().err
    # The custom-dataset options are refused elsewhere (a usage error), and --class-names reaches the dataset.
    n_calls = len(calls)
    assert main(voc + ["--kind", "cam", "--mask-dir", "m"]) == 2
    assert "--mask-dir applies to --dataset custom only" in capsys.readouterr().err
    assert len(calls) == n_calls
    assert main(argv + ["--class-names", "cat, dog", "--pred", str(tmp_path / "pred"), "--kind", "labels"]) == 0
    assert calls[-1] == ("custom", str(tmp_path), "l.csv", {"mask_dir": "m", "class_names": ["cat", "dog"]})


def test_cli_eval_on_a_real_synthetic_split(tmp_path, capsys):
    from sipe.cli import main
    from sipe.data import build_dataset, generate_synthetic

    root = generate_synthetic(tmp_path / "syn", seed=0, n_train=1, n_val=3, image_size=(40, 56), progress=False)
    ds = build_dataset("synthetic", root, "val")
    k = len(ds.class_names)
    for i, name in enumerate(ds.names):
        gt = ds[i]["mask"]
        sio.save_label_png(tmp_path / "labels" / f"{name}.png", gt)
        onehot = (np.arange(k)[:, None, None] == gt[None]).astype(np.float32)
        present = [c for c in range(1, k) if (gt == c).any()]
        write_cam_file(tmp_path / "is_cam" / f"{name}.npz", [0, *present], onehot[[0, *present]], "is_cam")
        if i < 2:  # the third image has no CAM file
            write_cam_file(tmp_path / "cam" / f"{name}.npy", present, 0.6 * onehot[present], "cam")
    base = ["eval", "--dataset", "synthetic", "--root", str(root), "--split", "val"]
    for kind in ("labels", "is_cam"):
        out = tmp_path / f"{kind}.json"
        assert main(base + ["--pred", str(tmp_path / kind), "--kind", kind, "--out", str(out)]) == 0
        rep = json.loads(out.read_text())
        assert rep["miou"] == 1.0 and rep["num_images"] == 3 and rep["kind"] == kind
        assert rep["num_pixels"] == sum(int((ds[i]["mask"] != 255).sum()) for i in range(3))
    assert "mIoU 100.00" in capsys.readouterr().out
    assert main(base + ["--pred", str(tmp_path / "cam"), "--kind", "cam"]) == 1
    assert "val_00002" in capsys.readouterr().err
    out = tmp_path / "cam.json"
    assert main(base + ["--pred", str(tmp_path / "cam"), "--kind", "cam", "--skip-missing", "--out", str(out)]) == 0
    rep = json.loads(out.read_text())
    assert rep["miou"] == 1.0 and rep["threshold"] == pytest.approx(0.0) and rep["missing"] == 1
    assert [s["miou"] for s in rep["sweep"]][-1] < 1.0  # 0.9 > 0.6: everything background
    assert main(["eval", "--dataset", "voc", "--root", str(tmp_path / "nope"), "--pred", "x", "--kind", "labels"]) == 1
    assert "nope" in capsys.readouterr().err
