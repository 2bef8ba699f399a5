"""The report's image grid: which images to show, and their thumbnails as data URIs."""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from sipe.data.cam_format import find_cam_file, is_cam_to_label, read_cam_file
from sipe.data.image import read_label_png
from sipe.data.labelmap import check_label_map
from sipe.io import voc_palette
from sipe.metrics import ConfusionMatrix
from sipe.vis import heatmap_overlay

MAX_SIDE = 256  # thumbnails' long side: 12 rows of VOC-sized images stay well under 5 MB


@dataclass
class Cell:
    caption: str
    uri: str | None  # None: nothing to show (the caption says why)


@dataclass
class Row:
    name: str
    group: str | None  # "best" / "median" / "worst" by IS-CAM IoU, None when not ranked
    score: float | None  # the image's IS-CAM IoU (mean over its classes)
    cells: list[Cell] = field(default_factory=list)


def data_uri(pic: np.ndarray | Image.Image, fmt: str) -> str:
    """``data:image/...;base64,...`` of an (H, W, 3) uint8 picture (or a PIL image), ``fmt`` "jpeg" or "png"."""
    img = Image.fromarray(pic) if isinstance(pic, np.ndarray) else pic
    buf = io.BytesIO()
    if fmt == "jpeg":
        img.save(buf, format="JPEG", quality=85)
    else:
        img.save(buf, format="PNG", optimize=True)
    return f"data:image/{fmt};base64,{base64.b64encode(buf.getvalue()).decode('ascii')}"


def thumb_size(h: int, w: int, max_side: int = MAX_SIDE) -> tuple[int, int]:
    """(h, w) scaled so that the long side is at most ``max_side`` (never enlarged)."""
    s = min(1.0, max_side / max(h, w))
    return max(1, round(h * s)), max(1, round(w * s))


