"""A run folder keeps its history: a rerun that cannot continue the run in ``--out`` (other data, other
classes, another network) stops with one line before it writes anything; a compatible rerun resumes.
Checked in the engine (:func:`sipe.engine.fit`) and through ``sipe train``, ``sipe seg train`` and
``sipe refine train-irn``'s library entry."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from sipe.cli import main
from sipe.config.engine import TrainConfig
from sipe.data import generate_synthetic, synthetic_class_names
from sipe.data.synthetic import draw_synthetic_image
from sipe.engine import fit
from sipe.errors import InputError
from sipe.io import save_label_png

pytestmark = pytest.mark.usefixtures("one_thread")
REPO = Path(__file__).resolve().parents[1]


def _snapshot(run: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``run``: its bytes and modification time (ns)."""
    return {str(p.relative_to(run)): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(run.rglob("*"))
            if p.is_file()}


def _one_line(capsys, *expected: str) -> str:
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert "Traceback" not in err and len(lines) == 1, err
    for text in expected:
        assert text in lines[0], lines[0]
    return lines[0]


# ----------------------------------------------------------------------------- the engine


class _Pairs(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 8

    def __getitem__(self, item: tuple[int, int]) -> dict:
        index, seed = item
        x = torch.from_numpy(np.random.default_rng(seed).normal(size=4).astype(np.float32))
        return {"x": x, "y": torch.tensor(index % 2)}


def _step(model: nn.Module, batch: dict) -> dict[str, torch.Tensor]:
    return {"loss": nn.functional.cross_entropy(model(batch["x"]), batch["y"])}


@dataclass
class _RunConfig:
    classes: int = 2


def _fit(out: Path, outputs: int = 2, starts: list | None = None, **kw) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Linear(4, outputs)
    cfg = TrainConfig(epochs=2, batch_size=4, lr=0.1, num_workers=0, device="cpu", progress=False,
                      stop_after=kw.pop("stop_after", None))
    on_start = (lambda: starts.append(1)) if starts is not None else None
    return fit(model, _Pairs(), _step, [{"params": list(model.parameters())}], cfg, out, run_config=_RunConfig(),
               on_start=on_start, **kw)


def test_rerun_with_other_classes_stops_before_writing_anything(tmp_path, capsys):
    starts: list[int] = []
    key = {"classes": ["background", "circle", "square"], "data.root": "/data/a"}
    _fit(tmp_path, starts=starts, run_key=key, stop_after=1)
    assert starts == [1] and (tmp_path / "config.yaml").is_file() and (tmp_path / "run_info.json").is_file()
    before = _snapshot(tmp_path)

    other = {"classes": ["background", "circle", "square", "star"], "data.root": "/data/b"}
    with pytest.raises(InputError) as err:
        _fit(tmp_path, starts=starts, run_key=other)
    message = str(err.value)
    assert "\n" not in message
    assert message == (
        f"{tmp_path} was trained with 3 classes (background, circle, square), data.root=/data/a; this run has "
        f"4 classes (background, circle, square, star), data.root=/data/b: use another --out, or delete "
        f"{tmp_path / 'checkpoints'} to start over"
    )
    assert starts == [1] and _snapshot(tmp_path) == before  # config.yaml, run_info.json, last.pt, tb/ untouched

    # The same run key (a tuple stores as the same list) resumes, and only then rewrites the run's records.
    _fit(tmp_path, starts=starts, run_key={**key, "classes": tuple(key["classes"])}, stop_after=2)
    assert "resuming from" in capsys.readouterr().out and starts == [1, 1]
    assert torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=False)["step"] == 2


def test_a_checkpoint_of_another_network_is_one_line_not_a_traceback(tmp_path):
    _fit(tmp_path, stop_after=1)  # no run key: as checkpoints written before run keys existed
    before = _snapshot(tmp_path)
    with pytest.raises(InputError, match=r"holds the checkpoint of another model \(weight is \(2, 4\) there, "
                                         r"\(3, 4\) in this run's model\): use another --out, or delete"):
        _fit(tmp_path, outputs=3)
    assert _snapshot(tmp_path) == before


# ----------------------------------------------------------------------------- sipe train


