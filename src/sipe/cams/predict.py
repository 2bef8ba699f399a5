"""Masks for image files from SIPE's multi-scale IS-CAM, when the image-level labels are known."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

import numpy as np
from torch import nn

from sipe.cams.multiscale import DEFAULT_SCALES, multiscale_is_cam
from sipe.config import STRIDE
from sipe.data.cam_format import is_cam_to_label
from sipe.vis import PredictResult, write_label_maps


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


def labels_from_names(names: Iterable[str], class_names: Sequence[str]) -> np.ndarray:
    """(K-1,) float32 multi-hot over the foreground classes of ``class_names`` from class names."""
    fg = list(class_names[1:])
    out = np.zeros(len(fg), dtype=np.float32)
    for n in names:
        n = n.strip()
        if not n:
            continue
        if n not in fg:
            raise ValueError(f"unknown class {n!r}; the model knows: {', '.join(fg)}")
        out[fg.index(n)] = 1.0
    if not out.any():
        raise ValueError("give at least one foreground class name (e.g. --labels cat,sofa)")
    return out


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
