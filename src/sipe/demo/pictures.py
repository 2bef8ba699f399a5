"""The demo's pictures: image | CAM per class | IS-CAM per class | ground truth."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from sipe import io
from sipe.data.cam_format import read_cam_file
from sipe.vis import cam_grid, colorize

__all__ = ["save_demo_overlays"]


def save_demo_overlays(out: Path, dataset: Any, cam_dir: Path, n: int) -> None:
    """Side-by-side pictures: image | CAM per class | IS-CAM per class | ground truth."""
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
        io.save_image(out / "overlays" / f"{name}.png", np.concatenate([pic, gt_col], axis=1))
