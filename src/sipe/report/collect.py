"""What a run folder holds: metrics, evaluation reports, TensorBoard scalars, CAM and label folders.

Layout read (every part optional; the demo writes all of it)::

    RUN_DIR/metrics.json            seconds per stage ("seconds"), mIoUs
    RUN_DIR/run_info.json           version, git commit, command (sipe.engine.run_info.save_run_info)
    RUN_DIR/config.yaml             the resolved config
    RUN_DIR/eval_{cam,is_cam,pseudo_labels,seg}.json   sipe eval / demo reports
    RUN_DIR/**/tb/events.out.tfevents.*                 training curves of each stage
    RUN_DIR/cams_val/{cam,is_cam}/<name>.npz            CAM / IS-CAM files of the shown images
    RUN_DIR/pseudo_val/<name>.png, RUN_DIR/seg_val/<name>.png   pseudo masks, segmentation predictions
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sipe.errors import InputError


class ReportError(InputError):
    """A run folder or one of its files that cannot be reported on (names the file and the fix)."""


@dataclass(frozen=True)
class Stage:
    key: str  # also the metrics.json key prefix
    title: str
    eval_file: str
    metrics_key: str


STAGES: tuple[Stage, ...] = (
    Stage("cam", "CAM", "eval_cam.json", "cam_miou"),
    Stage("is_cam", "IS-CAM", "eval_is_cam.json", "is_cam_miou"),
    Stage("pseudo_labels", "pseudo labels", "eval_pseudo_labels.json", "pseudo_label_miou"),
    Stage("seg", "segmentation", "eval_seg.json", "seg_miou"),
)

# Readable names of a run's training stages (folder holding tb/); others keep their folder name.
TRAINING_TITLES = {
    "pretrain": "classifier pretraining",
    "train": "SIPE training",
    ".": "training",
    "irn": "IRN",
    "seg": "DeepLabV3",
}

# Default folders of the images shown, first existing one wins (the demo's names, then the README's).
CAM_DIRS = ("cams_val", "cams")
PSEUDO_DIRS = ("pseudo_val", "pseudo")
SEG_DIRS = ("seg_val",)


@dataclass
class Curves:
    """Scalars of one TensorBoard run: ``tag -> (steps (T,), values (T,))`` and its wall-clock span."""

    scalars: dict[str, tuple[list[int], list[float]]]
    seconds: float | None


@dataclass
class RunContents:
    """Everything a report shows, read from one run folder (``None``/empty where the run lacks it)."""

    run_dir: Path
    metrics: dict[str, Any] | None = None
    run_info: dict[str, Any] | None = None
    config_text: str | None = None
    evals: dict[str, dict[str, Any]] = field(default_factory=dict)  # Stage.key -> report
    curves: dict[str, Curves] = field(default_factory=dict)  # training stage folder -> scalars
    cam_dir: Path | None = None  # holds cam/ and/or is_cam/
    pseudo_dir: Path | None = None
    seg_dir: Path | None = None
    dataset: Any = None  # a sipe dataset of the shown images, or None


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ReportError(f"cannot read {path} ({e}); rerun the stage that writes it or delete the file") from e
    if not isinstance(data, dict):
        raise ReportError(f"{path} holds a {type(data).__name__}, a JSON object was expected; rerun its stage")
    return data


def read_curves(tb_dir: Path) -> Curves:
    """Scalars of the event files in ``tb_dir`` (all of them: resumed runs append new files)."""
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

    acc = EventAccumulator(str(tb_dir), size_guidance={SCALARS: 0})  # 0 = keep every point
    # The reader logs "No path found after <file>" at INFO for every event file it finishes: noise in a run's log.
    tb_logger = logging.getLogger("tensorboard")
    level = tb_logger.level
    tb_logger.setLevel(max(level, logging.WARNING))
    try:
        acc.Reload()
    finally:
        tb_logger.setLevel(level)
    scalars: dict[str, tuple[list[int], list[float]]] = {}
    times: list[float] = []
    for tag in sorted(acc.Tags().get("scalars", [])):
        # A resumed run logs some steps twice; the last value of a step wins.
        by_step = {e.step: e.value for e in acc.Scalars(tag)}
        steps = sorted(by_step)
        scalars[tag] = (steps, [float(by_step[s]) for s in steps])
        times += [e.wall_time for e in acc.Scalars(tag)]
    return Curves(scalars, round(max(times) - min(times), 1) if len(times) > 1 else None)


def _tb_dirs(run_dir: Path) -> dict[str, Path]:
    found = sorted({p.parent for p in run_dir.rglob("events.out.tfevents.*") if p.parent.name == "tb"})
    order = list(TRAINING_TITLES)
    out = {}
    for d in found:
        rel = d.parent.relative_to(run_dir).as_posix()
        out[rel] = d
    return dict(sorted(out.items(), key=lambda kv: (order.index(kv[0]) if kv[0] in order else len(order), kv[0])))


def _first_dir(run_dir: Path, given: str | os.PathLike | None, defaults: tuple[str, ...], what: str) -> Path | None:
    if given is not None:
        path = Path(given)
        if not path.is_dir():
            raise ReportError(f"{what} folder {path} does not exist; give an existing folder or leave the option out")
        return path
    for name in defaults:
        if (run_dir / name).is_dir():
            return run_dir / name
    return None


def _demo_dataset(run_dir: Path) -> Any:
    """The evaluation split of a run on generated data (the demo: a ``synthetic`` section; the data lives in
    ``RUN_DIR/data``), or ``None``."""
    import yaml

    path = run_dir / "config.yaml"
    try:
        cfg = yaml.safe_load(path.read_text(encoding="utf-8")) if path.is_file() else None
    except yaml.YAMLError:
        return None
    if not (isinstance(cfg, dict) and cfg.get("synthetic") and (run_dir / "data" / "class_names.txt").is_file()):
        return None
    from sipe.data import build_dataset

    return build_dataset("synthetic", run_dir / "data", (cfg.get("eval") or {}).get("split") or "val")


def collect_run(
    run_dir: str | os.PathLike,
    dataset: Any = None,
    cam_dir: str | os.PathLike | None = None,
    pseudo_dir: str | os.PathLike | None = None,
    seg_dir: str | os.PathLike | None = None,
) -> RunContents:
    """Read what ``run_dir`` holds (see the module docstring).

    Args:
        dataset: the sipe dataset whose images the grid shows (default: a demo run's held-out split,
            else none: the page then has no image grid).
        cam_dir, pseudo_dir, seg_dir: folders of the shown images' CAM files (with ``cam/`` and/or
            ``is_cam/`` inside), pseudo masks and segmentation predictions (default: the demo's).
    """
    run = Path(run_dir)
    if not run.is_dir():
        raise ReportError(f"run folder {run} does not exist; give the --out folder of a sipe run")
    contents = RunContents(run_dir=run)
    contents.metrics = _read_json(run / "metrics.json")
    contents.run_info = _read_json(run / "run_info.json")
    if (run / "config.yaml").is_file():
        contents.config_text = (run / "config.yaml").read_text(encoding="utf-8")
    for stage in STAGES:
        report = _read_json(run / stage.eval_file)
        if report is not None:
            if "miou" not in report or "classes" not in report:
                raise ReportError(f"{run / stage.eval_file} has no 'miou'/'classes'; rewrite it with `sipe eval`")
            contents.evals[stage.key] = report
    for name, tb in _tb_dirs(run).items():
        contents.curves[name] = read_curves(tb)
    contents.cam_dir = _first_dir(run, cam_dir, CAM_DIRS, "CAM")
    contents.pseudo_dir = _first_dir(run, pseudo_dir, PSEUDO_DIRS, "pseudo-mask")
    contents.seg_dir = _first_dir(run, seg_dir, SEG_DIRS, "segmentation")
    contents.dataset = dataset if dataset is not None else _demo_dataset(run)
    return contents
