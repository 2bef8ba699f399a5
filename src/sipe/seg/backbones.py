"""The bodies of the segmentation networks and their batch-norm handling.

A ResNet body is DeepLab's dilated torchvision ResNet
(:func:`sipe.models.dilated_resnet.build_dilated_resnet`) read at its stages by torchvision's
``IntermediateLayerGetter``; every other registry backbone (``timm:<model>``, ``module:function``) is
wrapped by :class:`RegistryBody`. Both return ``{"out": last map[, "aux": third map]}``, the dict
torchvision's ``DeepLabV3`` (and :class:`sipe.seg.deeplabv2.DeepLabV2`) expect of their ``backbone``.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torchvision.models._utils import IntermediateLayerGetter

from sipe.config.common import backbone_kind
from sipe.models.registry import build_backbone

__all__ = ["RegistryBody", "declares_pretrained", "freeze_backbone_batchnorm", "registry_body", "resnet_body",
           "sync_batchnorm", "untrained_batchnorm"]

log = logging.getLogger(__name__)


class RegistryBody(nn.Module):
    """A registry backbone (:func:`sipe.models.registry.build_backbone`) as the body of a DeepLab.

    ``forward(x)`` returns ``{"out": its last map[, "aux": its third map]}`` (strides 16 and 16, or 8
    and 8 for a timm model built at output stride 8), the dict torchvision's ``DeepLabV3`` expects
    of ``IntermediateLayerGetter``. ``out_channels``: the backbone's four widths; ``name``: its
    registry name.
    """

    def __init__(self, net: nn.Module, name: str, aux: bool = False) -> None:
        super().__init__()
        self.net = net
        self.name = name
        self.aux = aux
        self.out_channels: tuple[int, ...] = tuple(int(c) for c in net.out_channels)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        maps = self.net(x)
        out = OrderedDict(out=maps[3])
        if self.aux:
            out["aux"] = maps[2]
        return out


def registry_body(
    backbone: str,
    weights: str | os.PathLike | None = None,
    *,
    output_stride: int = 16,
    options: Mapping[str, Any] | None = None,
    aux: bool = False,
) -> RegistryBody:
    """The registry backbone ``backbone`` as a DeepLab body, every parameter trainable and batch norm
    as it is (the torchvision ResNet of DeepLab fine-tunes all too; ``model.freeze_bn`` is applied
    afterwards by :func:`freeze_backbone_batchnorm`). ``output_stride``: 16, or 8 for a timm model
    timm can dilate; for any other backbone the registry refuses 8 with :class:`sipe.models.registry.BackboneError`
    naming the fix (:func:`sipe.models.registry.build_backbone`)."""
    net = build_backbone(backbone, weights, frozen_stages=0, freeze_bn=False, options=options,
                         output_stride=output_stride)
    return RegistryBody(net, backbone, aux=aux)


def resnet_body(resnet: nn.Module, aux: bool = False) -> IntermediateLayerGetter:
    """A torchvision ResNet read at ``layer4`` (``"out"``) and, with ``aux``, ``layer3`` (``"aux"``)."""
    return_layers = {"layer4": "out"}
    if aux:
        return_layers["layer3"] = "aux"
    return IntermediateLayerGetter(resnet, return_layers=return_layers)


def declares_pretrained(body: nn.Module) -> bool:
    """Whether a ``module:function`` body says it starts from trained weights: the module its factory
    returned has ``pretrained = True`` (a factory that loads its own ImageNet weights), so that
    ``model.freeze_bn: null`` freezes its batch norm as it would for ``model.weights``."""
    net = getattr(body, "net", None)  # RegistryBody -> FeatureBackbone -> the factory's module
    return getattr(getattr(net, "body", None), "pretrained", False) is True


def untrained_batchnorm(module: nn.Module) -> list[str]:
    """Names of the batch norms inside ``module`` whose statistics are still the initial ones (mean 0,
    variance 1 in every channel): never estimated on data, so that freezing them fixes an identity."""
    return [name for name, m in module.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
            and m.running_mean is not None and bool((m.running_mean == 0).all()) and bool((m.running_var == 1).all())]


def freeze_backbone_batchnorm(model: nn.Module) -> None:
    """``model.freeze_bn`` of a DeepLab: every batch norm of ``model.backbone`` keeps its statistics and
    its affine parameters fixed. A torchvision ResNet gets :class:`sipe.models.layers.FrozenBatchNorm2d`
    (as before); a registry body (:class:`RegistryBody`) keeps its own layers (timm's ``BatchNormAct2d``
    carries its activation) held in eval mode by the registry's ``freeze_bn`` and their affine
    parameters switched off. Warns when every one of them holds initial statistics (a random body:
    frozen, they normalise nothing and the network trains without normalisation, docs/skewed.md)."""
    from sipe.models.layers import freeze_batchnorm

    body = model.backbone
    norms = [m for m in body.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if norms and len(untrained_batchnorm(body)) == len(norms):
        log.warning(
            "model.freeze_bn freezes the backbone's %d batch norms, but their statistics are the initial ones "
            "(mean 0, variance 1: the body has no trained weights), so they normalise nothing; set "
            "model.freeze_bn=false, or give model.weights (a module:function factory that loads its own "
            "weights: give its module pretrained = True)", len(norms),
        )
    if not isinstance(body, RegistryBody):
        freeze_batchnorm(body)
        return
    body.net.freeze_bn = True
    for m in body.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            for p in m.parameters(recurse=False):
                p.requires_grad_(False)
    body.net.train(body.net.training)


def sync_batchnorm(module: nn.Module) -> nn.Module:
    """``module`` with SyncBatchNorm: timm's converter for a timm body (its ``BatchNormAct2d`` keeps its
    activation, which torch's converter would drop), torch's for everything else."""
    if isinstance(module, RegistryBody) and backbone_kind(module.name) == "timm":
        from timm.layers import convert_sync_batchnorm

        return convert_sync_batchnorm(module)
    return nn.SyncBatchNorm.convert_sync_batchnorm(module)
