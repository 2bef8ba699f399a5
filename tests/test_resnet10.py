"""ResNet-10 (torchvision's ResNet class, one BasicBlock per stage): a registry name for every stage."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sipe.config import ConfigError, from_dict
from sipe.config.common import ModelConfig
from sipe.config.seg import SegModelConfig
from sipe.config.train import PretrainConfig
from sipe.models.dilated_resnet import build_dilated_resnet
from sipe.models.registry import BackboneError, build_backbone
from sipe.models.weights import RESNETS, resnet_pretrained_state, torchvision_resnet
from sipe.refine.train_irn import build_irn
from sipe.seg.deeplabv3 import build_deeplab

pytestmark = pytest.mark.usefixtures("one_thread")


def _convs(module: nn.Module) -> int:
    return sum(isinstance(m, nn.Conv2d) for m in module.modules())


def test_resnet10_is_one_basic_block_per_stage_with_resnet18_widths():
    r10, r18 = torchvision_resnet("resnet10"), torchvision_resnet("resnet18")
    assert [len(getattr(r10, f"layer{i}")) for i in range(1, 5)] == [1, 1, 1, 1]
    # stem + 2 convs per block + 3 downsample convs: 12 (ResNet-18: 20)
    assert (_convs(r10), _convs(r18)) == (12, 20)
    assert r10.fc.in_features == r18.fc.in_features == 512
    assert "resnet10" in RESNETS


def test_resnet10_backbone_irn_and_deeplab_shapes():
    backbone = build_backbone("resnet10")
    maps = backbone(torch.zeros(1, 3, 64, 80))
    assert backbone.out_channels == (64, 128, 256, 512)
    assert [tuple(m.shape[-2:]) for m in maps] == [(16, 20), (8, 10), (4, 5), (4, 5)]
    irn = build_irn("resnet10", weights=None)
    assert irn.resnet_stem
    edge, disp = irn(torch.zeros(2, 3, 64, 80))
    assert edge.shape == (2, 1, 16, 20) and disp.shape == (2, 2, 16, 20)
    deeplab = build_deeplab(3, "resnet10", output_stride=16).eval()
    with torch.no_grad():
        assert deeplab(torch.zeros(1, 3, 64, 80))["out"].shape == (1, 3, 64, 80)
    dilated = build_dilated_resnet("resnet10", output_stride=8)
    assert dilated.layer4[0].conv2.dilation == (4, 4) and dilated.layer3[0].conv1.stride == (1, 1)


def test_resnet10_weights_from_a_local_file_and_names_refused(tmp_path):
    state = {k: v for k, v in torchvision_resnet("resnet10").state_dict().items() if not k.startswith("fc.")}
    path = tmp_path / "r10.pth"
    torch.save(state, path)
    loaded = build_backbone("resnet10", weights=path)
    assert torch.equal(loaded.layer4[0].conv2.weight, state["layer4.0.conv2.weight"])
    with pytest.raises(ValueError, match="torchvision publishes no weights for resnet10; pass a local state-dict"):
        resnet_pretrained_state("resnet10", "IMAGENET1K_V1")
    with pytest.raises(FileNotFoundError, match="absent.pth does not exist"):
        resnet_pretrained_state("resnet10", str(tmp_path / "absent.pth"))
    # At config time, before anything is built: the same refusal, naming the key.
    for make, key in ((lambda w: ModelConfig(backbone="resnet10", weights=w), "model.weights"),
                      (lambda w: SegModelConfig(backbone="resnet10", weights=w), "model.weights")):
        with pytest.raises(ValueError, match=f"{key}=IMAGENET1K_V1: torchvision publishes no weights for resnet10"):
            make("IMAGENET1K_V1")
    # A ResNet-18 state dict does not fit: missing keys named, never a partial load.
    r18 = {k: v for k, v in torchvision_resnet("resnet18").state_dict().items() if not k.startswith("fc.")}
    torch.save(r18, tmp_path / "r18.pth")
    with pytest.raises(BackboneError, match="do not fit a torchvision resnet10"):
        build_backbone("resnet10", weights=tmp_path / "r18.pth")


def test_pretraining_config_takes_resnet10_and_refuses_other_bodies():
    cfg = from_dict(PretrainConfig, {"backbone": "resnet10"})
    net = torchvision_resnet(cfg.backbone, num_classes=4)
    assert net.fc.out_features == 4 and len(net.layer3) == 1
    with pytest.raises(ConfigError, match="pretrain.backbone='timm:resnet18': the classifier pretraining trains a"):
        from_dict(PretrainConfig, {"backbone": "timm:resnet18"})


def test_a_resnet10_sipe_state_dict_is_recognised():
    from sipe.models import build_sipe
    from sipe.models.official import backbone_name

    state = build_sipe("resnet10", num_classes=3, weights=None).state_dict()
    assert backbone_name(state) == "resnet10"
