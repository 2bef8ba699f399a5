"""The stages of ``sipe run``: tagged photos -> SIPE -> IS-CAM -> refinement -> segmentation -> ONNX -> results page.

Each stage calls the one library function of its step (the single commands wrap the same functions).
Run folder layout (each stage its own subfolder; ``.stages/`` the completion records)::

    data/, pretrain/       with a synthetic / pretrain section (the demo): the generated dataset, the
                           stand-in classifier pretraining (pretrain/backbone.pth)
    skipped.tsv            every image the run left out (unreadable, too small), once
    train/                 SIPE training (checkpoints/, tb/, config.yaml)
    cams_train/            IS-CAMs (and plain CAMs) of the training images: is_cam/, cam/
    cams_val/              the same for the evaluation split, when it is not part of the training split
    eval_cam.json, eval_is_cam.json, eval_pseudo_labels.json, eval_seg.json   (where masks exist)
    overlays/              eval.num_overlays pictures image | CAM | IS-CAM | ground truth
    regions_train/, irn/   refine.method=irn: confident regions, IRN
    pseudo_train/, pseudo_val/   pseudo masks (palette PNGs)
    seg/                   the segmentation network (checkpoints/final.pt)
    seg_val/               its predictions on the evaluation split
    export/model.onnx      the segmentation network as ONNX
    metrics.json, report.html
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from pathlib import Path
from typing import Any

from sipe import io
from sipe.run.config import PRETRAINED_FILE, SYNTHETIC_DIR, RunConfig, eval_splits, resolve
from sipe.run.data import RunData, run_data
from sipe.run.pipeline import Pipeline, Stage

__all__ = ["build_run_pipeline", "run_pipeline"]

logger = logging.getLogger("sipe.run")

EXPORT_HINT = "pip install 'sipe[export]' for the ONNX export, then rerun"
# Where the data sits, not what it is: replaced by the data's fingerprint in the run's keys (a moved
# dataset or run folder is the same run; the fingerprint says whether the images and labels changed).
_LOCATION_KEYS = ("root", "split", "mask_dir", "cache_dir")


class _RunStages:
    """The work of each stage; later stages read earlier results from ``pipe.results``."""

    def __init__(self, cfg: RunConfig, out: Path, data: RunData | None) -> None:
        self.cfg, self.out, self._data = cfg, out, data
        self.pipe: Pipeline | None = None
        self.plan: dict[str, Any] | None = None  # the data fingerprint and the derived settings (sipe.run.plan)
        self._model: Any = None
        split, _ = eval_splits(cfg)
        in_train = data.eval_in_train if data is not None else split == cfg.data.split
        val = "train" if in_train else "val"
        self.eval_cam_dir = out / f"cams_{val}"
        self.eval_pseudo_dir = out / f"pseudo_{val}"

    @property
    def data(self) -> RunData:
        """The run's datasets; read when a stage first needs them (after the data stage, for the demo)."""
        if self._data is None:
            self._data = run_data(self.cfg)
            self._data.write_skipped(self.out)
        return self._data

    def write_skipped(self) -> None:
        """``OUT/skipped.tsv`` now, when the datasets are loaded already (else when the data stage's output is
        first read)."""
        if self._data is not None:
            self._data.write_skipped(self.out)

    def _result(self, stage: str) -> Any:
        assert self.pipe is not None
        return self.pipe.results[stage]

    # ---------------------------------------------------------------- the demo's leading stages

    def make_data(self) -> str:
        from sipe.data import generate_synthetic

        s = self.cfg.synthetic
        assert s is not None
        return str(generate_synthetic(self.out / SYNTHETIC_DIR, n_val=s.n_val, **s.generator_args()))

    def pretrain(self) -> str:
        from sipe.data import SyntheticBackgrounds
        from sipe.train.pretrain import pretrain_classifier

        p, s = self.cfg.pretrain, self.cfg.synthetic
        assert p is not None
        negatives = None
        if p.background_images > 0:
            assert s is not None  # resolve() refuses background_images without a synthetic section
            negatives = SyntheticBackgrounds(p.background_images, s.num_classes, seed=s.seed, image_size=s.image_size)
        path = pretrain_classifier(self.data.train, self.out / PRETRAINED_FILE.parent, p, negatives=negatives)
        assert Path(path).resolve() == (self.out / PRETRAINED_FILE).resolve(), path
        return str(path)

    # ---------------------------------------------------------------- SIPE and IS-CAMs

    def train(self) -> str:
        from sipe.train import train_sipe

        return str(train_sipe(self.cfg.train, self.out / "train", self.data.training))

    def _sipe_model(self) -> Any:
        from sipe.models.checkpoint import load_checkpoint

        if self._model is None:
            self._model, self._meta = load_checkpoint(self._result("train"))
        return self._model

    def _cams(self, dataset: Any, out: Path) -> int:
        from sipe.cams.generate import CamConfig, generate_cams
        from sipe.config import MethodConfig
        from sipe.engine import resolve_device

        model = self._sipe_model()
        c = self.cfg.cam
        scales = c.scales if c.scales is not None else MethodConfig.from_checkpoint(self._meta).cam_scales
        model.to(resolve_device(self.cfg.train.engine.device))
        cam_cfg = CamConfig(scales=scales, flip=c.flip, save_cam=self.data.eval is not None, precision=c.precision,
                            channels_last=c.channels_last, num_workers=c.num_workers, batch_images=c.batch_images)
        summary = generate_cams(model, dataset, out, cam_cfg)
        return int(summary["written"] + summary["existing"])

    def cam_train(self) -> int:
        return self._cams(self.data.train, self.out / "cams_train")

    def cam_val(self) -> int:
        return self._cams(self.data.eval, self.out / "cams_val")

    def eval_cams(self) -> dict[str, Any]:
        from sipe.metrics import evaluate_cam, evaluate_is_cam, write_report

        ds = self.data.eval
        cam = evaluate_cam(self.eval_cam_dir / "cam", ds)
        is_cam = evaluate_is_cam(self.eval_cam_dir / "is_cam", ds)
        write_report(self.out / "eval_cam.json", {"split": ds.source, **cam})
        write_report(self.out / "eval_is_cam.json", {"split": ds.source, **is_cam})
        if self.cfg.eval.num_overlays > 0:
            from sipe.vis import save_cam_overlays

            save_cam_overlays(self.out / "overlays", ds, self.eval_cam_dir, self.cfg.eval.num_overlays)
        return {"cam_miou": cam["miou"], "cam_threshold": cam["threshold"], "is_cam_miou": is_cam["miou"]}

    # ---------------------------------------------------------------- refinement

    def regions(self) -> int:
        from sipe.refine.crf import make_confident_regions

        r = self.cfg.refine
        return make_confident_regions(self.data.train, self.out / "cams_train" / "is_cam", self.out / "regions_train",
                                      bg_scale=r.bg_scale, num_workers=r.num_workers).total

    def irn_train(self) -> str:
        from sipe.refine.train_irn import train_irn

        return str(train_irn(self.data.train, self.out / "regions_train", self.out / "irn", self.cfg.irn))

    def _label_sets(self) -> list[tuple[Any, Path, Path]]:
        sets = [(self.data.train, self.out / "cams_train" / "is_cam", self.out / "pseudo_train")]
        if self.data.eval is not None and not self.data.eval_in_train:
            sets.append((self.data.eval, self.out / "cams_val" / "is_cam", self.out / "pseudo_val"))
        return sets

    def pseudo_labels(self) -> int:
        from sipe.refine.labels import make_labels
        from sipe.refine.random_walk import Walk

        r = self.cfg.refine
        irn = self._result("irn_train") if r.method == "irn" else None
        walk = Walk(beta=r.beta, exp_times=r.exp_times, radius=r.radius)
        return sum(make_labels(r.method, dataset, cam_dir, out, irn=irn, device=self.cfg.irn.engine.device, walk=walk,
                               num_workers=r.num_workers).total for dataset, cam_dir, out in self._label_sets())

    def eval_pseudo(self) -> dict[str, Any]:
        from sipe.metrics import evaluate_label_dir, write_report

        ds = self.data.eval
        report = evaluate_label_dir(self.eval_pseudo_dir, ds)
        write_report(self.out / "eval_pseudo_labels.json", {"split": ds.source, **report})
        out = {"pseudo_label_miou": report["miou"]}
        # Where the evaluation images are not the training images: the labels the segmentation network trains on.
        train = self.data.masked_train() if not self.data.eval_in_train else None
        if train is not None:
            out["pseudo_label_train_miou"] = evaluate_label_dir(self.out / "pseudo_train", train)["miou"]
        return out

    # ---------------------------------------------------------------- segmentation

    def seg_train(self) -> str:
        from sipe.seg.train import train_seg

        return str(train_seg(self.cfg.seg, self.out / "seg", images=self.data.train))

    def seg_eval(self) -> dict[str, Any]:
        from sipe.engine import resolve_device
        from sipe.metrics import write_report
        from sipe.seg.evaluate import evaluate_seg
        from sipe.seg.model import load_seg_checkpoint

        e = self.cfg.eval
        model, _ = load_seg_checkpoint(self._result("seg_train"))
        model.to(resolve_device(self.cfg.seg.engine.device))
        ds = self.data.seg_eval
        report = evaluate_seg(model, ds, e.seg_scales, e.seg_flip, e.seg_crf, num_workers=e.num_workers,
                              save_dir=self.out / "seg_val")
        write_report(self.out / "eval_seg.json", {"split": ds.source, **report})
        return {"seg_miou": report["miou"]}

    def export(self) -> str:
        from sipe.seg.export import export_onnx
        from sipe.seg.model import load_seg_checkpoint

        model, spec = load_seg_checkpoint(self._result("seg_train"))
        path = export_onnx(model, self.out / "export" / "model.onnx", opset=self.cfg.export.opset,
                           class_names=spec.class_names)
        return str(path)

    # ---------------------------------------------------------------- results

    def report(self) -> dict[str, Any]:
        from sipe.report import write_report_html

        assert self.pipe is not None
        results = self.pipe.results
        metrics: dict[str, Any] = {} if self.cfg.seed is None else {"seed": self.cfg.seed}
        for stage in ("eval_cams", "eval_pseudo", "seg_eval"):
            metrics.update(results.get(stage) or {})
        files = {"sipe": "train", "seg": "seg_train", "onnx": "export"}
        metrics["checkpoints"] = {k: os.path.relpath(results[v], self.out) for k, v in files.items() if v in results}
        from sipe.data.labelmap import label_matrix

        train = self.data.train
        counts = label_matrix(train).sum(axis=0)
        metrics["train_images_per_class"] = {n: int(c) for n, c in zip(train.class_names[1:], counts, strict=True)}
        metrics["num_train_images"] = len(train)
        if self.data.eval is not None:
            metrics["num_val_images"] = len(self.data.eval)
        timings = self.pipe.timings
        # Every stage's own seconds; the total only over the stages this invocation ran (a resumed run's earlier
        # stages are named in "stages_this_invocation" by their absence).
        metrics["seconds"] = {**timings, "total": round(sum(timings[s] for s in self.pipe.ran), 1)}
        metrics["stages_this_invocation"] = list(self.pipe.ran)
        if self.plan is not None:
            metrics["plan"] = self.plan
        # Checks of the run's own numbers (sipe.report.flags); the page shows the same list at its top.
        from sipe.cams.presence import write_presence
        from sipe.config import MethodConfig
        from sipe.report.flags import PRESENCE_FILE, run_flags

        model = self._sipe_model()  # its classifier's scores of the training images, tagged and not
        write_presence(model, train, self.out / PRESENCE_FILE, MethodConfig.from_checkpoint(self._meta).score_threshold)

        metrics["flags"] = run_flags(self.out, metrics, eval_on_train=self.data.eval_in_train)
        io.write_text(self.out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
        ds = self.data.eval if self.data.eval is not None else None
        write_report_html(self.out, self.out / "report.html", dataset=ds,
                          cam_dir=self.eval_cam_dir if ds is not None else self.out / "cams_train",
                          pseudo_dir=self.eval_pseudo_dir if self.eval_pseudo_dir.is_dir() else None,
                          seg_dir=self.out / "seg_val" if (self.out / "seg_val").is_dir() else None,
                          num_images=self.cfg.eval.num_images)
        return metrics


# Keys added after run folders existed, with what those folders did: a folder made before a key existed is
# still complete under a config that keeps that behaviour (sipe.run.pipeline). A new key that changes what a
# stage writes belongs here, with the value that reproduces the older outputs.
LEGACY_VALUES: dict[str, Any] = {
    "synthetic.class_weights": None,
    "train.sampling": "uniform",
    "train.repeat_threshold": 0.3,
    "cam.batch_images": 1,
    "irn.displacement": True,  # the branch was always trained; without it the pseudo labels are the same
    "seg.sampling": "uniform",
    "seg.repeat_threshold": 0.3,
    "seg.loss_weighting": "none",
}


def build_run_pipeline(cfg: RunConfig, out: str | os.PathLike, data: RunData | None = None) -> Pipeline:
    """The stages of ``sipe run`` for ``cfg`` (resolved with :func:`sipe.run.config.resolve`) on ``out``.

    The datasets are read here (their errors come before any work), except generated ones (a ``synthetic``
    section), which the first stage writes."""
    return _build(cfg, out, data)[0]


def _build(cfg: RunConfig, out: str | os.PathLike, data: RunData | None) -> tuple[Pipeline, _RunStages]:
    from sipe.config import to_dict

    out = Path(out)
    if data is None and cfg.synthetic is None:
        data = run_data(cfg)
    s = _RunStages(cfg, out, data)
    split, seg_split = eval_splits(cfg)
    has_eval = split is not None
    in_train = data.eval_in_train if data is not None else split == cfg.data.split
    has_seg_eval = data.seg_eval is not None if data is not None else seg_split is not None
    no_masks = "no masks to evaluate on (set data.mask_dir, data.val_split or eval.split)"
    method = cfg.refine.method
    onnx = importlib.util.find_spec("onnx") is not None
    stages = []
    if cfg.synthetic is not None:
        # seed and thread count change every number, so they belong to the first stage.
        stages.append(Stage("data", s.make_data, ("seed", "num_threads", "synthetic", "data"), (SYNTHETIC_DIR,)))
    if cfg.pretrain is not None:
        stages.append(Stage("pretrain", s.pretrain, ("seed", "num_threads", "data", "dataset.train", "pretrain"),
                            (str(PRETRAINED_FILE.parent),)))
    stages += [
        Stage("train", s.train, ("seed", "num_threads", "data", "dataset.train", "train"), ("train",)),
        Stage("cam_train", s.cam_train, ("cam",), ("cams_train",)),
        Stage("cam_val", s.cam_val, ("eval.split", "dataset.eval"), ("cams_val",), enabled=has_eval and not in_train,
              why="the evaluation images are training images" if has_eval else no_masks),
        Stage("eval_cams", s.eval_cams, ("eval",), ("eval_cam.json", "eval_is_cam.json", "overlays"),
              enabled=has_eval, why=no_masks),
        Stage("regions", s.regions, ("refine",), ("regions_train",), enabled=method == "irn",
              why=f"refine.method={method}"),
        Stage("irn_train", s.irn_train, ("irn",), ("irn",), enabled=method == "irn", why=f"refine.method={method}"),
        Stage("pseudo_labels", s.pseudo_labels, ("refine",), ("pseudo_train", "pseudo_val")),
        Stage("eval_pseudo", s.eval_pseudo, ("eval",), ("eval_pseudo_labels.json",), enabled=has_eval,
              why=no_masks),
        Stage("seg_train", s.seg_train, ("seg",), ("seg",)),
        Stage("seg_eval", s.seg_eval, ("eval", "dataset.seg_eval"), ("seg_val", "eval_seg.json"),
              enabled=has_seg_eval, why=no_masks),
        Stage("export", s.export, ("export",), ("export",), enabled=cfg.export.onnx and onnx,
              why=EXPORT_HINT if cfg.export.onnx else "export.onnx=false"),
        Stage("report", s.report, ("eval",), ("metrics.json", "report.html", "presence.json")),
    ]
    config = to_dict(cfg)
    if data is not None:
        # The data's fingerprint instead of where it lies (a generated dataset is fixed by its section).
        config["dataset"] = data.fingerprint()
        for section in (config["data"], config["train"]["data"], config["seg"]["data"]):
            for key in _LOCATION_KEYS:
                section.pop(key, None)
    derived = ("dataset.", "train.data.", "seg.data.", "seg.pseudo_labels")  # copies of data, its fingerprint
    pipe = Pipeline(out, stages, config, command="sipe run", derived=derived, legacy=LEGACY_VALUES)
    s.pipe = pipe
    return pipe, s


def run_pipeline(cfg: RunConfig, out: str | os.PathLike, start: str | None = None, until: str | None = None,
                 data: RunData | None = None, plan: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run ``sipe run`` into ``out``; returns the metrics written to ``out/metrics.json`` (``{}`` when stopped
    before the report stage by ``until``). ``plan``: the data fingerprint and the settings derived from it
    (:func:`sipe.run.plan.plan_record`), shown in ``metrics.json`` and on the results page.

    Resumable: a rerun skips the finished stages, resumes an interrupted one and refuses (one line, before
    writing anything) a configuration or data that differs from the folder's, unless ``start`` redoes the
    first stage concerned.
    """
    import torch

    out = Path(out)
    cfg = resolve(cfg, out)
    pipe, work = _build(cfg, out, data)
    work.plan = plan
    threads = torch.get_num_threads()

    def setup() -> None:
        from sipe.engine.run_info import save_run_info

        if cfg.num_threads is not None:
            torch.set_num_threads(cfg.num_threads)
        save_run_info(out, cfg)  # after the thread count is set: run_info.json records it
        if cfg.seed is not None:
            torch.manual_seed(cfg.seed)
        work.write_skipped()

    if cfg.export.onnx and not pipe.stage("export").enabled:
        logger.info("ONNX export off: %s", EXPORT_HINT)
    try:
        results = pipe.run(start, until, setup=setup)
    finally:
        torch.set_num_threads(threads)  # the caller's setting back (tests run many runs in one process)
    return results.get("report", {})
