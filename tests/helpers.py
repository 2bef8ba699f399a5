"""Small helpers shared by several test modules (fixtures live in ``conftest.py``)."""

from __future__ import annotations

import socket
import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from sipe import io as sio


def free_port() -> int:
    """A TCP port free on localhost now (for a test's DDP rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boolean masks of the same shape."""
    return float((a & b).sum() / (a | b).sum())


def tiny_seg_model(class_names: Sequence[str]):
    """An eval-mode ResNet-18 DeepLabV3 (output stride 16, seed 0) for ``class_names`` and its spec."""
    from sipe.seg.architectures import build_from_spec
    from sipe.seg.spec import SegModelSpec

    torch.manual_seed(0)
    spec = SegModelSpec(num_classes=len(class_names), backbone="resnet18", output_stride=16,
                        class_names=list(class_names))
    return build_from_spec(spec).eval(), spec


def save_seg_checkpoint(model: nn.Module, spec, path: Path) -> Path:
    """``model`` saved in the layout 'sipe seg train' writes through the engine."""
    sio.save_torch({"model": model.state_dict(), "step": 1, "config": {}, "meta": {"model_spec": spec.to_dict()}}, path)
    return path


class TinyBackbone(nn.Module):
    """A user's own network: four maps at strides 4, 8, 16, 16."""

    out_channels = (8, 16, 16, 32)

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, stride=4, padding=1)
        self.b = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.c = nn.Conv2d(16, 16, 3, stride=2, padding=1)
        self.d = nn.Conv2d(16, 32, 3, padding=1)

    def forward(self, x):
        a = self.a(x)
        b = self.b(a)
        c = self.c(b)
        return [a, b, c, self.d(c)]


# The demo shrunk to a few tiny images (tests/test_demo.py, the session's `tiny_demo` fixture).
TINY_DEMO = [
    "synthetic.n_train=8", "synthetic.n_val=3", "synthetic.image_size=[48,64]",
    "pretrain.resize_long=[64,96]", "pretrain.crop_size=64", "pretrain.engine.epochs=1",
    "pretrain.engine.batch_size=4", "pretrain.engine.num_workers=0", "pretrain.engine.progress=false",
    "train.aug.resize_long=[64,96]", "train.aug.crop_size=64", "train.engine.epochs=1", "train.engine.batch_size=4",
    "train.engine.num_workers=0", "train.engine.progress=false", "cam.num_workers=0",
    "irn.crop_size=64", "irn.radius=5", "irn.engine.epochs=1", "irn.engine.batch_size=4", "irn.engine.num_workers=0",
    "irn.engine.progress=false", "seg.aug.crop_size=48", "seg.engine.epochs=1", "seg.engine.min_steps=null",
    "seg.engine.batch_size=4", "seg.engine.num_workers=0", "seg.engine.progress=false", "eval.num_overlays=2",
    "eval.num_workers=0", "pretrain.background_images=4", "export.onnx=false", "num_threads=2",
]


def run_demo(out, overrides=TINY_DEMO, **kwargs):
    """``sipe demo`` (``sipe run`` with the packaged configs/demo.yaml) into ``out``; returns its metrics."""
    from sipe.config import load_config
    from sipe.run import run_pipeline
    from sipe.run.config import DEMO_CONFIG, RunConfig, resolve
    from sipe.run.plan import apply_plan, explicit_keys, synthetic_fingerprint

    cfg = load_config(RunConfig, DEMO_CONFIG, overrides)
    # as `sipe demo` does: the plan derived from the generated set's fingerprint
    fingerprint = synthetic_fingerprint(resolve(cfg, out).synthetic)
    cfg, _, plan = apply_plan(cfg, fingerprint, explicit_keys(DEMO_CONFIG, overrides))
    return run_pipeline(cfg, out, plan=plan, **kwargs)


# A user's backbone module, written to the test's folder and imported by name (module:function).
USER_MODULE = textwrap.dedent('''
    from torch import nn

    class Net(nn.Module):
        out_channels = (8, 16, 16, 32)

        def __init__(self, maps=4, last_stride=1, declared=None):
            super().__init__()
            self.a = nn.Conv2d(3, 8, 3, stride=4, padding=1)
            self.b = nn.Conv2d(8, 16, 3, stride=2, padding=1)
            self.c = nn.Conv2d(16, 16, 3, stride=2, padding=1)
            self.d = nn.Conv2d(16, 32, 3, stride=last_stride, padding=1)
            self.maps = maps
            if declared is not None:
                self.out_channels = tuple(declared)

        def forward(self, x):
            a = self.a(x)
            b = self.b(a)
            c = self.c(b)
            return [a, b, c, self.d(c)][: self.maps]

    def tiny(**kw):
        return Net(**kw)

    def three_maps():
        return Net(maps=3)

    def stride32():
        return Net(last_stride=2)

    def wrong_channels():
        return Net(declared=(8, 16, 16, 64))
''')


def write_binary_set(root: Path, n: int = 8, size: tuple[int, int] = (64, 64), seed: int = 0) -> Path:
    """A one-class inspection-style data set in the custom layout: ``root/im<i>.png`` (synthetic
    objects of class ``defect``, every odd image a negative: no object, an empty labels cell),
    ``root/masks/im<i>.png`` ground truth and ``root/labels.csv``. Returns the labels file."""
    from PIL import Image

    from sipe.data.synthetic import draw_synthetic_image

    (root / "masks").mkdir(parents=True, exist_ok=True)
    rows = ["image,labels"]
    for i in range(n):
        objects = 1 if i % 2 == 0 else 0
        image, mask, _ = draw_synthetic_image(np.random.default_rng((seed, i)), *size, num_classes=1,
                                              max_objects=objects, min_objects=objects)
        Image.fromarray(image).save(root / f"im{i}.png")
        sio.save_label_png(root / "masks" / f"im{i}.png", mask)
        rows.append(f"im{i}.png,{'defect' if objects else ''}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root / "labels.csv"
