"""The demo's configuration (``configs/demo.yaml`` holds the same defaults)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from sipe.config import AugConfig
from sipe.config.irn import IRNConfig, IRNEngineConfig
from sipe.config.seg import SegAugConfig, SegEngineConfig, SegModelConfig
from sipe.config.train import PretrainConfig
from sipe.engine import TrainConfig

__all__ = ["DemoConfig", "SyntheticConfig"]


@dataclass
class SyntheticConfig:
    n_train: int = 400
    n_val: int = 100
    image_size: tuple[int, int] = (96, 160)
    num_classes: int = 4  # foreground classes
    max_objects: int = 2
    # Objects a few stride-16 cells wide even at scale 1.0, so that image-specific prototypes have
    # room to work (the paper's VOC objects span tens of cells).
    body_radius: tuple[float, float] = (0.26, 0.36)


# Twice the synthetic images' size: a classifier trained from scratch localises only when objects
# are large against its receptive field (measurements in docs/demo.md).
def _demo_pretrain() -> PretrainConfig:
    return PretrainConfig(resize_long=(192, 320), crop_size=224, engine=dataclasses.replace(
        PretrainConfig().engine, epochs=6))


def _demo_sipe_engine() -> TrainConfig:
    # The official recipe unchanged (batch 16, 5 epochs, lr 0.1 / 10x, momentum 1e-4, wd 1e-4, clip 1, seed 15).
    return TrainConfig(num_workers=1, log_every=5, channels_last=True)


@dataclass
class DemoConfig:
    """Everything ``sipe demo`` runs; ``configs/demo.yaml`` holds the same defaults."""

    seed: int = 0
    data: SyntheticConfig = field(default_factory=SyntheticConfig)
    backbone: str = "resnet18"
    pretrain: PretrainConfig = field(default_factory=_demo_pretrain)
    # Object-free images added to pretraining as negatives, so that no class is learned as "none
    # of the others" (its CAM would cover the background; docs/demo.md).
    background_images: int = 80
    aug: AugConfig = field(default_factory=lambda: AugConfig(resize_long=(192, 352), crop_size=224))
    engine: TrainConfig = field(default_factory=_demo_sipe_engine)
    # Scales of the native images, so 2.0 is the training size (choice measured in docs/demo.md).
    scales: tuple[float, ...] = (1.0, 2.0)
    flip: bool = True  # IS-CAMs also of the mirrored image, fused (the official make_cam)
    # IRN epochs trimmed (3 -> 2) to keep the whole demo under 10 minutes. DeepLab: 3 epochs of 50 steps,
    # raised to seg_engine.min_steps (500, the default) because 150 steps underfit (docs/demo.md).
    irn: IRNConfig = field(default_factory=lambda: IRNConfig(
        crop_size=128, engine=IRNEngineConfig(epochs=2, num_workers=1, log_every=5, channels_last=True)))
    seg_model: SegModelConfig = field(default_factory=lambda: SegModelConfig(output_stride=16))
    seg_aug: SegAugConfig = field(default_factory=lambda: SegAugConfig(crop_size=96))
    seg_engine: SegEngineConfig = field(default_factory=lambda: SegEngineConfig(
        batch_size=8, epochs=3, num_workers=1, log_every=10, channels_last=True))
    # Random-walk steps 2^rw_exp_times: the official 2^8 suit VOC's ~125x94 stride-4 grids and mix
    # the demo's whole 24x40 grids (docs/demo.md).
    rw_exp_times: int = 3
    refine: bool = True  # stages 5 and 6
    num_overlays: int = 6
    # Intra-op threads of every stage (torch.set_num_threads), recorded in run_info.json; fixed so
    # that the numbers do not depend on the machine's core count (docs/reproducibility.md). None = torch's default.
    num_threads: int | None = 2
