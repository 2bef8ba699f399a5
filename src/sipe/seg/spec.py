"""The description of a segmentation network that a checkpoint carries (``meta["model_spec"]``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["SegModelSpec"]


@dataclass
class SegModelSpec:
    """Everything needed to rebuild a segmentation network from its state dict
    (:func:`sipe.seg.architectures.build_from_spec`)."""

    num_classes: int
    backbone: str = "resnet50"
    output_stride: int = 8
    aux: bool = False
    class_names: list[str] = field(default_factory=list)
    arch: str = "deeplabv3"  # a name of sipe.seg.architectures.ARCHITECTURES; older checkpoints lack it
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
