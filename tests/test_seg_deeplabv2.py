"""DeepLabV2 (model.arch=deeplabv2): head, MSC, weight loading, training, CRF evaluation, export."""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision

from helpers import save_seg_checkpoint
from sipe.config import from_dict, load_config
from sipe.data import generate_synthetic
from sipe.seg.architectures import build_from_spec
from sipe.seg.deeplab_pytorch import load_deeplab_pytorch_weights
from sipe.seg.deeplabv2 import DeepLabV2, build_deeplabv2, param_groups
from sipe.seg.dense_crf import crf_refine_probs
from sipe.seg.evaluate import evaluate_seg
from sipe.seg.losses import make_msc_step_fn, msc_loss
from sipe.seg.model import load_seg_checkpoint
from sipe.seg.spec import SegModelSpec
from sipe.seg.train import PseudoLabelDataset, SegTrainConfig, train_seg

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- architecture


def test_resnet50_dilations_output_stride_8_and_four_summed_branches():
    torch.manual_seed(0)
    model = build_deeplabv2(5, "resnet50").eval()
    body = model.backbone
    # layer3 / layer4 keep the resolution (stride 1) and dilate by 2 / 4 after their first block.
    assert body.layer3[0].conv2.stride == (1, 1) and body.layer4[0].downsample[0].stride == (1, 1)
    assert all(b.conv2.dilation == (2, 2) for b in body.layer3[1:])
    assert all(b.conv2.dilation == (4, 4) for b in body.layer4[1:])
    convs = model.classifier.convs
    assert [c.dilation[0] for c in convs] == [6, 12, 18, 24] == [c.padding[0] for c in convs]
    assert all(c.kernel_size == (3, 3) and c.in_channels == 2048 and c.out_channels == 5 for c in convs)
    assert model.scales == (1.0, 0.75, 0.5) and model.input_norm == "imagenet"

    x = torch.randn(1, 3, 67, 45)
    with torch.no_grad():
        feats = body(x)["out"]
        logits = model.single_scale(x)
        # The head is the sum of its four branches, nothing else (no BN, no image pooling).
        assert torch.allclose(model.classifier(feats), sum(c(feats) for c in convs), atol=1e-5)
        out = model(x)["out"]
    assert feats.shape == (1, 2048, 9, 6)  # ceil(67 / 8), ceil(45 / 8)
    assert logits.shape == (1, 5, 9, 6) and out.shape == (1, 5, 67, 45)


def test_msc_fuses_by_max_and_the_loss_is_the_four_terms():
    torch.manual_seed(0)
    model = build_deeplabv2(4, "resnet18")
    # 72x40: sizes whose label resizing has no rounding tie, where PIL's float arithmetic and
    # torch's "nearest-exact" could pick neighbouring pixels.
    x = torch.randn(2, 3, 72, 40)
    model.train()
    out = model(x)
    p100, p075, p050 = out["pyramid"]
    assert out["scales"] == (1.0, 0.75, 0.5)
    assert p100.shape == (2, 4, 9, 5) and p075.shape == (2, 4, 7, 4) and p050.shape == (2, 4, 5, 3)
    up = [F.interpolate(p, size=(9, 5), mode="bilinear", align_corners=False) for p in (p075, p050)]
    assert torch.equal(out["out"], torch.maximum(torch.maximum(p100, up[0]), up[1]))
    # Each scale's logits are the network on the bilinearly resized input.
    x075 = F.interpolate(x, size=(54, 30), mode="bilinear", align_corners=False)
    with torch.no_grad():
        assert torch.allclose(model.single_scale(x075), p075, atol=1e-5)

    target = torch.randint(0, 4, (2, 72, 40))
    target[:, :5] = 255
    loss = msc_loss(out, target)
    expected = {}
    for name, logits in zip(["ce_s1", "ce_s0.75", "ce_s0.5", "ce_fused"], [p100, p075, p050, out["out"]], strict=True):
        # PIL's nearest resize (deeplab-pytorch's resize_labels), pixel centres.
        small = np.stack([
            np.asarray(torchvision.transforms.functional.to_pil_image(t.numpy().astype(np.uint8)).resize(
                (logits.shape[-1], logits.shape[-2]), resample=0))
            for t in target
        ])
        expected[name] = F.cross_entropy(logits, torch.from_numpy(small).long(), ignore_index=255)
    assert sorted(loss) == sorted(["loss", *expected])
    for name, value in expected.items():
        assert torch.allclose(loss[name], value, atol=1e-5), name
    assert torch.allclose(loss["loss"], sum(expected.values()), atol=1e-5)

    model.eval()
    with torch.no_grad():
        fused = model(x)["out"]
        single = DeepLabV2(model.backbone, model.classifier, scales=(1.0,)).eval()(x)["out"]
    assert fused.shape == (2, 4, 72, 40)
    assert (fused >= single - 1e-5).all()  # a max over scales never lowers the 1.0 logits
    with pytest.raises(ValueError, match="start with 1.0"):
        DeepLabV2(model.backbone, model.classifier, scales=(0.5, 1.0))


