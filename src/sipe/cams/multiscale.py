"""Multi-scale IS-CAM inference (the official ``make_cam`` semantics)."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from sipe._memory import release_memory
from sipe.config import IS_CAM_SCALES
from sipe.core.sipe_net import SIPENet
from sipe.data.transforms import normalize
from sipe.models.layers import FrozenBatchNorm2d, model_device

__all__ = [
    "DEFAULT_SCALES",
    "fuse_scales",
    "batch_chunk",
    "fused_maps",
    "fused_maps_batch",
    "kept_classes",
    "model_memory_format",
    "multiscale_is_cam",
    "prepare_for_inference",
    "release_memory",
    "rescale_image",
    "scale_batch",
    "to_tensor",
    "with_flip",
]

DEFAULT_SCALES = IS_CAM_SCALES  # the official fusion scales (home: sipe.config, the ablation switches)


def rescale_image(image: np.ndarray, scale: float) -> np.ndarray:
    """(H, W, 3) uint8 -> (round(H*s), round(W*s), 3) uint8 with PIL bicubic; scale 1.0 is untouched."""
    if scale == 1.0:
        return image
    h, w = image.shape[:2]
    size = (int(np.round(w * scale)), int(np.round(h * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.BICUBIC))


def to_tensor(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float32 normalised with the ImageNet mean and std."""
    return torch.from_numpy(normalize(np.ascontiguousarray(image)))


def with_flip(x: torch.Tensor, flip: bool = True) -> torch.Tensor:
    """(3, h, w) -> (2, 3, h, w) the image and its horizontal flip, or (1, 3, h, w)."""
    return torch.stack([x, x.flip(-1)]) if flip else x[None]


def scale_batch(image: np.ndarray, scale: float, flip: bool = True) -> torch.Tensor:
    """The network input for one scale: (2, 3, h, w) image + horizontal flip, or (1, 3, h, w)."""
    return with_flip(to_tensor(rescale_image(image, scale)), flip)


def kept_classes(labels: np.ndarray | torch.Tensor) -> np.ndarray:
    """(K-1,) multi-hot -> int64 class indices kept in the output: background 0, then labels (1-based)."""
    labels = np.asarray(labels, dtype=np.float32).reshape(-1)
    return np.concatenate([[0], np.flatnonzero(labels > 0) + 1]).astype(np.int64)


def model_memory_format(model: torch.nn.Module) -> torch.memory_format:
    """channels_last if the model's first spatial conv weight is stored that way, else contiguous."""
    for p in model.parameters():
        if p.dim() == 4 and p.shape[-1] > 1:
            return torch.channels_last if not p.is_contiguous() and p.is_contiguous(
                memory_format=torch.channels_last) else torch.contiguous_format
    return torch.contiguous_format


def prepare_for_inference(
    model: SIPENet,
    channels_last: bool = True,
    fold_bn: bool | None = None,
    inplace: bool = False,
) -> SIPENet:
    """``model`` set up for fast inference (a copy unless ``inplace``): eval mode, no parameter
    gradients, channels-last weights (inputs then follow, see :func:`model_memory_format`) and
    batch norm folded into the convolutions.

    ``fold_bn``: ``None`` folds when the backbone supports it (``fold_bn()``, as
    :class:`~sipe.models.backbone.ResNetBackbone` does) and its batch norms are frozen (a
    ``model.freeze_bn=false`` network is left unfolded), ``True`` requires it, ``False`` keeps the
    batch norms. Outputs equal the original model's up to float rounding (~1e-6 relative). The
    prepared model cannot be trained.
    """
    supports = callable(getattr(model.encoder, "fold_bn", None))
    if fold_bn and not supports:
        raise ValueError(
            f"fold_bn=True but the backbone {type(model.encoder).__name__} has no fold_bn() method; "
            "pass fold_bn=None or False"
        )
    # A network trained with model.freeze_bn=false keeps plain batch norms, which fold_bn() refuses:
    # by default such a backbone runs unfolded (same maps, a little slower).
    trained_bn = any(isinstance(m, torch.nn.BatchNorm2d) and not isinstance(m, FrozenBatchNorm2d)
                     for m in model.encoder.modules())
    if fold_bn is None and trained_bn:
        supports = False
    if not inplace:
        model = copy.deepcopy(model)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    if supports and fold_bn is not False:
        model.encoder.fold_bn()
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return model


