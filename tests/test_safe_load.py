"""Opening a checkpoint or an IS-CAM file never runs code from it (issue 30).

A file from elsewhere (a shared checkpoint, a folder of official-layout ``.npy`` IS-CAMs) may hold a pickled
call such as ``os.system``: every reader refuses it in one line before anything in it runs. Every
checkpoint kind sipe writes, and the authors' and deeplab-pytorch's files, still load.
"""

from __future__ import annotations

import io
import os
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import official_checkpoint
from sipe import io as sio
from sipe.cli import main
from sipe.data.cam_format import read_cam_file, write_cam_file
from sipe.errors import RefusedFileError
from test_cli_errors import _one_line
from test_run import photo_folder, tiny_run_args

pytestmark = pytest.mark.usefixtures("one_thread")


class RunsCode:
    """Pickles as a call of ``os.system`` that creates ``marker``: what a hostile file would hold."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


class HostileStorage:
    """Pickles like a torch tensor's storage (``torch.storage._load_from_bytes``) whose bytes run code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        buf = io.BytesIO()
        torch.save({"x": RunsCode(self.marker)}, buf, _use_new_zipfile_serialization=False)
        return torch.storage._load_from_bytes, (buf.getvalue(),)


def hostile_checkpoint(path: Path, marker: Path) -> Path:
    """A SIPE-looking checkpoint whose metadata runs ``touch marker`` when unpickled unguarded."""
    torch.save({"model": {"classifier.weight": torch.zeros(3, 8, 1, 1)}, "meta": RunsCode(marker)}, path)
    return path


def hostile_npy(path: Path, marker: Path, payload: type = RunsCode) -> Path:
    """An official-layout IS-CAM ``.npy`` whose map entry runs ``touch marker`` when unpickled unguarded."""
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, {"keys": np.array([0, 1]), "IS_CAM": payload(marker)}, allow_pickle=True)
    return path


one_error_line = _one_line  # the CLI's one-line error, as tests/test_cli_errors.py checks it


@pytest.fixture
def marker(tmp_path) -> Path:
    path = tmp_path / "MARKER"
    yield path
    assert not path.exists(), "a file's payload ran"


def test_the_payloads_do_run_when_unpickled_unguarded(tmp_path):
    """The hostile files of this module are real: an unguarded load creates the marker (so the tests can fail)."""
    for i, make in enumerate([
        lambda m: torch.load(hostile_checkpoint(tmp_path / "a.pt", m), weights_only=False),
        lambda m: np.load(hostile_npy(tmp_path / "a.npy", m), allow_pickle=True),
        lambda m: np.load(hostile_npy(tmp_path / "b.npy", m, HostileStorage), allow_pickle=True),
    ]):
        flag = tmp_path / f"ran{i}"
        make(flag)
        assert flag.exists()


# ---------------------------------------------------------------- hostile checkpoints


def test_sipe_predict_refuses_a_hostile_checkpoint_in_one_line(tmp_path, marker, capsys):
    evil = hostile_checkpoint(tmp_path / "shared.pt", marker)
    photo = photo_folder(tmp_path / "photos", n=1) / "p0.jpg"
    assert main(["predict", str(photo), "--checkpoint", str(evil), "--out", str(tmp_path / "pred")]) == 1
    one_error_line(capsys, "sipe predict: error: refused to load checkpoint", str(evil), "posix.system",
                   "weights_only=True")
    assert not (tmp_path / "pred").exists()


def test_every_checkpoint_reader_refuses_it(tmp_path, marker):
    from sipe import Predictor
    from sipe.models.checkpoint import load_checkpoint
    from sipe.models.weights import read_state_dict
    from sipe.refine.train_irn import load_irn
    from sipe.seg.model import load_seg_checkpoint

    evil = hostile_checkpoint(tmp_path / "shared.pt", marker)
    readers = [Predictor.from_checkpoint, load_checkpoint, load_irn, load_seg_checkpoint, read_state_dict,
               sio.read_checkpoint]
    for read in readers:
        with pytest.raises(RefusedFileError, match=r"^refused to load .*shared\.pt: it asks for posix\.system") as e:
            read(evil)
        assert "\n" not in str(e.value)


