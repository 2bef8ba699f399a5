"""The data fingerprint and the plan derived from it (sipe.run.plan): rules, explicit keys win, recipes
keep the paper's values; the skewed synthetic set; the warning for classes without an image."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from sipe.run.config import RunConfig
from sipe.run.plan import derive_plan, explicit_keys, fingerprint_of

ROOT = Path(__file__).resolve().parents[1]


def _skewed(n: int = 100) -> np.ndarray:
    labels = np.zeros((n, 4), bool)
    labels[: int(0.6 * n), 0] = True
    labels[int(0.6 * n): int(0.8 * n), 1] = True
    labels[int(0.8 * n): int(0.9 * n), 2] = True
    labels[int(0.9 * n): int(0.95 * n), 3] = True
    return labels


def test_fingerprint_counts_images_sizes_and_pixels():
    fp = fingerprint_of(_skewed(), [(300, 400)] * 99 + ["unreadable"], ["a", "b", "c", "d"], [30, 10, 5, 5])
    assert fp.images_per_class == [60, 20, 10, 5] and fp.negatives == 5
    assert fp.imbalance == pytest.approx(12.0)
    assert fp.median_size == (300, 400)
    assert fp.pixel_share == [0.6, 0.2, 0.1, 0.1]
    assert fingerprint_of(np.zeros((2, 2)), [None, None], ["a", "b"]).empty_classes == ["a", "b"]


def test_skewed_folder_gets_repeat_factor_sampling_and_rules():
    fp = fingerprint_of(_skewed(), [(300, 400)] * 100, ["a", "b", "c", "d"])
    cfg, rules = derive_plan(RunConfig(), fp)
    assert cfg.seg.sampling == "repeat_factor"
    assert cfg.seg.aug.crop_size == 304  # shorter side 300 rounded up to 16
    assert cfg.seg.engine.max_steps == 1000  # 30 epochs x 6 steps, raised to 2 x min_steps on a skewed folder
    assert cfg.seg.model.freeze_bn is True
    assert cfg.seg.loss_weighting == "inverse_sqrt_frequency"
    keys = {k for k, _, _ in rules}
    assert keys == {"seg.sampling", "seg.loss_weighting", "seg.aug.crop_size", "seg.engine.max_steps",
                    "seg.model.freeze_bn"}
    assert all(rule for _, _, rule in rules)
    assert "at least 2 x engine.min_steps=500 on a skewed folder" in dict((k, r) for k, _, r in rules)[
        "seg.engine.max_steps"]
    assert RunConfig().seg.sampling == "uniform"  # the input is not changed


def test_balanced_folder_keeps_uniform_sampling():
    labels = np.eye(4, dtype=bool)[np.arange(100) % 4]
    cfg, _ = derive_plan(RunConfig(), fingerprint_of(labels, [(96, 160)] * 100, list("abcd")))
    assert cfg.seg.sampling == "uniform" and cfg.seg.loss_weighting == "none"
    assert cfg.seg.aug.crop_size == 96
    assert cfg.seg.engine.max_steps == 500  # 30 epochs x 6 steps, raised to min_steps (balanced: no factor)


def test_skew_raises_only_the_floor_of_steps():
    """A folder large enough for its epochs to set the steps keeps them; min_steps=null has no floor."""
    fp = fingerprint_of(_skewed(4000), [(300, 400)] * 4000, list("abcd"))
    cfg, _ = derive_plan(RunConfig(), fp)
    assert cfg.seg.engine.max_steps == 30 * (4000 // 16)
    base = RunConfig()
    base.seg.engine.min_steps = None
    cfg, _ = derive_plan(base, fingerprint_of(_skewed(), [(300, 400)] * 100, list("abcd")))
    assert cfg.seg.engine.max_steps == 30 * 6


def test_explicit_keys_win(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("seg:\n  aug: {crop_size: 200}\n  engine: {epochs: 2}\n")
    explicit = explicit_keys(config, ["seg.sampling=uniform", "seg.model={freeze_bn: false}",
                                      "seg.loss_weighting=none"])
    assert {"seg.aug.crop_size", "seg.engine.epochs", "seg.sampling", "seg.model.freeze_bn"} <= explicit
    fp = fingerprint_of(_skewed(), [(300, 400)] * 100, list("abcd"))
    cfg, rules = derive_plan(RunConfig(), fp, explicit)
    assert {k for k, _, _ in rules} == set()  # every rule stood back
    assert cfg.seg.sampling == "uniform" and cfg.seg.aug.crop_size == 512 and cfg.seg.engine.max_steps is None
    # a whole section named explicitly keeps every key inside it
    _, rules = derive_plan(RunConfig(), fp, {"seg"})
    assert rules == []


@pytest.mark.parametrize("recipe", ["run_voc_paper.yaml", "run_coco_paper.yaml"])
def test_paper_recipes_keep_the_paper_values(recipe):
    from sipe.config import load_config

    path = ROOT / "configs" / recipe
    cfg = load_config(RunConfig, path)
    fp = fingerprint_of(_skewed(), [(300, 400)] * 100, list("abcd"))
    planned, rules = derive_plan(cfg, fp, explicit_keys(path))
    assert rules == []
    assert planned == cfg


def test_skewed_synthetic_set_follows_the_weights(tmp_path):
    from sipe.data import generate_synthetic
    from sipe.data.synthetic import SyntheticDataset

    root = generate_synthetic(tmp_path / "d", n_train=200, n_val=0, image_size=32, num_classes=4, max_objects=1,
                              class_weights=(60, 20, 10, 5), progress=False)
    ds = SyntheticDataset(root, "train")
    counts = np.stack([ds.get_labels(i) for i in range(len(ds))]).sum(axis=0)
    assert counts[0] > 2 * counts[1] > 2 * counts[3] > 0, counts
    with pytest.raises(ValueError, match="class_weights"):
        generate_synthetic(tmp_path / "e", n_train=2, n_val=0, num_classes=4, class_weights=(1, 2), progress=False)


def test_a_class_without_images_is_named_in_one_warning(tmp_path, caplog):
    from PIL import Image

    from sipe.data.custom import CustomDataset

    for i in range(3):
        Image.new("RGB", (32, 32)).save(tmp_path / f"im{i}.png")
    (tmp_path / "labels.csv").write_text("image,labels\nim0.png,cat\nim1.png,cat\nim2.png,\n")
    with caplog.at_level(logging.WARNING, logger="sipe.data"):
        CustomDataset(tmp_path, tmp_path / "labels.csv", class_names=["background", "cat", "cow", "sheep"])
    warned = [r.getMessage() for r in caplog.records if "no image" in r.getMessage()]
    assert len(warned) == 1 and "cow, sheep" in warned[0] and "class_names" in warned[0]


def test_print_config_shows_the_fingerprint_and_the_plan(tmp_path, capsys):
    import yaml
    from PIL import Image

    from sipe.cli import main

    rows = ["image,labels"]
    for i in range(10):
        Image.new("RGB", (80, 64), (i * 20, 90, 120)).save(tmp_path / f"im{i}.png")
        rows.append(f"im{i}.png,{'dog' if i == 0 else 'cat'}")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    args = ["run", "--out", str(tmp_path / "run"), "--print-config", "data.kind=custom", f"data.root={tmp_path}",
            "data.split=labels.csv", "train.engine.batch_size=2", "seg.engine.epochs=2"]
    assert main(args) == 0  # the default
    out = capsys.readouterr().out
    assert "# data fingerprint: 10 images" in out and "cat 9, dog 1" in out
    assert "# derived: seg.sampling=repeat_factor  (imbalance 9.0 >= 4" in out
    cfg = yaml.safe_load(out)
    assert cfg["seg"]["sampling"] == "repeat_factor" and cfg["seg"]["aug"]["crop_size"] == 64
    assert cfg["seg"]["loss_weighting"] == "inverse_sqrt_frequency"
    assert cfg["seg"]["engine"]["epochs"] == 2 and cfg["seg"]["engine"]["max_steps"] is None
    # plan=false: shown, not applied.
    assert main([*args, "plan=false"]) == 0
    out = capsys.readouterr().out
    assert "# derived: seg.sampling=repeat_factor" in out and "plan not applied (plan=false" in out
    cfg = yaml.safe_load(out)
    assert cfg["seg"]["sampling"] == "uniform" and cfg["seg"]["loss_weighting"] == "none" and cfg["plan"] is False


def test_the_run_names_classes_without_images_once_even_behind_a_quiet_logger(tmp_path, caplog):
    from PIL import Image

    from sipe.data.custom import CustomDataset, warn_classes_without_images

    for i in range(2):
        Image.new("RGB", (32, 32)).save(tmp_path / f"im{i}.png")
    (tmp_path / "labels.csv").write_text("image,labels\nim0.png,cat\nim1.png,cat\n")
    quiet = logging.getLogger("sipe.data")
    quiet.setLevel(logging.ERROR)  # as sipe.run.data holds back per-image warnings while it loads
    try:
        ds = CustomDataset(tmp_path, tmp_path / "labels.csv", class_names=["background", "cat", "cow"])
    finally:
        quiet.setLevel(logging.NOTSET)
    run_log = logging.getLogger("sipe.run")
    with caplog.at_level(logging.WARNING):
        assert warn_classes_without_images(ds, run_log) == ["cow"]
        warn_classes_without_images(ds, run_log)
        CustomDataset(tmp_path, tmp_path / "labels.csv", class_names=["background", "cat", "cow"])
    assert sum("no image" in r.getMessage() for r in caplog.records) == 1


def test_the_generated_set_gets_its_plan_before_it_is_written(tmp_path, capsys):
    """The demo's data do not exist when the run starts: the plan reads the labels and sizes drawn in memory,
    the same as those the data stage then writes; the skewed set gets the skewed rules, the demo none."""
    import yaml

    from sipe.cli import main
    from sipe.data import generate_synthetic
    from sipe.data.synthetic import SyntheticDataset
    from sipe.run.config import SyntheticSection
    from sipe.run.plan import dataset_fingerprint, synthetic_fingerprint

    section = SyntheticSection(seed=3, n_train=40, n_val=0, image_size=(40, 56), class_weights=(60, 20, 10, 5))
    drawn = synthetic_fingerprint(section)
    assert not any(tmp_path.iterdir())  # nothing written
    root = generate_synthetic(tmp_path / "d", seed=3, n_train=40, n_val=0, image_size=(40, 56), max_objects=2,
                              body_radius=section.body_radius, class_weights=(60, 20, 10, 5), progress=False)
    assert drawn == dataset_fingerprint(SyntheticDataset(root, "train"))
    assert drawn.imbalance >= 4

    args = ["demo", "--out", str(tmp_path / "run"), "--print-config", "synthetic.n_train=40"]
    assert main([*args, "synthetic.class_weights=[60,20,10,5]"]) == 0
    out = capsys.readouterr().out
    assert "# data fingerprint: 40 images" in out and "# derived: seg.sampling=repeat_factor" in out
    cfg = yaml.safe_load(out)
    assert cfg["seg"]["sampling"] == "repeat_factor" and cfg["seg"]["loss_weighting"] == "inverse_sqrt_frequency"
    assert cfg["seg"]["engine"]["max_steps"] is None  # configs/demo.yaml sets its steps: the rule stands back
    assert not (tmp_path / "run").exists()
    assert main(args) == 0  # the demo's balanced classes: the defaults
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["seg"]["sampling"] == "uniform" and cfg["seg"]["loss_weighting"] == "none"
