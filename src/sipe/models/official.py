"""The authors' released SIPE checkpoints: their key layout mapped onto this package's.

Official checkpoints (``final.pth`` = ``{"net": state_dict}``) register every tensor under several
names because the official ``Net`` keeps the same modules in ``resnet50.*``, ``stage0..4.*``,
``backbone.*`` and ``newly_added.*``. They are mapped here onto one canonical name each.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from sipe.core.sipe_net import SIPENet
from sipe.models import build_sipe

_ALIAS_RULES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"^backbone\.(\d)\.(.*)$"), r"stage\1.\2"),
    (re.compile(r"^newly_added\.0\.(.*)$"), r"classifier.\1"),
    (re.compile(r"^newly_added\.([1-4])\.(.*)$"), r"side\1.\2"),
    (re.compile(r"^stage0\.0\.(.*)$"), r"resnet50.conv1.\1"),
    (re.compile(r"^stage0\.1\.(.*)$"), r"resnet50.bn1.\1"),
    (re.compile(r"^stage([1-4])\.0\.(.*)$"), r"resnet50.layer\1.\2"),
]


def canonical_key(key: str) -> str:
    """Map an official alias key (``stage*``, ``backbone.*``, ``newly_added.*``) to ``resnet50.*`` etc."""
    changed = True
    while changed:
        changed = False
        for pattern, repl in _ALIAS_RULES:
            new = pattern.sub(repl, key)
            if new != key:
                key, changed = new, True
                break
    return key


def official_to_sipe(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official key layout -> this package's (``resnet50.*`` -> ``encoder.*``); aliases checked and merged."""
    if "net" in state_dict and isinstance(state_dict["net"], Mapping):
        state_dict = state_dict["net"]
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        if key.startswith("module."):  # saved from DataParallel
            key = key[len("module."):]
        canon = canonical_key(key)
        if canon.startswith("resnet50."):
            canon = "encoder." + canon[len("resnet50."):]
        if canon in out:
            if out[canon].shape != tensor.shape or not torch.equal(out[canon], tensor):
                raise ValueError(
                    f"checkpoint is inconsistent: {key!r} is an alias of {canon!r} but holds a different tensor"
                )
            continue
        out[canon] = tensor
    return out


def backbone_name(state: Mapping[str, torch.Tensor]) -> str:
    """The torchvision ResNet a canonical SIPE state dict was built on (``resnet10`` ... ``resnet101``)."""
    blocks = {int(m.group(1)) for k in state if (m := re.match(r"encoder\.layer3\.(\d+)\.", k))}
    if not blocks:
        raise ValueError("checkpoint has no encoder.layer3.* / resnet50.layer3.* weights: not a SIPE ResNet checkpoint")
    bottleneck = "encoder.layer3.0.conv3.weight" in state
    depths = {(1, False): 10, (2, False): 18, (6, False): 34, (6, True): 50, (23, True): 101}
    depth = depths.get((max(blocks) + 1, bottleneck))
    if depth is None:
        raise ValueError(
            f"checkpoint's layer3 has {max(blocks) + 1} {'bottleneck' if bottleneck else 'basic'} blocks; "
            "expected a ResNet-10/18/34/50/101"
        )
    return f"resnet{depth}"


def load_into(model: SIPENet, state: Mapping[str, torch.Tensor]) -> SIPENet:
    """Load a canonical state dict strictly, with errors that list what is missing or mis-shaped."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and state[k].shape != own[k].shape]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys (e.g. {missing[:5]})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[:5]})")
    if shapes:
        problems.append("mis-shaped tensors: " + "; ".join(shapes[:5]))
    if problems:
        raise ValueError("checkpoint does not fit the SIPE model: " + ", ".join(problems))
    model.load_state_dict(state, strict=True)
    return model


def from_official(state_dict: Mapping[str, torch.Tensor], num_classes: int) -> SIPENet:
    """Build a SIPE model from an official checkpoint (``{"net": ...}`` or bare, alias keys allowed).

    ``num_classes`` counts the background (21 for VOC, 81 for COCO). No download happens.
    """
    state = official_to_sipe(state_dict)
    cls = state.get("classifier.weight")
    if cls is None:
        raise ValueError("checkpoint has no classifier.weight (newly_added.0.weight): not a SIPE checkpoint")
    if cls.shape[0] != num_classes - 1:
        raise ValueError(
            f"checkpoint classifier has {cls.shape[0]} foreground classes but num_classes={num_classes} "
            f"asks for {num_classes - 1}; pass num_classes={cls.shape[0] + 1}"
        )
    model = build_sipe(backbone_name(state), num_classes=num_classes, weights=None)
    return load_into(model, state)
