"""``sipe.Predictor``: masks for images from a checkpoint of either kind, in one object (notebooks and
``sipe predict`` alike, so the two cannot disagree).

    >>> from sipe import Predictor
    >>> p = Predictor.from_checkpoint("runs/voc/checkpoints/final.pt", device="cpu")
    >>> out = p.predict("cat.jpg")               # SIPE: the classifier decides which classes are present
    >>> out.mask.shape, out.class_names[1:], out.scores
    >>> outs = p.predict(["a.jpg", "b.jpg"], labels=["cat"])   # or say which classes are in the images

A segmentation checkpoint (``sipe seg train``) predicts every class itself; a SIPE checkpoint
(``sipe train``, or the authors') gives the argmax of the multi-scale IS-CAM over the background and
the image's classes: the ``labels`` given, else those whose classifier score (sigmoid) exceeds
``score_threshold`` (default: the checkpoint's ``method.score_threshold``, 0.5). An image the
classifier finds no class in is all background.
"""

from __future__ import annotations

import os

# As the sipe command does (sipe.cli): OpenMP threads that spin while waiting stall badly on shared cores
# (a notebook's Predictor measured 4.5x slower than `sipe predict` on the same checkpoint without it). Only
# takes effect when torch is not imported yet; an explicit setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import json  # noqa: E402
import logging  # noqa: E402
from collections import Counter  # noqa: E402
from collections.abc import Mapping, Sequence  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image, ImageOps  # noqa: E402
from torch import nn  # noqa: E402

from sipe.cams.multiscale import multiscale_is_cam  # noqa: E402
from sipe.cams.presence import classifier_scores, labels_from_names, labels_from_scores  # noqa: E402
from sipe.config import STRIDE, MethodConfig  # noqa: E402
from sipe.data.cam_format import is_cam_to_label  # noqa: E402
from sipe.data.image import check_min_size, read_image, to_rgb_array  # noqa: E402
from sipe.errors import InputError, UsageError  # noqa: E402
from sipe.vis import PredictResult, write_label_maps  # noqa: E402

__all__ = ["SCORES_FILE", "ImageLike", "Prediction", "Predictor", "prediction_summary", "sipe_class_names"]

SCORES_FILE = "scores.json"  # predict_files: {"class_names": [fg...], "images": [{"name", "labels", "scores"}]}

logger = logging.getLogger("sipe.predict")

#: An image file path, a PIL image or an (H, W, 3) uint8 RGB array.
ImageLike = str | os.PathLike | Image.Image | np.ndarray


@dataclass
class Prediction:
    """One image's prediction.

    Attributes:
        mask: (H, W) uint8 class indices into ``class_names`` (H, W: the image upright, after EXIF).
        class_names: the K class names, ``"background"`` first.
        maps: (K, H, W) float32 per-class maps: a segmentation network's class probabilities, or SIPE's
            IS-CAM (each channel max-normalised to [0, 1]; zero for the classes not in ``labels``).
        labels: the foreground classes the mask may hold: SIPE, the given or decided image-level
            classes; segmentation, the classes present in the mask.
        scores: (K-1,) float32 sigmoid classifier scores of the foreground classes (SIPE), else ``None``.
        error: why this image of a list could not be predicted (then ``mask`` is (0, 0), ``maps`` (K, 0, 0)),
            else ``None``.
    """

    mask: np.ndarray
    class_names: list[str]
    maps: np.ndarray
    labels: list[str]
    scores: np.ndarray | None = None
    error: str | None = None


