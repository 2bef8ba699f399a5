"""Backbones for the SIPE head.

Any module works as a SIPE backbone if ``forward(x)`` returns four feature maps at strides
(4, 8, 16, 16) and it has an ``out_channels`` tuple with their channel counts.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from sipe.models.layers import FrozenBatchNorm2d, freeze_batchnorm
from sipe.models.weights import RESNETS, load_resnet_weights, torchvision_resnet

_DEPTH_NAMES = {d: n for n, d in RESNETS.items()}




class ResNetBackbone(nn.Module):
    """torchvision ResNet adapted as the official SIPE backbone.

    Args:
        depth: 10, 18, 34, 50 or 101 (10: torchvision's ResNet with one BasicBlock per stage).
        weights: ``None`` (random), a torchvision weights name such as ``"IMAGENET1K_V1"``
            (the weights the paper used) or a local state-dict file for offline machines.
        strides: strides of (stem conv, layer2, layer3, layer4); the official (2, 2, 2, 1) gives
            output stride 16 with dilation 1 everywhere.
        frozen_stages: the stem and layers ``1..frozen_stages`` run without gradient (official: 2,
            because the training forward detaches the output of layer2).
        freeze_bn: batch-norm statistics frozen (official); affine parameters train where the
            stage trains.

    ``forward(x)`` with x (N, 3, H, W) returns the outputs of layer1..layer4:
    (N, C1, H/4, W/4), (N, C2, H/8, W/8), (N, C3, H/16, W/16), (N, C4, H/16, W/16).
    """

    def __init__(
        self,
        depth: int = 50,
        weights: str | os.PathLike | None = None,
        strides: tuple[int, int, int, int] = (2, 2, 2, 1),
        frozen_stages: int = 2,
        freeze_bn: bool = True,
    ) -> None:
        super().__init__()
        if depth not in _DEPTH_NAMES:
            raise ValueError(f"unsupported ResNet depth {depth}; choose one of {sorted(_DEPTH_NAMES)}")
        net = torchvision_resnet(_DEPTH_NAMES[depth])
        load_resnet_weights(net, _DEPTH_NAMES[depth], weights)
        self.depth = depth
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self._set_strides(strides)
        if freeze_bn:
            freeze_batchnorm(self, train_affine=True)
        self.frozen_stages = frozen_stages
        # The stem never trains in the official code, even with frozen_stages=0.
        for module in self._frozen_modules(max(frozen_stages, 0)):
            for p in module.parameters():
                p.requires_grad_(False)
        widths = [layer[-1].conv3.out_channels if hasattr(layer[-1], "conv3") else layer[-1].conv2.out_channels
                  for layer in (self.layer1, self.layer2, self.layer3, self.layer4)]
        self.out_channels: tuple[int, int, int, int] = tuple(widths)  # type: ignore[assignment]

    def _set_strides(self, strides: tuple[int, int, int, int]) -> None:
        self.conv1.stride = (strides[0], strides[0])
        for layer, s in zip((self.layer2, self.layer3, self.layer4), strides[1:], strict=True):
            block = layer[0]
            # torchvision puts the stride in the 3x3 conv (ResNet v1.5), as the official code does.
            conv = block.conv2 if hasattr(block, "conv3") else block.conv1
            conv.stride = (s, s)
            if block.downsample is not None:
                block.downsample[0].stride = (s, s)

    def _frozen_modules(self, n: int) -> list[nn.Module]:
        mods: list[nn.Module] = [self.conv1, self.bn1]
        return mods + [self.layer1, self.layer2, self.layer3, self.layer4][:n]

    def fold_bn(self) -> ResNetBackbone:
        """Fold every batch norm into the convolution before it, in place, for inference.

        A :class:`FrozenBatchNorm2d` is a fixed per-channel affine map, so ``bn(conv(x))``
        equals one convolution with scaled weights and a bias (up to float rounding, ~1e-6
        relative). That saves one full read and write of every activation map: about a quarter of
        the float32 CPU time of the backbone. The folded backbone is for inference only (the
        batch-norm affine parameters no longer exist, so they cannot train) and its state dict
        has conv biases in place of batch-norm entries. Returns ``self``.

        On CPU, float32, without autograd or autocast, the folded backbone then runs each
        convolution with its ReLU (and the residual addition) fused into one oneDNN call
        (``torch.ops.mkldnn._convolution_pointwise``, the kernels ``torch.compile`` uses), which
        gives the same numbers with half the passes over memory; ``cpu_fused`` says whether this
        PyTorch build offers them. Everywhere else the folded modules run one by one.
        """
        if getattr(self, "bn_folded", False):
            return self
        pairs: list[tuple[nn.Module, str, str]] = [(self, "conv1", "bn1")]
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            for block in layer:
                pairs += [(block, f"conv{i}", f"bn{i}") for i in (1, 2, 3) if hasattr(block, f"conv{i}")]
                if block.downsample is not None:
                    pairs.append((block.downsample, "0", "1"))
        for parent, conv_name, bn_name in pairs:
            conv, bn = getattr(parent, conv_name), getattr(parent, bn_name)
            if not isinstance(bn, FrozenBatchNorm2d):
                raise ValueError(
                    f"cannot fold {type(bn).__name__} at {bn_name}: only batch norm with frozen statistics "
                    "(freeze_bn=True, the official setting) is a fixed affine map"
                )
            setattr(parent, conv_name, _folded_conv(conv, bn))
            setattr(parent, bn_name, nn.Identity())
        self.bn_folded = True
        self.cpu_fused = _FUSED_CONV is not None and torch.backends.mkldnn.is_available()
        return self

    def _use_fused(self, x: torch.Tensor) -> bool:
        return (
            getattr(self, "cpu_fused", False)
            and x.device.type == "cpu"
            and x.dtype == torch.float32
            and not torch.is_grad_enabled()
            and not _autocast_on_cpu()
        )

    def _forward_fused(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.maxpool(_conv_act(self.conv1, x))
        feats = []
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            for block in layer:
                identity = x if block.downsample is None else _conv_act(block.downsample[0], x, "none")
                if hasattr(block, "conv3"):  # bottleneck
                    y = _conv_act(block.conv2, _conv_act(block.conv1, x))
                    x = _conv_add_relu(block.conv3, y, identity)
                else:  # basic block
                    x = _conv_add_relu(block.conv2, _conv_act(block.conv1, x), identity)
            feats.append(x)
        return feats

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self._use_fused(x):
            return self._forward_fused(x)
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.frozen_stages < 1):
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        feats = []
        for i, layer in enumerate((self.layer1, self.layer2, self.layer3, self.layer4), start=1):
            with torch.set_grad_enabled(torch.is_grad_enabled() and i > self.frozen_stages):
                x = layer(x)
            feats.append(x)
        return feats


_FUSED_CONV = getattr(getattr(torch.ops, "mkldnn", None), "_convolution_pointwise", None)


def _autocast_on_cpu() -> bool:
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4 has no device argument
        return torch.is_autocast_cpu_enabled()


def _conv_args(conv: nn.Conv2d) -> tuple:
    return (conv.weight, conv.bias, list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups)


def _conv_act(conv: nn.Conv2d, x: torch.Tensor, act: str = "relu") -> torch.Tensor:
    """act(conv(x)) in one oneDNN call (``act`` "relu" or "none")."""
    return _FUSED_CONV(x, *_conv_args(conv), act, [None], "")


def _conv_add_relu(conv: nn.Conv2d, x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """relu(conv(x) + other) in one oneDNN call (the end of a residual block)."""
    return _FUSED_CONV.binary(x, other, *_conv_args(conv), "add", 1.0, "relu", [None], "")


@torch.no_grad()
def _folded_conv(conv: nn.Conv2d, bn: FrozenBatchNorm2d) -> nn.Conv2d:
    """One conv equal to ``bn(conv(x))`` (folded in float64, stored in the conv's dtype and memory format)."""
    w = conv.weight.double()
    scale = torch.rsqrt(bn.running_var.double() + bn.eps)
    shift = -bn.running_mean.double() * scale
    if bn.affine:
        scale, shift = scale * bn.weight.double(), shift * bn.weight.double() + bn.bias.double()
    if conv.bias is not None:
        shift = shift + conv.bias.double() * scale
    folded = nn.Conv2d(
        conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
        conv.groups, bias=True, padding_mode=conv.padding_mode, device=w.device, dtype=conv.weight.dtype,
    )
    # Multiplying keeps the weight's memory format (channels-last stays channels-last).
    folded.weight = nn.Parameter((w * scale.view(-1, 1, 1, 1)).to(conv.weight.dtype), requires_grad=False)
    folded.bias = nn.Parameter(shift.to(conv.weight.dtype), requires_grad=False)
    return folded


