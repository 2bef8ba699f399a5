"""Training transforms of the official code, driven by an explicit ``numpy.random.Generator``.

The official order (``data/data_voc.py``): random resize of the long side (bicubic), random
rescale, ImageNet normalisation, horizontal flip, then a random crop whose padding is zero *after*
normalisation (i.e. the mean colour) with a ``valid`` mask marking the real pixels. Labels are
resized with nearest neighbour and padded with the ignore index. Sizes round like the official
``pil_rescale`` (``np.round(side * scale)``).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    import torch

__all__ = [
    "CAFFE_MEAN_RGB",
    "IMAGENET_MEAN",
    "NORMALIZATIONS",
    "IMAGENET_STD",
    "crop_box",
    "image_to_tensor",
    "mean_std",
    "normalize",
    "normalize_batch",
    "normalize_tensor",
    "random_resize_flip_crop",
    "rescale",
    "resize",
]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

# deeplab-pytorch configs/voc12.yaml and cocostuff164k.yaml, IMAGE.MEAN (R, G, B) in [0, 255]: the
# convention of the Caffe-converted DeepLabV2 weights (mean subtraction in [0, 255], no scaling).
CAFFE_MEAN_RGB: tuple[float, float, float] = (122.675, 116.669, 104.008)

# Input conventions as (mean, std) in [0, 1] units, so that ``(x / 255 - mean) / std`` applies either.
NORMALIZATIONS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
    "caffe": (
        (CAFFE_MEAN_RGB[0] / 255.0, CAFFE_MEAN_RGB[1] / 255.0, CAFFE_MEAN_RGB[2] / 255.0),
        (1.0 / 255.0, 1.0 / 255.0, 1.0 / 255.0),
    ),
}


def mean_std(name: str) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """``(mean, std)`` in [0, 1] units of the input convention ``name`` (``imagenet`` or ``caffe``)."""
    try:
        return NORMALIZATIONS[name]
    except KeyError:
        raise ValueError(f"unknown input normalisation {name!r}; choose one of {', '.join(NORMALIZATIONS)}") from None

_RESAMPLE = {3: Image.Resampling.BICUBIC, 1: Image.Resampling.BILINEAR, 0: Image.Resampling.NEAREST}


@functools.lru_cache(maxsize=8)
def _normalize_lut(mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """(3, 256) float32: the normalised value of every uint8 level per channel."""
    levels = np.arange(256, dtype=np.float32)[:, None] / np.float32(255.0)
    return np.ascontiguousarray(((levels - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)).T)


def normalize(
    image: np.ndarray,
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (3, H, W) float32 ``(x / 255 - mean) / std``."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"normalize expects an (H, W, 3) uint8 image, got {image.dtype} {image.shape}")
    # A lookup table gives the same float32 values as the arithmetic at a fraction of the cost.
    lut = _normalize_lut(tuple(float(m) for m in mean), tuple(float(s) for s in std))
    out = np.empty((3, *image.shape[:2]), np.float32)
    for c in range(3):
        np.take(lut[c], image[:, :, c], out=out[c])
    return out


def normalize_tensor(images: torch.Tensor, norm: str = "imagenet") -> torch.Tensor:
    """(N, 3, H, W) uint8 or float RGB in [0, 255] -> (N, 3, H, W) float32 ``(x / 255 - mean) / std``
    by the input convention ``norm`` (see :data:`NORMALIZATIONS`); ``images`` is left as it is.
    Traceable (ONNX export): the constants enter the graph as (1, 3, 1, 1) tensors."""
    import torch  # here, so that the numpy transforms import without torch

    mean_, std_ = mean_std(norm)
    x = images.float().div(255.0)
    mean = torch.tensor(mean_, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(std_, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def normalize_batch(images: torch.Tensor, norm: str = "imagenet") -> torch.Tensor:
    """(N, H, W, 3) uint8 or float RGB in [0, 255] -> (N, 3, H, W) float32 normalised by the input
    convention ``norm`` (see :data:`NORMALIZATIONS`)."""
    return normalize_tensor(images.permute(0, 3, 1, 2), norm)


def image_to_tensor(image: np.ndarray, device: torch.device | str = "cpu", norm: str = "imagenet") -> torch.Tensor:
    """(H, W, 3) uint8 RGB -> (1, 3, H, W) float32 on ``device``, normalised by the convention ``norm``."""
    import torch

    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB image, got shape {image.shape}")
    t = torch.tensor(image, device=device)  # a copy: the array may be read-only (e.g. from PIL)
    return normalize_batch(t.unsqueeze(0), norm)


def resize(array: np.ndarray, size: tuple[int, int], order: int = 3) -> np.ndarray:
    """Resize an (H, W) or (H, W, C) uint8 array to ``size`` = (h, w) with PIL.

    ``order`` 3 = bicubic (images), 1 = bilinear, 0 = nearest (label maps).
    """
    h, w = int(size[0]), int(size[1])
    if (h, w) == array.shape[:2]:
        return array
    return np.asarray(Image.fromarray(array).resize((w, h), _RESAMPLE[order]))


def rescale(array: np.ndarray, scale: float, order: int = 3) -> np.ndarray:
    """Scale both sides by ``scale``, rounding like the official ``pil_rescale`` (at least 1 px)."""
    h, w = array.shape[:2]
    return resize(array, (max(1, int(np.round(h * scale))), max(1, int(np.round(w * scale)))), order)


def crop_box(
    size: tuple[int, int], crop_size: int, rng: np.random.Generator
) -> tuple[int, int, int, int, int, int, int, int]:
    """Random crop placement of the official ``get_random_crop_box``.

    Returns ``(cont_top, cont_bottom, cont_left, cont_right, img_top, img_bottom, img_left, img_right)``:
    the window of the (crop_size, crop_size) container that receives image rows/cols
    ``img_top:img_bottom, img_left:img_right``. A side longer than the crop is cut at a random
    offset; a shorter one is placed at a random offset inside the container.
    """
    h, w = size
    ch, cw = min(crop_size, h), min(crop_size, w)
    h_space, w_space = h - crop_size, w - crop_size
    if h_space > 0:
        cont_top, img_top = 0, int(rng.integers(0, h_space + 1))
    else:
        cont_top, img_top = int(rng.integers(0, -h_space + 1)), 0
    if w_space > 0:
        cont_left, img_left = 0, int(rng.integers(0, w_space + 1))
    else:
        cont_left, img_left = int(rng.integers(0, -w_space + 1)), 0
    return cont_top, cont_top + ch, cont_left, cont_left + cw, img_top, img_top + ch, img_left, img_left + cw



def random_resize_flip_crop(
    image: np.ndarray,
    rng: np.random.Generator,
    *,
    label: np.ndarray | None = None,
    resize_long: tuple[int, int] | None = None,
    scale_range: tuple[float, float] | None = None,
    flip: bool = True,
    crop_size: int | None = 512,
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
    ignore_index: int = 255,
) -> dict[str, np.ndarray]:
    """The official training augmentation of one image (and optionally its label map).

    Args:
        image: (H, W, 3) uint8 RGB.
        rng: the only source of randomness (draws, in order: long side, scale, flip, crop offsets).
        label: optional (H, W) uint8 label map, transformed alongside with nearest resizing.
        resize_long: ``(lo, hi)``: resize so the long side is a uniform integer in [lo, hi] (bicubic).
        scale_range: ``(lo, hi)``: then rescale by a uniform factor in [lo, hi).
        flip: horizontal flip with probability 0.5.
        crop_size: side S of the random square crop; ``None`` keeps the whole (resized) image.

    Returns:
        ``image`` (3, S, S) float32 normalised, zero outside the real pixels; ``valid`` (S, S)
        float32, 1 on real pixels; ``label`` (S, S) uint8 padded with ``ignore_index`` when ``label``
        was given. Without a crop, S x S is the resized image's H x W.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 image, got {image.dtype} {image.shape}")
    if label is not None:
        if label.shape != image.shape[:2]:
            raise ValueError(f"label shape {label.shape} does not match image shape {image.shape[:2]}")
        if label.dtype != np.uint8:
            if label.size and (label.min() < 0 or label.max() > 255):
                raise ValueError("label values must lie in 0..255 (255 = ignore)")
            label = label.astype(np.uint8)
    if resize_long is not None:
        target = int(rng.integers(resize_long[0], resize_long[1] + 1))
        h, w = image.shape[:2]
        scale = target / (h if w < h else w)
        image = rescale(image, scale, 3)
        if label is not None:
            label = rescale(label, scale, 0)
    if scale_range is not None:
        scale = scale_range[0] + rng.random() * (scale_range[1] - scale_range[0])
        image = rescale(image, scale, 3)
        if label is not None:
            label = rescale(label, scale, 0)
    # Normalising is per pixel, so flipping and cropping the uint8 image first and normalising only
    # the crop gives exactly the official result (normalise, flip, crop, zero padding), faster.
    if flip and rng.random() < 0.5:
        image = image[:, ::-1]
        if label is not None:
            label = label[:, ::-1]
    h, w = image.shape[:2]
    if crop_size is None:
        out = {"image": normalize(np.ascontiguousarray(image), mean, std), "valid": np.ones((h, w), np.float32)}
        if label is not None:
            out["label"] = np.ascontiguousarray(label)
        return out
    ct, cb, cl, cr, it, ib, il, ir = crop_box((h, w), crop_size, rng)
    img_out = np.zeros((3, crop_size, crop_size), np.float32)
    img_out[:, ct:cb, cl:cr] = normalize(np.ascontiguousarray(image[it:ib, il:ir]), mean, std)
    valid = np.zeros((crop_size, crop_size), np.float32)
    valid[ct:cb, cl:cr] = 1.0
    out = {"image": img_out, "valid": valid}
    if label is not None:
        lab_out = np.full((crop_size, crop_size), ignore_index, np.uint8)
        lab_out[ct:cb, cl:cr] = label[it:ib, il:ir]
        out["label"] = lab_out
    return out
