"""Training DeepLabV3 on pseudo masks (the last, fully supervised stage of WSSS).

Recipe: random rescale in [0.5, 2.0], horizontal flip, random square crop padded with the ignore
label, cross-entropy ignoring 255, SGD with momentum 0.9 and poly decay, the new layers at
``head_lr_mult`` x the backbone's learning rate. Batch norm: plain, frozen (for small per-GPU
batches on a pretrained backbone), or synchronised across GPUs under torchrun.
Everything else (checkpoints, resume, AMP, DDP, TensorBoard, progress) comes from ``sipe.engine``.
Slightly over ~350 lines: the stage's config sections, its pseudo-label dataset and the model
preparation for both architectures are read together; none is used by another stage.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from sipe.config import save_run_info, to_dict
from sipe.config.common import backbone_kind
from sipe.config.seg import SegEngineConfig, SegTrainConfig, pseudo_label_folder
from sipe.data import dataset_from_config
from sipe.data.base import SKIPPED_FILE, SkipCounter
from sipe.data.image import read_mask
from sipe.data.transforms import mean_std, random_resize_flip_crop, rescale
from sipe.engine import fit, is_main_process, setup_distributed
from sipe.seg.model import RegistryBody, SegModelSpec, build_deeplab, freeze_backbone_batchnorm, input_normalization

log = logging.getLogger(__name__)

IGNORE = 255


class PseudoLabelDataset(Dataset):
    """A sipe dataset's images with pseudo masks from ``label_dir/<name>.png``, augmented for training.

    ``dataset[(index, seed)]`` -> ``{"image": (3, S, S) float32 normalised, "label": (S, S) int64}``
    (S = ``crop_size``; 255 outside the image and where the pseudo mask says ignore). All randomness
    comes from ``np.random.default_rng(seed)``.
    """

    def __init__(
        self,
        base: Any,
        label_dir: str | os.PathLike,
        crop_size: int = 512,
        scale_range: tuple[float, float] = (0.5, 2.0),
        flip: bool = True,
        missing: str = "error",
        normalization: str = "imagenet",
        scale_choices: tuple[float, ...] | None = None,
    ) -> None:
        label_dir = pseudo_label_folder(label_dir)
        self.label_dir = label_dir
        self.class_names = list(base.class_names)
        self.crop_size = crop_size
        self.scale_range = tuple(scale_range)
        self.flip = flip
        self.mean_std = mean_std(normalization)
        self.scale_choices = tuple(scale_choices) if scale_choices else None
        have = {p.stem for p in label_dir.glob("*.png")}
        absent = [i for i, n in enumerate(base.names) if n not in have]
        self.skipped = SkipCounter("images")
        if absent:
            first = ", ".join(base.names[i] for i in absent[:3])
            if missing != "skip" or len(absent) == len(base):
                raise FileNotFoundError(
                    f"{len(absent)} of {len(base)} training images have no pseudo label in {label_dir} "
                    f"(e.g. {first}); make them, or set missing_labels=skip to train without those images"
                )
            for i in absent:
                self.skipped.add(base.names[i], "no pseudo label")
            self.skipped.log(len(base))
            keep = sorted(set(range(len(base))) - set(absent))
            base = base.subset(keep)
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, torch.Tensor]:
        index, seed = key
        rng = np.random.default_rng(seed)
        name = self.base.names[index]
        image = self.base.read_image(index)
        path = self.label_dir / f"{name}.png"
        label = read_mask(path)
        if label.shape != image.shape[:2]:
            raise ValueError(
                f"pseudo label {path} is {label.shape[0]}x{label.shape[1]} but its image is "
                f"{image.shape[0]}x{image.shape[1]}; pseudo labels must be at the image's resolution"
            )
        bad = (label >= len(self.class_names)) & (label != IGNORE)
        if bad.any():
            raise ValueError(
                f"pseudo label {path} holds class {int(label[bad].max())}, but the dataset has "
                f"{len(self.class_names)} classes (255 = ignore)"
            )
        scale_range: tuple[float, float] | None = self.scale_range
        if self.scale_choices is not None:
            # deeplab-pytorch draws one of a few scales (bilinear image, nearest label)
            s = float(self.scale_choices[int(rng.integers(len(self.scale_choices)))])
            image, label, scale_range = rescale(image, s, 1), rescale(label, s, 0), None
        mean, std = self.mean_std
        out = random_resize_flip_crop(
            image, rng, label=label, scale_range=scale_range, crop_size=self.crop_size, flip=self.flip,
            mean=mean, std=std,
        )
        return {"image": torch.from_numpy(out["image"]), "label": torch.from_numpy(out["label"].astype(np.int64))}


def seg_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the non-ignored pixels; 0 (not NaN) for a batch without any.

    logits (N, K, H, W), target (N, H, W) int64 with 255 = ignore.
    """
    total = F.cross_entropy(logits.float(), target, ignore_index=IGNORE, reduction="sum")
    return total / (target != IGNORE).sum().clamp_min(1)