def _photos(root: Path, classes: int) -> Path:
    """Six 48x48 synthetic JPEGs drawing from ``classes`` foreground classes, and their labels.csv."""
    names = synthetic_class_names(classes)
    rows = ["image,labels"]
    for i in range(6):
        image, _, objects = draw_synthetic_image(np.random.default_rng(i), 48, 48, num_classes=classes,
                                                 max_objects=1)
        Image.fromarray(image).save(root / f"p{i}.jpg", quality=90)
        rows.append(f"p{i}.jpg,{';'.join(sorted({names[o['class']] for o in objects}))}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


def _train(photos: Path, out: Path, classes: str, *overrides: str) -> list[str]:
    return ["train", "--config", str(REPO / "configs" / "photos.yaml"), "--out", str(out), f"data.root={photos}",
            f"data.split={photos / 'labels.csv'}", f"data.class_names=[{classes}]", "model.weights=null",
            "aug.crop_size=32", "aug.resize_long=[32,48]", "engine.batch_size=2", "engine.num_workers=0",
            "engine.progress=false", *overrides]


def test_sipe_train_rerun_on_other_data_keeps_the_run_folder(tmp_path, capsys):
    four = _photos(tmp_path, 4)
    classes = ", ".join(synthetic_class_names(4)[1:])
    run = tmp_path / "runs" / "mine"
    assert main(_train(four, run, classes, "engine.stop_after=1")) == 0
    before = _snapshot(run)
    assert {"config.yaml", "run_info.json", "skipped.tsv", "checkpoints/last.pt"} <= set(before)

    (tmp_path / "five").mkdir()
    five = _photos(tmp_path / "five", 5)
    capsys.readouterr()
    assert main(_train(five, run, classes + ", " + synthetic_class_names(5)[-1])) == 1
    # The data is named by what the stage uses (count and hash), not where it lies: a moved folder is the same.
    _one_line(capsys, f"sipe train: error: {run} was trained with 5 classes (background, ", "data=6 images ",
              "this run has 6 classes", f"delete {run / 'checkpoints'} to start over")
    assert _snapshot(run) == before

    # The same data again: the run resumes (and only now rewrites config.yaml and run_info.json).
    assert main(_train(four, run, classes, "engine.stop_after=2")) == 0
    assert f"resuming from {run / 'checkpoints' / 'last.pt'} at step 1" in capsys.readouterr().out


# ----------------------------------------------------------------------------- sipe seg train


def _seg(root: Path, out: Path, *overrides: str) -> list[str]:
    return ["seg", "train", "--out", str(out), f"pseudo_labels={root / 'SegmentationClass'}", "data.kind=synthetic",
            f"data.root={root}", "data.split=train", "model.backbone=resnet18", "model.weights=null",
            "model.output_stride=16", "aug.crop_size=32", "engine.batch_size=4", "engine.num_workers=0",
            "engine.progress=false", "engine.min_steps=null", *overrides]


def test_seg_train_rerun_with_other_classes_keeps_the_run_folder(tmp_path, capsys):
    four = generate_synthetic(tmp_path / "four", seed=0, n_train=4, n_val=1, image_size=(40, 48), progress=False)
    three = generate_synthetic(tmp_path / "three", seed=0, n_train=4, n_val=1, image_size=(40, 48), num_classes=3,
                               progress=False)
    run = tmp_path / "seg"
    assert main(_seg(four, run, "engine.stop_after=1")) == 0
    before = _snapshot(run)
    assert {"config.yaml", "run_info.json", "checkpoints/last.pt"} <= set(before)
    capsys.readouterr()
    assert main(_seg(three, run)) == 1
    _one_line(capsys, "sipe seg train: error:", "was trained with 5 classes", "this run has 4 classes",
              "use another --out")
    assert _snapshot(run) == before


# ----------------------------------------------------------------------------- refine train-irn


def test_irn_rerun_with_other_labels_or_backbone_keeps_the_run_folder(tmp_path):
    from sipe.config.irn import IRNConfig, IRNEngineConfig
    from sipe.refine.train_irn import train_irn

    rng = np.random.default_rng(0)
    items = [{"image": rng.integers(0, 255, (64, 64, 3), dtype=np.uint8), "name": f"im{i}"} for i in range(4)]
    for folder in ("a", "b"):
        for item in items:
            save_label_png(tmp_path / folder / f"{item['name']}.png", rng.choice([0, 1, 255], (64, 64)))

    def cfg(backbone: str = "resnet18", **engine) -> IRNConfig:
        return IRNConfig(backbone=backbone, weights=None, crop_size=64, radius=5, mean_batch_size=4,
                         engine=IRNEngineConfig(epochs=2, batch_size=2, num_workers=0, device="cpu", progress=False,
                                                **engine))

    run = tmp_path / "irn"
    train_irn(items, tmp_path / "a", run, cfg(stop_after=1))
    before = _snapshot(run)
    assert {"config.yaml", "run_info.json", "checkpoints/last.pt"} <= set(before)
    with pytest.raises(InputError, match="labels=4 labels [0-9a-f]+; this run has labels=4 labels"):
        train_irn(items, tmp_path / "b", run, cfg())
    with pytest.raises(InputError, match="backbone=resnet18; this run has backbone=resnet34"):
        train_irn(items, tmp_path / "a", run, cfg("resnet34"))
    assert _snapshot(run) == before
