"""Atomic file output (every file sipe writes appears whole or not at all), the torch-free check of a
checkpoint path that commands run before loading anything, and the one reader and writer of sipe's
checkpoint files (``{"model": state_dict, "meta": {...}, ...}``; torch loads inside them only), and the
reader of the official per-image ``.npy`` IS-CAM dicts.

Nothing sipe reads runs code from the file: checkpoints are loaded with ``torch.load(weights_only=True)``
(tensors and plain Python values; the one allow-list of anything more is :data:`CHECKPOINT_SAFE_GLOBALS`),
``.npy`` dicts through an unpickler that rebuilds numpy arrays and nothing else (:func:`read_npy_dict`).
A file that asks for anything else is refused with one :class:`sipe.errors.RefusedFileError` line.

What each model kind keeps in ``meta`` and how its network is rebuilt is :mod:`sipe.models.checkpoint`'s
business; this layer below the models only moves the dicts, so that the engine reads and writes
checkpoints without importing a network."""

from __future__ import annotations

import contextlib
import functools
import io
import os
import pickle
import re
import sys
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from sipe.errors import RefusedFileError

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


# The non-tensor types that sipe's checkpoints may hold beyond what torch.load(weights_only=True) admits by
# itself (tensors, dicts, lists, tuples, str, int, float, bool, None): the one allow-list, kept empty on
# purpose. Every checkpoint sipe writes (SIPE, last.pt with its optimiser and scaler state, IRN, seg, the
# stand-in backbone.pth) stores its configs and metadata as plain types (tests/test_safe_load.py checks each
# kind), and so do the authors' .pth files and deeplab-pytorch's converted weights.
CHECKPOINT_SAFE_GLOBALS: tuple[Any, ...] = ()


def load_torch_file(path: str | os.PathLike, map_location: str | torch.device = "cpu", what: str = "checkpoint",
                    made_by: str = "sipe") -> Any:
    """``torch.load(path, weights_only=True)``: whatever the file holds, rebuilt without running any of it.

    ``what`` ("checkpoint", "weights file") and ``made_by`` word the messages. Raises
    :class:`sipe.errors.RefusedFileError` (one line naming the file and the type it asked for) for a file that
    needs more than tensors, plain Python values and :data:`CHECKPOINT_SAFE_GLOBALS`; ``ValueError`` for a
    damaged one.
    """
    import torch

    path = Path(path)
    try:
        with _allowed_globals(torch):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only load failed" in str(exc).lower():  # torch's words for a refused global or opcode
            raise RefusedFileError(
                f"refused to load {what} {path}: it asks for {_refused_type(exc)}, which no {what} needs "
                "(sipe loads them with torch.load(weights_only=True): tensors and plain values only, so nothing "
                f"in the file runs); use a file written by '{made_by}' or re-save its tensors as a plain state dict"
            ) from None  # torch's own message spans a dozen lines and recommends weights_only=False
        raise _damaged(path, what, made_by, exc) from exc
    except Exception as exc:  # torch raises many types for damaged files; re-raised with the file named
        raise _damaged(path, what, made_by, exc) from exc


def _allowed_globals(torch: Any) -> contextlib.AbstractContextManager:
    if not CHECKPOINT_SAFE_GLOBALS:
        return contextlib.nullcontext()  # also where torch < 2.5 has no safe_globals
    return torch.serialization.safe_globals(list(CHECKPOINT_SAFE_GLOBALS))


def _refused_type(exc: BaseException) -> str:
    """The global (``posix.system``) or opcode that torch's weights-only unpickler refused, from its message."""
    text = str(exc)
    found = re.search(r"GLOBAL ([\w.]+)", text)
    if found:
        return found.group(1)
    found = re.search(r"WeightsUnpickler error: ([^\n]+)", text)
    return found.group(1).strip().rstrip(".") if found else "something other than tensors and plain values"


def _damaged(path: Path, what: str, made_by: str, exc: BaseException) -> ValueError:
    return ValueError(
        f"cannot read {what} {path} ({type(exc).__name__}: {exc}); the file is incomplete or damaged: "
        f"write it again with '{made_by}'. Is the file complete?"
    )


def read_checkpoint(
    path: str | os.PathLike, map_location: str | torch.device = "cpu", made_by: str = "sipe"
) -> dict[str, Any]:
    """Load a checkpoint file as a dict, with one clear error for each way it can be wrong.

    ``made_by`` names the command that writes such files, for the messages. Raises
    ``FileNotFoundError`` (missing), :class:`sipe.errors.RefusedFileError` (asks for more than tensors and plain
    values: refused, nothing in it runs; see :func:`load_torch_file`) or ``ValueError`` (unreadable,
    truncated, not a dict).
    """
    path = checkpoint_file(path, made_by)
    ckpt = load_torch_file(path, map_location, "checkpoint", made_by)
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


