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


def cpu_numerics() -> str:
    """What picks the float kernels on this CPU: ATen's vector ISA plus the oneDNN-relevant extensions."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        flags = ""
    extras = sorted(f for f in ("avx512_bf16", "avx512_fp16", "amx_bf16") if f" {f}" in flags)
    return "+".join([torch.backends.cpu.get_cpu_capability(), *extras])


# Recorded with the code before the backbone registry (commit fe96b7f), torch 2.14.1, one thread, per
# CPU kind: kernels differ with the instruction set, so the last bits do too (README, Reproducibility).
# The current code gave the same values on both machines. To add a CPU: check out fe96b7f, run
# train_three_steps() with it on that CPU, and add the row under cpu_numerics()'s value.
BEFORE = {
    "AVX2": (  # AMD EPYC, AVX2 + FMA
        [0.958697497844696, 1.7927483320236206, 1.14577054977417],
        "edbc7f81bb08290ff10ebbd87cfe39b3a13f4c49cc1eb8379d608a819da3c375",
    ),
    "AVX512+amx_bf16+avx512_bf16+avx512_fp16": (  # Intel Xeon with AMX
        [0.9586976170539856, 1.7927442789077759, 1.1457691192626953],
        "d54b3e6bae4fcb69cf3960ffdf6e65d57c052fd16fdd3bf4f247b26d64468e04",
    ),
}


def test_default_policy_trains_a_resnet_bit_identically_to_before(tmp_path):
    kind = cpu_numerics()
    if kind not in BEFORE:
        pytest.skip(f"no recording of the pre-registry code for CPU kind {kind!r} (see BEFORE to add one)")
    losses, digest = train_three_steps(tmp_path)
    assert losses == BEFORE[kind][0]  # exact: the same arithmetic, not merely close
    assert digest == BEFORE[kind][1]


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
