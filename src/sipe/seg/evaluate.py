"""mIoU of a segmentation network on a split with ground truth: multi-scale + flip TTA, optional dense CRF."""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from sipe.data.classes_file import write_classes_file
from sipe.io import save_label_png
from sipe.metrics import ConfusionMatrix
from sipe.seg.dense_crf import DenseCRFParams, crf_refine_probs
from sipe.seg.predict import predict_probs

log = logging.getLogger(__name__)


def _identity(item: Any) -> Any:
    return item


@torch.no_grad()
def evaluate_seg(
    model: nn.Module,
    dataset: Dataset,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    crf: bool = False,
    *,
    crf_params: DenseCRFParams | None = None,
    num_workers: int = 0,
    autocast_dtype: torch.dtype | None = None,
    progress: bool = True,
    save_dir: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Evaluate ``model`` on every item of ``dataset`` that has a ground-truth mask.

    Args:
        model: a segmentation network (``model(x)`` gives (N, K, H, W) logits or ``{"out": ...}``).
        dataset: a sipe dataset (items with ``image`` (H, W, 3) uint8, ``name``, ``mask`` (H, W) uint8
            or ``None``; ``class_names`` with K entries).
        scales, flip: test-time augmentation; the softmax probabilities are averaged.
        crf: refine each prediction with the literature's dense CRF on the softmax probabilities
            (:func:`sipe.seg.dense_crf.crf_refine_probs`; ``crf_params``, default deeplab-pytorch's).
        num_workers: DataLoader workers decoding images while the network runs.
        save_dir: also write each evaluated prediction as ``save_dir/<name>.png`` (VOC palette),
            e.g. for ``sipe report``'s image grid, with ``save_dir/classes.json``.

    Returns:
        :meth:`sipe.metrics.ConfusionMatrix.report` plus ``kind`` ("seg"), ``scales``, ``flip``,
        ``crf`` (and ``crf_params``), ``num_images`` (evaluated) and ``skipped`` (no ground-truth mask).
    """
    class_names = list(getattr(dataset, "class_names", None) or [])
    if not class_names:
        raise ValueError("the dataset has no `class_names`; it is needed to size the confusion matrix")
    cm = ConfusionMatrix(len(class_names))
    if save_dir is not None:
        write_classes_file(save_dir, class_names)
    loader = DataLoader(dataset, batch_size=None, shuffle=False, num_workers=num_workers, collate_fn=_identity)
    evaluated = skipped = 0
    for item in tqdm(loader, total=len(dataset), desc="eval seg", unit="img", disable=not progress, leave=False):
        mask = item.get("mask")
        if mask is None:
            skipped += 1
            continue
        image = item["image"]
        if mask.shape != image.shape[:2]:
            raise ValueError(f"mask of {item['name']} is {mask.shape}, its image {image.shape[:2]}")
        probs = predict_probs(model, image, scales, flip, autocast_dtype)
        if probs.shape[0] != len(class_names):
            raise ValueError(
                f"the model predicts {probs.shape[0]} classes but the dataset has {len(class_names)}; "
                "evaluate on the dataset the model was trained for"
            )
        if crf:
            probs = torch.from_numpy(crf_refine_probs(image, probs.cpu().numpy(), crf_params))
        pred = probs.argmax(0)
        cm.update(pred, torch.from_numpy(np.asarray(mask)).to(pred.device))
        if save_dir is not None:
            save_label_png(Path(save_dir) / f"{item['name']}.png", pred.cpu().numpy())
        evaluated += 1
    if skipped:
        log.warning("%d images have no ground-truth mask and were skipped", skipped)
    if evaluated == 0:
        raise ValueError(
            "no image of this split has a ground-truth mask, so nothing can be evaluated; choose a split "
            "with masks (e.g. VOC val) or give the masks folder"
        )
    return {
        "kind": "seg",
        "scales": [float(s) for s in scales],
        "flip": bool(flip),
        "crf": bool(crf),
        **({"crf_params": dataclasses.asdict(crf_params or DenseCRFParams())} if crf else {}),
        "num_images": evaluated,
        "skipped": skipped,
        **cm.report(class_names),
    }
