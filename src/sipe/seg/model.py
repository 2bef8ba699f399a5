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
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision
from torch import nn
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.segmentation.deeplabv3 import DeepLabHead, DeepLabV3
from torchvision.models.segmentation.fcn import FCNHead

from sipe.seg.norm import mean_std

log = logging.getLogger(__name__)

BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101")
_WEIGHTS_ENUM = {
    "resnet18": "ResNet18_Weights",
    "resnet34": "ResNet34_Weights",
    "resnet50": "ResNet50_Weights",
    "resnet101": "ResNet101_Weights",
}


@dataclass
class SegModelSpec:
    """Everything needed to rebuild a segmentation network from its state dict."""

    num_classes: int
    backbone: str = "resnet50"
    output_stride: int = 8
    aux: bool = False
    class_names: list[str] = field(default_factory=list)
    arch: str = "deeplabv3"  # deeplabv3 | deeplabv2 (sipe.seg.deeplabv2); older checkpoints lack it
    normalization: str = "imagenet"  # input convention, sipe.seg.norm
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


class FrozenBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d that always uses its stored statistics and never learns.

    Unlike ``torchvision.ops.FrozenBatchNorm2d`` it keeps the ``BatchNorm2d`` state-dict layout, so a
    checkpoint trained with frozen batch norm loads into a plain network and vice versa.
    """

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__(num_features, eps=eps)
        self.weight.requires_grad_(False)
        self.bias.requires_grad_(False)
        self.training = False

    def train(self, mode: bool = True) -> FrozenBatchNorm2d:
        # The engine switches the whole model to train mode every epoch; the statistics must stay fixed.
        return super().train(False)


def freeze_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every ``BatchNorm2d`` inside ``module`` (in place) by a :class:`FrozenBatchNorm2d`.

    For small per-GPU batches, where batch statistics are too noisy to train on. Returns ``module``.
    """
    for name, child in list(module.named_children()):
        if isinstance(child, nn.BatchNorm2d) and not isinstance(child, FrozenBatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
            frozen.load_state_dict(child.state_dict())
            frozen.to(child.weight.device)
            setattr(module, name, frozen)
        else:
            freeze_batchnorm(child)
    return module


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


def _resolve_weights(backbone: str, weights_backbone: str | os.PathLike | None):
    """Return ``(torchvision weights enum or None, local path or None)``."""
    if weights_backbone is None:
        return None, None
    text = str(weights_backbone)
    enum_name = _WEIGHTS_ENUM[backbone]
    if Path(text).is_file():
        return None, Path(text)
    name = text.split(".", 1)[1] if text.startswith(enum_name + ".") else text
    enum = getattr(torchvision.models, enum_name)
    if name in enum.__members__:
        return enum[name], None
    if os.sep in text or text.endswith((".pth", ".pt", ".bin")):
        raise FileNotFoundError(f"backbone weights file {text} does not exist; pass an existing file path")
    raise ValueError(
        f"unknown backbone weights {text!r} for {backbone}: pass a local state-dict file or one of "
        f"{', '.join(enum.__members__)} ({enum_name})"
    )


def _download_state_dict(weights) -> dict[str, torch.Tensor]:
    try:
        return weights.get_state_dict(progress=True, check_hash=True)
    except Exception as e:  # network or cache failure; re-raised with the way out
        hub_dir = Path(torch.hub.get_dir()) / "checkpoints"
        raise RuntimeError(
            f"could not fetch the pretrained backbone weights {weights} from {weights.url} ({e}). "
            f"This machine may be offline: download that file elsewhere and pass its local path as "
            f"weights_backbone=/path/to/{Path(weights.url).name} (or put it in {hub_dir}). "
            f"Pass weights_backbone=None to train from random initialisation on purpose."
        ) from e


def load_backbone_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a ResNet state dict from ``path``: a plain state dict, or a checkpoint dict holding one
    under ``"model"``/``"state_dict"``/``"net"``. The ResNet may sit under any key prefix, such as
    ``module.`` or the ``encoder.`` of a SIPE checkpoint, whose other weights are then dropped."""
    path = Path(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"cannot read backbone weights from {path}: {e}") from e
    for key in ("model", "state_dict", "net"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors")
    sd = dict(obj)
    # Find where a ResNet sits in the dict: at the top, or under a prefix such as "module." or the
    # "encoder." of a SIPE network (whose head weights are then left out). The shortest prefix wins.
    prefixes = sorted(
        (k[: -len("conv1.weight")] for k in sd if k.endswith("conv1.weight")),
        key=len,
    )
    for prefix in prefixes:
        if prefix + "layer1.0.conv1.weight" in sd and prefix + "bn1.weight" in sd:
            return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
    return sd


def _load_local_backbone(resnet: nn.Module, path: Path) -> None:
    sd = {k: v for k, v in load_backbone_state_dict(path).items() if not k.startswith("fc.")}
    own = {k for k in resnet.state_dict() if not k.startswith("fc.")}
    missing = sorted(own - sd.keys())
    unexpected = sorted(sd.keys() - own)
    if missing or unexpected:
        raise ValueError(
            f"backbone weights in {path} do not fit a torchvision {type(resnet).__name__}: "
            f"{len(missing)} missing keys (e.g. {missing[:3]}), {len(unexpected)} unexpected keys "
            f"(e.g. {unexpected[:3]}); pass a torchvision ResNet state dict of the same depth"
        )
    resnet.load_state_dict(sd, strict=False)


def build_deeplab(
    num_classes: int,
    backbone: str = "resnet50",
    weights_backbone: str | os.PathLike | None = None,
    aux: bool = False,
    output_stride: int = 8,
) -> DeepLabV3:
    """Build a torchvision DeepLabV3 for ``num_classes`` classes (background included).

    backbone: ``resnet50`` / ``resnet101`` (torchvision's ``deeplabv3_resnet50/101`` layout) or the
        small ``resnet18`` / ``resnet34``.
    weights_backbone: ``None`` (random initialisation), a torchvision weights name such as
        ``"IMAGENET1K_V1"`` (downloaded, or read from the torch hub cache; raises if neither works),
        or a local file holding a ResNet state dict.
    aux: add the FCN auxiliary head on ``layer3`` (returned as ``"aux"``).
    output_stride: 8 (dilated ``layer3`` and ``layer4``, torchvision's choice) or 16 (dilated ``layer4``).
    """
    if backbone not in BACKBONES:
        raise ValueError(f"unknown backbone {backbone!r}; choose one of {', '.join(BACKBONES)}")
    if output_stride not in (8, 16):
        raise ValueError(f"output_stride must be 8 or 16, got {output_stride}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be positive, got {num_classes}")
    enum, local = _resolve_weights(backbone, weights_backbone)
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
    if enum is not None:
        resnet.load_state_dict(_download_state_dict(enum))
    elif local is not None:
        _load_local_backbone(resnet, local)

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


def is_seg_checkpoint(ckpt: Mapping[str, Any]) -> bool:
    """True for a loaded checkpoint dict written by ``sipe seg train`` (it carries a model spec)."""
    meta = ckpt.get("meta")
    return isinstance(meta, Mapping) and isinstance(meta.get("model_spec"), Mapping)


def load_seg_checkpoint(
    path: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> tuple[nn.Module, SegModelSpec]:
    """Rebuild a trained segmentation network from a checkpoint written by ``train_seg``.

    The checkpoint is a dict with ``"model"`` (state dict) and ``"meta"["model_spec"]``
    (``num_classes``, ``backbone``, ``output_stride``, ``aux``, ``class_names``).
    Returns the network in eval mode and its spec.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist; pass a checkpoint written by 'sipe seg train'")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # re-raised with the file named
        raise ValueError(f"cannot read checkpoint {path}: {e}. Is the file complete?") from e
    return seg_model_from_checkpoint(ckpt, str(path))


def seg_model_from_checkpoint(ckpt: Mapping[str, Any], source: str = "checkpoint") -> tuple[nn.Module, SegModelSpec]:
    """:func:`load_seg_checkpoint` for a checkpoint dict already loaded (``source`` names it in errors)."""
    if not isinstance(ckpt, Mapping) or "model" not in ckpt or not is_seg_checkpoint(ckpt):
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


def normalize_images(images: torch.Tensor, norm: str = "imagenet") -> torch.Tensor:
    """(N, H, W, 3) uint8 or float RGB in [0, 255] -> (N, 3, H, W) float32 normalised by the
    convention ``norm`` (:mod:`sipe.seg.norm`: ``imagenet`` or ``caffe``)."""
    mean_, std_ = mean_std(norm)
    x = images.permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(mean_, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(std_, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def image_to_tensor(image: np.ndarray, device: torch.device | str = "cpu", norm: str = "imagenet") -> torch.Tensor:
    """(H, W, 3) uint8 RGB -> (1, 3, H, W) float32 on ``device``, normalised by the convention ``norm``."""
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB image, got shape {image.shape}")
    t = torch.tensor(image, device=device)  # a copy: the array may be read-only (e.g. from PIL)
    return normalize_images(t.unsqueeze(0), norm)
