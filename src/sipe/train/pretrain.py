"""Plain multi-label classifier pretraining: the demo's stand-in for ImageNet weights.

ImageNet weights cannot be downloaded on an offline machine, so the demo first trains its
backbone as an ordinary classifier (every layer trainable, batch norm in training mode) on the
synthetic training images, and hands the result to SIPE as a local weights file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import ConcatDataset, Dataset

from sipe.config.train import PretrainConfig
from sipe.engine import fit, is_main_process
from sipe.io import save_torch
from sipe.models.weights import torchvision_resnet


class ClassifierTrainSet(Dataset):
    """``(index, seed)`` -> augmented crop and multi-hot labels."""

    def __init__(self, base: Any, resize_long: tuple[int, int], crop_size: int) -> None:
        self.base, self.resize_long, self.crop_size = base, resize_long, crop_size

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, item: tuple[int, int]) -> dict[str, torch.Tensor]:
        from sipe.data.transforms import random_resize_flip_crop

        index, seed = item
        sample = self.base[index]
        out = random_resize_flip_crop(sample["image"], np.random.default_rng(seed), resize_long=self.resize_long,
                                      flip=True, crop_size=self.crop_size)
        return {"image": torch.from_numpy(out["image"]), "labels": torch.from_numpy(sample["labels"])}


def classifier_step(model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Multi-label soft-margin loss of the classifier's logits (N, K-1)."""
    loss = F.multilabel_soft_margin_loss(model(batch["image"]).float(), batch["labels"])
    return {"loss": loss}


def pretrain_classifier(
    dataset: Any, out_dir: str | os.PathLike, cfg: PretrainConfig | None = None, negatives: Any = None
) -> Path:
    """Train a torchvision ResNet as a multi-label classifier on ``dataset``, plus the label-free
    images of ``negatives`` if given (e.g. :class:`~sipe.data.SyntheticBackgrounds`).

    Returns ``out_dir/backbone.pth``: a torchvision-format state dict without ``fc``, loadable
    as ``weights=`` by :func:`sipe.models.build_sipe`. Resumes like any engine run.
    """
    cfg = cfg or PretrainConfig()
    out_dir = Path(out_dir)
    target = out_dir / "backbone.pth"
    if target.is_file():
        return target
    net = torchvision_resnet(cfg.backbone, num_classes=dataset.num_classes - 1)
    groups = [{"params": list(net.parameters()), "lr_mult": 1.0}]
    images = dataset if negatives is None else ConcatDataset([dataset, negatives])
    trained = fit(net, ClassifierTrainSet(images, cfg.resize_long, cfg.crop_size), classifier_step, groups,
                  cfg.engine, out_dir, run_config=cfg)
    if is_main_process():
        state = {k: v.cpu() for k, v in trained.state_dict().items() if not k.startswith("fc.")}
        save_torch(state, target)
    return target
