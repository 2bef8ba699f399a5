"""Segmentation networks rebuilt from their checkpoints.

:func:`load_seg_checkpoint` reads a checkpoint written by ``sipe seg train`` and rebuilds its network
through the architecture table (:mod:`sipe.seg.architectures`) from the spec it carries
(:class:`~sipe.seg.spec.SegModelSpec`). The builders and the network parts live in their own modules
(:mod:`sipe.seg.deeplabv3`, :mod:`sipe.seg.deeplabv2`, :mod:`sipe.seg.backbones`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from sipe.models.checkpoint import checkpoint_kind, read_checkpoint
from sipe.seg.architectures import build_from_spec
from sipe.seg.spec import SegModelSpec

__all__ = ["load_seg_checkpoint", "seg_model_from_checkpoint"]


def load_seg_checkpoint(
    path: str | os.PathLike, map_location: str | torch.device = "cpu"
) -> tuple[nn.Module, SegModelSpec]:
    """Rebuild a trained segmentation network from a checkpoint written by ``train_seg``.

    The checkpoint is a dict with ``"model"`` (state dict) and ``"meta"["model_spec"]``
    (``num_classes``, ``backbone``, ``backbone_options``, ``output_stride``, ``aux``, ``class_names``...).
    Returns the network in eval mode and its spec.
    """
    ckpt = read_checkpoint(path, map_location, made_by="sipe seg train")
    return seg_model_from_checkpoint(ckpt, str(path))


def seg_model_from_checkpoint(ckpt: Mapping[str, Any], source: str = "checkpoint") -> tuple[nn.Module, SegModelSpec]:
    """:func:`load_seg_checkpoint` for a checkpoint dict already loaded (``source`` names it in errors)."""
    if not isinstance(ckpt, Mapping) or "model" not in ckpt or checkpoint_kind(ckpt) != "seg":
        raise ValueError(
            f"{source} is not a segmentation checkpoint (no meta.model_spec); pass one written by 'sipe seg train'"
        )
    spec = SegModelSpec.from_dict(ckpt["meta"]["model_spec"])
    model = build_from_spec(spec)
    state = {k.removeprefix("module."): v for k, v in ckpt["model"].items()}
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(f"{source} does not fit its model spec {spec}: {e}") from e
    model.eval()
    return model, spec
