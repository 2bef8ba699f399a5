"""Datasets (VOC, COCO, custom, synthetic) behind one interface, robust image reading, transforms.

Every dataset yields dicts ``image`` (H, W, 3) uint8 RGB, ``labels`` (K-1,) float32 multi-hot over
the foreground classes, ``name`` str and ``mask`` (H, W) uint8 (255 = ignore) or ``None``, and has
``class_names`` (K names, ``"background"`` first).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sipe.config.common import DataConfig
from sipe.config.dataset_kinds import DATASET_KINDS, dataset_kind

from .coco import COCODataset
from .custom import CustomDataset, read_labels_file
from .errors import (
    DatasetError,
    DatasetRootError,
    EmptySplitError,
    LabelMapError,
    LikelyTypoError,
    MissingMaskError,
    UnknownClassError,
)
from .image import (
    ImageReadError,
    ImageTooSmallError,
    check_min_size,
    collect_images,
    image_size,
    read_image,
    read_label_png,
    read_mask,
)
from .labelmap import check_label_map
from .seg_dataset import SegDataset
from .skiplist import SKIPPED_FILE, SkipCounter
from .synthetic import SyntheticBackgrounds, SyntheticDataset, generate_synthetic, synthetic_class_names
from .transforms import IMAGENET_MEAN, IMAGENET_STD, normalize, random_resize_flip_crop
from .voc import VOC_CLASSES, VOCDataset

__all__ = [
    "COCODataset",
    "CustomDataset",
    "DATASET_KINDS",
    "DatasetError",
    "DatasetRootError",
    "EmptySplitError",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ImageReadError",
    "ImageTooSmallError",
    "LabelMapError",
    "LikelyTypoError",
    "MissingMaskError",
    "SegDataset",
    "SKIPPED_FILE",
    "SkipCounter",
    "SyntheticBackgrounds",
    "SyntheticDataset",
    "UnknownClassError",
    "VOCDataset",
    "VOC_CLASSES",
    "build_dataset",
    "dataset_from_config",
    "check_label_map",
    "check_min_size",
    "collect_images",
    "generate_synthetic",
    "image_size",
    "normalize",
    "random_resize_flip_crop",
    "read_image",
    "read_label_png",
    "read_labels_file",
    "read_mask",
    "synthetic_class_names",
]


def _custom(root: str | os.PathLike, split: str | os.PathLike, **kwargs: Any) -> CustomDataset:
    labels_file = Path(split).expanduser()  # as given, else relative to the image folder
    if not labels_file.is_file() and (Path(root) / labels_file).is_file():
        labels_file = Path(root) / labels_file
    return CustomDataset(root, labels_file, **kwargs)


# The builder of every kind of sipe.config.dataset_kinds.DATASET_KINDS (the table of what each takes).
_BUILDERS: dict[str, Callable[..., SegDataset]] = {
    "voc": VOCDataset,
    "coco": lambda root, split, **kwargs: COCODataset(root, str(split), **kwargs),
    "custom": _custom,
    "synthetic": lambda root, split, **kwargs: SyntheticDataset(root, str(split), **kwargs),
}


def build_dataset(kind: str, root: str | os.PathLike, split: str | os.PathLike, **kwargs) -> SegDataset:
    """Build a dataset by kind.

    Args:
        kind: a name of :data:`sipe.config.dataset_kinds.DATASET_KINDS`: ``"voc"``, ``"coco"``, ``"custom"``
            or ``"synthetic"``.
        root: the dataset root; for ``"custom"`` the image folder.
        split: ``"voc"``: a shipped split name (``train_aug``, ``train``, ``val``) or a txt file;
            ``"coco"``: ``train`` / ``val``; ``"synthetic"``: ``train`` / ``val``; ``"custom"``: the
            labels file (CSV / JSON), taken relative to ``root`` when it is not a file as given.
        kwargs: passed to the dataset class (e.g. ``class_names``, ``mask_dir``, ``with_masks``).
    """
    builder = _BUILDERS.get(kind.lower())
    if builder is None:
        raise ValueError(f"unknown dataset kind {kind.lower()!r}; choose one of {', '.join(DATASET_KINDS)}")
    return builder(root, split, **kwargs)


def dataset_from_config(data: DataConfig, split: str, *, with_masks: bool) -> SegDataset:
    """The :class:`sipe.data.SegDataset` for ``split`` of the dataset described by ``data``."""
    if not data.root:
        raise ValueError("data.root is empty; set it in the config or pass data.root=/path/to/dataset")
    kind = dataset_kind(data.kind)
    kwargs: dict[str, Any] = {"with_masks": with_masks}
    if data.skip_unlabeled is not None:
        kwargs["skip_unlabeled"] = data.skip_unlabeled
    if data.class_names is not None:
        if not kind.takes_class_names:
            raise ValueError(f"data.class_names does not apply to data.kind={kind.name}: its classes are "
                             f"{kind.fixed_classes}; remove it")
        kwargs["class_names"] = list(data.class_names)
    if data.cache_dir is not None and kind.cache_dir:
        kwargs["cache_dir"] = data.cache_dir
    if kind.mask_dir and with_masks and data.mask_dir is not None:
        kwargs["mask_dir"] = data.mask_dir
    return build_dataset(data.kind, data.root, split, **kwargs)
