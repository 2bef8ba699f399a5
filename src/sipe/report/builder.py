"""Render a run folder's :class:`RunContents` into one self-contained HTML page."""

from __future__ import annotations

import logging
import os
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from sipe import __version__
from sipe import io as sio
from sipe.report import plots
from sipe.report.collect import STAGES, TRAINING_TITLES, RunContents, collect_run
from sipe.report.flags import all_flags
from sipe.report.images import MAX_SIDE, build_rows, select_images
from sipe.report.presence import presence_context

logger = logging.getLogger(__name__)

DEFAULT_NUM_IMAGES = 12
# Throughput is not a training curve; it would only crowd the panels.
_HIDDEN_TAGS = ("train/images_per_s",)


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.2f}"


def _summary(contents: RunContents) -> list[dict[str, Any]]:
    rows = []
    for stage in STAGES:
        rep = contents.evals.get(stage.key)
        if rep is None:
            continue
        title = stage.title
        if stage.key == "cam" and "threshold" in rep:
            title = f"CAM (best background threshold {rep['threshold']:.2f})"
        rows.append({
            "key": stage.key, "title": title, "miou_raw": repr(rep["miou"]), "miou": _pct(rep["miou"]),
            "pixel_accuracy": _pct(rep.get("pixel_accuracy")), "mean_precision": _pct(rep.get("mean_precision")),
            "mean_recall": _pct(rep.get("mean_recall")), "num_images": rep.get("num_images", "–"),
            "negatives": _negatives_cell(rep.get("negatives")),
        })
    return rows


def _negatives_cell(neg: dict[str, Any] | None) -> str | None:
    """The false positives on negatives (images whose ground truth is all background), or None without any."""
    if not neg or not neg.get("images"):
        return None
    return (f"{_pct(neg.get('fp_pixel_rate'))} % of pixels; {neg.get('images_with_fp', 0)} of {neg['images']} "
            "images with any")


def _best_stage(contents: RunContents) -> str | None:
    scored = [(rep["miou"], i, key) for i, (key, rep) in enumerate(contents.evals.items()) if rep["miou"] is not None]
    return max(scored)[2] if scored else None


def _class_names(contents: RunContents) -> list[str]:
    for rep in contents.evals.values():
        return [c["name"] for c in rep["classes"]]
    return []


def _per_class(contents: RunContents) -> dict[str, Any]:
    names = _class_names(contents)
    if not names:
        return {}
    stages = [s for s in STAGES if s.key in contents.evals]
    for s in stages:
        if len(contents.evals[s.key]["classes"]) != len(names):
            raise ValueError(f"{contents.run_dir / s.eval_file} has {len(contents.evals[s.key]['classes'])} "
                             f"classes, another report {len(names)}; evaluate every stage on the same dataset")
    series = {s.title: [c["iou"] for c in contents.evals[s.key]["classes"]] for s in stages}
    out: dict[str, Any] = {
        "per_class_plot": plots.png_uri(plots.grouped_bars(names, series, "IoU", "IoU per class and stage")),
        "per_class_stages": [s.title for s in stages],
        "pr_plot": None,
    }
    is_cam = contents.evals.get("is_cam")
    if is_cam is not None:
        pr = {"precision": [c["precision"] for c in is_cam["classes"]],
              "recall": [c["recall"] for c in is_cam["classes"]]}
        out["pr_plot"] = plots.png_uri(plots.grouped_bars(names, pr, "share of pixels", "IS-CAM precision and recall"))
    out["per_class_rows"] = [
        {
            "name": name,
            "ious": [_pct(contents.evals[s.key]["classes"][i]["iou"]) for s in stages],
            "precision": _pct(is_cam["classes"][i]["precision"]) if is_cam else "",
            "recall": _pct(is_cam["classes"][i]["recall"]) if is_cam else "",
        }
        for i, name in enumerate(names)
    ]
    return out


def _sweep(contents: RunContents) -> str | None:
    cam = contents.evals.get("cam")
    if not cam or not cam.get("sweep"):
        return None
    thr = [s["threshold"] for s in cam["sweep"]]
    order = np.argsort(thr)
    is_cam = contents.evals.get("is_cam")
    png = plots.threshold_sweep([thr[i] for i in order], [cam["sweep"][i]["miou"] for i in order],
                                cam["threshold"], is_cam["miou"] if is_cam else None)
    return plots.png_uri(png)


