"""The configuration of ``sipe run`` (torch-free, so that its errors come before torch loads).

The sections are the existing commands' configurations under their own key names: ``train`` is what
``sipe train --print-config`` prints, ``irn`` what ``sipe refine train-irn --print-config`` prints, ``seg``
what ``sipe seg train --print-config`` prints. ``data`` is shared by every stage: :func:`resolve` copies it
into ``train.data`` and ``seg.data`` (and the pseudo-label folder into ``seg.pseudo_labels``), so that the
printed configuration shows what each stage really runs with.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

from sipe.config.common import DataConfig
from sipe.config.irn import IRNConfig
from sipe.config.seg import SegDataConfig, SegTrainConfig
from sipe.config.train import SIPETrainConfig

__all__ = ["CamSection", "EvalSection", "ExportSection", "RefineSection", "RunConfig", "eval_splits",
           "is_demo_config", "resolve"]


def _run_data() -> DataConfig:
    # No validation split unless one is given: VOC's default ("train") means nothing for a custom folder.
    return DataConfig(val_split=None)


@dataclass
class CamSection:
    """IS-CAM generation (``sipe cam``'s options)."""

    scales: tuple[float, ...] | None = None  # null: the checkpoint's method.cam_scales (official 1.0 0.5 1.5 2.0)
    flip: bool = True  # official make_cam fuses the flipped image
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    channels_last: bool = False
    num_workers: int = 2
    batch_images: int = 1  # images of one size per backbone pass at scale 1.0 (sipe.cams.generate.CamConfig)


@dataclass
class RefineSection:
    """IS-CAMs to pseudo masks: ``irn`` (confident regions by dense CRF -> IRN -> random walk, the paper's
    VOC recipe), ``crf`` (dense CRF of the IS-CAM argmax, the paper's COCO recipe) or ``none`` (the
    IS-CAM argmax itself)."""

    method: Literal["irn", "crf", "none"] = "irn"
    bg_scale: float = 0.5  # confident regions: background factor of the second CRF pass (official 0.5)
    beta: float = 10.0  # random walk: affinity exponent (official 10)
    exp_times: int = 8  # random walk: log2 of the steps (official 8)
    radius: int = 5  # random walk: transition radius at stride 4 (official 5)
    num_workers: int | None = None  # CRF processes (null: every available core)


@dataclass
class EvalSection:
    """What the evaluation stages measure (only where ground-truth masks exist)."""

    # Split of the CAM, IS-CAM and pseudo-mask evaluation: null = data.val_split when set, else the
    # training split itself when it has masks (custom: data.mask_dir), else no evaluation.
    split: str | None = None
    seg_split: str | None = None  # split of the segmentation evaluation; null = the same as split
    seg_scales: tuple[float, ...] = (1.0,)  # test-time scales of the segmentation network
    seg_flip: bool = False
    seg_crf: bool = False  # dense-CRF post-processing (deeplab-pytorch's parameters)
    num_workers: int = 2
    num_images: int = 12  # rows of the results page's image grid


@dataclass
class ExportSection:
    """ONNX export of the segmentation network (``sipe export``; needs ``pip install 'sipe[export]'``)."""

    onnx: bool = True
    opset: int = 17


@dataclass
class RunConfig:
    """Everything ``sipe run`` does; YAML sections ``data``, ``train``, ``cam``, ``refine``, ``irn``,
    ``seg``, ``eval``, ``export``."""

    data: DataConfig = field(default_factory=_run_data)
    train: SIPETrainConfig = field(default_factory=SIPETrainConfig)
    cam: CamSection = field(default_factory=CamSection)
    refine: RefineSection = field(default_factory=RefineSection)
    irn: IRNConfig = field(default_factory=IRNConfig)
    seg: SegTrainConfig = field(default_factory=SegTrainConfig)
    eval: EvalSection = field(default_factory=EvalSection)
    export: ExportSection = field(default_factory=ExportSection)
    # Intra-op threads of every stage (torch.set_num_threads); null = torch's default (one per core).
    num_threads: int | None = None


def resolve(cfg: RunConfig, out: str | os.PathLike | None = None) -> RunConfig:
    """A copy whose stage sections carry the shared ``data`` section (``train.data``, ``seg.data``) and,
    given the run folder, the pseudo-label folder the segmentation stage trains on."""
    cfg = copy.deepcopy(cfg)
    cfg.train.data = copy.deepcopy(cfg.data)
    seg_data = {k: getattr(cfg.data, k) for k in cfg.data.__dataclass_fields__}
    cfg.seg.data = SegDataConfig(**{**seg_data, "val_split": None})  # evaluated by the run's seg_eval stage
    if out is not None:
        cfg.seg.pseudo_labels = str(Path(out) / "pseudo_train")
    return cfg


def is_demo_config(path: str | os.PathLike | None) -> bool:
    """Whether the YAML file at ``path`` is a ``sipe demo`` configuration (``configs/demo.yaml``: it has
    the demo's own ``pretrain`` section), which ``sipe run`` runs as the demo."""
    if path is None or not Path(path).is_file():
        return False
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except yaml.YAMLError:
        return False
    return isinstance(data, Mapping) and "pretrain" in data and "train" not in data


def eval_splits(cfg: RunConfig) -> tuple[str | None, str | None]:
    """(split of the CAM / pseudo-mask evaluation, split of the segmentation evaluation); ``None`` = none."""
    split = cfg.eval.split
    if split is None:
        if cfg.data.val_split is not None:
            split = cfg.data.val_split
        elif cfg.data.kind != "custom" or cfg.data.mask_dir is not None:
            split = cfg.data.split if cfg.data.kind == "custom" else None
    seg_split = cfg.eval.seg_split if cfg.eval.seg_split is not None else split
    return split, seg_split
