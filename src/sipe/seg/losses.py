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

__all__ = ["IGNORE", "StepFn", "frequency_weights", "make_step_fn", "make_msc_step_fn", "msc_loss", "seg_loss"]

IGNORE = 255

StepFn = Callable[[nn.Module, dict[str, torch.Tensor]], dict[str, torch.Tensor]]


def seg_loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy over the non-ignored pixels; 0 (not NaN) for a batch without any.

    logits (N, K, H, W), target (N, H, W) int64 with 255 = ignore; ``weight`` (K,): each class's pixels
    count that much (:func:`frequency_weights`). The sum is divided by the number of labelled pixels, not
    by their weights, so that weights whose pixel-weighted mean is 1 leave the loss's scale, and so the
    learning rate's meaning, as it was.
    """
    if weight is not None:
        weight = weight.to(device=logits.device, dtype=torch.float32)
    total = F.cross_entropy(logits.float(), target, weight=weight, ignore_index=IGNORE, reduction="sum")
    return total / (target != IGNORE).sum().clamp_min(1)


def frequency_weights(counts: Any, power: float = 0.5) -> torch.Tensor:
    """(K,) float32 class weights ``share_c ** -power`` from the classes' pixel counts (K,) in the training
    labels, scaled so that their mean over the labelled pixels is 1 (``sum_c share_c w_c = 1``).

    ``power`` 0.5 (inverse square root of the frequency) lifts a class of 1 % of the pixels 7x above one of
    50 %, rather than the 50x of the plain inverse, which would paint a rare class wherever in doubt. A
    class without pixels has nothing to weigh: weight 1.
    """
    counts = torch.as_tensor(counts, dtype=torch.float64)
    if counts.dim() != 1 or (counts < 0).any() or counts.sum() <= 0:
        raise ValueError(f"class pixel counts must be a non-negative (K,) vector with some pixels, got {counts}")
    share = counts / counts.sum()
    present = share > 0
    w = torch.ones_like(share)
    w[present] = share[present].pow(-power)
    w[present] /= (share[present] * w[present]).sum()
    return w.float()


def make_step_fn(aux_weight: float = 0.5, class_weights: torch.Tensor | None = None) -> StepFn:
    """DeepLabV3's ``step_fn``: forward, cross-entropy (plus the weighted auxiliary loss); ``class_weights``
    (K,) weigh each class's pixels in both (:func:`seg_loss`)."""

    def step(model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = model(batch["image"])
        ce = seg_loss(out["out"], batch["label"], class_weights)
        result = {"loss": ce, "ce": ce}
        if out.get("aux") is not None:
            aux = seg_loss(out["aux"], batch["label"], class_weights)
            result["aux"] = aux
            result["loss"] = ce + aux_weight * aux
        return result

    return step


def msc_loss(out: Mapping[str, Any], target: torch.Tensor,
             class_weights: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """deeplab-pytorch's MSC loss: the sum of the cross-entropies of every scale's logits and of the
    fused logits, each against the label map resized to its size by nearest neighbour (255 = ignore).

    out: a training-mode :class:`sipe.seg.deeplabv2.DeepLabV2` output (``"out"``, ``"pyramid"``,
    ``"scales"``); target (N, H, W) int64; ``class_weights`` (K,) as :func:`seg_loss`.
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
        terms[name] = seg_loss(logits, t, class_weights)
    total = sum(terms.values())
    return {"loss": total, **terms}


def make_msc_step_fn(class_weights: torch.Tensor | None = None) -> StepFn:
    """DeepLabV2's ``step_fn``: forward (train mode) and :func:`msc_loss`."""

    def step(model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return msc_loss(model(batch["image"]), batch["label"], class_weights)

    return step