def _curves(contents: RunContents) -> list[dict[str, str]]:
    out = []
    for folder, curves in contents.curves.items():
        scalars = {t: v for t, v in curves.scalars.items() if t not in _HIDDEN_TAGS}
        if not scalars:
            continue
        title = TRAINING_TITLES.get(folder, folder)
        out.append({"title": title, "folder": f"{folder}/tb", "plot": plots.png_uri(plots.training_curves(scalars))})
    return out


def _times(contents: RunContents) -> tuple[list[tuple[str, Any, str]], str]:
    """(stage, seconds, which invocation ran it) rows of the wall-time table, and a note saying what they are."""
    metrics = contents.metrics or {}
    seconds, ran = metrics.get("seconds"), metrics.get("stages_this_invocation")
    if isinstance(seconds, dict) and seconds:
        if not isinstance(ran, list):  # a metrics.json of an older sipe: no record of which invocation
            return [(k, v, "") for k, v in seconds.items()], (
                "From metrics.json: per stage, wall time of the invocation that ran it; the total adds them all.")
        rows = [(k, v, "this" if k in ran else "earlier") for k, v in seconds.items() if k != "total"]
        if "total" in seconds:
            rows.append(("total", seconds["total"], "this"))
        earlier = [k for k, _, when in rows if when == "earlier"]
        note = ("From metrics.json: wall time per stage, of the invocation that ran it; the total counts only "
                "the stages the last invocation ran (report excluded)")
        note += f"; {', '.join(earlier)} ran in an earlier one." if earlier else "; it ran every stage."
        return rows, note
    spans = [(TRAINING_TITLES.get(f, f), c.seconds, "") for f, c in contents.curves.items() if c.seconds is not None]
    return spans, "Training stages only, from the first to the last TensorBoard event."


def _plan(contents: RunContents) -> dict[str, Any] | None:
    """The data fingerprint and the derived settings of ``metrics.json`` (written by ``sipe run``), or None."""
    plan = (contents.metrics or {}).get("plan")
    if not plan:
        return None
    fp = plan["fingerprint"]
    size = fp.get("median_size")
    summary = (f"{fp['num_images']} training images ({fp['negatives']} without a class)"
               + (f", median size {size[0]}x{size[1]} px" if size else "")
               + f"; imbalance {fp['imbalance']:.1f} (images of the most frequent class / of the rarest with any).")
    if not plan["rules"]:
        note = "Every setting the plan derives was set by the configuration, which always wins."
    elif plan["applied"]:
        note = "Applied; a key set in the configuration or on the command line is never changed (sipe.run.plan)."
    else:
        note = "Not applied (plan=false): the run used the configuration's values."
    # Values as the YAML config writes them (true, not True), since that is where a user overrides them.
    rules = [{**r, "value": str(r["value"]).lower() if isinstance(r["value"], bool) else r["value"]}
             for r in plan["rules"]]
    return {"summary": summary, "per_class": list(zip(fp["class_names"], fp["images_per_class"], strict=True)),
            "rules": rules, "note": note}


def _random_weights(info: dict[str, Any]) -> list[tuple[str, str]]:
    """The run-info row that says which networks started from random weights (``run_info.json``)."""
    keys = info.get("random_weights")
    if not keys:
        return []
    return [("random weights", f"{', '.join(map(str, keys))} (weights: null): no pretrained backbone")]


def _confusion(contents: RunContents) -> tuple[str | None, str, list[dict[str, str]]]:
    """The confusion matrix of the final model (the last stage of :data:`STAGES` with one: the segmentation
    network when it was evaluated) as a PNG data URI and its title, and every earlier stage's as
    ``[{"title", "plot"}]`` (the page folds them away)."""
    stages = [s for s in STAGES if "confusion_matrix" in (contents.evals.get(s.key) or {})]
    if not stages:
        return None, "", []
    names = _class_names(contents)

    def plot(stage: Any, suffix: str = "") -> str:
        matrix = np.asarray(contents.evals[stage.key]["confusion_matrix"])
        return plots.png_uri(plots.confusion_heatmap(matrix, names, f"{stage.title}{suffix}"))

    final = stages[-1]
    others = [{"title": s.title, "plot": plot(s)} for s in reversed(stages[:-1])]
    return plot(final, " (the final model)"), final.title, others


