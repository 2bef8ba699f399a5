"""The results page's presence section: does the classifier tell the images with a tag from those without,
and what the stages that decide presence themselves (the classifier's tags, the segmentation network) put
on images that hold none of the classes (negatives).

CAM, IS-CAM and pseudo masks are drawn only for the classes an image is tagged with, so on an untagged
image they are background by construction; their rows of the summary say nothing about false positives.
"""

from __future__ import annotations

from typing import Any

from sipe.report import plots
from sipe.report.collect import RunContents
from sipe.report.flags import PRESENCE_FILE, read_presence, score_groups

__all__ = ["presence_context"]


def _mean(values: list[float]) -> str:
    return f"{sum(values) / len(values):.3f}" if values else "–"


def _seg_negatives(contents: RunContents) -> str | None:
    neg = (contents.evals.get("seg") or {}).get("negatives")
    if not neg or not neg.get("images"):
        return None
    rate = neg.get("fp_pixel_rate")
    share = "–" if rate is None else f"{100 * rate:.2f}"
    return (f"the segmentation network (no tags given) puts foreground on {neg.get('images_with_fp', 0)} of "
            f"{neg['images']} evaluation images without any class ({share} % of their pixels; eval_seg.json)")


def presence_context(contents: RunContents) -> dict[str, Any]:
    """The template's ``presence`` entry: ``None`` without a ``presence.json``, else the per-class score
    histogram (a PNG data URI), one row per class and the false positives on negatives, in words."""
    data = read_presence(contents.run_dir)
    if data is None:
        return {"presence": None}
    threshold = float(data.get("score_threshold", 0.5))
    groups = score_groups(data)
    rows = []
    for name, (pos, neg) in groups.items():
        rows.append({"name": name, "tagged": len(pos), "tagged_mean": _mean(pos), "untagged": len(neg),
                     "untagged_mean": _mean(neg), "false_tags": sum(s > threshold for s in neg),
                     "missed": sum(s <= threshold for s in pos)})
    negatives = [img for img in data["images"] if img.get("tags") == []]
    lines = []
    if negatives:
        tagged = sum(any(s > threshold for s in img["scores"]) for img in negatives)
        lines.append(f"the classifier's own tags (score above {threshold:g}) name a class on {tagged} of "
                     f"{len(negatives)} training images without any tag")
    seg = _seg_negatives(contents)
    if seg:
        lines.append(seg)
    png = plots.score_distributions(groups, threshold)
    scored, total = len(data["images"]), data.get("images_total", len(data["images"]))
    return {"presence": {
        "plot": plots.png_uri(png),
        "rows": rows, "negatives": lines, "threshold": f"{threshold:g}",
        "note": (f"The classifier's sigmoid scores of {scored} of {total} training images ({PRESENCE_FILE}): these "
                 "images trained it, so a good separation here is an upper bound; no separation means it "
                 "did not learn. CAM, IS-CAM and pseudo masks take the given tags, so on untagged images they "
                 "are background by construction."),
    }}
