"""The demo end to end, shrunk to a few tiny images: every stage runs and writes its outputs."""

from __future__ import annotations

import json
import time

import pytest
import yaml

from helpers import TINY_DEMO as TINY
from sipe.config import load_config
from sipe.demo import DemoConfig, run_demo


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


@pytest.mark.slow
def test_tiny_demo_runs_every_stage_and_resumes(tiny_demo):
    cfg, out, metrics = tiny_demo  # run once per session; tests/test_report.py reads it too
    for key in ("cam_miou", "cam_threshold", "is_cam_miou", "pseudo_label_miou", "seg_miou"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert metrics["num_val_images"] == 3
    assert json.loads((out / "metrics.json").read_text()) == metrics
    stages = ["data", "pretrain", "sipe_train", "is_cam_val", "is_cam_train", "irn_train", "pseudo_labels",
              "seg_train", "seg_eval"]
    assert all(s in metrics["seconds"] for s in stages)
    assert len(list((out / "overlays").glob("*.png"))) == 2
    assert len(list((out / "pseudo_train").glob("*.png"))) == 8
    assert (out / "config.yaml").is_file() and (out / "run_info.json").is_file()
    assert (out / "report.html").is_file() and len(list((out / "seg_val").glob("*.png"))) == 3
    saved = yaml.safe_load((out / "config.yaml").read_text())
    # The saved config shows what the stages ran with, not the stage defaults.
    assert saved["irn"]["backbone"] == saved["seg_model"]["backbone"] == saved["pretrain"]["backbone"] == "resnet18"
    assert cfg.irn.backbone == "resnet50"  # the caller's config is left as it was
    # Rerun of the finished demo: fast, the same metrics, and not one file rewritten.
    def stamps():
        return {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}

    before = stamps()
    t0 = time.perf_counter()
    again = run_demo(load_config(DemoConfig, None, TINY), out)
    assert time.perf_counter() - t0 < 3.0
    assert again == metrics
    assert stamps() == before
    # A demo stopped before its last stages resumes there: IRN is not retrained, the IS-CAMs, confident
    # regions and pseudo labels are not recomputed; the segmentation evaluation runs again, same result.
    for stage in ("seg_eval", "metrics"):
        (out / ".stages" / f"{stage}.json").unlink()
    (out / "eval_seg.json").unlink()
    again = run_demo(load_config(DemoConfig, None, TINY), out)
    assert {k: v for k, v in again.items() if k != "seconds"} == {k: v for k, v in metrics.items() if k != "seconds"}
    after = stamps()
    kept = [p for p in before if p.suffix in (".pt", ".npz", ".pth") or "regions_train" in p.parts
            or "pseudo_train" in p.parts]
    assert kept and all(after[p] == before[p] for p in kept)
    assert (out / "eval_seg.json").is_file()


@pytest.mark.slow
def test_tiny_demo_pins_its_thread_count_so_the_callers_does_not_matter(tiny_demo, tmp_path):
    """Measured (docs/reproducibility.md): 1 and 2 intra-op threads give different weights, the same
    count gives identical ones. The demo sets its own count (num_threads=2), so a caller with another
    default gets the session run's numbers bit for bit."""
    import hashlib

    import torch

    cfg, out, metrics = tiny_demo
    assert cfg.num_threads == 2

    def digest(run):
        sd = torch.load(run / "sipe" / "checkpoints" / "final.pt", weights_only=False)["model"]
        return hashlib.sha256(b"".join(sd[k].numpy().tobytes() for k in sorted(sd))).hexdigest()

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        again = run_demo(load_config(DemoConfig, None, TINY), tmp_path / "demo")
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
    from sipe.config import to_dict
    from sipe.demo.run import _resolved, demo_pipeline

    cfg = _resolved(DemoConfig())
    pipe = demo_pipeline(cfg, tmp_path)
    first = {key: pipe.names()[pipe._first_affected({key})] for key in to_dict(cfg)}
    assert first["seg_engine"] == first["seg_aug"] == first["seg_model"] == "seg_train"
    assert first["rw_exp_times"] == "pseudo_labels" and first["irn"] == "confident_regions"
    assert first["engine"] == "sipe_train" and first["scales"] == first["flip"] == "is_cam_val"
    assert first["seed"] == first["num_threads"] == first["data"] == "data"
