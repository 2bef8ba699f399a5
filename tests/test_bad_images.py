"""One policy for bad images in every command: decoded in full once (cached), skipped by name and
reason, listed in the run folder's skipped.tsv, exit 1 when nothing was written."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import save_seg_checkpoint, tiny_seg_model
from sipe.cli import main
from sipe.data import build_dataset
from sipe.data.image import ImageReadError, decoded_size, image_size

pytestmark = pytest.mark.usefixtures("one_thread")

CLASSES = ["cat", "dog"]


def _truncated_jpeg(path: Path) -> Path:
    """A JPEG whose header (and size) reads fine but whose pixel data stops half way."""
    buf = io.BytesIO()
    rng = np.random.default_rng(3)
    Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
    data = buf.getvalue()
    path.write_bytes(data[: len(data) // 2])
    return path


def _photos(root: Path, n_good: int = 8) -> Path:
    """``root`` with ``n_good`` good photos, ``trunc.jpg`` (truncated), ``tiny.png`` (1x1) and labels.csv."""
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n_good):
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(root / f"g{i}.jpg")
        rows.append((f"g{i}.jpg", CLASSES[i % 2]))
    _truncated_jpeg(root / "trunc.jpg")
    Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(root / "tiny.png")
    rows += [("trunc.jpg", "cat"), ("tiny.png", "dog")]
    (root / "labels.csv").write_text("image,labels\n" + "".join(f"{a},{b}\n" for a, b in rows))
    return root


def _tsv(path: Path) -> dict[str, dict[str, str]]:
    with path.open(newline="") as f:
        return {r["name"]: r for r in csv.DictReader(f, delimiter="\t")}


def _sipe_checkpoint(path: Path) -> Path:
    import torch

    from sipe.models import build_sipe
    from sipe.models.checkpoint import write_checkpoint

    torch.manual_seed(0)
    model = build_sipe("resnet18", 3, weights=None)
    write_checkpoint(path, model.state_dict(), {"class_names": ["background", *CLASSES], "backbone": "resnet18",
                                                "num_classes": 3, "sipe_config": {"model": {"backbone": "resnet18"}}})
    return path


def test_truncated_jpeg_passes_the_header_but_not_the_full_decode(tmp_path):
    bad = _truncated_jpeg(tmp_path / "t.jpg")
    assert image_size(bad) == (48, 64)
    with pytest.raises(ImageReadError, match="t.jpg.*truncated"):
        decoded_size(bad)


def test_drop_small_decodes_once_and_caches_the_outcome(tmp_path, monkeypatch):
    root = _photos(tmp_path / "photos", n_good=3)
    ds = build_dataset("custom", root, "labels.csv")
    assert ds.drop_small(16) == 2
    assert ds.names == ["g0", "g1", "g2"]
    assert dict(ds.skipped.items) == {"trunc": "unreadable", "tiny": "smaller than 16 px"}
    assert (root / ".sipe_cache" / "image_checks_exif.json").is_file()

    # A second run decodes nothing: every outcome comes from the cache.
    import sipe.data.seg_dataset as base

    def no_decoding(*a, **k):
        raise AssertionError("decoded again")

    monkeypatch.setattr(base, "decoded_size", no_decoding)
    again = build_dataset("custom", root, "labels.csv")
    assert again.drop_small(16) == 2 and again.names == ds.names
    # ... until a file changes (size / mtime): then that file alone is decoded again.
    monkeypatch.undo()
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(root / "tiny.png")
    third = build_dataset("custom", root, "labels.csv")
    assert third.drop_small(16) == 1 and "tiny" in third.names


def test_sipe_train_skips_bad_images_and_lists_them(tmp_path, capsys):
    root = _photos(tmp_path / "photos")
    run = tmp_path / "run"
    args = [
        "train", "--out", str(run), "data.kind=custom", f"data.root={root}", "data.split=labels.csv",
        "data.val_split=null", "model.backbone=resnet18", "model.weights=null", "aug.resize_long=[48, 64]",
        "aug.crop_size=32", "engine.batch_size=4", "engine.epochs=1", "engine.num_workers=1",
        "engine.progress=false", "engine.device=cpu",
    ]  # fmt: skip
    assert main(args) == 0
    import torch

    assert torch.load(run / "checkpoints" / "final.pt", weights_only=False)["step"] == 2  # 8 good images / 4
    rows = _tsv(run / "skipped.tsv")
    assert set(rows) == {"trunc", "tiny"}
    assert rows["trunc"]["reason"] == "unreadable" and rows["trunc"]["path"] == str((root / "trunc.jpg").resolve())
    assert "truncated" in rows["trunc"]["detail"]
    assert rows["tiny"]["reason"] == "smaller than 16 px" and "1x1" in rows["tiny"]["detail"]


def test_sipe_seg_train_skips_bad_images_and_lists_them(tmp_path):
    root = _photos(tmp_path / "photos", n_good=5)
    labels = tmp_path / "pseudo"
    labels.mkdir()
    for name in ("g0", "g1", "g2", "g3", "trunc", "tiny"):  # g4 has no pseudo label
        Image.fromarray(np.ones((48, 64) if name != "tiny" else (1, 1), np.uint8)).save(labels / f"{name}.png")
    run = tmp_path / "seg"
    assert main([
        "seg", "train", "--out", str(run), f"pseudo_labels={labels}", "missing_labels=skip", "data.kind=custom",
        f"data.root={root}", "data.split=labels.csv", "model.backbone=resnet18", "model.weights=null",
        "aug.crop_size=32", "engine.batch_size=2", "engine.epochs=1", "engine.min_steps=null", "engine.num_workers=1",
        "engine.progress=false", "engine.device=cpu",
    ]) == 0  # fmt: skip
    import torch

    assert torch.load(run / "checkpoints" / "final.pt", weights_only=False)["step"] == 2  # 4 usable images / 2
    rows = _tsv(run / "skipped.tsv")
    assert {n: r["reason"] for n, r in rows.items()} == {
        "trunc": "unreadable", "tiny": "smaller than 16 px", "g4": "no pseudo label"}


def test_sipe_cam_skips_bad_images_by_name(tmp_path, capsys):
    root = _photos(tmp_path / "photos", n_good=2)
    ckpt = _sipe_checkpoint(tmp_path / "sipe.pt")
    out = tmp_path / "cams"
    cmd = ["cam", "--checkpoint", str(ckpt), "--dataset", "custom", "--root", str(root), "--split", "labels.csv",
           "--out", str(out), "--scales", "1.0", "--workers", "0", "--device", "cpu"]
    assert main(cmd) == 0, capsys.readouterr().err
    assert sorted(p.stem for p in (out / "is_cam").iterdir()) == ["g0", "g1"]
    rows = _tsv(out / "skipped.tsv")
    assert {n: r["reason"] for n, r in rows.items()} == {"trunc": "unreadable", "tiny": "smaller than 16 px"}


def test_predict_skips_bad_images_by_name_and_fails_when_nothing_is_written(tmp_path, capsys):
    root = _photos(tmp_path / "photos", n_good=2)
    (root / "labels.csv").unlink()
    model, spec = tiny_seg_model(["background", *CLASSES])
    ckpt = save_seg_checkpoint(model, spec, tmp_path / "seg.pt")
    out = tmp_path / "pred"
    assert main(["predict", str(root), "--checkpoint", str(ckpt), "--out", str(out), "--device", "cpu"]) == 0
    assert sorted(p.name for p in out.glob("*.png")) == ["g0.png", "g1.png"]
    rows = _tsv(out / "skipped.tsv")
    assert {n: r["reason"] for n, r in rows.items()} == {"trunc.jpg": "unreadable", "tiny.png": "too small"}
    assert rows["tiny.png"]["path"] == str(root / "tiny.png")
    assert "listed in" in capsys.readouterr().out

    bad = tmp_path / "bad"
    bad.mkdir()
    _truncated_jpeg(bad / "t.jpg")
    Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(bad / "one.png")
    out2 = tmp_path / "pred2"
    assert main(["predict", str(bad), "--checkpoint", str(ckpt), "--out", str(out2), "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert "no mask written" in err and "skipped.tsv" in err and "Traceback" not in err
    assert set(_tsv(out2 / "skipped.tsv")) == {"t.jpg", "one.png"}


def test_seg_eval_skips_unreadable_images_by_name(tmp_path, capsys):
    root = _photos(tmp_path / "photos", n_good=2)
    masks = tmp_path / "masks"
    masks.mkdir()
    for name, size in (("g0", (48, 64)), ("g1", (48, 64)), ("trunc", (48, 64)), ("tiny", (1, 1))):
        Image.fromarray(np.zeros(size, np.uint8)).save(masks / f"{name}.png")
    model, spec = tiny_seg_model(["background", *CLASSES])
    ckpt = save_seg_checkpoint(model, spec, tmp_path / "seg.pt")
    out = tmp_path / "eval.json"
    assert main(["seg", "eval", "--dataset", "custom", "--root", str(root), "--split", "labels.csv", "--mask-dir",
                 str(masks), "--checkpoint", str(ckpt), "--out", str(out), "--device", "cpu"]) == 0, \
        capsys.readouterr().err
    report = json.loads(out.read_text())
    assert (report["num_images"], report["skipped_unreadable"]) == (3, 1)  # the 1x1 image is evaluated


def test_refine_jobs_skip_bad_images_by_name(tmp_path):
    from sipe.refine._runner import run_label_job

    root = _photos(tmp_path / "photos", n_good=2)
    ds = build_dataset("custom", root, "labels.csv")
    out = tmp_path / "regions"
    stats = run_label_job(ds, lambda item: np.zeros(item["image"].shape[:2], np.uint8), out, num_workers=0)
    # (a 1x1 image is a valid input of a per-pixel job; `sipe cam` has skipped it before, by name)
    assert (stats.written, stats.skipped, len(stats.bad)) == (3, 0, 1)
    assert sorted(p.name for p in out.glob("*.png")) == ["g0.png", "g1.png", "tiny.png"]
    rows = _tsv(out / "skipped.tsv")
    assert {n: r["reason"] for n, r in rows.items()} == {"trunc": "unreadable"}
    assert rows["trunc"]["path"] == str(root / "trunc.jpg") and "truncated" in rows["trunc"]["detail"]


@pytest.mark.slow
def test_sigterm_to_sipe_train_saves_last_and_the_rerun_finishes_the_same_model(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    import torch

    root = _photos(tmp_path / "photos")
    common = [
        "data.kind=custom", f"data.root={root}", "data.split=labels.csv", "data.val_split=null",
        "model.backbone=resnet18", "model.weights=null", "aug.resize_long=[48, 64]", "aug.crop_size=32",
        "engine.batch_size=4", "engine.epochs=15", "engine.ckpt_every=1", "engine.num_workers=0",
        "engine.progress=false", "engine.device=cpu",
    ]  # fmt: skip
    assert main(["train", "--out", str(tmp_path / "full"), *common]) == 0
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "sipe", "train", "--out", str(run), *common], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    last = run / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 240
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted at step" in out + err and "rerun the same command to resume" in err
    assert "Traceback" not in err
    step = torch.load(last, weights_only=False)["step"]
    assert 1 <= step < 30
    assert main(["train", "--out", str(run), *common]) == 0  # resumes at `step`
    a = torch.load(tmp_path / "full" / "checkpoints" / "final.pt", weights_only=False)["model"]
    b = torch.load(run / "checkpoints" / "final.pt", weights_only=False)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow  # the whole chain of stages on 6 images: about 20 s on 2 shared cores
def test_every_stage_after_sipe_cam_skips_what_an_earlier_stage_skipped(tmp_path, capsys):
    """Issue 21: train-irn died in its DataLoader on a truncated JPEG that sipe cam had skipped by name,
    sipe eval failed (exit 1, "missing") on it and sipe report stopped on it. Now each stage leaves it
    out by name, lists it in its skipped.tsv with the earlier reason and goes on."""
    root = _photos(tmp_path / "photos", n_good=4)
    masks = tmp_path / "masks"
    masks.mkdir()
    for name in ("g0", "g1", "g2", "g3", "trunc"):  # ground truth exists for the truncated image too
        Image.fromarray(np.zeros((48, 64), np.uint8)).save(masks / f"{name}.png")
    Image.fromarray(np.zeros((1, 1), np.uint8)).save(masks / "tiny.png")
    data = ["--dataset", "custom", "--root", str(root), "--split", "labels.csv"]
    cams = tmp_path / "cams"
    assert main(["cam", "--checkpoint", str(_sipe_checkpoint(tmp_path / "sipe.pt")), *data, "--out", str(cams),
                 "--scales", "1.0", "--workers", "0", "--device", "cpu"]) == 0
    earlier = {"trunc": "unreadable", "tiny": "smaller than 16 px"}

    regions = tmp_path / "regions"
    assert main(["refine", "crf-regions", *data, "--cam-dir", str(cams / "is_cam"), "--out", str(regions),
                 "--workers", "0"]) == 0
    assert sorted(p.stem for p in regions.glob("*.png")) == ["g0", "g1", "g2", "g3"]
    assert {n: r["reason"] for n, r in _tsv(regions / "skipped.tsv").items()} == {
        n: f"skipped earlier ({r})" for n, r in earlier.items()}

    irn = tmp_path / "irn"
    assert main(["refine", "train-irn", *data, "--label-dir", str(regions), "--out", str(irn), "backbone=resnet18",
                 "weights=null", "crop_size=32", "radius=3", "engine.batch_size=2", "engine.epochs=1",
                 "engine.num_workers=0", "engine.progress=false", "engine.device=cpu", "mean_batch_size=2"]) == 0
    rows = _tsv(irn / "skipped.tsv")
    assert {n: r["reason"] for n, r in rows.items()} == earlier  # found by its own decode check, as sipe train
    assert "truncated" in rows["trunc"]["detail"]

    pseudo = tmp_path / "pseudo"
    assert main(["refine", "labels", *data, "--cam-dir", str(cams / "is_cam"), "--irn", str(irn / "irn.pt"),
                 "--exp-times", "1", "--out", str(pseudo), "--device", "cpu"]) == 0
    assert sorted(p.stem for p in pseudo.glob("*.png")) == ["g0", "g1", "g2", "g3"]
    assert set(_tsv(pseudo / "skipped.tsv")) == {"trunc", "tiny"}
    capsys.readouterr()

    for kind, pred in (("is_cam", cams / "is_cam"), ("labels", pseudo)):
        out = tmp_path / f"eval_{kind}.json"
        assert main(["eval", *data, "--mask-dir", str(masks), "--kind", kind, "--pred", str(pred),
                     "--out", str(out)]) == 0, capsys.readouterr().err
        report = json.loads(out.read_text())
        assert (report["num_images"], report["skipped_earlier"], report["failed"]) == (4, 2, [])
        assert "2 skipped by an earlier stage" in capsys.readouterr().out

    # seg train (missing_labels=error, the default): an image the label stage listed as skipped is left out.
    (pseudo / "g3.png").unlink()
    with (pseudo / "skipped.tsv").open("a") as f:
        f.write("g3\t\tunreadable\tstand-in for a stage's own skip\n")
    seg = tmp_path / "seg"
    assert main(["seg", "train", "--out", str(seg), f"pseudo_labels={pseudo}", "data.kind=custom",
                 f"data.root={root}", "data.split=labels.csv", "model.backbone=resnet18", "model.weights=null",
                 "aug.crop_size=32", "engine.batch_size=2", "engine.epochs=1", "engine.min_steps=null",
                 "engine.num_workers=0", "engine.progress=false", "engine.device=cpu"]) == 0, capsys.readouterr().err
    assert {n: r["reason"] for n, r in _tsv(seg / "skipped.tsv").items()} == {
        **earlier, "g3": "skipped earlier (unreadable)"}
    from sipe.data.classes_file import read_classes_file

    for folder, ignore in ((pseudo, "ignore"), (regions, "uncertain")):  # 255: uncertain in confident regions
        assert read_classes_file(folder / "classes.json").names == ("background", *CLASSES)
        assert json.loads((folder / "classes.json").read_text())["ignore"]["name"] == ignore

    # Without the earlier stage's list, the same missing files are failures (exit 1), as before.
    (pseudo / "skipped.tsv").unlink()
    assert main(["eval", *data, "--mask-dir", str(masks), "--kind", "labels", "--pred", str(pseudo)]) == 1
    assert "3 of 6 images could not be evaluated" in capsys.readouterr().err

    page = tmp_path / "report.html"
    assert main(["report", str(tmp_path), *data, "--cam-dir", str(cams), "--pseudo-dir", str(regions),
                 "--out", str(page), "--num-images", "6"]) == 0, capsys.readouterr().err
    assert page.is_file() and "g3" in page.read_text() and "trunc" not in page.read_text()


def test_train_irn_refuses_images_without_a_label_that_no_stage_skipped(tmp_path, capsys):
    root = _photos(tmp_path / "photos", n_good=3)
    regions = tmp_path / "regions"
    regions.mkdir()
    Image.fromarray(np.zeros((48, 64), np.uint8)).save(regions / "g0.png")
    assert main(["refine", "train-irn", "--dataset", "custom", "--root", str(root), "--split", "labels.csv",
                 "--label-dir", str(regions), "--out", str(tmp_path / "irn"), "backbone=resnet18", "weights=null",
                 "crop_size=32", "radius=3", "engine.num_workers=0", "engine.device=cpu"]) == 1
    err = capsys.readouterr().err
    assert "2 of 3 training images have no confident-region label in" in err and "(e.g. g1, g2)" in err
    assert "Traceback" not in err
