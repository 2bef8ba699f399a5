"""The backbone registry: the only place that maps a backbone name to a module.

Names (``model.backbone``):

- ``resnet10`` | ``resnet18`` | ``resnet34`` | ``resnet50`` | ``resnet101``: a torchvision ResNet adapted as the
  official code (:class:`sipe.models.backbone.ResNetBackbone`);
- ``timm:<model>``: any timm model that supports ``features_only`` and ``output_stride=16``
  (``pip install 'sipe[timm]'``); the four maps are the stages at strides 4, 8, 16 and the last one
  (run at 16), their widths from timm's ``feature_info``. ``output_stride=8`` (DeepLab) dilates the
  same four stages to strides 4, 8, 8, 8 where timm can (``timm.create_model(..., output_stride=8)``);
- ``module:function``: a user's factory, imported from ``PYTHONPATH``; ``function(**options)``
  returns a module obeying the contract.

The contract: ``forward(x)`` with x (N, 3, H, W) returns four maps (N, C_i, H/s_i, W/s_i) at strides
s = (4, 8, 16, 16), and the module declares ``out_channels`` = (C_1, C_2, C_3, C_4). It is checked
once at build time on a dummy input; each violation has its own message. Only a timm backbone can
also be built at output stride 8 (strides 4, 8, 8, 8): the contract fixes a user's module at 16.

The training policy of every non-ResNet backbone (the ResNet keeps its own, bit-identical code):
``frozen_stages`` n freezes every parameter the n-th map depends on (found by autograd on the dummy
input; official n = 2, the stem and the first two stages), ``freeze_bn`` keeps every batch norm's
statistics fixed (its affine parameters train where their stage does, as in the official ResNet).

DeepLab's ResNet (a plain torchvision ResNet with its last stages dilated instead of strided) is
:func:`sipe.models.dilated_resnet.build_dilated_resnet`.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from sipe.config.common import RESNETS, TIMM_PREFIX
from sipe.config.common import backbone_kind as _name_kind
from sipe.models.layers import hold_batchnorm_statistics
from sipe.models.weights import (
    OFFLINE_WAYS,
    check_hub_reachable,
    load_matching_weights,
    read_state_dict,
    under_prefix,
)

__all__ = [
    "CONTRACT_STRIDES",
    "TIMM_PRETRAINED",
    "BackboneError",
    "FeatureBackbone",
    "backbone_kind",
    "build_backbone",
    "check_contract",
    "check_resnet_options",
]

CONTRACT_STRIDES = (4, 8, 16, 16)
# ``model.weights`` value that asks timm for its own pretrained weights (downloaded: needs a network).
TIMM_PRETRAINED = "timm"
_PROBE_SIZE = 64  # side of the dummy input of the contract check (stride 16 -> a 4x4 map)


class BackboneError(ValueError):
    """A backbone that cannot be built as asked (name, weights, contract); the message says the fix."""


def backbone_kind(name: str) -> str:
    """``"resnet"``, ``"timm"`` or ``"module"``; raises :class:`BackboneError` for any other name."""
    try:
        return _name_kind(name)
    except ValueError as e:
        raise BackboneError(str(e)) from None


class FeatureBackbone(nn.Module):
    """A network returning a list of maps, narrowed to the four of the contract, with the training policy.

    Args:
        body: the network; ``body(x)`` returns a list (or dict) of maps.
        indices: which of its maps are the contract's four.
        out_channels: their channel counts.
        freeze_bn: batch-norm statistics frozen (every batch norm stays in eval mode).

    ``forward(x)`` with x (N, 3, H, W) returns the four maps at strides 4, 8, 16, 16.
    """

    def __init__(self, body: nn.Module, indices: Sequence[int], out_channels: Sequence[int],
                 freeze_bn: bool = True) -> None:
        super().__init__()
        self.body = body
        self.indices = tuple(int(i) for i in indices)
        self.out_channels: tuple[int, ...] = tuple(int(c) for c in out_channels)
        self.freeze_bn = freeze_bn
        self.train(self.training)

    def train(self, mode: bool = True) -> FeatureBackbone:
        super().train(mode)
        if self.freeze_bn:
            hold_batchnorm_statistics(self.body)
        return self

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = self.body(x)
        if isinstance(feats, Mapping):
            feats = list(feats.values())
        return [feats[i] for i in self.indices]


def _maps(out: Any) -> list[torch.Tensor] | None:
    if isinstance(out, Mapping):
        out = list(out.values())
    if isinstance(out, (list, tuple)) and all(isinstance(t, torch.Tensor) and t.dim() == 4 for t in out):
        return list(out)
    return None


def check_contract(backbone: nn.Module, name: str, with_grad: bool = False,
                   strides: Sequence[int] = CONTRACT_STRIDES) -> list[torch.Tensor]:
    """Run ``backbone`` once on a (1, 3, 64, 64) dummy input (eval mode) and raise
    :class:`BackboneError` unless it returns four maps at ``strides`` (the contract's 4, 8, 16, 16;
    4, 8, 8, 8 for a timm backbone built at output stride 8) with the channel counts its
    ``out_channels`` declares. Returns the maps (with their autograd graph if ``with_grad``)."""
    strides = tuple(int(s) for s in strides)
    declared = getattr(backbone, "out_channels", None)
    if declared is None or len(tuple(declared)) != 4:
        raise BackboneError(
            f"backbone {name!r} must declare out_channels, the channel counts of its four maps "
            f"(got {declared!r}); set e.g. module.out_channels = (256, 512, 1024, 2048)"
        )
    device = next((p.device for p in backbone.parameters()), torch.device("cpu"))
    was_training = backbone.training
    backbone.eval()
    try:
        with torch.set_grad_enabled(with_grad):
            out = backbone(torch.zeros(1, 3, _PROBE_SIZE, _PROBE_SIZE, device=device))
    except Exception as exc:  # a user's network can fail in any way; re-raised with the name
        raise BackboneError(
            f"backbone {name!r} failed on a 1x3x{_PROBE_SIZE}x{_PROBE_SIZE} input ({type(exc).__name__}: {exc})"
        ) from exc
    finally:
        backbone.train(was_training)
    maps = _maps(out)
    if maps is None:
        raise BackboneError(f"backbone {name!r} must return a list of four (N, C, h, w) maps, got {type(out).__name__}")
    if len(maps) != 4:
        raise BackboneError(
            f"backbone {name!r} returned {len(maps)} feature maps; the contract needs four, at strides "
            f"{', '.join(map(str, strides))}"
        )
    found = [_PROBE_SIZE / m.shape[-1] for m in maps]
    if any(s != c for s, c in zip(found, strides, strict=True)):
        got = ", ".join(f"{s:g}" for s in found)
        fix = (f"this model does not dilate its last stages to output stride {strides[-1]}: use output_stride: 16"
               if strides[-1] != 16 else "the last stage at stride 16: dilate it instead of striding")
        raise BackboneError(
            f"backbone {name!r} gives maps at strides {got}; the contract needs "
            f"{', '.join(map(str, strides))} ({fix})"
        )
    channels = [m.shape[1] for m in maps]
    if channels != [int(c) for c in declared]:
        raise BackboneError(
            f"backbone {name!r} gives maps with {channels} channels but declares out_channels={tuple(declared)}; "
            "make out_channels match what forward returns"
        )
    return maps


def _freeze_upstream(backbone: nn.Module, maps: Sequence[torch.Tensor], n: int) -> None:
    """Switch off the gradient of every parameter of ``backbone`` that map ``n`` (1-based) of its
    probe output ``maps`` (with their graph) depends on."""
    if n <= 0:
        return
    params = [p for p in backbone.parameters() if p.requires_grad]
    if not maps[n - 1].requires_grad:
        return
    grads = torch.autograd.grad(maps[n - 1].sum(), params, allow_unused=True)
    for p, g in zip(params, grads, strict=True):
        if g is not None:
            p.requires_grad_(False)


def _import_timm(name: str) -> Any:
    try:
        import timm
    except ImportError as exc:
        raise BackboneError(
            f"backbone {name!r} needs timm, which is not installed: pip install 'sipe[timm]' (or pip install timm)"
        ) from exc
    return timm


def _timm_body(name: str, weights: str | os.PathLike | None, options: Mapping[str, Any],
               output_stride: int = 16) -> FeatureBackbone:
    timm = _import_timm(name)
    model_name = name[len(TIMM_PREFIX):]
    pretrained = weights is not None and str(weights) == TIMM_PRETRAINED
    if pretrained:
        check_hub_reachable(f"timm's pretrained weights of {model_name!r} (model.weights=timm)")
    try:
        body = timm.create_model(model_name, features_only=True, output_stride=output_stride, pretrained=pretrained,
                                 **dict(options))
    except TypeError as exc:  # timm passes output_stride to the model class, which may not take it
        if output_stride != 16:
            raise BackboneError(
                f"timm model {model_name!r} cannot run at output stride {output_stride} ({exc}); use output_stride: 16"
            ) from exc
        raise BackboneError(
            f"timm model {model_name!r} cannot run at output stride 16 ({exc}); SIPE needs the last stage at "
            "stride 16: choose a model that supports output_stride (ResNets, ConvNeXt, EfficientNet, RegNet, ...)"
        ) from exc
    except Exception as exc:  # timm and huggingface_hub raise many types for unknown models and downloads
        if "Unknown model" in str(exc):
            raise BackboneError(f"timm has no model {model_name!r}: see timm.list_models()") from exc
        if pretrained:
            raise BackboneError(
                f"timm could not fetch the pretrained weights of {model_name!r} ({type(exc).__name__}: {exc}); "
                f"this machine may be offline, refusing to continue with random weights; {OFFLINE_WAYS} (for (1): "
                "model.weights=/path/file.safetensors)"
            ) from exc
        raise BackboneError(
            f"timm cannot build {model_name!r} as a features_only model ({type(exc).__name__}: {exc})"
        ) from exc
    # The four stages are chosen by their strides at output stride 16; at 8 timm reports the dilated
    # strides (8, 8, 8 for the last three), so the same model is read on the meta device (no memory) at 16.
    reductions = list(body.feature_info.reduction())
    if output_stride != 16:
        try:
            with torch.device("meta"):
                nominal = timm.create_model(model_name, features_only=True, output_stride=16, pretrained=False,
                                            **dict(options))
        except Exception as exc:  # re-raised with the way out
            raise BackboneError(
                f"timm model {model_name!r} cannot be read at output stride 16 ({type(exc).__name__}: {exc}); "
                "use output_stride: 16"
            ) from exc
        reductions = list(nominal.feature_info.reduction())
        if len(reductions) != len(body.feature_info.reduction()):
            raise BackboneError(
                f"timm model {model_name!r} has other stages at output stride {output_stride} than at 16; "
                "use output_stride: 16"
            )
    channels = list(body.feature_info.channels())
    last = len(reductions) - 1

    def last_at(r: int) -> int | None:
        found = [i for i, x in enumerate(reductions) if x == r]
        return found[-1] if found else None

    first16 = reductions.index(16) if 16 in reductions else None
    picked = [last_at(4), last_at(8), first16, last]
    if None in picked or reductions[last] != 16 or first16 == last:
        raise BackboneError(
            f"timm model {model_name!r} has stages at strides {reductions} with output_stride=16; SIPE needs "
            "stages at 4, 8 and 16 and a later last stage run at 16: choose another model"
        )
    backbone = FeatureBackbone(body, picked, [channels[i] for i in picked])
    if weights is not None and not pretrained:
        state = read_state_dict(weights)
        # A SIPE or DeepLab checkpoint holds the backbone under a prefix, in the features_only key names.
        state = under_prefix(body.state_dict(), state)
        load_matching_weights(body, _timm_keys(body, state), f"weights {weights} for {name}")
    return backbone


def _timm_keys(body: nn.Module, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` (a plain timm model's keys) renamed to ``body``'s: timm's features_only wrapper flattens
    the first level of sequential containers (``stages.0.x`` becomes ``stages_0.x``)."""
    state = {k.removeprefix("module."): v for k, v in state.items()}
    out = {}
    for key in body.state_dict():
        head, _, rest = key.partition(".")
        candidates = [key] + [f"{head[:i]}.{head[i + 1:]}.{rest}" for i, c in enumerate(head) if c == "_"]
        found = next((c for c in candidates if c in state), None)
        if found is not None:
            out[key] = state[found]
    return out


