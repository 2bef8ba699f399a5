"""The segmentation architecture table (sipe.seg.architectures): the one place an architecture name is
dispatched. A third architecture registered there is trained, checkpointed, rebuilt, evaluated and
exported by the same code as the built-in two, and no module of the package compares arch names."""

from __future__ import annotations

import ast
import dataclasses
import typing
from pathlib import Path

import pytest
import torch
from torch import nn

from sipe.config import from_dict
from sipe.config.seg import SEG_ARCHITECTURES, SegArchitectureRules, SegModelConfig, SegTrainConfig
from sipe.data import generate_synthetic
from sipe.seg import architectures
from sipe.seg.architectures import ARCHITECTURES, Architecture
from sipe.seg.interface import NormalizedSegModel
from sipe.seg.losses import seg_loss

pytestmark = pytest.mark.usefixtures("one_thread")
SRC = Path(__file__).resolve().parents[1] / "src" / "sipe"


def test_the_config_rules_and_the_table_name_the_same_architectures():
    assert list(SEG_ARCHITECTURES) == list(ARCHITECTURES) == ["deeplabv3", "deeplabv2"]
    # model.arch's choices (the loader's message lists them) come from the same table
    assert typing.get_args(typing.get_type_hints(SegModelConfig)["arch"]) == tuple(ARCHITECTURES)


def test_no_module_dispatches_on_an_architecture_name():
    """Every ``arch == "..."`` / ``spec.arch != ...`` would be a second place to edit for a new architecture."""
    names = set(ARCHITECTURES)
    found = []
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Compare):
                continue
            operands = [node.left, *node.comparators]
            if any(isinstance(o, ast.Constant) and o.value in names for o in operands) or any(
                isinstance(o, ast.Attribute) and o.attr == "arch" for o in operands
            ):
                found.append(f"{path.relative_to(SRC)}:{node.lineno}")
    assert found == []


# ----------------------------------------------------------------------------- a third architecture


class TinySeg(nn.Module):
    """A full-resolution two-layer network: ``{"out": (N, K, H, W)}``; ``backbone`` and ``classifier`` as DeepLab."""

    def __init__(self, num_classes: int, width: int) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.classifier = nn.Conv2d(width, num_classes, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": self.classifier(self.backbone(x))}


class TinyWrapper(NormalizedSegModel):
    used = 0

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        TinyWrapper.used += 1


@pytest.fixture()
def tiny_arch(monkeypatch):
    calls: dict[str, int] = {"build": 0, "rebuild": 0, "step": 0, "groups": 0}

    def build(m: SegModelConfig, k: int) -> nn.Module:
        calls["build"] += 1
        return TinySeg(k, width=m.resolved_output_stride() * 4)

    def rebuild(spec) -> nn.Module:
        calls["rebuild"] += 1
        return TinySeg(spec.num_classes, width=spec.output_stride * 4)

    def step_fn(cfg: SegTrainConfig, weights):
        def step(model, batch):
            calls["step"] += 1
            ce = seg_loss(model(batch["image"])["out"], batch["label"])
            return {"loss": ce, "ce": ce}

        return step

    def groups(model, cfg):
        calls["groups"] += 1
        return [{"params": list(model.parameters()), "lr_mult": 1.0}]

    entry = Architecture(build=build, rebuild=rebuild, step_fn=step_fn, param_groups=groups,
                         spec_fields=lambda model, m: {"atrous_rates": [7]}, model_type=TinySeg,
                         onnx_wrapper=TinyWrapper)
    monkeypatch.setitem(ARCHITECTURES, "tiny", entry)
    monkeypatch.setitem(SEG_ARCHITECTURES, "tiny", SegArchitectureRules(output_strides=(2,), aux=False))
    return calls


def test_a_third_architecture_is_one_table_entry(tiny_arch, tmp_path, capsys):
    from sipe.cli import main
    from sipe.data import dataset_from_config
    from sipe.seg.evaluate import evaluate_seg
    from sipe.seg.model import load_seg_checkpoint
    from sipe.seg.train import train_seg

    root = generate_synthetic(tmp_path / "d", seed=0, n_train=4, n_val=2, image_size=(32, 40), progress=False)
    cfg = from_dict(SegTrainConfig, {
        "pseudo_labels": str(root / "SegmentationClass"),
        "data": {"kind": "synthetic", "root": str(root), "split": "train"},
        "model": {"backbone": "resnet18", "weights": None},
        "aug": {"crop_size": 32},
        "engine": {"batch_size": 2, "num_workers": 0, "progress": False, "max_steps": 2, "log_every": 1},
    })
    # The loader's Literal was fixed at import; a config built in code takes the new name.
    cfg.model = dataclasses.replace(cfg.model, arch="tiny")
    assert cfg.model.output_stride is None and cfg.model.resolved_output_stride() == 2  # its own default
    with pytest.raises(ValueError, match="model.arch=tiny runs at output stride 2 without an auxiliary head"):
        dataclasses.replace(cfg.model, output_stride=16)

    path = train_seg(cfg, tmp_path / "run")
    assert tiny_arch == {"build": 1, "rebuild": 0, "step": 2, "groups": 1}
    model, spec = load_seg_checkpoint(path)  # what seg eval, predict and export do
    assert isinstance(model, TinySeg) and model.classifier.in_channels == 8
    assert (spec.arch, spec.output_stride, spec.atrous_rates) == ("tiny", 2, [7])
    assert tiny_arch["rebuild"] == 1

    report = evaluate_seg(model, dataset_from_config(cfg.data, "val", with_masks=True), progress=False)
    assert report["num_images"] == 2 and 0.0 <= report["miou"] <= 1.0

    pytest.importorskip("onnxruntime")
    before = TinyWrapper.used
    out = tmp_path / "tiny.onnx"
    assert main(["export", "--checkpoint", str(path), "--out", str(out), "--check"]) == 0
    text = capsys.readouterr().out
    assert "opset 17, tiny," in text and "same class on 100.00%" in text
    assert TinyWrapper.used >= before + 2  # export and its check both traced the table's wrapper
    assert architectures.onnx_wrapper(model).__class__ is TinyWrapper  # found from the network's class too


def test_an_unknown_architecture_in_a_checkpoint_names_the_known_ones():
    from sipe.seg.architectures import build_from_spec
    from sipe.seg.spec import SegModelSpec

    with pytest.raises(ValueError, match=r"unknown segmentation architecture 'fcn' in the model spec "
                                         r"\(deeplabv3, deeplabv2\)"):
        build_from_spec(SegModelSpec(num_classes=2, arch="fcn"))


def test_the_seg_package_has_no_import_cycle():
    """Counting imports inside functions: the modules of sipe.seg form a DAG."""
    graph: dict[str, set[str]] = {}
    for path in sorted((SRC / "seg").glob("*.py")):
        name = f"sipe.seg.{path.stem}"
        deps = graph.setdefault(name, set())
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            deps.update(t for t in targets if t.startswith("sipe.seg.") and (SRC / "seg" / f"{t[9:]}.py").exists())
    state: dict[str, int] = {}
    cycles = []

    def visit(n: str, stack: list[str]) -> None:
        state[n] = 1
        for d in sorted(graph.get(n, ())):
            if state.get(d) == 1:
                cycles.append(stack[stack.index(d):] + [d])
            elif d not in state:
                visit(d, stack + [d])
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n, [n])
    assert len(graph) >= 10 and cycles == []
    assert "sipe.seg.model" not in graph["sipe.seg.deeplabv2"] and "sipe.seg.train" not in graph["sipe.seg.deeplabv2"]
