"""Training a segmentation network on pseudo masks (the last, fully supervised stage of WSSS).

Recipe: random rescale in [0.5, 2.0], horizontal flip, random square crop padded with the ignore
label, cross-entropy ignoring 255, SGD with momentum 0.9 and poly decay, the new layers at
``head_lr_mult`` x the backbone's learning rate. Batch norm: plain, frozen (for small per-GPU
batches on a pretrained backbone), or synchronised across GPUs under torchrun. The network, its loss
and its parameter groups come from its architecture's entry (:mod:`sipe.seg.architectures`);
everything else (checkpoints, resume, AMP, DDP, TensorBoard, progress) from ``sipe.engine``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from sipe.config import to_dict
from sipe.config.seg import SegEngineConfig, SegTrainConfig, pseudo_label_folder
from sipe.data import dataset_from_config
from sipe.data.fingerprint import images_fingerprint
from sipe.data.image import read_label_png
from sipe.data.labelmap import check_label_map, label_matrix
from sipe.data.skiplist import SKIPPED_FILE, SkipCounter
from sipe.data.transforms import mean_std, random_resize_flip_crop, rescale
from sipe.engine import fit, is_main_process, setup_distributed
from sipe.engine.sampler import repeat_factors
from sipe.seg.architectures import architecture
from sipe.seg.backbones import declares_pretrained, freeze_backbone_batchnorm, sync_batchnorm
from sipe.seg.deeplabv3 import param_groups
from sipe.seg.interface import input_normalization
from sipe.seg.losses import IGNORE, frequency_weights, make_step_fn, seg_loss
from sipe.seg.spec import SegModelSpec

__all__ = [
    "PseudoLabelDataset",
    "SegTrainConfig",
    "model_spec",
    "prepare_model",
    "train_seg",
    "training_images",
    "validation_fn",
    # moved, imported from here as before
    "IGNORE",
    "make_step_fn",
    "param_groups",
    "seg_loss",
]

log = logging.getLogger(__name__)


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

    def pixel_counts(self) -> np.ndarray:
        """(K,) int64 pixels of each class over every training image's pseudo label (255 not counted)."""
        k = len(self.class_names)
        counts = np.zeros(k, np.int64)
        for name in self.base.names:
            label = np.asarray(read_label_png(self.label_dir / f"{name}.png"))
            counts += np.bincount(label.ravel(), minlength=256)[:k]
        return counts

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, torch.Tensor]:
        index, seed = key
        rng = np.random.default_rng(seed)
        name = self.base.names[index]
        image = self.base.read_image(index)
        path = self.label_dir / f"{name}.png"
        label = check_label_map(
            read_label_png(path), path, num_classes=len(self.class_names), size=image.shape[:2], what="pseudo label",
            fix="pseudo labels must be at the image's resolution", class_fix="Make them with this dataset's classes.",
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


def prepare_model(cfg: SegTrainConfig, num_classes: int, world_size: int, device: torch.device) -> nn.Module:
    """Build the network and set up its batch norm for this run (frozen / synchronised)."""
    m = cfg.model
    model = architecture(m.arch).build(m, num_classes)
    # null: frozen when the body starts from weights, given as model.weights (frozen_bn) or declared by the body
    frozen = m.frozen_bn() or (m.freeze_bn is None and declares_pretrained(model.backbone))
    if frozen:
        freeze_backbone_batchnorm(model)
        why = ("model.freeze_bn=true" if m.freeze_bn else "the body starts from model.weights" if m.frozen_bn()
               else "the body declares pretrained = True")
        log.info("the body's batch norm is frozen (%s); model.freeze_bn=false trains it", why)
    local_batch = cfg.engine.batch_size // max(world_size, 1)
    synced = False
    if world_size > 1 and m.sync_bn:
        if device.type == "cuda":
            # Frozen layers are left alone: only the modules that still learn are synchronised.
            for name in ("backbone", "classifier", "aux_classifier"):
                sub = getattr(model, name, None)
                if sub is not None and not (name == "backbone" and frozen):
                    setattr(model, name, sync_batchnorm(sub))
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


def training_images(cfg: SegTrainConfig, images: Any | None = None) -> Any:
    """The training split of ``cfg.data`` (or a copy of ``images``), its unreadable and tiny images dropped
    (skipped with a logged count), and those that ``sipe refine`` skipped (they have no pseudo label by design)."""
    if images is None:
        base = dataset_from_config(cfg.data, cfg.data.split, with_masks=False)
        base.drop_small(cfg.data.min_size)
    else:
        base = images.copy()  # the caller's dataset and skip list stay as they are
    base.drop_skipped_earlier(cfg.pseudo_label_dir())
    return base


def validation_fn(cfg: SegTrainConfig, class_names: Sequence[str]) -> Callable[[nn.Module], float] | None:
    """``model -> validation mIoU`` on ``cfg.data.val_split`` (at most ``val_max_images``), or ``None``
    without one. The split must have ground-truth masks and the training split's ``class_names``."""
    if not cfg.data.val_split:
        return None
    from sipe.seg.evaluate import evaluate_seg

    val_set = dataset_from_config(cfg.data, cfg.data.val_split, with_masks=True)
    if list(val_set.class_names) != list(class_names):
        raise ValueError(
            f"the validation split {val_set.source} has classes {val_set.class_names}, the training split "
            f"{list(class_names)}; use the same class list"
        )
    val_set.drop_small(cfg.data.min_size)
    val_set.require_masks()
    if cfg.data.val_max_images is not None:
        val_set = val_set.subset(range(min(cfg.data.val_max_images, len(val_set))))

    def val_fn(m: nn.Module) -> float:
        return float(evaluate_seg(m, val_set, progress=False)["miou"] or 0.0)

    return val_fn


def model_spec(cfg: SegTrainConfig, model: nn.Module, class_names: Sequence[str]) -> SegModelSpec:
    """The spec a checkpoint carries for ``model`` (built from ``cfg.model``), from which
    :func:`sipe.seg.model.load_seg_checkpoint` rebuilds it."""
    m = cfg.model
    spec = SegModelSpec(
        num_classes=len(class_names),
        backbone=m.backbone,
        output_stride=m.resolved_output_stride(),
        aux=m.aux,
        class_names=list(class_names),
        arch=m.arch,
        normalization=input_normalization(model),
        backbone_options=dict(m.backbone_options or {}),
    )
    for name, value in architecture(m.arch).spec_fields(model, m).items():
        setattr(spec, name, value)
    return spec


def _write_skipped(out_dir: Path, *counters: SkipCounter) -> None:
    """``out_dir/skipped.tsv``: every image left out of training, with the reason."""
    skipped = SkipCounter("images")
    for counter in counters:
        skipped.extend(counter)
    skipped.write_tsv(out_dir / SKIPPED_FILE)


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


def sampling_weights(images: Any, threshold: float) -> np.ndarray:
    """(N,) repeat factors of ``images`` (:func:`sipe.engine.sampler.repeat_factors`) from their image-level
    labels, logged: how often the rarest class is seen more than under uniform sampling."""
    factors = repeat_factors(label_matrix(images), threshold)
    if is_main_process():
        log.info("repeat-factor sampling (threshold %g): images drawn up to %.1fx as often, %d of %d boosted",
                 threshold, float(factors.max()), int((factors > 1).sum()), len(factors))
    return factors


def loss_weights(train_set: PseudoLabelDataset, rule: str) -> torch.Tensor | None:
    """(K,) class weights of the loss under ``rule`` (``seg.loss_weighting``) from the training pseudo labels'
    pixel counts, logged; ``None`` for ``none``."""
    if rule == "none":
        return None
    if rule != "inverse_sqrt_frequency":
        raise ValueError(f"seg.loss_weighting must be none or inverse_sqrt_frequency, got {rule!r}")
    counts = train_set.pixel_counts()
    weights = frequency_weights(counts, power=0.5)
    if is_main_process():
        share = counts / max(int(counts.sum()), 1)
        log.info("loss weights (inverse_sqrt_frequency of the pseudo labels' pixels): %s", ", ".join(
            f"{n} {w:.2f} ({100 * f:.1f} %)" for n, w, f in zip(train_set.class_names, weights.tolist(), share,
                                                                strict=True)))
    return weights


def train_seg(cfg: SegTrainConfig, out_dir: str | os.PathLike, images: Any | None = None) -> Path:
    """Train a segmentation network on pseudo masks; returns the path of the final checkpoint
    (``out_dir/checkpoints/final.pt``, or ``last.pt`` when stopped early by ``engine.stop_after``).

    ``images``: the training split when the caller loaded and checked it already (``sipe run``: unusable
    images dropped once for every stage); read from ``cfg.data`` when ``None``. Not changed here.

    Every checkpoint holds ``"model"`` (state dict) and ``"meta"`` with ``model_spec``,
    ``class_names`` and the resolved ``seg_config``; :func:`sipe.seg.model.load_seg_checkpoint`
    rebuilds the network from any of them.
    """
    out_dir = Path(out_dir)
    cfg.pseudo_label_dir()  # set and present, before anything is loaded
    info = setup_distributed(cfg.engine.device)  # before any rank-dependent step below
    base = training_images(cfg, images)
    class_names = list(base.class_names)
    val_fn = validation_fn(cfg, class_names)
    arch = architecture(cfg.model.arch)
    # Same initial weights in every process and in a resumed run.
    torch.manual_seed(cfg.engine.seed)
    model = prepare_model(cfg, len(class_names), info.world_size, info.device)
    # After the network: its input normalisation may follow from its weights (deeplabv2, auto).
    train_set = PseudoLabelDataset(
        base, cfg.pseudo_labels, cfg.aug.crop_size, cfg.aug.scale_range, cfg.aug.flip, missing=cfg.missing_labels,
        normalization=input_normalization(model), scale_choices=cfg.aug.scale_choices,
    )
    spec = model_spec(cfg, model, class_names)
    class_weights = loss_weights(train_set, cfg.loss_weighting)
    if class_weights is not None:
        class_weights = class_weights.to(info.device)  # once, not at every step of the loss
    step_fn, groups = arch.step_fn(cfg, class_weights), arch.param_groups(model, cfg)
    if is_main_process():
        log.info(
            "training %s %s on %s (%d images, %d classes)", cfg.model.backbone, cfg.model.arch, base.source,
            len(train_set), len(class_names),
        )
    meta = {"model_spec": spec.to_dict(), "class_names": class_names, "seg_config": to_dict(cfg)}
    run_key = {"classes": class_names, "data": images_fingerprint(base),
               "model.arch": cfg.model.arch, "model.backbone": cfg.model.backbone}
    weights = None
    if cfg.sampling != "uniform":
        weights = sampling_weights(train_set.base, cfg.repeat_threshold)
        run_key["sampling"] = f"{cfg.sampling} {cfg.repeat_threshold:g}"  # another draw: not the same run
    if class_weights is not None:
        run_key["loss_weighting"] = cfg.loss_weighting
    fit(
        model, train_set, step_fn, groups, planned_engine(cfg.engine, len(train_set)), out_dir, val_fn=val_fn,
        val_name="validation segmentation mIoU", meta=meta,
        # config.yaml, run_info.json and skipped.tsv: written by fit once the rerun check passed.
        run_config=cfg,
        run_key=run_key, on_start=lambda: _write_skipped(out_dir, base.skipped, train_set.skipped),
        sample_weights=weights,
    )
    final = out_dir / "checkpoints" / "final.pt"
    return final if final.is_file() else out_dir / "checkpoints" / "last.pt"
