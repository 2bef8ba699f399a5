"""Evaluating saved predictions against a dataset's masks: IS-CAM files, CAM files (threshold sweep), label PNGs.

Every evaluator returns the report dict of :meth:`ConfusionMatrix.report` plus ``kind``,
``num_images``, ``skipped`` (images without a mask) and ``missing`` (images without a prediction).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sipe.cams.format import find_cam_file, is_cam_to_label, read_cam_file
from sipe.data.image import read_label_png
from sipe.metrics.confusion import ConfusionMatrix, clean_float

logger = logging.getLogger(__name__)

# Fine enough that the best threshold of a weak, low-valued CAM is not cut off at the first step
# (the official sweep is 0.00-0.59 in steps of 0.01).
DEFAULT_THRESHOLDS: np.ndarray = np.round(np.arange(96) / 100, 2)


# ---------------------------------------------------------------------- dataset iteration
def _num_classes(dataset: Any) -> tuple[int, list[str]]:
    names = getattr(dataset, "class_names", None)
    if not names:
        raise ValueError("the dataset has no `class_names`; it is needed to size the confusion matrix")
    return len(names), list(names)


def _iter_masks(dataset: Any, names: Sequence[str] | None) -> Iterator[tuple[str, np.ndarray | None]]:
    """(name, mask or None) for the dataset's items, restricted to ``names`` when given."""
    wanted = None if names is None else set(names)
    ds_names = getattr(dataset, "names", None)
    if wanted is not None and ds_names is not None:
        index = {n: i for i, n in enumerate(ds_names)}
        unknown = [n for n in names if n not in index]
        if unknown:
            raise ValueError(f"{len(unknown)} of the requested names are not in the dataset, e.g. {unknown[:3]}")
        indices = [index[n] for n in names]
    else:
        indices = range(len(dataset))
    if ds_names is not None and callable(getattr(dataset, "read_mask", None)):
        # sipe datasets read the mask alone; decoding the image would only cost time here.
        for i in indices:
            if wanted is None or ds_names[i] in wanted:
                yield ds_names[i], dataset.read_mask(i)
        return
    for i in indices:
        item = dataset[i]
        if wanted is not None and item["name"] not in wanted:
            continue
        yield item["name"], item.get("mask")


def _progress(it: Any, total: int | None, desc: str) -> Any:
    from tqdm import tqdm

    return tqdm(it, total=total, desc=desc, unit="img", leave=False, dynamic_ncols=True)


def _walk(
    dataset: Any,
    names: Sequence[str] | None,
    find: Any,
    what: str,
    missing: str,
    desc: str,
    stats: dict[str, int],
) -> Iterator[tuple[str, np.ndarray, Path]]:
    """Yield (name, gt mask, prediction path); counts evaluated and skipped images into ``stats``."""
    if missing not in ("error", "skip"):
        raise ValueError(f"missing must be 'error' or 'skip', got {missing!r}")
    total = len(names) if names is not None else len(dataset)
    stats.update(num_images=0, skipped=0, missing=0)
    for name, mask in _progress(_iter_masks(dataset, names), total, desc):
        if mask is None:
            stats["skipped"] += 1
            continue
        path = find(name)
        if path is None:
            if missing == "skip":
                stats["missing"] += 1
                continue
            raise FileNotFoundError(
                f"no {what} for image {name!r}; make it first, point --pred at the right folder, "
                "or pass missing='skip' (--skip-missing) to leave such images out"
            )
        stats["num_images"] += 1
        yield name, np.asarray(mask), path


def _finish(stats: dict[str, int], kind: str) -> dict[str, int]:
    if stats["skipped"]:
        logger.warning("%d images have no ground-truth mask and were skipped", stats["skipped"])
    if stats["missing"]:
        logger.warning("%d images have no prediction file and were skipped", stats["missing"])
    if stats["num_images"] == 0:
        if stats["skipped"] and not stats["missing"]:
            raise ValueError(
                "no image of this split has a ground-truth mask, so nothing can be evaluated; "
                "choose a split with masks (e.g. VOC `train`/`val`) or give the masks folder"
            )
        raise ValueError(f"no image could be evaluated ({kind}): {stats}")
    return dict(stats)


