"""Masks for image files from SIPE's multi-scale IS-CAM, when the image-level labels are known.

(:class:`sipe.Predictor` also decides the labels from the classifier; ``labels_from_names`` now lives in
:mod:`sipe.cams.presence` and is re-exported here.)
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

import numpy as np
from torch import nn

from sipe.cams.multiscale import DEFAULT_SCALES, multiscale_is_cam
from sipe.cams.presence import labels_from_names
from sipe.config import STRIDE
from sipe.data.cam_format import is_cam_to_label
from sipe.vis import PredictResult, write_label_maps

__all__ = ["is_cam_label", "labels_from_names", "predict_paths_is_cam"]


def is_cam_label(
    model: nn.Module,
    image: np.ndarray,
    labels: np.ndarray,
    scales: Sequence[float] | None = None,
    flip: bool = True,
) -> np.ndarray:
    """(H, W) int64 class map from SIPE's multi-scale IS-CAM: argmax over the kept channels, mapped
    through their class ids. image (H, W, 3) uint8; labels (K-1,) multi-hot foreground classes."""
    keys, maps = multiscale_is_cam(
        model, image, labels, scales=DEFAULT_SCALES if scales is None else scales, flip=flip
    )
    return is_cam_to_label(np.asarray(keys), maps)


def predict_paths_is_cam(
    model: nn.Module,
    paths: Iterable[str | os.PathLike],
    labels: np.ndarray,
    out_dir: str | os.PathLike,
    scales: Sequence[float] | None = None,
    flip: bool = True,
    overlay: bool = True,
    alpha: float = 0.5,
) -> PredictResult:
    """As :func:`predict_paths`, with masks from a SIPE network's IS-CAM for the given image-level
    ``labels`` ((K-1,) multi-hot, the same for every image; see :func:`labels_from_names`)."""
    labels = np.asarray(labels, dtype=np.float32)
    return write_label_maps(
        lambda im: is_cam_label(model, im, labels, scales, flip), paths, out_dir, overlay, alpha, min_size=STRIDE
    )
