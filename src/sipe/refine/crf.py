"""Dense-CRF post-processing of IS-CAMs: confident regions for IRN and CRF pseudo labels.

Follows the official ``cam2ir`` step: the label argmax of the IS-CAM is the CRF unary (a label
is trusted with probability ``gt_prob``), with a Gaussian smoothness term and an RGB bilateral
term, 10 mean-field iterations.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import numpy as np
import pydensecrf.densecrf as dcrf
from pydensecrf.utils import unary_from_labels

from sipe.data.cam_format import check_cam_arrays, read_is_cam
from sipe.refine._runner import RunStats, run_label_job

IGNORE = 255


def crf_label_inference(
    image: np.ndarray, labels: np.ndarray, n_labels: int, gt_prob: float = 0.7, t: int = 10
) -> np.ndarray:
    """Refine a label map with a fully connected CRF.

    Args:
        image: (H, W, 3) uint8 RGB image.
        labels: (H, W) integer labels in ``[0, n_labels)``.
        n_labels: number of labels of the CRF.
        gt_prob: probability given to the input label in the unary term.
        t: mean-field iterations.

    Returns:
        (H, W) int64 refined labels in ``[0, n_labels)``.
    """
    image = np.asarray(image)
    labels = np.asarray(labels)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
    h, w = image.shape[:2]
    if labels.shape != (h, w):
        raise ValueError(f"labels shape {labels.shape} does not match the image size {(h, w)}")
    if labels.size and (labels.min() < 0 or labels.max() >= n_labels):
        raise ValueError(f"labels must lie in [0, {n_labels}), got [{labels.min()}, {labels.max()}]")
    if n_labels == 1:
        # A one-label CRF has a single possible answer (and the unary would divide by zero).
        return np.zeros((h, w), dtype=np.int64)
    crf = dcrf.DenseCRF2D(w, h, n_labels)
    crf.setUnaryEnergy(unary_from_labels(labels, n_labels, gt_prob=gt_prob, zero_unsure=False))
    crf.addPairwiseGaussian(sxy=3, compat=3)
    crf.addPairwiseBilateral(sxy=50, srgb=5, rgbim=np.ascontiguousarray(image), compat=10)
    q = np.asarray(crf.inference(t), dtype=np.float32)
    return q.reshape(n_labels, h, w).argmax(axis=0)


def crf_refine_cams(
    image: np.ndarray, keys: np.ndarray, maps: np.ndarray, gt_prob: float = 0.7, t: int = 10
) -> np.ndarray:
    """Dense-CRF pseudo label from an IS-CAM: the CRF-refined argmax, mapped through ``keys``.

    On COCO the authors skip IRN and train on the output of ``cam2ir`` (:func:`confident_regions`,
    255 where uncertain). This is its foreground pass alone: every pixel gets a class, for
    evaluation and for trainers that cannot ignore pixels.

    Args:
        image: (H, W, 3) uint8 RGB.
        keys: (M,) class ids of the map channels, ``keys[0] == 0`` (background).
        maps: (M, H, W) IS-CAM scores at image size.

    Returns:
        (H, W) uint8 class ids.
    """
    keys, maps = check_cam_arrays(keys, np.asarray(maps, dtype=np.float32), "is_cam", np.asarray(image).shape[:2])
    pred = crf_label_inference(image, maps.argmax(axis=0), len(keys), gt_prob=gt_prob, t=t)
    return keys[pred].astype(np.uint8)


def confident_regions(
    image: np.ndarray,
    keys: np.ndarray,
    maps: np.ndarray,
    bg_scale: float = 0.5,
    gt_prob: float = 0.7,
    t: int = 10,
) -> np.ndarray:
    """Confident foreground/background label map for IRN training (official ``cam2ir``).

    Two CRF passes: the plain IS-CAM argmax (foreground pass) and the argmax after scaling the
    background channel by ``bg_scale`` (background pass, which claims more pixels for objects).
    A pixel takes the class of the foreground pass; background where both passes say background;
    ignore (255) where only the foreground pass says background.

    Args:
        image: (H, W, 3) uint8 RGB.
        keys: (M,) class ids, ``keys[0] == 0``.
        maps: (M, H, W) IS-CAM scores at image size.

    Returns:
        (H, W) uint8 labels: class ids, 0 background, 255 ignore.
    """
    keys, maps = check_cam_arrays(keys, np.asarray(maps, dtype=np.float32), "is_cam", np.asarray(image).shape[:2])
    n = len(keys)
    fg = keys[crf_label_inference(image, maps.argmax(axis=0), n, gt_prob=gt_prob, t=t)]
    scaled = maps.copy()
    scaled[0] *= bg_scale
    bg = keys[crf_label_inference(image, scaled.argmax(axis=0), n, gt_prob=gt_prob, t=t)]
    out = fg.copy()
    out[(fg == 0) & (bg != 0)] = IGNORE
    return out.astype(np.uint8)


def _regions_job(item: dict[str, Any], cam_dir: str, bg_scale: float) -> np.ndarray:
    keys, maps = read_is_cam(cam_dir, item["name"])
    return confident_regions(item["image"], keys, maps, bg_scale=bg_scale)


def _crf_job(item: dict[str, Any], cam_dir: str) -> np.ndarray:
    keys, maps = read_is_cam(cam_dir, item["name"])
    return crf_refine_cams(item["image"], keys, maps)


def make_confident_regions(
    dataset: Any,
    cam_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    bg_scale: float = 0.5,
    num_workers: int | None = None,
    overwrite: bool = False,
) -> RunStats:
    """Write :func:`confident_regions` of every image as ``out_dir/<name>.png`` (palette PNG).

    ``dataset`` items are dicts with ``image`` and ``name``; IS-CAMs are read from ``cam_dir``.
    Existing outputs are kept (resume); ``num_workers`` processes (default: all cores).
    """
    job = functools.partial(_regions_job, cam_dir=str(cam_dir), bg_scale=bg_scale)
    return run_label_job(dataset, job, out_dir, num_workers=num_workers, overwrite=overwrite,
                         desc="confident regions", ignore_name="uncertain")


def make_crf_labels(
    dataset: Any,
    cam_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    num_workers: int | None = None,
    overwrite: bool = False,
) -> RunStats:
    """Write :func:`crf_refine_cams` pseudo labels of every image as ``out_dir/<name>.png``."""
    job = functools.partial(_crf_job, cam_dir=str(cam_dir))
    return run_label_job(dataset, job, out_dir, num_workers=num_workers, overwrite=overwrite,
                         desc="CRF labels")