def _images(contents: RunContents, num_images: int, max_side: int, progress: bool) -> dict[str, Any]:
    ds = contents.dataset
    if ds is None:
        return {"rows": [], "legend": [], "images_note": (
            "No images: the run folder is not a `sipe demo` run; give the dataset of the CAMs "
            "(sipe report --dataset ... --root ... --split ...).")}
    is_cam_dir = contents.cam_dir / "is_cam" if contents.cam_dir is not None else None
    if is_cam_dir is not None and not is_cam_dir.is_dir():
        is_cam_dir = None
    picks = select_images(ds, is_cam_dir, num_images, progress=progress)
    rows, seen = build_rows(ds, picks, contents.cam_dir, contents.pseudo_dir, contents.seg_dir, max_side)
    ranked = any(r.group for r in rows) or any(r.score is not None for r in rows)
    if ranked:
        note = (f"{len(rows)} of {len(ds)} images, ranked by their IS-CAM IoU (mean over the classes in the "
                "image): the best, the median and the worst.")
    else:
        note = f"The first {len(rows)} of {len(ds)} images."
    note += (f" Heat maps per labelled class (jet: blue low, red high); thumbnails at most {max_side} px. "
             f"CAM files: {contents.cam_dir or 'none'}; pseudo masks: {contents.pseudo_dir or 'none'}; "
             f"segmentation: {contents.seg_dir or 'none'}.")
    names = list(ds.class_names)
    legend = [(names[c], plots.palette_css(c)) for c in sorted(seen)]
    if 255 in seen or any(c.caption == "pseudo mask" for r in rows for c in r.cells):
        legend.append(("ignored / uncertain", plots.palette_css(255)))
    return {"rows": rows, "legend": legend, "images_note": note}


def render_report(
    contents: RunContents, num_images: int = DEFAULT_NUM_IMAGES, max_side: int = MAX_SIDE, progress: bool = True
) -> str:
    """The HTML text of the results page of ``contents`` (every picture embedded as a data URI)."""
    import jinja2

    info = contents.run_info or {}
    best = _best_stage(contents)
    times, times_note = _times(contents)
    confusion_plot, confusion_title, confusion_others = _confusion(contents)
    images = _images(contents, num_images, max_side, progress)
    has_gt_cell = any(c.caption == "ground truth" for r in images["rows"] for c in r.cells)
    context: dict[str, Any] = {
        "run_name": contents.run_dir.resolve().name,
        "run_dir": str(contents.run_dir),
        "version": info.get("sipe_version", __version__),
        "commit": info.get("git_commit"),
        "timestamp": info.get("timestamp"),
        "masks_given": bool(contents.evals) or has_gt_cell,
        "flags": all_flags(contents),
        "summary": _summary(contents),
        "has_negatives": any(r["negatives"] is not None for r in _summary(contents)),
        "best_stage": best,
        "times": times,
        "times_note": times_note,
        "run_info": [(k, info[k]) for k in ("sipe_version", "git_commit", "torch_version", "python_version",
                                            "command", "timestamp", "world_size") if k in info] + _random_weights(info),
        "config_text": contents.config_text,
        "config_lines": len((contents.config_text or "").splitlines()),
        "per_class_plot": None, "pr_plot": None, "per_class_stages": [], "per_class_rows": [],
        "plan": _plan(contents),
        "sweep_plot": _sweep(contents),
        "curves": _curves(contents),
        "confusion_plot": confusion_plot,
        "confusion_title": confusion_title,
        "confusion_others": confusion_others,
        **_per_class(contents),
        **presence_context(contents),
        **images,
    }
    template = resources.files("sipe.report").joinpath("template.html.j2").read_text(encoding="utf-8")
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    return env.from_string(template).render(**context)


def write_report_html(
    run_dir: str | os.PathLike,
    out: str | os.PathLike | None = None,
    *,
    dataset: Any = None,
    cam_dir: str | os.PathLike | None = None,
    pseudo_dir: str | os.PathLike | None = None,
    seg_dir: str | os.PathLike | None = None,
    num_images: int = DEFAULT_NUM_IMAGES,
    max_side: int = MAX_SIDE,
    progress: bool = True,
) -> Path:
    """Collect what ``run_dir`` holds and write its results page atomically; returns the page's path.

    Args:
        out: the HTML file (default ``run_dir/report.html``).
        dataset, cam_dir, pseudo_dir, seg_dir: see :func:`sipe.report.collect.collect_run`.
        num_images: rows of the image grid (best / median / worst thirds when masks exist).
        max_side: the thumbnails' long side in pixels.
    """
    if num_images < 0:
        raise ValueError(f"num_images must be >= 0, got {num_images}")
    contents = collect_run(run_dir, dataset=dataset, cam_dir=cam_dir, pseudo_dir=pseudo_dir, seg_dir=seg_dir)
    html = render_report(contents, num_images=num_images, max_side=max_side, progress=progress)
    path = Path(out) if out is not None else Path(run_dir) / "report.html"
    sio.write_text(path, html)
    logger.info("results page %s (%.1f MB)", path, len(html.encode("utf-8")) / 1e6)
    return path
