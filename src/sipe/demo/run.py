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
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sipe import io
from sipe.config import DataConfig, ModelConfig
from sipe.demo.config import DemoConfig
from sipe.train import SIPETrainConfig

logger = logging.getLogger("sipe.demo")


class _Stages:
    """Completion records of the demo's stages: ``out/.stages/<stage>.json``, written atomically
    once a stage's outputs are all written, with its result (JSON) and its time.

    A rerun skips every stage recorded under the same demo config and reuses its result, so a
    finished demo is not retrained, re-evaluated or rewritten; a stage recorded under another
    config runs again (the training stages then resume or refuse through their own checks).
    """

    def __init__(self, out: Path, cfg: DemoConfig) -> None:
        from sipe.config import to_dict

        self.dir = out / ".stages"
        self.key = hashlib.sha1(json.dumps(to_dict(cfg), sort_keys=True, default=str).encode()).hexdigest()
        self.timings: dict[str, float] = {}

    def done(self, name: str) -> Any | None:
        """The recorded result of stage ``name``, or ``None`` when it has not finished under this config."""
        path = self.dir / f"{name}.json"
        try:
            rec = json.loads(path.read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError):
            return None
        if rec.get("config") != self.key:
            return None
        self.timings[name] = rec["seconds"]
        return rec

    def run(self, name: str, fn: Callable[[], Any]) -> Any:
        """``fn()``'s result (plain JSON data), run only when stage ``name`` has not finished before."""
        rec = self.done(name)
        if rec is not None:
            logger.info("%s: finished before (%s); skipped", name, self.dir / f"{name}.json")
            return rec["result"]
        t0 = time.perf_counter()
        result = fn()
        seconds = round(time.perf_counter() - t0, 1)
        self.timings[name] = seconds
        logger.info("%s done in %.1f s", name, seconds)
        record = {"config": self.key, "seconds": seconds, "result": result}
        io.write_text(self.dir / f"{name}.json", json.dumps(record, indent=1) + "\n")
        return result


def _resolved(cfg: DemoConfig) -> DemoConfig:
    """A copy whose stage configs carry the demo's backbone and seed, so that the saved
    ``config.yaml`` shows what every stage really ran with (the weights come later, per stage)."""
    cfg = copy.deepcopy(cfg)
    cfg.pretrain.backbone = cfg.irn.backbone = cfg.seg_model.backbone = cfg.backbone
    cfg.pretrain.engine.seed = cfg.irn.engine.seed = cfg.seg_engine.seed = cfg.seed
    return cfg


def run_demo(cfg: DemoConfig, out_dir: str | os.PathLike) -> dict[str, Any]:
    """Run the demo into ``out_dir``; returns the metrics written to ``out_dir/metrics.json``.

    Resumable: every stage records its completion in ``out_dir/.stages/`` and a rerun with the same
    config skips the finished ones (a finished demo returns its metrics and writes nothing).
    """
    import torch

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = _resolved(cfg)
    stages = _Stages(out, cfg)
    finished = stages.done("metrics")
    if finished is not None:
        logger.info("the demo in %s is complete (%s); nothing to do", out, stages.dir)
        return finished["result"]
    threads = torch.get_num_threads()
    if cfg.num_threads is not None:
        torch.set_num_threads(cfg.num_threads)
    try:
        return _run_stages(cfg, out, stages)
    finally:
        torch.set_num_threads(threads)  # the caller's setting back (tests run many demos in one process)


