"""Robust image and mask reading: every file becomes (H, W, 3) uint8 RGB or (H, W) uint8 indices.

Real datasets hold grayscale, RGBA, palette, CMYK and 16-bit files, EXIF-rotated phone photos
and the odd truncated download. Each is either converted correctly here or rejected with an
:class:`ImageReadError` that names the file and what to do. Truncated files are never loaded
partially (``ImageFile.LOAD_TRUNCATED_IMAGES`` is left alone).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from sipe import io as sio
from sipe.errors import InputError

__all__ = [
    "IMAGE_SUFFIXES",
    "ImageReadError",
    "ImageTooSmallError",
    "check_min_size",
    "collect_images",
    "decoded_size",
    "exif_transpose_to_match",
    "image_size",
    "read_image",
    "read_label_png",
    "read_mask",
    "to_rgb_array",
]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm")

# EXIF orientation tag; values 5..8 swap width and height.
_EXIF_ORIENTATION = 0x0112


class ImageReadError(InputError):
    """An image or mask file that cannot be read (missing, corrupt, truncated, unsupported)."""


class ImageTooSmallError(ImageReadError):
    """An image smaller than the network stride: its feature map would be empty."""


def _fix_hint(path: Path) -> str:
    return f"Re-download or re-export '{path.name}', or remove it from the split list / labels file."


def _open(path: str | os.PathLike, what: str) -> Image.Image:
    """Open and fully decode ``path``; every failure becomes an :class:`ImageReadError`."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{what} file {path} does not exist. Check the dataset root and the split list.")
    img = None
    try:
        img = Image.open(path)
        img.load()
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        if img is not None:
            img.close()
        raise ImageReadError(
            f"cannot read {what} {path}: {err}. The file is corrupt, truncated or not an image. {_fix_hint(path)}"
        ) from err
    return img


def _sixteen_bit_to_u8(arr: np.ndarray) -> np.ndarray:
    # Full-range mapping 0..65535 -> 0..255 (65535 / 257 = 255); PIL's convert("L") would clip instead.
    return np.round(arr.astype(np.float64) / 257.0).clip(0, 255).astype(np.uint8)


def to_rgb_array(img: Image.Image, *, alpha_background: tuple[int, int, int] = (255, 255, 255)) -> np.ndarray:
    """Convert a decoded PIL image of any mode to an (H, W, 3) uint8 RGB array.

    Alpha is composited over ``alpha_background`` (white by default, as image viewers show
    transparent cut-outs). 16-bit grayscale is mapped onto 0..255 over its full range; mode ``I``
    (32-bit integer) is treated as 16-bit data when any value exceeds 255 and as 8-bit otherwise;
    float images (mode ``F``) in [0, 1] are scaled by 255, others clipped to [0, 255].
    """
    mode = img.mode
    if mode.startswith("I;16") or mode == "I":
        arr = np.asarray(img)
        if mode.startswith("I;16") or (arr.size and arr.max() > 255):
            gray = _sixteen_bit_to_u8(arr)
        else:
            gray = arr.clip(0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))
    if mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        if arr.size and np.nanmax(arr) <= 1.0:
            arr = arr * 255.0
        gray = np.round(np.nan_to_num(arr)).clip(0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))
    has_alpha = mode in ("RGBA", "LA", "La", "RGBa", "PA") or (mode == "P" and "transparency" in img.info)
    if has_alpha:
        rgba = np.asarray(img.convert("RGBA"), dtype=np.float32)
        alpha = rgba[:, :, 3:4] / 255.0
        bg = np.asarray(alpha_background, dtype=np.float32)
        out = rgba[:, :, :3] * alpha + bg * (1.0 - alpha)
        return np.round(out).clip(0, 255).astype(np.uint8)
    if mode != "RGB":
        # Covers 1, L, P, CMYK, YCbCr, LAB, HSV: PIL knows each conversion.
        img = img.convert("RGB")
    return np.array(img, dtype=np.uint8, copy=True)


def read_image(
    path: str | os.PathLike,
    *,
    exif_transpose: bool = True,
    alpha_background: tuple[int, int, int] = (255, 255, 255),
) -> np.ndarray:
    """Read any image file as an (H, W, 3) uint8 RGB array.

    Args:
        path: image file (JPEG, PNG, TIFF, BMP, WebP, ... anything Pillow decodes).
        exif_transpose: apply the EXIF orientation tag, so phone photos come out upright. Datasets
            whose masks were drawn on the stored pixels (VOC, COCO) pass ``False``.
        alpha_background: RGB colour transparent pixels are composited onto.

    Raises:
        ImageReadError: the file is missing, corrupt, truncated or not an image; the message
            names the file and the fix.
    """
    path = Path(path)
    with _open(path, "image") as img:
        try:
            upright = ImageOps.exif_transpose(img) if exif_transpose else img
            return to_rgb_array(upright, alpha_background=alpha_background)
        except (OSError, ValueError, SyntaxError, KeyError, TypeError) as err:
            raise ImageReadError(
                f"cannot convert image {path} (mode {img.mode}) to RGB: {err}. {_fix_hint(path)}"
            ) from err


def _upright_size(img: Image.Image, exif_transpose: bool) -> tuple[int, int]:
    w, h = img.size
    if exif_transpose and img.getexif().get(_EXIF_ORIENTATION, 1) in (5, 6, 7, 8):
        w, h = h, w
    return h, w


