"""MS COCO 2014 as a semantic segmentation dataset: image-level labels and 81-class masks.

Layout under ``root``::

    train2014/COCO_train2014_<id>.jpg
    val2014/COCO_val2014_<id>.jpg
    annotations/instances_train2014.json
    annotations/instances_val2014.json

Category ids are mapped to 1..80 in sorted id order (0 = background). An image's labels are the
categories of all its annotations, crowd ones included. Semantic masks are generated from the
instance annotations (polygons and RLE, through ``pycocotools``): larger instances are drawn first
so that smaller ones on top of them stay visible; crowd regions get their class (``crowd="class"``,
the default, matching the labels) or 255 (``crowd="ignore"``), drawn before the other instances so an
individually annotated object inside a crowd keeps its class. Masks are written once as PNGs under
``<cache dir>/coco_masks/<split>2014-<key>/`` (the key changes with the json file and the crowd rule).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import warnings
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..io import save_label_png
from ._cache import default_cache_dir, file_stamp, load_json, save_json
from .errors import DatasetError, DatasetRootError, check_root, list_some
from .image import ImageReadError, read_label_png
from .seg_dataset import SegDataset
from .skiplist import SkipCounter

__all__ = ["COCODataset", "coco_semantic_mask"]

logger = logging.getLogger("sipe.data")

_LABEL_CACHE_VERSION = 1
_MASK_RULE_VERSION = 1  # bump when the drawing rule changes, so old cached masks are not reused


def _split_year(split: str) -> str:
    s = str(split)
    if s in ("train", "val"):
        return f"{s}2014"
    if s in ("train2014", "val2014"):
        return s
    raise DatasetError(f"unknown COCO split {s!r}; use 'train' or 'val' (COCO 2014).")


def coco_semantic_mask(
    anns: list[dict], height: int, width: int, cat_to_label: dict[int, int], crowd: str = "class"
) -> np.ndarray:
    """(H, W) uint8 semantic mask of one image from its instance annotations (see module docstring)."""
    from pycocotools import mask as mask_utils

    mask = np.zeros((height, width), dtype=np.uint8)
    crowd_first = sorted(anns, key=lambda a: (not a.get("iscrowd", 0), -float(a.get("area", 0.0)), a.get("id", 0)))
    for ann in crowd_first:
        seg = ann.get("segmentation")
        if not seg:
            continue
        if isinstance(seg, list):  # polygons
            polys = [p for p in seg if len(p) >= 6]
            if not polys:
                continue
            rle = mask_utils.merge(mask_utils.frPyObjects(polys, height, width))
        elif isinstance(seg.get("counts"), list):  # uncompressed RLE
            rle = mask_utils.frPyObjects(seg, height, width)
        else:
            rle = seg
        with warnings.catch_warnings():
            # pycocotools' decode trips numpy 2's __array__(copy=) deprecation; harmless here.
            warnings.filterwarnings("ignore", message=".*__array__ implementation", category=DeprecationWarning)
            region = mask_utils.decode(rle).astype(bool)
        if region.shape != (height, width):
            raise DatasetError(f"annotation {ann.get('id')} decodes to {region.shape}, image is {(height, width)}")
        value = 255 if (ann.get("iscrowd", 0) and crowd == "ignore") else cat_to_label[ann["category_id"]]
        mask[region] = value
    return mask


class COCODataset(SegDataset):
    """MS COCO 2014 with image-level labels and generated 81-class masks.

    Args:
        root: folder holding ``train2014/``, ``val2014/`` and ``annotations/``.
        split: ``"train"`` or ``"val"`` (``"train2014"``/``"val2014"`` also accepted).
        cache_dir: where the label cache and generated masks go (default: see ``default_cache_dir``).
        with_masks: return masks (generated from the annotations on first use, then read from PNG).
        crowd: ``"class"`` (crowd regions get their category) or ``"ignore"`` (255).
        skip_unlabeled: drop images without annotations (recorded in ``skipped``; ~1% of COCO). On by
            default, unlike the other datasets: the official COCO training list leaves them out.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        *,
        cache_dir: str | os.PathLike | None = None,
        with_masks: bool = True,
        crowd: str = "class",
        skip_unlabeled: bool = True,
        exif_transpose: bool = False,
    ) -> None:
        self._coco = None
        if crowd not in ("class", "ignore"):
            raise DatasetError(f"crowd must be 'class' or 'ignore', got {crowd!r}")
        hint = "Point it at the COCO folder holding train2014/, val2014/ and annotations/instances_*2014.json."
        self.root = check_root(root, "COCO dataset root", hint)
        self.split = _split_year(split)
        self.crowd = crowd
        image_dir = self.root / self.split
        self.ann_file = self.root / "annotations" / f"instances_{self.split}.json"
        if not image_dir.is_dir():
            raise DatasetRootError(f"{image_dir} does not exist. {hint}")
        if not self.ann_file.is_file():
            raise DatasetRootError(f"annotation file {self.ann_file} does not exist. {hint}")
        self.cache_dir = default_cache_dir(self.root, cache_dir)
        stamp = file_stamp(self.ann_file)
        index = self._load_index(stamp)
        cats = [int(c) for c, _ in index["categories"]]
        class_names = ["background", *[str(n) for _, n in index["categories"]]]
        self.cat_to_label = {c: k + 1 for k, c in enumerate(cats)}
        images = index["images"]  # [id, file_name, height, width, [label indices]]

        present = set(os.listdir(image_dir))
        missing = [im[1] for im in images if im[1] not in present]
        if missing:
            shown = list_some(missing)
            raise DatasetError(
                f"{len(missing)} images listed in {self.ann_file} are missing from {image_dir}: {shown}. "
                "Complete the download (the 2014 images go with the 2014 annotations)."
            )
        labels = np.zeros((len(images), len(cats)), dtype=np.float32)
        for i, im in enumerate(images):
            labels[i, np.asarray(im[4], dtype=np.int64) - 1] = 1.0
        key = hashlib.sha1(json.dumps([stamp, crowd, _MASK_RULE_VERSION]).encode()).hexdigest()[:8]
        self.mask_dir = self.cache_dir / "coco_masks" / f"{self.split}-{key}"
        names = [Path(im[1]).stem for im in images]
        self._image_ids = [int(im[0]) for im in images]
        self._sizes = [(int(im[2]), int(im[3])) for im in images]
        super().__init__(
            class_names=class_names,
            names=names,
            image_paths=[image_dir / im[1] for im in images],
            labels=labels,
            mask_paths=[self.mask_dir / f"{n}.png" for n in names],
            source=f"COCO {self.split} ({self.ann_file})",
            exif_transpose=exif_transpose,
            with_masks=with_masks,
            skip_unlabeled=skip_unlabeled,
            skipped=SkipCounter("images"),
        )
        kept = {n: i for i, n in enumerate(names)}
        order = [kept[n] for n in self.names]
        self._image_ids = [self._image_ids[i] for i in order]
        self._sizes = [self._sizes[i] for i in order]

    # The parsed instances json is large (COCO train: ~0.5 GB); keep it out of worker pickles.
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_coco"] = None
        return state

    def _load_index(self, stamp: list[int]) -> dict:
        cache_file = self.cache_dir / f"coco_labels_{self.split}.json"
        cached = load_json(cache_file, _LABEL_CACHE_VERSION)
        if cached is not None and cached.get("stamp") == stamp:
            return cached
        coco = self._get_coco()
        cat_ids = sorted(coco.getCatIds())
        cat_to_label = {c: k + 1 for k, c in enumerate(cat_ids)}
        per_image: dict[int, set[int]] = {i: set() for i in coco.imgs}
        for ann in coco.dataset.get("annotations", []):
            try:
                per_image[ann["image_id"]].add(cat_to_label[ann["category_id"]])
            except KeyError as err:
                raise DatasetError(
                    f"{self.ann_file}: annotation {ann.get('id')} refers to unknown image or category {err}; "
                    "the file is inconsistent. Re-download it."
                ) from err
        images = [
            [int(i), im["file_name"], int(im["height"]), int(im["width"]), sorted(per_image[i])]
            for i, im in sorted(coco.imgs.items())
        ]
        index = {
            "version": _LABEL_CACHE_VERSION,
            "stamp": stamp,
            "categories": [[c, coco.cats[c]["name"]] for c in cat_ids],
            "images": images,
        }
        save_json(cache_file, index)
        return index

    def _get_coco(self):
        if self._coco is None:
            from pycocotools.coco import COCO

            logger.info("loading %s", self.ann_file)
            # pycocotools prints progress to stdout; keep it off ours.
            with contextlib.redirect_stdout(io.StringIO()):
                try:
                    self._coco = COCO(str(self.ann_file))
                except (ValueError, KeyError, TypeError) as err:
                    raise DatasetError(f"cannot parse {self.ann_file}: {err}. Re-download it.") from err
        return self._coco

    def build_mask(self, i: int) -> np.ndarray:
        """Generate item ``i``'s (H, W) uint8 mask from the annotations and cache it as a PNG."""
        i = self._index(i)
        coco = self._get_coco()
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[self._image_ids[i]], iscrowd=None))
        h, w = self._sizes[i]
        mask = coco_semantic_mask(anns, h, w, self.cat_to_label, self.crowd)
        save_label_png(self.mask_paths[i], mask)
        return mask

    def build_masks(self, progress: bool = True) -> int:
        """Generate every mask not cached yet; returns how many were built."""
        todo = [i for i, p in enumerate(self.mask_paths) if not p.is_file()]
        for i in tqdm(todo, desc=f"COCO {self.split} masks", unit="img", disable=not progress or not todo):
            self.build_mask(i)
        return len(todo)

    def read_mask(self, i: int) -> np.ndarray | None:
        i = self._index(i)
        path = self.mask_paths[i]
        if path.is_file():
            try:
                return read_label_png(path)
            except ImageReadError:
                logger.warning("cached mask %s is unreadable; regenerating it", path)
        return self.build_mask(i)

    def subset(self, indices):  # noqa: ANN001 - same signature as SegDataset.subset
        idx = [self._index(i) for i in np.asarray(indices, dtype=np.int64).reshape(-1)]
        out = super().subset(idx)
        out._image_ids = [self._image_ids[i] for i in idx]
        out._sizes = [self._sizes[i] for i in idx]
        return out

    def _keep(self, keep: np.ndarray) -> None:
        idx = np.flatnonzero(keep)
        self._image_ids = [self._image_ids[i] for i in idx]
        self._sizes = [self._sizes[i] for i in idx]
        super()._keep(keep)
