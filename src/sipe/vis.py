"""Pictures: colourised label maps, heat-map overlays and CAM panels (numpy + PIL only, no matplotlib)."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from tqdm.auto import tqdm

from sipe import io as sio
from sipe.data.cam_format import check_cam_arrays
from sipe.data.image import ImageReadError, ImageTooSmallError, check_min_size, collect_images, read_image
from sipe.data.skiplist import SKIPPED_FILE, SkipCounter


def colorize(label: np.ndarray) -> np.ndarray:
    """(H, W) integer label map in [0, 255] -> (H, W, 3) uint8 in the VOC colours (255 = white)."""
    label = np.asarray(label)
    if label.ndim != 2:
        raise ValueError(f"label map must be 2-D (H, W), got shape {label.shape}")
    if label.size and (label.min() < 0 or label.max() > 255):
        raise ValueError(f"label values must lie in [0, 255], got [{label.min()}, {label.max()}]")
    return sio.voc_palette()[label.astype(np.intp)]


def jet(x: np.ndarray) -> np.ndarray:
    """Jet colour map: values (...) in [0, 1] (clipped; NaN -> 0) -> (..., 3) uint8, blue -> red."""
    x = np.nan_to_num(np.asarray(x, dtype=np.float32), nan=0.0).clip(0.0, 1.0)[..., None]
    # The classic piecewise-linear jet: each channel is a tent centred at 3/4 (r), 1/2 (g), 1/4 (b).
    centres = np.array([0.75, 0.5, 0.25], dtype=np.float32)
    rgb = (1.5 - np.abs(4.0 * (x - centres))).clip(0.0, 1.0)
    return (rgb * 255.0 + 0.5).astype(np.uint8)


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8, got {image.dtype} {image.shape}")
    return image


def _blend(image: np.ndarray, colour: np.ndarray, alpha: float) -> np.ndarray:
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    out = (1.0 - alpha) * image.astype(np.float32) + alpha * colour.astype(np.float32)
    return (out + 0.5).clip(0, 255).astype(np.uint8)


def heatmap_overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend a jet-coloured heat map over an image.

    Args:
        image: (H, W, 3) uint8 RGB.
        heat: (H, W) float in [0, 1] (values outside are clipped).
        alpha: weight of the heat map.

    Returns:
        (H, W, 3) uint8.
    """
    image = _check_image(image)
    heat = np.asarray(heat)
    if heat.shape != image.shape[:2]:
        raise ValueError(f"heat map shape {heat.shape} differs from the image's {image.shape[:2]}")
    return _blend(image, jet(heat), alpha)


