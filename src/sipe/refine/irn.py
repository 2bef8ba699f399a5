"""IRN (Ahn et al., CVPR 2019) as SIPE uses it: a frozen backbone with a class-boundary branch and
a displacement branch at stride 4, and the affinity / displacement losses.

The backbone is frozen and kept in eval mode, its outputs detached; only the two branches train.
The official one is a ResNet (strides 2, 2, 2, 1: stem and layer1 at stride 4, layer2 at 8,
layer3-4 at 16) whose stem map feeds the first unit of each branch. Any other registry backbone
(timm, ``module:function``) has no named stem: its first map (stride 4) stands in for it (see
:class:`IRN`).
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from sipe.config.irn import IRN_STRIDE
from sipe.engine.distributed import rank_and_world
from sipe.refine.affinity import edge_to_affinity, pair_displacement, pair_paths

STRIDE = IRN_STRIDE  # the branches' output stride
TRAIN_RADIUS = 10
_STEM = ("conv1", "bn1", "relu", "maxpool")  # a ResNet's stem, read by the first unit of each branch
_STAGES = ("layer1", "layer2", "layer3", "layer4")


def _unit(cin: int, cout: int, groups: int, up: int = 1) -> nn.Sequential:
    """1x1 conv, GroupNorm, [bilinear x up], ReLU: the official order (upsampling before ReLU)."""
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 1, bias=False), nn.GroupNorm(groups, cout)]
    if up > 1:
        layers.append(nn.Upsample(scale_factor=up, mode="bilinear", align_corners=False))
    layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class IRN(nn.Module):
    """Boundary and displacement branches on a frozen backbone.

    Args:
        backbone: a module exposing torchvision's ``conv1, bn1, relu, maxpool, layer1..layer4``
            and ``out_channels`` (e.g. :class:`sipe.models.backbone.ResNetBackbone` with strides
            (2, 2, 2, 1)), or any module obeying the registry contract (``forward(x)`` gives four
            maps at strides 4, 8, 16, 16; ``out_channels``); built as ResNet-50 with ``weights``
            when ``None``.
        weights: backbone weights when it is built here (torchvision name, local file or None).

    The branches read five maps: the stem (stride 4) and the four stages. A ResNet's stem is
    ``maxpool(relu(bn1(conv1(x))))``, as the official code. A backbone without those modules has no
    named stem, so the rule is: its first map (stride 4, ``out_channels[0]`` wide) is read twice, by
    ``edge1``/``dp1`` in place of the stem and by ``edge2``/``dp2`` as the first stage; the other
    units read maps 2-4 as with a ResNet. Layer shapes, losses and training are otherwise the same.

    ``forward(x)`` with x (N, 3, H, W), H and W multiples of 16, returns the boundary logits
    (N, 1, H/4, W/4) and the displacement field (N, 2, H/4, W/4) (``mean_shift`` subtracted in
    eval mode, as the official ``MeanShift``).

    ``displacement=False`` builds the boundary branch alone. The displacement branch serves IRN's instance
    masks, which SIPE does not make; with the backbone frozen, the two branches share no parameter and their
    losses are summed, so training it leaves the boundary branch, and the pseudo labels, unchanged to the bit
    (``tests/test_refine_irn.py``) while costing most of the heads' arithmetic and the mean-shift pass.
    """

    def __init__(self, backbone: nn.Module | None = None, *, weights: str | os.PathLike | None = None,
                 displacement: bool = True) -> None:
        super().__init__()
        if backbone is None:
            from sipe.models.backbone import ResNetBackbone

            backbone = ResNetBackbone(depth=50, weights=weights, strides=(2, 2, 2, 1), frozen_stages=4,
                                      freeze_bn=True)
        self.backbone = backbone
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        # A torchvision-style ResNet gives its stem map; any other backbone its first map instead.
        self.resnet_stem = all(hasattr(backbone, a) for a in _STEM + _STAGES)
        c1, c2, c3, c4 = backbone.out_channels
        c0 = backbone.conv1.out_channels if self.resnet_stem else c1
        self.edge1 = _unit(c0, 32, 4)
        self.edge2 = _unit(c1, 32, 4)
        self.edge3 = _unit(c2, 32, 4, up=2)
        self.edge4 = _unit(c3, 32, 4, up=4)
        self.edge5 = _unit(c4, 32, 4, up=4)
        self.edge_out = nn.Conv2d(160, 1, 1, bias=True)
        # Built after the boundary branch, so that its initial weights do not depend on this choice.
        self.displacement = displacement
        if not displacement:
            return
        self.dp1 = _unit(c0, 64, 8)
        self.dp2 = _unit(c1, 128, 16)
        self.dp3 = _unit(c2, 256, 16)
        self.dp4 = _unit(c3, 256, 16, up=2)
        self.dp5 = _unit(c4, 256, 16, up=2)
        self.dp6 = _unit(768, 256, 16, up=2)
        self.dp7 = nn.Sequential(_unit(448, 256, 16), nn.Conv2d(256, 2, 1, bias=False))
        # Mean displacement over the training images, estimated after training (official MeanShift).
        self.register_buffer("mean_shift", torch.zeros(2))

    def edge_modules(self) -> list[nn.Module]:
        return [self.edge1, self.edge2, self.edge3, self.edge4, self.edge5, self.edge_out]

    def dp_modules(self) -> list[nn.Module]:
        if not self.displacement:
            return []
        return [self.dp1, self.dp2, self.dp3, self.dp4, self.dp5, self.dp6, self.dp7]

    def param_groups(self, dp_lr_mult: float = 10.0) -> list[dict[str, Any]]:
        """Boundary branch at the base lr, displacement branch at ``dp_lr_mult`` x (official 10)."""
        edge = [p for m in self.edge_modules() for p in m.parameters()]
        dp = [p for m in self.dp_modules() for p in m.parameters()]
        groups = [{"params": edge, "lr_mult": 1.0}]
        return groups + [{"params": dp, "lr_mult": dp_lr_mult}] if dp else groups

    def train(self, mode: bool = True) -> IRN:
        super().train(mode)
        self.backbone.eval()  # frozen statistics and no dropout-like behaviour, as the official code
        return self

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The five detached backbone maps: stem (s4), layer1 (s4), layer2 (s8), layer3-4 (s16); for a
        backbone without a ResNet stem, its first map twice and then its other three."""
        b = self.backbone
        if not self.resnet_stem:
            with torch.no_grad():
                x1, x2, x3, x4 = b(x)
            return [x1, x1, x2, x3, x4]
        with torch.no_grad():
            x0 = b.maxpool(b.relu(b.bn1(b.conv1(x))))
            x1 = b.layer1(x0)
            x2 = b.layer2(x1)
            x3 = b.layer3(x2)
            x4 = b.layer4(x3)
        return [x0, x1, x2, x3, x4]

    def _edge(self, x0: torch.Tensor, x1: torch.Tensor, x2: torch.Tensor, x3: torch.Tensor,
              x4: torch.Tensor) -> torch.Tensor:
        h, w = x1.shape[-2:]
        e = [self.edge1(x0), self.edge2(x1)] + [m(f)[..., :h, :w] for m, f in
                                               ((self.edge3, x2), (self.edge4, x3), (self.edge5, x4))]
        return self.edge_out(torch.cat(e, dim=1))

    def boundary(self, x: torch.Tensor) -> torch.Tensor:
        """Boundary logits (N, 1, H/4, W/4) of x (N, 3, H, W) without the displacement branch: all that
        semantic pseudo labels read, at a fraction of ``forward``'s cost."""
        return self._edge(*self.features(x))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Boundary logits and displacement field (``None`` for an IRN built without the branch)."""
        x0, x1, x2, x3, x4 = self.features(x)
        h, w = x1.shape[-2:]
        edge = self._edge(x0, x1, x2, x3, x4)
        if not self.displacement:
            return edge, None
        d3 = self.dp3(x2)
        h8, w8 = d3.shape[-2:]
        deep = torch.cat([d3, self.dp4(x3)[..., :h8, :w8], self.dp5(x4)[..., :h8, :w8]], dim=1)
        up = self.dp6(deep)[..., :h, :w]
        disp = self.dp7(torch.cat([self.dp1(x0), self.dp2(x1), up], dim=1))
        if not self.training:
            disp = disp - self.mean_shift.view(1, 2, 1, 1).to(disp.dtype)
        return edge, disp


def _global_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over all DDP ranks (identity outside torch.distributed)."""
    if rank_and_world()[1] > 1:
        t = t.clone()
        dist.all_reduce(t)
    return t