def _run_stages(cfg: DemoConfig, out: Path, stages: _Stages) -> dict[str, Any]:
    """The stages of :func:`run_demo`, each skipped when recorded as finished."""
    import torch

    from sipe.cams.generate import CamConfig, generate_cams
    from sipe.data import SyntheticBackgrounds, build_dataset, generate_synthetic
    from sipe.demo.pictures import save_demo_overlays
    from sipe.engine.run_info import save_run_info
    from sipe.metrics import evaluate_cam, evaluate_is_cam, write_report
    from sipe.models.checkpoint import load_checkpoint
    from sipe.report import write_report_html
    from sipe.train import train_sipe
    from sipe.train.pretrain import pretrain_classifier

    save_run_info(out, cfg)  # after the thread count is set: run_info.json records it
    torch.manual_seed(cfg.seed)

    data_root = Path(stages.run("data", lambda: str(generate_synthetic(
        out / "data", seed=cfg.seed, n_train=cfg.data.n_train, n_val=cfg.data.n_val,
        image_size=cfg.data.image_size, num_classes=cfg.data.num_classes, max_objects=cfg.data.max_objects,
        body_radius=cfg.data.body_radius,
    ))))
    train_set = build_dataset("synthetic", data_root, "train")
    val_set = build_dataset("synthetic", data_root, "val")

    def pretrain() -> str:
        negatives = None
        if cfg.background_images > 0:
            negatives = SyntheticBackgrounds(cfg.background_images, cfg.data.num_classes, seed=cfg.seed,
                                             image_size=cfg.data.image_size)
        return str(pretrain_classifier(train_set, out / "pretrain", cfg.pretrain, negatives=negatives))

    weights = Path(stages.run("pretrain", pretrain))
    sipe_cfg = SIPETrainConfig(
        data=DataConfig(kind="synthetic", root=str(data_root), split="train", val_split=None),
        aug=cfg.aug,
        model=ModelConfig(backbone=cfg.backbone, weights=str(weights)),
        engine=cfg.engine,
    )
    ckpt = stages.run("sipe_train", lambda: str(train_sipe(sipe_cfg, out / "sipe")))

    model_cache: list[Any] = []

    def model() -> Any:  # loaded only when a CAM stage has work to do
        if not model_cache:
            model_cache.append(load_checkpoint(ckpt)[0])
        return model_cache[0]

    cam_cfg = CamConfig(scales=cfg.scales, save_cam=True, num_workers=1)
    cams = {name: out / f"cams_{name}" for name in ("train", "val")}
    stages.run("is_cam_val", lambda: generate_cams(model(), val_set, cams["val"], cam_cfg)["written"])

    def evaluate_cams() -> dict[str, Any]:
        cam_report = evaluate_cam(cams["val"] / "cam", val_set)
        is_cam_report = evaluate_is_cam(cams["val"] / "is_cam", val_set)
        write_report(out / "eval_cam.json", cam_report)
        write_report(out / "eval_is_cam.json", is_cam_report)
        save_demo_overlays(out, val_set, cams["val"], cfg.num_overlays)
        return {"cam_miou": cam_report["miou"], "cam_threshold": cam_report["threshold"],
                "is_cam_miou": is_cam_report["miou"]}

    metrics: dict[str, Any] = {"seed": cfg.seed, **stages.run("evaluate_cams", evaluate_cams)}
    if cfg.refine:
        train_cam_cfg = dataclasses.replace(cam_cfg, save_cam=False)
        stages.run("is_cam_train", lambda: generate_cams(model(), train_set, cams["train"], train_cam_cfg)["written"])
        metrics.update(_refine_and_segment(cfg, out, weights, train_set, val_set, cams, stages))
    metrics["num_val_images"] = len(val_set)
    # Stage times as first measured, also for stages a rerun skipped; total = their sum.
    metrics["seconds"] = {**stages.timings, "total": round(sum(stages.timings.values()), 1)}
    io.write_text(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    write_report_html(out, out / "report.html", dataset=val_set)  # reads metrics.json
    stages.run("metrics", lambda: metrics)
    return metrics


def _refine_and_segment(
    cfg: DemoConfig, out: Path, weights: Path, train_set: Any, val_set: Any, cams: dict[str, Path], stages: _Stages,
) -> dict[str, Any]:
    """Stages 5-6: confident regions -> IRN -> pseudo labels -> DeepLabV3; their metrics."""
    from sipe.config.seg import SegDataConfig, SegTrainConfig
    from sipe.metrics import evaluate_label_dir, write_report
    from sipe.refine.crf import make_confident_regions
    from sipe.refine.pseudo import make_pseudo_labels
    from sipe.refine.train_irn import load_irn, train_irn
    from sipe.seg.evaluate import evaluate_seg
    from sipe.seg.model import load_seg_checkpoint
    from sipe.seg.train import train_seg

    stages.run("confident_regions", lambda: make_confident_regions(
        train_set, cams["train"] / "is_cam", out / "regions_train").written)
    irn_cfg = dataclasses.replace(cfg.irn, weights=str(weights))
    irn_path = out / "irn" / "irn.pt"

    def irn_train() -> str:
        train_irn(train_set, out / "regions_train", out / "irn", irn_cfg)
        return str(irn_path)

    stages.run("irn_train", irn_train)

    def pseudo_labels() -> dict[str, Any]:
        irn = load_irn(irn_path)
        for name, dataset in (("val", val_set), ("train", train_set)):
            make_pseudo_labels(irn, dataset, cams[name] / "is_cam", out / f"pseudo_{name}",
                               exp_times=cfg.rw_exp_times)
        pseudo_report = evaluate_label_dir(out / "pseudo_val", val_set)
        pseudo_train_report = evaluate_label_dir(out / "pseudo_train", train_set)
        write_report(out / "eval_pseudo_labels.json", pseudo_report)
        return {"pseudo_label_miou": pseudo_report["miou"], "pseudo_label_train_miou": pseudo_train_report["miou"]}

    result = dict(stages.run("pseudo_labels", pseudo_labels))
    seg_cfg = SegTrainConfig(
        pseudo_labels=str(out / "pseudo_train"),
        data=SegDataConfig(kind="synthetic", root=str(out / "data"), split="train"),
        model=dataclasses.replace(cfg.seg_model, weights=str(weights)),
        aug=cfg.seg_aug,
        engine=cfg.seg_engine,
    )
    seg_ckpt = stages.run("seg_train", lambda: str(train_seg(seg_cfg, out / "seg")))

    def seg_eval() -> float:
        seg_model, _ = load_seg_checkpoint(seg_ckpt)
        seg_report = evaluate_seg(seg_model, val_set, save_dir=out / "seg_val")  # predictions for the report
        write_report(out / "eval_seg.json", seg_report)
        return seg_report["miou"]

    result["seg_miou"] = stages.run("seg_eval", seg_eval)
    return result
