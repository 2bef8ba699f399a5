"""Evaluating saved predictions against a dataset's masks: IS-CAM files, CAM files (threshold sweep), label PNGs.

Every evaluator returns the report dict of :meth:`ConfusionMatrix.report` plus ``kind``,
``num_images``, ``skipped`` (images without a mask), ``missing`` (images without a prediction, when
asked to skip them) and ``failed``: a list of ``{"name", "reason"}`` for the images that could not
be evaluated (prediction missing, unreadable, of another size than the mask; mask unreadable), and
``negatives``: the false positives on the images whose ground truth has no foreground pixel
(:class:`NegativeStats`). One
bad file never stops the evaluation: the metrics are those of the images that could be read, and
the caller (``sipe eval``) reports the failures at the end.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sipe.data.cam_format import find_cam_file, is_cam_to_label, read_cam_file
from sipe.data.image import read_label_png
from sipe.data.labelmap import check_same_size
from sipe.errors import RefusedFileError
from sipe.metrics.confusion import ConfusionMatrix, clean_float

logger = logging.getLogger(__name__)

# Fine enough that the best threshold of a weak, low-valued CAM is not cut off at the first step
# (the official sweep is 0.00-0.59 in steps of 0.01).
DEFAULT_THRESHOLDS: np.ndarray = np.round(np.arange(96) / 100, 2)


# ---------------------------------------------------------------------- negatives
class NegativeStats:
    """False positives on negatives: images whose ground truth has no foreground pixel.

    A model that marks part of every clean image as foreground can score a fair mIoU on the
    positives; these counts show it. Pixels that are 255 in the ground truth (or, for label PNGs,
    in the prediction) are not counted.
    """

    def __init__(self) -> None:
        self.images = 0
        self.pixels = 0
        self.fp_pixels = 0
        self.images_with_fp = 0

    @staticmethod
    def is_negative(mask: np.ndarray) -> bool:
        """Whether an (H, W) ground-truth mask (255 = ignore) has no foreground pixel."""
        return not bool(((mask != 0) & (mask != 255)).any())

    def add(self, pred: np.ndarray, mask: np.ndarray) -> None:
        """Count one image's (H, W) prediction (class indices, 255 = not counted) if ``mask`` is a negative."""
        if not self.is_negative(mask):
            return
        valid = (mask != 255) & (pred != 255)
        self.add_counts(int(valid.sum()), int(((pred != 0) & valid).sum()))

    def add_counts(self, pixels: int, fp_pixels: int) -> None:
        """Count one negative image of ``pixels`` evaluated pixels, ``fp_pixels`` of them called foreground."""
        self.images += 1
        self.pixels += pixels
        self.fp_pixels += fp_pixels
        self.images_with_fp += int(fp_pixels > 0)

    def report(self) -> dict[str, Any]:
        """``{"images", "pixels", "fp_pixels", "fp_pixel_rate", "images_with_fp"}`` (rate None without negatives)."""
        rate = self.fp_pixels / self.pixels if self.pixels else None
        return {"images": self.images, "pixels": self.pixels, "fp_pixels": self.fp_pixels,
                "fp_pixel_rate": None if rate is None else round(rate, 6), "images_with_fp": self.images_with_fp}


class HeatStats:
    """Where a map is hot: the mean score of each labelled class's map on that class's ground-truth pixels
    ("inside") and on the ground truth's background pixels ("outside"), over every image. A map hotter
    outside than inside points at the background, not at the objects (the results page flags it)."""

    def __init__(self) -> None:
        self.sums = np.zeros(2, np.float64)  # inside, outside
        self.counts = np.zeros(2, np.int64)

    def add(self, keys: np.ndarray, maps: np.ndarray, mask: np.ndarray) -> None:
        """One image: ``keys`` (M,) class indices of ``maps`` (M, H, W); ``mask`` (H, W), 255 = ignore."""
        bg = mask == 0
        for key, m in zip(keys.tolist(), maps, strict=True):
            inside = mask == key
            if key == 0 or not inside.any():
                continue
            m = m.astype(np.float64)
            self.sums += (m[inside].sum(), m[bg].sum())
            self.counts += (int(inside.sum()), int(bg.sum()))

    def report(self) -> dict[str, Any]:
        """``{"inside", "outside"}``: mean map values (None where no pixel counted)."""
        means = [round(float(s / c), 6) if c else None for s, c in zip(self.sums, self.counts, strict=True)]
        return {"inside": means[0], "outside": means[1]}


# ---------------------------------------------------------------------- dataset iteration
def _num_classes(dataset: Any) -> tuple[int, list[str]]:
    names = getattr(dataset, "class_names", None)
    if not names:
        raise ValueError("the dataset has no `class_names`; it is needed to size the confusion matrix")
    return len(names), list(names)


