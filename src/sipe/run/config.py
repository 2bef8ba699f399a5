"""The configuration of ``sipe run`` (torch-free, so that its errors come before torch loads).

The sections are the existing commands' configurations under their own key names: ``train`` is what
``sipe train --print-config`` prints, ``irn`` what ``sipe refine train-irn --print-config`` prints, ``seg``
what ``sipe seg train --print-config`` prints. ``data`` is shared by every stage: :func:`resolve` copies it
into ``train.data`` and ``seg.data`` (and the pseudo-label folder into ``seg.pseudo_labels``), so that the
printed configuration shows what each stage really runs with.

Two optional sections add leading stages (``configs/demo.yaml`` sets both): ``synthetic`` generates the
synthetic dataset into ``OUT/data`` (``data.root``), and ``pretrain`` pretrains a plain classifier into
``OUT/pretrain/backbone.pth``, which a stage takes by naming :data:`PRETRAINED` as its weights. ``seed``,
when set, is copied into the seeds of the data, pretraining, IRN and segmentation stages (SIPE training
keeps its own, the official 15).
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from sipe.config.common import DataConfig
from sipe.config.irn import IRNConfig
from sipe.config.loader import ConfigError
from sipe.config.seg import SegDataConfig, SegTrainConfig
from sipe.config.train import PretrainConfig, SIPETrainConfig

__all__ = ["DEMO_CONFIG", "PRETRAINED", "CamSection", "EvalSection", "ExportSection", "PretrainSection",
           "RefineSection", "RunConfig", "SyntheticSection", "eval_splits", "resolve"]

# The demo's configuration (configs/demo.yaml links to it): `sipe demo` runs this file.
DEMO_CONFIG = Path(__file__).with_name("demo.yaml")
# The weights value that means "the backbone of this run's pretraining stage" (OUT/pretrain/backbone.pth).
PRETRAINED = "stage:pretrain"
PRETRAINED_FILE = Path("pretrain") / "backbone.pth"
SYNTHETIC_DIR = "data"


@dataclass
class SyntheticSection:
    """The synthetic dataset the ``data`` stage generates (:func:`sipe.data.generate_synthetic`)."""

    seed: int = 0
    n_train: int = 400
    n_val: int = 100
    image_size: tuple[int, int] = (96, 160)
    num_classes: int = 4  # foreground classes
    max_objects: int = 2
    # Objects a few stride-16 cells wide even at scale 1.0, so that image-specific prototypes have
    # room to work (the paper's VOC objects span tens of cells).
    body_radius: tuple[float, float] = (0.26, 0.36)
    # Relative frequency of each class among the objects, e.g. [60, 20, 10, 5] (a skewed set,
    # docs/skewed.md); null: uniform, the demo's balanced classes.
    class_weights: tuple[float, ...] | None = None

    def generator_args(self) -> dict[str, Any]:
        """The arguments of the training split's generator (:func:`sipe.data.generate_synthetic` takes them with
        ``n_val``; :func:`sipe.data.synthetic.synthetic_train_labels`, the plan's in-memory draw, as they are)."""
        return {"seed": self.seed, "n_train": self.n_train, "image_size": tuple(self.image_size),
                "num_classes": self.num_classes, "max_objects": self.max_objects,
                "body_radius": tuple(self.body_radius),
                "class_weights": None if self.class_weights is None else tuple(self.class_weights)}


@dataclass
class PretrainSection(PretrainConfig):
    """Plain-classifier pretraining (:func:`sipe.train.pretrain.pretrain_classifier`), the stand-in for
    ImageNet weights offline; ``background_images`` object-free synthetic images join as negatives, so
    that no class is learned as "none of the others" (its CAM would cover the background)."""

    background_images: int = 0


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
    # Pictures image | CAM | IS-CAM | ground truth of the first N evaluation images, in OUT/overlays/.
    num_overlays: int = 0


@dataclass
class ExportSection:
    """ONNX export of the segmentation network (``sipe export``; needs ``pip install 'sipe[export]'``)."""

    onnx: bool = True
    opset: int = 17


@dataclass
class RunConfig:
    """Everything ``sipe run`` does; YAML sections ``data``, ``train``, ``cam``, ``refine``, ``irn``,
    ``seg``, ``eval``, ``export``, and optionally ``seed``, ``synthetic`` and ``pretrain`` (see the module)."""

    seed: int | None = None
    # Apply the segmentation settings derived from the folder's statistics (sipe.run.plan: sampling, loss
    # weighting, crop size, steps, batch norm; a key you set always wins, and the paper's recipes set theirs).
    # --print-config and the log show each value with its rule; plan=false shows them without applying them.
    plan: bool = True
    synthetic: SyntheticSection | None = None
    pretrain: PretrainSection | None = None
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
    """A copy whose stage sections carry what they run with: the shared ``data`` section (``train.data``,
    ``seg.data``), ``seed`` where it applies and, given the run folder, the paths inside it (the generated
    data, the pretrained weights, the pseudo-label folder the segmentation stage trains on).

    Raises :class:`ConfigError` for a ``synthetic`` section without ``data.kind=synthetic``, for
    :data:`PRETRAINED` weights without a ``pretrain`` section and for synthetic negatives in pretraining
    without a ``synthetic`` section.
    """
    cfg = copy.deepcopy(cfg)
    run = Path(out).resolve() if out is not None else None
    if cfg.synthetic is not None:
        if cfg.data.kind != "synthetic":
            raise ConfigError(f"the synthetic section generates synthetic data, but data.kind={cfg.data.kind}; "
                              "set data.kind=synthetic or drop the synthetic section")
        if run is not None:
            cfg.data.root = str(run / SYNTHETIC_DIR)
    if cfg.pretrain is not None and cfg.pretrain.background_images > 0 and cfg.synthetic is None:
        raise ConfigError(f"pretrain.background_images={cfg.pretrain.background_images} draws synthetic object-free "
                          "images, which needs a synthetic section; set it to 0 for your own data")
    if cfg.seed is not None:
        for section in (cfg.synthetic, cfg.pretrain and cfg.pretrain.engine, cfg.irn.engine, cfg.seg.engine):
            if section is not None:
                section.seed = cfg.seed
    weights = {"train.model.weights": cfg.train.model, "irn.weights": cfg.irn, "seg.model.weights": cfg.seg.model}
    for key, section in weights.items():
        if section.weights != PRETRAINED:
            continue
        if cfg.pretrain is None:
            raise ConfigError(f"{key}={PRETRAINED} names the pretraining stage's weights, but the configuration "
                              "has no pretrain section; add one or give other weights")
        if run is not None:
            section.weights = str(run / PRETRAINED_FILE)
    cfg.train.data = copy.deepcopy(cfg.data)
    seg_data = {k: getattr(cfg.data, k) for k in cfg.data.__dataclass_fields__}
    cfg.seg.data = SegDataConfig(**{**seg_data, "val_split": None})  # evaluated by the run's seg_eval stage
    if run is not None:
        cfg.seg.pseudo_labels = str(run / "pseudo_train")
    return cfg


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
