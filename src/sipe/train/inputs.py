"""The training data of ``sipe train``, read and checked without torch, so that a wrong labels file,
class count or batch size is reported before torch loads (and before any model is built)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from sipe.config import ConfigError
from sipe.config.engine import check_global_batch
from sipe.config.train import SIPETrainConfig
from sipe.data import dataset_from_config
from sipe.engine.env import torchrun_env

__all__ = ["TrainingData", "label_contrast_warning", "training_data"]

logger = logging.getLogger("sipe.train")


@dataclass
class TrainingData:
    """The training split, the validation split (``None`` when ``data.val_split`` is null) and the
    class count (background included)."""

    train: Any
    val: Any | None
    num_classes: int


def training_data(cfg: SIPETrainConfig) -> TrainingData:
    """Build and check the datasets ``cfg.data`` describes (images too small for training dropped).

    Raises :class:`sipe.config.ConfigError` when ``model.num_classes`` disagrees with the dataset or
    the training set holds less than one global batch (``WORLD_SIZE`` processes under torchrun), and
    the dataset errors of :func:`sipe.data.dataset_from_config` (missing files, unknown classes).
    """
    train = dataset_from_config(cfg.data, cfg.data.split, with_masks=False)
    train.drop_small(cfg.data.min_size)
    warning = label_contrast_warning(train)
    if warning:
        logger.warning(warning)
    k = train.num_classes
    if cfg.model.num_classes is not None and cfg.model.num_classes != k:
        raise ConfigError(
            f"model.num_classes={cfg.model.num_classes} but the dataset {train.source} has {k} classes "
            "(background included); drop model.num_classes or fix it"
        )
    check_global_batch(len(train), cfg.engine.batch_size, torchrun_env().world_size)
    val = None
    if cfg.data.val_split is not None:
        val = dataset_from_config(cfg.data, cfg.data.val_split, with_masks=True)
        val.drop_small(cfg.data.min_size)
        if val.class_names != train.class_names:
            raise ValueError(
                f"the validation split {val.source} has classes {val.class_names}, the training split "
                f"{train.class_names}; use the same class list"
            )
    return TrainingData(train, val, k)


def label_contrast_warning(dataset: Any) -> str | None:
    """One line when every image of ``dataset`` has the same label set, else ``None``.

    A classifier learns where a class is only by contrast with images that lack it: when every
    target is the same vector it can score every image alike, and its CAMs then mark no place in
    particular (every pixel or none).
    """
    labels = np.asarray(dataset.label_matrix)
    if len(labels) < 2 or not (labels == labels[:1]).all():
        return None
    fg = dataset.class_names[1:]
    names = ", ".join(c for c, on in zip(fg, labels[0], strict=True) if on) or "no class"
    return (f"all {len(labels)} training images of {dataset.source} have the same labels ({names}), so the "
            "classifier has nothing to contrast them with and its CAMs cannot localise; add images without "
            "these classes (negatives: an empty labels cell) or with other classes")
