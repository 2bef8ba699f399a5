"""Segmentation masks for images: multi-scale + flip inference, and label PNGs / overlays on disk.

Two sources of masks share the writers here: a trained segmentation network
(:func:`predict_image`, :func:`predict_paths`) and, when the image-level labels are known, SIPE's
IS-CAM (:func:`is_cam_label`, :func:`predict_paths_is_cam`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from sipe import io as sio
from sipe.data.base import SkipCounter
from sipe.data.image import ImageReadError, read_image
from sipe.seg.model import image_to_tensor
from sipe.seg.norm import input_normalization
from sipe.vis import label_overlay

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm")


def model_device(model: nn.Module) -> torch.device:
    """The device of the first parameter or buffer of ``model`` (CPU for a module without any)."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def seg_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(N, K, H, W) logits of a segmentation network: the ``"out"`` of a torchvision model, or its output."""
    out = model(x)
    return out["out"] if isinstance(out, Mapping) else out


@torch.no_grad()
def predict_probs(
    model: nn.Module,
    image: np.ndarray,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    autocast_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Class probabilities of one image averaged over scales (and horizontal flips).

    image: (H, W, 3) uint8 RGB, normalised as the model expects (its ``input_norm``, ImageNet when
    it has none). Each scale resizes the normalised image bilinearly to
    ``round(H*s) x round(W*s)``; the softmax of each pass is resized back to (H, W) and averaged.
    Returns (K, H, W) float32 on the model's device. The model is run in eval mode and its
    train/eval state is restored afterwards.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be an (H, W, 3) uint8 array, got {image.dtype} {image.shape}")
    if not scales:
        raise ValueError("give at least one scale")
    h, w = image.shape[:2]
    device = model_device(model)
    x = image_to_tensor(image, device, input_normalization(model))
    was_training = model.training
    model.eval()
    total = None
    try:
        for s in scales:
            size = (max(1, round(h * s)), max(1, round(w * s)))
            xs = x if size == (h, w) else F.interpolate(x, size, mode="bilinear", align_corners=False, antialias=s < 1)
            batch = torch.cat([xs, xs.flip(-1)]) if flip else xs
            with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                logits = seg_logits(model, batch)
            probs = logits.float().softmax(1)
            if flip:
                probs = probs[:1] + probs[1:].flip(-1)
            if probs.shape[-2:] != (h, w):
                probs = F.interpolate(probs, (h, w), mode="bilinear", align_corners=False)
            total = probs[0] if total is None else total + probs[0]
    finally:
        model.train(was_training)
    return total / (len(scales) * (2 if flip else 1))


def predict_image(
    model: nn.Module,
    image: np.ndarray,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    autocast_dtype: torch.dtype | None = None,
) -> np.ndarray:
    """(H, W) int64 class map of an (H, W, 3) uint8 RGB image (argmax of :func:`predict_probs`)."""
    return predict_probs(model, image, scales, flip, autocast_dtype).argmax(0).cpu().numpy()


def is_cam_label(
    model: nn.Module,
    image: np.ndarray,
    labels: np.ndarray,
    scales: Sequence[float] | None = None,
    flip: bool = True,
) -> np.ndarray:
    """(H, W) int64 class map from SIPE's multi-scale IS-CAM: argmax over the kept channels, mapped
    through their class ids. image (H, W, 3) uint8; labels (K-1,) multi-hot foreground classes."""
    from sipe.inference import DEFAULT_SCALES, multiscale_is_cam

    keys, maps = multiscale_is_cam(
        model, image, labels, scales=DEFAULT_SCALES if scales is None else scales, flip=flip
    )
    return np.asarray(keys)[np.argmax(maps, axis=0)]


def labels_from_names(names: Iterable[str], class_names: Sequence[str]) -> np.ndarray:
    """(K-1,) float32 multi-hot over the foreground classes of ``class_names`` from class names."""
    fg = list(class_names[1:])
    out = np.zeros(len(fg), dtype=np.float32)
    for n in names:
        n = n.strip()
        if not n:
            continue
        if n not in fg:
            raise ValueError(f"unknown class {n!r}; the model knows: {', '.join(fg)}")
        out[fg.index(n)] = 1.0
    if not out.any():
        raise ValueError("give at least one foreground class name (e.g. --labels cat,sofa)")
    return out


def collect_images(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Files given, plus the image files (by suffix, sorted) in each folder given (not recursive).

    Raises ``FileNotFoundError`` for a path that does not exist and ``ValueError`` when nothing is found.
    """
    out: list[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            out.extend(sorted(q for q in p.iterdir() if q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES))
        elif p.exists():
            out.append(p)
        else:
            raise FileNotFoundError(f"input {p} does not exist; pass image files or folders of images")
    if not out:
        raise ValueError(f"no images found in {[str(p) for p in paths]} (suffixes {', '.join(IMAGE_SUFFIXES)})")
    return out


@dataclass
class PredictResult:
    """What :func:`predict_paths` wrote: ``labels`` (palette PNGs), ``overlays`` and the ``skipped`` inputs."""

    labels: list[Path] = field(default_factory=list)
    overlays: list[Path] = field(default_factory=list)
    skipped: SkipCounter = field(default_factory=lambda: SkipCounter("images"))


def _write_predictions(
    label_fn: Callable[[np.ndarray], np.ndarray],
    paths: Iterable[str | os.PathLike],
    out_dir: str | os.PathLike,
    overlay: bool,
    alpha: float,
) -> PredictResult:
    files = collect_images(paths)
    stems: dict[str, Path] = {}
    for f in files:
        if f.stem in stems:
            raise ValueError(
                f"{stems[f.stem]} and {f} would both be written as {f.stem}.png; predict them into "
                "separate output folders"
            )
        stems[f.stem] = f
    out_dir = Path(out_dir)
    result = PredictResult()
    for f in tqdm(files, desc="predict", unit="img", disable=len(files) < 2):
        try:
            image = read_image(f)
        except ImageReadError as e:
            result.skipped.add(str(f), "unreadable", str(e))
            continue
        label = label_fn(image)
        target = out_dir / f"{f.stem}.png"
        sio.save_label_png(target, label)
        result.labels.append(target)
        if overlay:
            target = out_dir / "overlay" / f"{f.stem}.jpg"
            sio.save_image(target, label_overlay(image, label, alpha))
            result.overlays.append(target)
    result.skipped.log(len(files))
    return result


def predict_paths(
    model: nn.Module,
    paths: Iterable[str | os.PathLike],
    out_dir: str | os.PathLike,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    overlay: bool = True,
    alpha: float = 0.5,
    autocast_dtype: torch.dtype | None = None,
) -> PredictResult:
    """Segment image files (and the images in folders) with a segmentation network.

    Writes ``out_dir/<stem>.png`` (palette PNG in the VOC colours, pixel value = class index) and,
    with ``overlay``, ``out_dir/overlay/<stem>.jpg`` (the colours blended over the photo with
    weight ``alpha``). Unreadable files are skipped, logged and counted in ``result.skipped``.
    """
    return _write_predictions(
        lambda im: predict_image(model, im, scales, flip, autocast_dtype), paths, out_dir, overlay, alpha
    )


def predict_paths_is_cam(
    model: nn.Module,
    paths: Iterable[str | os.PathLike],
    labels: np.ndarray,
    out_dir: str | os.PathLike,
    scales: Sequence[float] | None = None,
    flip: bool = True,
    overlay: bool = True,
    alpha: float = 0.5,
) -> PredictResult:
    """As :func:`predict_paths`, with masks from a SIPE network's IS-CAM for the given image-level
    ``labels`` ((K-1,) multi-hot, the same for every image; see :func:`labels_from_names`)."""
    labels = np.asarray(labels, dtype=np.float32)
    return _write_predictions(
        lambda im: is_cam_label(model, im, labels, scales, flip), paths, out_dir, overlay, alpha
    )