def sipe_class_names(meta: Mapping[str, Any], num_classes: int, given: Sequence[str] | None = None) -> list[str]:
    """The K class names of a SIPE checkpoint: ``given`` (foreground, or with ``"background"`` first),
    else the names stored in its meta, else the VOC classes for a 21-class checkpoint.

    Raises :class:`sipe.errors.InputError` when none are known, :class:`sipe.errors.UsageError` when
    ``given`` has the wrong count.
    """
    from sipe.data import VOC_CLASSES

    inner = meta.get("meta") if isinstance(meta.get("meta"), Mapping) else {}
    if given:
        names = [c.strip() for c in given if c.strip()]
        if names and names[0] != "background":
            names = ["background", *names]
    elif meta.get("class_names") or inner.get("class_names"):
        # sipe checkpoints keep them in the engine's "meta" entry; older layouts at the top level.
        names = list(meta.get("class_names") or inner["class_names"])
    elif num_classes == len(VOC_CLASSES):
        logger.warning("the checkpoint stores no class names; using the 20 VOC classes")
        names = list(VOC_CLASSES)
    else:
        raise InputError(
            f"the checkpoint stores no class names and has {num_classes} classes; pass --class-names a,b,c "
            f"(in Python class_names=[...]; {num_classes - 1} foreground classes in training order)"
        )
    if len(names) != num_classes:
        raise UsageError(f"{len(names)} class names (with background) for a {num_classes}-class checkpoint")
    return names


def as_rgb_image(image: ImageLike) -> np.ndarray:
    """(H, W, 3) uint8 RGB from a file path (read as ``sipe predict`` reads it), a PIL image (EXIF
    orientation applied, any colour mode converted) or an (H, W, 3) uint8 array (used as is)."""
    if isinstance(image, (str, os.PathLike)):
        return read_image(image)
    if isinstance(image, Image.Image):
        return to_rgb_array(ImageOps.exif_transpose(image))
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
        raise ValueError(f"image must be a path, a PIL image or an (H, W, 3) uint8 array, got "
                         f"{array.dtype} {array.shape}")
    return array


