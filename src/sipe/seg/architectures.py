"""The segmentation architectures by name: the one table that training, evaluation, prediction and
export read (``model.arch`` / a checkpoint's ``model_spec["arch"]``).

Each :class:`Architecture` says how to build its network for training (from ``SegModelConfig``, initial
weights loaded) and from a checkpoint's :class:`~sipe.seg.spec.SegModelSpec` (randomly initialised, the
state dict loaded afterwards), its training step and parameter groups, the spec fields its built network
decides, and the module the ONNX export traces. A new architecture is one entry here, plus its
torch-free rules (output strides, auxiliary head) in :data:`sipe.config.seg.SEG_ARCHITECTURES`, which the
configuration checks before torch loads.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torchvision.models.segmentation.deeplabv3 import DeepLabV3

from sipe.config.seg import SegModelConfig, SegTrainConfig
from sipe.seg import deeplabv2, deeplabv3
from sipe.seg.interface import NormalizedSegModel
from sipe.seg.losses import StepFn, make_msc_step_fn, make_step_fn
from sipe.seg.spec import SegModelSpec

__all__ = ["ARCHITECTURES", "Architecture", "architecture", "build_from_spec", "onnx_wrapper"]


@dataclass(frozen=True)
class Architecture:
    """One segmentation architecture (see the module docstring).

    build: ``(model config, num_classes) -> network`` for training, initial weights loaded.
    rebuild: ``spec -> network``, randomly initialised (a checkpoint's state dict is loaded into it).
    step_fn: ``(train config, class weights (K,) or None) -> step(model, batch)``, the engine's step function.
    param_groups: ``(network, train config) -> optimiser groups`` (with ``lr_mult``).
    spec_fields: ``(network, model config) -> {spec field: value}``, what the built network decided
        beyond the common fields (e.g. DeepLabV2's MSC scales).
    model_type: the class of its networks (export finds a network's architecture by it).
    onnx_wrapper: ``network -> module`` on (N, 3, H, W) RGB in [0, 255] returning (N, K, H, W) logits.
    """

    build: Callable[[SegModelConfig, int], nn.Module]
    rebuild: Callable[[SegModelSpec], nn.Module]
    step_fn: Callable[[SegTrainConfig, torch.Tensor | None], StepFn]
    param_groups: Callable[[nn.Module, SegTrainConfig], list[dict]]
    spec_fields: Callable[[nn.Module, SegModelConfig], dict[str, Any]]
    model_type: type[nn.Module]
    onnx_wrapper: Callable[[nn.Module], nn.Module] = NormalizedSegModel


def _build_v3(m: SegModelConfig, num_classes: int) -> nn.Module:
    return deeplabv3.build_deeplab(
        num_classes, backbone=m.backbone, weights_backbone=m.weights, aux=m.aux,
        output_stride=m.resolved_output_stride(), backbone_options=m.backbone_options,
    )


def _rebuild_v3(spec: SegModelSpec) -> nn.Module:
    return deeplabv3.build_deeplab(
        spec.num_classes, backbone=spec.backbone, aux=spec.aux, output_stride=spec.output_stride,
        backbone_options=spec.backbone_options,
    )


def _build_v2(m: SegModelConfig, num_classes: int) -> nn.Module:
    m.resolved_output_stride()  # a config changed after it was checked: deeplabv2 runs at 8, without aux
    return deeplabv2.build_deeplabv2(
        num_classes, m.backbone, m.weights, atrous_rates=m.atrous_rates, msc_scales=m.msc_scales,
        normalization=m.normalization, backbone_options=m.backbone_options,
    )


def _rebuild_v2(spec: SegModelSpec) -> nn.Module:
    return deeplabv2.build_deeplabv2(
        spec.num_classes, spec.backbone, atrous_rates=spec.atrous_rates or deeplabv2.ATROUS_RATES,
        msc_scales=spec.msc_scales or deeplabv2.MSC_SCALES, normalization=spec.normalization,
        caffe_resnet=spec.caffe_resnet, backbone_options=spec.backbone_options,
    )


def _v2_spec_fields(model: nn.Module, m: SegModelConfig) -> dict[str, Any]:
    return {"atrous_rates": list(m.atrous_rates), "msc_scales": list(model.scales),
            "caffe_resnet": bool(model.caffe_resnet)}


ARCHITECTURES: dict[str, Architecture] = {
    "deeplabv3": Architecture(
        build=_build_v3,
        rebuild=_rebuild_v3,
        step_fn=lambda cfg, weights: make_step_fn(cfg.aux_weight, weights),
        param_groups=lambda model, cfg: deeplabv3.param_groups(model, cfg.head_lr_mult),
        spec_fields=lambda model, m: {},
        model_type=DeepLabV3,
    ),
    "deeplabv2": Architecture(
        build=_build_v2,
        rebuild=_rebuild_v2,
        step_fn=lambda cfg, weights: make_msc_step_fn(weights),
        param_groups=lambda model, cfg: deeplabv2.param_groups(
            model, cfg.head_lr_mult, cfg.head_bias_lr_mult, cfg.head_bias_weight_decay
        ),
        spec_fields=_v2_spec_fields,
        model_type=deeplabv2.DeepLabV2,
    ),
}


def architecture(name: str) -> Architecture:
    """The table's entry ``name``; ``ValueError`` naming the known ones otherwise."""
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise ValueError(
            f"unknown segmentation architecture {name!r} in the model spec ({', '.join(ARCHITECTURES)})"
        ) from None


def build_from_spec(spec: SegModelSpec) -> nn.Module:
    """A randomly initialised network with the architecture ``spec`` describes."""
    return architecture(spec.arch).rebuild(spec)


def onnx_wrapper(model: nn.Module, arch: str | None = None) -> nn.Module:
    """The module the ONNX export traces for ``model``: its architecture's ``onnx_wrapper`` (``arch``,
    or the entry whose ``model_type`` ``model`` is). A network of no architecture of the table (any
    module returning logits or ``{"out": logits}`` on normalised input) gets
    :class:`~sipe.seg.interface.NormalizedSegModel`, the wrapper of both built-in ones."""
    if arch is not None:
        return architecture(arch).onnx_wrapper(model)
    for entry in ARCHITECTURES.values():
        if isinstance(model, entry.model_type):
            return entry.onnx_wrapper(model)
    return NormalizedSegModel(model)
