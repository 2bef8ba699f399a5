"""DeepLabV2 (ASPP-v2 on a dilated ResNet, multi-scale inputs fused by max), as the WSSS literature trains it.

The segmentation numbers of SIPE and most WSSS papers come from kazuto1011/deeplab-pytorch's
DeepLabV2-ResNet-101: a ResNet whose last two stages are dilated (rates 2 and 4, output stride 8),
an ASPP of four parallel 3x3 convolutions at rates 6, 12, 18 and 24 whose class logits are summed,
and MSC: the network runs on the input at scales 1.0, 0.75 and 0.5, the smaller logits are
upsampled to the 1.0 logits and fused by an elementwise max. Training sums the cross-entropy of the
three scales' logits and of the fused logits (labels resized to each by nearest neighbour); at test
time the fused logits are the prediction.

Here the ResNet is torchvision's (``replace_stride_with_dilation=[False, True, True]``), so the
ImageNet weights of torchvision load as they are. deeplab-pytorch's own files (the COCO-pretrained
initialisation of the paper's setting, or a trained model) use Caffe key names, BGR input with
mean subtraction, the stride of ``layer2`` in its first 1x1 convolution, a ceil-mode max pool and
the first block of each dilated stage at the stage's rate;
:func:`build_deeplabv2` maps their keys, flips the first convolution to RGB and builds that
variant (``caffe_resnet``), with the ``caffe`` input normalisation, so the network computes what
the file was trained to compute.

A ``timm:<model>`` backbone of the registry works too, dilated by timm to output stride 8
(:func:`sipe.seg.backbones.registry_body`, the ASPP on its last map, ImageNet normalisation, weights as
the registry takes them); a ``module:function`` backbone cannot run at 8 (its contract fixes 16)
and is refused with the way out, ``arch: deeplabv3``.

The deeplab-pytorch key mapping and the reading of its files are :mod:`sipe.seg.deeplab_pytorch`; the
MSC loss is with the other losses in :mod:`sipe.seg.losses`; the dilated ResNet comes from
:func:`sipe.models.dilated_resnet.build_dilated_resnet`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sipe.config.common import backbone_kind
from sipe.data.transforms import mean_std
from sipe.models.dilated_resnet import build_dilated_resnet
from sipe.models.registry import BackboneError, check_resnet_options
from sipe.seg.backbones import registry_body, resnet_body
from sipe.seg.deeplab_pytorch import load_deeplab_pytorch_weights, resolve_weights

log = logging.getLogger(__name__)

ATROUS_RATES: tuple[int, ...] = (6, 12, 18, 24)
MSC_SCALES: tuple[float, ...] = (1.0, 0.75, 0.5)


class ASPPv2(nn.Module):
    """DeepLabV2's ASPP: parallel 3x3 convolutions to class logits at the given dilation rates, summed.

    (N, C, h, w) features -> (N, K, h, w) logits. Initialised N(0, 0.01), bias 0, as DeepLab does.
    """

    def __init__(self, in_channels: int, num_classes: int, rates: Sequence[int] = ATROUS_RATES) -> None:
        super().__init__()
        if not rates:
            raise ValueError("ASPP needs at least one atrous rate")
        self.convs = nn.ModuleList(
            nn.Conv2d(in_channels, num_classes, 3, padding=int(r), dilation=int(r), bias=True) for r in rates
        )
        for conv in self.convs:
            nn.init.normal_(conv.weight, mean=0.0, std=0.01)
            nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.convs[0](x)
        for conv in self.convs[1:]:
            out = out + conv(x)
        return out


class DeepLabV2(nn.Module):
    """Dilated ResNet + :class:`ASPPv2` with multi-scale inputs (MSC) fused by elementwise max.

    ``model(x)``, x (N, 3, H, W) normalised as ``input_norm`` says:
      - eval: ``{"out": (N, K, H, W)}``, the fused logits upsampled (bilinear) to the input size;
      - train: ``"out"`` (N, K, h, w), the fused logits at output stride 8 (h = ceil(H / 8)),
        ``"pyramid"`` [(N, K, h_s, w_s) for each scale], the logits of every scale, and ``"scales"``.
    ``scales[0]`` must be 1.0; ``scales=(1.0,)`` is the plain single-scale network.
    Submodules ``backbone`` (``IntermediateLayerGetter``, ``{"out": layer4}``) and ``classifier``
    (the ASPP) follow torchvision's DeepLabV3 naming, so the batch-norm handling and the
    state-dict layout of the backbone are shared with it.
    """

    def __init__(
        self,
        backbone: nn.Module,
        classifier: nn.Module,
        scales: Sequence[float] = MSC_SCALES,
        input_norm: str = "imagenet",
        caffe_resnet: bool = False,
    ) -> None:
        super().__init__()
        scales = tuple(float(s) for s in scales)
        if not scales or scales[0] != 1.0 or any(s <= 0 for s in scales):
            raise ValueError(f"MSC scales must start with 1.0 and be positive, got {list(scales)}")
        mean_std(input_norm)  # fail early on an unknown convention
        self.backbone = backbone
        self.classifier = classifier
        self.scales = scales
        self.input_norm = input_norm
        self.caffe_resnet = caffe_resnet

    def single_scale(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> (N, K, ceil(H/8), ceil(W/8)) logits of one pass, no MSC."""
        return self.classifier(self.backbone(x)["out"])

    def forward(self, x: torch.Tensor) -> dict[str, Any]:
        pyramid = [self.single_scale(x)]
        for s in self.scales[1:]:
            # deeplab-pytorch's resize: bilinear by the scale factor (output floor(H * s)), which ONNX
            # exports as a Resize by scale, so the exported graph keeps dynamic H and W.
            xs = F.interpolate(x, scale_factor=s, mode="bilinear", align_corners=False)
            pyramid.append(self.single_scale(xs))
        ref = pyramid[0]
        fused = ref
        for logits in pyramid[1:]:
            up = F.interpolate(logits, size=ref.shape[-2:], mode="bilinear", align_corners=False)
            fused = torch.maximum(fused, up)
        if self.training:
            return {"out": fused, "pyramid": pyramid, "scales": self.scales}
        return {"out": F.interpolate(fused, size=x.shape[-2:], mode="bilinear", align_corners=False)}


