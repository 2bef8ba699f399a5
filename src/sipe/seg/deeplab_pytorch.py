"""kazuto1011/deeplab-pytorch's DeepLabV2 files read into sipe's :class:`~sipe.seg.deeplabv2.DeepLabV2`.

Their keys are Caffe's names (``base.layer3.block1.reduce.conv.weight``), their first convolution takes
BGR; :func:`load_deeplab_pytorch_weights` maps the keys to torchvision's ResNet and the ASPP, flips the
first convolution to RGB, and reports what matched. :func:`resolve_weights` tells such a file from a
torchvision ResNet's (or a weights name). The network variant these files need (ceil-mode pool, Caffe
strides and rates) is built by :func:`sipe.seg.deeplabv2.build_deeplabv2`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sipe.models.weights import read_state_dict

__all__ = [
    "ResolvedWeights",
    "WeightLoadReport",
    "deeplab_pytorch_key",
    "is_deeplab_pytorch_state",
    "load_deeplab_pytorch_weights",
    "resolve_weights",
]

_PREFIXES = ("module.", "base.", "scale.")
_BLOCK_PARTS = {"reduce": "conv1", "conv3x3": "conv2", "increase": "conv3"}
_BN_TENSORS = r"(weight|bias|running_mean|running_var|num_batches_tracked)"
_RE_STEM = re.compile(rf"^layer1\.conv1\.(conv\.weight|bn\.{_BN_TENSORS})$")
_RE_BLOCK = re.compile(
    rf"^layer([2-5])\.block(\d+)\.(reduce|conv3x3|increase|shortcut|proj)\.(conv\.weight|bn\.{_BN_TENSORS})$"
)
_RE_ASPP = re.compile(r"^aspp\.(?:stages\.)?c(\d+)\.(weight|bias)$")


def deeplab_pytorch_key(key: str) -> str | None:
    """The sipe DeepLabV2 state-dict key of a deeplab-pytorch key, or ``None`` for keys with no
    counterpart. ``base.layer3.block1.reduce.conv.weight`` -> ``backbone.layer2.0.conv1.weight``;
    ``base.layer1.conv1.bn.running_mean`` -> ``backbone.bn1.running_mean``;
    ``base.aspp.c2.bias`` -> ``classifier.convs.2.bias``. The ``module.``/``base.``/``scale.``
    prefixes (DataParallel, MSC) and the older ``proj``/``aspp.stages`` names are accepted."""
    stripped = True
    while stripped:
        stripped = False
        for p in _PREFIXES:
            if key.startswith(p):
                key, stripped = key[len(p) :], True
    if m := _RE_STEM.match(key):
        part = m.group(1)
        return "backbone.conv1.weight" if part == "conv.weight" else "backbone.bn1." + part.split(".", 1)[1]
    if m := _RE_BLOCK.match(key):
        layer, block, unit, tensor = int(m.group(1)) - 1, int(m.group(2)) - 1, m.group(3), m.group(4)
        kind, name = tensor.split(".", 1)
        prefix = f"backbone.layer{layer}.{block}."
        if unit in ("shortcut", "proj"):
            return prefix + ("downsample.0." if kind == "conv" else "downsample.1.") + name
        conv = _BLOCK_PARTS[unit]
        return prefix + (conv if kind == "conv" else "bn" + conv[-1]) + "." + name
    if m := _RE_ASPP.match(key):
        return f"classifier.convs.{m.group(1)}.{m.group(2)}"
    return None


def is_deeplab_pytorch_state(state: Mapping[str, Any]) -> bool:
    """True when ``state`` holds deeplab-pytorch-layout ResNet keys (``...layer1.conv1.conv.weight``)."""
    return any(isinstance(k, str) and k.endswith("layer1.conv1.conv.weight") for k in state)


@dataclass
class WeightLoadReport:
    """What a deeplab-pytorch file gave a :class:`~sipe.seg.deeplabv2.DeepLabV2`: counts and the keys left out."""

    source: str
    file_tensors: int
    matched: int
    backbone_matched: int
    head_matched: int
    unmapped: list[str] = field(default_factory=list)  # file keys with no counterpart (e.g. a classifier fc)
    shape_mismatch: list[str] = field(default_factory=list)  # e.g. an ASPP trained for other classes
    not_in_file: list[str] = field(default_factory=list)  # network tensors left at their initialisation

    def summary(self) -> str:
        return (
            f"{self.source}: {self.matched} of {self.file_tensors} tensors loaded "
            f"({self.backbone_matched} backbone, {self.head_matched} ASPP); {len(self.unmapped)} without a "
            f"counterpart, {len(self.shape_mismatch)} of another shape (e.g. {self.shape_mismatch[:2]}), "
            f"{len(self.not_in_file)} network tensors not in the file"
        )


def load_deeplab_pytorch_weights(
    model: nn.Module, state: Mapping[str, torch.Tensor], source: str = "state dict"
) -> WeightLoadReport:
    """Copy a deeplab-pytorch-layout state dict into ``model``, a :class:`~sipe.seg.deeplabv2.DeepLabV2`
    (in place), and report the counts.

    The first convolution is flipped from the file's BGR to RGB. Every backbone tensor of the model
    must come from the file (a ResNet of another depth raises); ASPP tensors of another shape (a
    head trained for other classes, such as the COCO initialisation's) are skipped and reported.
    Raises ``ValueError`` naming ``source`` when nothing matches.
    """
    own = model.state_dict()
    report = WeightLoadReport(source=source, file_tensors=len(state), matched=0, backbone_matched=0, head_matched=0)
    new: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        target = deeplab_pytorch_key(key)
        if target is None or target not in own:
            report.unmapped.append(key)
            continue
        if target == "backbone.conv1.weight" and value.ndim == 4 and value.shape[1] == 3:
            value = value.flip(1)  # Caffe's BGR input channels -> RGB
        if own[target].shape != value.shape:
            report.shape_mismatch.append(key)
            continue
        new[target] = value
    if not new:
        raise ValueError(
            f"no tensor of {source} fits DeepLabV2 with this backbone in the deeplab-pytorch layout (expected keys "
            f"such as base.layer1.conv1.conv.weight, base.layer2.block1.reduce.conv.weight, base.aspp.c0.weight; "
            f"found e.g. {list(state)[:3]}); pass a deeplab-pytorch DeepLabV2 file or torchvision ResNet weights"
        )
    missing_backbone = sorted(
        k for k in own if k.startswith("backbone.") and k not in new and not k.endswith("num_batches_tracked")
    )
    if missing_backbone:
        raise ValueError(
            f"{source} lacks {len(missing_backbone)} backbone tensors of this network (e.g. {missing_backbone[:3]}); "
            "it holds a ResNet of another depth: set model.backbone to the file's (resnet101 for deeplab-pytorch's "
            "DeepLabV2-ResNet-101)"
        )
    extra_backbone = [k for k in report.unmapped if (deeplab_pytorch_key(k) or "").startswith("backbone.")]
    if extra_backbone:
        raise ValueError(
            f"{source} holds {len(extra_backbone)} backbone tensors this network lacks (e.g. {extra_backbone[:3]}); "
            "it holds a deeper ResNet: set model.backbone to the file's"
        )
    model.load_state_dict(new, strict=False)
    report.matched = len(new)
    report.backbone_matched = sum(k.startswith("backbone.") for k in new)
    report.head_matched = report.matched - report.backbone_matched
    report.not_in_file = sorted(k for k in own if k not in new and not k.endswith("num_batches_tracked"))
    return report




@dataclass
class ResolvedWeights:
    """Where a DeepLabV2's initial weights come from: ``kind`` is ``none``, ``torchvision`` (a weights
    name or a local ResNet file, loaded by :func:`sipe.models.weights.load_resnet_weights`) or
    ``deeplab-pytorch`` (a local file in that layout, ``state``)."""

    kind: str
    path: Path | None = None
    state: dict[str, torch.Tensor] | None = None


def resolve_weights(backbone: str, weights: str | os.PathLike | None) -> ResolvedWeights:
    """Classify ``weights`` (``None``, a torchvision weights name, or a local file of either layout)."""
    if weights is None:
        return ResolvedWeights("none")
    path = Path(str(weights))
    if path.is_file():
        state = read_state_dict(path)
        if is_deeplab_pytorch_state(state):
            return ResolvedWeights("deeplab-pytorch", path=path, state=state)
    return ResolvedWeights("torchvision", path=path if path.is_file() else None)
