"""The stages of ``sipe run``: tagged photos -> SIPE -> IS-CAM -> refinement -> segmentation -> ONNX -> results page.

Run folder layout (each stage its own subfolder; ``.stages/`` the completion records)::

    train/                 SIPE training (checkpoints/, tb/, config.yaml)
    cams_train/            IS-CAMs (and plain CAMs) of the training images: is_cam/, cam/
    cams_val/              the same for the evaluation split, when it is not part of the training split
    eval_cam.json, eval_is_cam.json, eval_pseudo_labels.json, eval_seg.json   (where masks exist)
    regions_train/, irn/   refine.method=irn: confident regions, IRN
    pseudo_train/, pseudo_val/   pseudo masks (palette PNGs)
    seg/                   the segmentation network (checkpoints/final.pt)
    seg_val/               its predictions on the evaluation split
    export/model.onnx      the segmentation network as ONNX
    metrics.json, report.html
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from sipe import io
from sipe.run.config import RunConfig, eval_splits, resolve
from sipe.run.pipeline import Pipeline, Stage

__all__ = ["RunData", "build_run_pipeline", "run_data", "run_pipeline"]

logger = logging.getLogger("sipe.run")

EXPORT_HINT = "pip install 'sipe[export]' for the ONNX export, then rerun"


class RunData:
    """The datasets of a run, read and checked without torch: the training split (images too small for
    training dropped), the evaluation split of the CAMs / pseudo masks and that of the segmentation network
    (``None`` where no masks exist)."""

    def __init__(self, cfg: RunConfig) -> None:
        from sipe.train.inputs import training_data

        self.training = training_data(cfg.train)  # checks classes and batch size; SIPE's validation split
        self.train = self.training.train
        split, seg_split = eval_splits(cfg)
        self.eval = self._masked(cfg, split) if split is not None else None
        self.seg_eval = None
        if seg_split is not None:
            self.seg_eval = self.eval if seg_split == split else self._masked(cfg, seg_split)
        train_names = set(self.train.names)
        # Evaluation images that are training images already have their IS-CAMs and pseudo masks there.
        self.eval_in_train = self.eval is not None and set(self.eval.names) <= train_names

    @staticmethod
    def _masked(cfg: RunConfig, split: str) -> Any:
        from sipe.data import dataset_from_config

        ds = dataset_from_config(cfg.data, split, with_masks=True)
        ds.require_masks()
        return ds

    def fingerprint(self) -> dict[str, str]:
        """What identifies the data: per split, the image count and a hash of the image names, their
        image-level labels and the class list (a rerun on other data is refused by it)."""
        out = {}
        for key, ds in (("train", self.train), ("eval", self.eval), ("seg_eval", self.seg_eval)):
            if ds is None:
                continue
            h = hashlib.sha1("\n".join(ds.names).encode())
            h.update(",".join(ds.class_names).encode())
            for i in range(len(ds)):
                h.update(np.asarray(ds.get_labels(i), np.uint8).tobytes())
            out[key] = f"{len(ds)} images {h.hexdigest()[:16]}"
        return out


def run_data(cfg: RunConfig) -> RunData:
    """:class:`RunData` of ``cfg`` (raises the dataset errors: missing files, unknown classes, no masks)."""
    data = RunData(cfg)
    for ds in (data.eval, data.seg_eval):
        if ds is not None and list(ds.class_names) != list(data.train.class_names):
            raise ValueError(f"the evaluation split {ds.source} has classes {ds.class_names}, the training split "
                             f"{data.train.class_names}; use the same class list (data.class_names)")
    return data


def _argmax_job(item: dict[str, Any], cam_dir: str) -> np.ndarray:
    from sipe.cams.format import read_is_cam

    keys, maps = read_is_cam(cam_dir, item["name"])
    return np.asarray(keys, dtype=np.uint8)[np.argmax(maps, axis=0)]


class _RunStages:
    """The work of each stage; later stages read earlier results from ``pipe.results``."""

    def __init__(self, cfg: RunConfig, out: Path, data: RunData) -> None:
        self.cfg, self.out, self.data = cfg, out, data
        self.pipe: Pipeline | None = None
        self._model: Any = None
        val = "train" if data.eval_in_train else "val"
        self.eval_cam_dir = out / f"cams_{val}"
        self.eval_pseudo_dir = out / f"pseudo_{val}"

    def _result(self, stage: str) -> Any:
        assert self.pipe is not None
        return self.pipe.results[stage]

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
        if not summary["written"] and not summary["existing"]:
            raise ValueError(f"no IS-CAM written to {out}: every image was skipped (listed in {out}/skipped.tsv)")
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
        return {"cam_miou": cam["miou"], "cam_threshold": cam["threshold"], "is_cam_miou": is_cam["miou"]}

    # ---------------------------------------------------------------- refinement

    def regions(self) -> int:
        from sipe.refine.crf import make_confident_regions

        r = self.cfg.refine
        return make_confident_regions(self.data.train, self.out / "cams_train" / "is_cam", self.out / "regions_train",
                                      bg_scale=r.bg_scale, num_workers=r.num_workers).total

    def irn_train(self) -> str:
        from sipe.refine.train_irn import train_irn

        train_irn(self.data.train, self.out / "regions_train", self.out / "irn", self.cfg.irn)
        return str(self.out / "irn" / "irn.pt")

    def _label_sets(self) -> list[tuple[Any, Path, Path]]:
        sets = [(self.data.train, self.out / "cams_train" / "is_cam", self.out / "pseudo_train")]
        if self.data.eval is not None and not self.data.eval_in_train:
            sets.append((self.data.eval, self.out / "cams_val" / "is_cam", self.out / "pseudo_val"))
        return sets

    def pseudo_labels(self) -> int:
        import functools

        from sipe.refine._runner import run_label_job
        from sipe.refine.crf import make_crf_labels

        r = self.cfg.refine
        written = 0
        irn = None
        if r.method == "irn":
            from sipe.engine import resolve_device
            from sipe.refine.train_irn import load_irn

            irn = load_irn(self._result("irn_train")).to(resolve_device(self.cfg.irn.engine.device))
        for dataset, cam_dir, out in self._label_sets():
            if irn is not None:
                from sipe.refine.pseudo import make_pseudo_labels

                stats = make_pseudo_labels(irn, dataset, cam_dir, out, beta=r.beta, exp_times=r.exp_times,
                                           radius=r.radius)
            elif r.method == "crf":
                stats = make_crf_labels(dataset, cam_dir, out, num_workers=r.num_workers)
            else:
                stats = run_label_job(dataset, functools.partial(_argmax_job, cam_dir=str(cam_dir)), out,
                                      num_workers=r.num_workers, desc="IS-CAM argmax labels")
            written += stats.total
        return written

    def eval_pseudo(self) -> dict[str, Any]:
        from sipe.metrics import evaluate_label_dir, write_report

        ds = self.data.eval
        report = evaluate_label_dir(self.eval_pseudo_dir, ds)
        write_report(self.out / "eval_pseudo_labels.json", {"split": ds.source, **report})
        return {"pseudo_label_miou": report["miou"]}

    # ---------------------------------------------------------------- segmentation

    def seg_train(self) -> str:
        from sipe.seg.train import train_seg

        return str(train_seg(self.cfg.seg, self.out / "seg"))

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
        metrics: dict[str, Any] = {}
        for stage in ("eval_cams", "eval_pseudo", "seg_eval"):
            metrics.update(results.get(stage) or {})
        metrics["checkpoints"] = {"sipe": results["train"], "seg": results["seg_train"],
                                  **({"onnx": results["export"]} if "export" in results else {})}
        train = self.data.train
        counts = sum((train.get_labels(i) > 0 for i in range(len(train))), np.zeros(train.num_classes - 1, np.int64))
        metrics["train_images_per_class"] = {n: int(c) for n, c in zip(train.class_names[1:], counts, strict=True)}
        metrics["num_train_images"] = len(train)
        if self.data.eval is not None:
            metrics["num_val_images"] = len(self.data.eval)
        timings = self.pipe.timings
        metrics["seconds"] = {**timings, "total": round(sum(timings.values()), 1)}
        io.write_text(self.out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
        ds = self.data.eval if self.data.eval is not None else None
        write_report_html(self.out, self.out / "report.html", dataset=ds,
                          cam_dir=self.eval_cam_dir if ds is not None else self.out / "cams_train",
                          pseudo_dir=self.eval_pseudo_dir if self.eval_pseudo_dir.is_dir() else None,
                          seg_dir=self.out / "seg_val" if (self.out / "seg_val").is_dir() else None,
                          num_images=self.cfg.eval.num_images)
        return metrics


def build_run_pipeline(cfg: RunConfig, out: str | os.PathLike, data: RunData | None = None) -> Pipeline:
    """The stages of ``sipe run`` for ``cfg`` (resolved with :func:`sipe.run.config.resolve`) on ``out``."""
    from sipe.config import to_dict

    out = Path(out)
    data = data if data is not None else run_data(cfg)
    s = _RunStages(cfg, out, data)
    has_eval = data.eval is not None
    no_masks = "no masks to evaluate on (set data.mask_dir, data.val_split or eval.split)"
    method = cfg.refine.method
    onnx = importlib.util.find_spec("onnx") is not None
    stages = [
        Stage("train", s.train, ("dataset", "data", "train"), ("train",)),
        Stage("cam_train", s.cam_train, ("cam",), ("cams_train",)),
        Stage("cam_val", s.cam_val, ("eval",), ("cams_val",), enabled=has_eval and not data.eval_in_train,
              why="the evaluation images are training images" if has_eval else no_masks),
        Stage("eval_cams", s.eval_cams, ("eval",), ("eval_cam.json", "eval_is_cam.json"), enabled=has_eval,
              why=no_masks),
        Stage("regions", s.regions, ("refine",), ("regions_train",), enabled=method == "irn",
              why=f"refine.method={method}"),
        Stage("irn_train", s.irn_train, ("irn",), ("irn",), enabled=method == "irn", why=f"refine.method={method}"),
        Stage("pseudo_labels", s.pseudo_labels, ("refine",), ("pseudo_train", "pseudo_val")),
        Stage("eval_pseudo", s.eval_pseudo, ("eval",), ("eval_pseudo_labels.json",), enabled=has_eval,
              why=no_masks),
        Stage("seg_train", s.seg_train, ("seg",), ("seg",)),
        Stage("seg_eval", s.seg_eval, ("eval",), ("seg_val", "eval_seg.json"), enabled=data.seg_eval is not None,
              why=no_masks),
        Stage("export", s.export, ("export",), ("export",), enabled=cfg.export.onnx and onnx,
              why=EXPORT_HINT if cfg.export.onnx else "export.onnx=false"),
        Stage("report", s.report, ("eval",), ("metrics.json", "report.html")),
    ]
    config = {**to_dict(cfg), "dataset": data.fingerprint()}
    derived = ("dataset.", "train.data.", "seg.data.", "seg.pseudo_labels")  # copies of data, its fingerprint
    pipe = Pipeline(out, stages, config, command="sipe run", derived=derived)
    s.pipe = pipe
    return pipe


def run_pipeline(cfg: RunConfig, out: str | os.PathLike, start: str | None = None, until: str | None = None,
                 data: RunData | None = None) -> dict[str, Any]:
    """Run ``sipe run`` into ``out``; returns the metrics written to ``out/metrics.json`` (``{}`` when stopped
    before the report stage by ``until``).

    Resumable: a rerun skips the finished stages, resumes an interrupted one and refuses (one line, before
    writing anything) a configuration or data that differs from the folder's, unless ``start`` redoes the
    first stage concerned.
    """
    import torch

    out = Path(out)
    cfg = resolve(cfg, out)
    pipe = build_run_pipeline(cfg, out, data)
    threads = torch.get_num_threads()

    def setup() -> None:
        from sipe.engine.run_info import save_run_info

        if cfg.num_threads is not None:
            torch.set_num_threads(cfg.num_threads)
        save_run_info(out, cfg)

    if cfg.export.onnx and not pipe.stage("export").enabled:
        logger.info("ONNX export off: %s", EXPORT_HINT)
    try:
        results = pipe.run(start, until, setup=setup)
    finally:
        torch.set_num_threads(threads)
    return results.get("report", {})
