"""The segmentation stage: DeepLabV3 builders, training on pseudo masks (loss falls, resume), evaluation."""

from __future__ import annotations

import copy
import json
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from sipe.config import from_dict
from sipe.data import SyntheticDataset, generate_synthetic, synthetic_class_names
from sipe.errors import InputError
from sipe.io import save_label_png
from sipe.models import build_sipe
from sipe.models.layers import FrozenBatchNorm2d, freeze_batchnorm
from sipe.seg.deeplabv3 import build_deeplab
from sipe.seg.evaluate import evaluate_seg
from sipe.seg.model import load_seg_checkpoint
from sipe.seg.predict import predict_probs
from sipe.seg.train import (
    PseudoLabelDataset,
    SegTrainConfig,
    make_step_fn,
    planned_engine,
    prepare_model,
    seg_loss,
    train_seg,
)

pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------- model


def test_resnet50_deeplab_matches_torchvision_layout():
    from torchvision.models.segmentation import deeplabv3_resnet50

    ours = build_deeplab(5, "resnet50", aux=True).state_dict()
    ref = deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=5, aux_loss=True).state_dict()
    assert list(ours) == list(ref)
    assert all(ours[k].shape == ref[k].shape for k in ref)


@pytest.mark.parametrize(("backbone", "stride"), [("resnet18", 8), ("resnet18", 16), ("resnet34", 16)])
def test_small_backbones_output_stride_and_size(backbone, stride):
    model = build_deeplab(3, backbone, output_stride=stride, aux=True).eval()
    x = torch.randn(1, 3, 67, 45)
    with torch.no_grad():
        feats = model.backbone(x)
        out = model(x)
    # Stem and layer1/2 halve with ceil rounding; the dilated stages keep the size.
    assert feats["out"].shape[-2:] == (int(np.ceil(67 / stride)), int(np.ceil(45 / stride)))
    assert feats["aux"].shape[1] == 256
    assert out["out"].shape == (1, 3, 67, 45) and out["aux"].shape == (1, 3, 67, 45)


def test_unknown_backbone_and_stride_raise():
    with pytest.raises(ValueError, match="unknown backbone"):
        build_deeplab(3, "vgg16")
    with pytest.raises(ValueError, match="output_stride"):
        build_deeplab(3, "resnet18", output_stride=32)


