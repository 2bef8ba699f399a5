"""Atomic file output (every file sipe writes appears whole or not at all), the torch-free check of a
checkpoint path that commands run before loading anything, and the one reader and writer of sipe's
checkpoint files (``{"model": state_dict, "meta": {...}, ...}``; torch loads inside them only).

What each model kind keeps in ``meta`` and how its network is rebuilt is :mod:`sipe.models.checkpoint`'s
business; this layer below the models only moves the dicts, so that the engine reads and writes
checkpoints without importing a network."""

from __future__ import annotations

import contextlib
import functools
import io
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    import torch


def voc_palette() -> np.ndarray:
    """Return the 256x3 uint8 PASCAL VOC palette (index 255 drawn white for 'ignore')."""
    return _voc_palette().copy()


@functools.lru_cache(maxsize=1)
def _voc_palette() -> np.ndarray:
    palette = np.zeros((256, 3), dtype=np.uint8)
    for i in range(256):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette[i] = (r, g, b)
    palette[255] = (255, 255, 255)
    return palette


def checkpoint_file(path: str | os.PathLike, made_by: str = "sipe") -> Path:
    """``path`` as a ``Path`` if it is a file; else ``FileNotFoundError`` naming the command that writes
    such checkpoints. Torch-free, so commands check their ``--checkpoint`` before torch loads."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist; pass a .pt/.pth file written by '{made_by}'")
    return path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; rename it onto ``path`` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates 0600 files; give the result the permissions a plain open() would.
        os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@functools.lru_cache(maxsize=1)
def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    write_bytes(path, text.encode("utf-8"))


def save_torch(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` that never leaves a half-written checkpoint."""
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    write_bytes(path, buf.getvalue())


def read_checkpoint(
    path: str | os.PathLike, map_location: str | torch.device = "cpu", made_by: str = "sipe"
) -> dict[str, Any]:
    """Load a checkpoint file as a dict, with one clear error for each way it can be wrong.

    ``made_by`` names the command that writes such files, for the messages. Raises
    ``FileNotFoundError`` (missing) or ``ValueError`` (unreadable, truncated, not a dict).
    """
    import torch

    path = checkpoint_file(path, made_by)
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:  # torch raises many types for damaged files; re-raised with the file named
        raise ValueError(
            f"cannot read checkpoint {path} ({type(exc).__name__}: {exc}); the file is incomplete or damaged: "
            f"write it again with '{made_by}'. Is the file complete?"
        ) from exc
    if not isinstance(ckpt, Mapping):
        raise ValueError(f"checkpoint {path} holds a {type(ckpt).__name__}, not a state dict")
    return dict(ckpt)


def write_checkpoint(path: str | os.PathLike, state_dict: Mapping[str, torch.Tensor], meta: Mapping[str, Any],
                     **extra: Any) -> None:
    """Write ``{"model": state_dict, "meta": meta, **extra}`` to ``path`` atomically."""
    save_torch({"model": state_dict, "meta": dict(meta), **extra}, path)


def save_npz(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    """Compressed ``.npz`` written atomically."""
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    write_bytes(path, buf.getvalue())


def save_npy_dict(path: str | os.PathLike, obj: dict) -> None:
    """A pickled dict in ``.npy`` form (the official per-image IS-CAM layout), atomically."""
    buf = io.BytesIO()
    np.save(buf, obj, allow_pickle=True)
    write_bytes(path, buf.getvalue())


def save_image(path: str | os.PathLike, image: Image.Image | np.ndarray) -> None:
    """Save an image (format from the suffix) atomically."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    buf = io.BytesIO()
    fmt = Image.registered_extensions().get(Path(path).suffix.lower(), "PNG")
    image.save(buf, format=fmt)
    write_bytes(path, buf.getvalue())


def save_label_png(path: str | os.PathLike, label: np.ndarray) -> None:
    """Save an (H, W) integer label map as a palette PNG in the VOC colours (255 = ignore)."""
    label = np.asarray(label)
    if label.ndim != 2:
        raise ValueError(f"label map for {path} must be 2-D (H, W), got shape {label.shape}")
    if label.size and (label.min() < 0 or label.max() > 255):
        raise ValueError(f"label values for {path} must lie in [0, 255]")
    img = Image.fromarray(label.astype(np.uint8), mode="P")
    img.putpalette(voc_palette().reshape(-1).tolist())
    save_image(path, img)
