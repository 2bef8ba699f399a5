"""DeepLabV3 segmentation networks (torchvision) and the spec that rebuilds them from a checkpoint.

All networks are torchvision ``DeepLabV3`` modules: ``model(x)`` takes an ImageNet-normalised
(N, 3, H, W) float batch and returns ``{"out": (N, K, H, W) logits[, "aux": (N, K, H, W)]}``.
ResNet-50/101 follow ``torchvision.models.segmentation.deeplabv3_resnet50/101`` layer for layer
(same modules, same state-dict keys); ResNet-18/34 are small variants for CPU runs and the demo.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torchvision
from torch import nn
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.segmentation.deeplabv3 import DeepLabHead, DeepLabV3
from torchvision.models.segmentation.fcn import FCNHead

from sipe.models.checkpoint import checkpoint_kind, read_checkpoint
from sipe.models.weights import check_resnet, load_resnet_weights

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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SegModelSpec:
        names = ("num_classes", "backbone", "output_stride", "aux", "class_names", "arch", "normalization",
                 "atrous_rates", "msc_scales", "caffe_resnet")
        known = {k: d[k] for k in names if k in d}
        if "num_classes" not in known:
            raise ValueError("segmentation model spec lacks 'num_classes'")
        known["class_names"] = list(known.get("class_names") or [])
        return cls(**known)


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
) -> DeepLabV3:
    """Build a torchvision DeepLabV3 for ``num_classes`` classes (background included).

    backbone: ``resnet50`` / ``resnet101`` (torchvision's ``deeplabv3_resnet50/101`` layout) or the
        small ``resnet18`` / ``resnet34``: DeepLab dilates a torchvision ResNet to output stride 8 (or
        16), so the registry's timm and ``module:function`` backbones are refused here.
    weights_backbone: ``None`` (random initialisation), a torchvision weights name such as
        ``"IMAGENET1K_V1"`` (downloaded, or read from the torch hub cache; raises if neither works),
        or a local file holding a ResNet state dict.
    aux: add the FCN auxiliary head on ``layer3`` (returned as ``"aux"``).
    output_stride: 8 (dilated ``layer3`` and ``layer4``, torchvision's choice) or 16 (dilated ``layer4``).
    """
    check_resnet(backbone, "DeepLabV3")
    if output_stride not in (8, 16):
        raise ValueError(f"output_stride must be 8 or 16, got {output_stride}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be positive, got {num_classes}")
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
    rates = (12, 24, 36) if output_stride == 8 else (6, 12, 18)
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
            caffe_resnet=spec.caffe_resnet,
        )
    if spec.arch != "deeplabv3":
        raise ValueError(f"unknown segmentation architecture {spec.arch!r} in the model spec (deeplabv3, deeplabv2)")
    return build_deeplab(
        spec.num_classes, backbone=spec.backbone, aux=spec.aux, output_stride=spec.output_stride
    )


def load_seg_checkpoint(
    path: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> tuple[nn.Module, SegModelSpec]:
    """Rebuild a trained segmentation network from a checkpoint written by ``train_seg``.

    The checkpoint is a dict with ``"model"`` (state dict) and ``"meta"["model_spec"]``
    (``num_classes``, ``backbone``, ``output_stride``, ``aux``, ``class_names``).
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
