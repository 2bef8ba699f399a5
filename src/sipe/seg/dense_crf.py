"""The dense-CRF post-processing of segmentation predictions that the DeepLab / WSSS literature reports.

A fully connected CRF (pydensecrf) whose unary is the network's softmax, with a Gaussian
smoothness kernel and an RGB bilateral kernel; the defaults are deeplab-pytorch's ``CRF`` section
(configs/voc12.yaml and cocostuff164k.yaml: ITER_MAX 10, POS_W 3, POS_XY_STD 1, BI_W 4,
BI_XY_STD 67, BI_RGB_STD 3). (``sipe.refine.crf`` is the other CRF of the package: label unaries
for pseudo masks, with SIPE's own parameters.)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pydensecrf.densecrf as dcrf
from pydensecrf.utils import unary_from_softmax


@dataclass(frozen=True)
class DenseCRFParams:
    """Parameters of :func:`crf_refine_probs` (deeplab-pytorch's names, lower case)."""

    iter_max: int = 10
    pos_w: float = 3.0
    pos_xy_std: float = 1.0
    bi_w: float = 4.0
    bi_xy_std: float = 67.0
    bi_rgb_std: float = 3.0


def crf_refine_probs(image: np.ndarray, probs: np.ndarray, params: DenseCRFParams | None = None) -> np.ndarray:
    """Refine class probabilities with a dense CRF.

    image: (H, W, 3) uint8 RGB; probs: (K, H, W) float softmax probabilities at image size.
    Returns (K, H, W) float32 CRF marginals (argmax over K gives the label map).
    """
    p = params or DenseCRFParams()
    image = np.asarray(image)
    probs = np.asarray(probs, dtype=np.float32)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
    if probs.ndim != 3 or probs.shape[1:] != image.shape[:2]:
        raise ValueError(f"probs must be (K, H, W) at the image size {image.shape[:2]}, got {probs.shape}")
    k, h, w = probs.shape
    crf = dcrf.DenseCRF2D(w, h, k)
    crf.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(probs)))
    crf.addPairwiseGaussian(sxy=p.pos_xy_std, compat=p.pos_w)
    crf.addPairwiseBilateral(sxy=p.bi_xy_std, srgb=p.bi_rgb_std, rgbim=np.ascontiguousarray(image), compat=p.bi_w)
    return np.asarray(crf.inference(p.iter_max), dtype=np.float32).reshape(k, h, w)