def test_param_groups_follow_deeplab_pytorch():
    model = build_deeplabv2(3, "resnet18")
    backbone, weights, biases = param_groups(model, 10.0, 20.0, 0.0)
    assert backbone["lr_mult"] == 1.0 and len(backbone["params"]) == len(list(model.backbone.parameters()))
    assert weights["lr_mult"] == 10.0 and "weight_decay" not in weights and len(weights["params"]) == 4
    assert biases["lr_mult"] == 20.0 and biases["weight_decay"] == 0.0
    assert all(p.ndim == 1 for p in biases["params"]) and all(p.ndim == 4 for p in weights["params"])


# ----------------------------------------------------------------------------- weights


def test_imagenet_weights_from_a_local_file_and_the_weights_api(tmp_path, monkeypatch):
    torch.manual_seed(1)
    sd = torchvision.models.resnet18().state_dict()
    path = tmp_path / "resnet18.pth"
    torch.save(sd, path)
    model = build_deeplabv2(3, "resnet18", weights=path)
    got = model.backbone.state_dict()
    assert torch.equal(got["layer4.1.conv2.weight"], sd["layer4.1.conv2.weight"])
    assert torch.equal(got["conv1.weight"], sd["conv1.weight"])  # RGB stays RGB
    assert model.input_norm == "imagenet" and not model.caffe_resnet

    # The torchvision weights API, offline: its download function hands back the test's state dict.
    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", lambda *a, **k: copy.deepcopy(sd))
    api = build_deeplabv2(3, "resnet18", weights="IMAGENET1K_V1")
    assert torch.equal(api.backbone.state_dict()["bn1.running_var"], sd["bn1.running_var"])


def _deeplab_pytorch_r50(num_classes: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """A ResNet-50 DeepLabV2 state dict in deeplab-pytorch's layout (libs/models/resnet.py, deeplabv2.py,
    msc.py): MSC's ``base.``, the stem ``layer1.conv1``, stages ``layer2..layer5`` of ``blockN``
    bottlenecks (``reduce``/``conv3x3``/``increase``/``shortcut``, each ``conv`` + ``bn``), ``aspp.cI``."""
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}

    def conv_bn(prefix: str, cout: int, cin: int, k: int) -> None:
        sd[f"{prefix}.conv.weight"] = torch.randn(cout, cin, k, k, generator=g) * 0.05
        sd[f"{prefix}.bn.weight"] = torch.rand(cout, generator=g) + 0.5
        sd[f"{prefix}.bn.bias"] = torch.randn(cout, generator=g) * 0.1
        sd[f"{prefix}.bn.running_mean"] = torch.randn(cout, generator=g) * 0.1
        sd[f"{prefix}.bn.running_var"] = torch.rand(cout, generator=g) + 0.5
        sd[f"{prefix}.bn.num_batches_tracked"] = torch.tensor(0)

    conv_bn("base.layer1.conv1", 64, 3, 7)
    cin = 64
    for layer, (n, cout) in enumerate(zip([3, 4, 6, 3], [256, 512, 1024, 2048], strict=True), start=2):
        mid = cout // 4
        for b in range(1, n + 1):
            p = f"base.layer{layer}.block{b}"
            conv_bn(f"{p}.reduce", mid, cin if b == 1 else cout, 1)
            conv_bn(f"{p}.conv3x3", mid, mid, 3)
            conv_bn(f"{p}.increase", cout, mid, 1)
            if b == 1:
                conv_bn(f"{p}.shortcut", cout, cin, 1)
        cin = cout
    for i in range(4):
        sd[f"base.aspp.c{i}.weight"] = torch.randn(num_classes, 2048, 3, 3, generator=g) * 0.01
        sd[f"base.aspp.c{i}.bias"] = torch.randn(num_classes, generator=g)
    return sd


