"""Input normalisation conventions of the segmentation networks, one entry per convention.

``imagenet``: torchvision's ``(x / 255 - mean) / std`` in RGB order (DeepLabV3, and DeepLabV2 on
torchvision ImageNet weights). ``caffe``: mean subtraction in [0, 255] without scaling, the
convention of the Caffe-converted DeepLabV2 weights deeplab-pytorch ships (its
``IMAGE.MEAN`` = R 122.675, G 116.669, B 104.008). Both are expressed as a ``(mean, std)`` pair in
[0, 1] units so that one function per array type (``sipe.data.transforms.normalize`` for uint8
numpy images, :func:`sipe.seg.model.normalize_images` for tensors) applies either. Those weights
expect BGR input; :mod:`sipe.seg.deeplabv2` flips their first convolution to RGB on load, so every
network here takes RGB.
"""

from __future__ import annotations

from typing import Literal

from torch import nn

from sipe.data.transforms import IMAGENET_MEAN, IMAGENET_STD

Normalization = Literal["imagenet", "caffe"]

# deeplab-pytorch configs/voc12.yaml and cocostuff164k.yaml, IMAGE.MEAN (R, G, B) in [0, 255].
CAFFE_MEAN_RGB: tuple[float, float, float] = (122.675, 116.669, 104.008)

NORMALIZATIONS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
    "caffe": (
        (CAFFE_MEAN_RGB[0] / 255.0, CAFFE_MEAN_RGB[1] / 255.0, CAFFE_MEAN_RGB[2] / 255.0),
        (1.0 / 255.0, 1.0 / 255.0, 1.0 / 255.0),
    ),
}


def mean_std(name: str) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """``(mean, std)`` in [0, 1] units of the convention ``name``: ``out = (x / 255 - mean) / std``."""
    try:
        return NORMALIZATIONS[name]
    except KeyError:
        raise ValueError(f"unknown input normalisation {name!r}; choose one of {', '.join(NORMALIZATIONS)}") from None


def input_normalization(model: nn.Module) -> str:
    """The convention a network expects: its ``input_norm`` attribute, ``imagenet`` when it has none."""
    return str(getattr(model, "input_norm", "imagenet"))
