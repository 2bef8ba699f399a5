"""The confusion matrix and the scores read off it: per-class IoU, mIoU, precision, recall.

Conventions
-----------
* A confusion matrix is (K, K) int64 with rows = ground truth and columns = prediction, over the
  K classes of a dataset (index 0 = background). Ground-truth pixels equal to ``ignore_index``
  (255) are not counted. Predicted pixels equal to ``ignore_index`` (e.g. the uncertain regions
  of a pseudo-label PNG) are not counted either: this is what the official evaluation does
  (chainercv's confusion is cut to ``[:K, :K]``, dropping the column 255).
* The mIoU is the mean IoU over the classes that occur in the ground truth or in the prediction
  (others have an undefined IoU and are left out), as in the official ``eval_cam.py``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["ConfusionMatrix", "clean_float"]


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
                "iou": clean_float(iou[i]),
                "precision": clean_float(prec[i]),
                "recall": clean_float(rec[i]),
                "gt_pixels": int(gt_pix[i]),
                "pred_pixels": int(pred_pix[i]),
            }
            for i in range(self.num_classes)
        ]
        return {
            "miou": clean_float(self.miou()),
            "pixel_accuracy": clean_float(self.pixel_accuracy()),
            "mean_precision": clean_float(self._nanmean(prec)),
            "mean_recall": clean_float(self._nanmean(rec)),
            "num_pixels": int(self.matrix.sum()),
            "num_classes": self.num_classes,
            "classes": classes,
            "confusion_matrix": self.matrix.tolist(),
        }


    def _names(self, class_names: Sequence[str] | None) -> list[str]:
        if class_names is None:
            return [str(i) for i in range(self.num_classes)]
        if len(class_names) != self.num_classes:
            raise ValueError(f"{len(class_names)} class names given for {self.num_classes} classes")
        return [str(n) for n in class_names]


def clean_float(x: float) -> float | None:
    """``x`` as a float, ``None`` for NaN (JSON has no NaN)."""
    x = float(x)
    return None if math.isnan(x) else x