@pytest.fixture(scope="module")
def r50_file(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    sd = _deeplab_pytorch_r50(num_classes=4)
    path = tmp_path_factory.mktemp("dlp") / "deeplabv2_resnet50_msc.pth"
    torch.save(sd, path)
    return path, sd


def test_deeplab_pytorch_layout_loads_with_counts(r50_file, caplog):
    path, sd = r50_file
    with caplog.at_level(logging.INFO, logger="sipe.seg.deeplabv2"):
        model = build_deeplabv2(4, "resnet50", weights=path)
    # 53 conv + 53 BN (x5 tensors) + 8 ASPP tensors, all of them matched.
    assert len(sd) == 53 * 6 + 8
    assert f"{path}: {len(sd)} of {len(sd)} tensors loaded ({len(sd) - 8} backbone, 8 ASPP)" in caplog.text
    got = model.state_dict()
    assert torch.equal(got["backbone.layer2.0.conv1.weight"], sd["base.layer3.block1.reduce.conv.weight"])
    assert torch.equal(got["backbone.layer3.5.bn2.running_var"], sd["base.layer4.block6.conv3x3.bn.running_var"])
    assert torch.equal(got["backbone.layer4.0.downsample.1.bias"], sd["base.layer5.block1.shortcut.bn.bias"])
    assert torch.equal(got["backbone.bn1.running_mean"], sd["base.layer1.conv1.bn.running_mean"])
    assert torch.equal(got["classifier.convs.3.bias"], sd["base.aspp.c3.bias"])
    # Caffe's BGR first convolution, flipped to the RGB input every sipe network takes.
    assert torch.equal(got["backbone.conv1.weight"], sd["base.layer1.conv1.conv.weight"].flip(1))
    # The Caffe ResNet variant and its mean-subtraction input convention come with the file.
    assert model.input_norm == "caffe" and model.caffe_resnet
    assert model.backbone.layer2[0].conv1.stride == (2, 2) and model.backbone.layer2[0].conv2.stride == (1, 1)
    assert model.backbone.layer3[0].conv2.dilation == (2, 2) and model.backbone.maxpool.ceil_mode


def test_deeplab_pytorch_layout_other_classes_and_bad_files(r50_file, tmp_path):
    path, sd = r50_file
    # The COCO initialisation's head has other classes: the backbone loads, the ASPP is reported.
    model = build_deeplabv2(21, "resnet50", normalization="caffe", caffe_resnet=True)
    report = load_deeplab_pytorch_weights(model, sd, "coco_init.pth")
    assert report.matched == report.backbone_matched == len(sd) - 8 and report.head_matched == 0
    assert sorted(report.shape_mismatch)[:2] == ["base.aspp.c0.bias", "base.aspp.c0.weight"]
    assert len(report.not_in_file) == 8

    with pytest.raises(ValueError, match="no tensor of junk.pth fits DeepLabV2"):
        load_deeplab_pytorch_weights(model, {"fc.weight": torch.zeros(3, 3)}, "junk.pth")
    shallow = {k: v for k, v in sd.items() if ".layer4.block6." not in k}
    with pytest.raises(ValueError, match="lacks 15 backbone tensors.*resnet101"):
        load_deeplab_pytorch_weights(model, shallow, "shallow.pth")
    deeper = dict(sd)
    deeper.update({k.replace("block6", "block7"): v for k, v in sd.items() if ".layer4.block6." in k})
    with pytest.raises(ValueError, match="holds 18 backbone tensors this network lacks"):
        load_deeplab_pytorch_weights(model, deeper, "deeper.pth")


# ----------------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth_v2")
    return generate_synthetic(root, seed=0, n_train=8, n_val=4, image_size=(40, 56), progress=False)


def _cfg(root: Path, **engine) -> SegTrainConfig:
    return from_dict(
        SegTrainConfig,
        {
            "pseudo_labels": str(root / "SegmentationClass"),
            "data": {"kind": "synthetic", "root": str(root), "split": "train"},
            "model": {"arch": "deeplabv2", "backbone": "resnet18", "weights": None, "output_stride": 8},
            "aug": {"crop_size": 48, "scale_choices": [0.75, 1.0, 1.25]},
            "head_bias_lr_mult": 20.0,
            "head_bias_weight_decay": 0.0,
            # Plain SGD: with momentum, the randomly initialised stand-in overshoots in its first steps
            # (deeplab-pytorch's lr 2.5e-4 with momentum 0.9 is for a pretrained backbone).
            "engine": {"batch_size": 4, "num_workers": 0, "progress": False, "lr": 1e-4, "momentum": 0.0,
                       "log_every": 1, "ckpt_every": 1000, **engine},
        },
    )


def _loss(model: torch.nn.Module, ds: PseudoLabelDataset) -> float:
    # Train mode on a copy (the MSC outputs); BN statistics of the batch, as in training.
    model = copy.deepcopy(model).train()
    with torch.no_grad():
        items = [ds[(i, 7)] for i in range(len(ds))]
        batch = {k: torch.stack([b[k] for b in items]) for k in ("image", "label")}
        return float(make_msc_step_fn()(model, batch)["loss"])


def test_training_lowers_the_msc_loss_and_resume_matches(synth, tmp_path):
    path = train_seg(_cfg(synth, max_steps=4), tmp_path / "full")
    trained, spec = load_seg_checkpoint(path)
    assert spec.arch == "deeplabv2" and spec.msc_scales == [1.0, 0.75, 0.5] and spec.atrous_rates == [6, 12, 18, 24]
    assert isinstance(trained, DeepLabV2) and spec.normalization == "imagenet"

    ds = PseudoLabelDataset(
        __import__("sipe.data", fromlist=["SyntheticDataset"]).SyntheticDataset(synth, "train"),
        synth / "SegmentationClass", crop_size=48, scale_range=(1.0, 1.0), flip=False,
    )
    torch.manual_seed(15)
    initial = build_deeplabv2(5, "resnet18")
    before, after = _loss(initial, ds), _loss(trained, ds)
    assert after < 0.8 * before, (before, after)

    stopped = _cfg(synth, max_steps=4, stop_after=2)
    assert train_seg(stopped, tmp_path / "resumed").name == "last.pt"
    resumed = train_seg(_cfg(synth, max_steps=4), tmp_path / "resumed")
    a = torch.load(path, weights_only=False)["model"]
    b = torch.load(resumed, weights_only=False)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_deeplabv2_config_errors_and_recipe_files(synth):
    bad = _cfg(synth, max_steps=1)
    bad.model.output_stride = 16
    with pytest.raises(ValueError, match="set model.output_stride=8"):
        train_seg(bad, "unused")
    voc = load_config(SegTrainConfig, ROOT / "configs/seg_deeplabv2_voc.yaml", [])
    assert voc.model.arch == "deeplabv2" and voc.model.backbone == "resnet101" and voc.aug.crop_size == 321
    assert (voc.engine.lr, voc.engine.batch_size, voc.engine.max_steps) == (2.5e-4, 10, 20000)
    assert (voc.engine.momentum, voc.engine.weight_decay, voc.engine.poly_power) == (0.9, 5e-4, 0.9)
    assert (voc.head_lr_mult, voc.head_bias_lr_mult, voc.head_bias_weight_decay) == (10.0, 20.0, 0.0)
    assert voc.aug.scale_choices == (0.5, 0.75, 1.0, 1.25, 1.5) and voc.model.freeze_bn
    coco = load_config(SegTrainConfig, ROOT / "configs/seg_deeplabv2_coco.yaml", [])
    assert coco.engine.max_steps == 100000 and coco.model.weights == "IMAGENET1K_V1"
    assert SegTrainConfig().model.arch == "deeplabv3"  # existing configs keep their meaning


def test_deeplabv2_alone_runs_at_its_own_output_stride(synth, tmp_path, capsys):
    """``model.arch=deeplabv2`` without output_stride trains at 8; a contradicting 16 is one line, exit 2."""
    from sipe.cli import main

    common = [f"pseudo_labels={synth / 'SegmentationClass'}", "data.kind=synthetic", f"data.root={synth}",
              "data.split=train", "model.backbone=resnet18", "model.weights=null", "aug.crop_size=32",
              "engine.batch_size=2", "engine.max_steps=1", "engine.num_workers=0", "engine.progress=false"]
    assert main(["seg", "train", "--out", str(tmp_path / "v2"), *common, "model.arch=deeplabv2"]) == 0
    spec = torch.load(tmp_path / "v2/checkpoints/final.pt", weights_only=False)["meta"]["model_spec"]
    assert (spec["arch"], spec["output_stride"], spec["aux"]) == ("deeplabv2", 8, False)
    capsys.readouterr()
    assert main(["seg", "train", "--out", str(tmp_path / "bad"), *common, "model.arch=deeplabv2",
                 "model.output_stride=16"]) == 2
    err = capsys.readouterr().err
    assert "set model.output_stride=8 model.aux=false" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "bad").exists()
    # deeplabv3 keeps its own default, 16
    cfg = load_config(SegTrainConfig, None, [])
    assert cfg.model.output_stride is None and cfg.model.resolved_output_stride() == 16