def test_pretrained_weights_offline_raise_with_the_way_out(monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    with pytest.raises(InputError, match="three ways forward: \\(1\\) a local weights file") as err:
        build_deeplab(3, "resnet18", weights_backbone="IMAGENET1K_V1")
    assert "resnet18-f37072fd.pth" in str(err.value)
    with pytest.raises(ValueError, match="unknown backbone weights"):
        build_deeplab(3, "resnet18", weights_backbone="IMAGENET_V9")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_deeplab(3, "resnet18", weights_backbone="/nowhere/resnet18.pth")


def test_local_backbone_weights_plain_and_inside_a_checkpoint(tmp_path):
    torch.manual_seed(1)
    resnet = torchvision.models.resnet18()
    sd = resnet.state_dict()
    plain = tmp_path / "resnet18.pth"
    torch.save(sd, plain)
    # A SIPE checkpoint: the ResNet under "encoder.", the SIPE head beside it.
    sipe_net = build_sipe("resnet18", num_classes=4)
    sipe_net.encoder.load_state_dict(sd, strict=False)
    wrapped = tmp_path / "sipe.pt"
    torch.save({"model": sipe_net.state_dict(), "meta": {}}, wrapped)
    for path in (plain, wrapped):
        model = build_deeplab(3, "resnet18", weights_backbone=path)
        got = model.backbone.state_dict()
        assert torch.equal(got["layer3.1.conv2.weight"], sd["layer3.1.conv2.weight"])
        assert torch.equal(got["bn1.running_var"], sd["bn1.running_var"])
    wrong = tmp_path / "resnet34.pth"
    torch.save(torchvision.models.resnet34().state_dict(), wrong)
    with pytest.raises(ValueError, match="unexpected keys"):
        build_deeplab(3, "resnet18", weights_backbone=wrong)


def test_frozen_batchnorm_keeps_statistics_and_state_dict_layout():
    model = build_deeplab(3, "resnet18", output_stride=16)
    keys = list(model.state_dict())
    freeze_batchnorm(model.backbone)
    assert list(model.state_dict()) == keys
    bns = [m for m in model.backbone.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(isinstance(m, FrozenBatchNorm2d) for m in bns)
    before = bns[0].running_mean.clone()
    model.train()
    assert not bns[0].training and model.classifier.training
    model(torch.randn(2, 3, 32, 32))
    assert torch.equal(bns[0].running_mean, before)
    assert not any(p.requires_grad for m in bns for p in m.parameters())


def _cfg(root: Path, labels: Path, **engine) -> SegTrainConfig:
    return from_dict(
        SegTrainConfig,
        {
            "pseudo_labels": str(labels),
            "data": {"kind": "synthetic", "root": str(root), "split": "train"},
            "model": {"backbone": "resnet18", "weights": None, "output_stride": 16},
            "aug": {"crop_size": 48},
            "engine": {"batch_size": 4, "num_workers": 0, "progress": False, "lr": 0.02, "log_every": 1,
                       "ckpt_every": 1000, **engine},
        },
    )


def test_prepare_model_batchnorm_modes():
    cfg = from_dict(SegTrainConfig, {"model": {"backbone": "resnet18", "weights": None, "freeze_bn": True},
                                     "engine": {"batch_size": 2}})
    model = prepare_model(cfg, 3, world_size=2, device=torch.device("cuda", 0))
    assert any(isinstance(m, nn.SyncBatchNorm) for m in model.classifier.modules())
    # The frozen backbone is not synchronised: its statistics never change.
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in model.backbone.modules())
    assert any(isinstance(m, FrozenBatchNorm2d) for m in model.backbone.modules())
    with pytest.raises(ValueError, match="batch_size >= 2 per process"):
        prepare_model(cfg, 3, world_size=2, device=torch.device("cpu"))


def test_seg_loss_ignores_255_and_never_nan():
    logits = torch.tensor([[[[2.0, 0.0]], [[0.0, 5.0]]]])  # (1, 2, 1, 2)
    target = torch.tensor([[[0, 255]]])
    expected = -torch.log_softmax(torch.tensor([2.0, 0.0]), 0)[0]
    assert torch.allclose(seg_loss(logits, target), expected)
    assert seg_loss(logits, torch.full((1, 1, 2), 255)).item() == 0.0


def test_frequency_weights_lift_rare_classes_by_the_inverse_square_root_and_keep_the_mean():
    from sipe.seg.losses import frequency_weights

    counts = np.array([700, 200, 90, 10, 0])
    w = frequency_weights(counts).double()
    share = torch.as_tensor(counts / counts.sum())
    assert torch.isclose((share * w).sum(), torch.tensor(1.0, dtype=torch.float64))
    assert torch.isclose(w[3] / w[0], torch.tensor(70.0 ** 0.5, dtype=torch.float64))
    assert w[4] == 1.0 and bool((w[:4].diff() > 0).all())
    with pytest.raises(ValueError, match="pixel counts"):
        frequency_weights(np.zeros(3))


def test_seg_loss_weighs_each_class_and_stays_per_labelled_pixel():
    logits = torch.randn(2, 3, 4, 5, generator=torch.Generator().manual_seed(0))
    target = torch.randint(0, 3, (2, 4, 5), generator=torch.Generator().manual_seed(1))
    target[0, 0] = 255
    assert torch.allclose(seg_loss(logits, target, torch.ones(3)), seg_loss(logits, target))
    weight = torch.tensor([0.5, 2.0, 3.0])
    nll = -torch.log_softmax(logits, 1).gather(1, target.clamp(max=2)[:, None])[:, 0]
    keep = target != 255
    expected = (weight[target[keep]] * nll[keep]).sum() / keep.sum()
    assert torch.allclose(seg_loss(logits, target, weight), expected)
    # The auxiliary head's loss is weighted too.
    model = nn.Module()
    model.forward = lambda x: {"out": logits, "aux": logits * 2}
    out = make_step_fn(0.5, weight)(model, {"image": None, "label": target})
    assert torch.allclose(out["aux"], seg_loss(logits * 2, target, weight))


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth")
    return generate_synthetic(root, seed=0, n_train=8, n_val=4, image_size=(40, 56), progress=False)


def _dataset(root: Path, split: str) -> SyntheticDataset:
    return SyntheticDataset(root, split)


def test_pseudo_label_dataset_items(synth, tmp_path):
    base = _dataset(synth, "train")
    ds = PseudoLabelDataset(base, synth / "SegmentationClass", crop_size=64, scale_range=(1.0, 1.0), flip=False)
    item = ds[(0, 123)]
    assert item["image"].shape == (3, 64, 64) and item["image"].dtype == torch.float32
    assert item["label"].shape == (64, 64) and item["label"].dtype == torch.int64
    # A smaller image in a 64x64 crop: the padding is ignore, the rest is the mask.
    mask = base.read_mask(0)
    assert int((item["label"] != 255).sum()) == mask.size < 64 * 64
    assert sorted(np.unique(item["label"][item["label"] != 255]).tolist()) == sorted(np.unique(mask).tolist())
    again = ds[(0, 123)]
    assert torch.equal(item["image"], again["image"]) and torch.equal(item["label"], again["label"])

    partial = tmp_path / "pseudo"
    for name in base.names[:5]:
        save_label_png(partial / f"{name}.png", base.read_mask(base.names.index(name)))
    with pytest.raises(FileNotFoundError, match="3 of 8 training images have no pseudo label"):
        PseudoLabelDataset(base, partial)
    assert len(PseudoLabelDataset(base, partial, missing="skip")) == 5
    with pytest.raises(FileNotFoundError, match="does not exist"):
        PseudoLabelDataset(base, tmp_path / "nope")


def test_pseudo_label_pixel_counts_and_the_logged_weights(synth, tmp_path, caplog):
    from sipe.seg.train import loss_weights

    base = _dataset(synth, "train")
    labels = tmp_path / "labels"
    for i, name in enumerate(base.names):
        label = np.zeros((6, 5), np.uint8)
        label[0, : i + 1] = 1
        label[5, 0] = 255
        save_label_png(labels / f"{name}.png", label)
    ds = PseudoLabelDataset(base, labels)
    n = len(base)
    ones = sum(min(i + 1, 5) for i in range(n))  # a row of 5
    expected = np.zeros(len(base.class_names), np.int64)
    expected[:2] = [n * 29 - ones, ones]
    assert np.array_equal(ds.pixel_counts(), expected)
    assert loss_weights(ds, "none") is None
    with caplog.at_level("INFO", logger="sipe.seg.train"):
        w = loss_weights(ds, "inverse_sqrt_frequency")
    assert w.shape == (len(base.class_names),) and w[1] > w[0] and bool((w[2:] == 1).all())
    assert "loss weights (inverse_sqrt_frequency" in caplog.text


def _mean_loss(model: nn.Module, ds: PseudoLabelDataset) -> float:
    # Batch statistics (train mode, on a copy): after a few steps the running statistics still lag.
    step = make_step_fn()
    model = copy.deepcopy(model).train()
    with torch.no_grad():
        batch = [ds[(i, 7)] for i in range(len(ds))]
        out = step(model, {k: torch.stack([b[k] for b in batch]) for k in ("image", "label")})
    return float(out["loss"])


def test_training_lowers_loss_and_resume_matches(synth, tmp_path):
    labels = synth / "SegmentationClass"
    full = _cfg(synth, labels, max_steps=6)
    path = train_seg(full, tmp_path / "full")
    assert path == tmp_path / "full/checkpoints/final.pt"
    assert (tmp_path / "full/config.yaml").is_file() and any((tmp_path / "full/tb").iterdir())

    # Loss over the training images (fixed crops), before and after the six steps.
    base = _dataset(synth, "train")
    ds = PseudoLabelDataset(base, labels, crop_size=48, scale_range=(1.0, 1.0), flip=False)
    torch.manual_seed(full.engine.seed)
    initial = prepare_model(full, 5, 1, torch.device("cpu"))
    trained, spec = load_seg_checkpoint(path)
    assert spec.class_names == synthetic_class_names() and spec.backbone == "resnet18"
    before, after = _mean_loss(initial, ds), _mean_loss(trained, ds)
    assert after < 0.8 * before, (before, after)

    # Interrupted after 3 steps, then resumed: the same final weights.
    stopped = _cfg(synth, labels, max_steps=6, stop_after=3)
    assert train_seg(stopped, tmp_path / "resumed").name == "last.pt"
    resumed = train_seg(_cfg(synth, labels, max_steps=6), tmp_path / "resumed")
    a = torch.load(path, weights_only=False)["model"]
    b = torch.load(resumed, weights_only=False)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_small_folders_train_for_min_steps_and_large_ones_for_their_epochs(synth, tmp_path, monkeypatch):
    from sipe.config.seg import SegEngineConfig

    engine = SegEngineConfig(epochs=3, batch_size=8, min_steps=500)
    assert planned_engine(engine, 400).max_steps == 500  # 3 x 50 = 150 steps: too few
    assert planned_engine(engine, 2000).max_steps is None  # 3 x 250 = 750 steps: the epochs decide
    assert planned_engine(SegEngineConfig(epochs=3, batch_size=8, min_steps=None), 400).max_steps is None
    # An explicit max_steps (the paper recipes' iteration count) wins over the rule.
    assert planned_engine(SegEngineConfig(batch_size=8, min_steps=500, max_steps=20), 400).max_steps == 20
    with pytest.raises(ValueError, match="engine.min_steps must be >= 1"):
        from_dict(SegTrainConfig, {"engine": {"min_steps": 0}})
    # train_seg hands the planned length to the engine: 8 images of batch 4, 1 epoch = 2 steps -> 3.
    import sipe.seg.train as seg_train

    seen = {}
    monkeypatch.setattr(seg_train, "fit", lambda model, data, step, groups, cfg, *a, **k: seen.update(cfg=cfg))
    cfg = _cfg(synth, synth / "SegmentationClass", epochs=1, min_steps=3)
    train_seg(cfg, tmp_path / "run")
    assert seen["cfg"].max_steps == 3 and cfg.engine.max_steps is None


def test_train_seg_needs_pseudo_labels(synth):
    cfg = _cfg(synth, synth / "SegmentationClass")
    cfg.pseudo_labels = ""
    with pytest.raises(ValueError, match="pseudo_labels"):
        train_seg(cfg, "unused")


# ----------------------------------------------------------------------------- evaluation


class PixelStub(nn.Module):
    """Predicts class c where the (de-normalised) red channel is near 60 * c: a per-pixel classifier."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        red = (x[:, :1] * 0.229 + 0.485) * 255.0
        centres = 60.0 * torch.arange(self.k, dtype=x.dtype).view(1, -1, 1, 1)
        return {"out": -((red - centres) ** 2) / 100.0}


class ListDataset:
    def __init__(self, items: list[dict], class_names: list[str]) -> None:
        self.items, self.class_names = items, class_names

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]


def _image(pred: np.ndarray) -> np.ndarray:
    img = np.zeros((*pred.shape, 3), np.uint8)
    img[..., 0] = 60 * pred
    return img


def test_evaluate_seg_against_a_hand_computed_confusion_matrix():
    pred1 = np.array([[0, 0, 1], [2, 2, 1]])
    gt1 = np.array([[0, 1, 1], [2, 0, 255]], np.uint8)
    pred2 = np.array([[1, 1], [0, 0]])
    gt2 = np.array([[1, 1], [0, 2]], np.uint8)
    items = [
        {"image": _image(pred1), "mask": gt1, "name": "a", "labels": None},
        {"image": _image(pred2), "mask": gt2, "name": "b", "labels": None},
        {"image": _image(pred2), "mask": None, "name": "no-gt", "labels": None},
    ]
    ds = ListDataset(items, ["background", "cat", "dog"])
    # rows = ground truth, columns = prediction; the 255 pixel is not counted.
    expected = np.array([[2, 0, 1], [1, 3, 0], [1, 0, 1]])
    report = evaluate_seg(PixelStub(3), ds, scales=(1.0,), flip=True, progress=False)
    assert np.array_equal(np.array(report["confusion_matrix"]), expected)
    iou = [2 / (3 + 4 - 2), 3 / (4 + 3 - 3), 1 / (2 + 2 - 1)]
    assert report["miou"] == pytest.approx(np.mean(iou))
    assert [c["iou"] for c in report["classes"]] == pytest.approx(iou)
    assert report["num_images"] == 2 and report["skipped"] == 1 and report["kind"] == "seg"
    with pytest.raises(ValueError, match="predicts 3 classes but the dataset has 4"):
        evaluate_seg(PixelStub(3), ListDataset(items, ["background", "a", "b", "c"]), progress=False)


class ScaleStub(nn.Module):
    """Constant logits that depend on the input height: [0, 2, 0] at full size, [0, 0, 3] below it."""

    def __init__(self, full: int) -> None:
        super().__init__()
        self.full = full

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        logits = torch.tensor([0.0, 2.0, 0.0]) if h == self.full else torch.tensor([0.0, 0.0, 3.0])
        return logits.view(1, 3, 1, 1).expand(n, 3, h, w)


def test_multiscale_averages_softmax_probabilities():
    image = np.zeros((16, 12, 3), np.uint8)
    probs = predict_probs(ScaleStub(16), image, scales=(1.0, 0.5), flip=True)
    expected = (torch.softmax(torch.tensor([0.0, 2.0, 0.0]), 0) + torch.softmax(torch.tensor([0.0, 0.0, 3.0]), 0)) / 2
    assert probs.shape == (3, 16, 12)
    assert torch.allclose(probs[:, 5, 7], expected, atol=1e-6)


def test_seg_cli_train_then_eval(synth, tmp_path, capsys):
    from sipe.cli import main

    run = tmp_path / "run"
    args = [
        "seg", "train", "--out", str(run),
        f"pseudo_labels={synth / 'SegmentationClass'}", "data.kind=synthetic", f"data.root={synth}", "data.split=train",
        "model.backbone=resnet18", "model.weights=null", "aug.crop_size=48",
        "engine.batch_size=4", "engine.max_steps=2", "engine.num_workers=0", "engine.progress=false",
    ]
    assert main(args) == 0
    ckpt = run / "checkpoints/final.pt"
    assert f"checkpoint: {ckpt}" in capsys.readouterr().out
    assert main(["seg", "train", "--out", str(run), "model.backbon=resnet18"]) == 2
    assert "unknown config key 'model.backbon'" in capsys.readouterr().err

    report_path = tmp_path / "report.json"
    eval_args = ["seg", "eval", "--checkpoint", str(ckpt), "--dataset", "synthetic", "--root", str(synth),
                 "--split", "val", "--workers", "0", "--out", str(report_path)]
    assert main([*eval_args, "--scales", "1.0", "0.5", "--flip"]) == 0
    assert "mIoU" in capsys.readouterr().out
    report = json.loads(report_path.read_text())
    assert report["num_images"] == 4 and report["scales"] == [1.0, 0.5] and report["flip"] is True
    assert np.array(report["confusion_matrix"]).shape == (5, 5)
    assert 0.0 <= report["miou"] <= 1.0
    assert main(["seg", "eval", "--checkpoint", str(tmp_path / "none.pt"), "--dataset", "synthetic",
                 "--root", str(synth)]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert main(["seg"]) == 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_train_amp_channels_last_then_eval_predict_export(synth, tmp_path):
    from sipe.seg.export import compare_onnx, export_onnx
    from sipe.seg.predict import predict_image

    cfg = _cfg(synth, synth / "SegmentationClass", max_steps=2, device="cuda", amp=True, channels_last=True)
    model, _ = load_seg_checkpoint(train_seg(cfg, tmp_path / "run"), map_location="cuda")
    model.cuda()
    ds = _dataset(synth, "val")
    report = evaluate_seg(model, ds, scales=(1.0, 0.5), flip=True, progress=False)
    assert report["num_images"] == 4 and report["miou"] is not None
    image = ds[0]["image"]
    gpu = predict_probs(model, image, scales=(1.0, 0.5), flip=True)
    cpu = predict_probs(copy.deepcopy(model).cpu(), image, scales=(1.0, 0.5), flip=True)
    assert gpu.is_cuda and gpu.shape == (5, *image.shape[:2])
    # TF32 convolutions on the GPU: agreement to ~1e-3, not bit for bit.
    assert torch.allclose(gpu.cpu(), cpu, atol=1e-2)
    assert predict_image(model, image).shape == image.shape[:2]
    onnx_path = export_onnx(model, tmp_path / "m.onnx")
    assert next(model.parameters()).is_cuda, "export must not move the caller's model"
    assert compare_onnx(model.cpu(), onnx_path, sizes=[(48, 64)]) < 1e-4


def test_seg_config_defaults_survive_partial_sections():
    cfg = from_dict(SegTrainConfig, {"engine": {"batch_size": 8}, "data": {"root": "somewhere"}})
    # DeepLab's SGD, not the SIPE stage's momentum quirk; no validation unless asked for.
    assert cfg.engine.momentum == 0.9 and cfg.engine.lr == 0.01 and cfg.engine.clip_grad_norm is None
    assert cfg.engine.min_steps == 500
    # Batch norm: frozen when the body starts from weights (the default), trained from scratch, or as set.
    assert cfg.model.freeze_bn is None and cfg.model.frozen_bn()
    assert not from_dict(SegTrainConfig, {"model": {"weights": None}}).model.frozen_bn()
    assert not from_dict(SegTrainConfig, {"model": {"freeze_bn": False}}).model.frozen_bn()
    assert cfg.data.val_split is None and cfg.data.split == "train_aug"
    with pytest.raises(ValueError, match="scale_range"):
        from_dict(SegTrainConfig, {"aug": {"scale_range": [2.0, 0.5]}})
