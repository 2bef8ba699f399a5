"""Layers and module helpers shared by every network: batch norm with frozen statistics, the device of a model."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["FrozenBatchNorm2d", "freeze_batchnorm", "hold_batchnorm_statistics"]


class FrozenBatchNorm2d(nn.BatchNorm2d):
    """Batch norm that always normalises with its stored statistics, in train and eval mode alike.

    It keeps the ``BatchNorm2d`` state-dict layout, so weights load into and out of plain networks.
    Whether the affine parameters still train is set by :func:`freeze_batchnorm` (the official SIPE
    backbone trains them in stages 3-4; the segmentation networks freeze them too).
    """

    def __init__(self, num_features: int, eps: float = 1e-5, affine: bool = True, fixed: bool = False) -> None:
        super().__init__(num_features, eps=eps, affine=affine)
        # fixed: nothing in it learns, so it stays in eval mode when the engine switches the model to train.
        self.fixed = fixed
        if fixed:
            self.train(False)

    def train(self, mode: bool = True) -> FrozenBatchNorm2d:
        return super().train(mode and not self.fixed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)


def freeze_batchnorm(module: nn.Module, train_affine: bool = False) -> nn.Module:
    """Replace every ``BatchNorm2d`` inside ``module`` (in place) by a :class:`FrozenBatchNorm2d`.

    ``train_affine``: keep the affine parameters' ``requires_grad`` as it is (True) or switch it off.
    Returns ``module``.
    """
    for name, child in list(module.named_children()):
        if isinstance(child, nn.BatchNorm2d) and not isinstance(child, FrozenBatchNorm2d):
            fixed = not train_affine or not child.affine
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps, affine=child.affine, fixed=fixed)
            frozen.load_state_dict(child.state_dict())
            frozen.to(device=child.running_mean.device)
            if child.affine and fixed:
                frozen.weight.requires_grad_(False)
                frozen.bias.requires_grad_(False)
            setattr(module, name, frozen)
        else:
            freeze_batchnorm(child, train_affine)
    return module


def hold_batchnorm_statistics(module: nn.Module) -> nn.Module:
    """Put every batch norm inside ``module`` in eval mode (its statistics stay fixed, its affine
    parameters still train): the frozen batch norm of networks whose batch-norm layers cannot be
    swapped for :class:`FrozenBatchNorm2d` (timm's ``BatchNormAct2d`` carries the activation).
    Call it again after every ``module.train()``. Returns ``module``."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
    return module


def model_device(model: nn.Module) -> torch.device:
    """The device of the first parameter or buffer of ``model`` (CPU for a module without any)."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")