def test_sipe_run_refuses_to_resume_from_a_hostile_last_pt(tmp_path, marker, capsys):
    root = photo_folder(tmp_path / "photos")
    out = tmp_path / "run"
    (out / "train" / "checkpoints").mkdir(parents=True)
    last = hostile_checkpoint(out / "train" / "checkpoints" / "last.pt", marker)
    assert main(["run", "--out", str(out), "--until", "train", *tiny_run_args(root)]) == 1
    one_error_line(capsys, "sipe run: error: refused to load checkpoint", str(last), "posix.system",
                   "--no-resume")
    assert not (out / "train" / "checkpoints" / "final.pt").exists()


def test_a_checkpoint_with_numpy_values_is_refused_too(tmp_path):
    """The allow-list is empty: sipe's checkpoints hold tensors and plain values, nothing to rebuild."""
    path = tmp_path / "np.pt"
    torch.save({"model": {}, "meta": {"mean": np.zeros(3)}}, path)
    with pytest.raises(RefusedFileError, match=r"np\.pt: it asks for numpy\._core\.multiarray\._reconstruct"):
        sio.read_checkpoint(path)


# ---------------------------------------------------------------- hostile IS-CAM files


@pytest.mark.parametrize("payload", [RunsCode, HostileStorage])
def test_sipe_eval_refuses_a_hostile_npy_and_stops(tmp_path, marker, capsys, payload):
    root = photo_folder(tmp_path / "photos", n=4)
    cams = tmp_path / "is_cam"
    for i in (0, 1, 2):
        write_cam_file(cams / f"p{i}.npz", np.array([0, 1]), np.full((2, 64, 80), 0.5, np.float32))
    evil = hostile_npy(cams / "p3.npy", marker, payload)
    args = ["eval", "--dataset", "custom", "--root", str(root), "--split", str(root / "labels.csv"),
            "--class-names", "disc,square", "--mask-dir", str(root / "masks"), "--pred", str(cams),
            "--kind", "is_cam"]
    assert main(args) == 1
    one_error_line(capsys, "sipe eval: error: refused to load", str(evil), "posix.system")


def test_read_cam_file_refuses_other_globals_and_reads_both_official_layouts(tmp_path, marker):
    hostile_npy(tmp_path / "evil.npy", marker)
    with pytest.raises(RefusedFileError, match=r"^refused to load .*evil\.npy: it asks for posix\.system"):
        read_cam_file(tmp_path / "evil.npy")
    np.save(tmp_path / "obj.npy", {"keys": np.array([0]), "IS_CAM": np.array([None], dtype=object)},
            allow_pickle=True)
    with pytest.raises(ValueError, match="'IS_CAM' is an array of dtype object"):
        read_cam_file(tmp_path / "obj.npy")
    maps = np.random.default_rng(0).random((2, 5, 6), dtype=np.float32)
    np.save(tmp_path / "sipe.npy", {"keys": np.array([0, 3]), "IS_CAM": maps}, allow_pickle=True)  # make_cam.py
    cam = read_cam_file(tmp_path / "sipe.npy")
    assert cam.kind == "is_cam" and cam.keys.tolist() == [0, 3] and np.array_equal(cam.maps, maps)
    # IRN's make_cam.py saves torch tensors beside the numpy high-res maps.
    np.save(tmp_path / "irn.npy", {"keys": torch.tensor([0, 2]), "cam": torch.rand(2, 3, 3), "high_res": maps},
            allow_pickle=True)
    cam = read_cam_file(tmp_path / "irn.npy")
    assert cam.kind == "cam" and cam.keys.tolist() == [1, 3] and np.array_equal(cam.maps, maps)


# ---------------------------------------------------------------- every checkpoint kind still loads


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory) -> Path:
    """A tiny ``sipe run`` up to the segmentation stage: SIPE, IRN and seg checkpoints of the real writers."""
    root = photo_folder(tmp_path_factory.mktemp("photos"))
    out = tmp_path_factory.mktemp("run") / "run"
    assert main(["run", "--out", str(out), "--until", "seg_train", *tiny_run_args(root)]) == 0
    return out


