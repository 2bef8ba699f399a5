"""SIPE losses, returned separately so both can be logged."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def classification_loss(score: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Multi-label soft-margin loss: score (N, K-1) (trailing singleton dims allowed), labels (N, K-1)."""
    score = score.reshape(score.shape[0], -1)
    return F.multilabel_soft_margin_loss(score, labels.reshape(score.shape).to(score.dtype))


def gsc_loss(cam: torch.Tensor, is_cam: torch.Tensor) -> torch.Tensor:
    """General-specific consistency: mean |cam - is_cam / (max_hw is_cam + 1e-5)|, both (N, K, h, w)."""
    norm = is_cam / (is_cam.amax(dim=(-2, -1), keepdim=True) + 1e-5)
    return (cam - norm).abs().mean()
