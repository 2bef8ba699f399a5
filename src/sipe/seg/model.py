"""DeepLabV3 segmentation networks (torchvision) and the spec that rebuilds them from a checkpoint.

All networks are torchvision ``DeepLabV3`` modules: ``model(x)`` takes an ImageNet-normalised
(N, 3, H, W) float batch and returns ``{"out": (N, K, H, W) logits[, "aux": (N, K, H, W)]}``.
ResNet-50/101 follow ``torchvision.models.segmentation.deeplabv3_resnet50/101`` layer for layer
(same modules, same state-dict keys); ResNet-18/34 are small variants for CPU runs and the demo.
Every other backbone of the registry (``timm:<model>``, ``module:function``) is the body as the
registry builds it (:class:`RegistryBody`), the ASPP head on its last map, the auxiliary head on its
third.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torchvision
from torch import nn
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.segmentation.deeplabv3 import DeepLabHead, DeepLabV3
from torchvision.models.segmentation.fcn import FCNHead

from sipe.config.common import backbone_kind
from sipe.models.checkpoint import checkpoint_kind, read_checkpoint
from sipe.models.registry import build_backbone, check_resnet_options
from sipe.models.weights import load_resnet_weights

log = logging.getLogger(__name__)



@dataclass
class SegModelSpec:
    """Everything needed to rebuild a segmentation network from its state dict."""

    num_classes: int
    backbone: str = "resnet50"
    output_stride: int = 8
    aux: bool = False
    class_names: list[str] = field(default_factory=list)
    arch: str = "deeplabv3"  # deeplabv3 | deeplabv2 (sipe.seg.deeplabv2); older checkpoints lack it
    normalization: str = "imagenet"  # input convention, sipe.data.transforms.NORMALIZATIONS
    atrous_rates: list[int] | None = None  # deeplabv2: the ASPP rates
    msc_scales: list[float] | None = None  # deeplabv2: the MSC input scales (1.0 first)
    caffe_resnet: bool = False  # deeplabv2: the Caffe ResNet variant of deeplab-pytorch's weights
    # timm / module:function backbones: keyword arguments of timm.create_model / the factory (older
    # checkpoints lack it: none)
    backbone_options: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SegModelSpec:
        names = ("num_classes", "backbone", "output_stride", "aux", "class_names", "arch", "normalization",
                 "atrous_rates", "msc_scales", "caffe_resnet", "backbone_options")
        known = {k: d[k] for k in names if k in d}
        if "num_classes" not in known:
            raise ValueError("segmentation model spec lacks 'num_classes'")
        known["class_names"] = list(known.get("class_names") or [])
        if known.get("backbone_options") is not None:
            known["backbone_options"] = dict(known["backbone_options"])
        return cls(**known)


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


def freeze_backbone_batchnorm(model: nn.Module) -> None:
    """``model.freeze_bn`` of a DeepLab: every batch norm of ``model.backbone`` keeps its statistics and
    its affine parameters fixed. A torchvision ResNet gets :class:`sipe.models.layers.FrozenBatchNorm2d`
    (as before); a registry body (:class:`RegistryBody`) keeps its own layers (timm's ``BatchNormAct2d``
    carries its activation) held in eval mode by the registry's ``freeze_bn`` and their affine
    parameters switched off."""
    from sipe.models.layers import freeze_batchnorm

    body = model.backbone
    if not isinstance(body, RegistryBody):
        freeze_batchnorm(body)
        return
    body.net.freeze_bn = True
    for m in body.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            for p in m.parameters(recurse=False):
                p.requires_grad_(False)
    body.net.train(body.net.training)


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
        (:func:`registry_body`), the ASPP head on its last map, the auxiliary head on its third.
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
    bottleneck = backbone in ("resnet50", "resnet101")
    dilate = [False, output_stride == 8, True]
    ctor = getattr(torchvision.models, backbone)
    resnet = ctor(weights=None, replace_stride_with_dilation=dilate) if bottleneck else ctor(weights=None)
    if not bottleneck:
        if output_stride == 8:
            _dilate_basic_layer(resnet.layer3, 1, 2)
            _dilate_basic_layer(resnet.layer4, 2, 4)
        else:
            _dilate_basic_layer(resnet.layer4, 1, 2)
    load_resnet_weights(resnet, backbone, weights_backbone)

    return_layers = {"layer4": "out"}
    if aux:
        return_layers["layer3"] = "aux"
    body = IntermediateLayerGetter(resnet, return_layers=return_layers)
    c4 = 2048 if bottleneck else 512
    classifier = DeepLabHead(c4, num_classes, atrous_rates=rates)
    aux_classifier = FCNHead(c4 // 2, num_classes) if aux else None
    return DeepLabV3(body, classifier, aux_classifier)


def build_from_spec(spec: SegModelSpec) -> nn.Module:
    """A randomly initialised network with the architecture ``spec`` describes."""
    if spec.arch == "deeplabv2":
        from sipe.seg.deeplabv2 import ATROUS_RATES, MSC_SCALES, build_deeplabv2

        return build_deeplabv2(
            spec.num_classes, spec.backbone, atrous_rates=spec.atrous_rates or ATROUS_RATES,
            msc_scales=spec.msc_scales or MSC_SCALES, normalization=spec.normalization,
            caffe_resnet=spec.caffe_resnet, backbone_options=spec.backbone_options,
        )
    if spec.arch != "deeplabv3":
        raise ValueError(f"unknown segmentation architecture {spec.arch!r} in the model spec (deeplabv3, deeplabv2)")
    return build_deeplab(
        spec.num_classes, backbone=spec.backbone, aux=spec.aux, output_stride=spec.output_stride,
        backbone_options=spec.backbone_options,
    )


def load_seg_checkpoint(
    path: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> tuple[nn.Module, SegModelSpec]:
    """Rebuild a trained segmentation network from a checkpoint written by ``train_seg``.

    The checkpoint is a dict with ``"model"`` (state dict) and ``"meta"["model_spec"]``
    (``num_classes``, ``backbone``, ``backbone_options``, ``output_stride``, ``aux``, ``class_names``...).
    Returns the network in eval mode and its spec.
    """
    ckpt = read_checkpoint(path, map_location, made_by="sipe seg train")
    return seg_model_from_checkpoint(ckpt, str(path))


def seg_model_from_checkpoint(ckpt: Mapping[str, Any], source: str = "checkpoint") -> tuple[nn.Module, SegModelSpec]:
    """:func:`load_seg_checkpoint` for a checkpoint dict already loaded (``source`` names it in errors)."""
    if not isinstance(ckpt, Mapping) or "model" not in ckpt or checkpoint_kind(ckpt) != "seg":
        raise ValueError(
            f"{source} is not a segmentation checkpoint (no meta.model_spec); pass one written by 'sipe seg train'"
        )
    spec = SegModelSpec.from_dict(ckpt["meta"]["model_spec"])
    model = build_from_spec(spec)
    state = {k.removeprefix("module."): v for k, v in ckpt["model"].items()}
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(f"{source} does not fit its model spec {spec}: {e}") from e
    model.eval()
    return model, spec


def input_normalization(model: nn.Module) -> str:
    """The input convention a network expects (:data:`sipe.data.transforms.NORMALIZATIONS`): its
    ``input_norm`` attribute, ``imagenet`` when it has none."""
    return str(getattr(model, "input_norm", "imagenet"))
