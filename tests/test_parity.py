"""Parity with the official SIPE code on fixed weights and inputs (tests/data/parity/README.md)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from sipe.cams.multiscale import multiscale_is_cam, scale_batch
from sipe.core import losses
from sipe.models.official import from_official

ATOL = 1e-4
# SIPE_TEST_DEVICE=cuda runs these on a GPU (benchmarks/gpu_check.sh); CPU by default.
DEVICE = torch.device(os.environ.get("SIPE_TEST_DEVICE", "cpu"))
if DEVICE.type == "cuda":  # TF32 would cost ~1e-3 and flip seeds
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False


@pytest.fixture(scope="module")
def model(official_state):
    torch.manual_seed(0)
    return from_official(official_state, num_classes=21).to(DEVICE)


@pytest.fixture(scope="module")
def train_step(model, reference):
    model.train()
    model.zero_grad(set_to_none=True)
    img = torch.from_numpy(reference["train/img"]).to(DEVICE)
    vm = torch.from_numpy(reference["train/valid_mask_lowres"]).to(DEVICE)
    out = model(img, vm)
    label = torch.from_numpy(reference["train/label"]).to(DEVICE)
    l_cls = losses.classification_loss(out["score"], label)
    l_gsc = losses.gsc_loss(out["cam"], out["is_cam"])
    (l_cls + l_gsc).backward()
    return out, l_cls, l_gsc


def _close(a: torch.Tensor, b: np.ndarray, atol: float = ATOL) -> None:
    a = a.detach().cpu().numpy().reshape(b.shape)
    np.testing.assert_allclose(a, b, atol=atol, rtol=0)


@pytest.mark.parametrize("key", ["score", "cam", "is_cam", "probs", "prototypes"])
def test_training_forward_matches(train_step, reference, key):
    out, _, _ = train_step
    _close(out[key], reference[f"train/{key}"])


def test_seeds_identical(train_step, reference):
    out, _, _ = train_step
    assert np.array_equal(out["seeds"].cpu().numpy(), reference["train/seeds"])


def test_losses_match(train_step, reference):
    _, l_cls, l_gsc = train_step
    assert abs(l_cls.item() - reference["train/loss_cls"]) < ATOL
    assert abs(l_gsc.item() - reference["train/loss_gsc"]) < ATOL


def _official_name(name: str) -> str:
    return "resnet50." + name[len("encoder."):] if name.startswith("encoder.") else name


def test_gradients_match(train_step, model, reference):
    params = {_official_name(n): p for n, p in model.named_parameters()}
    names = [k[len("train/gradnorm/"):] for k in reference if k.startswith("train/gradnorm/")]
    assert len(names) == 9
    for name in names:
        grad = params[name].grad
        assert grad is not None, name
        ref_norm = float(reference[f"train/gradnorm/{name}"])
        assert abs(grad.norm().item() - ref_norm) <= 1e-3 * ref_norm, name
        ref = reference[f"train/grad/{name}"]
        np.testing.assert_allclose(grad[:64].cpu().numpy(), ref, atol=1e-3 * np.abs(ref).max() + 1e-12, err_msg=name)


def test_exactly_official_params_get_no_grad(train_step, model, reference):
    no_grad = {_official_name(n) for n, p in model.named_parameters() if p.grad is None or not p.grad.any()}
    assert no_grad == set(reference["train/no_grad"].tolist())


@pytest.mark.parametrize("scale", [1.0, 0.5, 1.5, 2.0])
def test_single_scale_inference_matches(model, reference, scale):
    model.eval()
    x = scale_batch(reference["infer/img_u8"], scale, flip=True).to(DEVICE)
    cam, is_cam = model.infer(x, torch.from_numpy(reference["infer/label"]).to(DEVICE))
    _close(cam, reference[f"infer/scale{scale}/cam"])
    _close(is_cam, reference[f"infer/scale{scale}/is_cam"])


def test_multiscale_is_cam_matches(model, reference):
    model.eval()
    keys, maps = multiscale_is_cam(model, reference["infer/img_u8"], reference["infer/label"])
    assert keys.dtype == np.int64 and np.array_equal(keys, reference["infer/keys"])
    assert maps.dtype == np.float32 and maps.shape == reference["infer/IS_CAM"].shape
    np.testing.assert_allclose(maps, reference["infer/IS_CAM"], atol=ATOL, rtol=0)
