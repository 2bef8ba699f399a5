"""Configuration sections shared by several stages: the dataset, training augmentation, the SIPE network."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["DATASET_KINDS", "STRIDE", "AugConfig", "DataConfig", "ModelConfig"]

DATASET_KINDS = ("voc", "coco", "custom", "synthetic")
STRIDE = 16  # output stride of the adapted ResNet; crops must be multiples of it


@dataclass
class DataConfig:
    """Where the images and labels come from.

    kind: ``voc`` (VOC2012 layout), ``coco`` (COCO 2014), ``custom`` or ``synthetic`` (the demo data).
    root: the VOC2012 folder, the COCO folder, or (custom) the image folder.
    split: VOC split name or file (``train_aug``), COCO ``train``/``val``, or (custom) the labels
        CSV/JSON of the training images.
    val_split: the split whose ground-truth masks select ``best.pt`` (official: VOC ``train``);
        ``null`` disables validation. For ``custom`` a labels file whose images have masks in ``mask_dir``.
    """

    kind: str = "voc"
    root: str = ""
    split: str = "train_aug"
    val_split: str | None = "train"
    val_max_images: int | None = None  # validate on the first N images only (None = all)
    # voc / custom: the foreground class list (voc default: the 20 VOC classes; custom default:
    # inferred from the labels file)
    class_names: list[str] | None = None
    mask_dir: str | None = None  # custom: folder of ground-truth masks for validation
    cache_dir: str | None = None  # label / mask caches (default: inside the dataset root, else ~/.cache)
    min_size: int = STRIDE  # images with a shorter side are skipped (logged with a count)

    def __post_init__(self) -> None:
        if self.kind not in DATASET_KINDS:
            raise ValueError(f"data.kind must be one of {', '.join(DATASET_KINDS)}, got {self.kind!r}")


@dataclass
class AugConfig:
    """Training augmentation (official defaults)."""

    resize_long: tuple[int, int] | None = (320, 640)
    scale_range: tuple[float, float] | None = None
    flip: bool = True
    crop_size: int = 512

    def __post_init__(self) -> None:
        if self.crop_size <= 0 or self.crop_size % STRIDE:
            raise ValueError(
                f"aug.crop_size must be a positive multiple of the network stride {STRIDE}, got {self.crop_size}"
            )


@dataclass
class ModelConfig:
    """The network: a backbone from the registry (:mod:`sipe.models.registry`) plus the SIPE head.

    backbone: ``resnet18|34|50|101`` (the official torchvision adaptation), ``timm:<model>`` (any timm
        model with ``features_only`` and ``output_stride=16``; ``pip install 'sipe[timm]'``) or
        ``module:function`` (your factory, importable from PYTHONPATH, returning a module with four maps
        at strides 4, 8, 16, 16 and ``out_channels``).
    weights: null (random init), a local ``.pth``/``.safetensors`` state-dict file (every backbone key
        must match), a torchvision weights name (ResNets: ``IMAGENET1K_V1``, the paper's) or ``timm``
        (timm's own pretrained weights, downloaded: needs a network).
    The training policy (official defaults): ``frozen_stages`` maps whose inputs get no gradient (2: the
    stem and the first two stages), ``freeze_bn`` batch-norm statistics frozen, ``backbone_lr_mult`` the
    backbone's lr multiplier (the new layers' is the top-level ``new_lr_mult``, 10x).
    """

    backbone: str = "resnet50"
    # torchvision weights name (the paper: ImageNet), a local state-dict file, timm, or null (random init).
    weights: str | None = "IMAGENET1K_V1"
    num_classes: int | None = None  # K with background; None = taken from the dataset
    backbone_options: dict[str, Any] | None = None  # keyword arguments of timm.create_model / your factory
    frozen_stages: int = 2  # official: stem + stages 1-2 without gradient (the official code detaches stage 2)
    freeze_bn: bool = True  # official: batch-norm statistics frozen, affine parameters train where the stage does
    backbone_lr_mult: float = 1.0  # official: the backbone at the base lr

    def __post_init__(self) -> None:
        from sipe.models.registry import backbone_kind

        backbone_kind(self.backbone)  # raises with the accepted names
        if not 0 <= self.frozen_stages <= 4:
            raise ValueError(f"model.frozen_stages must be 0..4, got {self.frozen_stages}")

    def backbone_meta(self) -> dict[str, Any]:
        """What a checkpoint stores to rebuild this backbone (:func:`sipe.models.build_sipe` keywords)."""
        return {"frozen_stages": self.frozen_stages, "freeze_bn": self.freeze_bn,
                "backbone_options": dict(self.backbone_options or {})}
