"""Networks: backbones (torchvision ResNets adapted as the official code), builders, weights and checkpoints."""

from __future__ import annotations

import os

from sipe.core.sipe_net import SIPENet
from sipe.models.backbone import ResNetBackbone
from sipe.models.weights import RESNETS, check_resnet


def build_sipe(
    backbone: str = "resnet50",
    num_classes: int = 21,
    weights: str | os.PathLike | None = None,
    **kwargs,
) -> SIPENet:
    """Build SIPE on a torchvision ResNet adapted as the official code (stride 16, frozen BN).

    ``weights``: ``None``, a torchvision weights name (``"IMAGENET1K_V1"``, what the paper used) or
    a local state-dict file. Extra keyword arguments go to :class:`SIPENet`.
    """
    check_resnet(backbone)
    return SIPENet(ResNetBackbone(RESNETS[backbone], weights=weights), num_classes, **kwargs)


__all__ = ["RESNETS", "ResNetBackbone", "SIPENet", "build_sipe"]
