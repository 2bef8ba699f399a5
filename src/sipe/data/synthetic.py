"""A seeded synthetic dataset in the VOC layout: the situation SIPE exists for, in miniature.

Every object is a striped elliptical *body* whose appearance is drawn from one distribution shared
by all classes, plus a small class-specific *part* (a coloured disk, square, triangle, ...) stuck on
its rim. Only the part tells the classes apart, so a classifier's CAM concentrates on it and misses
the body; the ground-truth masks cover the whole object (body + part). Backgrounds are smooth
colour fields with fine noise, in hues the bodies never take.
(Over ~350 lines: the drawing rules, in one small function per piece, the VOC-layout writer and the two
dataset classes share one class table and format version.)

``generate_synthetic`` writes::

    <root>/JPEGImages/<name>.jpg                 (quality 95)
    <root>/SegmentationClass/<name>.png          palette index masks, 0 = background
    <root>/Annotations/<name>.xml                VOC XML, one <object> per object (with its box)
    <root>/ImageSets/Segmentation/<split>.txt    train.txt, val.txt
    <root>/class_names.txt                       K lines, "background" first
    <root>/synthetic.json                        the generation parameters (written last)

Each image comes from its own generator seeded by ``(seed, split, index)``, so the data set does
not depend on generation order. ``SyntheticDataset(root, split)`` reads it back through
:class:`~sipe.data.voc.VOCDataset`.
"""

from __future__ import annotations

import io
import json
import logging
import os
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import numpy as np
from PIL import Image
from tqdm import tqdm

from ..io import save_label_png, write_bytes, write_text
from .errors import DatasetError, check_root
from .voc import VOCDataset

__all__ = [
    "PART_STYLES",
    "SyntheticBackgrounds",
    "SyntheticDataset",
    "draw_synthetic_image",
    "generate_synthetic",
    "synthetic_class_names",
]

logger = logging.getLogger("sipe.data")

_VERSION = 2
# (class name = part shape, part colour). Saturated colours far from body and background hues.
PART_STYLES: tuple[tuple[str, tuple[int, int, int]], ...] = (
    ("disk", (225, 30, 35)),
    ("square", (30, 190, 50)),
    ("triangle", (40, 70, 235)),
    ("diamond", (240, 215, 20)),
    ("cross", (205, 35, 205)),
    ("ring", (20, 215, 225)),
)
_SPLIT_IDS = {"train": 1, "val": 2}


def synthetic_class_names(num_classes: int = 4) -> list[str]:
    """K = num_classes + 1 names: ``"background"`` and the first ``num_classes`` part shapes."""
    if not 1 <= num_classes <= len(PART_STYLES):
        raise ValueError(f"num_classes must be in 1..{len(PART_STYLES)}, got {num_classes}")
    return ["background", *[name for name, _ in PART_STYLES[:num_classes]]]


def _part_region(shape: str, u: np.ndarray, v: np.ndarray, r: float) -> tuple[np.ndarray, np.ndarray]:
    """(inside, core) boolean maps of a part of radius ``r`` in its local coordinates (u, v)."""
    au, av = np.abs(u), np.abs(v)
    d2 = u * u + v * v
    core = np.zeros_like(u, dtype=bool)
    if shape == "disk":
        inside = d2 <= r * r
    elif shape == "square":
        inside = np.maximum(au, av) <= 0.85 * r
    elif shape == "triangle":  # equilateral, circumradius 1.15 r
        rr = 1.15 * r
        inside = (v >= -rr / 2) & (np.sqrt(3) * u + v <= rr) & (-np.sqrt(3) * u + v <= rr)
    elif shape == "diamond":
        inside = au + av <= 1.1 * r
    elif shape == "cross":
        arm = 0.38 * r
        inside = ((au <= arm) & (av <= 1.1 * r)) | ((av <= arm) & (au <= 1.1 * r))
    elif shape == "ring":  # a disk with a dark core
        inside = d2 <= r * r
        core = d2 <= (0.5 * r) ** 2
    else:
        raise ValueError(f"unknown part shape {shape!r}")
    return inside, core


