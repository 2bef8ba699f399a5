"""The configuration of ``sipe seg train`` (and the demo's ``seg_*`` sections); torch-free, so that
config errors are reported before torch loads."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from sipe.config.common import DataConfig, backbone_kind, check_backbone_weights
from sipe.config.engine import TrainConfig

__all__ = ["SEG_ARCHITECTURES", "SegArchitectureRules", "SegAugConfig", "SegDataConfig", "SegEngineConfig",
           "SegModelConfig", "SegTrainConfig", "pseudo_label_folder"]


@dataclass(frozen=True)
class SegArchitectureRules:
    """What the configuration knows of a segmentation architecture, torch-free (its networks, loss,
    parameter groups and export are its entry in ``sipe.seg.architectures.ARCHITECTURES``)."""

    output_strides: tuple[int, ...]  # the strides it runs at; the first is its default
    aux: bool  # whether it takes the auxiliary head (model.aux)
    recipe: str = ""  # a config file that sets it up, named in its errors


# One entry per architecture, the same names as sipe.seg.architectures.ARCHITECTURES (a test checks).
SEG_ARCHITECTURES: dict[str, SegArchitectureRules] = {
    "deeplabv3": SegArchitectureRules(output_strides=(16, 8), aux=True),
    "deeplabv2": SegArchitectureRules(output_strides=(8,), aux=False, recipe="configs/seg_deeplabv2_voc.yaml"),
}
_ARCH_NAMES = tuple(SEG_ARCHITECTURES)  # model.arch's Literal: the loader names the choices


@dataclass
class SegEngineConfig(TrainConfig):
    """The engine settings with DeepLab defaults (``SegTrainConfig.engine``).

    Textbook SGD (momentum 0.9, unlike the SIPE stage's reproduced 1e-4 quirk), lr 0.01, no gradient
    clipping, 30 epochs of batch 16, and at least ``min_steps`` (500) steps however small the folder.
    """

    epochs: int = 30
    lr: float = 0.01
    momentum: float = 0.9
    clip_grad_norm: float | None = None
    # A small folder trains for at least this many steps (more epochs than `epochs`): fine-tuned for 150
    # steps, DeepLab underfits even ground-truth labels (docs/demo.md). VOC's 30 epochs are ~20k steps,
    # so the rule leaves it alone; null = `epochs` only; a set max_steps wins over both.
    min_steps: int | None = 500

    def __post_init__(self) -> None:
        if self.min_steps is not None and self.min_steps < 1:
            raise ValueError(f"engine.min_steps must be >= 1 or null, got {self.min_steps}")


@dataclass
class SegModelConfig:
    """The segmentation network and its batch-norm handling."""

    arch: Literal[_ARCH_NAMES] = "deeplabv3"  # deeplabv2: sipe.seg.deeplabv2 (the WSSS papers')
    # Any registry name: resnet50 | resnet101 (torchvision DeepLabV3) | resnet18 | resnet34, dilated by
    # DeepLab; timm:<model> (dilated by timm: output stride 8 where timm can) or module:function (output
    # stride 16 only, deeplabv3 only), the ASPP on the last map, the aux head on the third.
    backbone: str = "resnet101"
    # ResNets: torchvision weights name (downloaded, or from the torch hub cache), a local state-dict file
    # (a torchvision ResNet, or a sipe/SIPE checkpoint whose backbone is reused), or null (random).
    # deeplabv2 also takes a deeplab-pytorch DeepLabV2 file (e.g. the COCO-pretrained initialisation).
    # timm / module:function: a local .pth/.safetensors state dict of the backbone (or a SIPE checkpoint on the
    # same backbone, whose backbone is reused), timm (timm's own), or null.
    weights: str | None = "IMAGENET1K_V1"
    backbone_options: dict[str, Any] | None = None  # keyword arguments of timm.create_model / your factory
    # 8 or 16; null = the architecture's own (deeplabv3: 16, deeplabv2: 8, the only one it runs at)
    output_stride: int | None = None
    atrous_rates: tuple[int, ...] = (6, 12, 18, 24)  # deeplabv2: the four ASPP branches
    msc_scales: tuple[float, ...] = (1.0, 0.75, 0.5)  # deeplabv2: multi-scale inputs fused by max (1.0 first)
    # deeplabv2 input convention: auto = caffe (mean subtraction) for deeplab-pytorch weights, else imagenet
    normalization: Literal["auto", "imagenet", "caffe"] = "auto"
    aux: bool = False  # FCN auxiliary head on layer3
    # Backbone batch norm frozen at its pretrained statistics: null = frozen when the body starts from
    # weights (a few images per step estimate them worse than pretraining did; docs/demo.md), trained from null
    freeze_bn: bool | None = None
    sync_bn: bool = True  # SyncBatchNorm across processes under torchrun (CUDA only)

    def __post_init__(self) -> None:
        # At config time, before any model or data is loaded (backbone_kind imports nothing).
        kind = backbone_kind(self.backbone)  # raises with the accepted names
        if kind == "resnet" and self.backbone_options:
            raise ValueError(f"model.backbone_options: {self.backbone} takes none, got {sorted(self.backbone_options)}")
        rules = self.rules()
        if kind == "module" and 16 not in rules.output_strides:
            at16 = next(n for n, r in SEG_ARCHITECTURES.items() if 16 in r.output_strides)
            raise ValueError(
                f"model.arch={self.arch} runs at output stride {rules.output_strides[0]}, which {self.backbone!r} "
                f"cannot (a module:function backbone's contract fixes stride 16): use arch: {at16} "
                "(with output_stride: 16)"
            )
        stride = self.resolved_output_stride()
        if kind == "module" and stride != 16:
            raise ValueError(
                f"model.output_stride={stride} is not possible on {self.backbone!r} (a module:function "
                "backbone's contract fixes its last maps at stride 16): set output_stride: 16"
            )
        check_backbone_weights(self.backbone, self.weights)

    def rules(self) -> SegArchitectureRules:
        """The rules of ``arch`` (:data:`SEG_ARCHITECTURES`); ``ValueError`` for an unknown name."""
        try:
            return SEG_ARCHITECTURES[self.arch]
        except KeyError:
            raise ValueError(f"model.arch={self.arch!r}: choose one of {', '.join(SEG_ARCHITECTURES)}") from None

    def resolved_output_stride(self) -> int:
        """``output_stride``, or the architecture's own when it is unset; ``ValueError`` naming the fix
        when the architecture cannot run at it (or with ``aux``)."""
        rules = self.rules()
        stride = rules.output_strides[0] if self.output_stride is None else self.output_stride
        if stride not in rules.output_strides or (self.aux and not rules.aux):
            fix = f"set model.output_stride={rules.output_strides[0]}"
            without = ""
            if not rules.aux:
                without, fix = " without an auxiliary head", fix + " model.aux=false"
            raise ValueError(
                f"model.arch={self.arch} runs at output stride {' or '.join(map(str, rules.output_strides))}"
                f"{without}: {fix}" + (f" ({rules.recipe} does)" if rules.recipe else "")
            )
        return stride

    def frozen_bn(self) -> bool:
        """Whether the backbone's batch norm is frozen: ``freeze_bn``, or when null, whether ``weights`` are set."""
        return self.freeze_bn if self.freeze_bn is not None else self.weights is not None


@dataclass
class SegAugConfig:
    """Training augmentation: random rescale, horizontal flip, random square crop."""

    scale_range: tuple[float, float] = (0.5, 2.0)
    # Discrete scales drawn uniformly instead of scale_range (deeplab-pytorch: 0.5, 0.75, 1.0, 1.25, 1.5)
    scale_choices: tuple[float, ...] | None = None
    flip: bool = True
    crop_size: int = 512

    def __post_init__(self) -> None:
        lo, hi = self.scale_range
        if not 0 < lo <= hi:
            raise ValueError(f"aug.scale_range must satisfy 0 < lo <= hi, got {self.scale_range}")
        if self.crop_size <= 0:
            raise ValueError(f"aug.crop_size must be positive, got {self.crop_size}")
        if self.scale_choices is not None and (not self.scale_choices or min(self.scale_choices) <= 0):
            raise ValueError(f"aug.scale_choices must be positive scales, got {self.scale_choices}")


@dataclass
class SegDataConfig(DataConfig):
    """``sipe train``'s data section, without validation by default (set ``val_split``, e.g. VOC ``val``)."""

    val_split: str | None = None


@dataclass
class SegTrainConfig:
    """Everything ``sipe seg train`` needs; YAML sections ``data``, ``model``, ``aug``, ``engine``.

    ``data`` is the same section as ``sipe train``'s; ``data.val_split`` (a split with ground truth,
    e.g. VOC ``val``) selects ``best.pt`` by mIoU when set.
    """

    pseudo_labels: str = ""  # folder of <image name>.png label maps (palette or grey PNGs, 255 = ignore)
    missing_labels: Literal["error", "skip"] = "error"  # training images without a pseudo-label PNG
    data: SegDataConfig = field(default_factory=SegDataConfig)
    model: SegModelConfig = field(default_factory=SegModelConfig)
    aug: SegAugConfig = field(default_factory=SegAugConfig)
    engine: SegEngineConfig = field(default_factory=SegEngineConfig)
    head_lr_mult: float = 10.0  # lr multiplier of the ASPP head (and aux head) over the backbone
    # deeplabv2 (deeplab-pytorch's Caffe lr_mult/decay_mult): the ASPP biases' lr multiplier and
    # weight decay; null = the same as the ASPP weights
    head_bias_lr_mult: float | None = None
    head_bias_weight_decay: float | None = None
    aux_weight: float = 0.5  # weight of the auxiliary loss when model.aux
    # Which images a step sees: uniform (each once per epoch) or repeat_factor (LVIS / detectron2's
    # RepeatFactorTrainingSampler: an image holding a class found in fewer than a fraction
    # repeat_threshold of the images is drawn sqrt(repeat_threshold / fraction) times as often), so that
    # a skewed folder's rare classes are not drowned by the majority class (docs/skewed.md).
    sampling: Literal["uniform", "repeat_factor"] = "uniform"
    repeat_threshold: float = 0.3
    # How each class's pixels count in the loss: none (every pixel alike) or inverse_sqrt_frequency (a class
    # with share f of the training labels' pixels weighs f^-0.5, scaled to a mean of 1 over the pixels:
    # sipe.seg.losses.frequency_weights), counted once from the pseudo labels before training (docs/skewed.md).
    loss_weighting: Literal["none", "inverse_sqrt_frequency"] = "none"

    def __post_init__(self) -> None:
        if not 0 < self.repeat_threshold <= 1:
            raise ValueError(f"repeat_threshold must be in (0, 1], got {self.repeat_threshold}")

    def pseudo_label_dir(self) -> Path:
        """``pseudo_labels`` as a folder that exists; raises (naming the fix) when unset or missing."""
        if not self.pseudo_labels:
            raise ValueError("set pseudo_labels= to the folder of pseudo-label PNGs (<image name>.png)")
        return pseudo_label_folder(self.pseudo_labels)


def pseudo_label_folder(path: str | os.PathLike) -> Path:
    """``path`` as a ``Path`` if it is a folder; else ``FileNotFoundError`` saying how to make one."""
    label_dir = Path(path)
    if not label_dir.is_dir():
        raise FileNotFoundError(
            f"pseudo-label folder {label_dir} does not exist; make the pseudo masks first "
            "(sipe refine ...) or set pseudo_labels= to the folder holding <name>.png files"
        )
    return label_dir