def read_npy_dict(path: str | os.PathLike) -> dict[str, Any]:
    """The dict pickled in a ``.npy`` file (the official per-image IS-CAM layout), rebuilt without running
    anything in it: the unpickler admits numpy's own array, dtype and scalar rebuilders, and torch's tensor
    rebuilder whose storage bytes load with ``weights_only=True`` (IRN's ``make_cam.py`` saves tensors);
    nothing else. Values come back as numeric numpy arrays (tensors converted), ints or strings.

    Raises :class:`sipe.errors.RefusedFileError` (one line naming the file and the type it asked for) for any
    other content; ``ValueError`` for a file that is not a pickled ``.npy`` dict or is damaged.
    """
    path = Path(path)
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        if version not in ((1, 0), (2, 0)):  # np.save writes 3.0 only for structured arrays, never for a dict
            raise ValueError(f"{path}: .npy format version {version} is not a pickled dict")
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read_header(f)
        if dtype != np.dtype(object) or shape != ():
            raise ValueError(f"{path} holds a {dtype} array of shape {shape}, not a pickled dict")
        try:
            obj = _ArraysOnlyUnpickler(f).load()
        except _RefusedGlobal as refused:
            raise RefusedFileError(
                f"refused to load {path}: it asks for {refused}, which an IS-CAM file has no need of (official .npy "
                "dicts are read with numpy's and torch's array rebuilders only, so nothing in the file runs); save "
                "its values as numpy arrays, or write the compact .npz with 'sipe cam'"
            ) from None
    item = obj.item() if isinstance(obj, np.ndarray) and obj.dtype == object and obj.shape == () else obj
    if not isinstance(item, dict):
        raise ValueError(f"{path} holds a pickled {type(item).__name__}, not a dict")
    return {key: _plain_cam_value(path, key, value) for key, value in item.items()}


def _plain_cam_value(path: Path, key: Any, value: Any) -> Any:
    """``value`` (a tensor as a numpy array) if it is a numeric array, an int or a string; else ``ValueError``."""
    torch = sys.modules.get("torch")  # imported already when the file held a tensor
    if torch is not None and isinstance(value, torch.Tensor):
        value = value.numpy()
    if isinstance(key, str) and (
        (isinstance(value, np.ndarray) and value.dtype.kind in "biuf")  # no object arrays: they nest more objects
        or isinstance(value, int | np.integer | str | bytes)
    ):
        return value
    what = f"an array of dtype {value.dtype}" if isinstance(value, np.ndarray) else f"a {type(value).__name__}"
    raise ValueError(f"{path}: its entry {key!r} is {what}; an IS-CAM dict holds numeric arrays, ints and strings only")


class _RefusedGlobal(pickle.UnpicklingError):
    """A global that :class:`_ArraysOnlyUnpickler` does not rebuild; its text is the dotted name."""


def _numpy_rebuilders() -> dict[tuple[str, str], Any]:
    """numpy's own array, dtype and scalar rebuilders, under the module names numpy 1.x and 2.x pickle them."""
    try:
        from numpy._core import multiarray, numeric
    except ImportError:  # numpy 1.x
        from numpy.core import multiarray, numeric  # type: ignore[no-redef]
    found: dict[tuple[str, str], Any] = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    for core in ("numpy.core", "numpy._core"):
        found[(f"{core}.multiarray", "_reconstruct")] = multiarray._reconstruct
        found[(f"{core}.multiarray", "scalar")] = multiarray.scalar
        found[(f"{core}.numeric", "_frombuffer")] = numeric._frombuffer
    return found


# A pickled torch tensor: its rebuilder, its (empty) hooks dict, and its storage as torch.save bytes.
_TORCH_TENSOR = {("torch._utils", "_rebuild_tensor_v2"), ("collections", "OrderedDict"),
                 ("torch.storage", "_load_from_bytes")}


def _torch_rebuilder(name: str) -> Any:
    import collections

    import torch

    if name == "OrderedDict":
        return collections.OrderedDict
    if name == "_rebuild_tensor_v2":
        return torch._utils._rebuild_tensor_v2

    def storage_from_bytes(data: bytes) -> Any:  # torch's own _load_from_bytes would use weights_only=False
        try:
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            raise _RefusedGlobal(_refused_type(exc)) from None

    return storage_from_bytes


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """Rebuilds numpy arrays, dtypes and scalars, torch tensors and plain Python values; refuses every
    other global (such as ``os.system``) before it is looked up."""

    _allowed = _numpy_rebuilders()

    def find_class(self, module: str, name: str) -> Any:
        found = self._allowed.get((module, name))
        if found is None and (module, name) in _TORCH_TENSOR:
            found = _torch_rebuilder(name)
        if found is None:
            raise _RefusedGlobal(f"{module}.{name}")
        return found

    def persistent_load(self, pid: Any) -> Any:
        raise _RefusedGlobal(f"a persistent object ({type(pid).__name__})")


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
