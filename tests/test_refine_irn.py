"""IRN: network, losses, training through the engine (single process and DDP), pseudo labels."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from PIL import Image

from helpers import free_port, iou
from sipe.config.irn import IRNConfig, IRNEngineConfig
from sipe.engine import SeededBatchSampler
from sipe.io import save_label_png, save_npz, voc_palette
from sipe.refine.affinity import affinity_labels
from sipe.refine.irn import irn_losses
from sipe.refine.pseudo import irn_boundary, make_pseudo_labels, pseudo_label
from sipe.refine.train_irn import (
    IRNTrainSet,
    build_irn,
    estimate_mean_shift,
    load_irn,
    train_irn,
)

COLOURS = [(200, 40, 40), (40, 40, 200), (220, 220, 40)]


pytestmark = pytest.mark.usefixtures("one_thread")


def make_items(root: Path, n: int = 8, seed: int = 0) -> list[dict]:
    """Images with one coloured box each; confident labels (255 ring) and IS-CAMs written to disk."""
    rng = np.random.default_rng(seed)
    items = []
    for i in range(n):
        h, w = (int(v) for v in rng.integers(56, 90, 2))
        image = np.clip(rng.normal(0, 10, (h, w, 3)) + (60, 120, 60), 0, 255)
        y0, x0 = int(rng.integers(5, h // 2)), int(rng.integers(5, w // 2))
        y1, x1 = y0 + int(rng.integers(15, h // 2)), x0 + int(rng.integers(15, w // 2))
        c = int(rng.integers(1, 4))
        image[y0:y1, x0:x1] = COLOURS[c - 1]
        gt = np.zeros((h, w), np.uint8)
        gt[y0:y1, x0:x1] = c
        conf = gt.copy()
        ring = np.zeros((h, w), bool)
        ring[max(0, y0 - 3) : y1 + 3, max(0, x0 - 3) : x1 + 3] = True
        ring[y0 + 3 : y1 - 3, x0 + 3 : x1 - 3] = False
        conf[ring] = 255
        name = f"im{i}"
        save_label_png(root / "labels" / f"{name}.png", conf)
        fg = (gt > 0).astype(np.float32)
        save_npz(root / "cams" / f"{name}.npz", keys=np.array([0, c], np.int64),
                 maps=np.stack([1 - 0.8 * fg, 0.1 + 0.8 * fg]).astype(np.float16))
        items.append({"image": image.astype(np.uint8), "name": name, "gt": gt})
    return items


def _cfg(displacement: bool = True, **engine) -> IRNConfig:
    base = dict(epochs=2, batch_size=4, lr=0.1, momentum=1e-4, clip_grad_norm=None, num_workers=0,
                log_every=1, device="cpu", progress=False)
    base.update(engine)
    return IRNConfig(backbone="resnet18", weights=None, crop_size=64, radius=5, mean_batch_size=4,
                     displacement=displacement, engine=IRNEngineConfig(**base))


def test_irn_shapes_frozen_backbone_and_mean_shift() -> None:
    torch.manual_seed(0)
    model = build_irn("resnet18")
    assert not any(p.requires_grad for p in model.backbone.parameters())
    groups = model.param_groups()
    assert [g["lr_mult"] for g in groups] == [1.0, 10.0]
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert trainable == {id(p) for g in groups for p in g["params"]}
    model.train()
    assert model.edge1.training and not model.backbone.training
    x = torch.randn(2, 3, 64, 80)
    edge, disp = model(x)
    assert edge.shape == (2, 1, 16, 20) and disp.shape == (2, 2, 16, 20)
    model.eval()
    model.mean_shift.copy_(torch.tensor([1.5, -2.0]))
    _, disp_eval = model(x)
    torch.testing.assert_close(disp_eval, disp - torch.tensor([1.5, -2.0]).view(1, 2, 1, 1))


def test_official_resnet50_branch_sizes() -> None:
    model = build_irn("resnet50")
    n_edge = sum(p.numel() for p in model.param_groups()[0]["params"])
    n_dp = sum(p.numel() for p in model.param_groups()[1]["params"])
    assert (n_edge, n_dp) == (125_409, 1_269_120)


def test_irn_losses_hand_values() -> None:
    # Boundary logits -inf..+inf control the affinities exactly: no boundary -> aff 1.
    edge = torch.full((1, 1, 8, 12), -30.0)
    disp = torch.zeros(1, 2, 8, 12)
    label = torch.zeros(1, 8, 12, dtype=torch.long)
    label[:, :, 6:] = 1
    out = irn_losses(edge, disp, *affinity_labels(label, 3), radius=3)
    assert out["pos_bg"] < 1e-4 and out["pos_fg"] < 1e-4
    assert out["neg"] == pytest.approx(-np.log(1e-5), rel=1e-3)  # aff 1 on negative pairs
    assert out["dp_bg"] == 0
    # Zero displacement vs. target (dy, dx): mean |dy| + |dx| over fg pairs, halved.
    _, fg_pos, _ = affinity_labels(label, 3)
    from sipe.refine.affinity import pair_paths

    off = torch.as_tensor(pair_paths(3).offsets).abs().sum(1).float()
    expect = (fg_pos[0] * off[:, None, None]).sum() / (2 * fg_pos.sum())
    assert out["dp_fg"] == pytest.approx(float(expect), rel=1e-5)
    total = (out["pos_bg"] / 2 + out["pos_fg"] / 2 + out["neg"]) / 2 + (out["dp_fg"] + out["dp_bg"]) / 2
    assert float(out["loss"]) == pytest.approx(float(total), rel=1e-6)


def test_train_set_reduces_labels_to_the_pair_grid(tmp_path) -> None:
    items = make_items(tmp_path, n=2)
    data = IRNTrainSet(items, tmp_path / "labels", _cfg())
    a, b = data[(0, 123)], data[(0, 123)]
    assert a["image"].shape == (3, 64, 64) and a["label"].shape == (16, 16)
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
    assert set(torch.unique(a["label"]).tolist()) <= {0, 1, 2, 3, 255}
    with pytest.raises(FileNotFoundError, match="sipe refine crf-regions"):
        IRNTrainSet([{"image": items[0]["image"], "name": "nope"}], tmp_path / "labels", _cfg())[(0, 1)]


def test_irn_losses_fall_and_model_saved_with_mean_shift(tmp_path) -> None:
    items = make_items(tmp_path)
    losses: list[float] = []
    import sipe.refine.train_irn as tr

    real_step = tr.irn_step

    def recording_step(model, batch, radius=10):
        out = real_step(model, batch, radius)
        losses.append(float(out["loss"].detach()))
        return out

    tr.irn_step = recording_step
    try:
        torch.manual_seed(0)
        path = train_irn(items, tmp_path / "labels", tmp_path / "run", _cfg(epochs=8))
    finally:
        tr.irn_step = real_step
    assert len(losses) == 16
    assert np.mean(losses[-4:]) < 0.8 * np.mean(losses[:4]), losses
    assert (tmp_path / "run" / "checkpoints" / "final.pt").is_file()
    assert (tmp_path / "run" / "config.yaml").is_file()
    assert path == tmp_path / "run" / "irn.pt"
    model = load_irn(path)
    # The stored mean shift is the mean raw displacement over the images (top-left crops).
    assert model.mean_shift.abs().sum() > 0
    raw = model.mean_shift.clone()
    assert torch.allclose(estimate_mean_shift(model, items, crop_size=64, num_workers=0), raw, atol=1e-5)
    loaded = load_irn(tmp_path / "run" / "irn.pt")
    torch.testing.assert_close(loaded.mean_shift, raw)
    x = torch.randn(1, 3, 64, 64)
    model.eval()
    loaded.eval()
    torch.testing.assert_close(loaded(x)[1], model(x)[1])


def test_without_the_displacement_branch_the_boundary_branch_and_pseudo_labels_are_the_same(tmp_path) -> None:
    items = make_items(tmp_path)
    paths = {}
    for flag in (True, False):
        torch.manual_seed(0)
        paths[flag] = train_irn(items, tmp_path / "labels", tmp_path / f"run_{flag}", _cfg(displacement=flag))
    full, lean = load_irn(paths[True]), load_irn(paths[False])
    assert full.displacement and not lean.displacement
    assert not any(k.startswith("dp") for k in lean.state_dict())
    fresh = build_irn("resnet18", displacement=False)
    edge_keys = [k for k in full.state_dict() if k.startswith("edge")]
    assert edge_keys and not torch.equal(fresh.state_dict()["edge_out.weight"], lean.state_dict()["edge_out.weight"])
    for k in edge_keys:
        assert torch.equal(full.state_dict()[k], lean.state_dict()[k]), k
    assert "mean_shift" not in lean.state_dict() and full.mean_shift.abs().sum() > 0
    assert [g["lr_mult"] for g in lean.param_groups()] == [1.0]
    x = torch.randn(1, 3, 64, 64)
    full.eval()
    lean.eval()
    edge, disp = lean(x)
    assert disp is None and torch.equal(edge, full(x)[0]) and torch.equal(lean.boundary(x), edge)
    for flag, model in ((True, full), (False, lean)):
        make_pseudo_labels(model, items, tmp_path / "cams", tmp_path / f"pseudo_{flag}")
    for item in items:
        name = f"{item['name']}.png"
        assert np.array_equal(np.asarray(Image.open(tmp_path / "pseudo_True" / name)),
                              np.asarray(Image.open(tmp_path / "pseudo_False" / name)))
    label = torch.from_numpy(items[0]["gt"][:64:4, :64:4].copy())[None]
    terms = irn_losses(torch.zeros(1, 1, *label.shape[-2:]), None, *affinity_labels(label, 5), radius=5)
    assert set(terms) == {"loss", "pos_bg", "pos_fg", "neg"}  # nothing logged for a branch that is not there
    with pytest.raises(ValueError, match="no displacement branch"):
        estimate_mean_shift(lean, items, crop_size=64, num_workers=0)
    with pytest.raises(ValueError, match="displacement=True"):
        train_irn(items, tmp_path / "labels", tmp_path / "mismatch", _cfg(displacement=False), model=full)


def test_the_irn_starts_the_same_whatever_ran_before_it(tmp_path) -> None:
    items = make_items(tmp_path, n=4)
    states = []
    for seed in (0, 1):
        torch.manual_seed(seed)  # another history of the process: e.g. a run resumed at this stage
        path = train_irn(items, tmp_path / "labels", tmp_path / f"run{seed}", _cfg(displacement=False, epochs=1))
        states.append(load_irn(path).state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def _ddp_worker(rank: int, world: int, port: int, root: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    try:
        items = make_items(Path(root) / f"data{rank}")
        torch.manual_seed(rank)  # DDP must broadcast rank 0's initial branches
        train_irn(items, Path(root) / f"data{rank}" / "labels", Path(root) / "ddp", _cfg())
    finally:
        torch.distributed.destroy_process_group()


def test_ddp_irn_matches_single_process(tmp_path) -> None:
    items = make_items(tmp_path / "single")
    torch.manual_seed(0)
    train_irn(items, tmp_path / "single" / "labels", tmp_path / "single" / "run", _cfg())
    mp.spawn(_ddp_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    single = torch.load(tmp_path / "single" / "run" / "irn.pt", weights_only=False)["model"]
    ddp = torch.load(tmp_path / "ddp" / "irn.pt", weights_only=False)["model"]
    for k in single:
        torch.testing.assert_close(ddp[k], single[k], atol=2e-5, rtol=1e-4, msg=k)
    torch.manual_seed(0)
    fresh = build_irn("resnet18").state_dict()
    assert not torch.allclose(fresh["edge_out.weight"], single["edge_out.weight"], atol=1e-4)

    # The ranks of the first step see different pair counts, so averaging per-rank means (what
    # a naive DDP port of the official loss does) would give a different gradient.
    data = IRNTrainSet(items, tmp_path / "single" / "labels", _cfg())
    batch = [data[i] for i in SeededBatchSampler(len(items), 4, 15).global_batch(0, 0)]
    image = torch.stack([b["image"] for b in batch])
    label = torch.stack([b["label"] for b in batch])
    torch.manual_seed(0)
    model = build_irn("resnet18").train()

    def grad(parts: list[slice]) -> torch.Tensor:
        model.zero_grad()
        for part in parts:
            edge, disp = model(image[part])
            loss = irn_losses(edge, disp, *affinity_labels(label[part], 5), radius=5)["loss"]
            (loss / len(parts)).backward()
        return model.edge_out.weight.grad.clone()

    counts = [affinity_labels(label[s], 5)[1].sum().item() for s in (slice(0, 2), slice(2, 4))]
    assert counts[0] != counts[1]
    assert not torch.allclose(grad([slice(0, 4)]), grad([slice(0, 2), slice(2, 4)]), rtol=1e-3, atol=0)


def _gt_boundary(gt: np.ndarray) -> torch.Tensor:
    """(1, h/4, w/4) boundary map: 1 on the background cells of the stride-4 grid next to the box."""
    g = torch.from_numpy(gt[::4, ::4].astype(np.float32))[None, None]
    near = torch.nn.functional.max_pool2d(g, 3, 1, 1) > 0
    return (near & (g == 0)).float()[0]


def _partial_cams(gt: np.ndarray) -> np.ndarray:
    """A CAM-like (2, H, W) score: background low on the box, the class only on its central part."""
    ys, xs = np.nonzero(gt)
    core = np.zeros(gt.shape, np.float32)
    dy, dx = (ys.max() - ys.min()) // 4, (xs.max() - xs.min()) // 4
    core[ys.min() + dy : ys.max() - dy, xs.min() + dx : xs.max() - dx] = 1

    def blur(m: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(m.astype(np.float32))[None, None]
        return torch.nn.functional.avg_pool2d(t, 5, 1, 2, count_include_pad=False)[0, 0].numpy()

    return np.stack([1 - 0.8 * blur(gt > 0), blur(core)])


def test_pseudo_labels_follow_boundaries_palette_and_resume(tmp_path, monkeypatch) -> None:
    import sipe.refine.pseudo as pseudo

    items = make_items(tmp_path, n=3)
    # Boundaries from the ground truth stand in for a trained IRN; the rest is the real pipeline.
    by_image = {id(item["image"]): item["gt"] for item in items}
    monkeypatch.setattr(pseudo, "irn_boundary", lambda model, image, canvas=0: _gt_boundary(by_image[id(image)]))
    # The IS-CAMs on disk cover only the middle of each box, so their argmax misses its edges.
    for item in items:
        keys = np.array([0, int(item["gt"].max())], np.int64)
        save_npz(tmp_path / "cams" / f"{item['name']}.npz", keys=keys,
                 maps=_partial_cams(item["gt"]).astype(np.float16))
    model = build_irn("resnet18")
    stats = make_pseudo_labels(model, items, tmp_path / "cams", tmp_path / "pseudo")
    assert (stats.written, stats.skipped) == (3, 0)
    for item in items:
        png = Image.open(tmp_path / "pseudo" / f"{item['name']}.png")
        assert png.mode == "P"
        assert np.array_equal(np.asarray(png.getpalette(), np.uint8).reshape(-1, 3)[:21], voc_palette()[:21])
        label = np.asarray(png)
        assert label.shape == item["gt"].shape
        assert set(np.unique(label)) == set(np.unique(item["gt"]))
        obj = item["gt"] > 0
        before = _partial_cams(item["gt"]).argmax(0) > 0
        # The walk fills the box up to its boundary (at stride-4 precision).
        assert (label[obj] == item["gt"][obj]).mean() > 0.95
        assert iou(label > 0, obj) > iou(before, obj) + 0.2
    again = make_pseudo_labels(model, items, tmp_path / "cams", tmp_path / "pseudo")
    assert (again.written, again.skipped) == (0, 3)


def test_boundary_undoes_the_flip_and_takes_any_size() -> None:
    torch.manual_seed(0)
    model = build_irn("resnet18")
    image = np.random.default_rng(0).integers(0, 255, (50, 64, 3), dtype=np.uint8)
    edge = irn_boundary(model, image)
    assert edge.shape == (1, 13, 16)
    torch.testing.assert_close(irn_boundary(model, np.ascontiguousarray(image[:, ::-1])), edge.flip(-1))
    odd = np.random.default_rng(1).integers(0, 255, (37, 91, 3), dtype=np.uint8)  # pads to 48 x 96
    assert irn_boundary(model, odd).shape == (1, 10, 23)
    keys, maps = np.array([0, 4]), np.random.default_rng(2).random((2, 37, 91)).astype(np.float32)
    label = pseudo_label(model, odd, keys, maps)
    assert label.shape == (37, 91) and set(np.unique(label)) <= {0, 4}
