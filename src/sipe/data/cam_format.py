"""The per-image CAM / IS-CAM file: the contract between ``sipe cam`` and every stage that reads maps.

Per-image CAM files (written by ``sipe cam``; read with :func:`read_cam_file`)
-----------------------------------------------------------------------------
Compact default, ``<name>.npz``:

* ``keys``: int64 (M,), indices into ``dataset.class_names`` (background = 0),
* ``maps``: float16/float32 (M, H, W) at the image's resolution, ``maps[i]`` belongs to class ``keys[i]``,
* ``kind``: a 0-d string array, ``"is_cam"`` (IS-CAM: the background channel is included, ``keys[0] == 0``,
  the prediction is the argmax over the channels) or ``"cam"`` (plain normalised foreground CAMs:
  ``keys`` are the foreground classes only, the background is a threshold swept by
  :func:`evaluate_cam`). When ``kind`` is absent it is inferred: ``"is_cam"`` if ``keys``
  contains 0, else ``"cam"``.

Official layout, ``<name>.npy`` holding a pickled dict (read by :func:`sipe.io.read_npy_dict`: numeric
numpy arrays or torch tensors, ints and strings only; nothing in the file runs):

* SIPE's ``make_cam.py``: ``{"keys": keys, "IS_CAM": maps}`` with ``keys`` including the
  background 0 -> kind ``"is_cam"``, keys used as they are.
* IRN's ``make_cam.py``: ``{"keys": keys, "cam": ..., "high_res": maps}`` with ``keys`` the
  foreground classes counted from 0 (no background) -> kind ``"cam"``, keys shifted by +1.
* A dict with a ``"kind"`` entry and ``"maps"`` (or ``"IS_CAM"``/``"high_res"``) follows the sipe
  convention above (keys are class indices, no shift).

When both ``<name>.npz`` and ``<name>.npy`` exist, the ``.npz`` is read.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sipe import io as sio
from sipe.errors import RefusedFileError

__all__ = [
    "CAM_KINDS",
    "CamFile",
    "check_cam_arrays",
    "find_cam_file",
    "is_cam_to_label",
    "read_cam_file",
    "read_is_cam",
    "write_cam_file",
]

CAM_KINDS = ("is_cam", "cam")


def check_cam_arrays(
    keys: Any,
    maps: Any,
    kind: str | None = None,
    size: tuple[int, int] | None = None,
    where: str = "",
) -> tuple[np.ndarray, np.ndarray]:
    """Check one image's ``(keys, maps)`` pair and return it as ``(keys int64 (M,), maps (M, H, W))``.

    ``kind`` ``"is_cam"``: the background channel comes first (``keys[0] == 0``); ``"cam"``:
    foreground classes only. ``size``: the (H, W) the maps must have (the original image size).
    ``where`` (a file or image name) starts every error message. Raises ``ValueError``.
    """
    at = f"{where}: " if where else ""
    keys = np.asarray(keys)
    maps = np.asarray(maps)
    if keys.ndim != 1 or not (np.issubdtype(keys.dtype, np.integer) or keys.size == 0):
        raise ValueError(f"{at}'keys' must be a 1-D integer array, got {keys.dtype} {keys.shape}")
    if maps.ndim != 3 or maps.shape[0] != keys.shape[0]:
        raise ValueError(f"{at}'maps' must be (M, H, W) with M = len(keys) = {len(keys)}, got {maps.shape}")
    if size is not None and tuple(maps.shape[1:]) != tuple(size):
        raise ValueError(
            f"{at}map size {tuple(maps.shape[1:])} differs from the image size {tuple(size)}; "
            "the maps must be saved at the original image size"
        )
    if kind is not None and kind not in CAM_KINDS:
        raise ValueError(f"{at}unknown kind {kind!r}; expected one of {CAM_KINDS}")
    if kind == "is_cam" and (keys.size == 0 or keys[0] != 0):
        raise ValueError(
            f"{at}IS-CAM keys must start with the background channel, the background 0 (keys[0] == 0), "
            f"got {keys.tolist()}"
        )
    if kind == "cam" and np.any(keys == 0):
        raise ValueError(f"{at}plain-CAM keys are the foreground classes only, but they contain 0")
    return keys.astype(np.int64), maps


@dataclass
class CamFile:
    """One image's saved maps: ``keys`` int64 (M,) class indices, ``maps`` float32 (M, H, W), ``kind``."""

    keys: np.ndarray
    maps: np.ndarray
    kind: str