def test_sipe_and_resume_checkpoints_load_with_weights_only(run_folder, tmp_path):
    from sipe.models.checkpoint import checkpoint_kind, load_checkpoint

    # A finished stage keeps final.pt only; a stopped one keeps last.pt with the optimiser state to resume from.
    assert [p.name for p in (run_folder / "train" / "checkpoints").glob("*.pt")] == ["final.pt"]
    stopped = tmp_path / "stopped"
    root = photo_folder(tmp_path / "photos")
    assert main(["run", "--out", str(stopped), "--until", "train", *tiny_run_args(root),
                 "train.engine.stop_after=1"]) == 0
    ckpts = [run_folder / "train" / "checkpoints" / "final.pt", stopped / "train" / "checkpoints" / "last.pt"]
    for path in ckpts:
        ckpt = torch.load(path, weights_only=True)  # no allow-list needed: tensors and plain values only
        assert checkpoint_kind(ckpt) == "sipe" and ckpt["meta"]["class_names"][1:] == ["disc", "square"]
        model, _ = load_checkpoint(path)
        assert model.num_classes == 3
    last = sio.read_checkpoint(ckpts[1])
    assert last["optimizer"]["state"] and last["step"] == 1 < last["max_steps"] and "run_key" in last


def test_irn_and_seg_checkpoints_load_with_weights_only(run_folder):
    from sipe.models.checkpoint import checkpoint_kind
    from sipe.refine.train_irn import load_irn
    from sipe.seg.model import load_seg_checkpoint

    irn = [p for p in run_folder.rglob("*.pt") if checkpoint_kind(torch.load(p, weights_only=True)) == "irn"]
    seg = [p for p in run_folder.rglob("*.pt") if checkpoint_kind(torch.load(p, weights_only=True)) == "seg"]
    assert irn and seg
    for path in irn:
        assert load_irn(path) is not None
    for path in seg:
        model, spec = load_seg_checkpoint(path)
        assert spec.num_classes == 3 and not model.training


@pytest.mark.parametrize("zipfile", [True, False])
def test_the_authors_pth_loads_with_weights_only(tmp_path, zipfile):
    from sipe import Predictor
    from sipe.models.checkpoint import load_checkpoint

    path = tmp_path / "final.pth"
    torch.save(official_checkpoint(), path, _use_new_zipfile_serialization=zipfile)
    model, meta = load_checkpoint(path)
    assert model.num_classes == 21 and meta == {}
    assert Predictor.from_checkpoint(path, device="cpu").class_names[1] == "aeroplane"


@pytest.mark.parametrize("zipfile", [True, False])
def test_converted_deeplab_and_backbone_weights_load_with_weights_only(tmp_path, zipfile):
    """deeplab-pytorch's converted Caffe weights (an OrderedDict, often in torch's legacy format) and a
    torchvision-layout ``backbone.pth`` (what the demo's pretraining writes)."""
    from collections import OrderedDict

    import torchvision

    from sipe.models.weights import resnet_pretrained_state
    from sipe.seg.deeplabv2 import resolve_weights

    sd = OrderedDict([("base.layer1.conv1.conv.weight", torch.randn(64, 3, 7, 7)),
                      ("base.aspp.c0.bias", torch.randn(21))])
    path = tmp_path / "deeplabv1_resnet101_caffemodel.pth"
    torch.save(sd, path, _use_new_zipfile_serialization=zipfile)
    got = resolve_weights("resnet101", path)
    assert got.kind == "deeplab-pytorch" and torch.equal(got.state["base.aspp.c0.bias"], sd["base.aspp.c0.bias"])
    net = torchvision.models.resnet18(weights=None)
    backbone = tmp_path / "backbone.pth"
    sio.save_torch({k: v for k, v in net.state_dict().items() if not k.startswith("fc.")}, backbone)
    state = resnet_pretrained_state("resnet18", backbone)
    assert torch.equal(state["conv1.weight"], net.conv1.weight)
