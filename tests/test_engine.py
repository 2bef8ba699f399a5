"""The training engine on a toy problem: learning, poly lr, checkpoints, resume, DDP parity."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from helpers import free_port
from sipe.engine import SeededBatchSampler, TrainConfig, fit, poly_lr, sample_seed


class ToySet(torch.utils.data.Dataset):
    """Two classes of 8x8 images (bright left half vs bright right half) plus seeded noise."""

    def __init__(self, n: int = 24):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, item: tuple[int, int]) -> dict:
        index, seed = item
        rng = np.random.default_rng(seed)
        y = index % 2
        x = np.zeros((1, 8, 8), np.float32)
        x[:, :, (4 if y else 0) : (8 if y else 4)] = 1.0
        x += rng.normal(0, 0.3, x.shape).astype(np.float32)
        return {"x": torch.from_numpy(x), "y": torch.tensor(y), "index": torch.tensor(index)}


class ToyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.head = nn.Linear(4 * 8 * 8, 2)
        self.frozen = nn.Linear(2, 2)  # never used, never trained: like SIPE's frozen stem
        self.frozen.requires_grad_(False)

    def forward(self, x):
        return self.head(torch.relu(self.conv(x)).flatten(1))


def toy_step(model, batch):
    logits = model(batch["x"])
    loss = nn.functional.cross_entropy(logits, batch["y"])
    return {"loss": loss, "acc": (logits.argmax(1) == batch["y"]).float().mean()}


def toy_groups(model):
    return [
        {"params": list(model.conv.parameters()), "lr_mult": 1.0},
        {"params": list(model.head.parameters()) + list(model.frozen.parameters()), "lr_mult": 10.0},
    ]


def _cfg(**kw) -> TrainConfig:
    base = dict(epochs=2, batch_size=4, lr=0.05, num_workers=0, log_every=1, device="cpu", progress=False)
    base.update(kw)
    return TrainConfig(**base)


def _run(out: Path, cfg: TrainConfig, seed: int = 0, n: int = 24, **kw) -> nn.Module:
    torch.manual_seed(seed)
    model = ToyNet()
    return fit(model, ToySet(n), toy_step, toy_groups(model), cfg, out, **kw)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=False)["model"]


def _scalars(tb_dir: Path, tag: str) -> dict[int, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb_dir))
    acc.Reload()
    return {e.step: e.value for e in acc.Scalars(tag)}


def test_sampler_shards_union_equals_global_batch():
    single = SeededBatchSampler(10, 4, seed=3)
    ranks = [SeededBatchSampler(10, 4, seed=3, rank=r, world_size=2) for r in range(2)]
    for epoch in (0, 1):
        for s in (single, *ranks):
            s.set_epoch(epoch)
        full = list(single)
        shards = [list(r) for r in ranks]
        assert len(full) == 2  # 10 // 4, tail dropped
        for i, batch in enumerate(full):
            assert shards[0][i] + shards[1][i] == batch
            assert batch == single.global_batch(epoch, i)
            assert all(seed == sample_seed(3, epoch, idx) for idx, seed in batch)
    single.set_epoch(0)
    e0 = [i for b in single for i, _ in b]
    single.set_epoch(1)
    e1 = [i for b in single for i, _ in b]
    assert len(set(e0)) == 8 and e0 != e1  # a new permutation each epoch, no repeats within one
    single.set_epoch(1, start_batch=1)
    assert list(single) == [single.global_batch(1, 1)]
    with pytest.raises(ValueError, match="divisible"):
        SeededBatchSampler(10, 3, seed=0, world_size=2)
    with pytest.raises(ValueError, match="fewer than one global batch"):
        SeededBatchSampler(3, 4, seed=0)


def test_poly_lr_values():
    assert poly_lr(0.1, 0, 100) == pytest.approx(0.1)
    assert poly_lr(0.1, 50, 100) == pytest.approx(0.1 * 0.5**0.9)
    assert poly_lr(0.1, 99, 100) == pytest.approx(0.1 * 0.01**0.9)
    assert poly_lr(0.1, 100, 100) == 0.0


def test_loss_falls_lr_logged_and_checkpoints(tmp_path):
    cfg = _cfg(epochs=4, batch_size=4, lr=0.05)
    model = _run(tmp_path, cfg)
    ckpt_dir = tmp_path / "checkpoints"
    # One checkpoint per finished run (last.pt removed once final.pt is written), no temp files left.
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["final.pt"]
    loss = _scalars(tmp_path / "tb", "train/loss")
    max_steps = 4 * (24 // 4)
    assert sorted(loss) == list(range(1, max_steps + 1))
    first = np.mean([loss[s] for s in range(1, 4)])
    last = np.mean([loss[s] for s in range(max_steps - 2, max_steps + 1)])
    assert last < 0.5 * first, (first, last)
    # TensorBoard lr at x = s is the lr used by step s-1 (0-based): base * (1 - (s-1)/max) ** 0.9.
    lrs = _scalars(tmp_path / "tb", "train/lr")
    for s in (1, 7, max_steps):
        assert lrs[s] == pytest.approx(poly_lr(0.05, s - 1, max_steps), rel=1e-6)
    assert "train/acc" in _EventTags(tmp_path / "tb")

    # The resumable state of a run stopped one step before its end.
    _run(tmp_path / "stopped", _cfg(epochs=4, batch_size=4, lr=0.05, stop_after=max_steps - 1))
    last_ck = torch.load(tmp_path / "stopped" / "checkpoints" / "last.pt", weights_only=False)
    assert {"model", "optimizer", "scaler", "step", "epoch", "config", "max_steps"} <= set(last_ck)
    assert last_ck["step"] == max_steps - 1 and last_ck["config"]["batch_size"] == 4
    groups = last_ck["optimizer"]["param_groups"]
    assert [g["lr_mult"] for g in groups] == [1.0, 10.0]
    assert groups[1]["lr"] == pytest.approx(10 * poly_lr(0.05, max_steps - 2, max_steps))
    assert groups[0]["momentum"] == pytest.approx(1e-4) and groups[0]["weight_decay"] == pytest.approx(1e-4)
    # frozen params are not handed to the optimiser and stay untouched
    assert len(groups[1]["params"]) == 2
    final = torch.load(ckpt_dir / "final.pt", weights_only=False)
    assert final["step"] == max_steps and "optimizer" not in final
    for k, v in model.state_dict().items():
        assert torch.equal(final["model"][k], v)


def test_curves_start_at_step_one_and_a_finished_rerun_trains_nothing(tmp_path):
    cfg = _cfg(epochs=2, log_every=5)  # 12 steps: logged at 1, 5, 10 and the last
    _run(tmp_path, cfg)
    assert sorted(_scalars(tmp_path / "tb", "train/loss")) == [1, 5, 10, 12]
    final = tmp_path / "checkpoints" / "final.pt"
    before = _weights(final)
    calls = []
    model = _fit_with(tmp_path, cfg, lambda m, b: calls.append(1) or toy_step(m, b))
    assert calls == [] and sorted(p.name for p in final.parent.iterdir()) == ["final.pt"]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the run's weights, loaded
    with pytest.raises(ValueError, match="plans 12 steps, this run 24"):  # a longer plan is another run
        _run(tmp_path, _cfg(epochs=4, log_every=5))


def _EventTags(tb_dir: Path) -> list[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb_dir))
    acc.Reload()
    return acc.Tags()["scalars"]


def test_interrupted_and_resumed_run_equals_uninterrupted(tmp_path):
    # 24 samples, batch 4 -> 6 steps per epoch; interrupt mid-epoch 2 (after 8 steps) with a
    # checkpoint every 4 steps, once more at step 9, and use a worker process for the data.
    cfg = _cfg(epochs=3, ckpt_every=4, num_workers=1)
    _run(tmp_path / "full", cfg)

    part = tmp_path / "part"
    _run(part, _cfg(epochs=3, ckpt_every=4, num_workers=1, stop_after=9))
    ck = torch.load(part / "checkpoints" / "last.pt", weights_only=False)
    assert ck["step"] == 9 and ck["epoch"] == 1 and ck["batch_in_epoch"] == 3
    assert not (part / "checkpoints" / "final.pt").exists()
    # resumed with a different initialisation seed: everything must come from the checkpoint
    _run(part, cfg, seed=123)

    a, b = _weights(tmp_path / "full" / "checkpoints" / "final.pt"), _weights(part / "checkpoints" / "final.pt")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # and the run did change the weights (the comparison is not vacuous)
    torch.manual_seed(0)
    init = ToyNet().state_dict()
    assert not torch.equal(init["conv.weight"], a["conv.weight"])


def test_resume_refuses_a_changed_batch_size(tmp_path):
    _run(tmp_path, _cfg(epochs=1, stop_after=2))
    with pytest.raises(ValueError, match="batch_size=4.*batch_size=8"):
        _run(tmp_path, _cfg(epochs=1, batch_size=8))


def test_checkpoint_write_failure_keeps_previous_checkpoint(tmp_path, monkeypatch):
    _run(tmp_path, _cfg(epochs=1, stop_after=2))  # last.pt at step 2
    real_save = torch.save

    def broken_save(obj, f, *a, **k):
        f.write(b"partial garbage")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        _run(tmp_path, _cfg(epochs=1, ckpt_every=1))
    monkeypatch.setattr(torch, "save", real_save)
    ckpt_dir = tmp_path / "checkpoints"
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["last.pt"]
    assert torch.load(ckpt_dir / "last.pt", weights_only=False)["step"] == 2


def test_validation_selects_best_checkpoint(tmp_path):
    scores = iter([0.3, 0.9, 0.5])
    seen_steps = []

    def val_fn(model):
        assert not model.training and not isinstance(model, nn.parallel.DistributedDataParallel)
        seen_steps.append(1)
        return next(scores)

    _run(tmp_path, _cfg(epochs=3), val_fn=val_fn)
    best = torch.load(tmp_path / "checkpoints" / "best.pt", weights_only=False)
    assert best["score"] == pytest.approx(0.9) and best["step"] == 12  # end of epoch 2 (6 steps each)
    assert len(seen_steps) == 3


def _ddp_worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    try:
        model = _run(Path(out), _cfg(epochs=2, batch_size=4), seed=rank)  # DDP must broadcast rank 0's init
        torch.save(model.state_dict(), Path(out) / f"rank{rank}.pt")
    finally:
        torch.distributed.destroy_process_group()


def test_ddp_two_gloo_processes_match_single_process(tmp_path):
    _run(tmp_path / "single", _cfg(epochs=2, batch_size=4), seed=0)
    ddp = tmp_path / "ddp"
    mp.spawn(_ddp_worker, args=(2, free_port(), str(ddp)), nprocs=2, join=True)
    single = _weights(tmp_path / "single" / "checkpoints" / "final.pt")
    r0 = torch.load(ddp / "rank0.pt", weights_only=False)
    r1 = torch.load(ddp / "rank1.pt", weights_only=False)
    for k in single:
        assert torch.equal(r0[k], r1[k]), k  # every rank ends with the same model
        torch.testing.assert_close(r0[k], single[k], atol=1e-5, rtol=0)
    torch.manual_seed(0)
    assert not torch.allclose(ToyNet().state_dict()["head.weight"], single["head.weight"], atol=1e-3)


def test_non_finite_loss_stops_with_a_clear_error(tmp_path):
    def nan_after_3(model, batch):
        out = toy_step(model, batch)
        nan_after_3.calls += 1
        if nan_after_3.calls > 3:
            out["loss"] = out["loss"] * float("nan")
        return out

    nan_after_3.calls = 0
    torch.manual_seed(0)
    model = ToyNet()
    cfg = _cfg(epochs=2, ckpt_every=2, log_every=2)
    with pytest.raises(FloatingPointError, match=r"not finite in 1 of the last 2 .* up to step 4; lower engine.lr"):
        fit(model, ToySet(), nan_after_3, toy_groups(model), cfg, tmp_path)
    ck = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=False)
    assert ck["step"] == 2 and all(torch.isfinite(v).all() for v in ck["model"].values())


def _step_then(at_call: int, action):
    """``toy_step`` that runs ``action()`` on its ``at_call``-th call (1-based; calls of this process)."""
    calls = {"n": 0}

    def step(model, batch):
        calls["n"] += 1
        if calls["n"] == at_call:
            action()
        return toy_step(model, batch)

    return step


def _fit_with(out: Path, cfg: TrainConfig, step_fn) -> nn.Module:
    torch.manual_seed(0)
    model = ToyNet()
    return fit(model, ToySet(24), step_fn, toy_groups(model), cfg, out)


def _same_final(a: Path, b: Path) -> None:
    wa, wb = _weights(a / "checkpoints" / "final.pt"), _weights(b / "checkpoints" / "final.pt")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def _interrupt():
    raise KeyboardInterrupt


def test_keyboard_interrupt_mid_epoch_saves_last_and_resumes_exactly(tmp_path, capsys):
    # 6 steps per epoch, last.pt only at epoch ends: Ctrl-C during step 9 (mid-epoch 2) must not lose steps 7-8.
    cfg = _cfg(epochs=3)
    _run(tmp_path / "full", cfg)
    part = tmp_path / "part"
    with pytest.raises(KeyboardInterrupt):
        _fit_with(part, cfg, _step_then(9, _interrupt))
    ck = torch.load(part / "checkpoints" / "last.pt", weights_only=False)
    assert (ck["step"], ck["epoch"], ck["batch_in_epoch"]) == (8, 1, 2)
    assert "interrupted at step 8/18" in capsys.readouterr().out
    assert not (part / "checkpoints" / "final.pt").exists()
    _run(part, cfg, seed=123)  # everything comes from last.pt
    _same_final(tmp_path / "full", part)


def test_sigterm_finishes_the_step_saves_last_and_resumes_exactly(tmp_path):
    import signal

    cfg = _cfg(epochs=2, num_workers=1)
    _run(tmp_path / "full", cfg)
    part = tmp_path / "part"
    # A real SIGTERM to this process in the middle of step 4's forward: the step completes, then the loop stops.
    with pytest.raises(KeyboardInterrupt, match="SIGTERM"):
        _fit_with(part, cfg, _step_then(4, lambda: os.kill(os.getpid(), signal.SIGTERM)))
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is removed again
    assert torch.load(part / "checkpoints" / "last.pt", weights_only=False)["step"] == 4
    _run(part, cfg, seed=7)
    _same_final(tmp_path / "full", part)


def test_time_based_checkpoint_keeps_work_of_a_crash(tmp_path):
    def crash():
        raise RuntimeError("power cut")

    for minutes, expected in ((0.0, None), (1e-9, 4)):  # off; then after every step
        out = tmp_path / f"m{minutes}"
        with pytest.raises(RuntimeError, match="power cut"):
            _fit_with(out, _cfg(epochs=1, ckpt_minutes=minutes), _step_then(5, crash))
        last = out / "checkpoints" / "last.pt"
        got = torch.load(last, weights_only=False)["step"] if last.exists() else None
        assert got == expected


def test_torchrun_env_is_the_one_reader_of_rank_and_world(monkeypatch):
    from sipe.engine import rank_and_world, torchrun_env

    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    assert torchrun_env() == (0, 1, 0) and torchrun_env().is_main
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert torchrun_env() == (3, 4, 3)  # LOCAL_RANK defaults to RANK (one machine)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert torchrun_env() == (3, 4, 1) and not torchrun_env().is_main
    assert rank_and_world() == (3, 4)