def make_step_fn(aux_weight: float = 0.5):
    """The engine's ``step_fn``: forward, cross-entropy (plus the weighted auxiliary loss)."""

    def step(model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = model(batch["image"])
        ce = seg_loss(out["out"], batch["label"])
        result = {"loss": ce, "ce": ce}
        if out.get("aux") is not None:
            aux = seg_loss(out["aux"], batch["label"])
            result["aux"] = aux
            result["loss"] = ce + aux_weight * aux
        return result

    return step


def param_groups(model: nn.Module, head_lr_mult: float) -> list[dict]:
    """Backbone parameters at lr x 1, the DeepLab head (and aux head) at lr x ``head_lr_mult``."""
    head = list(model.classifier.parameters())
    if getattr(model, "aux_classifier", None) is not None:
        head += list(model.aux_classifier.parameters())
    return [
        {"params": [p for p in model.backbone.parameters() if p.requires_grad], "lr_mult": 1.0},
        {"params": [p for p in head if p.requires_grad], "lr_mult": head_lr_mult},
    ]


def prepare_model(cfg: SegTrainConfig, num_classes: int, world_size: int, device: torch.device) -> nn.Module:
    """Build the network and set up its batch norm for this run (frozen / synchronised)."""
    m = cfg.model
    if m.arch == "deeplabv2":
        from sipe.seg.deeplabv2 import build_deeplabv2

        if m.output_stride != 8 or m.aux:
            raise ValueError(
                "model.arch=deeplabv2 runs at output stride 8 without an auxiliary head: set model.output_stride=8 "
                "model.aux=false (configs/seg_deeplabv2_voc.yaml does)"
            )
        model = build_deeplabv2(
            num_classes, m.backbone, m.weights, atrous_rates=m.atrous_rates, msc_scales=m.msc_scales,
            normalization=m.normalization, backbone_options=m.backbone_options,
        )
    else:
        model = build_deeplab(
            num_classes, backbone=m.backbone, weights_backbone=m.weights, aux=m.aux, output_stride=m.output_stride,
            backbone_options=m.backbone_options,
        )
    if m.frozen_bn():
        freeze_backbone_batchnorm(model)
    local_batch = cfg.engine.batch_size // max(world_size, 1)
    synced = False
    if world_size > 1 and m.sync_bn:
        if device.type == "cuda":
            # Frozen layers are left alone: only the modules that still learn are synchronised.
            for name in ("backbone", "classifier", "aux_classifier"):
                sub = getattr(model, name, None)
                if sub is not None and not (name == "backbone" and m.frozen_bn()):
                    setattr(model, name, _sync_batchnorm(sub))
            synced = True
        else:
            log.warning(
                "SyncBatchNorm needs CUDA; this %d-process CPU run normalises each process's share of "
                "the batch (%d images) on its own", world_size, local_batch
            )
    if local_batch < 2 and not synced:
        raise ValueError(
            f"each process trains on {local_batch} image per step, too few for the batch-norm layers of "
            "the DeepLab head; use engine.batch_size >= 2 per process (or several GPUs with model.sync_bn)"
        )
    return model


def _sync_batchnorm(module: nn.Module) -> nn.Module:
    """``module`` with SyncBatchNorm: timm's converter for a timm body (its ``BatchNormAct2d`` keeps its
    activation, which torch's converter would drop), torch's for everything else."""
    if isinstance(module, RegistryBody) and backbone_kind(module.name) == "timm":
        from timm.layers import convert_sync_batchnorm

        return convert_sync_batchnorm(module)
    return nn.SyncBatchNorm.convert_sync_batchnorm(module)


def planned_engine(engine: SegEngineConfig, num_samples: int) -> SegEngineConfig:
    """``engine`` with ``max_steps`` raised to ``engine.min_steps`` when its epochs over ``num_samples``
    training images give fewer steps (a small folder); unchanged when ``max_steps`` is set."""
    if engine.max_steps is not None or engine.min_steps is None:
        return engine
    planned = (num_samples // engine.batch_size) * engine.epochs
    if planned >= engine.min_steps:
        return engine
    log.info(
        "%d epochs of %d images are %d steps; training engine.min_steps=%d steps instead (~%.0f epochs)",
        engine.epochs, num_samples, planned, engine.min_steps,
        engine.min_steps / max(num_samples // engine.batch_size, 1),
    )
    return dataclasses.replace(engine, max_steps=engine.min_steps)


def train_seg(cfg: SegTrainConfig, out_dir: str | os.PathLike) -> Path:
    """Train a segmentation network on pseudo masks; returns the path of the final checkpoint
    (``out_dir/checkpoints/final.pt``, or ``last.pt`` when stopped early by ``engine.stop_after``).

    Every checkpoint holds ``"model"`` (state dict) and ``"meta"`` with ``model_spec``,
    ``class_names`` and the resolved ``seg_config``; :func:`sipe.seg.model.load_seg_checkpoint`
    rebuilds the network from any of them.
    """
    out_dir = Path(out_dir)
    cfg.pseudo_label_dir()  # set and present, before anything is loaded
    info = setup_distributed(cfg.engine.device)  # before any rank-dependent step below
    base = dataset_from_config(cfg.data, cfg.data.split, with_masks=False)
    base.drop_small(cfg.data.min_size)  # unreadable and tiny images: skipped with a logged count
    k = len(base.class_names)
    val_fn = None
    if cfg.data.val_split:
        from sipe.seg.evaluate import evaluate_seg

        val_set = dataset_from_config(cfg.data, cfg.data.val_split, with_masks=True)
        if list(val_set.class_names) != list(base.class_names):
            raise ValueError(
                f"the validation split {val_set.source} has classes {val_set.class_names}, the training split "
                f"{base.class_names}; use the same class list"
            )
        val_set.drop_small(cfg.data.min_size)
        val_set.require_masks()
        if cfg.data.val_max_images is not None:
            val_set = val_set.subset(range(min(cfg.data.val_max_images, len(val_set))))

        def val_fn(m: nn.Module) -> float:
            return float(evaluate_seg(m, val_set, progress=False)["miou"] or 0.0)

    # Same initial weights in every process and in a resumed run.
    torch.manual_seed(cfg.engine.seed)
    model = prepare_model(cfg, k, info.world_size, info.device)
    # After the network: its input normalisation may follow from its weights (deeplabv2, auto).
    train_set = PseudoLabelDataset(
        base, cfg.pseudo_labels, cfg.aug.crop_size, cfg.aug.scale_range, cfg.aug.flip, missing=cfg.missing_labels,
        normalization=input_normalization(model), scale_choices=cfg.aug.scale_choices,
    )
    spec = SegModelSpec(
        num_classes=k,
        backbone=cfg.model.backbone,
        output_stride=cfg.model.output_stride,
        aux=cfg.model.aux,
        class_names=list(base.class_names),
        arch=cfg.model.arch,
        normalization=input_normalization(model),
        backbone_options=dict(cfg.model.backbone_options or {}),
    )
    if cfg.model.arch == "deeplabv2":
        from sipe.seg import deeplabv2

        spec.atrous_rates = list(cfg.model.atrous_rates)
        spec.msc_scales = list(model.scales)
        spec.caffe_resnet = bool(model.caffe_resnet)
        step_fn = deeplabv2.msc_step_fn
        groups = deeplabv2.param_groups(model, cfg.head_lr_mult, cfg.head_bias_lr_mult, cfg.head_bias_weight_decay)
    else:
        step_fn = make_step_fn(cfg.aux_weight)
        groups = param_groups(model, cfg.head_lr_mult)
    save_run_info(out_dir, cfg)
    if is_main_process():
        skipped = SkipCounter("images")
        skipped.extend(base.skipped)
        skipped.extend(train_set.skipped)
        skipped.write_tsv(out_dir / SKIPPED_FILE)
        log.info(
            "training %s %s on %s (%d images, %d classes)", cfg.model.backbone, cfg.model.arch, base.source,
            len(train_set), k,
        )
    meta = {"model_spec": spec.to_dict(), "class_names": list(base.class_names), "seg_config": to_dict(cfg)}
    fit(
        model,
        train_set,
        step_fn,
        groups,
        planned_engine(cfg.engine, len(train_set)),
        out_dir,
        val_fn=val_fn,
        val_name="validation segmentation mIoU",
        meta=meta,
    )
    final = out_dir / "checkpoints" / "final.pt"
    return final if final.is_file() else out_dir / "checkpoints" / "last.pt"