def _resize_rgb(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if image.shape[:2] == size:
        return image
    return np.asarray(Image.fromarray(image).resize((size[1], size[0]), Image.Resampling.LANCZOS))


def _resize_map(heat: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if heat.shape == size:
        return heat
    return np.asarray(Image.fromarray(heat.astype(np.float32), mode="F").resize((size[1], size[0]),
                                                                                 Image.Resampling.BILINEAR))


def label_uri(label: np.ndarray, size: tuple[int, int]) -> str:
    """A palette PNG data URI of an (H, W) label map (VOC colours, 255 white) at ``size`` (nearest)."""
    img = Image.fromarray(np.asarray(label).astype(np.uint8), mode="P")
    img.putpalette(voc_palette().reshape(-1).tolist())
    if img.size != (size[1], size[0]):
        img = img.resize((size[1], size[0]), Image.Resampling.NEAREST)
    return data_uri(img, "png")


def image_iou(pred: np.ndarray, mask: np.ndarray, num_classes: int) -> float:
    """Mean IoU of one (H, W) prediction against its (H, W) mask, over the classes either holds."""
    cm = ConfusionMatrix(num_classes)
    cm.update(pred, mask)
    return cm.miou()


def select_images(
    dataset: Any, is_cam_dir: Path | None, n: int, progress: bool = True
) -> list[tuple[int, str | None, float | None]]:
    """Up to ``n`` dataset indices to show, as ``(index, group, IS-CAM IoU)``.

    With masks and IS-CAM files: the best, median and worst thirds of ``n`` by per-image IS-CAM IoU
    (best first); otherwise the first ``n`` images, unranked.
    """
    scored: list[tuple[float, int]] = []
    k = len(dataset.class_names)
    if is_cam_dir is not None and getattr(dataset, "with_masks", True):
        for i, name in enumerate(tqdm(dataset.names, desc="rank images", unit="img", leave=False,
                                      disable=not progress)):
            path = find_cam_file(is_cam_dir, name)
            mask = dataset.read_mask(i) if path is not None else None
            if mask is None:
                continue
            cam = read_cam_file(path)
            if cam.maps.shape[1:] != mask.shape:
                raise ValueError(f"{path}: maps of size {cam.maps.shape[1:]} but the mask of {name} is {mask.shape}; "
                                 "regenerate the CAMs for this dataset")
            score = image_iou(is_cam_to_label(cam.keys, cam.maps), mask, k)
            if not np.isnan(score):
                scored.append((score, i))
    if not scored:
        return [(i, None, None) for i in range(min(n, len(dataset)))]
    scored.sort(key=lambda t: (-t[0], t[1]))
    if len(scored) <= n:
        return [(i, None, s) for s, i in scored]
    third = n // 3
    n_best = n - 2 * third
    mid = len(scored) // 2 - third // 2
    picks = [(scored[j], "best") for j in range(n_best)]
    picks += [(scored[j], "median") for j in range(mid, mid + third)]
    picks += [(scored[j], "worst") for j in range(len(scored) - third, len(scored))]
    return [(i, group, s) for (s, i), group in picks]


def _cam_cells(item: dict[str, Any], cam_dir: Path | None, kind: str, title: str, class_names: list[str],
               size: tuple[int, int], thumb: np.ndarray) -> list[Cell]:
    path = None if cam_dir is None else find_cam_file(cam_dir / kind, item["name"])
    if path is None:
        return [Cell(f"{title}: no file", None)]
    cam = read_cam_file(path)
    if cam.maps.shape[1:] != item["image"].shape[:2]:
        raise ValueError(f"{path}: maps of size {cam.maps.shape[1:]} but image {item['name']} is "
                         f"{item['image'].shape[:2]}; regenerate the CAMs for this dataset")
    cells = []
    for key, heat in zip(cam.keys, cam.maps, strict=True):
        if key == 0:  # IS-CAM's background channel: the foreground maps say it all
            continue
        overlay = heatmap_overlay(thumb, _resize_map(heat, size).clip(0, 1))
        cells.append(Cell(f"{title} {class_names[key]}", data_uri(overlay, "jpeg")))
    return cells or [Cell(f"{title}: no class", None)]


def _label_cell(folder: Path | None, name: str, title: str, size: tuple[int, int],
                full: tuple[int, int]) -> tuple[Cell, np.ndarray | None]:
    path = None if folder is None else folder / f"{name}.png"
    if path is None or not path.is_file():
        return Cell(f"{title}: none", None), None
    label = check_label_map(read_label_png(path), path, size=full, what="label image",
                            fix="regenerate it for this dataset")
    return Cell(title, label_uri(label, size)), label


def build_rows(
    dataset: Any,
    picks: list[tuple[int, str | None, float | None]],
    cam_dir: Path | None,
    pseudo_dir: Path | None,
    seg_dir: Path | None,
    max_side: int = MAX_SIDE,
) -> tuple[list[Row], set[int]]:
    """One :class:`Row` per pick: image, CAM and IS-CAM per labelled class, pseudo mask, segmentation,
    ground truth. Also returns the class indices that appear in the label thumbnails (for the legend)."""
    class_names = list(dataset.class_names)
    rows, seen = [], set()
    for index, group, score in picks:
        item = dataset[index]
        full = item["image"].shape[:2]
        size = thumb_size(*full, max_side=max_side)
        thumb = _resize_rgb(item["image"], size)
        row = Row(item["name"], group, score, [Cell("image", data_uri(thumb, "jpeg"))])
        row.cells += _cam_cells(item, cam_dir, "cam", "CAM", class_names, size, thumb)
        row.cells += _cam_cells(item, cam_dir, "is_cam", "IS-CAM", class_names, size, thumb)
        for folder, title in ((pseudo_dir, "pseudo mask"), (seg_dir, "segmentation")):
            cell, label = _label_cell(folder, item["name"], title, size, full)
            row.cells.append(cell)
            if label is not None:
                seen |= set(np.unique(label).tolist())
        if item.get("mask") is not None:
            row.cells.append(Cell("ground truth", label_uri(item["mask"], size)))
            seen |= set(np.unique(item["mask"]).tolist())
        rows.append(row)
    return rows, {c for c in seen if c < len(class_names)}