def _iter_masks(dataset: Any, names: Sequence[str] | None) -> Iterator[tuple[str, np.ndarray | None, str | None]]:
    """(name, mask or None, why the mask could not be read or None) for the dataset's items,
    restricted to ``names`` when given."""
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
    # sipe datasets read the mask alone; decoding the image would only cost time here.
    mask_only = ds_names is not None and callable(getattr(dataset, "read_mask", None))
    for i in indices:
        name = ds_names[i] if mask_only else None
        try:
            if mask_only:
                yield name, dataset.read_mask(i), None
                continue
            item = dataset[i]
        except (ValueError, OSError) as err:  # ImageReadError and DatasetError are ValueErrors
            yield name if name is not None else f"#{i}", None, f"unreadable mask: {err}"
            continue
        if wanted is None or item["name"] in wanted:
            yield item["name"], item.get("mask"), None


def _progress(it: Any, total: int | None, desc: str) -> Any:
    from tqdm import tqdm

    return tqdm(it, total=total, desc=desc, unit="img", leave=False, dynamic_ncols=True)


def _evaluate_files(
    dataset: Any,
    names: Sequence[str] | None,
    find: Callable[[str], Path | None],
    what: str,
    missing: str,
    kind: str,
    add: Callable[[np.ndarray, Path], None],
) -> dict[str, Any]:
    """Call ``add(gt mask, prediction path)`` for every image with a mask and a prediction.

    ``add`` raises ``ValueError`` / ``OSError`` for a file it cannot use, before it counts anything;
    such an image, and one whose mask cannot be read or (``missing="error"``) that has no
    prediction, goes into ``failed`` and the others are still evaluated. Returns the counts
    (``num_images``, ``skipped``, ``missing``, ``failed``).
    """
    if missing not in ("error", "skip"):
        raise ValueError(f"missing must be 'error' or 'skip', got {missing!r}")
    total = len(names) if names is not None else len(dataset)
    stats: dict[str, Any] = {"num_images": 0, "skipped": 0, "missing": 0, "failed": []}
    for name, mask, error in _progress(_iter_masks(dataset, names), total, f"eval {kind}"):
        if error is not None:
            stats["failed"].append({"name": name, "reason": error})
            continue
        if mask is None:
            stats["skipped"] += 1
            continue
        path = find(name)
        if path is None:
            if missing == "skip":
                stats["missing"] += 1
            else:
                stats["failed"].append({"name": name, "reason": f"missing: no {what}"})
            continue
        try:
            add(np.asarray(mask), path)
        except RefusedFileError:  # a file that asks to run code stops the evaluation: its folder is not trusted
            raise
        except (ValueError, OSError) as err:
            stats["failed"].append({"name": name, "reason": str(err)})
            continue
        stats["num_images"] += 1
    return _finish(stats, kind, what)


def _finish(stats: dict[str, Any], kind: str, what: str) -> dict[str, Any]:
    if stats["skipped"]:
        logger.warning("%d images have no ground-truth mask and were skipped", stats["skipped"])
    if stats["missing"]:
        logger.warning("%d images have no prediction file and were skipped", stats["missing"])
    failed = stats["failed"]
    if stats["num_images"] == 0:
        if failed:
            first = failed[0]
            raise ValueError(
                f"no image could be evaluated ({kind}): all {len(failed)} failed, e.g. {first['name']!r}: "
                f"{first['reason']}"
            )
        if stats["skipped"] and not stats["missing"]:
            raise ValueError(
                "no image of this split has a ground-truth mask, so nothing can be evaluated; "
                "choose a split with masks (e.g. VOC `train`/`val`) or give the masks folder"
            )
        raise ValueError(f"no image could be evaluated ({kind}) with a {what}: {stats}")
    if failed:
        logger.warning("%d images could not be evaluated (listed in the report's 'failed')", len(failed))
    return dict(stats)


