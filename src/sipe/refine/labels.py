"""IS-CAMs to pseudo masks by the configured method: the one place that chooses between them.

``irn``: random walk over the boundaries of a trained IRN (the paper's VOC recipe); ``crf``: dense CRF of
the IS-CAM argmax (the paper's COCO recipe); ``none``: the IS-CAM argmax itself (no refinement).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import numpy as np

from sipe.data.cam_format import read_is_cam
from sipe.refine._runner import RunStats, run_label_job
from sipe.refine.random_walk import OFFICIAL_WALK, Walk

__all__ = ["METHODS", "make_argmax_labels", "make_labels"]

METHODS = ("irn", "crf", "none")


def _argmax_job(item: dict[str, Any], cam_dir: str) -> np.ndarray:
    keys, maps = read_is_cam(cam_dir, item["name"])
    return np.asarray(keys, dtype=np.uint8)[np.argmax(maps, axis=0)]


def make_argmax_labels(dataset: Any, cam_dir: str | os.PathLike, out_dir: str | os.PathLike,
                       num_workers: int | None = None, overwrite: bool = False) -> RunStats:
    """``out_dir/<name>.png``: per pixel the class of the largest IS-CAM (background included), (H, W) uint8."""
    return run_label_job(dataset, functools.partial(_argmax_job, cam_dir=str(cam_dir)), Path(out_dir),
                         num_workers=num_workers, overwrite=overwrite, desc="IS-CAM argmax labels")


def make_labels(method: str, dataset: Any, cam_dir: str | os.PathLike, out_dir: str | os.PathLike, *,
                irn: str | os.PathLike | None = None, device: str = "auto", walk: Walk = OFFICIAL_WALK,
                num_workers: int | None = None) -> RunStats:
    """Pseudo masks ``out_dir/<name>.png`` of ``dataset``'s images from the IS-CAMs in ``cam_dir``.

    Args:
        method: ``irn`` (needs ``irn``, the path of a trained IRN, and takes ``walk``, the random walk's
            settings), ``crf`` or ``none`` (``num_workers`` processes for these two).
    """
    if method == "irn":
        if irn is None:
            raise ValueError("refine method irn needs a trained IRN (irn=PATH)")
        from sipe.engine import resolve_device
        from sipe.refine.pseudo import make_pseudo_labels
        from sipe.refine.train_irn import load_irn

        model = load_irn(irn).to(resolve_device(device))
        return make_pseudo_labels(model, dataset, cam_dir, out_dir, walk=walk)
    if method == "crf":
        from sipe.refine.crf import make_crf_labels

        return make_crf_labels(dataset, cam_dir, out_dir, num_workers=num_workers)
    if method == "none":
        return make_argmax_labels(dataset, cam_dir, out_dir, num_workers=num_workers)
    raise ValueError(f"refine method must be one of {', '.join(METHODS)}, got {method!r}")
