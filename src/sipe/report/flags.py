"""Degenerate results, in words, for the top of the results page: masks that are all background, classes
never predicted, classes with too few training images, and a segmentation network that loses to its own
pseudo labels (which output to use instead, by how much, per class)."""

from __future__ import annotations

from typing import Any

from sipe.report.collect import STAGES, RunContents

__all__ = ["MIN_TRAIN_IMAGES", "SEG_GAP_TOLERANCE", "degenerate_flags"]

MIN_TRAIN_IMAGES = 5  # fewer training images of a class than this: its results say little
# A segmentation network at most this much below its pseudo labels (mIoU) is not flagged: a gap that small
# is noise (the demo's seeds land up to 4 points either side of their labels with the same settings), and the
# flag should ask for a decision only when there is one to make.
SEG_GAP_TOLERANCE = 0.01


def _pts(x: float) -> str:
    return f"{100 * x:.1f}"


def _prediction_flags(contents: RunContents) -> list[str]:
    out = []
    for stage in STAGES:
        rep = contents.evals.get(stage.key)
        if rep is None:
            continue
        fg = rep["classes"][1:]
        if not fg:
            continue
        if all(c.get("pred_pixels", 1) == 0 for c in fg):
            out.append(f"{stage.title}: every pixel of every evaluated image is background ({stage.eval_file}); "
                       "this stage found no object at all.")
            continue
        never = [c["name"] for c in fg if c.get("pred_pixels", 1) == 0 and c.get("gt_pixels", 0) > 0]
        if never:
            out.append(f"{stage.title}: never predicts {', '.join(never)} ({len(never)} of {len(fg)} classes), "
                       "although the ground truth has them.")
    return out


def _few_images_flags(contents: RunContents, min_images: int) -> list[str]:
    counts = (contents.metrics or {}).get("train_images_per_class")
    if not isinstance(counts, dict):
        return []
    few = [f"{name} ({n})" for name, n in counts.items() if n < min_images]
    if not few:
        return []
    return [f"Fewer than {min_images} training images for {', '.join(few)}: too few to learn these classes; "
            "add tagged photos of them."]


def _same_split(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a.get("split") == b.get("split") and a.get("num_images") == b.get("num_images")


def _seg_vs_pseudo(contents: RunContents) -> list[str]:
    seg, pseudo = contents.evals.get("seg"), contents.evals.get("pseudo_labels")
    if seg is None or pseudo is None or seg["miou"] is None or pseudo["miou"] is None or not _same_split(seg, pseudo):
        return []
    gap = pseudo["miou"] - seg["miou"]
    if gap <= SEG_GAP_TOLERANCE:
        return []
    losses = []
    for s, p in zip(seg["classes"], pseudo["classes"], strict=False):
        if s["iou"] is not None and p["iou"] is not None and p["iou"] > s["iou"]:
            losses.append(f"{s['name']} {_pts(s['iou'])} vs {_pts(p['iou'])} (-{_pts(p['iou'] - s['iou'])})")
    per_class = f" Per class (segmentation vs pseudo labels, IoU %): {'; '.join(losses)}." if losses else ""
    return [f"The segmentation network is worse than its own pseudo labels on the same images: mIoU "
            f"{_pts(seg['miou'])} vs {_pts(pseudo['miou'])} (-{_pts(gap)} points). For the training images use the "
            "pseudo masks (pseudo_train/), not the network's predictions; the network is only the better choice "
            f"for new photos if it wins on them.{per_class}"]


def degenerate_flags(contents: RunContents, min_images: int = MIN_TRAIN_IMAGES) -> list[str]:
    """Sentences describing the degenerate results of a run (empty when there are none)."""
    return [*_prediction_flags(contents), *_few_images_flags(contents, min_images), *_seg_vs_pseudo(contents)]
