"""Configuration: defaults, YAML, overrides, errors, run metadata."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

import sipe
from sipe.config import ConfigError, from_dict, load_config, to_dict
from sipe.engine.run_info import save_run_info


@dataclass
class Inner:
    lr: float = 0.1
    steps: int | None = None
    size: tuple[int, int] = (320, 640)
    amp: bool = False


@dataclass
class Outer:
    name: str = "voc"
    inner: Inner = field(default_factory=Inner)
    tags: list[str] = field(default_factory=list)


def _yaml(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "cfg.yaml"
    p.write_text(text)
    return p


def test_defaults_then_yaml_then_overrides(tmp_path):
    assert load_config(Outer) == Outer()
    p = _yaml(tmp_path, "name: coco\ninner:\n  lr: 1e-4\n  size: [256, 512]\n")
    cfg = load_config(Outer, p)
    # "1e-4" is a string to YAML 1.1; a float field still reads it as a number
    assert cfg.inner.lr == pytest.approx(1e-4) and isinstance(cfg.inner.lr, float)
    assert cfg.inner.size == (256, 512) and cfg.name == "coco" and cfg.inner.amp is False
    cfg = load_config(Outer, p, ["inner.lr=0.5", "inner.steps=7", "inner.amp=true", "tags=[a, b]", "name=x"])
    assert cfg == Outer(name="x", inner=Inner(lr=0.5, steps=7, size=(256, 512), amp=True), tags=["a", "b"])
    assert load_config(Outer, None, ["inner.steps=null"]).inner.steps is None
    assert load_config(Outer, None, ["inner.steps=None"]).inner.steps is None
    assert load_config(Outer, None, ["inner.lr=1"]).inner.lr == 1.0  # int widened to float


def test_unknown_keys_are_named_with_the_valid_ones(tmp_path):
    p = _yaml(tmp_path, "inner:\n  learning_rate: 0.1\n")
    msg = r"unknown config key 'inner.learning_rate' \(.*cfg.yaml\).*lr, steps, size, amp"
    with pytest.raises(ConfigError, match=msg):
        load_config(Outer, p)
    with pytest.raises(ConfigError, match=r"unknown config key 'inner.lrr' \(command line\).*lr, steps"):
        load_config(Outer, None, ["inner.lrr=1"])
    with pytest.raises(ConfigError, match=r"unknown config key 'nme'.*name, inner, tags"):
        load_config(Outer, None, ["nme=1"])
    with pytest.raises(ConfigError, match="'name' is a value, not a section"):
        load_config(Outer, None, ["name.x=1"])
    with pytest.raises(ConfigError, match="key=value"):
        load_config(Outer, None, ["inner.lr"])


def test_bad_values_are_named(tmp_path):
    with pytest.raises(ConfigError, match=r"'inner.steps'.*expected int.*'many'"):
        load_config(Outer, None, ["inner.steps=many"])
    with pytest.raises(ConfigError, match=r"'inner.size'.*exactly 2 items"):
        load_config(Outer, None, ["inner.size=[1,2,3]"])
    with pytest.raises(ConfigError, match=r"'inner.amp'.*true or false"):
        load_config(Outer, None, ["inner.amp=3"])
    with pytest.raises(ConfigError, match="mapping"):
        load_config(Outer, _yaml(tmp_path, "- 1\n- 2\n"))
    with pytest.raises(ConfigError, match="nope.yaml"):
        load_config(Outer, tmp_path / "nope.yaml")


def test_to_dict_round_trips():
    cfg = Outer(name="a", inner=Inner(size=(1, 2)), tags=["t"])
    d = to_dict(cfg)
    assert d["inner"]["size"] == [1, 2]
    assert yaml.safe_load(yaml.safe_dump(d)) == d
    assert from_dict(Outer, d) == cfg


def test_save_run_info(tmp_path, monkeypatch):
    monkeypatch.setattr("sys.argv", ["sipe", "train", "--out", "runs/x", "inner.lr=0.5"])
    cfg = load_config(Outer, None, ["inner.lr=0.5"])
    save_run_info(tmp_path / "run", cfg)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["config.yaml", "run_info.json"]
    assert load_config(Outer, tmp_path / "run" / "config.yaml") == cfg  # the resolved config reloads
    info = json.loads((tmp_path / "run" / "run_info.json").read_text())
    assert info["sipe_version"] == sipe.__version__
    assert info["command"] == "sipe train --out runs/x inner.lr=0.5"
    assert info["git_commit"] == "unknown" or len(info["git_commit"].split("-")[0]) == 40
    import torch

    assert info["torch_version"] == torch.__version__
    assert info["timestamp"].endswith("+00:00")


def test_save_run_info_only_on_rank_zero(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    save_run_info(tmp_path / "run", Outer())
    assert not (tmp_path / "run").exists()


def test_git_commit_outside_a_checkout(tmp_path):
    from sipe.engine.run_info import git_commit

    assert git_commit(tmp_path) == "unknown"


def test_config_layer_loads_neither_torch_nor_the_engine():
    code = ("import sys, sipe.config, sipe.config.common, sipe.config.engine, sipe.config.irn, sipe.config.seg, "
            "sipe.config.train; print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch' "
            "or m.startswith(('sipe.engine', 'sipe.models'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
    import sipe.config
    import sipe.engine

    # The run metadata lives in the engine only (no old names kept in the config layer).
    assert not hasattr(sipe.config, "save_run_info") and not hasattr(sipe.config, "numerics_info")
    assert sipe.engine.TrainConfig is sipe.config.TrainConfig


# A parent whose default_factory differs from the nested class defaults, two levels deep.
@dataclass
class Leaf:
    a: int = 1
    b: str = "x"

    def __post_init__(self) -> None:
        if self.a < 0:
            raise ValueError(f"a must be >= 0, got {self.a}")


@dataclass
class Mid:
    leaf: Leaf = field(default_factory=Leaf)
    crop: int = 512
    flip: bool = True
    tags: list[str] = field(default_factory=list)


@dataclass
class Top:
    mid: Mid = field(default_factory=lambda: Mid(leaf=Leaf(a=5, b="y"), crop=128, tags=["d"]))
    plain: Mid = field(default_factory=Mid)


def test_partial_yaml_section_keeps_the_parents_factory_defaults(tmp_path):
    cfg = load_config(Top, _yaml(tmp_path, "mid:\n  flip: false\n"))
    assert cfg.mid == Mid(leaf=Leaf(a=5, b="y"), crop=128, flip=False, tags=["d"])
    assert cfg.plain == Mid()
    cfg = load_config(Top, _yaml(tmp_path, "mid:\n  leaf:\n    b: z\n"))
    assert cfg.mid == Mid(leaf=Leaf(a=5, b="z"), crop=128, tags=["d"])
    assert from_dict(Top, {"mid": {"leaf": {"a": 7}}}).mid == Mid(leaf=Leaf(a=7, b="y"), crop=128, tags=["d"])
    # An empty section changes nothing.
    assert load_config(Top, _yaml(tmp_path, "mid: {}\n")) == Top()


def test_partial_override_keeps_the_parents_factory_defaults(tmp_path):
    assert load_config(Top, None, ["mid.flip=false"]).mid == Mid(leaf=Leaf(a=5, b="y"), crop=128, flip=False,
                                                                 tags=["d"])
    assert load_config(Top, None, ["mid.leaf.b=z"]).mid == Mid(leaf=Leaf(a=5, b="z"), crop=128, tags=["d"])
    # File, then overrides, both partial, both two levels deep.
    cfg = load_config(Top, _yaml(tmp_path, "mid:\n  crop: 64\n  leaf:\n    b: f\n"), ["mid.leaf.a=9", "plain.crop=32"])
    assert cfg == Top(mid=Mid(leaf=Leaf(a=9, b="f"), crop=64, tags=["d"]), plain=Mid(crop=32))


def test_merged_values_are_validated_and_defaults_not_shared(tmp_path):
    with pytest.raises(ConfigError, match=r"invalid configuration for Leaf \(command line\).*a must be >= 0"):
        load_config(Top, None, ["mid.leaf.a=-1"])
    with pytest.raises(ConfigError, match=r"invalid configuration for Leaf \(.*cfg.yaml\)"):
        load_config(Top, _yaml(tmp_path, "mid:\n  leaf:\n    a: -3\n"))
    first = load_config(Top, None, ["mid.flip=false"])
    first.mid.tags.append("mutated")
    assert load_config(Top, None, ["mid.flip=false"]).mid.tags == ["d"]
    assert Top().mid.tags == ["d"]


def test_demo_config_partial_aug_keeps_the_demo_sizes(tmp_path):
    from sipe.config import AugConfig
    from sipe.run.config import DEMO_CONFIG, RunConfig

    demo_aug = load_config(RunConfig, DEMO_CONFIG).train.aug
    assert (demo_aug.crop_size, demo_aug.resize_long) != (AugConfig().crop_size, AugConfig().resize_long)
    cfg = load_config(RunConfig, DEMO_CONFIG, ["train.aug.flip=false"])
    assert cfg.train.aug == dataclasses.replace(demo_aug, flip=False)
    # Two levels deep: a demo IRN engine setting keeps the demo's other engine values.
    irn = load_config(RunConfig, DEMO_CONFIG).irn
    cfg = load_config(RunConfig, DEMO_CONFIG, ["irn.engine.lr=0.05"])
    assert cfg.irn == dataclasses.replace(irn, engine=dataclasses.replace(irn.engine, lr=0.05))
    # An optional section is reachable by override too (the walk unwraps `X | None`).
    assert load_config(RunConfig, None, ["synthetic.n_train=7", "data.kind=synthetic"]).synthetic.n_train == 7


def test_cli_demo_reports_config_errors_without_a_traceback(tmp_path, capsys):
    from sipe.cli import main

    assert main(["demo", "--out", str(tmp_path / "out"), "train.engine.no_such_key=1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sipe demo: error:") and "no_such_key" in err
    assert main(["run", "--out", str(tmp_path / "out"), "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("argv", "seed"), [([], 0), (["seed=1"], 1), (["--seed", "2"], 2), (["--seed", "2", "seed=1"], 2)]
)
def test_demo_seed_from_override_or_flag(monkeypatch, argv, seed):
    import sipe.run.stages
    from sipe.cli import main

    seen = {}
    monkeypatch.setattr(sipe.run.stages, "run_pipeline", lambda cfg, out, *a, **k: seen.update(seed=cfg.seed) or {})
    assert main(["demo", "--out", "unused", *argv]) == 0
    assert seen["seed"] == seed


def test_torchvision_weight_names_are_refused_for_other_backbones_at_config_time(tmp_path, monkeypatch):
    from sipe.config import ModelConfig
    from sipe.config.irn import IRNConfig
    from sipe.config.seg import SegTrainConfig

    fix = "only the ResNets take; for timm:convnext_atto set model.weights to a local .pth/.safetensors file, timm"
    with pytest.raises(ConfigError, match=fix):
        load_config(ModelConfig, None, ["backbone=timm:convnext_atto"])
    with pytest.raises(ConfigError, match=fix):
        load_config(SegTrainConfig, None, ["model.backbone=timm:convnext_atto"])
    with pytest.raises(ConfigError, match="weights=IMAGENET1K_V1 .* for mine:net set weights to a local"):
        load_config(IRNConfig, None, ["backbone=mine:net"])
    # what is accepted: ResNets with torchvision names; timm's own weights, files and null for the others
    load_config(ModelConfig, None, ["backbone=resnet50", "weights=IMAGENET1K_V1"])
    for weights in ("timm", "null", "/data/convnext.safetensors"):
        load_config(ModelConfig, None, ["backbone=timm:convnext_atto", f"weights={weights}"])
    monkeypatch.chdir(tmp_path)
    (tmp_path / "WEIGHTS").write_bytes(b"")  # a file that happens to have such a name is a file
    load_config(ModelConfig, None, ["backbone=timm:convnext_atto", "weights=WEIGHTS"])


def test_synthetic_negatives_in_pretraining_need_the_synthetic_section(tmp_path):
    from sipe.config import ConfigError
    from sipe.run.config import DEMO_CONFIG, RunConfig, resolve

    cfg = load_config(RunConfig, DEMO_CONFIG, ["data.kind=custom"])
    cfg.synthetic = None  # a user's folder with the demo's pretraining section copied over
    with pytest.raises(ConfigError, match="pretrain.background_images=80 draws synthetic object-free images"):
        resolve(cfg, tmp_path)
    cfg.pretrain.background_images = 0
    assert resolve(cfg, tmp_path).pretrain.background_images == 0
