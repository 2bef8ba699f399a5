"""ONNX export: onnxruntime matches PyTorch within 1e-4 at two image sizes; dynamic shapes; the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from helpers import save_seg_checkpoint, tiny_seg_model
from sipe.cli import main
from sipe.seg.export import NormalizedSegModel, OnnxCheck, check_onnx, compare_onnx, export_onnx

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

CLASSES = ["background", "cat", "dog"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model():
    m, spec = tiny_seg_model(CLASSES)
    # Logits of a few units (like a trained model's) rather than ~0.01, so 1e-4 is a real tolerance.
    with torch.no_grad():
        m.classifier[-1].weight.mul_(300.0)
    return m, spec


def _run(path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"image": x})[0]


def test_onnx_matches_pytorch_on_two_sizes(model, tmp_path):
    m, spec = model
    path = export_onnx(m, tmp_path / "seg.onnx", opset=17, class_names=spec.class_names)
    proto = onnx.load(str(path))
    assert {o.domain: o.version for o in proto.opset_import}[""] == 17
    dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, "height", "width"]
    assert json.loads({p.key: p.value for p in proto.metadata_props}["class_names"]) == CLASSES

    rng = np.random.default_rng(0)
    wrapper = NormalizedSegModel(m).eval()
    for shape in ((1, 3, 64, 96), (2, 3, 77, 45)):
        x = (rng.random(shape) * 255).astype(np.float32)
        ours = _run(path, x)
        with torch.no_grad():
            ref = wrapper(torch.from_numpy(x)).numpy()
        assert ours.shape == (shape[0], 3, shape[2], shape[3])
        assert np.abs(ref).max() > 1.0
        np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)
    assert compare_onnx(m, path, sizes=[(50, 70)]) < 1e-4


def test_export_leaves_the_model_alone_and_checks_opset(model, tmp_path):
    m, _ = model
    m.train()
    export_onnx(m, tmp_path / "a.onnx", sample_size=(32, 32))
    assert m.training
    m.eval()
    with pytest.raises(ValueError, match="17 or later"):
        export_onnx(m, tmp_path / "b.onnx", opset=13)
    with pytest.raises(ValueError, match="opset 18 or later"):
        export_onnx(m, tmp_path / "b.onnx", opset=17, dynamo=True)
    assert not (tmp_path / "b.onnx").exists()


def test_export_cli(model, tmp_path, capsys):
    m, spec = model
    ckpt = save_seg_checkpoint(m, spec, tmp_path / "seg.pt")
    out = tmp_path / "cli.onnx"
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(out), "--check"]) == 0
    text = capsys.readouterr().out
    assert "opset 17" in text and "max |difference|" in text
    assert out.is_file()
    assert main(["export", "--checkpoint", str(tmp_path / "none.pt"), "--out", str(out)]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_the_exported_graph_normalises_through_sipe_data_transforms():
    from sipe.data.transforms import image_to_tensor, normalize_tensor

    img = np.random.default_rng(1).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float()
    keep = x.clone()
    for norm in ("imagenet", "caffe"):
        assert torch.equal(normalize_tensor(x, norm), image_to_tensor(img, "cpu", norm))  # predict's input
    assert torch.equal(x, keep)  # the caller's tensor is left alone

    class Echo(torch.nn.Module):
        input_norm = "caffe"

        def forward(self, t: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"out": t}

    assert torch.equal(NormalizedSegModel(Echo())(x), normalize_tensor(x, "caffe"))


def test_check_judges_the_difference_against_the_logits_scale(tmp_path, capsys):
    """Logits ~1e13 (a diverged run): float32 rounding differs by far more than 1e-4 in absolute terms,
    but not relative to the logits, and both pick the same classes: the check passes and says both numbers."""
    m, spec = tiny_seg_model(CLASSES)
    with torch.no_grad():
        m.classifier[-1].weight.mul_(3e14)
    ckpt = save_seg_checkpoint(m, spec, tmp_path / "huge.pt")
    out = tmp_path / "huge.onnx"
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(out), "--check"]) == 0
    text = capsys.readouterr().out
    check = check_onnx(m, out)
    assert check.max_abs_logit > 1e12 and check.max_abs_diff > 1e-4  # the old absolute check failed here
    assert check.relative_diff < 1e-5 and check.argmax_agreement > 0.999 and check.problem() is None
    assert f"max |difference| = {check.max_abs_diff:.3g} ({check.relative_diff:.3g} of the largest |logit|" in text
    assert "same class on" in text and "of 16863 pixels" in text

    # Another network than the exported one: caught by the relative difference.
    other, _ = tiny_seg_model(CLASSES)
    assert "differs from PyTorch's by" in check_onnx(other, out).problem()
    # A near tie flipped on too many pixels fails too, even with a tiny difference.
    assert "picks another class than PyTorch on 2.00% of the pixels" in OnnxCheck(1e-6, 3.0, 0.98, 100).problem()
    assert OnnxCheck(1.26e7, 5.9e13, 1.0, 100).problem() is None  # the numbers: relative 2e-7
    assert "more than 0.0001" in OnnxCheck(1e-3, 0.5, 1.0, 100).problem()  # small logits: absolute 1e-4


@pytest.mark.slow
def test_dynamo_exporter_opset_18(model, tmp_path):
    m, _ = model
    path = export_onnx(m, tmp_path / "d.onnx", opset=18, dynamo=True, sample_size=(64, 64))
    assert {o.domain: o.version for o in onnx.load(str(path)).opset_import}[""] == 18
    assert compare_onnx(m, path, sizes=[(64, 96), (77, 45)]) < 1e-4
