"""DeepLabV3 (torchvision's ``DeepLabV3``: ASPP head, optional FCN auxiliary head) on any registry backbone.

``model(x)`` takes an ImageNet-normalised (N, 3, H, W) float batch and returns
``{"out": (N, K, H, W) logits[, "aux": (N, K, H, W)]}``. ResNet-50/101 follow
``torchvision.models.segmentation.deeplabv3_resnet50/101`` layer for layer (same modules, same
state-dict keys); ResNet-18/34 are small variants for CPU runs and the demo. Every other backbone of
the registry (``timm:<model>``, ``module:function``) is the body as the registry builds it
(:class:`sipe.seg.backbones.RegistryBody`), the ASPP head on its last map, the auxiliary head on its
third.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from torch import nn
from torchvision.models.segmentation.deeplabv3 import DeepLabHead, DeepLabV3
from torchvision.models.segmentation.fcn import FCNHead

from sipe.config.common import backbone_kind
from sipe.models.dilated_resnet import build_dilated_resnet
from sipe.models.registry import check_resnet_options
from sipe.seg.backbones import registry_body, resnet_body

__all__ = ["build_deeplab", "param_groups"]


def build_deeplab(
    num_classes: int,
    backbone: str = "resnet50",
    weights_backbone: str | os.PathLike | None = None,
    aux: bool = False,
    output_stride: int = 8,
    backbone_options: Mapping[str, Any] | None = None,
) -> DeepLabV3:
    """Build a torchvision DeepLabV3 for ``num_classes`` classes (background included).

    backbone: ``resnet50`` / ``resnet101`` (torchvision's ``deeplabv3_resnet50/101`` layout) or the
        small ``resnet18`` / ``resnet34``, dilated by DeepLab itself; or any other registry name
        (``timm:<model>``, ``module:function``): its body as the registry builds it
        (:func:`sipe.seg.backbones.registry_body`), the ASPP head on its last map, the auxiliary head on its third.
    weights_backbone: ``None`` (random initialisation); for a ResNet a torchvision weights name such
        as ``"IMAGENET1K_V1"`` (downloaded, or read from the torch hub cache; raises if neither works)
        or a local file holding a ResNet state dict; for the others what the registry takes (a local
        ``.pth``/``.safetensors`` file of the backbone, or ``"timm"`` for timm's pretrained weights).
    aux: add the FCN auxiliary head on ``layer3`` / the third map (returned as ``"aux"``).
    output_stride: 8 (dilated ``layer3`` and ``layer4``, torchvision's choice) or 16 (dilated ``layer4``);
        a timm backbone takes 8 where timm can dilate it, a ``module:function`` one 16 only.
    backbone_options: keyword arguments of ``timm.create_model`` / the user's factory (none for a ResNet).
    """
    if output_stride not in (8, 16):
        raise ValueError(f"output_stride must be 8 or 16, got {output_stride}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be positive, got {num_classes}")
    rates = (12, 24, 36) if output_stride == 8 else (6, 12, 18)
    if backbone_kind(backbone) != "resnet":
        body = registry_body(backbone, weights_backbone, output_stride=output_stride, options=backbone_options,
                             aux=aux)
        c = body.out_channels
        aux_head = FCNHead(c[2], num_classes) if aux else None
        return DeepLabV3(body, DeepLabHead(c[3], num_classes, atrous_rates=rates), aux_head)
    check_resnet_options(backbone, backbone_options)
    resnet = build_dilated_resnet(backbone, weights_backbone, output_stride=output_stride)
    c4 = resnet.fc.in_features  # layer4's width: 2048 (Bottleneck) or 512 (BasicBlock)
    body = resnet_body(resnet, aux)
    classifier = DeepLabHead(c4, num_classes, atrous_rates=rates)
    aux_classifier = FCNHead(c4 // 2, num_classes) if aux else None
    return DeepLabV3(body, classifier, aux_classifier)


def param_groups(model: nn.Module, head_lr_mult: float) -> list[dict]:
    """Backbone parameters at lr x 1, the DeepLab head (and aux head) at lr x ``head_lr_mult``."""
    head = list(model.classifier.parameters())
    if getattr(model, "aux_classifier", None) is not None:
        head += list(model.aux_classifier.parameters())
    return [
        {"params": [p for p in model.backbone.parameters() if p.requires_grad], "lr_mult": 1.0},
        {"params": [p for p in head if p.requires_grad], "lr_mult": head_lr_mult},
    ]