def _check_shape(pred_shape: tuple[int, ...], mask: np.ndarray, path: Path) -> None:
    if tuple(pred_shape) != mask.shape:
        raise ValueError(
            f"{path}: prediction size {tuple(pred_shape)} differs from the ground-truth mask {mask.shape}; "
            "predictions must be at the original image resolution"
        )


# ---------------------------------------------------------------------- evaluators


def evaluate_is_cam(
    cam_dir: str | os.PathLike,
    dataset: Any,
    names: Sequence[str] | None = None,
    missing: str = "error",
) -> dict[str, Any]:
    """Evaluate saved IS-CAM files (argmax over the kept channels, mapped through ``keys``).

    Args:
        cam_dir: folder of ``<name>.npz`` / ``<name>.npy`` files.
        dataset: a sipe dataset (items with ``name`` and ``mask``; ``class_names``).
        names: evaluate only these images (default: all).
        missing: ``"error"`` (default) or ``"skip"`` for images without a file.

    Returns:
        the report dict (:meth:`ConfusionMatrix.report`) plus ``kind``, ``num_images``,
        ``skipped`` (no mask) and ``missing`` (no file).
    """
    k, class_names = _num_classes(dataset)
    cm = ConfusionMatrix(k)
    stats: dict[str, int] = {}
    walk = _walk(
        dataset, names, lambda n: find_cam_file(cam_dir, n), f"CAM file in {cam_dir}", missing, "eval IS-CAM", stats
    )
    for _, mask, path in walk:
        f = read_cam_file(path)
        if f.kind != "is_cam":
            raise ValueError(f"{path} holds plain CAMs (kind 'cam'); evaluate them with kind 'cam' (--kind cam)")
        _check_shape(f.maps.shape[1:], mask, path)
        cm.update(is_cam_to_label(f.keys, f.maps), mask)
    stats = _finish(stats, "is_cam")
    return {"kind": "is_cam", **stats, **cm.report(class_names)}