def irn_losses(
    edge_logits: torch.Tensor,
    disp: torch.Tensor | None,
    bg_pos: torch.Tensor,
    fg_pos: torch.Tensor,
    neg: torch.Tensor,
    radius: int = TRAIN_RADIUS,
) -> dict[str, torch.Tensor]:
    """The IRN losses of one batch, normalised over the GLOBAL batch under DDP.

    Per pair: positive ``-log(aff + 1e-5)`` averaged separately over background- and
    foreground-positive pairs (``pos = bg/2 + fg/2``), negative ``-log(1 + 1e-5 - aff)``,
    displacement L1 to the pair offset (foreground pairs) or to zero (background pairs), each
    divided by 2 x its pair count; ``loss = (pos + neg)/2 + (dp_fg + dp_bg)/2``.

    The official code divides by the pair counts of the whole batch (DataParallel gathers it).
    Averaging per-rank means would weight ranks with few pairs too much, so under DDP every rank
    divides its sums by the all-reduced counts and multiplies by the world size, which DDP's
    gradient averaging cancels: the gradient is exactly the single-process one. The returned
    values are the global batch's (the backward part carries the local gradient).

    Args:
        edge_logits: (B, 1, h, w) boundary logits; disp: (B, 2, h, w) displacements, or ``None`` (an IRN
            without the displacement branch: its two terms are 0).
        bg_pos, fg_pos, neg: (B, D, h - rf, w - 2 rf) pair labels from :func:`affinity_labels`.

    Returns:
        ``loss`` plus detached ``pos_bg``, ``pos_fg``, ``neg`` and, with ``disp``, ``dp_fg``, ``dp_bg``.
    """
    aff = edge_to_affinity(torch.sigmoid(edge_logits.float())[:, 0], radius)
    if aff.shape != bg_pos.shape:
        raise ValueError(f"pair labels {tuple(bg_pos.shape)} do not match the pair grid {tuple(aff.shape)}")
    pos_term = -torch.log(aff + 1e-5)
    neg_term = -torch.log(1.0 + 1e-5 - aff)
    if disp is None:
        dp_fg_sum = dp_bg_sum = pos_term.new_zeros(())
    else:
        pd = pair_displacement(disp.float(), radius)  # (B, 2, D, hc, wc)
        target = torch.as_tensor(pair_paths(radius).offsets, dtype=pd.dtype, device=pd.device).t()
        dp_fg_sum = ((pd - target[None, :, :, None, None]).abs() * fg_pos.unsqueeze(1)).sum()
        dp_bg_sum = (pd.abs() * bg_pos.unsqueeze(1)).sum()

    local = torch.stack([
        (bg_pos * pos_term).sum(),
        (fg_pos * pos_term).sum(),
        (neg * neg_term).sum(),
        dp_fg_sum,
        dp_bg_sum,
    ])
    counts = _global_sum(torch.stack([bg_pos.sum(), fg_pos.sum(), neg.sum()]).float())
    n_bg, n_fg, n_neg = counts.unbind()
    denom = torch.stack([n_bg + 1e-5, n_fg + 1e-5, n_neg + 1e-5, 2 * n_fg + 1e-5, 2 * n_bg + 1e-5])
    weights = torch.tensor([0.25, 0.25, 0.5, 0.5, 0.5], dtype=local.dtype, device=local.device)
    world = rank_and_world()[1]
    terms = local / denom  # this rank's share of each global mean
    loss_local = world * (terms * weights).sum()
    global_terms = _global_sum(terms.detach())
    loss = loss_local + ((global_terms * weights).sum() - loss_local.detach())
    pos_bg, pos_fg, neg_l, dp_fg, dp_bg = global_terms.unbind()
    out = {"loss": loss, "pos_bg": pos_bg, "pos_fg": pos_fg, "neg": neg_l}
    return out if disp is None else {**out, "dp_fg": dp_fg, "dp_bg": dp_bg}
