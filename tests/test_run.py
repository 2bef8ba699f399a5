"""``sipe run`` end to end on a tiny custom folder with masks, salted with a truncated JPEG and a text file named
.jpg: outputs, each bad photo named once, rerun, refusal, a moved run folder, SIGKILL + resume."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def photo_folder(root: Path, n: int = 8, size: tuple[int, int] = (64, 80)) -> Path:
    """``n`` JPEGs of a red disc and/or a blue square on noise, ``labels.csv`` and index masks in ``masks/``."""
    rng = np.random.default_rng(0)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    rows = ["image,labels"]
    for i in range(n):
        img = rng.integers(90, 140, (*size, 3)).astype(np.uint8)
        mask = np.zeros(size, np.uint8)
        present = ["disc", "square"][: 1 + i % 2]
        y, x = 8 + 3 * (i % 4), 8 + 4 * (i % 3)
        yy, xx = np.mgrid[: size[0], : size[1]]
        disc = (yy - y - 12) ** 2 + (xx - x - 12) ** 2 <= 144
        img[disc], mask[disc] = (230, 40, 40), 1
        if "square" in present:
            img[34:58, 44:70], mask[34:58, 44:70] = (30, 30, 220), 2
        Image.fromarray(img).save(root / f"p{i}.jpg", quality=95)
        Image.fromarray(mask).save(root / "masks" / f"p{i}.png")
        rows.append(f"p{i}.jpg,{';'.join(present)}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


def tiny_run_args(root: Path) -> list[str]:
    """Overrides that shrink every stage of ``sipe run`` to seconds on a CPU (random weights)."""
    return [
        "data.kind=custom", f"data.root={root}", "data.split=labels.csv", f"data.mask_dir={root / 'masks'}",
        "data.class_names=[disc,square]",
        "train.model.backbone=resnet18", "train.model.weights=null", "train.aug.resize_long=[64,80]",
        "train.aug.crop_size=64", "train.engine.batch_size=2", "train.engine.epochs=1",
        "train.engine.num_workers=0", "train.engine.progress=false",
        "cam.scales=[1.0]", "cam.num_workers=0", "refine.num_workers=1", "refine.exp_times=2",
        "irn.backbone=resnet18", "irn.weights=null", "irn.crop_size=64", "irn.radius=5", "irn.engine.epochs=1",
        "irn.engine.batch_size=2", "irn.engine.num_workers=0", "irn.engine.progress=false",
        "seg.model.backbone=resnet18", "seg.model.weights=null", "seg.aug.crop_size=48", "seg.engine.epochs=1",
        "seg.engine.min_steps=null",
        "seg.engine.batch_size=2", "seg.engine.num_workers=0", "seg.engine.progress=false",
        "eval.num_workers=0", "eval.num_images=2", "num_threads=1",
    ]  # fmt: skip


def salt(root: Path) -> list[str]:
    """Add a truncated JPEG (with a mask) and a text file named .jpg to the folder's labels; returns their rows."""
    good = (root / "p0.jpg").read_bytes()
    (root / "cut.jpg").write_bytes(good[: len(good) // 2])
    (root / "masks" / "cut.png").write_bytes((root / "masks" / "p0.png").read_bytes())
    (root / "notes.jpg").write_text("not a photo\n")
    rows = ["cut.jpg,disc", "notes.jpg,square"]
    with (root / "labels.csv").open("a") as f:
        f.write("\n".join(rows) + "\n")
    return rows


def stamps(folder: Path) -> dict[Path, tuple[int, int]]:
    return {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in folder.rglob("*") if p.is_file()}


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """``sipe run`` on the tiny salted folder, once per module: (photo folder, run folder, overrides, log lines)."""
    from sipe.cli import main

    root = photo_folder(tmp_path_factory.mktemp("photos"))
    salt(root)
    out = tmp_path_factory.mktemp("run") / "run"
    args = tiny_run_args(root)
    records = _Records()
    logging.getLogger("sipe").addHandler(records)
    try:
        assert main(["run", "--out", str(out), *args]) == 0
    finally:
        logging.getLogger("sipe").removeHandler(records)
    return root, out, args, records.messages


def test_run_writes_model_onnx_report_and_the_four_mious(tiny_run):
    _, out, _, _ = tiny_run
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("cam_miou", "is_cam_miou", "pseudo_label_miou", "seg_miou"):
        assert 0.0 <= metrics[key] <= 1.0, key
    for stage in ("train", "cam_train", "eval_cams", "regions", "irn_train", "pseudo_labels", "seg_train",
                  "seg_eval", "export"):
        assert metrics["seconds"][stage] >= 0, stage
    assert metrics["stages_this_invocation"][-1] == "export" and "train" in metrics["stages_this_invocation"]
    assert metrics["train_images_per_class"] == {"disc": 8, "square": 4}
    assert (out / "export" / "model.onnx").stat().st_size > 1000
    import markupsafe

    from sipe.report.collect import collect_run
    from sipe.report.flags import degenerate_flags

    html = (out / "report.html").read_text()
    assert "segmentation" in html and "IS-CAM" in html
    assert all(str(markupsafe.escape(f)) in html for f in degenerate_flags(collect_run(out)))
    # This run failed (random weights, a few photos) and says so, in metrics.json and at the top of the page.
    codes = {f["code"] for f in metrics["flags"]}
    assert {"random_weights", "eval_on_training_images", "is_cam_below_cam"} <= codes, codes
    assert codes & {"classifier_loss_flat", "classifier_not_separated"}, codes
    assert all(f'data-code="{f["code"]}"' in html for f in metrics["flags"])
    # the classifier's own scores of the training images, with their tags, and the page's section of them
    presence = json.loads((out / "presence.json").read_text())
    assert presence["class_names"] == ["disc", "square"] and len(presence["images"]) == 8
    assert sum("square" in im["tags"] for im in presence["images"]) == 4
    assert '<section id="presence">' in html and 'data-class="square"' in html
    # the data fingerprint and the plan derived from it (applied: plan is on by default)
    plan = metrics["plan"]
    assert plan["applied"] and plan["fingerprint"]["images_per_class"] == [8, 4]
    rule = {"key": "seg.loss_weighting", "value": "none", "rule": "imbalance 2.0 < 4: every pixel alike"}
    assert rule in plan["rules"]
    assert '<section id="plan">' in html
    # Each stage in its own folder; the evaluation images are the training images (no duplicate CAMs).
    assert {p.name for p in out.iterdir() if p.is_dir()} >= {"train", "cams_train", "regions_train", "irn",
                                                               "pseudo_train", "seg", "seg_val", "export"}
    assert not (out / "cams_val").exists()
    assert len(list((out / "pseudo_train").glob("*.png"))) == 8


def test_run_seg_checkpoint_predicts_with_sipe_predict(tiny_run, tmp_path):
    from sipe.cli import main

    root, out, _, _ = tiny_run
    ckpt = out / json.loads((out / "metrics.json").read_text())["checkpoints"]["seg"]  # relative to the run
    assert main(["predict", "--checkpoint", str(ckpt), "--out", str(tmp_path / "pred"), str(root / "p0.jpg")]) == 0
    pred = np.asarray(Image.open(next((tmp_path / "pred").rglob("p0*.png"))))
    assert pred.shape[:2] == (64, 80)


def test_salted_run_names_each_bad_photo_once_and_no_stage_sees_them(tiny_run):
    _, out, _, messages = tiny_run
    for name in ("cut", "notes"):
        named = [m for m in messages if m.startswith(f"skipping {name} ")]
        assert len(named) == 1, (name, [m for m in messages if name in m])
    assert len([m for m in messages if "2 unreadable" in m]) == 1  # one summary, not one per stage
    listed = (out / "skipped.tsv").read_text().splitlines()
    assert listed[0] == "name\tpath\treason\tdetail"
    assert sorted(r.split("\t")[0] for r in listed[1:]) == ["cut", "notes"]
    assert all(r.split("\t")[2] == "unreadable" for r in listed[1:])
    # Every stage ran on the 8 readable photos only, the evaluation included.
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["num_train_images"] == 8 and metrics["num_val_images"] == 8
    assert len(list((out / "seg_val").glob("*.png"))) == 8 and not list(out.rglob("cut.png"))


def test_finished_run_reruns_without_work_and_says_so(tiny_run, caplog):
    from sipe.cli import main

    _, out, args, _ = tiny_run
    before = stamps(out)
    with caplog.at_level("INFO", logger="sipe.run"):
        assert main(["run", "--out", str(out), *args]) == 0
    assert "is complete" in caplog.text and "nothing to do" in caplog.text
    assert stamps(out) == before


def test_removing_the_rows_of_skipped_photos_is_no_change(tiny_run, caplog):
    """The data is judged by what the stages use: the labels file without the two unreadable photos' rows
    describes the same run (nothing is redone), and so does the same folder under another root."""
    import shutil

    from sipe.cli import main

    root, out, args, _ = tiny_run
    labels = (root / "labels.csv").read_text()
    before = stamps(out)
    try:
        (root / "labels.csv").write_text("".join(r + "\n" for r in labels.splitlines()
                                                if not r.startswith(("cut.jpg", "notes.jpg"))))
        with caplog.at_level("INFO", logger="sipe.run"):
            assert main(["run", "--out", str(out), *args]) == 0
        assert "is complete" in caplog.text
        other = shutil.copytree(root, root.parent / "same_photos_elsewhere")
        assert main(["run", "--out", str(out), *tiny_run_args(other)]) == 0
    finally:
        (root / "labels.csv").write_text(labels)
    assert stamps(out) == before


def test_rerun_with_other_data_is_refused_in_one_line_and_the_folder_is_unchanged(tiny_run, capsys):
    from sipe.cli import main

    root, out, args, _ = tiny_run
    (root / "few.csv").write_text("image,labels\n" + "".join(f"p{i}.jpg,disc\n" for i in range(4)))
    before = stamps(out)
    assert main(["run", "--out", str(out), *args, "data.split=few.csv"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "another configuration" in err and "use another --out or --from train" in err
    assert stamps(out) == before
    # New masks change what the evaluation measures, not what was trained: refused from the first evaluation.
    mask = root / "masks" / "p3.png"
    saved = mask.read_bytes()
    try:
        Image.fromarray(np.zeros((64, 80), np.uint8)).save(mask)
        assert main(["run", "--out", str(out), *args]) == 2
        assert "--from eval_cams" in capsys.readouterr().err
    finally:
        mask.write_bytes(saved)
    assert stamps(out) == before


def test_moved_run_folder_is_complete_and_redoes_a_late_stage_in_place(tiny_run, tmp_path, caplog):
    import shutil

    from sipe.cli import main

    _, out, args, _ = tiny_run
    copy = shutil.copytree(out, tmp_path / "copy")
    moved = tmp_path / "moved"
    copy.rename(moved)  # mv run moved
    original = stamps(out)
    with caplog.at_level("INFO", logger="sipe.run"):
        assert main(["run", "--out", str(moved), *args]) == 0
    assert "is complete" in caplog.text
    records = "".join(p.read_text() for p in (moved / ".stages").glob("*.json"))
    assert str(out) not in records
    before = stamps(moved)
    assert main(["run", "--out", str(moved), *args, "--from", "seg_train"]) == 0
    after = stamps(moved)
    # Later stages read the moved folder's own files: the original is untouched, the segmentation redone there.
    assert stamps(out) == original
    final = moved / "seg" / "checkpoints" / "final.pt"
    assert after[final] != before[final]
    kept = [p for p in before if "irn" in p.parts or "pseudo_train" in p.parts]
    assert kept and all(after[p] == before[p] for p in kept)
    metrics = json.loads((moved / "metrics.json").read_text())
    assert (moved / metrics["checkpoints"]["seg"]).is_file()


def test_until_stops_and_from_redoes_a_late_stage_with_its_changed_config(tiny_run, tmp_path):
    """--from seg_train with a changed seg setting keeps the earlier stages' outputs."""
    import shutil

    from sipe.cli import main

    _, out, args, _ = tiny_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    before = stamps(copy)
    assert main(["run", "--out", str(copy), *args, "seg.engine.lr=0.02", "--from", "seg_train",
                 "--until", "seg_eval"]) == 0
    after = stamps(copy)
    kept = [p for p in before if any(part in p.parts for part in ("train", "cams_train", "irn", "pseudo_train"))]
    assert kept and all(after[p] == before[p] for p in kept)
    assert after[copy / "eval_seg.json"] != before[copy / "eval_seg.json"]
    assert not (copy / "metrics.json").exists()  # the report is redone too, but --until stopped before it
    assert main(["run", "--out", str(copy), *args, "seg.engine.lr=0.02"]) == 0  # goes on from export
    seg = json.loads((copy / "eval_seg.json").read_text())["miou"]
    metrics = json.loads((copy / "metrics.json").read_text())
    assert metrics["seg_miou"] == seg
    # wall times per invocation: every stage's own seconds, the total over what this one ran (export)
    assert metrics["stages_this_invocation"] == ["export"]
    assert metrics["seconds"]["total"] == metrics["seconds"]["export"]
    assert metrics["seconds"]["train"] > 0
    html = (copy / "report.html").read_text()
    assert '<tr data-invocation="earlier"><td>train</td>' in html and "train, cam_train" in html
    assert stamps(copy)[copy / "eval_seg.json"] == after[copy / "eval_seg.json"]


def test_print_config_of_the_voc_recipe_is_a_resnet101_deeplabv2(capsys):
    import yaml

    from sipe.cli import main

    assert main(["run", "--config", str(ROOT / "configs" / "run_voc_paper.yaml"), "--out", "unused",
                 "--print-config"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert (cfg["seg"]["model"]["arch"], cfg["seg"]["model"]["backbone"]) == ("deeplabv2", "resnet101")
    assert cfg["train"]["model"]["backbone"] == "resnet50" and cfg["refine"]["method"] == "irn"
    assert cfg["train"]["data"]["split"] == cfg["seg"]["data"]["split"] == "train_aug"


@pytest.mark.parametrize("recipe", ["run_coco_paper.yaml", "run_photos.yaml"])
def test_recipes_load(recipe, capsys):
    from sipe.cli import main

    assert main(["run", "--config", str(ROOT / "configs" / recipe), "--out", "unused", "--print-config"]) == 0


@pytest.mark.slow
def test_sigkill_during_training_then_rerun_finishes(tmp_path):
    root = photo_folder(tmp_path / "photos")
    out = tmp_path / "run"
    # Long enough SIPE training that the kill lands inside it; a checkpoint every step to resume from.
    args = [*tiny_run_args(root), "train.engine.epochs=8", "train.engine.ckpt_every=1", "export.onnx=false"]
    cmd = [sys.executable, "-m", "sipe", "run", "--out", str(out), *args]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = out / "train" / "checkpoints" / "last.pt"
    deadline = time.time() + 120
    while not last.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)  # last.pt is written atomically: once it exists, the kill lands after a checkpoint
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert last.exists() and not (out / ".stages" / "train.json").exists()
    done = subprocess.run([*cmd[:-1], *cmd[-1:]], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "interrupted: resumes" in done.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["seg_miou"] <= 1.0


@pytest.mark.parametrize(("change", "status", "message"), [
    ("train.model.backbone=resnet19", 2, "unknown backbone 'resnet19'"),
    ("refine.method=rw", 2, "refine.method"),
    ("data.split=nope.csv", 1, "nope.csv does not exist"),
    ("train.engine.batch_size=100", 2, "fewer than one global batch (100)"),
])  # fmt: skip
def test_config_and_data_errors_come_before_torch_loads(change, status, message, tmp_path):
    from test_cli_errors import _NO_TORCH

    root = photo_folder(tmp_path / "photos", n=2)
    argv = ["run", "--out", str(tmp_path / "run"), *tiny_run_args(root), change]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run([sys.executable, "-c", _NO_TORCH, *argv], capture_output=True, text=True, env=env)
    assert proc.returncode == status, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "torch imported: False" in proc.stdout
    assert not (tmp_path / "run").exists()


def test_summary_prints_mious_only_when_there_are_masks(capsys):
    from sipe.cli.run import print_summary

    print_summary({"seconds": {"train": 1.0}, "num_train_images": 38}, "runs/mine")
    assert capsys.readouterr().out == "results page: runs/mine/report.html; metrics: runs/mine/metrics.json\n"
    print_summary({"is_cam_miou": 0.5, "seconds": {}}, "runs/mine")
    out = capsys.readouterr().out
    assert json.loads(out.split("results page")[0]) == {"is_cam_miou": 0.5}
    print_summary({}, "runs/mine")
    assert capsys.readouterr().out == ""
