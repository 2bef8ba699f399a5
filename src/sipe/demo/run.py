"""``sipe demo``: the whole method end to end on the embedded synthetic dataset, on a CPU.

Steps (each resumable; rerunning the command picks up where it stopped):
1. generate the synthetic dataset (VOC layout) in ``out/data``;
2. pretrain the backbone as a plain classifier (stand-in for ImageNet weights, which cannot be
   downloaded offline) on the training images plus a few object-free ones as negatives;
3. train SIPE with the official recipe (lr, momentum quirk, poly decay, clipping, 10x new layers);
4. multi-scale IS-CAM (and plain CAM) on the training and held-out splits; evaluate both on the
   held-out split;
5. refinement: dense-CRF confident regions, IRN training, random-walk pseudo labels; evaluate;
6. a DeepLabV3 segmentation network trained on the pseudo labels of the training split; evaluate;
7. write ``out/metrics.json``, overlay pictures and the results page ``out/report.html`` (``sipe report``).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from sipe import io
from sipe.config import DataConfig, ModelConfig
from sipe.demo.config import DemoConfig
from sipe.train import SIPETrainConfig

logger = logging.getLogger("sipe.demo")


def _stage(name: str, t0: float, timings: dict[str, float]) -> float:
    now = time.perf_counter()
    timings[name] = round(now - t0, 1)
    logger.info("%s done in %.1f s", name, now - t0)
    return now


def _resolved(cfg: DemoConfig) -> DemoConfig:
    """A copy whose stage configs carry the demo's backbone and seed, so that the saved
    ``config.yaml`` shows what every stage really ran with (the weights come later, per stage)."""
    cfg = copy.deepcopy(cfg)
    cfg.pretrain.backbone = cfg.irn.backbone = cfg.seg_model.backbone = cfg.backbone
    cfg.pretrain.engine.seed = cfg.irn.engine.seed = cfg.seg_engine.seed = cfg.seed
    return cfg


def run_demo(cfg: DemoConfig, out_dir: str | os.PathLike) -> dict[str, Any]:
    """Run the demo into ``out_dir``; returns the metrics written to ``out_dir/metrics.json``."""
    import torch

    from sipe.cams.generate import CamConfig, generate_cams
    from sipe.config import save_run_info
    from sipe.data import SyntheticBackgrounds, build_dataset, generate_synthetic
    from sipe.demo.pictures import save_demo_overlays
    from sipe.metrics import evaluate_cam, evaluate_is_cam, write_report
    from sipe.models.checkpoint import load_checkpoint
    from sipe.report import write_report_html
    from sipe.train import train_sipe
    from sipe.train.pretrain import pretrain_classifier

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = _resolved(cfg)
    save_run_info(out, cfg)
    torch.manual_seed(cfg.seed)
    timings: dict[str, float] = {}
    t = t_start = time.perf_counter()

    data_root = generate_synthetic(
        out / "data", seed=cfg.seed, n_train=cfg.data.n_train, n_val=cfg.data.n_val,
        image_size=cfg.data.image_size, num_classes=cfg.data.num_classes, max_objects=cfg.data.max_objects,
        body_radius=cfg.data.body_radius,
    )
    train_set = build_dataset("synthetic", data_root, "train")
    val_set = build_dataset("synthetic", data_root, "val")
    t = _stage("data", t, timings)

    negatives = None
    if cfg.background_images > 0:
        negatives = SyntheticBackgrounds(cfg.background_images, cfg.data.num_classes, seed=cfg.seed,
                                         image_size=cfg.data.image_size)
    weights = pretrain_classifier(train_set, out / "pretrain", cfg.pretrain, negatives=negatives)
    t = _stage("pretrain", t, timings)

    sipe_cfg = SIPETrainConfig(
        data=DataConfig(kind="synthetic", root=str(data_root), split="train", val_split=None),
        aug=cfg.aug,
        model=ModelConfig(backbone=cfg.backbone, weights=str(weights)),
        engine=cfg.engine,
    )
    ckpt = train_sipe(sipe_cfg, out / "sipe")
    t = _stage("sipe_train", t, timings)

    model, _ = load_checkpoint(ckpt)
    cam_cfg = CamConfig(scales=cfg.scales, save_cam=True, num_workers=1)
    cams = {name: out / f"cams_{name}" for name in ("train", "val")}
    generate_cams(model, val_set, cams["val"], cam_cfg)
    t = _stage("is_cam_val", t, timings)

    cam_report = evaluate_cam(cams["val"] / "cam", val_set)
    is_cam_report = evaluate_is_cam(cams["val"] / "is_cam", val_set)
    write_report(out / "eval_cam.json", cam_report)
    write_report(out / "eval_is_cam.json", is_cam_report)
    save_demo_overlays(out, val_set, cams["val"], cfg.num_overlays)
    t = _stage("evaluate_cams", t, timings)
    metrics: dict[str, Any] = {
        "seed": cfg.seed,
        "cam_miou": cam_report["miou"],
        "cam_threshold": cam_report["threshold"],
        "is_cam_miou": is_cam_report["miou"],
    }
    if cfg.refine:
        generate_cams(model, train_set, cams["train"], dataclasses.replace(cam_cfg, save_cam=False))
        t = _stage("is_cam_train", t, timings)
        metrics.update(_refine_and_segment(cfg, out, weights, train_set, val_set, cams, timings))
    metrics["num_val_images"] = len(val_set)
    metrics["seconds"] = {**timings, "total": round(time.perf_counter() - t_start, 1)}
    io.write_text(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    write_report_html(out, out / "report.html", dataset=val_set)
    return metrics


def _refine_and_segment(
    cfg: DemoConfig, out: Path, weights: Path, train_set: Any, val_set: Any, cams: dict[str, Path],
    timings: dict[str, float],
) -> dict[str, Any]:
    """Stages 5-6: confident regions -> IRN -> pseudo labels -> DeepLabV3; their metrics."""
    from sipe.metrics import evaluate_label_dir, write_report
    from sipe.refine.crf import make_confident_regions
    from sipe.refine.pseudo import make_pseudo_labels
    from sipe.refine.train_irn import train_irn
    from sipe.seg.evaluate import evaluate_seg
    from sipe.seg.model import load_seg_checkpoint
    from sipe.seg.train import SegDataConfig, SegTrainConfig, train_seg

    t = time.perf_counter()
    make_confident_regions(train_set, cams["train"] / "is_cam", out / "regions_train")
    t = _stage("confident_regions", t, timings)
    irn_cfg = dataclasses.replace(cfg.irn, weights=str(weights))
    irn = train_irn(train_set, out / "regions_train", out / "irn", irn_cfg)
    t = _stage("irn_train", t, timings)
    for name, dataset in (("val", val_set), ("train", train_set)):
        make_pseudo_labels(irn, dataset, cams[name] / "is_cam", out / f"pseudo_{name}", exp_times=cfg.rw_exp_times)
    t = _stage("pseudo_labels", t, timings)
    pseudo_report = evaluate_label_dir(out / "pseudo_val", val_set)
    pseudo_train_report = evaluate_label_dir(out / "pseudo_train", train_set)
    write_report(out / "eval_pseudo_labels.json", pseudo_report)

    seg_cfg = SegTrainConfig(
        pseudo_labels=str(out / "pseudo_train"),
        data=SegDataConfig(kind="synthetic", root=str(out / "data"), split="train"),
        model=dataclasses.replace(cfg.seg_model, weights=str(weights)),
        aug=cfg.seg_aug,
        engine=cfg.seg_engine,
    )
    seg_model, _ = load_seg_checkpoint(train_seg(seg_cfg, out / "seg"))
    t = _stage("seg_train", t, timings)
    seg_report = evaluate_seg(seg_model, val_set, save_dir=out / "seg_val")  # predictions for the report
    write_report(out / "eval_seg.json", seg_report)
    _stage("seg_eval", t, timings)
    return {
        "pseudo_label_miou": pseudo_report["miou"],
        "pseudo_label_train_miou": pseudo_train_report["miou"],
        "seg_miou": seg_report["miou"],
    }