def _module_body(name: str, weights: str | os.PathLike | None, options: Mapping[str, Any]) -> FeatureBackbone:
    module_name, function_name = name.split(":", 1)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise BackboneError(
            f"cannot import module {module_name!r} of backbone {name!r} ({exc}); put its folder on PYTHONPATH"
        ) from exc
    factory = getattr(module, function_name, None)
    if not callable(factory):
        raise BackboneError(f"module {module_name!r} has no function {function_name!r} (backbone {name!r})")
    body = factory(**dict(options))
    if not isinstance(body, nn.Module):
        raise BackboneError(f"{name}() returned a {type(body).__name__}, not a torch.nn.Module")
    if weights is not None:
        if str(weights) == TIMM_PRETRAINED:
            raise BackboneError(
                f"model.weights=timm asks timm for weights, but {name!r} is your own backbone: pass a local file"
            )
        state = under_prefix(body.state_dict(), read_state_dict(weights))  # a checkpoint's backbone too
        load_matching_weights(body, state, f"weights {weights} for {name}")
    return FeatureBackbone(body, range(4), tuple(getattr(body, "out_channels", None) or ()))


def check_resnet_options(name: str, options: Mapping[str, Any] | None) -> None:
    """Raise :class:`BackboneError` when options are given for a ResNet, which takes none (they are
    keyword arguments of ``timm.create_model`` or of a user's factory)."""
    if options:
        raise BackboneError(f"backbone {name} takes no options, got {sorted(options)}")


