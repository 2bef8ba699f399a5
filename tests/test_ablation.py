"""The paper's ablation switches (``method`` section): GSC weight, background factor, structures, scales."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import TinyBackbone
from sipe.config import ConfigError, MethodConfig, load_config, to_dict
from sipe.core.losses import classification_loss, gsc_loss
from sipe.core.sipe_net import SIPENet
from sipe.train import SIPETrainConfig, sipe_step

ABLATIONS = Path(__file__).resolve().parents[1] / "configs" / "ablations"


def _batch(n: int = 2, size: int = 64, k: int = 3, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    valid = torch.ones(n, size, size)
    valid[0, :, size // 2:] = 0  # a padded crop
    labels = torch.tensor([[1.0, 0.0], [1.0, 1.0]])[:n]
    return {"image": torch.randn(n, 3, size, size, generator=g), "valid": valid, "labels": labels[:, : k - 1]}


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor | None]:
    return {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()}


def _tiny(seed: int = 0) -> SIPENet:
    torch.manual_seed(seed)
    return SIPENet(TinyBackbone(), num_classes=3).train()


def test_gsc_weight_zero_gives_the_gradient_of_the_classification_loss_alone():
    batch = _batch()
    base = _tiny()
    cls_only, zero, full = copy.deepcopy(base), copy.deepcopy(base), copy.deepcopy(base)

    from sipe.core.ipe import lowres_valid_mask

    out = cls_only(batch["image"], lowres_valid_mask(batch["valid"], batch["labels"]))
    classification_loss(out["score"], batch["labels"]).backward()
    step0 = sipe_step(zero, batch, gsc_weight=0.0)
    step0["loss"].backward()
    step1 = sipe_step(full, batch)
    step1["loss"].backward()

    expected, got, with_gsc = _grads(cls_only), _grads(zero), _grads(full)
    for name, g in expected.items():
        if g is None:
            assert got[name] is None, name  # the side convs: no gradient at all, not zeros
        else:
            assert torch.equal(got[name], g), name
    assert all(expected[f"side{i}.weight"] is None for i in range(1, 5))
    # the switch matters: with the GSC term the side convs learn and the shared weights get another gradient
    assert with_gsc["side1.weight"] is not None and with_gsc["side1.weight"].abs().sum() > 0
    assert not torch.equal(with_gsc["classifier.weight"], expected["classifier.weight"])
    # the GSC term is still computed for the log, and equals the one of the full loss
    assert step0["loss"].item() == step0["loss_cls"].item()
    assert step0["loss_gsc"].item() > 0 and step0["loss_gsc"].item() == pytest.approx(step1["loss_gsc"].item())


def test_the_official_weight_leaves_loss_and_gradient_bit_identical():
    batch = _batch(seed=1)
    a, b = _tiny(1), _tiny(1)
    from sipe.core.ipe import lowres_valid_mask

    step = sipe_step(a, batch)
    step["loss"].backward()
    out = b(batch["image"], lowres_valid_mask(batch["valid"], batch["labels"]))
    loss = classification_loss(out["score"], batch["labels"]) + gsc_loss(out["cam"], out["is_cam"])  # before the switch
    loss.backward()
    assert torch.equal(step["loss"].detach(), loss.detach())
    for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        assert (p.grad is None) == (q.grad is None) and (p.grad is None or torch.equal(p.grad, q.grad)), name


def test_method_defaults_are_the_official_values_and_bad_values_are_refused():
    m = SIPETrainConfig().method
    assert (m.gsc_weight, m.bg_scale, m.train_structure, m.infer_structure) == (1.0, 0.5, "backbone", "hierarchical")
    assert m.cam_scales == (1.0, 0.5, 1.5, 2.0)
    model = SIPENet(TinyBackbone(), 3, **m.head_options())
    assert (model.train_structure, model.infer_structure, model.bg_scale) == ("backbone", "hierarchical", 0.5)
    with pytest.raises(ConfigError, match=r"method\.infer_structure.*'backbone', 'hierarchical'"):
        load_config(SIPETrainConfig, overrides=["method.infer_structure=last"])
    with pytest.raises(ConfigError, match="method.gsc_weight must be >= 0"):
        load_config(SIPETrainConfig, overrides=["method.gsc_weight=-1"])
    with pytest.raises(ConfigError, match="method.cam_scales must be positive"):
        load_config(SIPETrainConfig, overrides=["method.cam_scales=[1.0, 0]"])
    with pytest.raises(ValueError, match="train_structure must be one of"):
        model.configure(train_structure="stage2")
    # official checkpoints (no meta) and older sipe runs (no method section) get the defaults
    assert MethodConfig.from_checkpoint({}) == MethodConfig()
    assert MethodConfig.from_checkpoint({"meta": {"sipe_config": {"aug": {}}}}) == MethodConfig()
    stored = {"meta": {"sipe_config": {"method": {"bg_scale": 0.25, "cam_scales": [1.0]}}}}
    assert MethodConfig.from_checkpoint(stored) == MethodConfig(bg_scale=0.25, cam_scales=(1.0,))


def test_bg_scale_and_structures_change_the_seeds():
    torch.manual_seed(4)  # a random tiny net whose seeds hold all three classes
    model = SIPENet(TinyBackbone(), 3).eval()
    x = torch.randn(1, 3, 64, 96)
    labels = torch.tensor([1.0, 1.0])
    _, ref = model.infer(x, labels, fuse_flip=False)
    outs = {}
    for opts in ({"bg_scale": 5.0}, {"infer_structure": "backbone"}):
        other = copy.deepcopy(model).configure(**opts)
        outs[str(opts)] = other.infer(x, labels, fuse_flip=False)[1]
    assert torch.equal(model.infer(x, labels, fuse_flip=False)[1], ref)  # configure() acted on the copies only
    assert all(not torch.allclose(v, ref) for v in outs.values()), outs.keys()


def test_every_ablation_config_loads_and_differs_from_the_defaults_in_the_method_only():
    files = sorted(ABLATIONS.glob("*.yaml"))
    assert {f.stem for f in files} == {
        "cam_baseline", "ipe_without_gsc", "sipe_full", "train_structure_hierarchical",
        "infer_structure_backbone", "no_bg_factor",
    }
    default = to_dict(SIPETrainConfig())
    seen = {}
    for f in files:
        text = f.read_text()
        assert "Paper:" in text and ("row" in text.lower() or "study" in text.lower()), f.name  # names the row
        cfg = to_dict(load_config(SIPETrainConfig, f))
        assert {k: v for k, v in cfg.items() if k != "method"} == {k: v for k, v in default.items() if k != "method"}
        seen[f.stem] = cfg["method"]
    assert seen["sipe_full"] == default["method"]
    assert seen["cam_baseline"]["gsc_weight"] == 0.0 == seen["ipe_without_gsc"]["gsc_weight"]
    assert seen["train_structure_hierarchical"]["train_structure"] == "hierarchical"
    assert seen["infer_structure_backbone"]["infer_structure"] == "backbone"
    assert seen["no_bg_factor"]["bg_scale"] == 1.0


# ------------------------------------------------------------------ through the command line


def _photo_folder(root: Path, n: int = 4, size: tuple[int, int] = (64, 80)) -> Path:
    """``n`` JPEGs of a red disc and/or a blue square, with ``labels.csv``; returns the CSV."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    rows = ["image,labels"]
    for i in range(n):
        img = rng.integers(90, 140, (*size, 3)).astype(np.uint8)
        present = ["disc", "square"][: 1 + i % 2]
        img[10:30, 10:30] = (230, 40, 40)
        if "square" in present:
            img[35:55, 40:60] = (30, 30, 220)
        Image.fromarray(img).save(root / f"p{i}.jpg", quality=95)
        rows.append(f"p{i}.jpg,{';'.join(present)}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root / "labels.csv"


def test_switches_are_stored_in_the_checkpoint_and_sipe_cam_uses_them(tmp_path, capsys):
    from sipe.cams.multiscale import multiscale_is_cam, prepare_for_inference
    from sipe.cli import main
    from sipe.data import build_dataset
    from sipe.data.cam_format import read_cam_file
    from sipe.models import build_sipe
    from sipe.models.checkpoint import load_checkpoint

    csv = _photo_folder(tmp_path / "photos")
    run = tmp_path / "run"
    args = [
        "train", "--out", str(run), "data.kind=custom", f"data.root={tmp_path / 'photos'}", f"data.split={csv}",
        "data.val_split=null", "model.backbone=resnet18", "model.weights=null", "model.num_classes=null",
        "aug.resize_long=[64,80]", "aug.crop_size=64", "engine.batch_size=2", "engine.epochs=1",
        "engine.num_workers=0", "engine.progress=false", "engine.device=cpu",
        "method.gsc_weight=0", "method.infer_structure=backbone", "method.bg_scale=0.3", "method.cam_scales=[1.0]",
    ]  # fmt: skip
    assert main(args) == 0
    final = run / "checkpoints" / "final.pt"
    ckpt = torch.load(final, weights_only=False)
    assert ckpt["meta"]["sipe_config"]["method"]["infer_structure"] == "backbone"
    # GSC weight 0: the side convs took no step (no gradient), the classifier did
    torch.manual_seed(15)  # the engine's seed, as train_sipe seeds the new layers
    init = build_sipe("resnet18", 3, weights=None).state_dict()
    assert torch.equal(ckpt["model"]["side1.weight"], init["side1.weight"])
    assert not torch.equal(ckpt["model"]["classifier.weight"], init["classifier.weight"])
    capsys.readouterr()

    out = tmp_path / "cams"
    rc = main(["cam", "--checkpoint", str(final), "--dataset", "custom", "--root", str(tmp_path / "photos"),
               "--split", str(csv), "--out", str(out), "--workers", "0", "--device", "cpu"])
    assert rc == 0, capsys.readouterr().err
    model, _ = load_checkpoint(final)
    assert (model.infer_structure, model.bg_scale) == ("backbone", 0.3)  # the loader applies the stored switches
    ds = build_dataset("custom", str(tmp_path / "photos"), str(csv))
    keys, maps = multiscale_is_cam(prepare_for_inference(model), ds.read_image(1), ds.get_labels(1), scales=(1.0,))
    f = read_cam_file(out / "is_cam" / f"{ds.names[1]}.npz")
    np.testing.assert_array_equal(f.keys, keys)
    np.testing.assert_allclose(f.maps.astype(np.float32), maps, atol=1e-3)  # float16 on disk
    official_model = load_checkpoint(final)[0]
    official_model.configure(infer_structure="hierarchical", bg_scale=0.5)  # the official switches
    _, official = multiscale_is_cam(prepare_for_inference(official_model), ds.read_image(1), ds.get_labels(1))
    assert not np.allclose(official, maps, atol=1e-2)  # the stored switches made a difference
