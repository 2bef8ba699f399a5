"""DeepLab, IRN and ONNX export on every registry backbone (timm and a user's module:function)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from sipe.cli import main
from sipe.config import ConfigError, from_dict
from sipe.models.registry import BackboneError
from sipe.refine.train_irn import build_irn, load_irn
from sipe.seg.backbones import RegistryBody
from sipe.seg.deeplabv3 import build_deeplab
from sipe.seg.model import load_seg_checkpoint
from sipe.seg.train import SegTrainConfig, prepare_model
from test_backbones import BACKBONES

timm = pytest.importorskip("timm")

pytestmark = pytest.mark.usefixtures("one_thread")

USER = "sipe_user_net:tiny"
# A narrow timm ResNet-18: an option that changes the weights' shapes, so a rebuild that forgot it fails.
NARROW = {"channels": [16, 32, 64, 128]}


# ----------------------------------------------------------------------------- networks


@pytest.mark.parametrize("name", BACKBONES)
def test_deeplab_and_irn_shapes_on_every_backbone(name, user_module):
    torch.manual_seed(0)
    model = build_deeplab(3, name, aux=True, output_stride=16)
    assert isinstance(model.backbone, RegistryBody)
    # DeepLab fine-tunes the whole backbone with live batch norm, as on the torchvision ResNet.
    assert all(p.requires_grad for p in model.parameters())
    model.train()
    assert all(m.training for m in model.backbone.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))
    x = torch.randn(2, 3, 64, 80)
    with torch.no_grad():
        feats = model.backbone(x)
        out = model.eval()(x)
    c = model.backbone.out_channels
    assert feats["out"].shape == (2, c[3], 4, 5) and feats["aux"].shape == (2, c[2], 4, 5)
    assert out["out"].shape == (2, 3, 64, 80) and out["aux"].shape == (2, 3, 64, 80)

    irn = build_irn(name, weights=None)
    assert not irn.resnet_stem and not any(p.requires_grad for p in irn.backbone.parameters())
    assert irn.edge1[0].in_channels == irn.edge2[0].in_channels == c[0]  # the first map stands in for the stem
    irn.train()
    assert not irn.backbone.training
    edge, disp = irn(x)
    assert edge.shape == (2, 1, 16, 20) and disp.shape == (2, 2, 16, 20)
    trainable = {id(p) for p in irn.parameters() if p.requires_grad}
    assert trainable == {id(p) for g in irn.param_groups() for p in g["params"]}


@pytest.mark.parametrize("name", [n for n in BACKBONES if n.startswith("timm:")])
def test_timm_deeplab_at_output_stride_8_and_deeplabv2(name):
    from sipe.seg.deeplabv2 import DeepLabV2, build_deeplabv2

    model = build_deeplab(3, name, aux=True, output_stride=8).eval()
    assert model.classifier[0].convs[1][0].dilation == (12, 12)  # rates (12, 24, 36) at 8, as the ResNet
    x = torch.randn(1, 3, 64, 80)
    with torch.no_grad():
        assert model.backbone(x)["out"].shape[-2:] == (8, 10)
        assert model(x)["out"].shape == (1, 3, 64, 80)
        v2 = build_deeplabv2(3, name).eval()
        assert isinstance(v2, DeepLabV2) and v2.backbone(x)["out"].shape[-2:] == (8, 10)
        assert v2(x)["out"].shape == (1, 3, 64, 80)


def test_output_stride_8_and_deeplabv2_on_a_user_backbone_are_refused_clearly(user_module, synthetic, tmp_path,
                                                                               capsys):
    with pytest.raises(ConfigError, match="set output_stride: 16"):
        from_dict(SegTrainConfig, {"model": {"backbone": USER, "output_stride": 8}})
    with pytest.raises(ConfigError, match="use arch: deeplabv3"):
        from_dict(SegTrainConfig, {"model": {"backbone": USER, "arch": "deeplabv2", "output_stride": 8}})
    with pytest.raises(ConfigError, match="resnet18 takes none"):
        from_dict(SegTrainConfig, {"model": {"backbone": "resnet18", "backbone_options": {"a": 1}}})
    with pytest.raises(BackboneError, match="output_stride: 16"):
        build_deeplab(3, USER, output_stride=8)
    assert main(["seg", "train", "--out", str(tmp_path / "run"), f"pseudo_labels={synthetic}",
                 f"model.backbone={USER}", "model.output_stride=8"]) == 2
    err = capsys.readouterr().err
    assert "set output_stride: 16" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_frozen_and_synchronised_batchnorm_keep_timm_layers():
    from timm.layers import BatchNormAct2d, SyncBatchNormAct

    # EfficientNet's batch norms are timm's BatchNormAct2d, which carry the activation.
    cfg = from_dict(SegTrainConfig, {"model": {"backbone": "timm:efficientnet_b0", "weights": None, "freeze_bn": True},
                                     "engine": {"batch_size": 2}})
    model = prepare_model(cfg, 3, world_size=1, device=torch.device("cpu"))
    bns = [m for m in model.backbone.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert bns and all(isinstance(m, BatchNormAct2d) for m in bns)  # the activation stays inside
    assert not any(p.requires_grad for m in bns for p in m.parameters())
    before = bns[0].running_mean.clone()
    model.train()
    assert not any(m.training for m in bns) and model.classifier.training
    model(torch.randn(2, 3, 64, 64))
    assert torch.equal(bns[0].running_mean, before)

    cfg.model.freeze_bn = False
    synced = prepare_model(cfg, 3, world_size=2, device=torch.device("cuda", 0))  # conversion only, no CUDA
    assert any(isinstance(m, SyncBatchNormAct) for m in synced.backbone.modules())
    assert not any(type(m) is nn.SyncBatchNorm for m in synced.backbone.modules())


def test_old_checkpoints_without_backbone_options_still_load(tmp_path):
    from helpers import save_seg_checkpoint, tiny_seg_model
    from sipe.models.checkpoint import write_checkpoint

    model, spec = tiny_seg_model(["background", "a"])
    ckpt = save_seg_checkpoint(model, spec, tmp_path / "seg.pt")
    saved = torch.load(ckpt, weights_only=False)
    del saved["meta"]["model_spec"]["backbone_options"]
    torch.save(saved, ckpt)
    assert load_seg_checkpoint(ckpt)[1].backbone_options is None

    irn = build_irn("resnet18")
    write_checkpoint(tmp_path / "irn.pt", irn.state_dict(), {"kind": "irn", "backbone": "resnet18", "radius": 5})
    assert load_irn(tmp_path / "irn.pt").resnet_stem


# ----------------------------------------------------------------------------- command line


def _seg_train(run: Path, synthetic: Path, name: str, *extra: str) -> Path:
    assert main([
        "seg", "train", "--out", str(run), f"pseudo_labels={synthetic / 'SegmentationClass'}", "data.kind=synthetic",
        f"data.root={synthetic}", "data.split=train", f"model.backbone={name}", "model.weights=null",
        "aug.crop_size=64", "engine.batch_size=2", "engine.epochs=1", "engine.min_steps=null", "engine.num_workers=0",
        "engine.progress=false", "engine.device=cpu", *extra,
    ]) == 0  # fmt: skip
    return run / "checkpoints" / "final.pt"


# 0.3-2 s each on 2 cores (64 px images): seg train (2 steps), ONNX export, predict
@pytest.mark.parametrize("name", BACKBONES)
def test_seg_train_then_export_and_predict_from_the_checkpoint_alone(name, user_module, synthetic, tmp_path,
                                                                     capsys):
    ort = pytest.importorskip("onnxruntime")
    from sipe.seg.export import NormalizedSegModel

    options = ["model.backbone_options={channels: [16, 32, 64, 128]}"] if name == "timm:resnet18" else []
    ckpt = _seg_train(tmp_path / "run", synthetic, name, "model.aux=true", *options)
    saved = torch.load(ckpt, weights_only=False)
    assert saved["step"] == 2  # 4 images, batch 2
    spec = saved["meta"]["model_spec"]
    assert spec["backbone"] == name and spec["backbone_options"] == (NARROW if options else {})

    onnx_path = tmp_path / "seg.onnx"
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(onnx_path), "--no-flip"]) == 0  # the file alone
    assert f"backbone {name}" in capsys.readouterr().out
    model, _ = load_seg_checkpoint(ckpt)
    assert all(torch.equal(v, saved["model"][k]) for k, v in model.state_dict().items())
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    for shape in ((1, 3, 64, 64), (2, 3, 48, 80)):
        x = (rng.random(shape) * 255).astype(np.float32)
        (ours,) = session.run(["logits"], {"image": x})
        with torch.no_grad():
            ref = NormalizedSegModel(model).eval()(torch.from_numpy(x)).numpy()
        assert ours.shape == (shape[0], 5, *shape[2:])
        assert np.abs(ref).max() > 0.1  # logits of real size, so 1e-4 is a real tolerance
        np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)

    image = next((synthetic / "JPEGImages").glob("*.jpg"))
    pred = tmp_path / "pred"
    assert main(["predict", str(image), "--checkpoint", str(ckpt), "--out", str(pred), "--no-overlay",
                 "--device", "cpu"]) == 0
    assert (pred / f"{image.stem}.png").is_file()
    capsys.readouterr()


def test_train_irn_on_a_timm_backbone_rebuilds_from_its_checkpoint(synthetic, tmp_path, capsys):
    out = tmp_path / "irn"
    assert main(["refine", "train-irn", "--dataset", "synthetic", "--root", str(synthetic), "--split", "train",
                 "--label-dir", str(synthetic / "SegmentationClass"), "--out", str(out), "backbone=timm:resnet18",
                 "backbone_options={channels: [16, 32, 64, 128]}", "weights=null", "crop_size=64", "radius=5",
                 "mean_batch_size=2", "displacement=true", "engine.batch_size=2", "engine.epochs=1",
                 "engine.num_workers=0", "engine.device=cpu", "engine.progress=false"]) == 0
    capsys.readouterr()
    assert torch.load(out / "checkpoints" / "final.pt", weights_only=False)["step"] == 2  # 4 images, batch 2
    saved = torch.load(out / "irn.pt", weights_only=False)
    assert saved["meta"]["backbone"] == "timm:resnet18" and saved["meta"]["backbone_options"] == NARROW
    model = load_irn(out / "irn.pt")
    assert model.backbone.out_channels == tuple(NARROW["channels"])
    assert all(torch.equal(v, saved["model"][k]) for k, v in model.state_dict().items())
    assert model.mean_shift.abs().sum() > 0  # estimated after training and stored
    edge, disp = model.eval()(torch.randn(1, 3, 64, 64))
    assert edge.shape == (1, 1, 16, 16) and disp.shape == (1, 2, 16, 16)


@pytest.mark.parametrize("name", ["timm:convnext_atto", USER])
def test_a_sipe_checkpoint_initialises_the_deeplab_and_irn_backbone(name, user_module, tmp_path):
    """As for a ResNet, a SIPE checkpoint's backbone (under ``encoder.body.``) is a weights file for
    the later stages; so is a DDP-saved state dict (``module.``)."""
    from sipe.models import build_sipe
    from sipe.models.checkpoint import write_checkpoint
    from sipe.models.weights import under_prefix

    torch.manual_seed(1)
    sipe = build_sipe(name, 3)
    ckpt = tmp_path / "sipe.pt"
    write_checkpoint(ckpt, sipe.state_dict(), {"backbone": name})
    torch.manual_seed(2)  # another random start: only loading can make the weights equal
    deeplab = build_deeplab(3, name, weights_backbone=ckpt, output_stride=16)
    irn = build_irn(name, ckpt)
    want = sipe.encoder.body.state_dict()
    for body in (deeplab.backbone.net.body, irn.backbone.body):
        got = body.state_dict()
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    ddp = {f"module.{k}": v for k, v in want.items()}
    assert under_prefix(want, ddp).keys() == want.keys()
    assert under_prefix(want, {"x.y": torch.zeros(1)}) == {"x.y": torch.zeros(1)}  # no prefix holds them: as is