def _check_shape(pred_shape: tuple[int, ...], mask: np.ndarray, path: Path) -> None:
    check_same_size(pred_shape, mask.shape, path, what="size mismatch:", against="the ground-truth mask",
                    fix="predictions must be at the image's displayed resolution (after its EXIF orientation)")


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
        missing: images without a file are listed in ``failed`` (``"error"``, the default) or
            only counted in ``missing`` (``"skip"``).

    Returns:
        the report dict (:meth:`ConfusionMatrix.report`) of the images that could be evaluated,
        plus ``kind``, ``num_images``, ``skipped`` (no mask), ``missing`` (no file, ``"skip"``) and
        ``failed`` (``{"name", "reason"}`` of the images that could not be evaluated).
    """
    k, class_names = _num_classes(dataset)
    cm = ConfusionMatrix(k)
    negatives = NegativeStats()
    heat = HeatStats()

    def add(mask: np.ndarray, path: Path) -> None:
        f = read_cam_file(path)
        if f.kind != "is_cam":
            raise ValueError(f"{path} holds plain CAMs (kind 'cam'); evaluate them with kind 'cam' (--kind cam)")
        _check_shape(f.maps.shape[1:], mask, path)
        pred = is_cam_to_label(f.keys, f.maps)
        cm.update(pred, mask)
        negatives.add(pred, mask)
        heat.add(f.keys, f.maps, mask)

    stats = _evaluate_files(dataset, names, lambda n: find_cam_file(cam_dir, n), f"CAM file in {cam_dir}",
                            missing, "is_cam", add)
    return {"kind": "is_cam", **stats, **cm.report(class_names), "negatives": negatives.report(),
            "heat": heat.report()}


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
        ``{"threshold", "miou"}`` in the given order), ``num_images``, ``skipped``, ``missing``, ``failed``
        (as :func:`evaluate_is_cam`).
    """
    thr = np.atleast_1d(np.asarray(thresholds, dtype=np.float64))
    if thr.size == 0 or thr.ndim != 1:
        raise ValueError("give at least one threshold")
    order = np.argsort(thr, kind="stable")
    thr_sorted = thr[order]
    t_n = thr.size
    k, class_names = _num_classes(dataset)
    hist = np.zeros((t_n + 1) * k * k, dtype=np.int64)
    # Negatives: (pixels, highest bucket, per-bucket pixel counts) of each, for the best threshold's counts.
    neg_images: list[tuple[int, int, np.ndarray]] = []
    heat = HeatStats()

    def add(mask: np.ndarray, path: Path) -> None:
        nonlocal hist
        f = read_cam_file(path)
        if f.kind != "cam":
            raise ValueError(f"{path} holds IS-CAMs (kind 'is_cam'); evaluate them with kind 'is_cam' (--kind is_cam)")
        _check_shape(f.maps.shape[1:], mask, path)
        heat.add(f.keys, f.maps, mask)
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
        if NegativeStats.is_negative(mask):
            top_bucket = int(bucket.max()) if bucket.size else 0
            neg_images.append((int(gt.size), top_bucket, np.bincount(bucket, minlength=t_n + 1)))

    stats = _evaluate_files(dataset, names, lambda n: find_cam_file(cam_dir, n), f"CAM file in {cam_dir}",
                            missing, "cam", add)
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
    negatives = NegativeStats()
    j = int(np.argsort(order)[best])  # the best threshold's index among the sorted ones
    for pixels, top_bucket, counts in neg_images:
        negatives.add_counts(pixels, int(counts[j + 1:].sum()) if top_bucket > j else 0)
    return {
        "kind": "cam",
        "threshold": round(float(thr[best]), 6),
        "sweep": sweep,
        **stats,
        **best_cm.report(class_names),
        "negatives": negatives.report(),
        "heat": heat.report(),
    }


def evaluate_label_dir(
    pred_dir: str | os.PathLike,
    dataset: Any,
    names: Sequence[str] | None = None,
    missing: str = "error",
) -> dict[str, Any]:
    """Evaluate a folder of label PNGs (``<name>.png``, palette/index PNGs; 255 in a prediction is not counted).

    Returns:
        the report dict plus ``kind`` (``"labels"``), ``num_images``, ``skipped``, ``missing``, ``failed``
        (as :func:`evaluate_is_cam`).
    """
    k, class_names = _num_classes(dataset)
    cm = ConfusionMatrix(k)

    def find(name: str) -> Path | None:
        p = Path(pred_dir) / f"{name}.png"
        return p if p.is_file() else None

    def add(mask: np.ndarray, path: Path) -> None:
        pred = read_label_png(path)
        _check_shape(pred.shape, mask, path)
        try:
            cm.update(pred, mask)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from e
        negatives.add(pred, mask)

    negatives = NegativeStats()
    stats = _evaluate_files(dataset, names, find, f"label PNG in {pred_dir}", missing, "labels", add)
    return {"kind": "labels", **stats, **cm.report(class_names), "negatives": negatives.report()}


def evaluate(kind: str, pred_dir: str | os.PathLike, dataset: Any, **kw: Any) -> dict[str, Any]:
    """Dispatch to :func:`evaluate_is_cam`, :func:`evaluate_cam` or :func:`evaluate_label_dir` by ``kind``."""
    funcs = {"is_cam": evaluate_is_cam, "cam": evaluate_cam, "labels": evaluate_label_dir}
    if kind not in funcs:
        raise ValueError(f"unknown evaluation kind {kind!r}; choose one of {sorted(funcs)}")
    return funcs[kind](pred_dir, dataset, **kw)
