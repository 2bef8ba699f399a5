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
from pathlib import Path
from typing import Any

from sipe import io
from sipe.config import DataConfig, ModelConfig
from sipe.config.train import SIPETrainConfig
from sipe.demo.config import DemoConfig
from sipe.engine.run_info import save_run_info
from sipe.run.pipeline import Pipeline, Stage

logger = logging.getLogger("sipe.demo")


def _resolved(cfg: DemoConfig) -> DemoConfig:
    """A copy whose stage configs carry the demo's backbone and seed, so that the saved
    ``config.yaml`` shows what every stage really ran with (the weights come later, per stage)."""
    cfg = copy.deepcopy(cfg)
    cfg.pretrain.backbone = cfg.irn.backbone = cfg.seg_model.backbone = cfg.backbone
    cfg.pretrain.engine.seed = cfg.irn.engine.seed = cfg.seg_engine.seed = cfg.seed
    return cfg


def run_demo(cfg: DemoConfig, out_dir: str | os.PathLike, start: str | None = None,
             until: str | None = None) -> dict[str, Any]:
    """Run the demo into ``out_dir``; returns the metrics written to ``out_dir/metrics.json``.

    The stages run through :class:`sipe.run.Pipeline`, the orchestrator of ``sipe run``: each records its
    completion in ``out_dir/.stages/`` and a rerun with the same config skips the finished ones (a
    finished demo returns its metrics and writes nothing); ``start``/``until`` redo from / stop after a
    stage (then the returned metrics are those recorded, or ``{}`` before the metrics stage).
    """
    import torch

    out = Path(out_dir)
    cfg = _resolved(cfg)
    pipe = demo_pipeline(cfg, out)
    threads = torch.get_num_threads()

    def setup() -> None:
        if cfg.num_threads is not None:
            torch.set_num_threads(cfg.num_threads)
        save_run_info(out, cfg)  # after the thread count is set: run_info.json records it
        torch.manual_seed(cfg.seed)

    try:
        results = pipe.run(start, until, setup=setup)
    finally:
        torch.set_num_threads(threads)  # the caller's setting back (tests run many demos in one process)
    return results.get("metrics", {})


def demo_pipeline(cfg: DemoConfig, out: Path) -> Pipeline:
    """The demo's stages (``cfg`` as :func:`_resolved` gives it) as a :class:`sipe.run.Pipeline` on ``out``."""
    from sipe.config import to_dict

    state = _DemoStages(cfg, out)
    # Each stage names the config sections it adds (a changed key is redone from its first stage);
    # seed and thread count change every number, so they belong to the first.
    stages = [
        Stage("data", state.data, ("seed", "num_threads", "data"), ("data",)),
        Stage("pretrain", state.pretrain, ("backbone", "pretrain", "background_images"), ("pretrain",)),
        Stage("sipe_train", state.sipe_train, ("aug", "engine"), ("sipe",)),
        Stage("is_cam_val", state.is_cam_val, ("scales", "flip"), ("cams_val",)),
        Stage("evaluate_cams", state.evaluate_cams, ("num_overlays",),
              ("eval_cam.json", "eval_is_cam.json", "overlays")),
    ]
    if cfg.refine:
        stages += [
            Stage("is_cam_train", state.is_cam_train, ("refine",), ("cams_train",)),
            Stage("confident_regions", state.confident_regions, ("irn",), ("regions_train",)),
            Stage("irn_train", state.irn_train, ("irn",), ("irn",)),
            Stage("pseudo_labels", state.pseudo_labels, ("rw_exp_times",),
                  ("pseudo_val", "pseudo_train", "eval_pseudo_labels.json")),
            Stage("seg_train", state.seg_train, ("seg_model", "seg_aug", "seg_engine"), ("seg",)),
            Stage("seg_eval", state.seg_eval, ("seg_model",), ("seg_val", "eval_seg.json")),
        ]
    stages.append(Stage("metrics", state.metrics, ("refine",), ("metrics.json", "report.html")))
    pipe = Pipeline(out, stages, to_dict(cfg), command="sipe demo")
    state.pipe = pipe
    return pipe