def label_overlay(image: np.ndarray, label: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend the VOC colours of an (H, W) label map over an (H, W, 3) uint8 image -> (H, W, 3) uint8."""
    image = _check_image(image)
    label = np.asarray(label)
    if label.shape != image.shape[:2]:
        raise ValueError(f"label shape {label.shape} differs from the image's {image.shape[:2]}")
    return _blend(image, colorize(label), alpha)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:  # Pillow >= 10.1 scales its built-in font
        return ImageFont.load_default(size=size)
    except TypeError:
        return ImageFont.load_default()


def _selected(keys: np.ndarray, include_background: bool) -> np.ndarray:
    return np.nonzero(include_background | (keys != 0))[0]


def cam_grid(
    image: np.ndarray,
    maps: np.ndarray,
    keys: Sequence[int],
    class_names: Sequence[str],
    alpha: float = 0.5,
    include_background: bool = False,
    title: str = "image",
    gap: int = 4,
) -> np.ndarray:
    """A side-by-side panel: the image, then one heat-map overlay per class, each captioned.

    Args:
        image: (H, W, 3) uint8 RGB.
        maps: (M, H, W) float in [0, 1], ``maps[i]`` for class ``keys[i]``.
        keys: (M,) class indices into ``class_names``.
        class_names: the dataset's K names.
        include_background: also draw the channel of class 0 (IS-CAM's background).

    Returns:
        (H + caption, n * W + (n - 1) * gap, 3) uint8 on a white background.
    """
    image = _check_image(image)
    keys, maps = check_cam_arrays(keys, maps, size=image.shape[:2])
    h, w = image.shape[:2]
    panels = [(title, image)]
    for i in _selected(keys, include_background):
        panels.append((str(class_names[keys[i]]), heatmap_overlay(image, maps[i], alpha)))
    font_size = int(np.clip(h // 16, 10, 24))
    font = _font(font_size)
    caption = font_size + 6
    n = len(panels)
    canvas = Image.new("RGB", (n * w + (n - 1) * gap, h + caption), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for j, (text, pic) in enumerate(panels):
        x = j * (w + gap)
        canvas.paste(Image.fromarray(pic), (x, caption))
        draw.text((x + 3, 2), text, fill=(0, 0, 0), font=font)
    return np.asarray(canvas)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "class"


def save_overlays(out_dir: str | os.PathLike, name: str, image: np.ndarray, maps: np.ndarray,
                  keys: Sequence[int], class_names: Sequence[str]) -> list[Path]:
    """Write one heat-map overlay PNG per foreground class, ``out_dir/<name>_<class index>_<class name>.png``,
    atomically (``sipe cam --overlays``). ``image`` (H, W, 3) uint8, ``maps`` (M, H, W) for ``keys``
    (M,) class indices into ``class_names``. Returns the paths written.
    """
    image = _check_image(image)
    keys, maps = check_cam_arrays(keys, maps, size=image.shape[:2])
    paths = []
    for i in _selected(keys, include_background=False):
        k = int(keys[i])
        path = Path(out_dir) / f"{name}_{k}_{_safe(str(class_names[k]))}.png"
        sio.save_image(path, heatmap_overlay(image, maps[i]))
        paths.append(path)
    return paths


@dataclass
class PredictResult:
    """What :func:`write_label_maps` wrote: ``labels`` (palette PNGs), ``overlays`` and the ``skipped`` inputs."""

    labels: list[Path] = field(default_factory=list)
    overlays: list[Path] = field(default_factory=list)
    skipped: SkipCounter = field(default_factory=lambda: SkipCounter("images"))


def write_label_maps(
    label_fn: Callable[..., np.ndarray],
    paths: Iterable[str | os.PathLike],
    out_dir: str | os.PathLike,
    overlay: bool = True,
    alpha: float = 0.5,
    min_size: int = 1,
    pass_path: bool = False,
) -> PredictResult:
    """Run ``label_fn`` ((H, W, 3) uint8 RGB -> (H, W) class indices; with ``pass_path`` it also gets
    the image's file ``Path``, e.g. to look up its labels) on image files and write the masks.

    Writes ``out_dir/<stem>.png`` (palette PNG, pixel value = class index) and, with ``overlay``,
    ``out_dir/overlay/<stem>.jpg`` (the colours blended over the photo with weight ``alpha``).
    ``paths``: files and folders (see :func:`sipe.data.image.collect_images`). Unreadable images and
    images with a side below ``min_size`` pixels are skipped with their name and reason, and listed
    in ``out_dir/skipped.tsv`` (header only when none was skipped).
    """
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
            check_min_size(image, min_size, name=str(f))
        except ImageReadError as e:
            reason = "too small" if isinstance(e, ImageTooSmallError) else "unreadable"
            result.skipped.add(f.name, reason, str(e), path=f)
            continue
        label = label_fn(image, f) if pass_path else label_fn(image)
        target = out_dir / f"{f.stem}.png"
        sio.save_label_png(target, label)
        result.labels.append(target)
        if overlay:
            target = out_dir / "overlay" / f"{f.stem}.jpg"
            sio.save_image(target, label_overlay(image, label, alpha))
            result.overlays.append(target)
    result.skipped.log(len(files))
    result.skipped.write_tsv(out_dir / SKIPPED_FILE)
    return result


def save_cam_overlays(out_dir: str | os.PathLike, dataset: Any, cam_dir: str | os.PathLike, n: int) -> None:
    """``out_dir/<name>.png`` for the first ``n`` images of ``dataset``: CAM per labelled class (top row),
    IS-CAM per labelled class (bottom row), ground truth on the right; ``cam_dir`` holds ``cam/`` and
    ``is_cam/`` (``sipe cam --save-cam``)."""
    from sipe.data.cam_format import read_cam_file

    cam_dir = Path(cam_dir)
    for i in range(min(n, len(dataset))):
        item = dataset[i]
        name = item["name"]
        cam = read_cam_file(cam_dir / "cam" / f"{name}.npz")
        is_cam = read_cam_file(cam_dir / "is_cam" / f"{name}.npz")
        top = cam_grid(item["image"], cam.maps, cam.keys, dataset.class_names, title="CAM")
        bottom = cam_grid(item["image"], is_cam.maps, is_cam.keys, dataset.class_names, title="IS-CAM")
        width = max(top.shape[1], bottom.shape[1])
        gt = colorize(item["mask"]) if item["mask"] is not None else np.zeros_like(item["image"])
        rows = [np.pad(r, ((0, 4), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in (top, bottom)]
        pic = np.concatenate(rows, axis=0)
        gt_col = np.full((pic.shape[0], gt.shape[1] + 4, 3), 255, np.uint8)
        gt_col[-gt.shape[0] - 4:-4, 4:] = gt
        sio.save_image(Path(out_dir) / f"{name}.png", np.concatenate([pic, gt_col], axis=1))