# ----------------------------------------------------------------------------- CRF evaluation


def _scene() -> tuple[np.ndarray, np.ndarray]:
    """A hand-made 48x64 image: a bright disk (class 1) and a dark bar (class 2) on mid grey."""
    yy, xx = np.mgrid[:48, :64]
    truth = np.zeros((48, 64), np.int64)
    truth[(yy - 22) ** 2 + (xx - 20) ** 2 <= 11**2] = 1
    truth[30:42, 38:60] = 2
    grey = np.array([120, 120, 120], np.uint8)
    colours = np.array([grey, [235, 220, 60], [20, 40, 90]], np.uint8)
    return colours[truth], truth


def _blurred_probs(truth: np.ndarray, k: int = 3) -> np.ndarray:
    """What a stride-8 network gives: the one-hot map averaged over 8x8 cells, upsampled bilinearly."""
    onehot = F.one_hot(torch.from_numpy(truth), k).permute(2, 0, 1)[None].float()
    coarse = F.avg_pool2d(onehot, 8)
    probs = F.interpolate(coarse, size=truth.shape, mode="bilinear", align_corners=False)[0]
    return (0.6 * probs + 0.4 / k).numpy()  # and not confident


class FixedLogits(torch.nn.Module):
    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": self.logits.expand(x.shape[0], -1, -1, -1)}


