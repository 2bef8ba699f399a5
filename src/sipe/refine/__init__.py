"""Pseudo masks from IS-CAMs: dense-CRF confident regions, IRN, sparse random walk, CRF labels.

``sipe.refine.random_walk`` is the propagation function (stable API), which shadows the module of
the same name: reach the module's other names with ``from sipe.refine.random_walk import ...``
(``import sipe.refine.random_walk as m`` gives the function). Training: ``sipe.refine.train_irn``.
"""

from sipe.refine.affinity import affinity_labels, edge_to_affinity, pair_paths
from sipe.refine.crf import (
    confident_regions,
    crf_label_inference,
    crf_refine_cams,
    make_confident_regions,
    make_crf_labels,
)
from sipe.refine.irn import IRN, irn_losses
from sipe.refine.pseudo import irn_boundary, make_pseudo_labels, pseudo_label
from sipe.refine.random_walk import random_walk  # rebinds the name of the submodule to the function
from sipe.refine.train_irn import IRNConfig, build_irn, load_irn

__all__ = [
    "IRN",
    "IRNConfig",
    "affinity_labels",
    "build_irn",
    "confident_regions",
    "crf_label_inference",
    "crf_refine_cams",
    "edge_to_affinity",
    "irn_boundary",
    "irn_losses",
    "load_irn",
    "make_confident_regions",
    "make_crf_labels",
    "make_pseudo_labels",
    "pair_paths",
    "pseudo_label",
    "random_walk",
]
