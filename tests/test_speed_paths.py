"""The fast inference paths (folded batch norm, channels-last, bf16 autocast) against the plain one."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from helpers import TinyBackbone
from sipe.cams.multiscale import model_memory_format, multiscale_is_cam, prepare_for_inference
from sipe.core import ipe
from sipe.models import ResNetBackbone, SIPENet, build_sipe
from sipe.models.layers import FrozenBatchNorm2d
from sipe.models.official import from_official


def _randomise_bn(module: nn.Module, seed: int = 0) -> None:
    # Fresh batch norms are the identity map; give them statistics so that folding has work to do.
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, FrozenBatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5, generator=g)
            m.running_var.uniform_(0.5, 2.0, generator=g)
            m.weight.data.uniform_(0.5, 1.5, generator=g)
            m.bias.data.uniform_(-0.2, 0.2, generator=g)


@pytest.mark.parametrize("depth", [18, 50])
def test_folded_backbone_equals_the_original(depth):
    torch.manual_seed(0)
    bb = ResNetBackbone(depth).eval()
    _randomise_bn(bb)
    x = torch.randn(1, 3, 64, 80)
    with torch.no_grad():
        ref = bb(x)
        bb.fold_bn()
        out = bb(x)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in bb.modules())
    assert bb.conv1.bias is not None and bb.layer2[0].downsample[0].bias is not None
    for a, b in zip(out, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * b.abs().max().item())
    assert bb.fold_bn() is bb  # folding twice is a no-op
    with torch.autocast("cpu", torch.bfloat16), torch.no_grad():  # autocast is honoured, not bypassed
        assert bb(x)[3].dtype == torch.bfloat16
    if bb.cpu_fused:  # the fused oneDNN path and the module-by-module path give the same maps
        bb.cpu_fused = False
        with torch.no_grad():
            unfused = bb(x)
        for a, b in zip(out, unfused, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * b.abs().max().item())


def test_folding_refuses_live_batch_norm():
    bb = ResNetBackbone(18, freeze_bn=False)
    with pytest.raises(ValueError, match="only batch norm with frozen statistics"):
        bb.fold_bn()


def test_prepared_model_is_a_copy_and_cannot_train():
    model = build_sipe("resnet18", num_classes=4)
    fast = prepare_for_inference(model)
    assert fast is not model
    assert model_memory_format(fast) == torch.channels_last
    assert model_memory_format(model) == torch.contiguous_format
    assert isinstance(model.encoder.bn1, FrozenBatchNorm2d) and isinstance(fast.encoder.bn1, nn.Identity)
    assert not any(p.requires_grad for p in fast.parameters())
    fast.train()
    with pytest.raises(RuntimeError, match="prepared for inference"):
        fast(torch.zeros(1, 3, 64, 64), torch.ones(1, 4, 4, 4))


def test_fold_request_on_a_backbone_without_folding_is_an_error():
    model = SIPENet(TinyBackbone(), num_classes=3)
    with pytest.raises(ValueError, match="has no fold_bn"):
        prepare_for_inference(model, fold_bn=True)
    fast = prepare_for_inference(model)  # default: fold where supported
    assert model_memory_format(fast) == torch.channels_last


def test_backbone_structure_at_inference_fuses_the_flip():
    torch.manual_seed(0)
    model = SIPENet(TinyBackbone(), num_classes=3, infer_structure="backbone").eval()
    x = torch.randn(1, 3, 64, 64)
    pair = torch.cat([x, x.flip(-1)])
    labels = torch.tensor([1.0, 0.0])
    cam, is_cam = model.infer(pair, labels)
    with torch.no_grad():
        f = model.features(pair)
        fuse = lambda t: t[:1] + t[1:].flip(-1)  # noqa: E731
        ref_cam = ipe.normalize_cam(fuse(f.raw_cam))
        seeds, _ = ipe.structure_seeds(ref_cam, fuse(f.last), torch.tensor([1.0, 1.0, 0.0]).view(1, 3, 1, 1))
        ref = ipe.is_cam(ipe.prototypes(seeds, fuse(f.hie)), fuse(f.hie))
    torch.testing.assert_close(is_cam, ref[0])
    torch.testing.assert_close(cam, ref_cam[0])
    with pytest.raises(ValueError, match="infer_structure"):
        SIPENet(TinyBackbone(), num_classes=3, infer_structure="last")


@pytest.fixture(scope="module")
def parity_model(official_state):
    return from_official(official_state, num_classes=21).eval()


def test_fast_fp32_path_matches_the_official_maps(parity_model, reference):
    """Channels-last + folded batch norm reproduces the official multi-scale IS-CAM within 1e-4."""
    fast = prepare_for_inference(parity_model)
    keys, maps = multiscale_is_cam(fast, reference["infer/img_u8"], reference["infer/label"])
    _, plain = multiscale_is_cam(parity_model, reference["infer/img_u8"], reference["infer/label"])
    assert np.array_equal(keys, reference["infer/keys"])
    np.testing.assert_allclose(maps, reference["infer/IS_CAM"], atol=1e-4, rtol=0)
    np.testing.assert_allclose(maps, plain, atol=1e-4, rtol=0)


def test_bf16_path_agrees_with_fp32(parity_model, reference):
    fast = prepare_for_inference(parity_model)
    image, labels = reference["infer/img_u8"], reference["infer/label"]
    _, ref = multiscale_is_cam(fast, image, labels)
    keys, low = multiscale_is_cam(fast, image, labels, autocast_dtype=torch.bfloat16)
    assert low.dtype == np.float32 and low.shape == ref.shape
    # The maps are not degenerate (several classes win pixels), so the agreement means something.
    assert len(np.unique(ref.argmax(0))) >= 2
    agreement = (low.argmax(0) == ref.argmax(0)).mean()
    assert agreement >= 0.98, agreement  # 99.8% here
    assert np.abs(low - ref).max() < 0.02  # 1e-4 here
