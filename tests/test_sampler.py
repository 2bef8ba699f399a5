"""Class-aware (repeat-factor) sampling: the rule, determinism, DDP shards, and the plain sampler unchanged."""

from __future__ import annotations

import numpy as np
import pytest

from sipe.engine.sampler import SeededBatchSampler, repeat_factors


def test_repeat_factors_follow_the_lvis_rule():
    # class 0 in 8 of 10 images, class 1 in 1 of 10; image 9 has no class
    labels = np.zeros((10, 2), bool)
    labels[:8, 0] = True
    labels[8, 1] = True
    r = repeat_factors(labels, threshold=0.4)
    assert r[:8] == pytest.approx(1.0)  # frequent class: never below 1
    assert r[8] == pytest.approx(np.sqrt(0.4 / 0.1))
    assert r[9] == 1.0
    # an image holding both takes the larger factor
    labels[0, 1] = True
    assert repeat_factors(labels, 0.4)[0] == pytest.approx(np.sqrt(0.4 / 0.2))


def test_repeat_factors_refuse_bad_input():
    with pytest.raises(ValueError, match="threshold"):
        repeat_factors(np.ones((3, 2)), 0.0)
    with pytest.raises(ValueError, match=r"\(N, C\)"):
        repeat_factors(np.ones(3), 0.3)


def test_uniform_sampler_is_the_old_permutation():
    s = SeededBatchSampler(10, 5, seed=3)
    perm = np.random.default_rng([3, 0]).permutation(10)
    assert [j for j, _ in s.global_batch(0, 0)] == list(perm[:5])


def test_weighted_sampler_oversamples_and_is_deterministic():
    n = 200
    labels = np.zeros((n, 2), bool)
    labels[:190, 0] = True
    labels[190:, 1] = True  # 5 % rare
    w = repeat_factors(labels, 0.5)
    s = SeededBatchSampler(n, 10, seed=0, weights=w)
    picks = np.concatenate([s.order(e) for e in range(20)])
    rare = np.isin(picks, np.arange(190, 200)).mean()
    expected = w[190:].sum() / w.sum()
    assert rare == pytest.approx(expected, abs=0.02) and rare > 0.12  # uniform would be 0.05
    again = SeededBatchSampler(n, 10, seed=0, weights=w)
    assert again.global_batch(3, 2) == s.global_batch(3, 2)
    assert SeededBatchSampler(n, 10, seed=1, weights=w).global_batch(3, 2) != s.global_batch(3, 2)


def test_weighted_draws_of_one_item_get_different_seeds():
    s = SeededBatchSampler(4, 4, seed=0, weights=[1, 0, 0, 0])
    batch = s.global_batch(0, 0)
    assert {j for j, _ in batch} == {0}
    assert len({seed for _, seed in batch}) == 4  # four crops, not four copies


def test_weighted_ranks_split_the_single_process_batch():
    w = np.linspace(1, 3, 24)
    single = SeededBatchSampler(24, 8, seed=5, weights=w)
    single.set_epoch(2)
    ranks = [SeededBatchSampler(24, 8, seed=5, rank=r, world_size=2, weights=w) for r in range(2)]
    for r in ranks:
        r.set_epoch(2)
    for whole, a, b in zip(single, *ranks, strict=True):
        assert a + b == whole
    resumed = SeededBatchSampler(24, 8, seed=5, weights=w)
    resumed.set_epoch(2, start_batch=1)
    assert list(resumed) == list(single)[1:]


def test_weights_must_fit_the_dataset():
    with pytest.raises(ValueError, match="sampling weights"):
        SeededBatchSampler(4, 2, seed=0, weights=[1, 1, 1])
    with pytest.raises(ValueError, match="sampling weights"):
        SeededBatchSampler(4, 2, seed=0, weights=[0, 0, 0, 0])


def test_seg_training_hands_repeat_factors_to_the_engine(tmp_path, monkeypatch):
    import shutil

    import sipe.seg.train as seg_train
    from sipe.config import from_dict
    from sipe.config.seg import SegTrainConfig
    from sipe.data import generate_synthetic

    root = generate_synthetic(tmp_path / "d", n_train=12, n_val=0, image_size=(40, 56), max_objects=1,
                              class_weights=(80, 10, 5, 5), progress=False)
    shutil.copytree(root / "SegmentationClass", tmp_path / "pseudo")
    seen = {}

    def fake_fit(model, train_set, *args, sample_weights=None, run_key=None, **kwargs):
        seen.update(weights=sample_weights, run_key=run_key, n=len(train_set))
        return model

    monkeypatch.setattr(seg_train, "fit", fake_fit)
    cfg = from_dict(SegTrainConfig, {
        "pseudo_labels": str(tmp_path / "pseudo"), "sampling": "repeat_factor",
        "data": {"kind": "synthetic", "root": str(root), "split": "train"},
        "model": {"backbone": "resnet18", "weights": None, "output_stride": 16},
        "engine": {"batch_size": 4, "num_workers": 0, "progress": False}})
    seg_train.train_seg(cfg, tmp_path / "out")
    w = np.asarray(seen["weights"])
    assert w.shape == (seen["n"],) and w.min() == 1.0 and w.max() > 1.0
    assert seen["run_key"]["sampling"] == "repeat_factor 0.3"
    cfg.sampling = "uniform"
    seg_train.train_seg(cfg, tmp_path / "out2")
    assert seen["weights"] is None and "sampling" not in seen["run_key"]
