"""Networks: the backbone registry, backbones (torchvision ResNets adapted as the official code),
builders, weights and checkpoints."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from sipe.core.sipe_net import SIPENet
from sipe.models.backbone import ResNetBackbone
from sipe.models.registry import build_backbone
from sipe.models.weights import RESNETS, check_resnet


def build_sipe(
    backbone: str = "resnet50",
    num_classes: int = 21,
    weights: str | os.PathLike | None = None,
    *,
    frozen_stages: int = 2,
    freeze_bn: bool = True,
    backbone_options: Mapping[str, Any] | None = None,
    **kwargs,
) -> SIPENet:
    """Build SIPE on a registry backbone (:mod:`sipe.models.registry`): ``resnet18..101`` (the official
    adaptation: stride 16, frozen BN), ``timm:<model>`` or ``module:function``.

    ``weights``: ``None``, a torchvision weights name (``"IMAGENET1K_V1"``, what the paper used), a
    local state-dict file (``.pth``/``.safetensors``) or ``"timm"`` (timm's pretrained weights).
    ``frozen_stages``, ``freeze_bn``: the training policy (official: 2, True). Extra keyword
    arguments go to :class:`SIPENet`.
    """
    trunk = build_backbone(backbone, weights, frozen_stages=frozen_stages, freeze_bn=freeze_bn,
                           options=backbone_options)
    return SIPENet(trunk, num_classes, **kwargs)


__all__ = ["RESNETS", "ResNetBackbone", "SIPENet", "build_backbone", "build_sipe", "check_resnet"]