class _DemoStages:
    """The work of each demo stage; later stages read the earlier ones' results from ``pipe.results``."""

    def __init__(self, cfg: DemoConfig, out: Path) -> None:
        self.cfg, self.out = cfg, out
        self.pipe: Pipeline | None = None
        self._model: Any = None
        self._sets: dict[str, Any] = {}
        self.cams = {name: out / f"cams_{name}" for name in ("train", "val")}

    def _result(self, stage: str) -> Any:
        assert self.pipe is not None
        return self.pipe.results[stage]

    def _set(self, split: str) -> Any:
        from sipe.data import build_dataset

        if split not in self._sets:
            self._sets[split] = build_dataset("synthetic", Path(self._result("data")), split)
        return self._sets[split]

    def _model_(self) -> Any:  # loaded only when a CAM stage has work to do
        from sipe.models.checkpoint import load_checkpoint

        if self._model is None:
            self._model = load_checkpoint(self._result("sipe_train"))[0]
        return self._model

    def _cam_cfg(self, save_cam: bool) -> Any:
        from sipe.cams.generate import CamConfig

        return CamConfig(scales=self.cfg.scales, flip=self.cfg.flip, save_cam=save_cam, num_workers=1)

    def data(self) -> str:
        from sipe.data import generate_synthetic

        cfg = self.cfg
        return str(generate_synthetic(
            self.out / "data", seed=cfg.seed, n_train=cfg.data.n_train, n_val=cfg.data.n_val,
            image_size=cfg.data.image_size, num_classes=cfg.data.num_classes, max_objects=cfg.data.max_objects,
            body_radius=cfg.data.body_radius,
        ))

    def pretrain(self) -> str:
        from sipe.data import SyntheticBackgrounds
        from sipe.train.pretrain import pretrain_classifier

        cfg = self.cfg
        negatives = None
        if cfg.background_images > 0:
            negatives = SyntheticBackgrounds(cfg.background_images, cfg.data.num_classes, seed=cfg.seed,
                                             image_size=cfg.data.image_size)
        return str(pretrain_classifier(self._set("train"), self.out / "pretrain", cfg.pretrain, negatives=negatives))

    def sipe_train(self) -> str:
        from sipe.train import train_sipe

        cfg = self.cfg
        sipe_cfg = SIPETrainConfig(
            data=DataConfig(kind="synthetic", root=str(self._result("data")), split="train", val_split=None),
            aug=cfg.aug,
            model=ModelConfig(backbone=cfg.backbone, weights=str(self._result("pretrain"))),
            engine=cfg.engine,
        )
        return str(train_sipe(sipe_cfg, self.out / "sipe"))

    def is_cam_val(self) -> int:
        from sipe.cams.generate import generate_cams

        return generate_cams(self._model_(), self._set("val"), self.cams["val"], self._cam_cfg(True))["written"]

    def evaluate_cams(self) -> dict[str, Any]:
        from sipe.demo.pictures import save_demo_overlays
        from sipe.metrics import evaluate_cam, evaluate_is_cam, write_report

        val_set, out = self._set("val"), self.out
        cam_report = evaluate_cam(self.cams["val"] / "cam", val_set)
        is_cam_report = evaluate_is_cam(self.cams["val"] / "is_cam", val_set)
        write_report(out / "eval_cam.json", cam_report)
        write_report(out / "eval_is_cam.json", is_cam_report)
        save_demo_overlays(out, val_set, self.cams["val"], self.cfg.num_overlays)
        return {"cam_miou": cam_report["miou"], "cam_threshold": cam_report["threshold"],
                "is_cam_miou": is_cam_report["miou"]}

    def is_cam_train(self) -> int:
        from sipe.cams.generate import generate_cams

        return generate_cams(self._model_(), self._set("train"), self.cams["train"], self._cam_cfg(False))["written"]

    def confident_regions(self) -> int:
        from sipe.refine.crf import make_confident_regions

        return make_confident_regions(self._set("train"), self.cams["train"] / "is_cam",
                                      self.out / "regions_train").written

    def irn_train(self) -> str:
        from sipe.refine.train_irn import train_irn

        irn_cfg = dataclasses.replace(self.cfg.irn, weights=str(self._result("pretrain")))
        train_irn(self._set("train"), self.out / "regions_train", self.out / "irn", irn_cfg)
        return str(self.out / "irn" / "irn.pt")

    def pseudo_labels(self) -> dict[str, Any]:
        from sipe.metrics import evaluate_label_dir, write_report
        from sipe.refine.pseudo import make_pseudo_labels
        from sipe.refine.train_irn import load_irn

        out = self.out
        irn = load_irn(self._result("irn_train"))
        for name in ("val", "train"):
            make_pseudo_labels(irn, self._set(name), self.cams[name] / "is_cam", out / f"pseudo_{name}",
                               exp_times=self.cfg.rw_exp_times)
        pseudo_report = evaluate_label_dir(out / "pseudo_val", self._set("val"))
        pseudo_train_report = evaluate_label_dir(out / "pseudo_train", self._set("train"))
        write_report(out / "eval_pseudo_labels.json", pseudo_report)
        return {"pseudo_label_miou": pseudo_report["miou"], "pseudo_label_train_miou": pseudo_train_report["miou"]}

    def seg_train(self) -> str:
        from sipe.config.seg import SegDataConfig, SegTrainConfig
        from sipe.seg.train import train_seg

        cfg, out = self.cfg, self.out
        seg_cfg = SegTrainConfig(
            pseudo_labels=str(out / "pseudo_train"),
            data=SegDataConfig(kind="synthetic", root=str(out / "data"), split="train"),
            model=dataclasses.replace(cfg.seg_model, weights=str(self._result("pretrain"))),
            aug=cfg.seg_aug,
            engine=cfg.seg_engine,
        )
        return str(train_seg(seg_cfg, out / "seg"))

    def seg_eval(self) -> float:
        from sipe.metrics import write_report
        from sipe.seg.evaluate import evaluate_seg
        from sipe.seg.model import load_seg_checkpoint

        seg_model, _ = load_seg_checkpoint(self._result("seg_train"))
        seg_report = evaluate_seg(seg_model, self._set("val"), save_dir=self.out / "seg_val")  # for the report
        write_report(self.out / "eval_seg.json", seg_report)
        return seg_report["miou"]

    def metrics(self) -> dict[str, Any]:
        from sipe.report import write_report_html

        assert self.pipe is not None
        results = self.pipe.results
        metrics: dict[str, Any] = {"seed": self.cfg.seed, **results["evaluate_cams"]}
        if self.cfg.refine:
            metrics.update(results["pseudo_labels"])
            metrics["seg_miou"] = results["seg_eval"]
        metrics["num_val_images"] = len(self._set("val"))
        # Stage times as first measured, also for stages a rerun skipped; total = their sum.
        timings = self.pipe.timings
        metrics["seconds"] = {**timings, "total": round(sum(timings.values()), 1)}
        io.write_text(self.out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
        write_report_html(self.out, self.out / "report.html", dataset=self._set("val"))  # reads metrics.json
        return metrics