def test_crf_post_processing_sharpens_a_blurred_prediction():
    image, truth = _scene()
    probs = _blurred_probs(truth)
    blurred = probs.argmax(0)
    refined = crf_refine_probs(image, probs).argmax(0)
    assert (blurred == truth).mean() < 0.96  # 4.7 % of the pixels wrong, along the boundaries
    assert (refined == truth).mean() > 0.99

    ds = [{"image": image, "mask": truth.astype(np.uint8), "name": "scene", "labels": None}]

    class One(list):
        class_names = ["background", "disk", "bar"]

    model = FixedLogits(torch.from_numpy(np.log(probs))[None])
    plain = evaluate_seg(model, One(ds), progress=False)
    crf = evaluate_seg(model, One(ds), crf=True, progress=False)
    assert crf["miou"] > plain["miou"] + 0.05 and crf["miou"] > 0.95
    assert crf["crf_params"] == {"iter_max": 10, "pos_w": 3.0, "pos_xy_std": 1.0, "bi_w": 4.0, "bi_xy_std": 67.0,
                                 "bi_rgb_std": 3.0}
    assert [c["name"] for c in crf["classes"]] == One.class_names and "crf_params" not in plain


# ----------------------------------------------------------------------------- predict, export


def test_predict_and_onnx_export_of_a_deeplabv2_checkpoint(tmp_path, capsys):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from PIL import Image

    from sipe.cli import main
    from sipe.seg.export import compare_onnx, export_onnx

    torch.manual_seed(0)
    names = ["background", "a", "b"]
    for norm in ("imagenet", "caffe"):
        spec = SegModelSpec(num_classes=3, backbone="resnet18", output_stride=8, class_names=names, arch="deeplabv2",
                            normalization=norm, atrous_rates=[6, 12, 18, 24], msc_scales=[1.0, 0.75, 0.5])
        model = build_from_spec(spec).eval()
        if norm == "caffe":
            # Weights for [0, 255] input have a first convolution ~58x smaller (as Caffe's have);
            # without that the random network's logits, and float rounding, grow as much.
            with torch.no_grad():
                model.backbone.conv1.weight.mul_(0.226 / 255.0)
        # MSC folded into the graph: onnxruntime matches PyTorch at sizes the scales do not divide.
        path = export_onnx(model, tmp_path / f"v2_{norm}.onnx", class_names=names)
        assert compare_onnx(model, path, sizes=((75, 61), (64, 96))) < 1e-4

    ckpt = save_seg_checkpoint(model, spec, tmp_path / "v2.pt")
    rebuilt, got = load_seg_checkpoint(ckpt)
    assert got == spec and rebuilt.input_norm == "caffe" and rebuilt.scales == (1.0, 0.75, 0.5)
    image = tmp_path / "img.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 52, 3), dtype=np.uint8)).save(image)
    assert main(["predict", str(image), "--checkpoint", str(ckpt), "--out", str(tmp_path / "pred")]) == 0
    assert np.asarray(Image.open(tmp_path / "pred/img.png")).shape == (40, 52)
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(tmp_path / "cli.onnx"), "--check"]) == 0
    out = capsys.readouterr().out
    assert "deeplabv2" in out and "max |difference|" in out
    meta = {p.key: p.value for p in __import__("onnx").load(str(tmp_path / "cli.onnx")).metadata_props}
    assert json.loads(meta["class_names"]) == names
