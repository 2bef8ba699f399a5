"""SIPE training on tiny data: the augmentation adaptor, the step, validation, the full entry point."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import free_port
from sipe.config import load_config
from sipe.engine import fit
from sipe.io import save_label_png
from sipe.models import build_sipe
from sipe.train import SIPETrainConfig, SIPETrainSet, make_val_fn, sipe_step

CLASSES = ["circle", "square"]


def _scene(rng: np.random.Generator, size: int = 64) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """A noisy background with a bright disc (class 1) and/or a dark square (class 2)."""
    img = rng.integers(90, 140, (size, size, 3)).astype(np.uint8)
    mask = np.zeros((size, size), np.uint8)
    yy, xx = np.mgrid[:size, :size]
    present = [c for c in (1, 2) if rng.random() < 0.6] or [int(rng.integers(1, 3))]
    for c in present:
        cy, cx = rng.integers(14, size - 14, 2)
        if c == 1:
            region = (yy - cy) ** 2 + (xx - cx) ** 2 < 10**2
            img[region] = (240, 60, 60)
        else:
            region = (abs(yy - cy) < 9) & (abs(xx - cx) < 9)
            img[region] = (30, 30, 200)
        mask[region] = c
    return img, mask, [CLASSES[c - 1] for c in present]


def _write_voc(root: Path, n: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for d in ("JPEGImages", "Annotations", "SegmentationClass"):
        (root / d).mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(n):
        name = f"img_{i:03d}"
        img, mask, objs = _scene(rng)
        Image.fromarray(img).save(root / "JPEGImages" / f"{name}.jpg", quality=95)
        save_label_png(root / "SegmentationClass" / f"{name}.png", mask)
        xml = "<annotation>" + "".join(f"<object><name>{o}</name></object>" for o in objs) + "</annotation>"
        (root / "Annotations" / f"{name}.xml").write_text(xml)
        names.append(name)
    split = root / "all.txt"
    split.write_text("\n".join(names) + "\n")
    return split


class _MemSet:
    """An in-memory dataset with the sipe item layout."""

    def __init__(self, n: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.items = []
        for i in range(n):
            img, mask, objs = _scene(rng)
            labels = np.array([c in objs for c in CLASSES], np.float32)
            self.items.append({"image": img, "labels": labels, "name": f"m{i}", "mask": mask})
        self.class_names = ["background", *CLASSES]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]

    def require_masks(self) -> None:
        pass


def test_train_set_is_seeded_and_shaped():
    ds = SIPETrainSet(_MemSet(3), resize_long=(40, 96), crop_size=64)
    a, b, c = ds[(1, 7)], ds[(1, 7)], ds[(1, 8)]
    assert a["image"].shape == (3, 64, 64) and a["image"].dtype == torch.float32
    assert a["valid"].shape == (64, 64) and a["labels"].shape == (2,)
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["valid"], b["valid"])
    assert not torch.equal(a["image"], c["image"])
    assert torch.all(a["image"][:, a["valid"] == 0] == 0)  # zero padding outside the valid region


def _fixed_batch_losses(model, ds) -> dict[str, float]:
    batch = torch.utils.data.default_collate([ds[(i, 0)] for i in range(len(ds))])
    model.eval()
    with torch.no_grad():
        out = sipe_step(model, batch)
    return {k: float(v) for k, v in out.items()}


def test_sipe_steps_on_tiny_data_losses_finite_and_falling(tmp_path):
    torch.manual_seed(0)
    model = build_sipe("resnet18", num_classes=3, weights=None)
    backbone, new = model.param_groups()
    groups = [{"params": backbone, "lr_mult": 1.0}, {"params": new, "lr_mult": 10.0}]
    from sipe.engine import TrainConfig

    cfg = TrainConfig(epochs=4, batch_size=4, lr=0.02, num_workers=0, log_every=1, device="cpu", progress=False)
    ds = SIPETrainSet(_MemSet(8), resize_long=(56, 72), crop_size=64)
    before = _fixed_batch_losses(model, ds)
    fit(model, ds, sipe_step, groups, cfg, tmp_path)
    after = _fixed_batch_losses(model, ds)

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    assert {"train/loss", "train/loss_cls", "train/loss_gsc", "train/lr"} <= set(acc.Tags()["scalars"])
    loss = np.array([e.value for e in acc.Scalars("train/loss")])
    assert len(loss) == 8 and np.isfinite(loss).all()
    assert all(np.isfinite(v) for v in (*before.values(), *after.values()))
    assert before["loss_gsc"] > 0  # the GSC term is live, not identically zero
    # the same 8 crops score a clearly lower loss after 8 steps
    assert after["loss"] < 0.9 * before["loss"], (before, after)
    assert after["loss_cls"] < before["loss_cls"], (before, after)


class _OracleNet(torch.nn.Module):
    """Returns IS-CAM = one-hot of a fixed mask (stride 1), to check the validation arithmetic."""

    def __init__(self, masks: list[np.ndarray], k: int):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.masks = masks
        self.k = k
        self.i = 0

    def forward(self, x, valid_mask):
        assert valid_mask.shape == (1, self.k, 1, 1) and valid_mask[0, 0, 0, 0] == 1
        m = torch.from_numpy(self.masks[self.i].astype(np.int64))
        self.i += 1
        onehot = torch.nn.functional.one_hot(m, self.k).permute(2, 0, 1)[None].float() * 3.0
        return {"is_cam": onehot}


def test_validation_miou_matches_hand_count():
    ds = _MemSet(3)
    gts = [it["mask"] for it in ds.items]
    # perfect prediction -> mIoU 1
    assert make_val_fn(ds, 3)(_OracleNet(gts, 3)) == pytest.approx(1.0)
    # predict background everywhere -> IoU(bg) = bg pixels / all pixels, IoU(fg) = 0
    zeros = [np.zeros_like(g) for g in gts]
    allpix = sum(g.size for g in gts)
    bg = sum((g == 0).sum() for g in gts)
    assert make_val_fn(ds, 3)(_OracleNet(zeros, 3)) == pytest.approx((bg / allpix) / 3)
    # max_images limits the images visited: only image 0, predicted as all background
    oracle = _OracleNet(zeros, 3)
    g0 = gts[0]
    n_fg = len(set(np.unique(g0).tolist()) - {0})
    assert make_val_fn(ds, 3, max_images=1)(oracle) == pytest.approx(((g0 == 0).mean()) / (1 + n_fg))
    assert oracle.i == 1


def test_train_sipe_end_to_end_through_the_cli(tmp_path, capsys):
    from sipe.cli import main

    split = _write_voc(tmp_path / "voc", 8)
    run = tmp_path / "run"
    args = [
        "train", "--out", str(run),
        f"data.root={tmp_path / 'voc'}", f"data.split={split}", f"data.val_split={split}", "data.val_max_images=2",
        f"data.class_names=[{', '.join(CLASSES)}]", "model.backbone=resnet18", "model.weights=null",
        "model.num_classes=null", "aug.resize_long=[48, 80]", "aug.crop_size=64", "engine.batch_size=4",
        "engine.epochs=1", "engine.num_workers=0", "engine.progress=false", "engine.device=cpu",
    ]  # fmt: skip
    assert main(args) == 0
    final = run / "checkpoints" / "final.pt"
    assert f"checkpoint: {final}" in capsys.readouterr().out
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.pt", "final.pt"]  # no last.pt
    assert (run / "run_info.json").is_file()
    cfg = load_config(SIPETrainConfig, run / "config.yaml")
    assert cfg.model.backbone == "resnet18" and cfg.aug.crop_size == 64 and cfg.data.class_names == CLASSES
    ck = torch.load(final, weights_only=False)
    assert ck["step"] == 2 and ck["meta"]["class_names"] == ["background", *CLASSES]
    assert ck["meta"]["num_classes"] == 3 and ck["meta"]["backbone"] == "resnet18"
    assert ck["meta"]["sipe_config"]["aug"]["crop_size"] == 64
    best = torch.load(run / "checkpoints" / "best.pt", weights_only=False)
    assert 0.0 <= best["score"] <= 1.0
    model = build_sipe("resnet18", 3)
    model.load_state_dict(ck["model"])  # a checkpoint loads back into a fresh model

    # --no-resume reaches the engine config; a typo is a clear error with exit status 2
    assert main([*args, "--no-resume", "--print-config"]) == 0
    assert "resume: false" in capsys.readouterr().out
    assert main([*args, "engine.lrr=1"]) == 2
    assert "unknown config key 'engine.lrr'" in capsys.readouterr().err
    assert main([*args[:3], "data.root=" + str(tmp_path / "missing"), *args[4:]]) == 1
    assert "missing" in capsys.readouterr().err


def test_train_config_defaults_are_the_official_recipe():
    cfg = SIPETrainConfig()
    e = cfg.engine
    assert (e.batch_size, e.epochs, e.lr, e.weight_decay, e.momentum, e.poly_power) == (16, 5, 0.1, 1e-4, 1e-4, 0.9)
    assert (e.clip_grad_norm, e.seed, cfg.new_lr_mult) == (1.0, 15, 10.0)
    assert (cfg.aug.resize_long, cfg.aug.crop_size, cfg.aug.flip) == ((320, 640), 512, True)
    with pytest.raises(ValueError, match="multiple of the network stride 16"):
        load_config(SIPETrainConfig, None, ["aug.crop_size=100"])
    root = Path(__file__).resolve().parents[1] / "configs"
    voc = load_config(SIPETrainConfig, root / "voc.yaml")
    coco = load_config(SIPETrainConfig, root / "coco.yaml")
    for loaded, k in ((voc, 21), (coco, 81)):
        assert loaded.model.num_classes == k and loaded.model.backbone == "resnet50"
        assert loaded.aug == cfg.aug and loaded.new_lr_mult == 10.0
        recipe = ("epochs", "batch_size", "lr", "weight_decay", "momentum", "poly_power", "clip_grad_norm", "seed")
        assert all(getattr(loaded.engine, f) == getattr(e, f) for f in recipe)
    assert (voc.data.kind, voc.data.split, voc.data.val_split) == ("voc", "train_aug", "train")
    assert (coco.data.kind, coco.data.split) == ("coco", "train")


@pytest.mark.slow
def test_torchrun_two_gloo_processes_train_the_single_process_model(tmp_path):
    """``torchrun --nproc_per_node 2 -m sipe train`` (gloo, CPU) ends with the single-process weights."""
    import os
    import subprocess
    import sys

    from sipe.cli import main

    split = _write_voc(tmp_path / "voc", 8)
    common = [
        f"data.root={tmp_path / 'voc'}", f"data.split={split}", "data.val_split=null",
        f"data.class_names=[{', '.join(CLASSES)}]", "model.backbone=resnet18", "model.weights=null",
        "aug.resize_long=[48, 80]", "aug.crop_size=64", "engine.batch_size=4", "engine.epochs=2",
        "engine.num_workers=0", "engine.progress=false", "engine.device=cpu",
    ]  # fmt: skip
    assert main(["train", "--out", str(tmp_path / "single"), *common]) == 0
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           "-m", "sipe", "train", "--out", str(tmp_path / "ddp"), *common]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a = torch.load(tmp_path / "single" / "checkpoints" / "final.pt", weights_only=False)
    b = torch.load(tmp_path / "ddp" / "checkpoints" / "final.pt", weights_only=False)
    assert a["step"] == b["step"] == 4
    for k in a["model"]:
        torch.testing.assert_close(b["model"][k], a["model"][k], atol=1e-5, rtol=0, msg=k)


