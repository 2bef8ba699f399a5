"""Evaluation reports: the JSON file every stage writes and its printable table."""

from __future__ import annotations

import json
import math
import os
from typing import Any

import numpy as np

from sipe import io as sio

__all__ = ["format_report", "write_report"]


def format_report(report: dict[str, Any]) -> str:
    """Render a report dict (from :meth:`ConfusionMatrix.report` or an ``evaluate_*`` function) as text."""

    def pct(v: float | None) -> str:
        return "     -" if v is None else f"{100 * v:6.2f}"

    width = max([5] + [len(c["name"]) for c in report["classes"]])
    lines = [f"{'#':>3}  {'class':<{width}}  {'IoU':>6}  {'prec':>6}  {'recall':>6}"]
    for c in report["classes"]:
        lines.append(
            f"{c['index']:>3}  {c['name']:<{width}}  {pct(c['iou'])}  {pct(c['precision'])}  {pct(c['recall'])}"
        )
    lines.append(
        f"mIoU {pct(report['miou']).strip()}  pixel acc {pct(report['pixel_accuracy']).strip()}  "
        f"mean prec {pct(report['mean_precision']).strip()}  mean recall {pct(report['mean_recall']).strip()}"
    )
    if report.get("sweep"):
        step = max(1, len(report["sweep"]) // 20)  # the JSON keeps every threshold
        lines.append(
            "threshold sweep (mIoU): "
            + " ".join(f"{s['threshold']:.2f}:{pct(s['miou']).strip()}" for s in report["sweep"][::step])
        )
    extra = []
    if "threshold" in report:
        extra.append(f"best background threshold {report['threshold']:.2f}")
    if "num_images" in report:
        extra.append(f"{report['num_images']} images")
    if report.get("skipped"):
        extra.append(f"{report['skipped']} skipped (no ground-truth mask)")
    if report.get("missing"):
        extra.append(f"{report['missing']} skipped (no prediction file)")
    if report.get("skipped_earlier"):
        extra.append(f"{report['skipped_earlier']} skipped by an earlier stage (its skipped.tsv)")
    if extra:
        lines.append(", ".join(extra))
    neg = report.get("negatives")
    if neg and neg.get("images"):
        lines.append(
            f"negatives (no foreground in the ground truth): {neg['images']} images, "
            f"{pct(neg['fp_pixel_rate']).strip()}% of their pixels called foreground, "
            f"{neg['images_with_fp']} with any"
        )
    return "\n".join(lines)


def write_report(path: str | os.PathLike, report: dict[str, Any]) -> None:
    """Write a report dict as indented JSON, atomically (NaN is written as ``null``)."""
    text = json.dumps(_jsonable(report), indent=2, allow_nan=False)
    sio.write_text(path, text + "\n")


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and math.isnan(x):
        return None
    return x
