"""IS-CAM generation over a dataset (``sipe cam``): one file per image, atomic, resumable, sharded.

Outputs in ``out_dir``:
- ``is_cam/<name>.npz`` (default, ``keys`` int64, ``maps`` float16 (M, H, W), ``kind="is_cam"``) or
  ``is_cam/<name>.npy`` (the official layout, a pickled ``{"keys", "IS_CAM"}`` with float32 maps);
- ``cam/<name>.npz`` with the fused plain CAMs of the labelled classes (``kind="cam"``) when asked,
  for the CAM baseline that ``sipe eval --kind cam`` sweeps;
- ``overlays/<name>_<k>_<class>.png`` heat maps per class when asked.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from sipe.cams.multiscale import (
    DEFAULT_SCALES,
    fused_maps,
    prepare_for_inference,
    release_memory,
    scale_batch,
)
from sipe.cams.presence import labels_from_scores, scores_of_batch
from sipe.config import STRIDE
from sipe.core.sipe_net import SIPENet
from sipe.data.cam_format import write_cam_file
from sipe.data.image import ImageReadError, ImageTooSmallError, check_min_size
from sipe.data.skiplist import SkipCounter, write_skipped

logger = logging.getLogger("sipe.cams")

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class CamConfig:
    """Options of ``sipe cam`` (defaults: the official ``make_cam``)."""

    scales: tuple[float, ...] = DEFAULT_SCALES
    flip: bool = True
    format: str = "npz"  # "npz" (float16, compact) or "npy" (official layout, float32)
    save_cam: bool = False  # also the fused plain CAM (for the CAM baseline)
    overlays: bool = False
    precision: str = "fp32"  # "fp32", "bf16" (CPU and CUDA) or "fp16" (CUDA); IPE stays float32
    channels_last: bool = False
    fold_bn: bool = True  # fold frozen batch norms into the convolutions (same maps within ~1e-6, faster)
    num_workers: int = 2
    # Whose image-level labels select the IS-CAM channels: the dataset's, or the classifier's (its sigmoid
    # score above score_threshold), as for new images whose tags nobody knows.
    labels_from: str = "dataset"
    score_threshold: float = 0.5

    def __post_init__(self) -> None:
        if self.format not in ("npz", "npy"):
            raise ValueError(f"format must be 'npz' or 'npy', got {self.format!r}")
        if self.labels_from not in ("dataset", "classifier"):
            raise ValueError(f"labels_from must be 'dataset' or 'classifier', got {self.labels_from!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {self.precision!r}")
        self.scales = tuple(float(s) for s in self.scales)


def output_path(out_dir: str | os.PathLike, name: str, fmt: str = "npz") -> Path:
    """Where the IS-CAM of image ``name`` goes."""
    return Path(out_dir) / "is_cam" / f"{name}.{fmt}"


class _ScaledInputs(Dataset):
    """Decodes and rescales in DataLoader workers so that the network never waits for the CPU side."""

    def __init__(self, dataset: Any, indices: Sequence[int], scales: Sequence[float], flip: bool) -> None:
        self.dataset, self.indices, self.scales, self.flip = dataset, list(indices), scales, flip

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, Any]:
        idx = self.indices[i]
        name = self.dataset.names[idx]
        # Datasets other than sipe.data's may not know their files.
        path = str(self.dataset.image_path(idx)) if hasattr(self.dataset, "image_path") else ""
        try:
            image = self.dataset.read_image(idx)
            check_min_size(image, STRIDE, name=path or name)
        except ImageReadError as err:
            reason = "too small" if isinstance(err, ImageTooSmallError) else "unreadable"
            return {"name": name, "error": str(err), "reason": reason, "path": path}
        return {
            "name": name,
            "image": image,
            "labels": self.dataset.get_labels(idx),
            "inputs": [scale_batch(image, s, self.flip) for s in self.scales],
        }


def generate_cams(
    model: SIPENet,
    dataset: Any,
    out_dir: str | os.PathLike,
    cfg: CamConfig | None = None,
    rank: int = 0,
    world_size: int = 1,
) -> dict[str, Any]:
    """Write the multi-scale IS-CAM of every image of ``dataset`` this rank owns (every
    ``world_size``-th image from ``rank``), skipping images whose output already exists.

    ``dataset`` is a :class:`sipe.data.seg_dataset.SegDataset`. An image without labels (a negative) gets an
    all-background IS-CAM (the background channel alone) and an empty CAM file. With
    ``cfg.labels_from="classifier"`` the network's own scores choose the channels instead of the
    dataset's labels. Images that cannot be decoded or are
    smaller than the network stride are skipped and listed, with the dataset's own skips, in
    ``out_dir/skipped.tsv`` (``skipped_rank<r>.tsv`` under torchrun). Returns a summary dict
    (``written``, ``existing``, ``skipped``, ``skipped_names``).
    """
    cfg = cfg or CamConfig()
    out_dir = Path(out_dir)
    # A prepared copy: the caller's model is left as it was (trainable, same memory format).
    model = prepare_for_inference(model, channels_last=cfg.channels_last, fold_bn=None if cfg.fold_bn else False)
    autocast_dtype = PRECISIONS[cfg.precision]
    mine = list(range(rank, len(dataset), world_size))
    todo = [i for i in mine if not output_path(out_dir, dataset.names[i], cfg.format).exists()
            or (cfg.save_cam and not (out_dir / "cam" / f"{dataset.names[i]}.npz").exists())]
    existing = len(mine) - len(todo)
    if existing:
        logger.info("%d of %d images already done in %s; resuming", existing, len(mine), out_dir)
    loader = DataLoader(
        _ScaledInputs(dataset, todo, cfg.scales, cfg.flip),
        batch_size=None,
        num_workers=cfg.num_workers,
        pin_memory=next(model.parameters()).is_cuda,
    )
    skipped = SkipCounter("images")
    written = 0
    for item in tqdm(loader, total=len(todo), desc=f"IS-CAM (rank {rank})", disable=rank != 0, unit="img"):
        if "error" in item:
            skipped.add(item["name"], item["reason"], item["error"], path=item["path"])
            continue
        labels = item["labels"]
        if cfg.labels_from == "classifier":
            at_one = [x for s, x in zip(cfg.scales, item["inputs"], strict=True) if s == 1.0]
            x = at_one[0] if at_one else scale_batch(item["image"], 1.0, cfg.flip)
            labels = labels_from_scores(scores_of_batch(model, x), cfg.score_threshold)
        keys, is_cam, cam = fused_maps(
            model, item["image"], labels, item["inputs"], cfg.flip, autocast_dtype, cfg.save_cam
        )
        is_cam = is_cam.cpu().numpy()
        write_cam_file(output_path(out_dir, item["name"], cfg.format), keys, is_cam, "is_cam")
        if cam is not None:
            write_cam_file(out_dir / "cam" / f"{item['name']}.npz", keys[1:], cam.cpu().numpy(), "cam")
        if cfg.overlays:
            from sipe.vis import save_overlays

            save_overlays(out_dir / "overlays", item["name"], item["image"], is_cam, keys, dataset.class_names)
        written += 1
        del item, is_cam, cam
        release_memory()
    skipped.log(len(mine))
    write_skipped(out_dir, skipped, datasets=[dataset], rank=rank, world=world_size)  # + the dataset's drops
    return {"written": written, "existing": existing, "skipped": len(skipped), "skipped_names": skipped.names}
