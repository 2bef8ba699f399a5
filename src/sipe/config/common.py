"""Configuration sections shared by several stages: the dataset, training augmentation, the SIPE network,
the method's ablation switches."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sipe.config.dataset_kinds import dataset_kind
from sipe.core.options import Structure

__all__ = [
    "IS_CAM_SCALES",
    "RESNETS",
    "UNPUBLISHED_RESNETS",
    "STRIDE",
    "TIMM_PREFIX",
    "AugConfig",
    "DataConfig",
    "MethodConfig",
    "ModelConfig",
    "backbone_kind",
    "check_backbone_weights",
]

STRIDE = 16  # output stride of the adapted ResNet; crops must be multiples of it
IS_CAM_SCALES = (1.0, 0.5, 1.5, 2.0)  # the official make_cam's IS-CAM fusion scales

# The one table of torchvision ResNets sipe builds: backbone name -> depth (weights enum ResNet{depth}_Weights).
RESNETS: dict[str, int] = {"resnet10": 10, "resnet18": 18, "resnet34": 34, "resnet50": 50, "resnet101": 101}
# ResNets torchvision builds but publishes no weights for: only local files (or null) as their weights.
UNPUBLISHED_RESNETS = frozenset({"resnet10"})
TIMM_PREFIX = "timm:"
# torchvision's weights enum names (IMAGENET1K_V1, DEFAULT, COCO_WITH_VOC_LABELS_V1): capitals, digits, _
_TORCHVISION_WEIGHTS = re.compile(r"[A-Z][A-Z0-9_]*")


def backbone_kind(name: str) -> str:
    """``"resnet"``, ``"timm"`` or ``"module"`` for a backbone name (no import: the config layer checks
    names before any work); raises ``ValueError`` naming the accepted forms for any other name."""
    if name in RESNETS:
        return "resnet"
    if name.startswith(TIMM_PREFIX) and len(name) > len(TIMM_PREFIX):
        return "timm"
    module, sep, function = name.partition(":")
    if sep and module and function.isidentifier() and all(p.isidentifier() for p in module.split(".")):
        return "module"
    raise ValueError(
        f"unknown backbone {name!r}: use one of {', '.join(RESNETS)}, 'timm:<model name>' (pip install "
        "'sipe[timm]') or 'module:function' (a factory of your own, importable from PYTHONPATH)"
    )


def check_backbone_weights(backbone: str, weights: str | None, key: str = "model.weights") -> None:
    """Raise ``ValueError`` (naming the fix) when ``weights`` is a torchvision weights name such as
    ``IMAGENET1K_V1`` (no file of that name exists) for a backbone torchvision has no such weights for:
    any backbone other than a torchvision ResNet, and the ResNets of :data:`UNPUBLISHED_RESNETS`.

    Torch-free, so that the stage configs, whose defaults are ResNet weights, refuse the mix at once.
    """
    if weights is None or not _TORCHVISION_WEIGHTS.fullmatch(weights) or os.path.exists(weights):
        return
    if backbone in UNPUBLISHED_RESNETS:
        raise ValueError(f"{key}={weights}: torchvision publishes no weights for {backbone}; set {key} to a local "
                         ".pth/.safetensors file (e.g. a run's pretrain stage: stage:pretrain) or null (random)")
    if backbone_kind(backbone) == "resnet":
        return
    choices = "a local .pth/.safetensors file, timm (timm's own weights, downloaded) or null (random)"
    if backbone_kind(backbone) == "module":
        choices = "a local .pth/.safetensors file or null (random)"
    raise ValueError(f"{key}={weights} is a torchvision weights name, which only the ResNets take; for "
                     f"{backbone} set {key} to {choices}")


@dataclass
class DataConfig:
    """Where the images and labels come from.

    kind: ``voc`` (VOC2012 layout), ``coco`` (COCO 2014), ``custom`` or ``synthetic`` (the demo data); what
        each takes: :data:`sipe.config.dataset_kinds.DATASET_KINDS`.
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
    # Images without labels are negatives (all background), kept by default; true drops them. null: the
    # kind's default (kept, except coco: the official COCO list leaves its ~1% unannotated images out).
    skip_unlabeled: bool | None = None

    def __post_init__(self) -> None:
        dataset_kind(self.kind)


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
        backbone_kind(self.backbone)  # raises with the accepted names
        check_backbone_weights(self.backbone, self.weights)
        if not 0 <= self.frozen_stages <= 4:
            raise ValueError(f"model.frozen_stages must be 0..4, got {self.frozen_stages}")

    def backbone_meta(self) -> dict[str, Any]:
        """What a checkpoint stores to rebuild this backbone (:func:`sipe.models.build_sipe` keywords)."""
        return {"frozen_stages": self.frozen_stages, "freeze_bn": self.freeze_bn,
                "backbone_options": dict(self.backbone_options or {})}


@dataclass
class MethodConfig:
    """The paper's ablation switches (defaults: the official code; ``configs/ablations/`` sets them
    per row of the paper's ablation table). Stored in every SIPE checkpoint, so ``sipe cam`` and
    ``sipe predict`` run the network as it was trained."""

    gsc_weight: float = 1.0  # GSC loss weight; 0 trains the plain CAM baseline (GSC still computed and logged)
    bg_scale: float = 0.5  # background IoU factor of the structure-aware seeds (official 0.5)
    train_structure: Structure = "backbone"  # seed structure features in training (official: the last stage)
    infer_structure: Structure = "hierarchical"  # seed structure features at inference (official: hierarchical)
    cam_scales: tuple[float, ...] = IS_CAM_SCALES  # IS-CAM fusion scales of `sipe cam` / `sipe predict`
    # Presence without given labels (`sipe predict`, `sipe cam --labels-from classifier`, sipe.Predictor): a
    # class is present when the sigmoid of its classifier score exceeds this (not in the official code).
    score_threshold: float = 0.5

    def __post_init__(self) -> None:
        if self.gsc_weight < 0:
            raise ValueError(f"method.gsc_weight must be >= 0, got {self.gsc_weight}")
        if self.bg_scale < 0:
            raise ValueError(f"method.bg_scale must be >= 0, got {self.bg_scale}")
        if not 0.0 <= self.score_threshold < 1.0:
            raise ValueError(f"method.score_threshold must be in [0, 1), got {self.score_threshold}")
        if not self.cam_scales or any(s <= 0 for s in self.cam_scales):
            raise ValueError(f"method.cam_scales must be positive numbers, got {list(self.cam_scales)}")

    def head_options(self) -> dict[str, Any]:
        """Keyword arguments of ``SIPENet`` / ``SIPENet.configure``: the structures and the background factor."""
        return {"train_structure": self.train_structure, "infer_structure": self.infer_structure,
                "bg_scale": self.bg_scale}

    @classmethod
    def from_checkpoint(cls, ckpt: Mapping[str, Any]) -> MethodConfig:
        """The switches a SIPE checkpoint (dict) was trained with: ``meta.sipe_config.method``; the
        official defaults for checkpoints without it (the authors' files, older sipe runs)."""
        from sipe.config.loader import from_dict

        meta = ckpt.get("meta")
        sipe_config = meta.get("sipe_config") if isinstance(meta, Mapping) else None
        method = sipe_config.get("method") if isinstance(sipe_config, Mapping) else None
        return from_dict(cls, method or {}, "the checkpoint's meta.sipe_config.method")
