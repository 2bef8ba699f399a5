"""The demo end to end, shrunk to a few tiny images: it is `sipe run` with configs/demo.yaml, every stage runs,
writes its outputs and resumes; what the config file says is what the stages run with."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from helpers import TINY_DEMO, run_demo
from sipe.config import load_config
from sipe.run.config import DEMO_CONFIG, RunConfig, resolve

STAGES = ["data", "pretrain", "train", "cam_train", "cam_val", "eval_cams", "regions", "irn_train", "pseudo_labels",
          "eval_pseudo", "seg_train", "seg_eval", "export", "report"]


def test_pretraining_sees_the_negatives(tmp_path):
    import torch

    from sipe.data import SyntheticBackgrounds, build_dataset, generate_synthetic
    from sipe.train.pretrain import PretrainConfig, pretrain_classifier

    root = generate_synthetic(tmp_path / "syn", seed=0, n_train=8, n_val=0, image_size=(40, 48), progress=False)
    train = build_dataset("synthetic", root, "train")
    cfg = load_config(PretrainConfig, None, ["resize_long=[40,48]", "crop_size=32", "engine.epochs=1",
                                             "engine.batch_size=4", "engine.num_workers=0", "engine.progress=false"])
    steps = {}
    for n_neg in (0, 4):
        negatives = SyntheticBackgrounds(n_neg, train.num_classes - 1, seed=0, image_size=(40, 48)) if n_neg else None
        out = tmp_path / f"pre{n_neg}"
        weights = pretrain_classifier(train, out, cfg, negatives=negatives)
        state = torch.load(weights, weights_only=True)
        assert "conv1.weight" in state and not any(k.startswith("fc.") for k in state)
        steps[n_neg] = torch.load(out / "checkpoints" / "final.pt", weights_only=False)["step"]
    assert steps == {0: 2, 4: 3}  # 8 images, then 12, in batches of 4


def test_configs_demo_yaml_is_the_file_sipe_demo_runs():
    path = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
    assert path.resolve() == DEMO_CONFIG.resolve()
    cfg = load_config(RunConfig, path)
    # Every stage's backbone and weights are written in the file, not filled in by code.
    text = yaml.safe_load(path.read_text())
    assert text["pretrain"]["backbone"] == "resnet10"
    for section in (text["train"]["model"], text["irn"], text["seg"]["model"]):
        assert section["backbone"] == "resnet10" and section["weights"] == "stage:pretrain"
    resolved = resolve(cfg, "/tmp/demo_out")
    pretrained = str(Path("/tmp/demo_out").resolve() / "pretrain" / "backbone.pth")
    assert resolved.train.model.weights == resolved.irn.weights == resolved.seg.model.weights == pretrained
    assert resolved.data.root == str(Path("/tmp/demo_out").resolve() / "data")
    # seed: the data, pretraining, IRN and segmentation stages; SIPE training keeps the official 15.
    assert resolved.synthetic.seed == resolved.pretrain.engine.seed == resolved.irn.engine.seed == 0
    assert resolved.seg.engine.seed == 0 and resolved.train.engine.seed == 15


@pytest.mark.slow
def test_tiny_demo_runs_every_stage_and_resumes(tiny_demo):
    cfg, out, metrics = tiny_demo  # run once per session; tests/test_report.py reads it too
    for key in ("cam_miou", "cam_threshold", "is_cam_miou", "pseudo_label_miou", "pseudo_label_train_miou",
                "seg_miou"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert metrics["num_val_images"] == 3 and metrics["seed"] == 0
    assert json.loads((out / "metrics.json").read_text()) == metrics
    ran = [s for s in STAGES if s != "export"]  # export.onnx=false in the tiny demo
    assert [s for s in metrics["seconds"] if s != "total"] == ran[:-1]  # the report writes them
    assert sorted(p.stem for p in (out / ".stages").glob("*.json")) == sorted([*ran, "config"])
    assert len(list((out / "overlays").glob("*.png"))) == 2
    assert len(list((out / "pseudo_train").glob("*.png"))) == 8
    assert (out / "config.yaml").is_file() and (out / "run_info.json").is_file()
    assert (out / "report.html").is_file() and len(list((out / "seg_val").glob("*.png"))) == 3
    assert cfg.irn.weights == "stage:pretrain"  # the caller's config is left as it was

    def stamps():
        return {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}

    # Rerun of the finished demo: the same metrics, and not one file rewritten.
    before = stamps()
    assert run_demo(out) == metrics
    assert stamps() == before
    # A demo stopped before its last stages resumes there: IRN is not retrained, the IS-CAMs, confident
    # regions and pseudo labels are not recomputed; the segmentation evaluation runs again, same result.
    for stage in ("seg_eval", "report"):
        (out / ".stages" / f"{stage}.json").unlink()
    (out / "eval_seg.json").unlink()
    again = run_demo(out)
    per_invocation = ("seconds", "stages_this_invocation")
    assert {k: v for k, v in again.items() if k not in per_invocation} == \
        {k: v for k, v in metrics.items() if k not in per_invocation}
    assert again["stages_this_invocation"] == ["seg_eval"]  # the total counts this invocation's stages only
    after = stamps()
    kept = [p for p in before if p.suffix in (".pt", ".npz", ".pth") or "regions_train" in p.parts
            or "pseudo_train" in p.parts]
    assert kept and all(after[p] == before[p] for p in kept)
    assert (out / "eval_seg.json").is_file()


@pytest.mark.slow
def test_printed_demo_config_is_what_every_stage_ran_with(tiny_demo, capsys):
    """`sipe demo --print-config` (= `sipe run --config configs/demo.yaml --print-config`) shows each stage's
    section as that stage received it: the config.yaml every training stage saved beside its outputs."""
    from sipe.cli import main

    _, out, _ = tiny_demo
    assert main(["demo", "--out", str(out), "--print-config", *TINY_DEMO]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed == yaml.safe_load((out / "config.yaml").read_text())
    for folder, section in (("train", "train"), ("irn", "irn"), ("seg", "seg")):
        assert yaml.safe_load((out / folder / "config.yaml").read_text()) == printed[section], folder
    pretrain = yaml.safe_load((out / "pretrain" / "config.yaml").read_text())
    assert pretrain == printed["pretrain"]
    for section in (printed["train"]["model"], printed["irn"], printed["seg"]["model"]):
        assert section["backbone"] == "resnet10"
        assert section["weights"] == str((out / "pretrain" / "backbone.pth").resolve())


@pytest.mark.slow
def test_num_threads_pins_the_thread_count_so_the_callers_does_not_matter(tiny_demo, tmp_path):
    """Measured (docs/reproducibility.md): 1 and 2 intra-op threads give different weights, the same
    count gives identical ones. The demo uses every core by default (num_threads: null); a run with
    num_threads=2 (the tiny demo's, the README's reference rows') gets the same numbers bit for bit
    whatever the caller's own thread count."""
    import hashlib

    import torch

    assert load_config(RunConfig, DEMO_CONFIG).num_threads is None
    cfg, out, metrics = tiny_demo
    assert cfg.num_threads == 2

    def digest(run):
        sd = torch.load(run / "train" / "checkpoints" / "final.pt", weights_only=False)["model"]
        return hashlib.sha256(b"".join(sd[k].numpy().tobytes() for k in sorted(sd))).hexdigest()

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        again = run_demo(tmp_path / "demo")
        assert torch.get_num_threads() == 1  # the caller's setting is given back
    finally:
        torch.set_num_threads(before)
    assert {k: v for k, v in again.items() if k != "seconds"} == {k: v for k, v in metrics.items() if k != "seconds"}
    assert digest(tmp_path / "demo") == digest(out)
    numerics = json.loads((tmp_path / "demo" / "run_info.json").read_text())["numerics"]
    assert numerics["torch_threads"] == 2
    assert {"cpu_model", "cpu_isa_flags", "cpu_capability", "onednn_version", "mkl_version"} <= set(numerics)


def test_a_changed_demo_key_is_redone_from_the_first_stage_that_uses_it(tmp_path):
    """Every config key belongs to a stage, so `--from` can redo only what a change affects (a new
    segmentation setting does not retrain SIPE) and no change goes unnoticed."""
    from sipe.run.stages import build_run_pipeline

    cfg = resolve(load_config(RunConfig, DEMO_CONFIG), tmp_path)
    pipe = build_run_pipeline(cfg, tmp_path)  # generated data: nothing is read before its stage
    assert pipe.names() == STAGES
    stage_of = {key: pipe._first_affected([key]) for key in pipe.config}
    # plan selects seg settings before the pipeline is built; they are keyed in the seg section themselves, and
    # plan itself not at all (sipe.run.pipeline).
    assert "plan" not in pipe.config and all(i is not None for i in stage_of.values())
    first = {key: pipe.names()[i] for key, i in stage_of.items() if i is not None}
    assert set(first) >= {".".join(k) for k in [("seg", "engine", "lr"), ("irn", "crop_size"), ("synthetic", "seed")]}
    assert first["seg.engine.lr"] == first["seg.model.backbone"] == "seg_train"
    assert first["irn.crop_size"] == "irn_train" and first["refine.exp_times"] == "regions"
    assert first["train.engine.lr"] == "train" and first["cam.scales"] == "cam_train"
    assert first["pretrain.background_images"] == "pretrain"
    assert first["seed"] == first["num_threads"] == first["synthetic.seed"] == first["data.split"] == "data"
    assert first["eval.split"] == "cam_val" and first["eval.num_overlays"] == "eval_cams"
    assert first["export.opset"] == "export"
    # Paths inside the run folder are keyed relative to it (a moved folder keeps its keys).
    assert pipe.config["data.root"] == "<run>/data" and pipe.config["seg.pseudo_labels"] == "<run>/pseudo_train"
    assert pipe.config["irn.weights"] == "<run>/pretrain/backbone.pth"
