"""DeepLab's ResNet: a torchvision ResNet whose last stages are dilated instead of strided."""

from __future__ import annotations

import os

from torch import nn

from sipe.config.common import RESNETS
from sipe.models.registry import BackboneError
from sipe.models.weights import load_resnet_weights, torchvision_resnet

__all__ = ["build_dilated_resnet"]


def _dilate_basic_layer(layer: nn.Sequential, previous_dilation: int, dilation: int) -> None:
    """Turn a strided ResNet ``BasicBlock`` stage into a dilated one (stride 1), as torchvision does
    for ``Bottleneck`` stages with ``replace_stride_with_dilation`` (which BasicBlock refuses)."""
    for i, block in enumerate(layer):
        first = i == 0
        d1 = previous_dilation if first else dilation
        block.conv1.stride = (1, 1)
        block.conv1.dilation = block.conv1.padding = (d1, d1)
        block.conv2.dilation = block.conv2.padding = (dilation, dilation)
        if first and block.downsample is not None:
            block.downsample[0].stride = (1, 1)
        block.stride = 1


def build_dilated_resnet(
    name: str, weights: str | os.PathLike | None = None, *, output_stride: int = 8
) -> nn.Module:
    """The torchvision ResNet ``name`` as DeepLab uses it: ``layer4`` dilated (rate 2, output stride 16),
    or ``layer3`` and ``layer4`` (rates 2 and 4, output stride 8), with its ``fc`` left in place.

    ResNet-50/101 through torchvision's ``replace_stride_with_dilation``; ResNet-10/18/34 (``BasicBlock``,
    which torchvision refuses to dilate) the same way by hand. ``weights``: as
    :func:`sipe.models.weights.load_resnet_weights` takes them (``None``: random initialisation).
    ``forward`` is torchvision's: use its stages (``layer1`` ... ``layer4``) through
    ``IntermediateLayerGetter``.
    """
    if name not in RESNETS:
        raise BackboneError(f"{name!r} is not a ResNet; choose one of {', '.join(RESNETS)}")
    if output_stride not in (8, 16):
        raise ValueError(f"output_stride must be 8 or 16, got {output_stride}")
    if name in ("resnet50", "resnet101"):
        resnet = torchvision_resnet(name, replace_stride_with_dilation=[False, output_stride == 8, True])
    else:
        resnet = torchvision_resnet(name)
        if output_stride == 8:
            _dilate_basic_layer(resnet.layer3, 1, 2)
            _dilate_basic_layer(resnet.layer4, 2, 4)
        else:
            _dilate_basic_layer(resnet.layer4, 1, 2)
    load_resnet_weights(resnet, name, weights)
    return resnet
