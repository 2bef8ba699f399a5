"""Segmentation metrics: confusion matrix, per-class IoU, mIoU, precision/recall, CAM sweeps, JSON reports.

Conventions
-----------
* A confusion matrix is (K, K) int64 with rows = ground truth and columns = prediction, over the
  K classes of a dataset (index 0 = background). Ground-truth pixels equal to ``ignore_index``
  (255) are not counted. Predicted pixels equal to ``ignore_index`` (e.g. the uncertain regions
  of a pseudo-label PNG) are not counted either: this is what the official evaluation does
  (chainercv's confusion is cut to ``[:K, :K]``, dropping the column 255).
* The mIoU is the mean IoU over the classes that occur in the ground truth or in the prediction
  (others have an undefined IoU and are left out), as in the official ``eval_cam.py``.

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

Official layout, ``<name>.npy`` holding a pickled dict:

* SIPE's ``make_cam.py``: ``{"keys": keys, "IS_CAM": maps}`` with ``keys`` including the
  background 0 -> kind ``"is_cam"``, keys used as they are.
* IRN's ``make_cam.py``: ``{"keys": keys, "cam": ..., "high_res": maps}`` with ``keys`` the
  foreground classes counted from 0 (no background) -> kind ``"cam"``, keys shifted by +1.
* A dict with a ``"kind"`` entry and ``"maps"`` (or ``"IS_CAM"``/``"high_res"``) follows the sipe
  convention above (keys are class indices, no shift).

When both ``<name>.npz`` and ``<name>.npy`` exist, the ``.npz`` is read.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from sipe import io as sio

logger = logging.getLogger(__name__)

# Fine enough that the best threshold of a weak, low-valued CAM is not cut off at the first step
# (the official sweep is 0.00-0.59 in steps of 0.01).
DEFAULT_THRESHOLDS: np.ndarray = np.round(np.arange(96) / 100, 2)
CAM_KINDS = ("is_cam", "cam")


class ConfusionMatrix:
    """Accumulates a (K, K) confusion matrix (rows = ground truth, columns = prediction).

    Args:
        num_classes: K, including the background.
        ignore_index: label value that is not counted, in the ground truth and in the prediction.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        if 0 <= ignore_index < num_classes:
            raise ValueError(f"ignore_index {ignore_index} collides with a class index (K={num_classes})")
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.matrix = np.zeros((num_classes, num_classes), dtype=np.int64)

    def reset(self) -> None:
        self.matrix[...] = 0

    def update(self, pred: Any, gt: Any) -> None:
        """Add one prediction / ground-truth pair (numpy arrays or torch tensors, same shape, any rank).

        Values must be class indices in [0, K) or ``ignore_index``; anything else raises ``ValueError``.
        Torch tensors are counted on their own device (no full-size copy to the CPU).
        """
        if hasattr(pred, "detach") or hasattr(gt, "detach"):
            self._update_torch(pred, gt)
            return
        pred = np.asarray(pred)
        gt = np.asarray(gt)
        if pred.shape != gt.shape:
            raise ValueError(f"prediction shape {pred.shape} differs from ground-truth shape {gt.shape}")
        k, ign = self.num_classes, self.ignore_index
        gt = gt.reshape(-1).astype(np.int64, copy=False)
        pred = pred.reshape(-1).astype(np.int64, copy=False)
        valid = (gt != ign) & (pred != ign)
        gt, pred = gt[valid], pred[valid]
        if gt.size and (gt.min() < 0 or gt.max() >= k):
            bad = np.unique(gt[(gt < 0) | (gt >= k)])[:5].tolist()
            raise ValueError(f"ground truth holds values {bad} outside [0, {k}) and != {ign}")
        if pred.size and (pred.min() < 0 or pred.max() >= k):
            bad = np.unique(pred[(pred < 0) | (pred >= k)])[:5].tolist()
            raise ValueError(f"prediction holds values {bad} outside [0, {k}) and != {ign}")
        self.matrix += np.bincount(gt * k + pred, minlength=k * k).reshape(k, k)

    def _update_torch(self, pred: Any, gt: Any) -> None:
        import torch

        device = pred.device if isinstance(pred, torch.Tensor) else gt.device
        pred = torch.as_tensor(pred, device=device)
        gt = torch.as_tensor(gt, device=device)
        if pred.shape != gt.shape:
            raise ValueError(
                f"prediction shape {tuple(pred.shape)} differs from ground-truth shape {tuple(gt.shape)}"
            )
        k, ign = self.num_classes, self.ignore_index
        gt = gt.reshape(-1).long()
        pred = pred.reshape(-1).long()
        valid = (gt != ign) & (pred != ign)
        gt, pred = gt[valid], pred[valid]
        if gt.numel() and bool(((gt < 0) | (gt >= k)).any()):
            bad = torch.unique(gt[(gt < 0) | (gt >= k)])[:5].tolist()
            raise ValueError(f"ground truth holds values {bad} outside [0, {k}) and != {ign}")
        if pred.numel() and bool(((pred < 0) | (pred >= k)).any()):
            bad = torch.unique(pred[(pred < 0) | (pred >= k)])[:5].tolist()
            raise ValueError(f"prediction holds values {bad} outside [0, {k}) and != {ign}")
        counts = torch.bincount(gt * k + pred, minlength=k * k).reshape(k, k)
        self.matrix += counts.cpu().numpy().astype(np.int64)

    def reduce_from_all_processes(self) -> None:
        """Sum the matrix over all ranks (``torch.distributed``); a no-op when not initialised."""
        import torch
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return
        device = torch.device("cpu")
        if dist.get_backend() == "nccl":
            device = torch.device("cuda", torch.cuda.current_device())
        t = torch.from_numpy(self.matrix).to(device)
        dist.all_reduce(t)
        self.matrix = t.cpu().numpy().astype(np.int64)

    def __iadd__(self, other: ConfusionMatrix) -> ConfusionMatrix:
        if other.num_classes != self.num_classes:
            raise ValueError(f"cannot add a K={other.num_classes} matrix to a K={self.num_classes} one")
        self.matrix += other.matrix
        return self

    # ------------------------------------------------------------------ metrics
    @staticmethod
    def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
        num = num.astype(np.float64)
        den = den.astype(np.float64)
        out = np.full(num.shape, np.nan)
        np.divide(num, den, out=out, where=den > 0)
        return out

    def iou(self) -> np.ndarray:
        """(K,) float64 IoU per class; NaN for classes absent from both ground truth and prediction."""
        m = self.matrix
        tp = np.diag(m)
        return self._ratio(tp, m.sum(1) + m.sum(0) - tp)

    def precision(self) -> np.ndarray:
        """(K,) TP / predicted pixels; NaN for classes never predicted."""
        return self._ratio(np.diag(self.matrix), self.matrix.sum(0))

    def recall(self) -> np.ndarray:
        """(K,) TP / ground-truth pixels; NaN for classes absent from the ground truth."""
        return self._ratio(np.diag(self.matrix), self.matrix.sum(1))

    @staticmethod
    def _nanmean(x: np.ndarray) -> float:
        x = x[~np.isnan(x)]
        return float(x.mean()) if x.size else math.nan

    def miou(self) -> float:
        """Mean IoU over the classes present in the ground truth or the prediction (NaN if none)."""
        return self._nanmean(self.iou())

    def pixel_accuracy(self) -> float:
        """Correct pixels / counted pixels (NaN if nothing was counted)."""
        total = self.matrix.sum()
        return float(np.trace(self.matrix) / total) if total else math.nan

    def report(self, class_names: Sequence[str] | None = None) -> dict[str, Any]:
        """JSON-ready metrics: mIoU, pixel accuracy, mean precision/recall and a per-class table.

        Undefined values (NaN) are given as ``None``. Per-class rows: ``index``, ``name``, ``iou``,
        ``precision``, ``recall``, ``gt_pixels``, ``pred_pixels``. ``confusion_matrix`` is the raw matrix.
        """
        names = self._names(class_names)
        iou, prec, rec = self.iou(), self.precision(), self.recall()
        gt_pix, pred_pix = self.matrix.sum(1), self.matrix.sum(0)
        classes = [
            {
                "index": i,
                "name": names[i],
                "iou": _clean(iou[i]),
                "precision": _clean(prec[i]),
                "recall": _clean(rec[i]),
                "gt_pixels": int(gt_pix[i]),
                "pred_pixels": int(pred_pix[i]),
            }
            for i in range(self.num_classes)
        ]
        return {
            "miou": _clean(self.miou()),
            "pixel_accuracy": _clean(self.pixel_accuracy()),
            "mean_precision": _clean(self._nanmean(prec)),
            "mean_recall": _clean(self._nanmean(rec)),
            "num_pixels": int(self.matrix.sum()),
            "num_classes": self.num_classes,
            "classes": classes,
            "confusion_matrix": self.matrix.tolist(),
        }

    def format_table(self, class_names: Sequence[str] | None = None) -> str:
        """A printable per-class table (percentages) ending in the mIoU line."""
        return format_report(self.report(class_names))

    def _names(self, class_names: Sequence[str] | None) -> list[str]:
        if class_names is None:
            return [str(i) for i in range(self.num_classes)]
        if len(class_names) != self.num_classes:
            raise ValueError(f"{len(class_names)} class names given for {self.num_classes} classes")
        return [str(n) for n in class_names]