def image_size(path: str | os.PathLike, *, exif_transpose: bool = True) -> tuple[int, int]:
    """(H, W) of an image from its header only (no decoding); honours the EXIF orientation."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"image file {path} does not exist. Check the dataset root and the split list.")
    try:
        with Image.open(path) as img:
            return _upright_size(img, exif_transpose)
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as err:
        raise ImageReadError(f"cannot read image header of {path}: {err}. {_fix_hint(path)}") from err


def exif_transpose_to_match(path: str | os.PathLike, size: tuple[int, int], default: bool) -> bool:
    """Whether to apply ``path``'s EXIF orientation so that the image comes out (H, W) = ``size`` (the
    size of a mask drawn on it): ``True`` / ``False`` when only the turned / only the stored pixels
    have that size; ``default`` when both do (no tag, a mirror-only tag, a square photo) or neither.
    Reads the header only.
    """
    stored, upright = image_size(path, exif_transpose=False), image_size(path, exif_transpose=True)
    size = tuple(size)
    if (stored == size) != (upright == size):
        return upright == size
    return default


def decoded_size(path: str | os.PathLike, *, exif_transpose: bool = True) -> tuple[int, int]:
    """(H, W) of an image after decoding every pixel; honours the EXIF orientation.

    Unlike :func:`image_size`, a file whose header is intact but whose data is truncated or
    corrupt raises :class:`ImageReadError` here, before a run starts, rather than in a DataLoader
    worker in the middle of training.
    """
    with _open(path, "image") as img:
        return _upright_size(img, exif_transpose)


def check_min_size(image: np.ndarray | tuple[int, int], min_size: int, *, name: str = "image") -> None:
    """Raise :class:`ImageTooSmallError` if either side of ``image`` is below ``min_size`` pixels.

    ``image`` is an (H, W[, C]) array or an (H, W) tuple. Use the network's output stride (16 for
    SIPE's ResNet) so that every image yields at least one feature-map cell at scale 1.
    """
    h, w = (int(image[0]), int(image[1])) if isinstance(image, tuple) else image.shape[:2]
    if h < min_size or w < min_size:
        raise ImageTooSmallError(
            f"{name} is {h}x{w} pixels, smaller than the minimum {min_size} (the network stride): its "
            "feature map would be empty. Upscale the image or remove it from the split "
            "(datasets' drop_small(min_size) skips such images with a logged count)."
        )


def read_label_png(path: str | os.PathLike, *, exif_transpose: bool = True) -> np.ndarray:
    """Read a label image (mask, pseudo label, prediction) as (H, W) uint8 class indices, 255 = ignore.

    The one reader of label files, used by every dataset, stage and evaluator:

    * palette PNGs (VOC ``SegmentationClass``, what sipe writes) give their palette *indices*;
    * greyscale (``L``, ``1``; ``SegmentationClassAug``) give their values; 16-/32-bit integer images
      are accepted when every value fits in 0..255;
    * RGB(A) images give the index of each pixel's colour in the VOC palette (alpha ignored); a colour
      outside the palette is refused, since other colours are no class index.

    ``exif_transpose``: a label file carrying an EXIF orientation tag is turned as
    :func:`read_image` turns its photo, so both are in the displayed orientation (pass the dataset's
    setting); without the tag it is a no-op, and sipe never writes one.

    Raises:
        ImageReadError: missing, unreadable, of another mode, or holding values that are no class
            index; the one-line message names the file and the fix.
    """
    path = Path(path)
    with _open(path, "label image") as img:
        # exif_transpose keeps the mode (palette indices stay indices).
        return _label_array(ImageOps.exif_transpose(img) if exif_transpose else img, path)


# The old name of the one reader (datasets' masks); the same function.
read_mask = read_label_png

_LABEL_FIX = (
    "save labels as palette ('P') or greyscale ('L') PNGs whose values are class indices (0 = background, 255 = ignore)"
)


def _label_array(img: Image.Image, path: Path) -> np.ndarray:
    mode = img.mode
    if mode in ("P", "L", "1"):
        return np.array(img, dtype=np.uint8, copy=True)
    if mode.startswith("I"):
        arr = np.asarray(img)
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise ImageReadError(
                f"label image {path} has values in [{arr.min()}, {arr.max()}]; class indices must lie in 0..255 "
                "(255 = ignore). Re-save it as an 8-bit palette or grayscale PNG."
            )
        return arr.astype(np.uint8)
    if mode in ("RGB", "RGBA"):
        return _palette_indices(np.asarray(img)[..., :3], path)
    raise ImageReadError(f"label image {path} is a {mode} image; {_LABEL_FIX}")


def _palette_indices(rgb: np.ndarray, path: Path) -> np.ndarray:
    """(H, W) uint8 index of each (H, W, 3) colour in the VOC palette; a colour outside it is refused."""
    rgb = rgb.astype(np.int64)
    code = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    pal = sio.voc_palette().astype(np.int64)
    pal_code = (pal[:, 0] << 16) | (pal[:, 1] << 8) | pal[:, 2]
    lut_keys, first = np.unique(pal_code, return_index=True)
    pos = np.searchsorted(lut_keys, code).clip(0, lut_keys.size - 1)
    known = lut_keys[pos] == code
    if not known.all():
        c = rgb[~known][0].tolist()
        raise ImageReadError(f"label image {path} holds colour {c} that is not in the VOC palette; {_LABEL_FIX}")
    return first[pos].astype(np.uint8)


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
