"""The configuration of IRN training (``sipe refine train-irn``, the demo's ``irn`` section); torch-free,
so that config errors are reported before torch loads."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sipe.config.common import backbone_kind, check_backbone_weights
from sipe.config.engine import TrainConfig

__all__ = ["IRN_STRIDE", "IRNConfig", "IRNEngineConfig"]

IRN_STRIDE = 4  # the output stride of IRN's branches (sipe.refine.irn.STRIDE)


@dataclass
class IRNEngineConfig(TrainConfig):
    """:class:`sipe.engine.TrainConfig` with the official IRN recipe as its defaults (``IRNConfig.engine``)."""

    epochs: int = 3
    batch_size: int = 32
    lr: float = 0.1
    weight_decay: float = 1e-4
    momentum: float = 1e-4  # the official optimiser quirk, as in SIPE training
    clip_grad_norm: float | None = None  # the official IRN loop does not clip (SIPE's does)
    seed: int = 15


@dataclass
class IRNConfig:
    """IRN model and training settings (defaults: the official recipe)."""

    # Any registry name (resnet18..101, timm:<model>, module:function), frozen. A ResNet's stem map feeds
    # the branches' first units (edge1, dp1) as in the official code; a backbone without a ResNet stem
    # feeds its first map (stride 4) to both edge1/dp1 and edge2/dp2 (sipe.refine.irn.IRN).
    backbone: str = "resnet50"
    # torchvision name (ResNets), a local .pth/.safetensors state-dict file, timm (timm's own), or null
    weights: str | None = "IMAGENET1K_V1"
    backbone_options: dict[str, Any] | None = None  # keyword arguments of timm.create_model / your factory
    crop_size: int = 512
    scale_range: tuple[float, float] = (0.5, 1.5)
    flip: bool = True
    radius: int = 10  # pair radius of the affinity labels at stride 4
    # Train IRN's displacement branch too (the official code does). SIPE's pseudo labels read the boundary
    # branch alone, which the displacement branch does not touch (frozen backbone, separate losses), so
    # leaving it out changes no pseudo label and saves most of IRN's head arithmetic and the mean-shift pass.
    displacement: bool = False
    dp_lr_mult: float = 10.0  # displacement branch lr = 10 x boundary branch lr
    mean_batch_size: int = 8  # images per forward (per rank) when estimating the mean shift
    engine: IRNEngineConfig = field(default_factory=IRNEngineConfig)

    def __post_init__(self) -> None:
        # At config time, before any model or data is loaded (backbone_kind imports nothing).
        check_backbone_weights(self.backbone, self.weights, "weights")
        if backbone_kind(self.backbone) == "resnet" and self.backbone_options:
            raise ValueError(f"backbone_options: {self.backbone} takes none, got {sorted(self.backbone_options)}")
        grid = self.crop_size // IRN_STRIDE
        if self.crop_size % 16 or grid <= 2 * (self.radius - 1):
            smallest = 16 * (8 * (self.radius - 1) // 16 + 1)
            raise ValueError(
                f"crop_size {self.crop_size} must be a multiple of 16 whose stride-4 grid ({grid}) is wider "
                f"than 2 x (radius - 1) = {2 * (self.radius - 1)}; use crop_size >= {smallest}"
            )
