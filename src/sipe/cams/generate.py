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
    fused_maps_batch,
    prepare_for_inference,
    release_memory,
    rescale_image,
    to_tensor,
    with_flip,
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
    # Images of one size that go through the backbone together at scale 1.0 (fewer at larger scales, see
    # sipe.cams.multiscale.batch_chunk); IPE still runs per image. 1: one image (and its flip) at a time.
    batch_images: int = 1
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
        if not isinstance(self.batch_images, int) or self.batch_images < 1:
            raise ValueError(f"batch_images must be an integer >= 1, got {self.batch_images!r}")
        self.scales = tuple(float(s) for s in self.scales)


def output_path(out_dir: str | os.PathLike, name: str, fmt: str = "npz") -> Path:
    """Where the IS-CAM of image ``name`` goes."""
    return Path(out_dir) / "is_cam" / f"{name}.{fmt}"


class _ScaledInputs(Dataset):
    """Decodes and rescales in DataLoader workers so that the network never waits for the CPU side."""

    def __init__(self, dataset: Any, indices: Sequence[int], scales: Sequence[float]) -> None:
        self.dataset, self.indices, self.scales = dataset, list(indices), scales

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
            # Without the flips (made where the batch is put together): half the memory to pass and hold.
            "inputs": [to_tensor(rescale_image(image, s)) for s in self.scales],
        }


class _SizeGroups:
    """Decoded images waiting for others of their (H, W) so that they share the backbone's batches.

    A group leaves when it holds ``batch`` images. When more than ``2 * batch`` images wait, the
    smallest group leaves as it is (the one waiting longest among equals): images of a rare size go
    one by one, and the memory held stays bounded. :meth:`drain` empties the rest at the end.
    """

    def __init__(self, batch: int) -> None:
        self.batch, self.limit = batch, 2 * batch
        self.groups: dict[tuple[int, int], list[dict[str, Any]]] = {}
        self.pending = 0

    def _pop(self, key: tuple[int, int]) -> list[dict[str, Any]]:
        group = self.groups.pop(key)
        self.pending -= len(group)
        return group

    def add(self, item: dict[str, Any]) -> list[list[dict[str, Any]]]:
        """Queue ``item``; return the groups ready to run (possibly none)."""
        key = tuple(item["image"].shape[:2])
        self.groups.setdefault(key, []).append(item)
        self.pending += 1
        ready = [self._pop(key)] if len(self.groups[key]) >= self.batch else []
        while self.pending > self.limit:
            ready.append(self._pop(min(self.groups, key=lambda k: len(self.groups[k]))))
        return ready

    def drain(self) -> list[list[dict[str, Any]]]:
        """Every group still waiting."""
        return [self._pop(k) for k in list(self.groups)]


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
    dataset's labels. With ``cfg.batch_images`` > 1, images of the same size share the backbone's
    batches (:class:`_SizeGroups`; files are then written out of dataset order). Images that cannot be decoded or are
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
        _ScaledInputs(dataset, todo, cfg.scales),
        batch_size=None,
        num_workers=cfg.num_workers,
        pin_memory=next(model.parameters()).is_cuda,
    )
    skipped = SkipCounter("images")
    written = 0
    groups = _SizeGroups(cfg.batch_images)
    bar = tqdm(total=len(todo), desc=f"IS-CAM (rank {rank})", disable=rank != 0, unit="img")
    for item in loader:
        if "error" in item:
            skipped.add(item["name"], item["reason"], item["error"], path=item["path"])
            bar.update(1)
            continue
        if cfg.labels_from == "classifier":
            item["labels"] = _classifier_labels(model, item, cfg)
        for group in groups.add(item):
            written += _write_group(model, dataset, out_dir, cfg, group, autocast_dtype)
            bar.update(len(group))
    for group in groups.drain():
        written += _write_group(model, dataset, out_dir, cfg, group, autocast_dtype)
        bar.update(len(group))
    bar.close()
    skipped.log(len(mine))
    write_skipped(out_dir, skipped, datasets=[dataset], rank=rank, world=world_size)  # + the dataset's drops
    return {"written": written, "existing": existing, "skipped": len(skipped), "skipped_names": skipped.names}


def _classifier_labels(model: SIPENet, item: dict[str, Any], cfg: CamConfig) -> Any:
    """(K-1,) multi-hot: the classes the network's classifier finds in the item's image (scale 1.0 + flip)."""
    at_one = [x for s, x in zip(cfg.scales, item["inputs"], strict=True) if s == 1.0]
    x = at_one[0] if at_one else to_tensor(item["image"])
    return labels_from_scores(scores_of_batch(model, with_flip(x, cfg.flip)), cfg.score_threshold)


def _write_group(
    model: SIPENet, dataset: Any, out_dir: Path, cfg: CamConfig, group: list[dict[str, Any]],
    autocast_dtype: torch.dtype | None,
) -> int:
    """IS-CAM (and CAM, overlay) files of a group of decoded images; returns how many were written."""
    results = fused_maps_batch(
        model, [it["image"] for it in group], [it["labels"] for it in group], [it["inputs"] for it in group],
        cfg.scales, cfg.flip, autocast_dtype, cfg.save_cam, cfg.batch_images,
    )
    for item, (keys, is_cam, cam) in zip(group, results, strict=True):
        is_cam = is_cam.cpu().numpy()
        write_cam_file(output_path(out_dir, item["name"], cfg.format), keys, is_cam, "is_cam")
        if cam is not None:
            write_cam_file(out_dir / "cam" / f"{item['name']}.npz", keys[1:], cam.cpu().numpy(), "cam")
        if cfg.overlays:
            from sipe.vis import save_overlays

            save_overlays(out_dir / "overlays", item["name"], item["image"], is_cam, keys, dataset.class_names)
    del results
    release_memory()
    return len(group)