def evaluate_cam(
    cam_dir: str | os.PathLike,
    dataset: Any,
    thresholds: Sequence[float] | np.ndarray = DEFAULT_THRESHOLDS,
    names: Sequence[str] | None = None,
    missing: str = "error",
) -> dict[str, Any]:
    """Evaluate saved plain CAMs, sweeping the background threshold; report the best one.

    A pixel is background when no foreground map exceeds the threshold, else the argmax class
    (the official rule). One pass over the images: each counted pixel falls into the bucket of
    thresholds below its maximum score, and a (T+1, K, K) histogram of (bucket, gt, argmax class)
    gives every threshold's confusion matrix by cumulative sums.

    Returns:
        the best threshold's report plus ``kind``, ``threshold``, ``sweep`` (a list of
        ``{"threshold", "miou"}`` in the given order), ``num_images``, ``skipped``, ``missing``.
    """
    thr = np.atleast_1d(np.asarray(thresholds, dtype=np.float64))
    if thr.size == 0 or thr.ndim != 1:
        raise ValueError("give at least one threshold")
    order = np.argsort(thr, kind="stable")
    thr_sorted = thr[order]
    t_n = thr.size
    k, class_names = _num_classes(dataset)
    hist = np.zeros((t_n + 1) * k * k, dtype=np.int64)
    stats: dict[str, int] = {}
    walk = _walk(
        dataset, names, lambda n: find_cam_file(cam_dir, n), f"CAM file in {cam_dir}", missing, "eval CAM", stats
    )
    for _, mask, path in walk:
        f = read_cam_file(path)
        if f.kind != "cam":
            raise ValueError(f"{path} holds IS-CAMs (kind 'is_cam'); evaluate them with kind 'is_cam' (--kind is_cam)")
        _check_shape(f.maps.shape[1:], mask, path)
        gt = mask.reshape(-1).astype(np.int64)
        valid = gt != 255
        gt = gt[valid]
        if gt.size and (gt.min() < 0 or gt.max() >= k):
            raise ValueError(f"ground truth of {path.stem} holds values outside [0, {k}) and != 255")
        if f.maps.shape[0]:
            flat = f.maps.reshape(f.maps.shape[0], -1)
            top = flat.max(0)[valid]
            cls = f.keys[flat.argmax(0)[valid]]
            if cls.size and (cls.min() < 1 or cls.max() >= k):
                raise ValueError(f"{path}: keys {f.keys.tolist()} fall outside the dataset's 1..{k - 1}")
            # Compared in the maps' own precision, as the official padding does.
            bucket = np.searchsorted(thr_sorted.astype(f.maps.dtype), top, side="left")
        else:
            cls = np.zeros_like(gt)
            bucket = np.zeros_like(gt)
        hist += np.bincount((bucket * k + gt) * k + cls, minlength=(t_n + 1) * k * k)
    stats = _finish(stats, "cam")
    hist = hist.reshape(t_n + 1, k, k)
    # Threshold j (sorted) keeps the argmax class for buckets > j and gives background otherwise.
    fg_above = np.cumsum(hist[::-1], axis=0)[::-1]  # fg_above[b] = sum over buckets >= b
    matrices = []  # in the given order of thresholds
    for j in np.argsort(order):
        cm = ConfusionMatrix(k)
        cm.matrix = fg_above[j + 1].copy()
        cm.matrix[:, 0] += (fg_above[0] - fg_above[j + 1]).sum(1)
        matrices.append(cm)
    mious = np.array([cm.miou() for cm in matrices])
    best = 0 if np.all(np.isnan(mious)) else int(np.nanargmax(mious))
    best_cm = matrices[best]
    sweep = [{"threshold": round(float(t), 6), "miou": clean_float(m)} for t, m in zip(thr, mious, strict=True)]
    return {
        "kind": "cam",
        "threshold": round(float(thr[best]), 6),
        "sweep": sweep,
        **stats,
        **best_cm.report(class_names),
    }


def evaluate_label_dir(
    pred_dir: str | os.PathLike,
    dataset: Any,
    names: Sequence[str] | None = None,
    missing: str = "error",
) -> dict[str, Any]:
    """Evaluate a folder of label PNGs (``<name>.png``, palette/index PNGs; 255 in a prediction is not counted).

    Returns:
        the report dict plus ``kind`` (``"labels"``), ``num_images``, ``skipped``, ``missing``.
    """
    k, class_names = _num_classes(dataset)
    cm = ConfusionMatrix(k)

    def find(name: str) -> Path | None:
        p = Path(pred_dir) / f"{name}.png"
        return p if p.is_file() else None

    stats: dict[str, int] = {}
    for _, mask, path in _walk(dataset, names, find, f"label PNG in {pred_dir}", missing, "eval labels", stats):
        pred = read_label_png(path)
        _check_shape(pred.shape, mask, path)
        try:
            cm.update(pred, mask)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from e
    stats = _finish(stats, "labels")
    return {"kind": "labels", **stats, **cm.report(class_names)}


def evaluate(kind: str, pred_dir: str | os.PathLike, dataset: Any, **kw: Any) -> dict[str, Any]:
    """Dispatch to :func:`evaluate_is_cam`, :func:`evaluate_cam` or :func:`evaluate_label_dir` by ``kind``."""
    funcs = {"is_cam": evaluate_is_cam, "cam": evaluate_cam, "labels": evaluate_label_dir}
    if kind not in funcs:
        raise ValueError(f"unknown evaluation kind {kind!r}; choose one of {sorted(funcs)}")
    return funcs[kind](pred_dir, dataset, **kw)
