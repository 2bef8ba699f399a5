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
    path = export_onnx(m, tmp_path / "seg.onnx", opset=17, class_names=spec.class_names, flip=False)
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
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(out), "--check", "--no-flip"]) == 0
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


def test_the_default_graph_is_sipe_predicts_flip_averaged_probabilities(model, tmp_path):
    from sipe.seg.predict import predict_probs

    m, spec = model
    path = export_onnx(m, tmp_path / "flip.onnx", class_names=spec.class_names)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["probs"]
    meta = session.get_modelmeta().custom_metadata_map
    assert (meta["exif_transpose"], meta["color"], meta["flip"], meta["value_range"]) == ("true", "RGB", "true",
                                                                                         "[0, 255]")
    np.testing.assert_allclose(json.loads(meta["mean"]), [123.675, 116.28, 103.53], atol=1e-3)
    np.testing.assert_allclose(json.loads(meta["std"]), [58.395, 57.12, 57.375], atol=1e-3)
    image = np.random.default_rng(2).integers(0, 256, (53, 71, 3), dtype=np.uint8)
    (probs,) = session.run(["probs"], {"image": image.astype(np.float32).transpose(2, 0, 1)[None]})
    flipped = predict_probs(m, image, flip=True).numpy()
    single = predict_probs(m, image, flip=False).numpy()
    assert np.abs(flipped - single).max() > 1e-3  # the flip matters on this network, so the test can fail
    np.testing.assert_allclose(probs[0], flipped, atol=1e-5, rtol=0)
    check = check_onnx(m, path)
    assert check.output == "probs" and check.problem() is None and "|probability|" in check.summary()
    lean = export_onnx(m, tmp_path / "lean.onnx", flip=False)
    lean_meta = ort.InferenceSession(str(lean), providers=["CPUExecutionProvider"]).get_modelmeta()
    assert lean_meta.custom_metadata_map["flip"] == "false"


def test_readme_snippet_reproduces_sipe_predict_on_an_exif_rotated_photo(model, tmp_path, capsys):
    """The README's export snippet, run as written on a sideways-stored phone photo, gives `sipe predict`'s
    probabilities (the Predictor `sipe predict` runs) within 1e-4, and its masks."""
    import re
    from pathlib import Path

    from PIL import Image

    from sipe.predictor import Predictor

    m, spec = model
    ckpt = save_seg_checkpoint(m, spec, tmp_path / "seg.pt")
    onnx_path = tmp_path / "model.onnx"
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(onnx_path)]) == 0
    rng = np.random.default_rng(3)
    stored = np.kron(rng.integers(0, 256, (6, 10, 3)), np.ones((8, 8, 1))).astype(np.uint8)  # 48 x 80, stored
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated by 90 degrees: upright it is 80 x 48
    photo = tmp_path / "phone.jpg"
    Image.fromarray(stored).save(photo, quality=95, exif=exif)

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme[readme.index("### Prediction and export"):readme.index("## Python API")]
    (snippet,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(snippet.strip().splitlines()) <= 12
    assert '"runs/mine/export/model.onnx"' in snippet and '"photo.jpg"' in snippet
    code = snippet.replace('"runs/mine/export/model.onnx"', repr(str(onnx_path))).replace('"photo.jpg"',
                                                                                          repr(str(photo)))
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 - the README's own code
    probs, mask = scope["probs"], scope["mask"]
    assert probs.shape == (1, 3, 80, 48) and scope["names"] == CLASSES

    expected = Predictor.from_checkpoint(ckpt, device="cpu").predict(str(photo))
    assert expected.maps.shape == (3, 80, 48)
    np.testing.assert_allclose(probs[0], expected.maps, atol=1e-4, rtol=0)
    assert (mask == expected.mask).mean() > 0.999
    out = tmp_path / "pred"
    assert main(["predict", str(photo), "--checkpoint", str(ckpt), "--out", str(out), "--device", "cpu"]) == 0
    assert (np.asarray(Image.open(out / "phone.png")) == mask).mean() > 0.999