def build_backbone(
    name: str,
    weights: str | os.PathLike | None = None,
    *,
    frozen_stages: int = 2,
    freeze_bn: bool = True,
    options: Mapping[str, Any] | None = None,
    output_stride: int = 16,
) -> nn.Module:
    """The backbone ``name`` names (see the module docstring), its contract checked.

    ``weights``: ``None`` (random), a local ``.pth``/``.safetensors`` state-dict file (every backbone
    key must be in it, see :func:`sipe.models.weights.load_matching_weights`), a torchvision weights
    name for a ResNet (``"IMAGENET1K_V1"``) or ``"timm"`` (timm's own pretrained weights, online).
    ``frozen_stages`` / ``freeze_bn``: the training policy. ``options``: keyword arguments of
    ``timm.create_model`` or of the user's factory (none for a ResNet). ``output_stride``: 16 (the
    contract), or 8 for a timm model that timm can dilate (maps at strides 4, 8, 8, 8; DeepLab).
    Returns a module whose ``forward(x)`` with x (N, 3, H, W) gives the four contract maps.
    """
    kind = backbone_kind(name)
    if not 0 <= frozen_stages <= 4:
        raise BackboneError(f"frozen_stages must be 0..4, got {frozen_stages}")
    if output_stride not in (8, 16):
        raise BackboneError(f"output_stride must be 8 or 16, got {output_stride}")
    if output_stride != 16 and kind != "timm":
        raise BackboneError(
            f"backbone {name!r} runs at output stride 16 only (the contract fixes its last maps at 16; only timm "
            f"models can be dilated to 8): use output_stride: 16"
        )
    options = dict(options or {})
    try:
        if kind == "resnet":
            check_resnet_options(name, options)
            from sipe.models.backbone import ResNetBackbone

            # The official adaptation, untouched: its own stage freezing and FrozenBatchNorm2d.
            return ResNetBackbone(RESNETS[name], weights=weights, frozen_stages=frozen_stages, freeze_bn=freeze_bn)
        backbone = (_timm_body(name, weights, options, output_stride) if kind == "timm"
                    else _module_body(name, weights, options))
    except BackboneError:
        raise
    except (FileNotFoundError, ValueError) as exc:  # a weights file that is missing, unreadable or unfit
        raise BackboneError(str(exc)) from exc
    # A user's module is checked as it is (before wrapping) so that a wrong map count gets its own message.
    strides = (4, 8, output_stride, output_stride)
    maps = check_contract(backbone.body if kind == "module" else backbone, name, with_grad=frozen_stages > 0,
                          strides=strides)
    _freeze_upstream(backbone, maps, frozen_stages)
    backbone.freeze_bn = freeze_bn
    backbone.train(backbone.training)
    return backbone