class Predictor:
    """Masks for images from a SIPE or a segmentation network (see the module docstring).

    Args:
        model: a :class:`sipe.core.sipe_net.SIPENet` (``kind="sipe"``) or a segmentation network
            (``kind="seg"``), on the device to run on.
        kind: ``"sipe"`` or ``"seg"``.
        class_names: the K class names, background first.
        scales: test scales (SIPE default: the official IS-CAM scales; segmentation: ``(1.0,)``).
        flip: average with the horizontally flipped image.
        score_threshold: SIPE: a class is present when its sigmoid score exceeds this.
    """

    def __init__(
        self,
        model: nn.Module,
        kind: str,
        class_names: Sequence[str],
        scales: Sequence[float] | None = None,
        flip: bool = True,
        score_threshold: float = 0.5,
    ) -> None:
        if kind not in ("sipe", "seg"):
            raise ValueError(f"kind must be 'sipe' or 'seg', got {kind!r}")
        if not 0.0 <= score_threshold < 1.0:
            raise UsageError(f"the score threshold must be in [0, 1), got {score_threshold}")
        self.model = model.eval()
        self.kind = kind
        self.class_names = list(class_names)
        self.scales = tuple(scales) if scales else (MethodConfig().cam_scales if kind == "sipe" else (1.0,))
        self.flip = flip
        self.score_threshold = float(score_threshold)

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike,
        device: str | torch.device = "auto",
        scales: Sequence[float] | None = None,
        flip: bool = True,
        score_threshold: float | None = None,
        class_names: Sequence[str] | None = None,
    ) -> Predictor:
        """A predictor for a checkpoint of either kind: ``sipe train``'s (or the authors' ``final.pth``)
        or ``sipe seg train``'s.

        ``device``: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda:N"`` or a ``torch.device``.
        SIPE checkpoints: ``scales`` and ``score_threshold`` default to the checkpoint's
        ``method.cam_scales`` and ``method.score_threshold``; ``class_names`` is needed only when the
        checkpoint stores none (the authors' files: VOC's are assumed for 21 classes).
        """
        from sipe.engine import resolve_device
        from sipe.models.checkpoint import checkpoint_kind, read_checkpoint, sipe_model_from_checkpoint
        from sipe.seg.model import seg_model_from_checkpoint

        dev = device if isinstance(device, torch.device) else resolve_device(str(device))
        ckpt = read_checkpoint(path, made_by="sipe train' or 'sipe seg train")
        if checkpoint_kind(ckpt) == "seg":
            if score_threshold is not None:
                raise UsageError("a score threshold applies to SIPE checkpoints; this is a segmentation checkpoint, "
                                 "which predicts every class by itself (drop it)")
            model, spec = seg_model_from_checkpoint(ckpt, str(path))
            names = list(class_names or spec.class_names or
                         ["background", *(f"class{i}" for i in range(1, spec.num_classes))])
            if names[0] != "background":
                names = ["background", *names]
            return cls(model.to(dev), "seg", names, scales or (1.0,), flip)
        model, meta = sipe_model_from_checkpoint(ckpt, f"checkpoint {path}")
        method = MethodConfig.from_checkpoint(meta)
        names = sipe_class_names(meta, model.num_classes, class_names)
        threshold = method.score_threshold if score_threshold is None else score_threshold
        from sipe.cams.multiscale import prepare_for_inference

        # As `sipe cam` runs it: channels-last, batch norm folded (about 2x on CPU, maps within 1e-5).
        model = prepare_for_inference(model.to(dev), inplace=True)
        return cls(model, "sipe", names, scales or method.cam_scales, flip, threshold)

    # ------------------------------------------------------------------ prediction
    def label_vector(self, labels: Sequence[str]) -> np.ndarray:
        """(K-1,) multi-hot of class names (empty: an image with none of the classes). Raises
        :class:`sipe.errors.UsageError` for a class the model does not know, or on a segmentation model."""
        if self.kind != "sipe":
            raise UsageError("labels select IS-CAM masks and need a SIPE checkpoint; a segmentation checkpoint "
                             "predicts every class by itself (drop the labels)")
        return labels_from_names(labels, self.class_names, allow_empty=True)

    def _predict_array(self, image: np.ndarray, labels: np.ndarray | None) -> Prediction:
        check_min_size(image, STRIDE, name="the image")  # a smaller image has no feature-map cell
        if self.kind == "seg":
            from sipe.seg.predict import predict_probs

            probs = predict_probs(self.model, image, self.scales, self.flip).cpu().numpy()
            mask = probs.argmax(0).astype(np.uint8)
            present = [self.class_names[k] for k in np.unique(mask) if k > 0]
            return Prediction(mask, self.class_names, probs, present)
        scores = classifier_scores(self.model, image, self.flip)
        if labels is None:
            labels = labels_from_scores(scores, self.score_threshold)
        keys, maps = multiscale_is_cam(self.model, image, labels, scales=self.scales, flip=self.flip)
        full = np.zeros((len(self.class_names), *image.shape[:2]), dtype=np.float32)
        full[keys] = maps
        mask = is_cam_to_label(keys, maps).astype(np.uint8)
        present = [self.class_names[k] for k in keys[1:]]
        return Prediction(mask, self.class_names, full, present, scores)

    def _predict_or_error(self, image: ImageLike, labels: np.ndarray | None) -> Prediction:
        """One image of a list: an unreadable or too small image gives a :class:`Prediction` with ``error``
        (and a warning), so that one bad file does not lose the batch."""
        try:
            array = as_rgb_image(image)
            check_min_size(array, STRIDE, name="the image")
        except (InputError, OSError, ValueError) as e:
            where = str(image) if isinstance(image, (str, os.PathLike)) else type(image).__name__
            logger.warning("skipped %s: %s", where, e)
            empty = np.zeros((0, 0), np.uint8)
            return Prediction(empty, self.class_names, np.zeros((len(self.class_names), 0, 0), np.float32), [],
                              error=str(e))
        return self._predict_array(array, labels)

    def predict(
        self,
        image: ImageLike | Sequence[ImageLike],
        labels: Sequence[str] | Sequence[Sequence[str] | None] | None = None,
    ) -> Prediction | list[Prediction]:
        """Predict one image, or each image of a list (then a list of :class:`Prediction`).

        ``image``: a file path, a PIL image or an (H, W, 3) uint8 RGB array (see :func:`as_rgb_image`).
        ``labels`` (SIPE checkpoints): the image-level class names, e.g. ``["cat"]`` (``[]``: none
        of the classes, an all-background mask), the same for every image of a list, or one entry per
        image (a list of lists, ``None`` entries decided by the classifier); ``None``: the classifier
        decides (its sigmoid score above ``score_threshold``). In a list, an image that cannot be read
        (or is too small) is skipped with a warning: its :class:`Prediction` has ``error`` set.
        """
        if isinstance(image, (list, tuple)):
            per_image = labels is not None and len(labels) > 0 and all(
                x is None or isinstance(x, (list, tuple)) for x in labels)
            if per_image and len(labels) != len(image):
                raise ValueError(f"{len(labels)} label lists for {len(image)} images")
            each = list(labels) if per_image else [labels] * len(image)
            vectors = [None if lab is None else self.label_vector(lab) for lab in each]
            return [self._predict_or_error(im, v) for im, v in zip(image, vectors, strict=True)]
        vector = None if labels is None else self.label_vector(labels)  # type: ignore[arg-type]
        return self._predict_array(as_rgb_image(image), vector)

    def predict_files(
        self,
        paths: Sequence[str | os.PathLike],
        out_dir: str | os.PathLike,
        labels: Sequence[str] | Mapping[str, Sequence[str]] | None = None,
        overlay: bool = True,
        alpha: float = 0.5,
    ) -> PredictResult:
        """Write ``out_dir/<stem>.png`` (palette PNG, pixel value = class index) and, with ``overlay``,
        ``out_dir/overlay/<stem>.jpg`` for image files and folders of images (``sipe predict``).

        ``labels`` (SIPE): class names for every image, or a mapping from file name (``cat.jpg``) to
        its class names (every file must be in it); ``None``: decided by the classifier. Every class
        name is checked before the first image is read. Unreadable images are skipped and listed in
        ``out_dir/skipped.tsv``.
        """
        from sipe.data.image import collect_images

        if isinstance(labels, Mapping):
            vectors = {name: self.label_vector(names) for name, names in labels.items()}
            missing = [f.name for f in collect_images(paths) if f.name not in vectors]
            if missing:
                raise InputError(f"{len(missing)} images have no row in the labels, e.g. {missing[:3]}; add one "
                                 "per image (an empty labels cell: none of the classes)")
        else:
            vector = None if labels is None else self.label_vector(labels)

        records: list[dict[str, Any]] = []

        def label_fn(image: np.ndarray, path: Path) -> np.ndarray:
            v = vectors[path.name] if isinstance(labels, Mapping) else vector
            pred = self._predict_array(image, v)
            records.append({"name": path.name, "labels": pred.labels,
                            "scores": None if pred.scores is None else [round(float(x), 6) for x in pred.scores]})
            return pred.mask

        result = write_label_maps(label_fn, paths, out_dir, overlay, alpha, min_size=STRIDE, pass_path=True)
        from sipe import io as sio

        # Each image's scores and classes: what decided its mask (the summary line reads it back).
        sio.write_text(Path(out_dir) / SCORES_FILE, json.dumps(
            {"class_names": self.class_names[1:], "score_threshold": self.score_threshold if self.kind == "sipe"
             else None, "images": records}, indent=1) + "\n")
        return result


def prediction_summary(out_dir: str | os.PathLike) -> str:
    """One line from ``out_dir/scores.json`` (:meth:`Predictor.predict_files`): the images, how many hold
    each class and how many none, e.g. ``"6 images: scratch 4, none 2"``."""
    data = json.loads((Path(out_dir) / SCORES_FILE).read_text(encoding="utf-8"))
    images = data["images"]
    counts = Counter(name for img in images for name in img["labels"])
    parts = [f"{name} {counts[name]}" for name in data["class_names"]]
    parts.append(f"none {sum(1 for img in images if not img['labels'])}")
    return f"{len(images)} images: {', '.join(parts)} (per image: {Path(out_dir) / SCORES_FILE})"
