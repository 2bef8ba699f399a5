"""IRN training (the official ``train_irn.py`` recipe) on top of :mod:`sipe.engine`.

Recipe: confident-region labels (``sipe refine crf-regions``) of ``train_aug``; random rescale
[0.5, 1.5], horizontal flip, random 512 crop (image padded with zeros after normalisation,
labels with 255); labels reduced to the stride-4 grid by nearest resizing; pairs within radius
10; batch 32, 3 epochs, poly SGD with lr 0.1 (boundary branch) and 1.0 (displacement branch),
weight decay 1e-4, effective momentum 1e-4 (the official optimiser quirk, see
:class:`sipe.engine.TrainConfig`), no gradient clipping. Afterwards the mean displacement over the
``train`` images (top-left 512 crop) is stored in the model's ``mean_shift``. The displacement branch and
its mean shift are trained only with ``irn.displacement=true``: SIPE's pseudo labels read the boundary branch
alone, which comes out the same to the bit either way (:class:`sipe.refine.irn.IRN`).
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from sipe.config.irn import IRNConfig
from sipe.data.skiplist import write_skipped
from sipe.engine.distributed import rank_and_world, shard_indices
from sipe.models.checkpoint import read_checkpoint, write_checkpoint
from sipe.models.layers import model_device
from sipe.refine.affinity import affinity_labels, pair_paths
from sipe.refine.irn import IRN, STRIDE, irn_losses

logger = logging.getLogger("sipe.refine")


def build_irn(backbone: str = "resnet50", weights: str | os.PathLike | None = None,
              options: dict[str, Any] | None = None, displacement: bool = True) -> IRN:
    """IRN on a registry backbone, frozen (statistics included): a ResNet (strides 2, 2, 2, 1), whose
    stem map the branches read besides the four stages, or a ``timm:<model>`` / ``module:function``
    backbone, whose first map stands in for the stem (:class:`sipe.refine.irn.IRN`).
    ``options``: keyword arguments of ``timm.create_model`` / the user's factory; ``displacement``: build the
    displacement branch too."""
    from sipe.models import build_backbone

    return IRN(build_backbone(backbone, weights, frozen_stages=4, freeze_bn=True, options=options),
               displacement=displacement)


def usable_images(dataset: Any, label_dir: str | os.PathLike | None = None) -> Any:
    """A copy of ``dataset`` without the images IRN cannot train on, dropped by name before any worker reads
    them (the caller's dataset and its skip list stay as they are).

    Unreadable images and those smaller than the backbone's stride (decoded once, cached:
    :meth:`sipe.data.SegDataset.drop_small`) and, with ``label_dir``, those the confident-region step
    skipped (its ``skipped.tsv``) are recorded in ``dataset.skipped``. An image with neither a label
    nor such a record is an error naming how many and the fix. Datasets without these methods (not
    :mod:`sipe.data`) are returned as they are.
    """
    from sipe.config import STRIDE as BACKBONE_STRIDE

    if hasattr(dataset, "drop_small"):  # a sipe dataset: narrowed on a copy
        dataset = dataset.copy()
        dataset.drop_small(BACKBONE_STRIDE)
    if label_dir is not None and hasattr(dataset, "drop_skipped_earlier"):
        dataset.drop_skipped_earlier(label_dir)
        absent = [n for n in dataset.names if not (Path(label_dir) / f"{n}.png").is_file()]
        if absent:
            raise FileNotFoundError(
                f"{len(absent)} of {len(dataset)} training images have no confident-region label in {label_dir} "
                f"(e.g. {', '.join(absent[:3])}); run `sipe refine crf-regions` for this split first or pass the "
                "right --label-dir"
            )
    return dataset


def _read_label(label_dir: Path, name: str, size: tuple[int, int]) -> np.ndarray:
    from sipe.data.image import read_label_png
    from sipe.data.labelmap import check_label_map

    path = label_dir / f"{name}.png"
    if not path.is_file():
        raise FileNotFoundError(
            f"no confident-region label {path}; run `sipe refine crf-regions` for this split first "
            "or pass the right --label-dir"
        )
    return check_label_map(read_label_png(path), path, size=size, what="confident-region label",
                           fix="regenerate the labels")


class IRNTrainSet(Dataset):
    """Training view: item ``(index, seed)`` -> augmented crop and its stride-4 label map.

    Returns ``image`` (3, S, S) float32 normalised (zero padding) and ``label`` (S/4, S/4) uint8
    (255 = ignore/padding); pair labels are computed from it on the device by the step.
    """

    def __init__(self, base: Any, label_dir: str | os.PathLike, cfg: IRNConfig) -> None:
        self.base = base
        self.label_dir = Path(label_dir)
        self.cfg = cfg

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, item: tuple[int, int]) -> dict[str, torch.Tensor]:
        from sipe.data.transforms import random_resize_flip_crop, rescale

        index, seed = item
        sample = self.base[index]
        label = _read_label(self.label_dir, sample["name"], sample["image"].shape[:2])
        out = random_resize_flip_crop(
            sample["image"], np.random.default_rng(seed), label=label, scale_range=self.cfg.scale_range,
            flip=self.cfg.flip, crop_size=self.cfg.crop_size,
        )
        reduced = rescale(out["label"], 1.0 / STRIDE, order=0)  # nearest, as the official pil_rescale
        return {"image": torch.from_numpy(out["image"]), "label": torch.from_numpy(np.array(reduced, dtype=np.uint8))}


def irn_step(model: nn.Module, batch: dict[str, torch.Tensor], radius: int = 10) -> dict[str, torch.Tensor]:
    """One IRN training forward: batch ``image`` (N, 3, S, S), ``label`` (N, S/4, S/4); the displacement
    losses are 0 for an IRN without that branch."""
    edge, disp = model(batch["image"])
    bg_pos, fg_pos, neg = affinity_labels(batch["label"], radius)
    return irn_losses(edge, disp, bg_pos, fg_pos, neg, radius)


class _TopLeftView(Dataset):
    """Images normalised and placed in the top-left of an (S, S) zero canvas (official crop)."""

    def __init__(self, base: Any, indices: list[int], crop_size: int) -> None:
        self.base, self.indices, self.crop_size = base, indices, crop_size

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> torch.Tensor:
        from sipe.data.transforms import normalize

        image = self.base[self.indices[i]]["image"][: self.crop_size, : self.crop_size]
        out = np.zeros((3, self.crop_size, self.crop_size), np.float32)
        out[:, : image.shape[0], : image.shape[1]] = normalize(np.ascontiguousarray(image))
        return torch.from_numpy(out)


@torch.no_grad()
def estimate_mean_shift(
    model: IRN, dataset: Any, *, crop_size: int = 512, batch_size: int = 8, num_workers: int = 2
) -> torch.Tensor:
    """Mean raw predicted displacement (2,) over ``dataset`` (top-left crops, zero padded).

    The model's own ``mean_shift`` is left as it was.

    Under torch.distributed every rank takes every world-th image and the per-image means are
    summed over ranks, so the result does not depend on the number of processes.
    """
    if not model.displacement:
        raise ValueError("this IRN has no displacement branch (irn.displacement=false): there is no mean shift")
    rank, world = rank_and_world()
    device = model_device(model)
    was_training = model.training
    model.eval()
    kept = model.mean_shift.clone()
    model.mean_shift.zero_()  # the raw displacement is averaged
    view = _TopLeftView(dataset, shard_indices(len(dataset), rank, world), crop_size)
    loader = DataLoader(view, batch_size=batch_size, num_workers=num_workers)
    total = torch.zeros(3, dtype=torch.float64, device=device)  # sum dy, sum dx, images
    for images in tqdm(loader, desc="mean displacement", disable=rank != 0, dynamic_ncols=True):
        _, disp = model(images.to(device))
        total[:2] += disp.double().mean(dim=(2, 3)).sum(dim=0)
        total[2] += disp.shape[0]
    if world > 1:
        dist.all_reduce(total)
    model.mean_shift.copy_(kept)
    model.train(was_training)
    if total[2] == 0:
        raise ValueError("cannot estimate the mean displacement: the dataset is empty")
    return (total[:2] / total[2]).float()


def irn_meta(cfg: IRNConfig) -> dict[str, Any]:
    """The ``meta`` entry of IRN checkpoints: what :func:`load_irn` rebuilds the network from."""
    return {"kind": "irn", "backbone": cfg.backbone, "backbone_options": dict(cfg.backbone_options or {}),
            "radius": cfg.radius, "displacement": cfg.displacement}


def save_irn(model: IRN, path: str | os.PathLike, cfg: IRNConfig) -> None:
    """Write the trained IRN (weights with the mean shift, backbone name, config) atomically."""
    from sipe.config import to_dict

    write_checkpoint(path, model.state_dict(), irn_meta(cfg), config=to_dict(cfg))


def load_irn(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> IRN:
    """Rebuild an IRN saved by :func:`save_irn` (or an engine checkpoint of :func:`train_irn`)."""
    ckpt = read_checkpoint(path, map_location, made_by="sipe refine train-irn")
    if "model" not in ckpt:
        raise ValueError(f"{path} is not an IRN checkpoint written by sipe (no 'model' entry)")
    meta = ckpt.get("meta") or {}
    backbone = meta.get("backbone")
    if backbone is None:
        raise ValueError(f"{path} does not name its backbone (meta.backbone); it was not written by sipe IRN")
    # Files written before these keys: no options, and the displacement branch was always trained.
    model = build_irn(backbone, weights=None, options=meta.get("backbone_options"),
                      displacement=meta.get("displacement", True))
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        raise ValueError(f"{path} does not hold IRN weights for {backbone}: {exc}") from exc
    return model


def train_irn(
    train_set: Any,
    label_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    cfg: IRNConfig | None = None,
    *,
    mean_set: Any | None = None,
    model: IRN | None = None,
) -> Path:
    """Train IRN on ``train_set`` with confident-region labels from ``label_dir``.

    Writes the engine's checkpoints/TensorBoard logs under ``out_dir`` and the final model with
    its mean shift (estimated over ``mean_set``, default ``train_set``) as ``out_dir/irn.pt``.
    Resumes an interrupted run. Under torchrun: DDP with the same result as one process.
    Images that cannot be used are left out by name first (:func:`usable_images`, on copies: the
    caller's datasets stay as they are) and listed in ``out_dir/skipped.tsv``.

    Args:
        train_set: dataset of dicts with ``image`` and ``name`` (``sipe.data``).
        model: an IRN to train (default: built from ``cfg.backbone`` / ``cfg.weights``).

    Returns:
        The path of the trained IRN, ``out_dir/irn.pt`` (:func:`load_irn` reads it).
    """
    from sipe.config import to_dict
    from sipe.engine import fit, is_main_process  # noqa: I001 (kept local: heavy import chain)

    cfg = cfg or IRNConfig()
    out_dir = Path(out_dir)
    done = out_dir / "irn.pt"
    if model is None and cfg.engine.resume and done.is_file():
        # irn.pt is written last and atomically: it exists only when training and the mean shift are done.
        saved = read_checkpoint(done, made_by="sipe refine train-irn").get("config")
        if isinstance(saved, dict):
            saved = {"backbone_options": None, "displacement": True, **saved}  # written before the keys existed
        if saved == to_dict(cfg):
            logger.info("IRN already trained with this config: %s (engine.resume=false retrains)", done)
            return done
        logger.info("%s was trained with another config; training again", done)
    pair_paths(cfg.radius)  # validates the radius early
    train_set = usable_images(train_set, label_dir)  # data errors before the (slow) model build
    if mean_set is not None:
        mean_set = usable_images(mean_set)
    if model is None:
        # Seeded, so that the branches start the same whatever ran before in this process: a run redone or
        # resumed from this stage trains the IRN an uninterrupted run trains (and every rank the same one).
        torch.manual_seed(cfg.engine.seed)
        model = build_irn(cfg.backbone, cfg.weights, options=cfg.backbone_options, displacement=cfg.displacement)
    elif model.displacement != cfg.displacement:
        raise ValueError(f"the IRN given was built with displacement={model.displacement}, the config says "
                         f"displacement={cfg.displacement}; build it with the config's setting")
    data = IRNTrainSet(train_set, label_dir, cfg)
    step = functools.partial(irn_step, radius=cfg.radius)
    # config.yaml and run_info.json are written by fit once the rerun check passed.
    names = train_set.names if hasattr(train_set, "names") else [item["name"] for item in train_set]
    run_key = {"labels": label_fingerprint(label_dir, names), "backbone": cfg.backbone}

    def write_skipped_list() -> None:  # by fit on rank 0, once the rerun check passed
        write_skipped(out_dir, datasets=[train_set, mean_set])  # an image of both splits is listed once

    model = fit(model, data, step, model.param_groups(cfg.dp_lr_mult), cfg.engine, out_dir,
                meta=irn_meta(cfg), run_config=cfg, run_key=run_key, on_start=write_skipped_list)
    if model.displacement:  # without the branch there is no displacement to centre
        shift = estimate_mean_shift(model, mean_set if mean_set is not None else train_set,
                                    crop_size=cfg.crop_size, batch_size=cfg.mean_batch_size,
                                    num_workers=cfg.engine.num_workers)
        model.mean_shift.copy_(shift)
    if is_main_process():
        save_irn(model, out_dir / "irn.pt", cfg)
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
    return done


def label_fingerprint(label_dir: str | os.PathLike, names: Any) -> str:
    """What identifies the training labels of an IRN run wherever its folders lie: the image names and
    the bytes of their label files (not the folder's path, so that a run folder can be moved)."""
    import hashlib

    h = hashlib.sha1()
    for name in names:
        path = Path(label_dir) / f"{name}.png"
        h.update(f"{name}:".encode())
        h.update(path.read_bytes() if path.is_file() else b"-")
    return f"{len(names)} labels {h.hexdigest()[:16]}"
