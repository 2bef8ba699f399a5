"""Which classes an image holds, when nobody says: the SIPE classifier's scores, and class names.

The classifier is trained with a multi-label soft-margin loss (a sigmoid per class), so the sigmoid
of its global-average-pooled score is its belief that the class is in the image. A class counts
as present above a threshold (``method.score_threshold`` of the checkpoint, 0.5 by default).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch

from sipe import io as sio
from sipe.cams.multiscale import model_memory_format, scale_batch
from sipe.core.sipe_net import SIPENet
from sipe.errors import UsageError
from sipe.models.layers import model_device

__all__ = ["classifier_scores", "labels_from_names", "labels_from_scores", "scores_of_batch", "write_presence"]

MAX_PRESENCE_IMAGES = 1000  # enough for a score distribution per class; a larger split is sampled evenly


@torch.no_grad()
def scores_of_batch(model: SIPENet, x: torch.Tensor) -> torch.Tensor:
    """(K-1,) float32 sigmoid scores of one image from its network input ``x`` (1 or 2, 3, H, W): the
    image, or the image and its horizontal flip (their pooled logits averaged)."""
    was_training = model.training
    model.eval()
    try:
        x = x.to(model_device(model)).contiguous(memory_format=model_memory_format(model))
        logits = model.features(x).raw_cam.float().mean(dim=(2, 3))
    finally:
        model.train(was_training)
    return torch.sigmoid(logits.mean(0))


def classifier_scores(model: SIPENet, image: np.ndarray, flip: bool = True) -> np.ndarray:
    """(K-1,) float32 in [0, 1]: the classifier's belief that each foreground class is in ``image``
    ((H, W, 3) uint8 RGB, at its own size; with ``flip`` averaged with the mirrored image)."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be an (H, W, 3) uint8 array, got {image.shape} {image.dtype}")
    return scores_of_batch(model, scale_batch(image, 1.0, flip)).cpu().numpy()


def labels_from_scores(scores: np.ndarray | torch.Tensor, threshold: float = 0.5) -> np.ndarray:
    """(K-1,) float32 multi-hot: the classes whose score (K-1,) exceeds ``threshold`` (none for a negative)."""
    return (np.asarray(torch.as_tensor(scores).cpu()) > threshold).astype(np.float32)


def labels_from_names(
    names: Iterable[str], class_names: Sequence[str], allow_empty: bool = False
) -> np.ndarray:
    """(K-1,) float32 multi-hot over the foreground classes of ``class_names`` from class names.

    Raises :class:`sipe.errors.UsageError` naming a class the model does not know, and, unless
    ``allow_empty`` (an image known to hold none of the classes), when no class is named.
    """
    fg = list(class_names[1:])
    out = np.zeros(len(fg), dtype=np.float32)
    for n in names:
        n = n.strip()
        if not n:
            continue
        if n not in fg:
            raise UsageError(f"unknown class {n!r}; the model knows: {', '.join(fg)}")
        out[fg.index(n)] = 1.0
    if not out.any() and not allow_empty:
        raise UsageError("give at least one foreground class name (e.g. --labels cat,sofa)")
    return out


def write_presence(
    model: SIPENet, dataset: Any, path: str | os.PathLike, threshold: float = 0.5,
    max_images: int = MAX_PRESENCE_IMAGES, flip: bool = True,
) -> dict[str, Any]:
    """Score the images of ``dataset`` (``names``, ``read_image(i)``, ``get_labels(i)``, ``class_names``)
    with the classifier and write ``path`` atomically as JSON: ``{"class_names": [fg...], "score_threshold",
    "images_total", "images": [{"name", "tags", "scores"}]}`` (the report's ``presence.json``: whether the
    classifier tells the images with a tag from those without, and which untagged images it would tag).
    At most ``max_images`` images, evenly spaced over the dataset; scores as :func:`classifier_scores`.
    Returns the data written."""
    n = len(dataset)
    picks = np.unique(np.linspace(0, n - 1, min(n, max_images)).round().astype(int)) if n else []
    fg = list(dataset.class_names[1:])
    images = []
    for i in picks:
        scores = classifier_scores(model, dataset.read_image(int(i)), flip)
        tags = [fg[k] for k in np.flatnonzero(np.asarray(dataset.get_labels(int(i))) > 0)]
        images.append({"name": dataset.names[int(i)], "tags": tags, "scores": [round(float(x), 6) for x in scores]})
    data = {"class_names": fg, "score_threshold": float(threshold), "images_total": n, "images": images}
    sio.write_text(path, json.dumps(data, indent=1) + "\n")
    return data