def read_cam_file(path: str | os.PathLike) -> CamFile:
    """Read a per-image CAM / IS-CAM file in either layout (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CAM file {path} does not exist; run `sipe cam` for this split first")
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                if "keys" not in z.files or "maps" not in z.files:
                    raise ValueError(f"arrays 'keys' and 'maps' expected, found {sorted(z.files)}")
                keys, maps = z["keys"], z["maps"]
                kind = _as_str(z["kind"].item()) if "kind" in z.files else None
        elif path.suffix == ".npy":
            # Files from elsewhere may be hostile: numpy arrays only, nothing in the pickle runs.
            keys, maps, kind = _parse_official(sio.read_npy_dict(path))
        else:
            raise ValueError("unknown suffix; expected .npz or .npy")
    except RefusedFileError:  # a refused .npy: its one line already names the file and what it asked for
        raise
    except Exception as e:  # numpy raises many types for damaged files (BadZipFile, EOFError, pickle errors)
        raise ValueError(
            f"cannot read CAM file {path} ({type(e).__name__}: {e}); delete it and rerun `sipe cam` to regenerate it"
        ) from e
    if kind is None:
        kind = "is_cam" if np.any(np.asarray(keys) == 0) else "cam"
    keys, maps = check_cam_arrays(keys, maps, kind, where=f"CAM file {path}")
    return CamFile(keys, maps.astype(np.float32, copy=False), kind)


def _as_str(x: Any) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)


def _parse_official(d: Any) -> tuple[Any, Any, str | None]:
    if not isinstance(d, dict) or "keys" not in d:
        raise ValueError("a dict with 'keys' was expected")
    keys = np.asarray(d["keys"])
    if "kind" in d:
        for field in ("maps", "IS_CAM", "high_res"):
            if field in d:
                return keys, d[field], _as_str(d["kind"])
        raise ValueError("no 'maps', 'IS_CAM' or 'high_res' entry")
    if "IS_CAM" in d:
        return keys, d["IS_CAM"], "is_cam"
    if "high_res" in d:  # IRN's plain CAM: foreground keys counted from 0
        return keys + 1, d["high_res"], "cam"
    raise ValueError(f"no 'IS_CAM' or 'high_res' entry (found {sorted(d)})")


def write_cam_file(path: str | os.PathLike, keys: np.ndarray, maps: np.ndarray, kind: str = "is_cam") -> None:
    """Write one image's maps atomically in the layout named by the suffix (the inverse of :func:`read_cam_file`).

    ``.npz``: ``keys`` int64, ``maps`` float16, ``kind``. ``.npy``: the official layouts, SIPE's
    ``{"keys", "IS_CAM"}`` (float32) for ``"is_cam"`` and IRN's ``{"keys" - 1, "high_res"}`` for ``"cam"``.

    Args:
        keys: (M,) class indices (background 0 first for ``"is_cam"``, foreground only for ``"cam"``).
        maps: (M, H, W) scores in [0, 1].
    """
    path = Path(path)
    keys, maps = check_cam_arrays(np.asarray(keys, dtype=np.int64).reshape(-1), maps, kind)
    if path.suffix == ".npz":
        sio.save_npz(path, keys=keys, maps=maps.astype(np.float16), kind=np.array(kind))
    elif path.suffix == ".npy":
        if kind == "is_cam":
            sio.save_npy_dict(path, {"keys": keys, "IS_CAM": maps.astype(np.float32)})
        else:
            sio.save_npy_dict(path, {"keys": keys - 1, "high_res": maps.astype(np.float32)})
    else:
        raise ValueError(f"{path}: CAM files end in .npz (compact) or .npy (official layout)")



def find_cam_file(cam_dir: str | os.PathLike, name: str) -> Path | None:
    """``cam_dir/<name>.npz`` if present, else ``cam_dir/<name>.npy``, else ``None``."""
    for suffix in (".npz", ".npy"):
        p = Path(cam_dir) / f"{name}{suffix}"
        if p.is_file():
            return p
    return None


def is_cam_to_label(keys: np.ndarray, maps: np.ndarray) -> np.ndarray:
    """(H, W) int64 label map: the argmax over the M channels of ``maps`` (M, H, W), mapped through ``keys``."""
    return keys[np.argmax(maps, axis=0)]


def read_is_cam(cam_dir: str | os.PathLike, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Read one image's IS-CAM file (``<name>.npz`` or official ``<name>.npy``) from ``cam_dir``.

    Returns:
        keys (M,) int64 with 0 (background) first, maps (M, H, W) float32.
    """
    path = find_cam_file(cam_dir, name)
    if path is None:
        raise FileNotFoundError(
            f"no IS-CAM file for image {name!r} in {cam_dir} (looked for {name}.npz and {name}.npy); "
            "run `sipe cam` for this split first and pass its is_cam/ folder as --cam-dir"
        )
    cam = read_cam_file(path)
    if cam.kind != "is_cam":
        raise ValueError(f"{path} holds plain CAMs; refinement needs IS-CAMs (background channel first)")
    return cam.keys, cam.maps
