"""Model builders."""

from __future__ import annotations

import os

from sipe.models.backbone import ResNetBackbone
from sipe.models.sipe_net import SIPENet

_RESNETS = {"resnet18": 18, "resnet34": 34, "resnet50": 50, "resnet101": 101}


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
    if backbone not in _RESNETS:
        raise ValueError(f"unknown backbone {backbone!r}; choose one of {sorted(_RESNETS)}")
    return SIPENet(ResNetBackbone(_RESNETS[backbone], weights=weights), num_classes, **kwargs)


__all__ = ["ResNetBackbone", "SIPENet", "build_sipe"]