def _clean(x: float) -> float | None:
    x = float(x)
    return None if math.isnan(x) else x


def format_report(report: dict[str, Any]) -> str:
    """Render a report dict (from :meth:`ConfusionMatrix.report` or an ``evaluate_*`` function) as text."""

    def pct(v: float | None) -> str:
        return "     -" if v is None else f"{100 * v:6.2f}"

    width = max([5] + [len(c["name"]) for c in report["classes"]])
    lines = [f"{'#':>3}  {'class':<{width}}  {'IoU':>6}  {'prec':>6}  {'recall':>6}"]
    for c in report["classes"]:
        lines.append(
            f"{c['index']:>3}  {c['name']:<{width}}  {pct(c['iou'])}  {pct(c['precision'])}  {pct(c['recall'])}"
        )
    lines.append(
        f"mIoU {pct(report['miou']).strip()}  pixel acc {pct(report['pixel_accuracy']).strip()}  "
        f"mean prec {pct(report['mean_precision']).strip()}  mean recall {pct(report['mean_recall']).strip()}"
    )
    if report.get("sweep"):
        step = max(1, len(report["sweep"]) // 20)  # the JSON keeps every threshold
        lines.append(
            "threshold sweep (mIoU): "
            + " ".join(f"{s['threshold']:.2f}:{pct(s['miou']).strip()}" for s in report["sweep"][::step])
        )
    extra = []
    if "threshold" in report:
        extra.append(f"best background threshold {report['threshold']:.2f}")
    if "num_images" in report:
        extra.append(f"{report['num_images']} images")
    if report.get("skipped"):
        extra.append(f"{report['skipped']} skipped (no ground-truth mask)")
    if report.get("missing"):
        extra.append(f"{report['missing']} skipped (no prediction file)")
    if extra:
        lines.append(", ".join(extra))
    return "\n".join(lines)


def write_report(path: str | os.PathLike, report: dict[str, Any]) -> None:
    """Write a report dict as indented JSON, atomically (NaN is written as ``null``)."""
    text = json.dumps(_jsonable(report), indent=2, allow_nan=False)
    sio.write_text(path, text + "\n")


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and math.isnan(x):
        return None
    return x


# ---------------------------------------------------------------------- CAM files
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
            obj = np.load(path, allow_pickle=True)
            if obj.dtype != object or obj.shape != ():
                raise ValueError("a pickled dict was expected (the official layout)")
            keys, maps, kind = _parse_official(obj.item())
        else:
            raise ValueError("unknown suffix; expected .npz or .npy")
    except Exception as e:  # numpy raises many types for damaged files (BadZipFile, EOFError, pickle errors)
        raise ValueError(
            f"cannot read CAM file {path} ({type(e).__name__}: {e}); delete it and rerun `sipe cam` to regenerate it"
        ) from e
    keys = np.asarray(keys)
    maps = np.asarray(maps)
    if kind is None:
        kind = "is_cam" if np.any(keys == 0) else "cam"
    if kind not in CAM_KINDS:
        raise ValueError(f"CAM file {path}: unknown kind {kind!r}; expected one of {CAM_KINDS}")
    if keys.ndim != 1 or not np.issubdtype(keys.dtype, np.integer):
        raise ValueError(f"CAM file {path}: 'keys' must be a 1-D integer array, got {keys.dtype} {keys.shape}")
    if maps.ndim != 3 or maps.shape[0] != keys.shape[0]:
        raise ValueError(
            f"CAM file {path}: 'maps' must be (M, H, W) with M = len(keys) = {len(keys)}, got {maps.shape}"
        )
    if kind == "is_cam" and (keys.size == 0 or keys[0] != 0):
        raise ValueError(f"CAM file {path}: an IS-CAM file must start with the background channel (keys[0] == 0)")
    if kind == "cam" and np.any(keys == 0):
        raise ValueError(f"CAM file {path}: a plain-CAM file holds foreground classes only, but keys contain 0")
    return CamFile(keys.astype(np.int64), maps.astype(np.float32, copy=False), kind)


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
    keys = np.asarray(keys, dtype=np.int64).reshape(-1)
    maps = np.asarray(maps)
    if kind not in CAM_KINDS:
        raise ValueError(f"kind must be one of {CAM_KINDS}, got {kind!r}")
    if maps.ndim != 3 or maps.shape[0] != keys.size:
        raise ValueError(f"maps must be (M, H, W) with M = len(keys) = {keys.size}, got {maps.shape}")
    if kind == "is_cam" and (keys.size == 0 or keys[0] != 0):
        raise ValueError("IS-CAM keys must start with the background 0")
    if kind == "cam" and np.any(keys == 0):
        raise ValueError("plain-CAM keys are the foreground classes only (no 0)")
    if path.suffix == ".npz":
        sio.save_npz(path, keys=keys, maps=maps.astype(np.float16), kind=np.array(kind))
    elif path.suffix == ".npy":
        if kind == "is_cam":
            sio.save_npy_dict(path, {"keys": keys, "IS_CAM": maps.astype(np.float32)})
        else:
            sio.save_npy_dict(path, {"keys": keys - 1, "high_res": maps.astype(np.float32)})
    else:
        raise ValueError(f"{path}: CAM files end in .npz (compact) or .npy (official layout)")


def load_cam_file(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """``(keys (M,) int64, maps (M, H, W) float32)`` of one CAM / IS-CAM file (.npz or official .npy)."""
    f = read_cam_file(path)
    return f.keys, f.maps


def find_cam_file(cam_dir: str | os.PathLike, name: str) -> Path | None:
    """``cam_dir/<name>.npz`` if present, else ``cam_dir/<name>.npy``, else ``None``."""
    for suffix in (".npz", ".npy"):
        p = Path(cam_dir) / f"{name}{suffix}"
        if p.is_file():
            return p
    return None


# ---------------------------------------------------------------------- dataset iteration
def _num_classes(dataset: Any) -> tuple[int, list[str]]:
    names = getattr(dataset, "class_names", None)
    if not names:
        raise ValueError("the dataset has no `class_names`; it is needed to size the confusion matrix")
    return len(names), list(names)


def _iter_masks(dataset: Any, names: Sequence[str] | None) -> Iterator[tuple[str, np.ndarray | None]]:
    """(name, mask or None) for the dataset's items, restricted to ``names`` when given."""
    wanted = None if names is None else set(names)
    ds_names = getattr(dataset, "names", None)
    if wanted is not None and ds_names is not None:
        index = {n: i for i, n in enumerate(ds_names)}
        unknown = [n for n in names if n not in index]
        if unknown:
            raise ValueError(f"{len(unknown)} of the requested names are not in the dataset, e.g. {unknown[:3]}")
        indices = [index[n] for n in names]
    else:
        indices = range(len(dataset))
    if ds_names is not None and callable(getattr(dataset, "read_mask", None)):
        # sipe datasets read the mask alone; decoding the image would only cost time here.
        for i in indices:
            if wanted is None or ds_names[i] in wanted:
                yield ds_names[i], dataset.read_mask(i)
        return
    for i in indices:
        item = dataset[i]
        if wanted is not None and item["name"] not in wanted:
            continue
        yield item["name"], item.get("mask")


def _progress(it: Any, total: int | None, desc: str) -> Any:
    from tqdm import tqdm

    return tqdm(it, total=total, desc=desc, unit="img", leave=False, dynamic_ncols=True)


def _walk(
    dataset: Any,
    names: Sequence[str] | None,
    find: Any,
    what: str,
    missing: str,
    desc: str,
    stats: dict[str, int],
) -> Iterator[tuple[str, np.ndarray, Path]]:
    """Yield (name, gt mask, prediction path); counts evaluated and skipped images into ``stats``."""
    if missing not in ("error", "skip"):
        raise ValueError(f"missing must be 'error' or 'skip', got {missing!r}")
    total = len(names) if names is not None else len(dataset)
    stats.update(num_images=0, skipped=0, missing=0)
    for name, mask in _progress(_iter_masks(dataset, names), total, desc):
        if mask is None:
            stats["skipped"] += 1
            continue
        path = find(name)
        if path is None:
            if missing == "skip":
                stats["missing"] += 1
                continue
            raise FileNotFoundError(
                f"no {what} for image {name!r}; make it first, point --pred at the right folder, "
                "or pass missing='skip' (--skip-missing) to leave such images out"
            )
        stats["num_images"] += 1
        yield name, np.asarray(mask), path


def _finish(stats: dict[str, int], kind: str) -> dict[str, int]:
    if stats["skipped"]:
        logger.warning("%d images have no ground-truth mask and were skipped", stats["skipped"])
    if stats["missing"]:
        logger.warning("%d images have no prediction file and were skipped", stats["missing"])
    if stats["num_images"] == 0:
        if stats["skipped"] and not stats["missing"]:
            raise ValueError(
                "no image of this split has a ground-truth mask, so nothing can be evaluated; "
                "choose a split with masks (e.g. VOC `train`/`val`) or give the masks folder"
            )
        raise ValueError(f"no image could be evaluated ({kind}): {stats}")
    return dict(stats)


def _check_shape(pred_shape: tuple[int, ...], mask: np.ndarray, path: Path) -> None:
    if tuple(pred_shape) != mask.shape:
        raise ValueError(
            f"{path}: prediction size {tuple(pred_shape)} differs from the ground-truth mask {mask.shape}; "
            "predictions must be at the original image resolution"
        )


# ---------------------------------------------------------------------- evaluators
def is_cam_to_label(keys: np.ndarray, maps: np.ndarray) -> np.ndarray:
    """(H, W) int64 label map: the argmax over the M channels of ``maps`` (M, H, W), mapped through ``keys``."""
    return keys[np.argmax(maps, axis=0)]


def cam_to_label(keys: np.ndarray, maps: np.ndarray, threshold: float) -> np.ndarray:
    """(H, W) label map from foreground CAMs (M, H, W): background where no map exceeds ``threshold``.

    Same as the official rule (a background channel of constant ``threshold`` prepended, argmax,
    ties going to the background).
    """
    if maps.shape[0] == 0:
        return np.zeros(maps.shape[1:], dtype=np.int64)
    t = np.asarray(threshold, dtype=maps.dtype)
    return np.where(maps.max(0) > t, keys[np.argmax(maps, axis=0)], 0)


def evaluate_is_cam(
    cam_dir: str | os.PathLike,
    dataset: Any,
    names: Sequence[str] | None = None,
    missing: str = "error",
) -> dict[str, Any]:
    """Evaluate saved IS-CAM files (argmax over the kept channels, mapped through ``keys``).

    Args:
        cam_dir: folder of ``<name>.npz`` / ``<name>.npy`` files.
        dataset: a sipe dataset (items with ``name`` and ``mask``; ``class_names``).
        names: evaluate only these images (default: all).
        missing: ``"error"`` (default) or ``"skip"`` for images without a file.

    Returns:
        the report dict (:meth:`ConfusionMatrix.report`) plus ``kind``, ``num_images``,
        ``skipped`` (no mask) and ``missing`` (no file).
    """
    k, class_names = _num_classes(dataset)
    cm = ConfusionMatrix(k)
    stats: dict[str, int] = {}
    walk = _walk(
        dataset, names, lambda n: find_cam_file(cam_dir, n), f"CAM file in {cam_dir}", missing, "eval IS-CAM", stats
    )
    for _, mask, path in walk:
        f = read_cam_file(path)
        if f.kind != "is_cam":
            raise ValueError(f"{path} holds plain CAMs (kind 'cam'); evaluate them with kind 'cam' (--kind cam)")
        _check_shape(f.maps.shape[1:], mask, path)
        cm.update(is_cam_to_label(f.keys, f.maps), mask)
    stats = _finish(stats, "is_cam")
    return {"kind": "is_cam", **stats, **cm.report(class_names)}


def evaluate_cam(
    cam_dir: str | os.PathLike,
    dataset: Any,
    thresholds: Sequence[float] | np.ndarray = DEFAULT_THRESHOLDS,
    names: Sequence[str] | None = None,
    missing: str = "error",
) -> dict[str, Any]:
    """Evaluate saved plain CAMs, sweeping the background threshold; report the best one.

    A pixel is background when no foreground map exceeds the threshold, else the argmax class
    (the official rule). One pass over the images: each counted pixel falls into the bucket of
    thresholds below its maximum score, and a (T+1, K, K) histogram of (bucket, gt, argmax class)
    gives every threshold's confusion matrix by cumulative sums.

    Returns:
        the best threshold's report plus ``kind``, ``threshold``, ``sweep`` (a list of
        ``{"threshold", "miou"}`` in the given order), ``num_images``, ``skipped``, ``missing``.
    """
    thr = np.atleast_1d(np.asarray(thresholds, dtype=np.float64))
    if thr.size == 0 or thr.ndim != 1:
        raise ValueError("give at least one threshold")
    order = np.argsort(thr, kind="stable")
    thr_sorted = thr[order]
    t_n = thr.size
    k, class_names = _num_classes(dataset)
    hist = np.zeros((t_n + 1) * k * k, dtype=np.int64)
    stats: dict[str, int] = {}
    walk = _walk(
        dataset, names, lambda n: find_cam_file(cam_dir, n), f"CAM file in {cam_dir}", missing, "eval CAM", stats
    )
    for _, mask, path in walk:
        f = read_cam_file(path)
        if f.kind != "cam":
            raise ValueError(f"{path} holds IS-CAMs (kind 'is_cam'); evaluate them with kind 'is_cam' (--kind is_cam)")
        _check_shape(f.maps.shape[1:], mask, path)
        gt = mask.reshape(-1).astype(np.int64)
        valid = gt != 255
        gt = gt[valid]
        if gt.size and (gt.min() < 0 or gt.max() >= k):
            raise ValueError(f"ground truth of {path.stem} holds values outside [0, {k}) and != 255")
        if f.maps.shape[0]:
            flat = f.maps.reshape(f.maps.shape[0], -1)
            top = flat.max(0)[valid]
            cls = f.keys[flat.argmax(0)[valid]]
            if cls.size and (cls.min() < 1 or cls.max() >= k):
                raise ValueError(f"{path}: keys {f.keys.tolist()} fall outside the dataset's 1..{k - 1}")
            # Compared in the maps' own precision, as the official padding does.
            bucket = np.searchsorted(thr_sorted.astype(f.maps.dtype), top, side="left")
        else:
            cls = np.zeros_like(gt)
            bucket = np.zeros_like(gt)
        hist += np.bincount((bucket * k + gt) * k + cls, minlength=(t_n + 1) * k * k)
    stats = _finish(stats, "cam")
    hist = hist.reshape(t_n + 1, k, k)
    # Threshold j (sorted) keeps the argmax class for buckets > j and gives background otherwise.
    fg_above = np.cumsum(hist[::-1], axis=0)[::-1]  # fg_above[b] = sum over buckets >= b
    matrices = []  # in the given order of thresholds
    for j in np.argsort(order):
        cm = ConfusionMatrix(k)
        cm.matrix = fg_above[j + 1].copy()
        cm.matrix[:, 0] += (fg_above[0] - fg_above[j + 1]).sum(1)
        matrices.append(cm)
    mious = np.array([cm.miou() for cm in matrices])
    best = 0 if np.all(np.isnan(mious)) else int(np.nanargmax(mious))
    best_cm = matrices[best]
    sweep = [{"threshold": round(float(t), 6), "miou": _clean(m)} for t, m in zip(thr, mious, strict=True)]
    return {
        "kind": "cam",
        "threshold": round(float(thr[best]), 6),
        "sweep": sweep,
        **stats,
        **best_cm.report(class_names),
    }


def read_label_png(path: str | os.PathLike) -> np.ndarray:
    """(H, W) int64 class indices from a label image: palette/grey PNGs by index, RGB by the VOC colours."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()
            mode = img.mode
            arr = np.asarray(img)
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read label image {path} ({e}); rewrite or delete it") from e
    if mode in ("P", "L", "I", "I;16") or arr.ndim == 2:
        return arr.astype(np.int64)
    if mode in ("RGB", "RGBA"):
        rgb = arr[..., :3].astype(np.int64)
        code = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
        pal = sio.voc_palette().astype(np.int64)
        pal_code = (pal[:, 0] << 16) | (pal[:, 1] << 8) | pal[:, 2]
        lut_keys, first = np.unique(pal_code, return_index=True)
        pos = np.searchsorted(lut_keys, code).clip(0, lut_keys.size - 1)
        known = lut_keys[pos] == code
        if not known.all():
            c = rgb[~known][0].tolist()
            raise ValueError(
                f"label image {path} holds colour {c} that is not in the VOC palette; save labels as index PNGs"
            )
        return first[pos].astype(np.int64)
    raise ValueError(f"label image {path} has unsupported mode {mode}; save labels as palette or greyscale PNGs")


def evaluate_label_dir(
    pred_dir: str | os.PathLike,
    dataset: Any,
    names: Sequence[str] | None = None,
    missing: str = "error",
) -> dict[str, Any]:
    """Evaluate a folder of label PNGs (``<name>.png``, palette/index PNGs; 255 in a prediction is not counted).

    Returns:
        the report dict plus ``kind`` (``"labels"``), ``num_images``, ``skipped``, ``missing``.
    """
    k, class_names = _num_classes(dataset)
    cm = ConfusionMatrix(k)

    def find(name: str) -> Path | None:
        p = Path(pred_dir) / f"{name}.png"
        return p if p.is_file() else None

    stats: dict[str, int] = {}
    for _, mask, path in _walk(dataset, names, find, f"label PNG in {pred_dir}", missing, "eval labels", stats):
        pred = read_label_png(path)
        _check_shape(pred.shape, mask, path)
        try:
            cm.update(pred, mask)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from e
    stats = _finish(stats, "labels")
    return {"kind": "labels", **stats, **cm.report(class_names)}


def evaluate(kind: str, pred_dir: str | os.PathLike, dataset: Any, **kw: Any) -> dict[str, Any]:
    """Dispatch to :func:`evaluate_is_cam`, :func:`evaluate_cam` or :func:`evaluate_label_dir` by ``kind``."""
    funcs = {"is_cam": evaluate_is_cam, "cam": evaluate_cam, "labels": evaluate_label_dir}
    if kind not in funcs:
        raise ValueError(f"unknown evaluation kind {kind!r}; choose one of {sorted(funcs)}")
    return funcs[kind](pred_dir, dataset, **kw)