# ----------------------------------------------------------------------------- builder


def _caffe_variant(resnet: nn.Module) -> None:
    """Make a dilated (output stride 8) torchvision ResNet the MSRA/Caffe ResNet of deeplab-pytorch's
    weights, in place: a ceil-mode max pool and, for a Bottleneck ResNet, the stride of ``layer2`` in
    its first 1x1 convolution and every block of ``layer3``/``layer4`` at the stage's rate."""
    resnet.maxpool.ceil_mode = True
    if hasattr(resnet.layer2[0], "conv3"):  # Bottleneck
        first = resnet.layer2[0]
        first.conv1.stride, first.conv2.stride = (2, 2), (1, 1)
        # torchvision gives the first block of a dilated stage the previous stage's rate;
        # DeepLab's Caffe ResNet dilates every block of the stage.
        for layer, rate in ((resnet.layer3, 2), (resnet.layer4, 4)):
            layer[0].conv2.dilation = layer[0].conv2.padding = (rate, rate)


def build_deeplabv2(
    num_classes: int,
    backbone: str = "resnet101",
    weights: str | os.PathLike | None = None,
    *,
    atrous_rates: Sequence[int] = ATROUS_RATES,
    msc_scales: Sequence[float] = MSC_SCALES,
    normalization: str = "auto",
    caffe_resnet: bool | None = None,
    backbone_options: Mapping[str, Any] | None = None,
) -> DeepLabV2:
    """Build a DeepLabV2 for ``num_classes`` classes (background included), optionally initialised.

    backbone: ``resnet101`` / ``resnet50`` (``resnet18`` / ``resnet34`` for small CPU runs), or a
        ``timm:<model>`` that timm dilates to output stride 8 (``module:function`` backbones are refused).
    weights: ``None`` (random), a torchvision weights name such as ``IMAGENET1K_V1``, a local
        torchvision ResNet state dict, or a local deeplab-pytorch DeepLabV2 file (layout detected
        from its keys; the matched counts are logged and a total mismatch raises).
    normalization: ``auto`` = ``caffe`` for deeplab-pytorch weights, else ``imagenet``.
    caffe_resnet: ``None`` = True exactly for deeplab-pytorch weights (see the module docstring).
    backbone_options: keyword arguments of ``timm.create_model`` (none for a ResNet).
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be positive, got {num_classes}")
    kind = backbone_kind(backbone)
    if kind != "resnet":
        return _registry_deeplabv2(num_classes, backbone, weights, atrous_rates, msc_scales, normalization,
                                   caffe_resnet, backbone_options)
    check_resnet_options(backbone, backbone_options)
    src = resolve_weights(backbone, weights)
    from_deeplab = src.kind == "deeplab-pytorch"
    if normalization == "auto":
        normalization = "caffe" if from_deeplab else "imagenet"
    mean_std(normalization)
    if caffe_resnet is None:
        caffe_resnet = from_deeplab
    resnet = build_dilated_resnet(backbone, weights if src.kind == "torchvision" else None, output_stride=8)
    if caffe_resnet:
        _caffe_variant(resnet)
    if src.kind == "torchvision":
        log.info("DeepLabV2 backbone: %s (all %d ResNet tensors but fc)", weights, len(resnet.state_dict()) - 2)
    model = DeepLabV2(
        resnet_body(resnet),
        ASPPv2(resnet.fc.in_features, num_classes, atrous_rates),
        scales=msc_scales,
        input_norm=normalization,
        caffe_resnet=caffe_resnet,
    )
    if from_deeplab:
        report = load_deeplab_pytorch_weights(model, src.state, str(src.path))
        log.info("DeepLabV2 weights: %s", report.summary())
    return model


def _registry_deeplabv2(
    num_classes: int, backbone: str, weights: str | os.PathLike | None, atrous_rates: Sequence[int],
    msc_scales: Sequence[float], normalization: str, caffe_resnet: bool | None,
    backbone_options: Mapping[str, Any] | None,
) -> DeepLabV2:
    """:func:`build_deeplabv2` on a registry backbone: its last map at output stride 8 under the ASPP."""
    if backbone_kind(backbone) == "module":
        raise BackboneError(
            f"DeepLabV2 runs at output stride 8, which {backbone!r} cannot (a module:function backbone's contract "
            "fixes stride 16): use arch: deeplabv3 (with output_stride: 16)"
        )
    if caffe_resnet:
        raise BackboneError(f"caffe_resnet is a variant of the ResNet; {backbone!r} has none")
    normalization = "imagenet" if normalization == "auto" else normalization
    body = registry_body(backbone, weights, output_stride=8, options=backbone_options)
    return DeepLabV2(body, ASPPv2(body.out_channels[3], num_classes, atrous_rates), scales=msc_scales,
                     input_norm=normalization, caffe_resnet=False)


# ----------------------------------------------------------------------------- training


def param_groups(
    model: DeepLabV2, head_lr_mult: float = 10.0, head_bias_lr_mult: float | None = 20.0,
    head_bias_weight_decay: float | None = 0.0,
) -> list[dict]:
    """deeplab-pytorch's three groups (Caffe's lr_mult/decay_mult): trainable backbone parameters at
    lr x 1, ASPP weights at x ``head_lr_mult``, ASPP biases at x ``head_bias_lr_mult`` with weight
    decay ``head_bias_weight_decay`` (``None``: as the weights / the run's weight decay)."""
    weights = [c.weight for c in model.classifier.convs]
    biases = [c.bias for c in model.classifier.convs]
    bias_group: dict[str, Any] = {
        "params": biases,
        "lr_mult": head_lr_mult if head_bias_lr_mult is None else head_bias_lr_mult,
    }
    if head_bias_weight_decay is not None:
        bias_group["weight_decay"] = head_bias_weight_decay
    return [
        {"params": [p for p in model.backbone.parameters() if p.requires_grad], "lr_mult": 1.0},
        {"params": weights, "lr_mult": head_lr_mult},
        bias_group,
    ]
