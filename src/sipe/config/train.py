"""The configurations of ``sipe train`` and of the demo's classifier pretraining (torch-free, so that
config errors are reported before torch loads)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from sipe.config.common import RESNETS, AugConfig, DataConfig, MethodConfig, ModelConfig
from sipe.config.engine import TrainConfig

__all__ = ["PretrainConfig", "SIPETrainConfig"]


def _official_engine() -> TrainConfig:
    return TrainConfig(
        epochs=5, batch_size=16, lr=0.1, weight_decay=1e-4, momentum=1e-4, poly_power=0.9,
        clip_grad_norm=1.0, seed=15,
    )


@dataclass
class SIPETrainConfig:
    """Everything ``sipe train`` needs; YAML sections ``data``, ``aug``, ``model``, ``method``, ``engine``."""

    data: DataConfig = field(default_factory=DataConfig)
    aug: AugConfig = field(default_factory=AugConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)  # the paper's ablation switches
    engine: TrainConfig = field(default_factory=_official_engine)
    new_lr_mult: float = 10.0  # lr multiplier of the new layers (classifier, side convs)
    # uniform (official: each image once per epoch) or repeat_factor (images holding a class found in fewer
    # than a fraction repeat_threshold of the images drawn more often; as seg.sampling, docs/skewed.md)
    sampling: Literal["uniform", "repeat_factor"] = "uniform"
    repeat_threshold: float = 0.3

    def __post_init__(self) -> None:
        if not 0 < self.repeat_threshold <= 1:
            raise ValueError(f"repeat_threshold must be in (0, 1], got {self.repeat_threshold}")


def _pretrain_engine() -> TrainConfig:
    # Textbook SGD (momentum 0.9): this stage stands in for ImageNet training, not for SIPE's recipe.
    return TrainConfig(epochs=12, batch_size=32, lr=0.1, momentum=0.9, weight_decay=1e-4, clip_grad_norm=None,
                       seed=0, log_every=5, num_workers=1, channels_last=True)


@dataclass
class PretrainConfig:
    """The demo's plain-classifier pretraining (:func:`sipe.train.pretrain.pretrain_classifier`)."""

    backbone: str = "resnet18"  # a torchvision ResNet (RESNETS): the stage trains a plain classifier
    resize_long: tuple[int, int] = (96, 160)
    crop_size: int = 128
    engine: TrainConfig = field(default_factory=_pretrain_engine)

    def __post_init__(self) -> None:
        if self.backbone not in RESNETS:
            raise ValueError(f"pretrain.backbone={self.backbone!r}: the classifier pretraining trains a torchvision "
                             f"ResNet, one of {', '.join(RESNETS)}")