def _noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    return rng.standard_normal(shape, dtype=np.float32) * np.float32(sigma)


def _draw_background(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """(H, W, 3) float32 background on the pixel grid ``yy``, ``xx`` (each (H, W) float32).

    Two greyish colours blended by a smooth random field, plus fine noise; low saturation keeps it
    apart from the saturated parts.
    """
    c0 = (rng.uniform(70, 150) + rng.uniform(-12, 12, 3)).astype(np.float32)
    c1 = c0 + rng.uniform(-30, 30, 3).astype(np.float32)
    field = np.zeros(yy.shape, np.float32)
    for _ in range(3):
        ang, period, phase = rng.uniform(0, np.pi), rng.uniform(30, 110), rng.uniform(0, 2 * np.pi)
        field += np.sin((xx * np.cos(ang) + yy * np.sin(ang)) * np.float32(2 * np.pi / period) + np.float32(phase))
    field = (field / 6.0 + 0.5)[..., None]
    return c0 * (1 - field) + c1 * field + _noise(rng, (*yy.shape, 1), 7.0)


def _free_centre(
    rng: np.random.Generator, h: int, w: int, margin: float, extent: float, placed: list[tuple[float, float, float]]
) -> tuple[float, float] | None:
    """A centre (cy, cx) at least ``margin`` inside the image whose disc of radius ``extent`` clears
    every ``placed`` (cy, cx, extent); ``None`` after 30 tries (no room left)."""
    for _try in range(30):
        cy = rng.uniform(margin, h - margin)
        cx = rng.uniform(margin, w - margin)
        if all(np.hypot(cy - py, cx - px) > extent + pe for py, px, pe in placed):
            return cy, cx
    return None


def _paint_body(
    rng: np.random.Generator, win: np.ndarray, wy: np.ndarray, wx: np.ndarray, centre: tuple[float, float],
    a: float, b: float,
) -> tuple[np.ndarray, tuple[np.floating, np.floating]]:
    """Paint a striped ellipse (semi-axes ``a``, ``b``, random angle) into ``win`` (h, w, 3) in place.

    ``wy``, ``wx``: the window's pixel coordinates. Returns the (h, w) bool body map and the
    ellipse's (cos, sin) of its angle. The appearance is drawn from the same distribution for every
    class (so bodies say nothing about the class) but differs from object to object (so an image's
    own prototypes can tell its objects apart).
    """
    cy, cx = centre
    theta = rng.uniform(0, np.pi)
    ct, st = np.cos(theta), np.sin(theta)
    dy, dx = wy - cy, wx - cx
    u, v = dx * ct + dy * st, -dx * st + dy * ct
    body = (u / a) ** 2 + (v / b) ** 2 <= 1.0
    light = np.clip(rng.uniform(150, 215) + rng.uniform(-55, 55, 3), 60, 255).astype(np.float32)
    dark = light * np.float32(rng.uniform(0.45, 0.6))
    s_ang, s_per, s_ph = rng.uniform(0, np.pi), rng.uniform(4.5, 7.5), rng.uniform(0, 2 * np.pi)
    stripes = 0.5 + 0.5 * np.sin((wx * np.cos(s_ang) + wy * np.sin(s_ang)) * (2 * np.pi / s_per) + s_ph)
    win[body] = (dark + (light - dark) * stripes[..., None])[body]
    return body, (ct, st)


def _paint_part(
    rng: np.random.Generator, win: np.ndarray, wy: np.ndarray, wx: np.ndarray, size: tuple[int, int],
    centre: tuple[float, float], a: float, b: float, rotation: tuple[np.floating, np.floating], pr: float, cls: int,
) -> np.ndarray:
    """Paint class ``cls``'s part (radius ``pr``) on the rim of the body ellipse into ``win`` in place.

    The part is pushed a little outwards so it sticks out of the body; of 16 random rim positions
    the first whose part lies inside the (H, W) = ``size`` image is taken (else the most inside one).
    Returns the window's (h, w) bool part map.
    """
    (h, w), (cy, cx), (ct, st) = size, centre, rotation
    t = rng.uniform(0, 2 * np.pi, 16)
    nu, nv = np.cos(t) / a, np.sin(t) / b
    nn = np.hypot(nu, nv)
    pu, pv = a * np.cos(t) + 0.35 * pr * nu / nn, b * np.sin(t) + 0.35 * pr * nv / nn
    pys, pxs = cy + pu * st + pv * ct, cx + pu * ct - pv * st
    room = np.minimum(np.minimum(pys, h - 1 - pys), np.minimum(pxs, w - 1 - pxs))
    k = int(np.argmax(room >= 1.2 * pr)) if (room >= 1.2 * pr).any() else int(np.argmax(room))
    py, px = float(pys[k]), float(pxs[k])
    phi = rng.uniform(0, 2 * np.pi)
    qy, qx = wy - py, wx - px
    qu, qv = qx * np.cos(phi) + qy * np.sin(phi), -qx * np.sin(phi) + qy * np.cos(phi)
    part, core = _part_region(PART_STYLES[cls - 1][0], qu, qv, pr)
    colour = (np.asarray(PART_STYLES[cls - 1][1], np.float64) + rng.uniform(-15, 15, 3)).astype(np.float32)
    win[part] = colour
    win[core] = colour * np.float32(0.2)
    return part


def _object_record(
    cls: int, body: np.ndarray, part: np.ndarray, origin: tuple[int, int], size: tuple[int, int], return_regions: bool
) -> dict:
    """The dict :func:`draw_synthetic_image` returns for one object drawn in the window at ``origin``
    (y0, x0) of an (H, W) = ``size`` image, from the window's ``body`` and ``part`` maps."""
    (y0, x0), (h, w) = origin, size
    ys, xs = np.nonzero(body | part)
    obj: dict = {
        "class": cls,
        "box": (int(xs.min()) + x0, int(ys.min()) + y0, int(xs.max()) + x0, int(ys.max()) + y0),
    }
    if return_regions:
        wh, ww = body.shape
        obj["body"] = np.zeros((h, w), bool)
        obj["part"] = np.zeros((h, w), bool)
        obj["body"][y0:y0 + wh, x0:x0 + ww] = body & ~part
        obj["part"][y0:y0 + wh, x0:x0 + ww] = part
    return obj


def draw_synthetic_image(
    rng: np.random.Generator,
    height: int,
    width: int,
    num_classes: int = 4,
    max_objects: int = 3,
    body_radius: tuple[float, float] = (0.18, 0.27),
    part_scale: float = 0.5,
    return_regions: bool = False,
    min_objects: int = 1,
    class_weights: tuple[float, ...] | None = None,
) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """Draw one image.

    Args:
        rng: the image's own generator.
        height, width: image size in pixels.
        num_classes: foreground classes to draw from (at most ``len(PART_STYLES)``).
        max_objects: objects per image are uniform in min_objects..max_objects (fewer when they
            do not fit); ``min_objects=max_objects=0`` draws a background only.
        body_radius: body semi-major axis as a fraction of min(height, width), before the
            per-count shrink (x0.85 for two objects, x0.75 for three or more).
        part_scale: part radius as a fraction of the body's semi-minor axis.
        return_regions: also return each object's visible ``body`` and ``part`` (H, W) bool maps.
        class_weights: relative frequency of each class among the objects (a skewed set, e.g.
            ``(60, 20, 10, 5)``); ``None``: uniform (the demo).

    Returns:
        image (H, W, 3) uint8, mask (H, W) uint8 (class index per pixel, body + part), and one dict
        per object: ``class`` (1..num_classes), ``box`` (xmin, ymin, xmax, ymax) inclusive 0-based,
        plus ``body`` / ``part`` with ``return_regions``.
    """
    # The image is a pure function of the generator's stream: the pieces below draw from it in a
    # fixed order (background, object count, then per object: size, place, class, body, part).
    h, w = int(height), int(width)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = _draw_background(rng, yy, xx)
    mask = np.zeros((h, w), np.uint8)

    if not 0 <= min_objects <= max_objects:
        raise ValueError(f"need 0 <= min_objects <= max_objects, got {min_objects}, {max_objects}")
    n_obj = int(rng.integers(min_objects, max_objects + 1))
    shrink = {1: 1.0, 2: 0.85}.get(n_obj, 0.75)
    side = min(h, w)
    placed: list[tuple[float, float, float]] = []
    objects: list[dict] = []
    for _ in range(n_obj):
        a = rng.uniform(*body_radius) * side * shrink
        b = a * rng.uniform(0.6, 0.85)
        pr = part_scale * b
        extent = a + 1.6 * pr  # bounds body and part (the part reaches at most a + 1.55 pr)
        centre = _free_centre(rng, h, w, min(0.8 * a, side / 2 - 1), extent, placed)
        if centre is None:
            continue  # no room left: fewer objects, labels follow what was drawn
        cy, cx = centre
        placed.append((cy, cx, extent))
        cls = int(rng.integers(1, num_classes + 1)) if class_weights is None else _weighted_class(rng, class_weights)
        # Everything of this object is computed in its window only.
        y0, y1 = max(0, int(cy - extent) - 2), min(h, int(cy + extent) + 3)
        x0, x1 = max(0, int(cx - extent) - 2), min(w, int(cx + extent) + 3)
        wy, wx, win = yy[y0:y1, x0:x1], xx[y0:y1, x0:x1], img[y0:y1, x0:x1]
        body, rotation = _paint_body(rng, win, wy, wx, centre, a, b)
        part = _paint_part(rng, win, wy, wx, (h, w), centre, a, b, rotation, pr, cls)
        mask[y0:y1, x0:x1][body | part] = cls
        objects.append(_object_record(cls, body, part, (y0, x0), (h, w), return_regions))

    # Sensor noise over everything, so objects are not flat colour.
    img += _noise(rng, (h, w, 3), 5.0)
    return np.round(img).clip(0, 255).astype(np.uint8), mask, objects


def _draw_item(seed: int, split: str, index: int, size: tuple[int, int], **draw: Any
               ) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """Image ``index`` of ``split`` from its own generator: (image, mask, objects) as
    :func:`draw_synthetic_image`, its height and width uniform in ``size``."""
    rng = np.random.default_rng([int(seed), _SPLIT_IDS[split], index])
    h = int(rng.integers(size[0], size[1] + 1))
    w = int(rng.integers(size[0], size[1] + 1))
    return draw_synthetic_image(rng, h, w, **draw)


def synthetic_train_labels(seed: int, n_train: int, image_size: tuple[int, int], num_classes: int,
                           **draw: Any) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """The image-level labels (N, C) bool over the C foreground classes and the (H, W) of each image of the
    ``train`` split :func:`generate_synthetic` writes with these arguments (``draw``: its ``max_objects``,
    ``body_radius``, ``part_scale``, ``class_weights``), drawn in memory (nothing is written): what a run's
    plan is derived from before its data stage has generated the set."""
    size = (int(image_size[0]), int(image_size[1]))
    labels, sizes = np.zeros((n_train, num_classes), bool), []
    for i in range(n_train):
        _, mask, objects = _draw_item(seed, "train", i, size, num_classes=num_classes, **draw)
        labels[i, [o["class"] - 1 for o in objects]] = True
        sizes.append(mask.shape)
    return labels, [(int(h), int(w)) for h, w in sizes]


def _weighted_class(rng: np.random.Generator, weights: tuple[float, ...]) -> int:
    """A class index 1..len(weights) drawn with probabilities proportional to ``weights``."""
    p = np.asarray(weights, np.float64)
    return int(rng.choice(len(p), p=p / p.sum())) + 1


def _voc_xml(name: str, h: int, w: int, objects: list[tuple[str, tuple[int, int, int, int]]]) -> str:
    objs = "".join(
        f"<object><name>{escape(c)}</name><pose>Unspecified</pose><truncated>0</truncated>"
        f"<difficult>0</difficult><bndbox><xmin>{x0 + 1}</xmin><ymin>{y0 + 1}</ymin>"
        f"<xmax>{x1 + 1}</xmax><ymax>{y1 + 1}</ymax></bndbox></object>"
        for c, (x0, y0, x1, y1) in objects
    )
    return (
        f"<annotation><folder>synthetic</folder><filename>{escape(name)}.jpg</filename>"
        f"<size><width>{w}</width><height>{h}</height><depth>3</depth></size><segmented>1</segmented>"
        f"{objs}</annotation>\n"
    )


def generate_synthetic(
    root: str | os.PathLike,
    seed: int = 0,
    n_train: int = 400,
    n_val: int = 100,
    image_size: int | tuple[int, int] = (96, 160),
    num_classes: int = 4,
    max_objects: int = 3,
    body_radius: tuple[float, float] = (0.18, 0.27),
    part_scale: float = 0.5,
    progress: bool = True,
    class_weights: tuple[float, ...] | None = None,
) -> Path:
    """Write the synthetic data set to ``root`` (layout in the module docstring) and return ``root``.

    Args:
        seed: the data set is a pure function of ``seed`` and the other arguments.
        n_train, n_val: images in ``train`` and ``val``.
        image_size: side length, or ``(lo, hi)``: height and width each uniform in [lo, hi].
        num_classes, max_objects, body_radius, part_scale, class_weights: see :func:`draw_synthetic_image`
            (``class_weights``: one positive weight per class, a skewed set; tests and docs/skewed.md).

    A root already holding a data set made with the same arguments is reused as is.
    """
    root = Path(root).expanduser()
    lo, hi = (image_size, image_size) if isinstance(image_size, int) else (int(image_size[0]), int(image_size[1]))
    if lo < 16 or hi < lo:
        raise ValueError(f"image_size must be >= 16 (and lo <= hi), got {image_size}")
    if n_train < 0 or n_val < 0 or n_train + n_val == 0:
        raise ValueError(f"need some images: n_train={n_train}, n_val={n_val}")
    if max_objects < 1:
        raise ValueError(f"max_objects must be >= 1, got {max_objects}")
    class_names = synthetic_class_names(num_classes)
    if class_weights is not None and (len(class_weights) != num_classes or min(class_weights) <= 0):
        raise ValueError(f"class_weights must be {num_classes} positive numbers, got {list(class_weights)}")
    params = {
        "version": _VERSION,
        "seed": int(seed),
        "n_train": int(n_train),
        "n_val": int(n_val),
        "image_size": [lo, hi],
        "num_classes": int(num_classes),
        "max_objects": int(max_objects),
        "body_radius": [float(body_radius[0]), float(body_radius[1])],
        "part_scale": float(part_scale),
        "class_names": class_names,
    }
    if class_weights is not None:  # absent when uniform: the demo's existing sets stay valid
        params["class_weights"] = [float(x) for x in class_weights]
    meta_file = root / "synthetic.json"
    try:
        if json.loads(meta_file.read_text(encoding="utf-8")) == params:
            logger.info("reusing the synthetic data set in %s", root)
            return root
    except (OSError, ValueError):
        pass
    # Invalidate first: an interrupted regeneration must not pass for the old, complete data set.
    meta_file.unlink(missing_ok=True)

    jobs = [("train", i) for i in range(n_train)] + [("val", i) for i in range(n_val)]
    split_names: dict[str, list[str]] = {"train": [], "val": []}
    draw = dict(num_classes=num_classes, max_objects=max_objects, body_radius=body_radius, part_scale=part_scale,
                class_weights=class_weights)
    for split, i in tqdm(jobs, desc="synthetic data", unit="img", disable=not progress):
        image, mask, objects = _draw_item(seed, split, i, (lo, hi), **draw)
        h, w = mask.shape
        name = f"{split}_{i:05d}"
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, format="JPEG", quality=95)
        write_bytes(root / "JPEGImages" / f"{name}.jpg", buf.getvalue())
        save_label_png(root / "SegmentationClass" / f"{name}.png", mask)
        xml = _voc_xml(name, h, w, [(class_names[o["class"]], o["box"]) for o in objects])
        write_text(root / "Annotations" / f"{name}.xml", xml)
        split_names[split].append(name)
    for split, names in split_names.items():
        write_text(root / "ImageSets" / "Segmentation" / f"{split}.txt", "".join(f"{n}\n" for n in names))
    write_text(root / "class_names.txt", "".join(f"{c}\n" for c in class_names))
    write_text(meta_file, json.dumps(params, indent=1))  # last: its presence means the set is complete
    return root


