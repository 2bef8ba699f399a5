"""A folder of index masks (``<name>.png`` + ``classes.json``) to the formats other tools read.

- COCO (:func:`masks_to_coco`): one JSON file with ``images`` (``id``, ``file_name``, ``height``,
  ``width``), ``categories`` (``id`` = the pixel value, from ``classes.json``; background and the
  ignore value are left out) and ``annotations``, one per class present per image, its pixels as
  an uncompressed-then-compressed RLE from ``pycocotools.mask.encode`` (``counts`` as a string),
  with ``area``, ``bbox`` (x, y, w, h), ``iscrowd`` 0 and ``score`` 1.0. ``pycocotools.coco.COCO(file)``
  and detectron2's ``register_coco_instances`` load it as it is; ``COCO.loadRes(data["annotations"])``
  takes its annotations as results for ``COCOeval``. Image ids are 1, 2, ... in the sorted order of
  the mask names.
- Binary (:func:`masks_to_binary`): ``OUT/<class>/<name>.png``, one 0/255 greyscale PNG per class
  present in an image, named as the image: the layout of a per-class import of masks (one folder per
  label, files named as the images).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from sipe.errors import InputError

from .classes_file import CLASSES_FILE, MaskClasses, read_classes_file
from .image import IMAGE_SUFFIXES, read_label_png

__all__ = ["iter_masks", "mask_folder_classes", "masks_to_binary", "masks_to_coco"]


def mask_folder_classes(mask_dir: str | os.PathLike, classes: str | os.PathLike | None = None) -> MaskClasses:
    """The classes of ``mask_dir``: from ``classes`` (a classes.json or names file) when given, else from
    ``mask_dir/classes.json``; raises :class:`FileNotFoundError` naming both fixes when there is none."""
    mask_dir = Path(mask_dir)
    if not mask_dir.is_dir():
        raise FileNotFoundError(f"mask folder {mask_dir} does not exist; pass a folder of <name>.png masks")
    if classes is not None:
        return read_classes_file(classes)
    path = mask_dir / CLASSES_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{mask_dir} has no {CLASSES_FILE}, so its pixel values name no class; pass --classes FILE (the "
            f"{CLASSES_FILE} of the run's masks, or a text file of class names in pixel-value order, background first)"
        )
    return read_classes_file(path)


def iter_masks(mask_dir: str | os.PathLike, classes: MaskClasses) -> Iterator[tuple[str, np.ndarray]]:
    """``(name, (H, W) uint8 mask)`` of every ``<name>.png`` under ``mask_dir`` in sorted name order
    (``name``: the path without suffix, ``sub/photo_07``); a value outside ``classes`` is an error."""
    mask_dir = Path(mask_dir)
    paths = sorted(p for p in mask_dir.rglob("*.png") if not any(part.startswith(".") for part in p.parts))
    if not paths:
        raise InputError(f"mask folder {mask_dir} holds no .png mask")
    allowed = np.zeros(256, dtype=bool)
    allowed[: len(classes.names)] = True
    if classes.ignore is not None:
        allowed[classes.ignore] = True
    for path in paths:
        mask = read_label_png(path)
        bad = ~allowed[mask]
        if bad.any():
            raise InputError(
                f"mask {path} holds pixel value {int(mask[bad].max())}, which its classes ({len(classes.names)} "
                "values) do not name; pass the --classes of the run that wrote it"
            )
        yield path.relative_to(mask_dir).with_suffix("").as_posix(), mask


def _rle_annotations(mask: np.ndarray, values: np.ndarray, image_id: int, first_id: int) -> list[dict[str, Any]]:
    """COCO annotations of ``mask`` (H, W), one per value in ``values``, ids from ``first_id``."""
    from pycocotools import mask as mask_utils

    binary = np.asfortranarray((mask[:, :, None] == values[None, None, :]).astype(np.uint8))  # (H, W, C)
    rles = mask_utils.encode(binary)
    areas = mask_utils.area(rles)
    boxes = mask_utils.toBbox(rles)
    out = []
    for j, (value, rle) in enumerate(zip(values.tolist(), rles, strict=True)):
        out.append({
            "id": first_id + j, "image_id": image_id, "category_id": int(value),
            "segmentation": {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")},
            "area": float(areas[j]), "bbox": [float(x) for x in boxes[j]], "iscrowd": 0, "score": 1.0,
        })  # fmt: skip
    return out


def _foreground_values(mask: np.ndarray, classes: MaskClasses) -> np.ndarray:
    values = np.unique(mask)
    return values[(values != 0) & (values != (classes.ignore if classes.ignore is not None else -1))]


def _image_file(image_dir: Path | None, name: str) -> str:
    """The image of mask ``name``, relative to ``image_dir`` (``<name>.png`` when no folder is given)."""
    if image_dir is None:
        return f"{name}.png"
    found = sorted(p for p in image_dir.glob(f"{name}.*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not found:
        raise InputError(f"no image {name}.* in {image_dir} for mask {name}.png; pass the folder of the masks' images")
    return found[0].relative_to(image_dir).as_posix()


def masks_to_coco(
    mask_dir: str | os.PathLike,
    out_file: str | os.PathLike,
    classes: str | os.PathLike | None = None,
    image_dir: str | os.PathLike | None = None,
) -> dict[str, int]:
    """Write the masks of ``mask_dir`` as one COCO JSON file (format in the module docstring), atomically.

    ``file_name`` of an image is the path, relative to ``image_dir``, of the image named as the mask
    (any image suffix), or the mask's own ``<name>.png`` when ``image_dir`` is not given.
    Returns counts: ``images``, ``annotations``, ``categories``.
    """
    from sipe.io import write_text

    meta = mask_folder_classes(mask_dir, classes)
    folder = None if image_dir is None else Path(image_dir)
    if folder is not None and not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist; pass the folder of the masks' images")
    images, annotations = [], []
    for image_id, (name, mask) in enumerate(iter_masks(mask_dir, meta), start=1):
        images.append({"id": image_id, "file_name": _image_file(folder, name), "height": int(mask.shape[0]),
                       "width": int(mask.shape[1])})
        annotations += _rle_annotations(mask, _foreground_values(mask, meta), image_id, len(annotations) + 1)
    categories = [{"id": v, "name": n, "supercategory": "object", "color": list(meta.colors[v])}
                  for v, n in enumerate(meta.names) if v != 0]
    data = {"info": {"description": f"masks of {mask_dir}, written by sipe convert"}, "images": images,
            "categories": categories, "annotations": annotations}
    write_text(out_file, json.dumps(data) + "\n")
    return {"images": len(images), "annotations": len(annotations), "categories": len(categories)}


def _safe(name: str) -> str:
    return name.replace("/", "_").replace("\\", "_")


def masks_to_binary(
    mask_dir: str | os.PathLike, out_dir: str | os.PathLike, classes: str | os.PathLike | None = None
) -> dict[str, int]:
    """Write ``out_dir/<class>/<name>.png``: a 0/255 greyscale PNG per class present in each mask, atomically.

    Returns counts: ``images`` and ``masks`` (PNGs written).
    """
    from sipe.io import save_image

    meta = mask_folder_classes(mask_dir, classes)
    out_dir = Path(out_dir)
    n_images = n_masks = 0
    for name, mask in iter_masks(mask_dir, meta):
        n_images += 1
        for value in _foreground_values(mask, meta).tolist():
            save_image(out_dir / _safe(meta.names[value]) / f"{name}.png", ((mask == value) * 255).astype(np.uint8))
            n_masks += 1
    return {"images": n_images, "masks": n_masks}
