"""Segmentation-network inference: multi-scale + flip class probabilities, and masks for image files.

(Masks from SIPE's IS-CAM, when the image-level labels are known, are in :mod:`sipe.cams.predict`;
both write their files through :func:`sipe.vis.write_label_maps`.)
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sipe.config import STRIDE
from sipe.data.transforms import image_to_tensor
from sipe.models.layers import model_device
from sipe.seg.interface import input_normalization, seg_logits
from sipe.vis import PredictResult, write_label_maps

__all__ = ["predict_image", "predict_paths", "predict_probs", "seg_logits"]

log = logging.getLogger(__name__)


@torch.no_grad()
def predict_probs(
    model: nn.Module,
    image: np.ndarray,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    autocast_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Class probabilities of one image averaged over scales (and horizontal flips).

    image: (H, W, 3) uint8 RGB, normalised as the model expects (its ``input_norm``, ImageNet when
    it has none). Each scale resizes the normalised image bilinearly to
    ``round(H*s) x round(W*s)``; the softmax of each pass is resized back to (H, W) and averaged.
    Returns (K, H, W) float32 on the model's device. The model is run in eval mode and its
    train/eval state is restored afterwards.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be an (H, W, 3) uint8 array, got {image.dtype} {image.shape}")
    if not scales:
        raise ValueError("give at least one scale")
    h, w = image.shape[:2]
    device = model_device(model)
    x = image_to_tensor(image, device, input_normalization(model))
    was_training = model.training
    model.eval()
    total = None
    try:
        for s in scales:
            size = (max(1, round(h * s)), max(1, round(w * s)))
            xs = x if size == (h, w) else F.interpolate(x, size, mode="bilinear", align_corners=False, antialias=s < 1)
            batch = torch.cat([xs, xs.flip(-1)]) if flip else xs
            with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                logits = seg_logits(model, batch)
            probs = logits.float().softmax(1)
            if flip:
                probs = probs[:1] + probs[1:].flip(-1)
            if probs.shape[-2:] != (h, w):
                probs = F.interpolate(probs, (h, w), mode="bilinear", align_corners=False)
            total = probs[0] if total is None else total + probs[0]
    finally:
        model.train(was_training)
    return total / (len(scales) * (2 if flip else 1))


def predict_image(
    model: nn.Module,
    image: np.ndarray,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    autocast_dtype: torch.dtype | None = None,
) -> np.ndarray:
    """(H, W) int64 class map of an (H, W, 3) uint8 RGB image (argmax of :func:`predict_probs`)."""
    return predict_probs(model, image, scales, flip, autocast_dtype).argmax(0).cpu().numpy()


def predict_paths(
    model: nn.Module,
    paths: Iterable[str | os.PathLike],
    out_dir: str | os.PathLike,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    overlay: bool = True,
    alpha: float = 0.5,
    autocast_dtype: torch.dtype | None = None,
) -> PredictResult:
    """Segment image files (and the images in folders) with a segmentation network.

    Writes ``out_dir/<stem>.png`` (palette PNG in the VOC colours, pixel value = class index) and,
    with ``overlay``, ``out_dir/overlay/<stem>.jpg`` (the colours blended over the photo with
    weight ``alpha``). Unreadable files are skipped, logged and counted in ``result.skipped``.
    """
    return write_label_maps(
        lambda im: predict_image(model, im, scales, flip, autocast_dtype), paths, out_dir, overlay, alpha,
        min_size=STRIDE,  # a smaller image has no feature-map cell
    )
