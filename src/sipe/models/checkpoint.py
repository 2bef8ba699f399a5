"""Checkpoint files of every model kind: what each kind's ``meta`` holds, and the SIPE loader.

A sipe checkpoint is a dict ``{"model": state_dict, "meta": {...}, ...}`` written atomically. The
``meta`` entry says what the file holds: ``{"kind": "irn", "backbone", "radius"}`` for IRN,
``{"model_spec": {...}, "class_names"}`` for a segmentation network, and ``{"sipe_config", "class_names",
"backbone", "backbone_kwargs"}`` for SIPE (the registry name and the :func:`sipe.models.build_sipe`
keywords that rebuild the backbone; the authors' ``{"net": ...}`` files, with no meta, are SIPE too).
Training checkpoints add the optimiser state, step and config (:mod:`sipe.engine`). The file reader
and writer live a layer below, in :mod:`sipe.io` (the engine uses them without loading a network);
``read_checkpoint`` and ``write_checkpoint`` are re-exported here under their old names.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch

from sipe.config import MethodConfig
from sipe.core.sipe_net import SIPENet
from sipe.io import read_checkpoint, write_checkpoint
from sipe.models import build_sipe
from sipe.models.official import backbone_name, load_into, official_to_sipe

__all__ = [
    "checkpoint_kind",
    "load_checkpoint",
    "read_checkpoint",
    "sipe_model_from_checkpoint",
    "write_checkpoint",
]


def checkpoint_kind(ckpt: Mapping[str, Any]) -> str:
    """``"seg"``, ``"irn"`` or ``"sipe"``: what a loaded checkpoint dict holds (see the module docstring)."""
    meta = ckpt.get("meta")
    if isinstance(meta, Mapping):
        if isinstance(meta.get("model_spec"), Mapping):
            return "seg"
        if meta.get("kind") == "irn":
            return "irn"
    return "sipe"


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> tuple[SIPENet, dict]:
    """A SIPE model from a checkpoint file: the authors' ``{"net": ...}`` or one written by ``sipe train``.

    Returns the model (eval mode) and the checkpoint's metadata dict (``config``, ``class_names``
    where present; empty for official checkpoints). The class count comes from the classifier.
    """
    return sipe_model_from_checkpoint(read_checkpoint(path, map_location, made_by="sipe train"), f"checkpoint {path}")


def sipe_model_from_checkpoint(ckpt: Mapping[str, Any], source: str = "checkpoint") -> tuple[SIPENet, dict]:
    """:func:`load_checkpoint` for a checkpoint dict already loaded (``source`` names it in errors)."""
    meta = {k: v for k, v in ckpt.items() if k not in ("model", "net", "optimizer", "scaler")}
    state = official_to_sipe(ckpt.get("model", ckpt))
    cls = state.get("classifier.weight")
    if cls is None:
        raise ValueError(f"{source} has no classifier.weight: not a SIPE checkpoint")
    stored = ckpt.get("meta") if isinstance(ckpt.get("meta"), Mapping) else {}
    try:
        if "backbone" in stored:  # written by sipe train: the registry name and its build options
            net = build_sipe(stored["backbone"], cls.shape[0] + 1, weights=None, **stored.get("backbone_kwargs", {}))
        else:  # the authors' checkpoints carry no meta: the ResNet depth is read off the weights
            net = build_sipe(backbone_name(state), num_classes=cls.shape[0] + 1, weights=None)
        model = load_into(net, state)
    except ValueError as exc:
        raise ValueError(f"{source}: {exc}") from exc
    # The method switches it was trained with (structures, background factor); defaults without them.
    model.configure(**MethodConfig.from_checkpoint(ckpt).head_options())
    return model.eval(), meta
