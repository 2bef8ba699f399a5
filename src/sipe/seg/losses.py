"""The losses of the segmentation stage and the engine step functions built on them.

Every loss takes logits (N, K, h, w) and an int64 label map (N, H, W) with 255 = ignore; the step
functions (``step(model, batch) -> {"loss": ..., ...}``) are what :func:`sipe.engine.fit` runs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["IGNORE", "StepFn", "make_step_fn", "msc_loss", "msc_step_fn", "seg_loss"]

IGNORE = 255

StepFn = Callable[[nn.Module, dict[str, torch.Tensor]], dict[str, torch.Tensor]]


def seg_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the non-ignored pixels; 0 (not NaN) for a batch without any.

    logits (N, K, H, W), target (N, H, W) int64 with 255 = ignore.
    """
    total = F.cross_entropy(logits.float(), target, ignore_index=IGNORE, reduction="sum")
    return total / (target != IGNORE).sum().clamp_min(1)


def make_step_fn(aux_weight: float = 0.5) -> StepFn:
    """DeepLabV3's ``step_fn``: forward, cross-entropy (plus the weighted auxiliary loss)."""

    def step(model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = model(batch["image"])
        ce = seg_loss(out["out"], batch["label"])
        result = {"loss": ce, "ce": ce}
        if out.get("aux") is not None:
            aux = seg_loss(out["aux"], batch["label"])
            result["aux"] = aux
            result["loss"] = ce + aux_weight * aux
        return result

    return step


def msc_loss(out: Mapping[str, Any], target: torch.Tensor) -> dict[str, torch.Tensor]:
    """deeplab-pytorch's MSC loss: the sum of the cross-entropies of every scale's logits and of the
    fused logits, each against the label map resized to its size by nearest neighbour (255 = ignore).

    out: a training-mode :class:`sipe.seg.deeplabv2.DeepLabV2` output (``"out"``, ``"pyramid"``,
    ``"scales"``); target (N, H, W) int64.
    Returns ``{"loss": sum, "ce_fused": ..., "ce_s1.0": ..., ...}``.
    """
    terms: dict[str, torch.Tensor] = {}
    labelled = [(f"ce_s{s:g}", logits) for s, logits in zip(out["scales"], out["pyramid"], strict=True)]
    labelled.append(("ce_fused", out["out"]))
    for name, logits in labelled:
        size = tuple(logits.shape[-2:])
        t = target
        if tuple(target.shape[-2:]) != size:
            # "nearest-exact" samples pixel centres like PIL's NEAREST that deeplab-pytorch uses;
            # plain "nearest" shifts the label map by up to a pixel.
            t = F.interpolate(target[:, None].float(), size=size, mode="nearest-exact")[:, 0].long()
        terms[name] = seg_loss(logits, t)
    total = sum(terms.values())
    return {"loss": total, **terms}


def msc_step_fn(model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """DeepLabV2's ``step_fn``: forward (train mode) and :func:`msc_loss`."""
    return msc_loss(model(batch["image"]), batch["label"])
