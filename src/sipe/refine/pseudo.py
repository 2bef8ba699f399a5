"""Pseudo labels from IS-CAMs and IRN's boundary map (the official ``make_seg_labels``).

Per image: boundary probabilities at stride 4 from one scale plus its horizontal flip (logits
averaged, then sigmoid); IS-CAM resized to that grid and raised to 1.5; random walk (beta 10,
2^8 steps, radius 5); upsampled x4, cropped to the image, argmax, mapped through the keys. The
official code pads every image to 512x512 and so cannot take larger images (COCO); here the image
is padded to a multiple of 16 (or to ``canvas`` for parity with the official padding).
"""

from __future__ import annotations

import functools
import os
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from sipe.data.cam_format import check_cam_arrays, read_is_cam
from sipe.models.layers import model_device
from sipe.refine._runner import RunStats, run_label_job
from sipe.refine.irn import IRN, STRIDE
from sipe.refine.random_walk import OFFICIAL_WALK, Walk, random_walk

_MULTIPLE = 16  # the backbone's output stride: padded sizes keep every stage aligned


@torch.no_grad()
def irn_boundary(model: IRN, image: np.ndarray, canvas: int = 0) -> torch.Tensor:
    """Class-boundary probabilities of one image at stride 4.

    Args:
        model: a trained IRN (its device is used).
        image: (H, W, 3) uint8 RGB.
        canvas: pad the image right/bottom to at least ``canvas`` x ``canvas`` (official: 512);
            it is always padded to a multiple of 16.

    Returns:
        (1, (H-1)//4+1, (W-1)//4+1) float32 probabilities.
    """
    from sipe.data.transforms import normalize

    device = model_device(model)
    h, w = image.shape[:2]
    hp = max(canvas, -(-h // _MULTIPLE) * _MULTIPLE)
    wp = max(canvas, -(-w // _MULTIPLE) * _MULTIPLE)
    x = torch.from_numpy(normalize(np.ascontiguousarray(image))).to(device)
    x = torch.stack([x, x.flip(-1)])
    x = F.pad(x, (0, wp - w, 0, hp - h))  # zeros after normalisation, as the official padding
    model.eval()
    edge = model.boundary(x)
    fh, fw = (h - 1) // STRIDE + 1, (w - 1) // STRIDE + 1
    edge = edge[..., :fh, :fw].float()
    # Crop before undoing the flip so that both passes line up on the image's own grid.
    return torch.sigmoid(edge[0] / 2 + edge[1].flip(-1) / 2)


@torch.no_grad()
def pseudo_label(
    model: IRN,
    image: np.ndarray,
    keys: np.ndarray,
    maps: np.ndarray,
    *,
    walk: Walk = OFFICIAL_WALK,
    cam_power: float = 1.5,
    canvas: int = 0,
) -> np.ndarray:
    """Pseudo label of one image.

    Args:
        model: trained IRN.
        image: (H, W, 3) uint8 RGB.
        keys: (M,) class ids of the map channels, ``keys[0] == 0``.
        maps: (M, H, W) IS-CAM scores at image size.
        walk: the random walk's beta, exp_times, radius (:class:`sipe.refine.random_walk.Walk`).

    Returns:
        (H, W) uint8 class ids.
    """
    h, w = image.shape[:2]
    keys, maps = check_cam_arrays(keys, np.asarray(maps, dtype=np.float32), size=(h, w))
    edge = irn_boundary(model, image, canvas=canvas)
    cams = torch.from_numpy(maps).to(edge.device)[None]
    cams = F.interpolate(cams, size=edge.shape[-2:], mode="bilinear", align_corners=False)[0].pow(cam_power)
    rw = random_walk(cams, edge, walk)
    up = F.interpolate(rw[None], scale_factor=STRIDE, mode="bilinear", align_corners=False)[0, :, :h, :w]
    # The official division by the global max cannot change the argmax, so it is left out.
    pred = up.argmax(dim=0).cpu().numpy()
    return keys[pred].astype(np.uint8)


def _pseudo_job(item: dict[str, Any], model: IRN, cam_dir: str, options: dict[str, Any]) -> np.ndarray:
    keys, maps = read_is_cam(cam_dir, item["name"])
    return pseudo_label(model, item["image"], keys, maps, **options)


def make_pseudo_labels(
    model: IRN,
    dataset: Any,
    cam_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    walk: Walk = OFFICIAL_WALK,
    canvas: int = 0,
    overwrite: bool = False,
) -> RunStats:
    """Write the pseudo label of every image as ``out_dir/<name>.png`` (VOC palette PNG).

    Existing files are kept (resume). Under torchrun rank r takes every world-th image starting
    at r; the model runs on its current device.
    """
    options = {"walk": walk, "canvas": canvas}
    job = functools.partial(_pseudo_job, model=model, cam_dir=str(cam_dir), options=options)
    return run_label_job(dataset, job, out_dir, num_workers=0, overwrite=overwrite, desc="pseudo labels")