@torch.no_grad()
def fuse_scales(maps: Sequence[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
    """Per-scale IS-CAMs (K, h_s, w_s) -> (K, H, W): bilinear resize, sum, per-channel max-normalise.
    K may be 0 (the plain CAMs of a negative: no class), giving an empty (0, H, W)."""
    if maps and maps[0].shape[0] == 0:
        return maps[0].new_zeros((0, *size), dtype=torch.float32)
    total = None
    for m in maps:
        up = F.interpolate(m[None].float(), size, mode="bilinear", align_corners=False)[0]
        total = up if total is None else total + up
    return total / (total.amax(dim=(1, 2), keepdim=True) + 1e-5)


@torch.no_grad()
def fused_maps(
    model: SIPENet,
    image: np.ndarray,
    labels: np.ndarray | torch.Tensor,
    inputs: Iterable[torch.Tensor],
    flip: bool = True,
    autocast_dtype: torch.dtype | None = None,
    with_cam: bool = False,
) -> tuple[np.ndarray, torch.Tensor, torch.Tensor | None]:
    """Fused multi-scale maps of one image from its per-scale inputs (:func:`scale_batch`, any iterable).

    Returns keys (M,), IS-CAM (M, H, W) and, when ``with_cam``, the fused plain CAM of the
    labelled classes (M-1, H, W); all max-normalised per channel, on the model's device.
    """
    device = model_device(model)
    fmt = model_memory_format(model)
    keys = kept_classes(labels)
    sel = torch.as_tensor(keys, device=device)
    lab = torch.as_tensor(np.asarray(labels, dtype=np.float32), device=device)
    is_cams, cams = [], []
    for x in inputs:
        x = x.to(device, non_blocking=True).contiguous(memory_format=fmt)
        cam, is_cam = model.infer(x, lab, fuse_flip=flip, autocast_dtype=autocast_dtype)
        is_cams.append(is_cam[sel])
        if with_cam:
            cams.append(cam[sel[1:]])
        del x, cam, is_cam
        if device.type == "cpu":
            release_memory()  # what this scale freed, before the next (larger) one peaks
    size = image.shape[:2]
    return keys, fuse_scales(is_cams, size), fuse_scales(cams, size) if with_cam else None


def batch_chunk(batch_images: int, scale: float) -> int:
    """How many images go through the backbone together at ``scale``: ``batch_images`` at scale 1.0,
    fewer at larger scales so that a batch holds about as many pixels (at least one image)."""
    return max(1, int(batch_images / (scale * scale)))


@torch.no_grad()
def fused_maps_batch(
    model: SIPENet,
    images: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    inputs: Sequence[Sequence[torch.Tensor]],
    scales: Sequence[float],
    flip: bool = True,
    autocast_dtype: torch.dtype | None = None,
    with_cam: bool = False,
    batch_images: int = 1,
) -> list[tuple[np.ndarray, torch.Tensor, torch.Tensor | None]]:
    """:func:`fused_maps` of several images, their backbone passes batched.

    ``inputs[i][j]`` (3, h, w) is image ``i`` at ``scales[j]`` (:func:`to_tensor`, without its flip).
    At each scale the images whose input has the same size go through the backbone together, at most
    :func:`batch_chunk` of them (and their flips) at once; IPE runs on each image alone. Returns per
    image what :func:`fused_maps` returns, in the order of ``images``.
    """
    device = model_device(model)
    fmt = model_memory_format(model)
    keys = [kept_classes(lab) for lab in labels]
    sels = [torch.as_tensor(k, device=device) for k in keys]
    labs = torch.as_tensor(np.stack([np.asarray(lab, dtype=np.float32).reshape(-1) for lab in labels]), device=device)
    is_cams: list[list[torch.Tensor]] = [[] for _ in images]
    cams: list[list[torch.Tensor]] = [[] for _ in images]
    for j, scale in enumerate(scales):
        by_size: dict[tuple[int, ...], list[int]] = {}
        for i, per_scale in enumerate(inputs):
            by_size.setdefault(tuple(per_scale[j].shape), []).append(i)
        step = batch_chunk(batch_images, scale)
        for members in by_size.values():
            for start in range(0, len(members), step):
                chunk = members[start:start + step]
                x = torch.stack([inputs[i][j] for i in chunk])
                # The layout infer_batch takes: the images, then their flips.
                x = torch.cat([x, x.flip(-1)]) if flip else x
                x = x.to(device, non_blocking=True).contiguous(memory_format=fmt)
                outs = model.infer_batch(x, labs[chunk], fuse_flip=flip, autocast_dtype=autocast_dtype)
                for i, (cam, is_cam) in zip(chunk, outs, strict=True):
                    is_cams[i].append(is_cam[sels[i]])
                    if with_cam:
                        cams[i].append(cam[sels[i][1:]])
                del x, outs
                if device.type == "cpu":
                    release_memory()
    return [(keys[i], fuse_scales(is_cams[i], image.shape[:2]),
             fuse_scales(cams[i], image.shape[:2]) if with_cam else None) for i, image in enumerate(images)]


@torch.no_grad()
def multiscale_is_cam(
    model: SIPENet,
    image: np.ndarray,
    labels: np.ndarray | torch.Tensor,
    scales: Sequence[float] = DEFAULT_SCALES,
    flip: bool = True,
    autocast_dtype: torch.dtype | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Multi-scale (+ flip) IS-CAM of one image.

    image (H, W, 3) uint8 RGB; labels (K-1,) 0/1 over the foreground classes.
    Returns keys (M,) int64 (background 0 then the labelled classes) and maps (M, H, W) float32
    in [0, 1]: the content of the official per-image ``.npy`` (``{"keys", "IS_CAM"}``).
    For speed pass a model from :func:`prepare_for_inference` (channels-last, folded batch norm:
    about twice as fast on CPU, same maps within 1e-5); inputs follow the model's memory format.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be an (H, W, 3) uint8 array, got {image.shape} {image.dtype}")
    if len(labels) != model.num_classes - 1:
        raise ValueError(
            f"labels has {len(labels)} entries but the model has {model.num_classes - 1} foreground classes"
        )
    # A generator: each scale's input is built only when the network gets to it.
    inputs = (scale_batch(image, s, flip) for s in scales)
    keys, maps, _ = fused_maps(model, image, labels, inputs, flip, autocast_dtype)
    return keys, maps.cpu().numpy().astype(np.float32)
