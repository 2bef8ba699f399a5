"""What every segmentation network offers its callers: its logits, its input convention, and the
network on raw pixels (:class:`NormalizedSegModel`, the ONNX export's graph)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from sipe.data.transforms import mean_std, normalize_tensor

__all__ = ["NormalizedSegModel", "input_normalization", "seg_logits"]


def seg_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(N, K, H, W) logits of a segmentation network: the ``"out"`` of a torchvision model, or its output."""
    out = model(x)
    return out["out"] if isinstance(out, Mapping) else out


def input_normalization(model: nn.Module) -> str:
    """The input convention a network expects (:data:`sipe.data.transforms.NORMALIZATIONS`): its
    ``input_norm`` attribute, ``imagenet`` when it has none."""
    return str(getattr(model, "input_norm", "imagenet"))


class NormalizedSegModel(nn.Module):
    """(N, 3, H, W) float RGB in [0, 255] -> (N, K, H, W) logits: normalisation + ``model(x)["out"]``.

    The normalisation is the network's own convention (:func:`input_normalization`), applied by
    :func:`sipe.data.transforms.normalize_tensor`.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.norm = input_normalization(model)
        mean_std(self.norm)  # an unknown convention fails here, not in the exporter

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return seg_logits(self.model, normalize_tensor(image, self.norm))
