"""SIPE training with the official recipe, on top of :mod:`sipe.engine`.

Official recipe (``train_resnet50_SIPE.py``): the long side resized to a random length in
[320, 640], horizontal flip, ImageNet normalisation, a random 512 crop padded with zeros plus its
valid mask; batch 16, 5 epochs, poly SGD (power 0.9) with lr 0.1 on the backbone and 10x on the
new layers, weight decay 1e-4, effective momentum 1e-4 (see :class:`sipe.engine.TrainConfig`),
gradient clipping at norm 1, seed 15; loss = multi-label soft margin + GSC (weight ``method.gsc_weight``,
the paper's ablation switches in :class:`sipe.config.MethodConfig`); the checkpoint with
the best single-scale IS-CAM mIoU on a split with masks is kept as ``best.pt``.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from sipe.config import STRIDE, AugConfig, to_dict
from sipe.config.train import SIPETrainConfig
from sipe.data import SKIPPED_FILE
from sipe.data.fingerprint import images_fingerprint
from sipe.data.labelmap import label_matrix
from sipe.engine import fit, is_main_process, setup_distributed
from sipe.engine.sampler import repeat_factors
from sipe.models.layers import model_device
from sipe.train.inputs import TrainingData, training_data

logger = logging.getLogger(__name__)

__all__ = [
    "SIPETrainConfig",
    "SIPETrainSet",
    "make_val_fn",
    "sipe_step",
    "train_sipe",
]

# ----------------------------------------------------------------------------- data


class SIPETrainSet(Dataset):
    """Training view of a dataset: item ``(index, seed)`` -> augmented crop, valid mask, labels.

    Returns ``image`` (3, S, S) float32 normalised (zero padding), ``valid`` (S, S) float32,
    ``labels`` (K-1,) float32. All randomness comes from ``np.random.default_rng(seed)``.
    """

    def __init__(
        self,
        base: Any,
        *,
        resize_long: tuple[int, int] | None = (320, 640),
        scale_range: tuple[float, float] | None = None,
        flip: bool = True,
        crop_size: int = 512,
    ) -> None:
        self.base = base
        self.resize_long = resize_long
        self.scale_range = scale_range
        self.flip = flip
        self.crop_size = crop_size

    @classmethod
    def from_config(cls, base: Any, aug: AugConfig) -> SIPETrainSet:
        return cls(base, resize_long=aug.resize_long, scale_range=aug.scale_range, flip=aug.flip,
                   crop_size=aug.crop_size)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, item: tuple[int, int]) -> dict[str, torch.Tensor]:
        from sipe.data.transforms import random_resize_flip_crop

        index, seed = item
        sample = self.base[index]
        out = random_resize_flip_crop(
            sample["image"],
            np.random.default_rng(seed),
            resize_long=self.resize_long,
            scale_range=self.scale_range,
            flip=self.flip,
            crop_size=self.crop_size,
        )
        return {
            "image": torch.from_numpy(out["image"]),
            "valid": torch.from_numpy(out["valid"]),
            "labels": torch.from_numpy(np.asarray(sample["labels"], dtype=np.float32)),
        }


# ----------------------------------------------------------------------------- step and validation


def sipe_step(model: nn.Module, batch: dict[str, torch.Tensor], gsc_weight: float = 1.0) -> dict[str, torch.Tensor]:
    """One SIPE training forward: batch ``image`` (N,3,S,S), ``valid`` (N,S,S), ``labels`` (N,K-1).

    Returns ``loss`` = ``loss_cls`` (multi-label soft margin) + ``gsc_weight`` x ``loss_gsc``
    (general-specific consistency). With ``gsc_weight`` 0 the loss is ``loss_cls`` alone (the plain
    CAM baseline) and ``loss_gsc`` is still computed, without gradient, for the log.
    """
    from sipe.core.ipe import lowres_valid_mask
    from sipe.core.losses import classification_loss, gsc_loss

    labels = batch["labels"]
    mask = lowres_valid_mask(batch["valid"], labels, stride=STRIDE)
    out = model(batch["image"], mask)
    # Losses in float32 even under autocast: both are means over many small terms.
    loss_cls = classification_loss(out["score"].float(), labels)
    if gsc_weight == 0:
        # Not 0 * loss_gsc: that would still hand the side convs zero gradients (weight decay would
        # then move them, and DDP would see them used), unlike the classification loss alone.
        with torch.no_grad():
            loss_gsc = gsc_loss(out["cam"].float(), out["is_cam"].float())
        loss = loss_cls
    else:
        loss_gsc = gsc_loss(out["cam"].float(), out["is_cam"].float())
        # x * 1.0 is exact, so the official weight leaves the loss and its gradient bit-identical.
        loss = loss_cls + gsc_weight * loss_gsc
    return {"loss": loss, "loss_cls": loss_cls.detach(), "loss_gsc": loss_gsc.detach()}


class _ValView(Dataset):
    """Full-size validation images: normalised (3, H, W), labels, mask."""

    def __init__(self, base: Any, indices: Sequence[int]):
        self.base = base
        self.indices = list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, Any]:
        from sipe.data.transforms import normalize

        item = self.base[self.indices[i]]
        return {
            "image": torch.from_numpy(normalize(item["image"])),
            "labels": torch.from_numpy(np.asarray(item["labels"], dtype=np.float32)),
            "mask": None if item["mask"] is None else torch.from_numpy(np.asarray(item["mask"])),
            "name": item["name"],
        }


def make_val_fn(
    val_set: Any, num_classes: int, *, max_images: int | None = None, num_workers: int = 0
) -> Callable[[nn.Module], float]:
    """Validation of the official code: single-scale IS-CAM argmax mIoU over ``val_set``.

    Each image goes through the training forward at full size with the labels (background = 1)
    as the valid mask; IS-CAM is upsampled bilinearly, max-normalised per class and argmaxed.
    """
    from sipe.metrics import ConfusionMatrix

    val_set.require_masks()
    n = len(val_set) if max_images is None else min(max_images, len(val_set))
    view = _ValView(val_set, range(n))

    def val_fn(model: nn.Module) -> float:
        device = model_device(model)
        cm = ConfusionMatrix(num_classes)
        loader = DataLoader(view, batch_size=None, num_workers=num_workers)
        from tqdm.auto import tqdm

        for item in tqdm(loader, total=len(view), desc="validate", leave=False, dynamic_ncols=True):
            x = item["image"][None].to(device)
            labels = item["labels"].to(device)
            mask = torch.cat([labels.new_ones(1), labels]).view(1, -1, 1, 1)
            is_cam = model(x, mask)["is_cam"].float()
            is_cam = F.interpolate(is_cam, size=x.shape[2:], mode="bilinear", align_corners=False)
            is_cam = is_cam / (is_cam.amax(dim=(2, 3), keepdim=True) + 1e-5)
            cm.update(is_cam.argmax(1)[0], item["mask"].to(device))
        return cm.miou()

    return val_fn


# ----------------------------------------------------------------------------- entry point


def train_sipe(cfg: SIPETrainConfig, out_dir: str | os.PathLike, data: TrainingData | None = None) -> Path:
    """Train SIPE as configured; returns the path of ``out_dir/checkpoints/final.pt``.

    Writes the resolved config and run metadata to ``out_dir``; resumes from
    ``out_dir/checkpoints/last.pt`` when ``cfg.engine.resume``. When the run stops early on request
    (``engine.stop_after``) the returned path is ``last.pt``. ``data``: the datasets of
    :func:`sipe.train.inputs.training_data` when the caller checked them already (built here if ``None``).
    """
    from sipe.models import build_sipe

    out_dir = Path(out_dir)
    setup_distributed(cfg.engine.device)  # before any rank-dependent step below
    given = data is not None  # then the caller has reported what its datasets skipped
    data = data if given else training_data(cfg)
    train_base, k = data.train, data.num_classes
    val_fn = None
    if data.val is not None:
        val_fn = make_val_fn(data.val, k, max_images=cfg.data.val_max_images, num_workers=cfg.engine.num_workers)

    # Seeded so the new layers start the same in every run (and on every rank before DDP's broadcast).
    torch.manual_seed(cfg.engine.seed)
    model = build_sipe(cfg.model.backbone, k, weights=cfg.model.weights, **cfg.model.backbone_meta(),
                       **cfg.method.head_options())
    if cfg.method.gsc_weight == 0:
        # The side convs feed only the IS-CAM, which no loss then reaches: keep them out of the
        # optimiser (and of DDP's gradient reduction) instead of training them with no signal.
        for side in (model.side1, model.side2, model.side3, model.side4):
            side.requires_grad_(False)
    backbone_params, new_params = model.param_groups()
    groups = [{"params": backbone_params, "lr_mult": cfg.model.backbone_lr_mult},
              {"params": new_params, "lr_mult": cfg.new_lr_mult}]
    if is_main_process():
        logger.info("training SIPE on %s (%d images, %d classes)", train_base.source, len(train_base), k)
    meta = {
        "sipe_config": to_dict(cfg),
        "class_names": list(train_base.class_names),
        "backbone": cfg.model.backbone,
        "backbone_kwargs": cfg.model.backbone_meta(),  # with "backbone": what sipe_model_from_checkpoint rebuilds
        "num_classes": k,
    }
    step = functools.partial(sipe_step, gsc_weight=cfg.method.gsc_weight)
    # Written by fit once the rerun check passed, so that a run folder keeps its history.
    run_key = {"classes": list(train_base.class_names), "data": images_fingerprint(train_base),
               "model.backbone": cfg.model.backbone}
    weights = None
    if cfg.sampling != "uniform":
        weights = repeat_factors(label_matrix(train_base), cfg.repeat_threshold)
        run_key["sampling"] = f"{cfg.sampling} {cfg.repeat_threshold:g}"  # another draw: not the same run
    fit(model, SIPETrainSet.from_config(train_base, cfg.aug), step, groups, cfg.engine, out_dir,
        val_fn=val_fn, val_name="validation IS-CAM mIoU", meta=meta, run_config=cfg, run_key=run_key,
        on_start=lambda: train_base.skipped.write_tsv(out_dir / SKIPPED_FILE), sample_weights=weights)
    if is_main_process() and len(train_base.skipped) and not given:
        train_base.skipped.log(len(train_base) + len(train_base.skipped))
    final = out_dir / "checkpoints" / "final.pt"
    return final if final.exists() else out_dir / "checkpoints" / "last.pt"
