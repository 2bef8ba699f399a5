"""Configuration sections shared by several stages: the dataset, training augmentation, the SIPE network."""

from __future__ import annotations

from dataclasses import dataclass

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
    skip_unlabeled: bool = True  # false: images without labels are kept as background-only images

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
    """The network: a torchvision ResNet trunk adapted as the official code, plus the SIPE head."""

    backbone: str = "resnet50"
    # torchvision weights name (the paper: ImageNet), a local state-dict file, or null (random init).
    weights: str | None = "IMAGENET1K_V1"
    num_classes: int | None = None  # K with background; None = taken from the dataset

    def __post_init__(self) -> None:
        from sipe.models.weights import check_resnet

        check_resnet(self.backbone)  # at config time, before any model or data is loaded
