"""IPE: hand-worked examples and equality with the paper's formulas written naively."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sipe.core import ipe, losses


def _hand_inputs():
    # Three positions in a row; positions 0 and 1 share a feature direction, position 2 is orthogonal.
    feats = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]).view(1, 2, 1, 3)
    cam = torch.tensor([[0.0, 0.5, 1.0], [1.0, 0.5, 0.0]]).view(1, 2, 1, 3)  # background, class 1
    return cam, feats


def test_structure_iou_by_hand():
    cam, feats = _hand_inputs()
    iou = ipe.structure_iou(cam, feats)
    # corr = [[1,1,0],[1,1,0],[0,0,1]] (up to the 1e-5 norm epsilon); see the IoU worked out in the docstring.
    expected = torch.tensor([[1 / 6, 1 / 6, 2 / 3], [0.75, 0.75, 0.0]]).view(1, 2, 1, 3)
    torch.testing.assert_close(iou, expected, atol=1e-4, rtol=0)


def test_seeds_prototypes_and_is_cam_by_hand():
    cam, feats = _hand_inputs()
    seeds, iou = ipe.structure_seeds(cam, feats, torch.ones(1, 2, 1, 1))
    assert torch.equal(seeds, torch.tensor([[0.0, 0.0, 1.0], [1.0, 1.0, 0.0]]).view(1, 2, 1, 3))
    torch.testing.assert_close(iou[0, 0, 0], torch.tensor([1 / 12, 1 / 12, 1 / 3]), atol=1e-4, rtol=0)
    protos = ipe.prototypes(seeds, feats)
    # mean over all three positions of seed x feature
    torch.testing.assert_close(protos[0], torch.tensor([[0.0, 1 / 3], [2 / 3, 0.0]]))
    torch.testing.assert_close(ipe.is_cam(protos, feats)[0, :, 0], torch.tensor([[0.0, 0.0, 1.0], [1.0, 1.0, 0.0]]))


def test_background_halving_changes_the_seed(monkeypatch):
    # Background IoU 0.4 beats class 1 (0.3) only until the background is halved.
    iou = torch.tensor([0.4, 0.3]).view(1, 2, 1, 1)
    monkeypatch.setattr(ipe, "structure_iou", lambda *a, **k: iou.clone())
    cam, feats, ones = torch.zeros(1, 2, 1, 1), torch.ones(1, 4, 1, 1), torch.ones(1, 2, 1, 1)
    assert ipe.structure_seeds(cam, feats, ones)[0][0, :, 0, 0].tolist() == [0.0, 1.0]
    assert ipe.structure_seeds(cam, feats, ones, bg_scale=1.0)[0][0, :, 0, 0].tolist() == [1.0, 0.0]


def test_label_mask_removes_absent_classes():
    cam, feats = _hand_inputs()
    seeds, _ = ipe.structure_seeds(cam, feats, torch.tensor([1.0, 0.0]).view(1, 2, 1, 1))
    assert seeds[0, 1].sum() == 0
    assert ipe.is_cam(ipe.prototypes(seeds, feats), feats)[0, 1].abs().sum() == 0


def naive_sipe(norm_cam, struct, hie, mask):
    """The official formulas, materialising (N, K, P, P) and (N, K, C, h, w)."""
    n, k, h, w = norm_cam.shape
    fs = struct.reshape(n, -1, h * w)
    fs = fs / (fs.norm(dim=1, keepdim=True) + 1e-5)
    corr = F.relu(fs.transpose(2, 1) @ fs).unsqueeze(1)  # (n,1,P,P)
    camf = norm_cam.reshape(n, -1, h * w).unsqueeze(2)  # (n,K,1,P)
    inter = (corr * camf).sum(-1)
    union = corr.sum(-1) + camf.sum(-1) - inter
    miou = (inter / union).view(n, k, h, w)
    miou[:, 0] = miou[:, 0] * 0.5
    seeds = F.one_hot(miou.argmax(1), k).permute(0, 3, 1, 2).float() * mask
    crop = seeds.unsqueeze(2) * hie.unsqueeze(1)  # (n,K,C,h,w)
    protos = crop.mean(dim=(3, 4))
    is_cam = F.relu(torch.cosine_similarity(hie.unsqueeze(1), protos[..., None, None], dim=2))
    return miou, seeds, protos, is_cam


@pytest.mark.parametrize("block", [1024, 10, 7])
def test_efficient_equals_naive_on_random_inputs(block):
    g = torch.Generator().manual_seed(0)
    n, k, h, w = 2, 6, 7, 9
    norm_cam = ipe.normalize_cam(torch.randn(n, k - 1, h, w, generator=g))
    struct = torch.randn(n, 32, h, w, generator=g)
    hie = torch.randn(n, 24, h, w, generator=g, requires_grad=True)
    mask = (torch.rand(n, k, 1, 1, generator=g) > 0.4).float()
    mask[:, 0] = 1
    miou, seeds_ref, protos_ref, is_cam_ref = naive_sipe(norm_cam, struct, hie, mask)
    seeds, iou = ipe.structure_seeds(norm_cam, struct, mask, block=block)
    torch.testing.assert_close(iou, miou, atol=1e-5, rtol=1e-5)
    assert torch.equal(seeds, seeds_ref)
    protos = ipe.prototypes(seeds, hie)
    out = ipe.is_cam(protos, hie)
    torch.testing.assert_close(protos, protos_ref, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(out, is_cam_ref, atol=1e-5, rtol=1e-5)
    # Same gradients through prototypes and IS-CAM into the features (what the GSC loss trains).
    (g_ref,) = torch.autograd.grad(losses.gsc_loss(norm_cam, is_cam_ref), hie)
    (g_new,) = torch.autograd.grad(losses.gsc_loss(norm_cam, out), hie)
    torch.testing.assert_close(g_new, g_ref, atol=1e-6, rtol=1e-4)


def test_normalize_cam_background_is_one_minus_max():
    raw = torch.tensor([[[[2.0, -1.0]], [[1.0, 0.5]]]])  # (1, 2, 1, 2)
    cam = ipe.normalize_cam(raw)
    assert cam.shape == (1, 3, 1, 2)
    torch.testing.assert_close(cam[0, 1:, 0], torch.tensor([[2 / 2.00001, 0.0], [1 / 1.00001, 0.5 / 1.00001]]))
    torch.testing.assert_close(cam[0, 0, 0], 1 - cam[0, 1:, 0].amax(0))


def test_lowres_valid_mask():
    valid = torch.ones(1, 32, 48)
    valid[:, :, 32:] = 0
    mask = ipe.lowres_valid_mask(valid, torch.tensor([[0.0, 1.0]]), stride=16)
    assert mask.shape == (1, 3, 2, 3)
    assert mask[0, 0].tolist() == [[1, 1, 0], [1, 1, 0]]
    assert mask[0, 1].sum() == 0 and torch.equal(mask[0, 2], mask[0, 0])
