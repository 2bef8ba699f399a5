"""The one error path of the command line: a user mistake is one line and an exit status (2: command
line or config, 1: inputs), never a traceback; a bug keeps its traceback; under torchrun rank 0 prints."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torchvision
from PIL import Image

import sipe.cli.cam
from helpers import free_port
from sipe.cli import main
from sipe.data import synthetic_class_names
from sipe.data.synthetic import draw_synthetic_image

REPO = Path(__file__).resolve().parents[1]
PHOTOS = REPO / "configs" / "photos.yaml"


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Six 48x48 synthetic JPEGs and their labels.csv (the own-photos layout)."""
    root = tmp_path_factory.mktemp("photos")
    names = synthetic_class_names(4)
    rows = ["image,labels"]
    for i in range(6):
        rng = np.random.default_rng(i)
        image, _, objects = draw_synthetic_image(rng, 48, 48, num_classes=4, max_objects=1)
        Image.fromarray(image).save(root / f"p{i}.jpg", quality=90)
        rows.append(f"p{i}.jpg,{';'.join(sorted({names[o['class']] for o in objects}))}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


def _train(photos: Path, out: Path, *overrides: str) -> list[str]:
    return ["train", "--config", str(PHOTOS), "--out", str(out), f"data.root={photos}",
            f"data.split={photos / 'labels.csv'}", "model.weights=null", "aug.crop_size=32",
            "aug.resize_long=[32,48]", "engine.batch_size=2", "engine.num_workers=0", "engine.progress=false",
            *overrides]


def _one_line(capsys, *expected: str) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert "Traceback" not in err, err
    assert len(lines) == 1, err
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


def test_config_mistakes_exit_2_in_one_line(photos, tmp_path, capsys):
    assert main(_train(photos, tmp_path / "r", "model.backbone=resnet19")) == 2
    _one_line(capsys, "sipe train: error:", "unknown backbone 'resnet19'", "resnet18")
    # configs/coco.yaml's 81 classes on a 4-class folder
    assert main(_train(photos, tmp_path / "r", "model.num_classes=81")) == 2
    _one_line(capsys, "model.num_classes=81", "has 5 classes", "drop model.num_classes")
    assert main(_train(photos, tmp_path / "r", "engine.batch_size=100")) == 2
    _one_line(capsys, "fewer than one global batch (100)", "lower engine.batch_size")
    assert main(_train(photos, tmp_path / "r", "--config", str(tmp_path / "nope.yaml"))) == 2
    _one_line(capsys, "nope.yaml does not exist")


def test_input_mistakes_exit_1_in_one_line(photos, tmp_path, capsys):
    assert main(_train(photos, tmp_path / "r", f"data.split={photos / 'label.csv'}")) == 1
    _one_line(capsys, "label.csv does not exist")
    cam = ["cam", "--dataset", "custom", "--root", str(photos), "--split", str(photos / "labels.csv"),
           "--out", str(tmp_path / "cams")]
    assert main([*cam, "--checkpoint", str(tmp_path / "fnal.pt")]) == 1
    _one_line(capsys, "sipe cam: error: checkpoint", "fnal.pt does not exist")
    truncated = tmp_path / "trunc.pt"
    truncated.write_bytes((REPO / "tests" / "data" / "parity" / "official_weights_int8.npz").read_bytes()[:5000])
    assert main([*cam, "--checkpoint", str(truncated)]) == 1
    _one_line(capsys, "cannot read checkpoint", "trunc.pt")


def test_weights_that_cannot_be_downloaded(photos, tmp_path, monkeypatch, capsys):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    assert main(_train(photos, tmp_path / "r", "model.weights=IMAGENET1K_V1")) == 1
    line = _one_line(capsys, "could not fetch", "resnet18-f37072fd.pth", "refusing to continue with random weights")
    assert len(line) < 700


def test_truncated_last_checkpoint_on_rerun(photos, tmp_path, capsys):
    last = tmp_path / "r" / "checkpoints" / "last.pt"
    last.parent.mkdir(parents=True)
    last.write_bytes(b"PK\x03\x04" + b"\0" * 100)  # the start of a zip: an interrupted write
    assert main(_train(photos, tmp_path / "r")) == 1
    _one_line(capsys, "last.pt", f"delete {last} or pass --no-resume")


def test_sipe_debug_shows_the_traceback_and_bugs_keep_theirs(tmp_path, monkeypatch, capsys):
    argv = ["cam", "--checkpoint", str(tmp_path / "x.pt"), "--dataset", "custom", "--root", str(tmp_path),
            "--split", str(tmp_path / "l.csv"), "--out", str(tmp_path / "o")]
    (tmp_path / "x.pt").write_bytes(b"not read: the labels file is checked first")
    monkeypatch.setenv("SIPE_DEBUG", "1")
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and err.rstrip().splitlines()[-1].startswith("sipe cam: error: labels file")

    def buggy(args):
        raise TypeError("a bug")

    monkeypatch.delenv("SIPE_DEBUG")
    monkeypatch.setattr(sipe.cli.cam, "run", buggy)
    with pytest.raises(TypeError, match="a bug"):
        main(argv)


def test_usage_line_is_the_sub_command_s(tmp_path, capsys):
    argv = ["cam", "--checkpoint", "c.pt", "--root", "r", "--out", "o"]
    for extra, message in ((["--scales", "1.0,0.5"], "separated by spaces in every command: --scales 1.0 0.5"),
                           (["--bogus"], "unrecognized arguments: --bogus")):
        with pytest.raises(SystemExit) as exc:
            main([*argv, *extra])
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("usage: sipe cam ") and "sipe cam: error: " in err and message in err, err
    with pytest.raises(SystemExit):
        main(["seg", "eval", "--checkpoint", "c.pt", "--root", "r", "--scales", "1,2"])
    assert "usage: sipe seg eval " in capsys.readouterr().err


@pytest.mark.slow
def test_under_torchrun_rank_0_prints_one_line(photos, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
            str(free_port()), "-m", "sipe", *_train(photos, tmp_path / "r", f"data.split={photos / 'label.csv'}")]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr
    assert done.stderr.count("sipe train: error: labels file") == 1, done.stderr
    assert "rank 1: " not in done.stderr, done.stderr  # rank 1 was stopped by torchrun while waiting
    # What is left is torchrun's own report of a child's non-zero exit (its ChildFailedError block).
    assert done.stderr.count("Traceback") == done.stderr.count("ChildFailedError:") <= 1, done.stderr
    assert "src/sipe" not in done.stderr, done.stderr  # no frame of ours: no rank printed a traceback


def test_an_error_of_another_rank_alone_is_printed_after_the_grace_period(photos, tmp_path, monkeypatch, capsys):
    import sipe.cli

    monkeypatch.setenv("RANK", "1")
    monkeypatch.setattr(sipe.cli, "RANK_ERROR_GRACE_S", 0.0)  # rank 0 did not stop us: this rank reports
    assert main(_train(photos, tmp_path / "r", f"data.split={photos / 'label.csv'}")) == 1
    _one_line(capsys, "sipe train: error: rank 1: labels file")


_NO_TORCH = "import sys; from sipe.cli import main; code = main(sys.argv[1:]); print('torch imported:', 'torch' in sys.modules); sys.exit(code)"  # noqa: E501


@pytest.mark.parametrize(("case", "status", "message"), [
    ("config", 2, "unknown backbone 'resnet19'"),
    ("classes", 2, "model.num_classes=81"),
    ("batch", 2, "fewer than one global batch (100)"),
    ("labels", 1, "label.csv does not exist"),
    ("cam", 1, "fnal.pt does not exist"),
    ("predict", 1, "fnal.pt does not exist"),
    ("export", 1, "fnal.pt does not exist"),
    ("seg eval", 1, "fnal.pt does not exist"),
    ("seg train", 2, "unknown backbone 'resnet19'"),
    ("seg labels", 1, "pseudo-label folder"),
    ("irn", 2, "unknown backbone 'resnet19'"),
    ("irn labels", 1, "--label-dir"),
    ("demo", 2, "unknown config key 'foo'"),
    ("predict input", 1, "input nope.jpg does not exist"),
    ("crf-regions", 1, "--cam-dir"),
    ("crf", 1, "--cam-dir"),
    ("labels irn", 1, "irn.pt does not exist"),
    ("seg eval labels", 1, "label.csv does not exist"),
])  # fmt: skip
def test_errors_found_before_real_work_do_not_import_torch(case, status, message, photos, tmp_path):
    """Start-up: such errors are reported before torch loads (a fraction of a second instead of seconds)."""
    ckpt = str(tmp_path / "fnal.pt")
    data = ["--dataset", "custom", "--root", str(photos), "--split", str(photos / "labels.csv")]
    argv = {
        "config": _train(photos, tmp_path / "r", "model.backbone=resnet19"),
        "classes": _train(photos, tmp_path / "r", "model.num_classes=81"),
        "batch": _train(photos, tmp_path / "r", "engine.batch_size=100"),
        "labels": _train(photos, tmp_path / "r", f"data.split={photos / 'label.csv'}"),
        "cam": ["cam", *data, "--out", str(tmp_path / "cams"), "--checkpoint", ckpt],
        "predict": ["predict", str(photos / "p0.jpg"), "--checkpoint", ckpt, "--out", str(tmp_path / "pred")],
        "export": ["export", "--checkpoint", ckpt, "--out", str(tmp_path / "m.onnx")],
        "seg eval": ["seg", "eval", *data, "--mask-dir", str(photos), "--checkpoint", ckpt],
        "seg train": ["seg", "train", "--out", str(tmp_path / "s"), "model.backbone=resnet19"],
        "seg labels": ["seg", "train", "--out", str(tmp_path / "s"), f"pseudo_labels={tmp_path / 'nope'}"],
        "irn": ["refine", "train-irn", *data, "--label-dir", str(photos), "--out", str(tmp_path / "i"),
                "backbone=resnet19"],
        "irn labels": ["refine", "train-irn", *data, "--label-dir", str(tmp_path / "nope"), "--out",
                       str(tmp_path / "i")],
        "demo": ["demo", "--out", str(tmp_path / "d"), "foo=1"],
        "predict input": ["predict", "nope.jpg", "--checkpoint", str(photos / "labels.csv"), "--labels", "a",
                          "--out", str(tmp_path / "pred")],
        "crf-regions": ["refine", "crf-regions", *data, "--cam-dir", str(tmp_path / "nope"), "--out", str(tmp_path)],
        "crf": ["refine", "crf", *data, "--cam-dir", str(tmp_path / "nope"), "--out", str(tmp_path)],
        "seg eval labels": ["seg", "eval", "--dataset", "custom", "--root", str(photos), "--split",
                            str(photos / "label.csv"), "--mask-dir", str(photos), "--checkpoint",
                            str(photos / "p0.jpg")],  # an existing file: the labels file is the mistake
        "labels irn": ["refine", "labels", *data, "--cam-dir", str(photos), "--irn", str(tmp_path / "irn.pt"),
                       "--out", str(tmp_path / "o")],
    }[case]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.run([sys.executable, "-c", _NO_TORCH, *argv], capture_output=True, text=True, env=env)
    assert proc.returncode == status, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert "torch imported: False" in proc.stdout


def test_overrides_after_an_option_are_overrides(tmp_path, capsys):
    """`sipe run --config C a=1 --out D b=2`: argparse ends the positionals at --out; b=2 still counts."""
    import yaml

    args = ["demo", "--print-config", "synthetic.n_train=40", "--out", str(tmp_path / "run"), "seg.engine.epochs=7"]
    assert main(args) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["synthetic"]["n_train"] == 40 and cfg["seg"]["engine"]["epochs"] == 7
    with pytest.raises(SystemExit):  # anything else after an option is still refused
        main([*args, "stray"])
    assert "unrecognized arguments: stray" in capsys.readouterr().err
