"""Pretrained ResNet weights: torchvision names or local files, never a silent fallback to random."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from sipe.errors import InputError, UsageError
from sipe.io import load_torch_file

if TYPE_CHECKING:  # torch is imported where it is used: configs check backbone names before torch loads
    import torch
    from torch import nn

from sipe.config.common import RESNETS, UNPUBLISHED_RESNETS

__all__ = [
    "RESNETS",
    "HUB_PROBE_TIMEOUT_S",
    "OFFLINE_WAYS",
    "check_hub_reachable",
    "check_resnet",
    "load_backbone_state_dict",
    "load_matching_weights",
    "under_prefix",
    "load_resnet_weights",
    "read_state_dict",
    "resnet_pretrained_state",
    "torchvision_resnet",
]



# The ways forward when pretrained weights cannot be fetched, said by every such error (one line).
OFFLINE_WAYS = (
    "three ways forward: (1) a local weights file as the weights option; (2) a timm:<model> or module:function "
    "backbone with its own weights (timm's from the local cache with HF_HUB_OFFLINE=1); (3) weights=null: random "
    "weights (run_info.json and the results page say so), which cost most of the accuracy"
)
HUB_PROBE_TIMEOUT_S = 3.0  # seconds one connection to the Hugging Face Hub may take before it counts as offline


def check_hub_reachable(what: str, timeout: float = HUB_PROBE_TIMEOUT_S) -> None:
    """Raise :class:`sipe.errors.InputError` at once when the Hugging Face Hub (``HF_ENDPOINT``, default
    ``https://huggingface.co``), where timm fetches its pretrained weights, cannot be reached.

    One TCP connection (name lookup included) bounded by ``timeout`` seconds, instead of the hub
    client's own retries (about a minute offline). With ``HF_HUB_OFFLINE=1`` nothing is probed: the
    hub client then reads its local cache and fails at once when the weights are not there.
    ``what`` names the weights in the message.
    """
    import socket
    import threading
    from urllib.parse import urlsplit

    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return
    endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    url = urlsplit(endpoint)
    host, port = url.hostname or "", url.port or (80 if url.scheme == "http" else 443)
    outcome: list[BaseException | None] = []

    def connect() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            outcome.append(None)
        except OSError as err:
            outcome.append(err)

    probe = threading.Thread(target=connect, daemon=True)  # a name lookup ignores socket timeouts
    probe.start()
    probe.join(timeout)
    if not outcome or outcome[0] is not None:
        why = f"{type(outcome[0]).__name__}: {outcome[0]}" if outcome else f"no answer within {timeout:g} s"
        raise InputError(
            f"{what} are downloaded from {endpoint}, which cannot be reached ({why}); this machine may be "
            f"offline: {OFFLINE_WAYS}"
        )


def check_resnet(name: str) -> None:
    """Raise :class:`sipe.errors.UsageError` unless ``name`` is one of the torchvision ResNets sipe builds
    (what the ResNet weights functions below take; every stage builds other backbones through
    :mod:`sipe.models.registry`)."""
    if name not in RESNETS:
        raise UsageError(f"{name!r} is not a torchvision ResNet; choose one of {', '.join(RESNETS)}")


def torchvision_resnet(name: str, **kwargs: object) -> nn.Module:
    """The torchvision ResNet ``name`` (see :data:`RESNETS`) with random weights; ``kwargs`` go to its
    builder (``num_classes``, ``replace_stride_with_dilation``). ``resnet10`` is torchvision's ``ResNet``
    class with one ``BasicBlock`` per stage (half a ResNet-18's arithmetic), which torchvision names no
    builder or weights for."""
    import torchvision
    from torchvision.models.resnet import BasicBlock, ResNet

    check_resnet(name)
    if name == "resnet10":
        return ResNet(BasicBlock, [1, 1, 1, 1], **kwargs)
    return getattr(torchvision.models, name)(weights=None, **kwargs)


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A state dict of tensors from ``path`` (plain, or under ``model``/``state_dict``/``net``);
    ``.safetensors`` files are read with the ``safetensors`` package."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist; pass an existing file path")
    if path.suffix != ".safetensors":  # weights_only: a file asking for more is refused in one line
        obj = load_torch_file(path, what="weights file", made_by="torch.save(model.state_dict())")
    else:
        try:
            from safetensors.torch import load_file

            obj = load_file(str(path), device="cpu")
        except ImportError as e:
            raise ValueError(f"reading {path} needs the safetensors package: pip install safetensors") from e
        except Exception as e:  # re-raised with the file named
            raise ValueError(f"cannot read weights from {path}: {e}") from e
    for key in ("model", "state_dict", "net"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors")
    return dict(obj)


def load_backbone_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a ResNet state dict from ``path``: a plain state dict, or a checkpoint dict holding one
    under ``"model"``/``"state_dict"``/``"net"``. The ResNet may sit under any key prefix, such as
    ``module.`` or the ``encoder.`` of a SIPE checkpoint, whose other weights are then dropped."""
    sd = read_state_dict(path)
    # Find where a ResNet sits in the dict: at the top, or under a prefix such as "module." or the
    # "encoder." of a SIPE network (whose head weights are then left out). The shortest prefix wins.
    prefixes = sorted(
        (k[: -len("conv1.weight")] for k in sd if k.endswith("conv1.weight")),
        key=len,
    )
    for prefix in prefixes:
        if prefix + "layer1.0.conv1.weight" in sd and prefix + "bn1.weight" in sd:
            return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
    return sd


def resnet_pretrained_state(name: str, weights: str | os.PathLike | None) -> dict[str, torch.Tensor] | None:
    """The state dict (without ``fc.``) that ``weights`` names for ResNet ``name``, or ``None``.

    ``weights``: ``None`` (random initialisation), a torchvision weights name (``"IMAGENET1K_V1"``,
    ``"ResNet50_Weights.IMAGENET1K_V1"`` or ``"DEFAULT"``; downloaded or read from the torch hub
    cache) or a local file holding a ResNet state dict (see :func:`load_backbone_state_dict`).
    Raises instead of ever continuing with random weights.
    """
    import torch
    import torchvision

    check_resnet(name)
    if weights is None:
        return None
    text = str(weights)
    if Path(text).is_file():
        state = load_backbone_state_dict(text)
    elif os.sep in text or text.endswith((".pth", ".pt", ".bin", ".safetensors")):  # a path, not a name
        what = ("an existing state-dict file" if name in UNPUBLISHED_RESNETS
                else "the path of a downloaded torchvision checkpoint (e.g. resnet50-0676ba61.pth)")
        raise FileNotFoundError(f"weights file {text} does not exist; pass {what} or null for random initialisation")
    elif name in UNPUBLISHED_RESNETS:
        raise ValueError(
            f"weights {text!r} for {name}: torchvision publishes no weights for {name}; pass a local state-dict "
            f"file (e.g. the backbone.pth of a run's pretrain stage) or null for random initialisation"
        )
    else:
        enum_name = f"ResNet{RESNETS[name]}_Weights"
        enum = getattr(torchvision.models, enum_name)
        member = text.split(".", 1)[1] if text.startswith(enum_name + ".") else text
        if member not in enum.__members__ and member != "DEFAULT":
            raise ValueError(
                f"unknown weights {text!r} for {name} (unknown backbone weights are never replaced by random "
                f"ones): pass a local state-dict file, null, or one of {', '.join(enum.__members__)} ({enum_name})"
            )
        chosen = enum.DEFAULT if member == "DEFAULT" else enum[member]
        try:
            state = chosen.get_state_dict(progress=True, check_hash=True)
        except Exception as e:  # network or cache failures vary by platform; re-raised with the way out
            hub_dir = Path(torch.hub.get_dir()) / "checkpoints"
            raise InputError(
                f"could not fetch the pretrained weights {chosen} from {chosen.url} ({type(e).__name__}: {e}); "
                f"this machine may be offline, refusing to continue with random weights; {OFFLINE_WAYS} (for (1): "
                f"/path/to/{Path(chosen.url).name}, or that file in {hub_dir})"
            ) from e
    return {k: v for k, v in state.items() if not k.startswith("fc.")}


def load_resnet_weights(resnet: nn.Module, name: str, weights: str | os.PathLike | None) -> None:
    """Load ``weights`` (see :func:`resnet_pretrained_state`) into a torchvision ``resnet``, checking
    that every key but ``fc.*`` is there and nothing else; a no-op for ``None``."""
    state = resnet_pretrained_state(name, weights)
    if state is None:
        return
    own = {k for k in resnet.state_dict() if not k.startswith("fc.")}
    missing = sorted(own - state.keys())
    unexpected = sorted(state.keys() - own)
    if missing or unexpected:
        raise ValueError(
            f"backbone weights {weights} do not fit a torchvision {name}: {len(missing)} missing keys "
            f"(e.g. {missing[:3]}), {len(unexpected)} unexpected keys (e.g. {unexpected[:3]}); pass a "
            f"torchvision ResNet state dict of the same depth"
        )
    resnet.load_state_dict(state, strict=False)


def under_prefix(keys: Iterable[str], state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` re-rooted at the shortest key prefix under which every key of ``keys`` sits, such as
    ``module.`` (DDP) or ``encoder.body.`` (a SIPE checkpoint's backbone), its other entries dropped;
    ``state`` as it is when its keys already match at the top or no prefix holds them all."""
    keys = [k for k in keys if not k.endswith("num_batches_tracked")]
    if not keys or all(k in state for k in keys):
        return dict(state)
    first = keys[0]
    prefixes = sorted({k[: -len(first)] for k in state if k.endswith(first) and k != first}, key=len)
    for prefix in prefixes:
        if all(prefix + k in state for k in keys):
            return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    return dict(state)


def load_matching_weights(module: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> int:
    """Load ``state`` into ``module``: every key of ``module`` must be in it with the same shape (keys it
    does not have, such as a classifier's, are ignored). Raises ``ValueError`` with the count of
    matching keys when some are missing or mis-shaped; returns how many keys were loaded."""
    # Batch-norm step counters are bookkeeping, not weights: many published files leave them out.
    own = {k: v for k, v in module.state_dict().items() if not k.endswith("num_batches_tracked")}
    matched = {k: v for k, v in state.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
    if len(matched) < len(own):
        absent = [k for k in own if k not in state]
        shaped = [k for k in own if k in state and k not in matched]
        detail = ", ".join(x for x in (
            f"{len(absent)} missing (e.g. {absent[:3]})" if absent else "",
            f"{len(shaped)} of another shape (e.g. {shaped[:3]})" if shaped else "",
        ) if x)
        raise ValueError(
            f"{source} match {len(matched)} of the backbone's {len(own)} keys ({detail}); pass weights saved "
            "from this very architecture (never partly random weights)"
        )
    module.load_state_dict(matched, strict=False)
    return len(matched)
