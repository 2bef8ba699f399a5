"""Settings derived from the folder's own statistics (torch-free), the way nnU-Net derives its plans from a
dataset fingerprint: :func:`fingerprint_of` summarises the training split (images, sizes, images per class,
imbalance; :func:`synthetic_fingerprint` that of a generated set, before it is written), :func:`derive_plan`
sets the segmentation stage's sampling, loss weighting, crop size, steps and batch-norm mode from it by the
written rules below, and returns each value with the rule that set it. A key the user set
(in the YAML file or on the command line, :func:`explicit_keys`) is never changed: the paper's recipes
write theirs, so they keep the paper's values.

Rules (docs/skewed.md):

- ``seg.sampling``: ``repeat_factor`` when the imbalance (images of the most frequent class / images of
  the rarest class that has any) is at least :data:`SKEW_IMBALANCE`, else ``uniform``.
  ``seg.repeat_threshold`` keeps its default (0.3, the value measured in docs/skewed.md): a class in
  fewer than 30 % of the images is drawn more often.
- ``seg.loss_weighting``: ``inverse_sqrt_frequency`` under the same condition (each class's pixels weighted by
  the inverse square root of its share of the pseudo labels' pixels), else ``none``: on the skewed synthetic
  set, with the steps rule below, segmentation ends 0.005 above its pseudo labels on the mean of three seeds
  (0.041 below with the sampler alone, 0.060 with neither; docs/skewed.md). ``train.sampling`` stays uniform:
  measured, it did not help SIPE's pseudo labels.
- ``seg.aug.crop_size``: the median shorter side of the images rounded up to 16, at most 512 (a crop larger
  than the images is padding, which trains nothing).
- ``seg.engine.max_steps``: ``epochs`` x images // batch, raised to ``engine.min_steps``, and on a skewed folder
  to :data:`SKEW_STEPS_FACTOR` x ``engine.min_steps``: with rare images repeated and rare pixels weighted, a
  small folder's network needs more steps to learn its rare classes (on the skewed synthetic set, 500 -> 1,000
  steps took segmentation from 0.083 below its labels to 0.005 above; docs/skewed.md). A folder large enough
  for ``epochs`` to set the steps keeps them.
- ``seg.model.freeze_bn``: frozen when the body starts from weights (``model.weights`` set): a few images
  per step estimate batch statistics worse than pretraining did; else left null (a ``module:function``
  body that loads its own weights says so with ``pretrained = True``).
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Collection, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sipe.run.config import RunConfig, SyntheticSection

__all__ = ["SKEW_IMBALANCE", "SKEW_STEPS_FACTOR", "Fingerprint", "apply_plan", "dataset_fingerprint", "derive_plan",
           "explicit_keys", "fingerprint_of", "plan_lines", "plan_record", "synthetic_fingerprint"]

# Imbalance (most / fewest images per class) from which a folder counts as skewed. VOC train (person in
# ~30 % of the images, the rarest class in ~4 %) is about 8; the demo's balanced classes about 1.
SKEW_IMBALANCE = 4.0
# On a skewed folder the floor of segmentation steps is this many times engine.min_steps (docs/skewed.md).
SKEW_STEPS_FACTOR = 2
MAX_CROP = 512  # the DeepLab default, VOC's images (500 x 375) padded

Rule = tuple[str, Any, str]  # (dotted key, value, the rule that set it)


@dataclass
class Fingerprint:
    """What the plan is derived from: ``class_names`` (foreground), ``images_per_class`` (same order),
    ``negatives`` (images without a class), ``median_size`` ((H, W) of the readable images, or ``None``)
    and ``pixel_share`` (per foreground class, its share of the labelled mask pixels, when masks exist)."""

    num_images: int
    class_names: list[str]
    images_per_class: list[int]
    negatives: int
    median_size: tuple[int, int] | None = None
    pixel_share: list[float] | None = None

    @property
    def imbalance(self) -> float:
        """Images of the most frequent class over those of the rarest class that has any (1 if none)."""
        present = [n for n in self.images_per_class if n > 0]
        return max(present) / min(present) if present else 1.0

    @property
    def empty_classes(self) -> list[str]:
        """Classes without a single image (nothing to learn them from)."""
        return [c for c, n in zip(self.class_names, self.images_per_class, strict=True) if n == 0]

    def to_dict(self) -> dict[str, Any]:
        """Plain data (metrics.json, the results page), with the imbalance."""
        data = asdict(self)
        if self.median_size is not None:
            data["median_size"] = list(self.median_size)  # as metrics.json reads it back
        return {**data, "imbalance": round(self.imbalance, 2)}


def fingerprint_of(labels: np.ndarray, sizes: Sequence[Sequence[int] | None], class_names: Sequence[str],
                   pixel_counts: Sequence[float] | None = None) -> Fingerprint:
    """The fingerprint of a training split.

    labels (N, C) multi-hot image-level labels over the C foreground classes ``class_names``; ``sizes``:
    (H, W) per image, ``None`` (or a string: the reason) for one that could not be read; ``pixel_counts``
    (C,) labelled pixels of each class in the masks, when there are masks.
    """
    labels = np.asarray(labels) > 0
    if labels.ndim != 2 or labels.shape[1] != len(class_names):
        raise ValueError(f"labels must be (N, {len(class_names)}), got shape {labels.shape}")
    hw = np.array([s for s in sizes if s is not None and not isinstance(s, str)], dtype=np.int64).reshape(-1, 2)
    median = (int(np.median(hw[:, 0])), int(np.median(hw[:, 1]))) if len(hw) else None
    share = None
    if pixel_counts is not None:
        counts = np.asarray(pixel_counts, np.float64)
        share = [round(float(x), 4) for x in counts / max(counts.sum(), 1.0)]
    return Fingerprint(num_images=int(labels.shape[0]), class_names=list(class_names),
                       images_per_class=[int(x) for x in labels.sum(axis=0)],
                       negatives=int((~labels.any(axis=1)).sum()), median_size=median, pixel_share=share)


def dataset_fingerprint(ds: Any, masks: bool = False) -> Fingerprint:
    """:func:`fingerprint_of` a sipe dataset (``get_labels``, the cached ``decode_checks``; with ``masks``,
    the pixel counts of its ground-truth masks, each read once)."""
    from sipe.data.labelmap import label_matrix

    labels = label_matrix(ds)
    sizes = ds.decode_checks() if hasattr(ds, "decode_checks") else [None] * len(ds)
    counts = None
    if masks:
        k = len(ds.class_names)
        total = np.zeros(k, np.float64)
        for i in range(len(ds)):
            m = ds.read_mask(i)
            if m is not None:
                total += np.bincount(m[m < k].ravel(), minlength=k)[:k]
        counts = total[1:]
    return fingerprint_of(labels, sizes, list(ds.class_names)[1:], counts)


def synthetic_fingerprint(section: SyntheticSection) -> Fingerprint:
    """:func:`fingerprint_of` the training split a run's ``synthetic`` section (``SyntheticSection``) generates,
    drawn in memory before the data stage has written it (the same labels and sizes, nothing written)."""
    from sipe.data.synthetic import synthetic_class_names, synthetic_train_labels

    labels, sizes = synthetic_train_labels(**section.generator_args())
    return fingerprint_of(labels, sizes, synthetic_class_names(section.num_classes)[1:])


def apply_plan(cfg: RunConfig, fp: Fingerprint, explicit: Collection[str] = ()
               ) -> tuple[RunConfig, list[str], dict[str, Any]]:
    """What ``sipe run`` runs: ``cfg`` with the settings derived from ``fp`` (unless ``cfg.plan`` is false;
    the ``explicit`` keys win), the lines that say what the plan sets (YAML comments, for the log and
    ``--print-config``) and the same as data (:func:`plan_record`, for ``metrics.json`` and the page)."""
    planned, rules = derive_plan(cfg, fp, explicit)
    lines = plan_lines(fp, rules)
    record = plan_record(fp, rules, applied=cfg.plan)
    if cfg.plan:
        return planned, lines, record
    if rules:
        lines.append("# plan not applied (plan=false); without it, plan=true (the default) applies the values above")
    return cfg, lines, record


def explicit_keys(config: str | os.PathLike | None, overrides: Sequence[str] = ()) -> set[str]:
    """The dotted keys the user set: every leaf of the YAML file ``config`` and every ``key=value`` override
    (a whole section given as a mapping counts as each of its leaves)."""
    import yaml

    keys: set[str] = set()

    def walk(data: Any, prefix: str) -> None:
        if isinstance(data, Mapping) and data:
            for k, v in data.items():
                walk(v, f"{prefix}.{k}" if prefix else str(k))
        elif prefix:
            keys.add(prefix)

    if config is not None:
        walk(yaml.safe_load(Path(config).read_text(encoding="utf-8")) or {}, "")
    for text in overrides:
        key, _, raw = text.partition("=")
        walk(yaml.safe_load(raw) if raw.strip() else "", key.strip())
    return keys


def _set(cfg: RunConfig, key: str, value: Any) -> None:
    *path, leaf = key.split(".")
    obj: Any = cfg
    for part in path:
        obj = getattr(obj, part)
    setattr(obj, leaf, value)


def _rules(cfg: RunConfig, fp: Fingerprint) -> list[Rule]:
    """Every derived (key, value, rule), before the user's keys are taken out."""
    seg = cfg.seg
    out: list[Rule] = []
    imb = fp.imbalance
    if imb >= SKEW_IMBALANCE:
        out.append(("seg.sampling", "repeat_factor", f"imbalance {imb:.1f} >= {SKEW_IMBALANCE:g}: rare classes drawn "
                    "more often"))
        out.append(("seg.loss_weighting", "inverse_sqrt_frequency", f"imbalance {imb:.1f} >= {SKEW_IMBALANCE:g}: a "
                    "rare class's pixels weigh more"))
    else:
        out.append(("seg.sampling", "uniform", f"imbalance {imb:.1f} < {SKEW_IMBALANCE:g}: classes balanced enough"))
        out.append(("seg.loss_weighting", "none", f"imbalance {imb:.1f} < {SKEW_IMBALANCE:g}: every pixel alike"))
    if fp.median_size is not None:
        short = min(fp.median_size)
        crop = min(MAX_CROP, 16 * math.ceil(short / 16))
        out.append(("seg.aug.crop_size", crop, f"median shorter side {short} px rounded up to 16, at most {MAX_CROP}"))
    e = seg.engine
    epoch_steps = fp.num_images // e.batch_size
    if imb >= SKEW_IMBALANCE and e.min_steps:
        floor, why = SKEW_STEPS_FACTOR * e.min_steps, (f"{SKEW_STEPS_FACTOR} x engine.min_steps={e.min_steps} "
                                                      f"on a skewed folder, imbalance {imb:.1f} >= {SKEW_IMBALANCE:g}")
    else:
        floor, why = e.min_steps or 0, f"engine.min_steps={e.min_steps}"
    steps = max(epoch_steps * e.epochs, floor)
    out.append(("seg.engine.max_steps", steps, f"{e.epochs} epochs x {epoch_steps} steps, at least {why}"))
    if seg.model.weights is not None:
        out.append(("seg.model.freeze_bn", True, "the body starts from weights (model.weights): batch "
                    f"{e.batch_size} estimates statistics worse than pretraining did"))
    return out


