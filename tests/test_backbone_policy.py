"""The generic training policy reproduces the ResNet path of before the backbone registry bit for bit."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from test_train import CLASSES, _write_voc


def train_three_steps(tmp: Path, extra: tuple[str, ...] = ()) -> tuple[list[float], str]:
    """``sipe train`` with the default model policy on 12 fixed tiny images, batch 4, one thread:
    the three step losses (float32 TensorBoard scalars) and a hash of the final weights."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from sipe.cli import main

    split = _write_voc(tmp / "voc", 12, seed=3)
    run = tmp / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # summation order fixed: the recorded values are exact
    try:
        assert main([
            "train", "--out", str(run), f"data.root={tmp / 'voc'}", f"data.split={split}", "data.val_split=null",
            f"data.class_names=[{', '.join(CLASSES)}]", "model.backbone=resnet18", "model.weights=null",
            "aug.resize_long=[48, 80]", "aug.crop_size=64", "engine.batch_size=4", "engine.epochs=1",
            "engine.num_workers=0", "engine.progress=false", "engine.device=cpu", "engine.log_every=1", *extra,
        ]) == 0  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    acc = EventAccumulator(str(run / "tb"))
    acc.Reload()
    losses = [float(e.value) for e in acc.Scalars("train/loss")]
    state = torch.load(run / "checkpoints" / "final.pt", weights_only=False)["model"]
    digest = hashlib.sha256()
    for k in sorted(state):
        digest.update(k.encode())
        digest.update(np.ascontiguousarray(state[k].numpy()).tobytes())
    return losses, digest.hexdigest()


# Recorded on the code before the backbone registry (commit fe96b7f), AMD EPYC, torch 2.14.1, one thread.
BEFORE_LOSSES = [0.958697497844696, 1.7927483320236206, 1.14577054977417]
BEFORE_WEIGHTS = "edbc7f81bb08290ff10ebbd87cfe39b3a13f4c49cc1eb8379d608a819da3c375"


def test_default_policy_trains_a_resnet_bit_identically_to_before(tmp_path):
    losses, digest = train_three_steps(tmp_path)
    assert losses == BEFORE_LOSSES  # exact: the same arithmetic, not merely close
    assert digest == BEFORE_WEIGHTS


def test_policy_switches_change_what_trains(tmp_path):
    from sipe.models import build_sipe

    def trainable(**kw) -> int:
        model = build_sipe("resnet18", 3, **kw)
        return sum(p.numel() for p in model.param_groups()[0])

    assert trainable(frozen_stages=0) > trainable() > trainable(frozen_stages=4)
    # the generic policy on timm's ResNet-18 freezes exactly the parameters the official one does
    pytest.importorskip("timm")
    timm_model = build_sipe("timm:resnet18", 3)
    assert sum(p.numel() for p in timm_model.param_groups()[0]) == trainable()
    assert not timm_model.encoder.body.layer2[0].conv1.weight.requires_grad
    assert timm_model.encoder.body.layer3[0].conv1.weight.requires_grad
    timm_model.train()
    assert not timm_model.encoder.body.bn1.training and not timm_model.encoder.body.layer4[0].bn1.training
    assert build_sipe("timm:resnet18", 3, freeze_bn=False).train().encoder.body.layer4[0].bn1.training
