"""Image-specific prototype exploration (IPE) as batched matrix products.

Shapes: N images, K classes including background (index 0), C feature channels, h x w grid,
P = h * w positions. Nothing here materialises an (N, K, P, P) or (N, K, C, h, w) tensor: the
P x P correlation of an image is built once (in tiles when it is large) and used through
matrix products.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Tile side of the P x P correlation: a 2048 x 2048 tile is 16 MiB; an 80x60 grid (COCO 640x480 at
# scale 2.0) takes 6 tiles. Smaller tiles mean more, shorter calls, which costs more than it saves
# on 2 cores (measured: 1024 was 1.6x slower, 2400 no faster).
_BLOCK = 2048


def normalize_cam(raw_cam: torch.Tensor) -> torch.Tensor:
    """Foreground CAMs to normalised CAMs with a background channel.

    raw_cam (N, K-1, h, w) raw classifier maps -> (N, K, h, w): ReLU, per-channel division by
    (max + 1e-5), background = 1 - max over the foreground channels, prepended as channel 0.
    """
    cam = F.relu(raw_cam)
    cam = cam / (cam.amax(dim=(2, 3), keepdim=True) + 1e-5)
    bkg = 1 - cam.amax(dim=1, keepdim=True)
    return torch.cat([bkg, cam], dim=1)


def lowres_valid_mask(valid: torch.Tensor, labels: torch.Tensor, stride: int = 16) -> torch.Tensor:
    """Training mask of the official recipe.

    valid (N, H, W) crop validity, labels (N, K-1) multi-hot -> (N, K, H//stride, W//stride):
    channel 0 = validity, channel k = validity x label k, nearest-resized as the official code.
    """
    n, h, w = valid.shape
    full = torch.cat([valid[:, None], valid[:, None] * labels[:, :, None, None].to(valid.dtype)], dim=1)
    return F.interpolate(full, size=(h // stride, w // stride), mode="nearest")


def _normalize_features(feats: torch.Tensor) -> torch.Tensor:
    # (N, C, P) with the official epsilon: x / (||x|| + 1e-5)
    return feats / (feats.norm(dim=1, keepdim=True) + 1e-5)


def structure_iou(cam: torch.Tensor, feats: torch.Tensor, block: int = _BLOCK) -> torch.Tensor:
    """Soft IoU between every position's correlation map and every class's CAM.

    cam (N, K, h, w), feats (N, C, h, w) -> iou (N, K, h, w) where, with
    corr[i, j] = ReLU(cos(f_i, f_j)), inter[k, i] = sum_j corr[i, j] cam[k, j] and
    iou[k, i] = inter / (sum_j corr[i, j] + sum_j cam[k, j] - inter).

    The correlation is symmetric, so it is built in ``block`` x ``block`` tiles of the upper
    triangle only, each tile serving both its rows and its columns: about half the work of the
    full P x P product, and never more than one tile in memory. A column of ones appended to the
    CAMs makes the correlation row sums one more output of the same products, which accumulate
    in place: three calls per tile, so few that the threads rarely wait on each other.
    """
    n, k, h, w = cam.shape
    p = h * w
    f = _normalize_features(feats.reshape(n, -1, p).float())
    ft = f.transpose(1, 2)  # (N, P, C)
    # (N, P, K+1): the CAMs and a column of ones, positions as rows so that row blocks are contiguous.
    c1 = torch.cat([cam.reshape(n, k, p).float(), f.new_ones(n, 1, p)], dim=1).transpose(1, 2).contiguous()
    acc = torch.zeros(n, p, k + 1, dtype=f.dtype, device=f.device)  # [inter | corr row sum]
    bounds = [(a, min(p, a + block)) for a in range(0, p, block)]
    for bi, (i0, i1) in enumerate(bounds):
        for j0, j1 in bounds[bi:]:
            tile = torch.bmm(ft[:, i0:i1], f[:, :, j0:j1]).relu_()  # (N, Bi, Bj)
            acc[:, i0:i1].baddbmm_(tile, c1[:, j0:j1])
            if j0 != i0:
                acc[:, j0:j1].baddbmm_(tile.transpose(1, 2), c1[:, i0:i1])
    inter = acc[..., :k].transpose(1, 2)  # (N, K, P)
    union = acc[..., k:].transpose(1, 2) + c1[..., :k].sum(1)[..., None] - inter
    return (inter / union).reshape(n, k, h, w)


def structure_seeds(
    cam: torch.Tensor,
    feats: torch.Tensor,
    mask: torch.Tensor,
    bg_scale: float = 0.5,
    block: int = _BLOCK,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Structure-aware seeds.

    cam (N, K, h, w) normalised CAM, feats (N, C, h, w) structure features, mask broadcastable to
    (N, K, h, w) (labels with background = 1, or the training valid mask).
    Returns seeds (N, K, h, w) one-hot of the best-matching class times ``mask``, and the IoU map
    (N, K, h, w) with the background channel scaled by ``bg_scale`` (its softmax is the official
    ``probs``).
    """
    iou = structure_iou(cam, feats, block)
    iou = torch.cat([iou[:, :1] * bg_scale, iou[:, 1:]], dim=1)
    seeds = F.one_hot(iou.argmax(1), cam.shape[1]).permute(0, 3, 1, 2).to(cam.dtype)
    return seeds * mask, iou


def prototypes(seeds: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
    """Background-aware prototypes: seeds (N, K, h, w), feats (N, C, h, w) -> (N, K, C).

    The official prototype is the mean over ALL h*w positions of seed x feature (not divided by
    the seed area); cosine similarity later makes the scale irrelevant.
    """
    n, k, h, w = seeds.shape
    if seeds.shape[2:] != feats.shape[2:]:
        seeds = F.interpolate(seeds, feats.shape[2:], mode="nearest")
    p = feats.shape[2] * feats.shape[3]
    return torch.bmm(seeds.reshape(n, k, p).to(feats.dtype), feats.reshape(n, -1, p).transpose(1, 2)) / p


def is_cam(protos: torch.Tensor, feats: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """IS-CAM = ReLU(cos(prototype, feature)): protos (N, K, C), feats (N, C, h, w) -> (N, K, h, w)."""
    n, c, h, w = feats.shape
    f = feats.reshape(n, c, h * w)
    f = f / f.norm(dim=1, keepdim=True).clamp_min(eps)
    q = protos / protos.norm(dim=2, keepdim=True).clamp_min(eps)
    return torch.relu(torch.bmm(q, f)).reshape(n, -1, h, w)
