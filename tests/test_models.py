"""Backbone adaptation, the generic head and official-checkpoint loading errors."""

from __future__ import annotations

import pytest
import torch

from helpers import TinyBackbone
from sipe.errors import InputError
from sipe.models import ResNetBackbone, SIPENet, build_sipe
from sipe.models.layers import FrozenBatchNorm2d
from sipe.models.official import from_official


def test_resnet_backbone_strides_and_frozen_parts():
    bb = ResNetBackbone(50)
    feats = bb(torch.zeros(1, 3, 64, 96))
    assert [f.shape[1:] for f in feats] == [(256, 16, 24), (512, 8, 12), (1024, 4, 6), (2048, 4, 6)]
    assert bb.out_channels == (256, 512, 1024, 2048)
    assert not any(p.requires_grad for m in (bb.conv1, bb.bn1, bb.layer1, bb.layer2) for p in m.parameters())
    assert all(p.requires_grad for p in bb.layer3.parameters())
    assert isinstance(bb.layer4[0].bn1, FrozenBatchNorm2d)


def test_frozen_bn_statistics_do_not_move_in_training():
    bb = ResNetBackbone(18).train()
    before = bb.layer3[0].bn1.running_mean.clone()
    bb(torch.randn(2, 3, 64, 64))
    assert torch.equal(before, bb.layer3[0].bn1.running_mean)


def test_pretrained_weights_unavailable_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ResNetBackbone(18, weights=tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="unknown weights"):
        ResNetBackbone(18, weights="IMAGENET_NOPE")


def test_unreachable_torchvision_weights_never_fall_back_to_random(monkeypatch):
    from torchvision.models import ResNet18_Weights

    def offline(self, *args, **kwargs):
        raise OSError("Name or service not known")

    monkeypatch.setattr(type(ResNet18_Weights.IMAGENET1K_V1), "get_state_dict", offline)
    with pytest.raises(InputError, match="resnet18-f37072fd.pth.*refusing to continue with random weights"):
        ResNetBackbone(18, weights="IMAGENET1K_V1")


def test_local_weights_file_is_loaded(tmp_path):
    from torchvision.models import resnet18

    ref = resnet18()
    torch.save(ref.state_dict(), tmp_path / "r18.pth")
    bb = ResNetBackbone(18, weights=tmp_path / "r18.pth")
    assert torch.equal(bb.layer4[1].conv2.weight, ref.layer4[1].conv2.weight)


def test_head_works_on_any_four_stage_backbone():
    model = SIPENet(TinyBackbone(), num_classes=4).train()
    vm = torch.ones(2, 4, 4, 4)
    out = model(torch.randn(2, 3, 64, 64), vm)
    assert out["score"].shape == (2, 3)
    assert out["cam"].shape == out["is_cam"].shape == out["seeds"].shape == (2, 4, 4, 4)
    assert out["prototypes"].shape == (2, 4, 768)
    assert torch.equal(out["seeds"].sum(1), torch.ones(2, 4, 4))


def test_from_official_accepts_bare_and_own_layout(official_state):
    bare = dict(official_state["net"])
    m1 = from_official(bare, num_classes=21)
    own = from_official(m1.state_dict(), num_classes=21)
    assert torch.equal(own.side4.weight, m1.side4.weight)


def test_from_official_errors(official_state):
    net = dict(official_state["net"])
    with pytest.raises(ValueError, match="pass num_classes=21"):
        from_official(net, num_classes=81)
    broken = {k: v for k, v in net.items() if "side2" not in k and k != "newly_added.2.weight"}
    with pytest.raises(ValueError, match="missing keys.*side2.weight"):
        from_official(broken, num_classes=21)
    extra = dict(net, **{"resnet50.fc.weight": torch.zeros(3)})
    with pytest.raises(ValueError, match="unexpected keys.*encoder.fc.weight"):
        from_official(extra, num_classes=21)
    bad_shape = dict(net)
    for k in ("side1.weight", "newly_added.1.weight"):
        bad_shape[k] = torch.zeros(64, 256, 1, 1)
    with pytest.raises(ValueError, match="mis-shaped.*side1.weight"):
        from_official(bad_shape, num_classes=21)
    inconsistent = dict(net, **{"newly_added.1.weight": net["side1.weight"] + 1})
    with pytest.raises(ValueError, match="alias"):
        from_official(inconsistent, num_classes=21)


def test_coco_sized_model_builds():
    m = build_sipe("resnet50", num_classes=81)
    assert m.classifier.weight.shape == (80, 2048, 1, 1)
    assert from_official({"net": m.state_dict()}, num_classes=81).num_classes == 81


def test_training_forward_is_finite_under_fp16_autocast():
    # Absent classes have zero prototypes: in fp16 the norm epsilon would round to 0 and give 0/0.
    model = SIPENet(TinyBackbone(), num_classes=4).train()
    vm = torch.ones(2, 4, 4, 4)
    vm[:, 2] = 0
    with torch.autocast("cpu", dtype=torch.float16):
        out = model(torch.randn(2, 3, 64, 64), vm)
    assert out["is_cam"].dtype == torch.float32
    assert all(torch.isfinite(out[k]).all() for k in ("score", "cam", "is_cam", "prototypes"))