class SyntheticDataset(VOCDataset):
    """The data set :func:`generate_synthetic` wrote to ``root``, read through the VOC code path.

    ``split`` is ``"train"`` or ``"val"`` (or any ``ImageSets/Segmentation/<split>.txt`` there);
    further keyword arguments go to :class:`VOCDataset`.
    """

    def __init__(self, root: str | os.PathLike, split: str = "train", **kwargs) -> None:
        hint = "Generate it first with generate_synthetic(root) or `sipe demo`."
        root = check_root(root, "synthetic dataset root", hint)
        names_file = root / "class_names.txt"
        if not names_file.is_file():
            raise DatasetError(
                f"{names_file} is missing, so {root} is not a complete synthetic data set. Generate it with "
                "generate_synthetic(root)."
            )
        class_names = [c for c in names_file.read_text(encoding="utf-8").split("\n") if c.strip()]
        split_file = root / "ImageSets" / "Segmentation" / f"{split}.txt"
        if not split_file.is_file():
            raise DatasetError(f"split file {split_file} does not exist; synthetic splits are 'train' and 'val'.")
        kwargs.setdefault("class_names", class_names)
        super().__init__(root, split_file, **kwargs)


class SyntheticBackgrounds:
    """``n`` object-free synthetic images (backgrounds only, no label), drawn in memory.

    Negatives for classifier pretraining: without them every training image holds some class, so a
    classifier may recognise one class by the absence of the others, and that class's CAM then
    lights up the background. Item ``i`` is a pure function of ``(seed, i)``; items are dicts with
    ``image`` (H, W, 3) uint8, ``labels`` (num_classes,) zeros and ``name``.
    """

    def __init__(self, n: int, num_classes: int, seed: int = 0, image_size: tuple[int, int] = (96, 160)) -> None:
        self.n, self.num_classes, self.seed = int(n), int(num_classes), int(seed)
        self.image_size = (int(image_size[0]), int(image_size[1]))

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < self.n:
            raise IndexError(i)
        rng = np.random.default_rng([self.seed, 3, int(i)])  # 3: apart from the train/val streams
        lo, hi = self.image_size
        h, w = int(rng.integers(lo, hi + 1)), int(rng.integers(lo, hi + 1))
        image, _, _ = draw_synthetic_image(rng, h, w, num_classes=self.num_classes, min_objects=0, max_objects=0)
        return {"image": image, "labels": np.zeros(self.num_classes, np.float32), "name": f"background_{i:05d}"}