def derive_plan(cfg: RunConfig, fp: Fingerprint, explicit: Collection[str] = ()) -> tuple[RunConfig, list[Rule]]:
    """A copy of ``cfg`` with the derived settings, and the rules that set them.

    ``explicit``: dotted keys the user set (:func:`explicit_keys`); each of them, and every key inside a
    section named there, keeps the user's value. The steps rule stands back when any of
    ``seg.engine.{max_steps, epochs, min_steps, batch_size}`` is explicit.
    """
    explicit = set(explicit)
    out = copy.deepcopy(cfg)

    def chosen(key: str) -> bool:
        parts = key.split(".")
        return any(".".join(parts[:i]) in explicit for i in range(1, len(parts) + 1))

    steps_keys = ("seg.engine.max_steps", "seg.engine.epochs", "seg.engine.min_steps", "seg.engine.batch_size")
    applied: list[Rule] = []
    for key, value, rule in _rules(cfg, fp):
        if chosen(key) or (key == "seg.engine.max_steps" and any(chosen(k) for k in steps_keys)):
            continue
        _set(out, key, value)
        applied.append((key, value, rule))
    return out, applied


def plan_record(fp: Fingerprint, rules: Sequence[Rule], applied: bool) -> dict[str, Any]:
    """The fingerprint and the plan as plain data (``metrics.json``'s ``plan``, the results page)."""
    return {"fingerprint": fp.to_dict(), "applied": applied,
            "rules": [{"key": key, "value": value, "rule": rule} for key, value, rule in rules]}


def plan_lines(fp: Fingerprint, rules: Sequence[Rule]) -> list[str]:
    """The fingerprint and the plan as text lines (``sipe run --print-config``, the log)."""
    per_class = ", ".join(f"{c} {n}" for c, n in zip(fp.class_names, fp.images_per_class, strict=True))
    lines = [f"# data fingerprint: {fp.num_images} images ({fp.negatives} without a class), median size "
             f"{fp.median_size}, imbalance {fp.imbalance:.1f}", f"#   images per class: {per_class}"]
    lines += [f"# derived: {key}={value}  ({rule})" for key, value, rule in rules]
    return lines
