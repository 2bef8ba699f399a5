"""A run that knows when it failed: checks of a run folder's own numbers, each a flag in words for the top of
the results page and a coded entry in ``metrics.json`` (``flags: [{code, stage, message}]``).

Every check states its threshold in its message. What each reads (all optional; a check without its input
says nothing): the evaluation reports ``eval_*.json`` (mIoU, per-class pixels, the CAM sweep, ``heat``),
``metrics.json`` (training images per class), the training stages' TensorBoard scalars (the classifier's
loss), their ``config.yaml`` (backbone weights), ``presence.json`` (the classifier's scores of images with
and without each tag) and the run's stage layout (evaluation on the training images).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml

from sipe.engine.run_info import random_weight_keys
from sipe.report.collect import STAGES, RunContents, collect_run

__all__ = [
    "BACKGROUND_IOU_MIN",
    "END_DROP",
    "EVERYWHERE_SHARE",
    "ISCAM_TOLERANCE",
    "LOSS_DROP_MIN",
    "MIN_TRAIN_IMAGES",
    "PRESENCE_FILE",
    "SCORE_GAP_MIN",
    "SEG_GAP_TOLERANCE",
    "all_flags",
    "degenerate_flags",
    "read_presence",
    "run_flags",
    "score_groups",
]

MIN_TRAIN_IMAGES = 5  # fewer training images of a class than this: its results say little
# A segmentation network at most this much below its pseudo labels (mIoU) is not flagged: a gap that small
# is noise (the demo's seeds land up to 4 points either side of their labels with the same settings), and the
# flag should ask for a decision only when there is one to make.
SEG_GAP_TOLERANCE = 0.01
# IS-CAM more than this below the plain CAM (mIoU): the method made the maps worse (the demo: +21 points).
ISCAM_TOLERANCE = 0.01
# The best CAM threshold this close to an end of the sweep (0.00-0.95): the maps separate nothing; a healthy
# demo's lies at 0.05-0.74 (README), its peak resolved by the sweep.
END_MARGIN = 0.05
END_DROP = 0.02  # ... unless the sweep's mIoU at that end is this far below its best (a resolved peak)
# A foreground class predicted on at least this share of all evaluated pixels "is everywhere" (unless its
# ground truth covers as much): a network calling every pixel one class.
EVERYWHERE_SHARE = 0.9
BACKGROUND_IOU_MIN = 0.05  # background IoU below this: the background is not found at all
# The classifier's loss must fall at least this share below its first logged value (the demo's falls ~80 %).
LOSS_DROP_MIN = 0.05
# Mean score of images with a tag minus that of images without it, per class: below this the classifier
# tells them apart no better than a coin (the scratch set's 0.528-0.532 for both; the demo's > 0.5).
SCORE_GAP_MIN = 0.2
PRESENCE_FILE = "presence.json"  # {"class_names": [fg...], "images": [{"name", "tags", "scores"}]}
CLASSIFIER_FOLDERS = ("train", "sipe", ".", "pretrain")  # training stages whose loss is the classifier's


def _pts(x: float) -> str:
    return f"{100 * x:.1f}"


def _flag(code: str, stage: str, message: str) -> dict[str, str]:
    return {"code": code, "stage": stage, "message": message}


def _prediction_flags(contents: RunContents) -> list[dict[str, str]]:
    """Classes a stage never predicts (or nothing at all), classes it predicts everywhere, no background."""
    out = []
    for stage in STAGES:
        rep = contents.evals.get(stage.key)
        if rep is None or len(rep["classes"]) < 2:
            continue
        fg = rep["classes"][1:]
        if all(c.get("pred_pixels", 1) == 0 for c in fg):
            out.append(_flag("all_background", stage.key, f"{stage.title}: every pixel of every evaluated image is "
                             f"background ({stage.eval_file}); this stage found no object at all."))
            continue
        never = [c["name"] for c in fg if c.get("pred_pixels", 1) == 0 and c.get("gt_pixels", 0) > 0]
        if never:
            out.append(_flag("class_never_predicted", stage.key, f"{stage.title}: never predicts {', '.join(never)} "
                             f"({len(never)} of {len(fg)} classes), although the ground truth has them."))
        out += _everywhere(stage, rep)
        bg = rep["classes"][0]
        if bg.get("iou") is not None and bg["iou"] < BACKGROUND_IOU_MIN and bg.get("gt_pixels", 0) > 0:
            out.append(_flag("background_iou_zero", stage.key, (
                f"{stage.title}: background IoU {_pts(bg['iou'])} % (flagged below {_pts(BACKGROUND_IOU_MIN)} %): "
                "this stage does not find the background.")))
    return out


def _everywhere(stage: Any, rep: dict[str, Any]) -> list[dict[str, str]]:
    """Foreground classes predicted on most pixels while their ground truth covers less."""
    pred_total = sum(c.get("pred_pixels", 0) for c in rep["classes"])
    gt_total = sum(c.get("gt_pixels", 0) for c in rep["classes"])
    out = []
    for c in rep["classes"][1:]:
        share = c.get("pred_pixels", 0) / pred_total if pred_total else 0.0
        gt_share = c.get("gt_pixels", 0) / gt_total if gt_total else 0.0
        if share >= EVERYWHERE_SHARE > gt_share:
            out.append(_flag("class_everywhere", stage.key, (
                f"{stage.title}: calls {_pts(share)} % of all pixels {c['name']} (flagged at "
                f"{_pts(EVERYWHERE_SHARE)} % or more), background included; its ground truth covers "
                f"{_pts(gt_share)} %.")))
    return out


def _few_images_flags(contents: RunContents, min_images: int) -> list[dict[str, str]]:
    counts = (contents.metrics or {}).get("train_images_per_class")
    if not isinstance(counts, dict):
        return []
    few = [f"{name} ({n})" for name, n in counts.items() if n < min_images]
    if not few:
        return []
    return [_flag("few_images", "data", f"Fewer than {min_images} training images for {', '.join(few)}: too few "
                  "to learn these classes; add tagged photos of them.")]


def _same_split(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a.get("split") == b.get("split") and a.get("num_images") == b.get("num_images")


def _seg_vs_pseudo(contents: RunContents) -> list[dict[str, str]]:
    seg, pseudo = contents.evals.get("seg"), contents.evals.get("pseudo_labels")
    if seg is None or pseudo is None or seg["miou"] is None or pseudo["miou"] is None or not _same_split(seg, pseudo):
        return []
    gap = pseudo["miou"] - seg["miou"]
    if gap <= SEG_GAP_TOLERANCE + 1e-9:  # 0.63 - 0.62 is 0.0100000...09 in floats: exactly a point is not flagged
        return []
    losses = []
    for s, p in zip(seg["classes"], pseudo["classes"], strict=False):
        if s["iou"] is not None and p["iou"] is not None and p["iou"] > s["iou"]:
            losses.append(f"{s['name']} {_pts(s['iou'])} vs {_pts(p['iou'])} (-{_pts(p['iou'] - s['iou'])})")
    per_class = f" Per class (segmentation vs pseudo labels, IoU %): {'; '.join(losses)}." if losses else ""
    return [_flag("seg_below_labels", "seg", (
        f"The segmentation network is worse than its own pseudo labels on the same images: mIoU "
        f"{_pts(seg['miou'])} vs {_pts(pseudo['miou'])} (-{_pts(gap)} points), flagged beyond "
        f"{_pts(SEG_GAP_TOLERANCE)}. For the training images use the pseudo masks (pseudo_train/), not the "
        f"network's predictions; the network is only the better choice for new photos if it wins on them."
        f"{per_class}"))]


def _cam_flags(contents: RunContents) -> list[dict[str, str]]:
    """IS-CAM below CAM; the best CAM threshold at an end of the sweep; maps hotter outside the objects."""
    out = []
    cam, is_cam = contents.evals.get("cam"), contents.evals.get("is_cam")
    if cam and is_cam and cam.get("miou") is not None and is_cam.get("miou") is not None \
            and _same_split(cam, is_cam) and cam["miou"] - is_cam["miou"] > ISCAM_TOLERANCE + 1e-9:
        out.append(_flag("is_cam_below_cam", "is_cam", (
            f"IS-CAM {_pts(is_cam['miou'])} % mIoU is below the plain CAM's {_pts(cam['miou'])} % "
            f"(-{_pts(cam['miou'] - is_cam['miou'])} points; flagged beyond {_pts(ISCAM_TOLERANCE)}): the method "
            "made the maps worse. Train longer, from pretrained weights, or check the tags.")))
    points = [(s["threshold"], s.get("miou")) for s in (cam or {}).get("sweep") or []]
    sweep = [p[0] for p in points]
    t = (cam or {}).get("threshold")
    if cam and len(sweep) > 1 and t is not None and min(t - min(sweep), max(sweep) - t) <= END_MARGIN + 1e-9:
        end = "lowest" if t - min(sweep) <= max(sweep) - t else "highest"
        # A peak the sweep resolves (the mIoU falls by more than END_DROP towards the end) is a real optimum,
        # however near the end: weak part-only CAMs peak at 0.03-0.06 and fall to 0.32 at 0.00.
        scores = [m for _, m in points if m is not None]
        at_end = dict(points).get(min(sweep) if end == "lowest" else max(sweep))
        resolved = scores and at_end is not None and max(scores) - at_end > END_DROP + 1e-9
        if not resolved:
            out.append(_flag("cam_threshold_at_end", "cam", (
                f"CAM: the best background threshold {t:.2f} is at the {end} end of the sweep "
                f"({min(sweep):.2f}-{max(sweep):.2f}; flagged within {END_MARGIN:.2f} of an end unless the mIoU "
                f"falls by more than {_pts(END_DROP)} points towards it): the maps do not separate objects from "
                "background at any threshold tried, and the CAM mIoU is that of an extreme.")))
    for stage in STAGES:
        heat = (contents.evals.get(stage.key) or {}).get("heat") or {}
        inside, outside = heat.get("inside"), heat.get("outside")
        if inside is not None and outside is not None and outside >= inside:
            out.append(_flag("hotter_outside", stage.key, (
                f"{stage.title}: the maps are hotter on the background than on the labelled objects (mean "
                f"{outside:.3f} outside vs {inside:.3f} inside; flagged when outside >= inside): they point at "
                "the background.")))
    return out


def _loss_flags(contents: RunContents) -> list[dict[str, str]]:
    out = []
    for folder in CLASSIFIER_FOLDERS:
        curves = contents.curves.get(folder)
        if curves is None:
            continue
        tag = "train/loss_cls" if "train/loss_cls" in curves.scalars else "train/loss"
        steps, values = curves.scalars.get(tag, ([], []))
        if len(values) < 2 or values[0] <= 0:
            continue
        tail = values[-min(3, len(values) - 1):]  # a mean of the last points: one noisy batch decides nothing
        end = sum(tail) / len(tail)
        if end > (1 - LOSS_DROP_MIN) * values[0]:
            out.append(_flag("classifier_loss_flat", folder, (
                f"The classifier did not learn ({folder}/tb {tag}): its loss ends at {end:.4f}, from {values[0]:.4f} "
                f"at step {steps[0]} (flagged when less than {_pts(LOSS_DROP_MIN)} % below the start). Train "
                "longer, raise the learning rate, or start from pretrained weights.")))
    return out


def read_presence(run_dir: Path) -> dict[str, Any] | None:
    """``run_dir``'s ``presence.json`` (the classifier's scores of images tagged and not), ``None`` when absent
    or unreadable."""
    path = run_dir / PRESENCE_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("images"), list) else None


def score_groups(presence: dict[str, Any]) -> dict[str, tuple[list[float], list[float]]]:
    """Per foreground class of a ``presence.json``: (scores of the images tagged with it, of those not)."""
    out: dict[str, tuple[list[float], list[float]]] = {}
    for i, name in enumerate(presence.get("class_names", [])):
        pos, neg = [], []
        for img in presence["images"]:
            if img.get("tags") is None:
                continue
            (pos if name in img["tags"] else neg).append(float(img["scores"][i]))
        out[name] = (pos, neg)
    return out


def _presence_flags(contents: RunContents) -> list[dict[str, str]]:
    presence = read_presence(contents.run_dir)
    if presence is None:
        return []
    bad = []
    for name, (pos, neg) in score_groups(presence).items():
        if pos and neg and sum(pos) / len(pos) - sum(neg) / len(neg) < SCORE_GAP_MIN:
            gap = sum(pos) / len(pos) - sum(neg) / len(neg)
            bad.append(f"{name} {gap:+.3f} ({min(pos + neg):.3f}-{max(pos + neg):.3f})")
    if not bad:
        return []
    return [_flag("classifier_not_separated", "train", (
        f"The classifier did not learn: the mean score of images with a tag minus that of images without it is "
        f"below {SCORE_GAP_MIN:.2f} for {'; '.join(bad)} (gap, range of scores; {PRESENCE_FILE}). Its tags for "
        "new photos are guesses."))]


def _config_files(run_dir: Path) -> list[tuple[str, Path]]:
    """Each training stage's own ``config.yaml`` (what it really ran with), else the run's."""
    subs = sorted(p for p in run_dir.glob("*/config.yaml"))
    if subs:
        return [(p.parent.name, p) for p in subs]
    return [(".", run_dir / "config.yaml")] if (run_dir / "config.yaml").is_file() else []


def _random_weights_flags(contents: RunContents) -> list[dict[str, str]]:
    found = []
    for folder, path in _config_files(contents.run_dir):
        try:
            cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError):
            continue
        found += [f"{folder}/config.yaml {key or '(root)'}" for key in random_weight_keys(cfg)]
    if not found:
        return []
    return [_flag("random_weights", "train", (
        f"Backbone weights random (weights: null) in {', '.join(found)}: every stage started from scratch, and "
        "a classifier trained from scratch on a few photos rarely localises anything (flagged whenever a "
        "network section has weights: null). Give pretrained weights: a local file, or a timm: / "
        "module:function backbone with its own weights."))]


def _eval_on_train(contents: RunContents, eval_on_train: bool | None) -> list[dict[str, str]]:
    if eval_on_train is None:
        # sipe run's layout: evaluation images that are training images are scored from cams_train/.
        run = contents.run_dir
        eval_on_train = ("cam" in contents.evals or "is_cam" in contents.evals) and (run / "cams_train").is_dir() \
            and not (run / "cams_val").is_dir()
    if not eval_on_train:
        return []
    return [_flag("eval_on_training_images", "eval", (
        "The masks were scored on the training images themselves (no held-out split): these mIoUs say how well "
        "the run labels the photos it learned from, not new ones. Give a validation split with masks "
        "(data.val_split or eval.split) for an honest number."))]


def all_flags(contents: RunContents, eval_on_train: bool | None = None,
              min_images: int = MIN_TRAIN_IMAGES) -> list[dict[str, str]]:
    """Every flag of ``contents``: ``[{"code", "stage", "message"}]`` (empty for a healthy run).

    ``eval_on_train``: whether the evaluation images are training images (``None``: inferred from the
    ``sipe run`` layout, evaluation from ``cams_train/`` without ``cams_val/``).
    """
    return [*_random_weights_flags(contents), *_eval_on_train(contents, eval_on_train), *_loss_flags(contents),
            *_presence_flags(contents), *_cam_flags(contents), *_prediction_flags(contents),
            *_few_images_flags(contents, min_images), *_seg_vs_pseudo(contents)]


def run_flags(run_dir: str | os.PathLike, metrics: dict[str, Any] | None = None,
              eval_on_train: bool | None = None) -> list[dict[str, str]]:
    """The flags of the run folder ``run_dir`` (:func:`all_flags`); ``metrics`` replaces its ``metrics.json``
    (the report stage computes the flags before it writes the file)."""
    contents = collect_run(run_dir)
    if metrics is not None:
        contents.metrics = metrics
    return all_flags(contents, eval_on_train)


def degenerate_flags(contents: RunContents, min_images: int = MIN_TRAIN_IMAGES) -> list[str]:
    """The messages of :func:`all_flags` (empty when there are none)."""
    return [f["message"] for f in all_flags(contents, min_images=min_images)]
