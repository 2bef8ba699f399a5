"""The backbone registry: timm and user backbones from the config, through train, cam and predict."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from sipe.cli import main
from sipe.errors import InputError
from sipe.models import build_backbone, build_sipe
from sipe.models.registry import BackboneError

timm = pytest.importorskip("timm")

BACKBONES = ["timm:resnet18", "timm:efficientnet_b0", "timm:convnext_atto", "sipe_user_net:tiny"]


@pytest.mark.parametrize("name", BACKBONES)
def test_backbone_gives_four_maps_at_strides_4_8_16_16(name, user_module):
    backbone = build_backbone(name).eval()
    with torch.no_grad():
        maps = backbone(torch.zeros(2, 3, 64, 96))
    assert [tuple(m.shape[2:]) for m in maps] == [(16, 24), (8, 12), (4, 6), (4, 6)]
    assert [m.shape[1] for m in maps] == list(backbone.out_channels)
    assert all(m.shape[0] == 2 for m in maps)


@pytest.mark.slow  # 10-50 s each on 2 busy cores: train, cam and predict per backbone
@pytest.mark.parametrize("name", BACKBONES)
def test_train_then_cam_and_predict_rebuild_from_the_checkpoint_alone(name, user_module, synthetic, tmp_path,
                                                                      capsys):
    run = tmp_path / "run"
    assert main([
        "train", "--out", str(run), "data.kind=synthetic", f"data.root={synthetic}", "data.split=train",
        "data.val_split=null", f"model.backbone={name}", "model.weights=null", "aug.resize_long=[64, 64]",
        "aug.crop_size=64", "engine.batch_size=2", "engine.epochs=1", "engine.num_workers=0",
        "engine.progress=false", "engine.device=cpu",
    ]) == 0  # fmt: skip
    ckpt = torch.load(run / "checkpoints" / "final.pt", weights_only=False)
    assert ckpt["step"] == 2  # 4 images, batch 2
    assert ckpt["meta"]["backbone"] == name
    assert ckpt["meta"]["backbone_kwargs"] == {"frozen_stages": 2, "freeze_bn": True, "backbone_options": {}}

    from sipe.models.checkpoint import load_checkpoint

    model, _ = load_checkpoint(run / "checkpoints" / "final.pt")  # nothing but the file
    assert all(torch.equal(v, ckpt["model"][k]) for k, v in model.state_dict().items())

    cams = tmp_path / "cams"
    assert main(["cam", "--checkpoint", str(run / "checkpoints" / "final.pt"), "--dataset", "synthetic",
                 "--root", str(synthetic), "--split", "train", "--out", str(cams), "--scales", "1.0",
                 "--workers", "0", "--device", "cpu"]) == 0
    files = sorted((cams / "is_cam").glob("*.npz"))
    assert len(files) == 4
    with np.load(files[0]) as z:
        assert z[sorted(z.files)[-1]].shape[-2:] == (64, 64)

    image = next((synthetic / "JPEGImages").glob("*.jpg"))
    pred = tmp_path / "pred"
    names = ckpt["meta"]["class_names"]
    assert main(["predict", str(image), "--checkpoint", str(run / "checkpoints" / "final.pt"), "--labels",
                 names[1], "--out", str(pred), "--no-overlay", "--scales", "1.0", "--device", "cpu"]) == 0
    assert (pred / f"{image.stem}.png").is_file()
    capsys.readouterr()


@pytest.mark.parametrize(("factory", "message"), [
    ("three_maps", "returned 3 feature maps; the contract needs four"),
    ("stride32", "gives maps at strides 4, 8, 16, 32; the contract needs 4, 8, 16, 16"),
    ("wrong_channels", "gives maps with [8, 16, 16, 32] channels but declares out_channels=(8, 16, 16, 64)"),
])  # fmt: skip
def test_contract_violations_each_give_their_message(factory, message, user_module):
    with pytest.raises(BackboneError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        build_backbone(f"sipe_user_net:{factory}")


def test_contract_violation_through_sipe_train_is_one_line_and_exit_1(user_module, synthetic, tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path / "run"), "data.kind=synthetic", f"data.root={synthetic}",
                 "data.split=train", "data.val_split=null", "model.backbone=sipe_user_net:stride32",
                 "model.weights=null", "engine.batch_size=2", "engine.device=cpu"]) == 1
    err = capsys.readouterr().err
    assert "strides 4, 8, 16, 32" in err and "Traceback" not in err


def test_bad_names_and_options(user_module):
    with pytest.raises(BackboneError, match="unknown backbone 'resnet99'"):
        build_backbone("resnet99")
    with pytest.raises(BackboneError, match="timm has no model 'no_such_net'"):
        build_backbone("timm:no_such_net")
    with pytest.raises(BackboneError, match="cannot run at output stride 16"):
        build_backbone("timm:vit_tiny_patch16_224")
    with pytest.raises(BackboneError, match="cannot import module 'no_such_module'"):
        build_backbone("no_such_module:net")
    from sipe.config import ConfigError, from_dict
    from sipe.train import SIPETrainConfig

    with pytest.raises(ConfigError, match="unknown backbone"):
        from_dict(SIPETrainConfig, {"model": {"backbone": "timm"}})
    # options reach the factory
    assert build_backbone("sipe_user_net:tiny", options={"declared": (8, 16, 16, 32)}).out_channels == (8, 16, 16, 32)


def test_missing_timm_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm now raises ImportError
    with pytest.raises(BackboneError, match=r"pip install 'sipe\[timm\]'"):
        build_backbone("timm:resnet18")


def _outputs(model: torch.nn.Module) -> torch.Tensor:
    torch.manual_seed(1)
    with torch.no_grad():
        return model.eval()(torch.randn(1, 3, 64, 64))[-1]


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_weights_file_with_matching_keys_loads(suffix, tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(5)
    source = timm.create_model("convnext_atto")  # a plain timm model: its keys are the published files'
    path = tmp_path / f"convnext_atto{suffix}"
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    save_file(state, str(path)) if suffix == ".safetensors" else torch.save(state, path)
    torch.manual_seed(0)
    random_init = build_backbone("timm:convnext_atto")
    torch.manual_seed(0)
    loaded = build_backbone("timm:convnext_atto", weights=path)
    assert not torch.allclose(_outputs(random_init), _outputs(loaded))  # the outputs changed
    assert torch.equal(loaded.body.stages_3.blocks[0].conv_dw.weight, source.stages[3].blocks[0].conv_dw.weight)
    own = loaded.body.state_dict()
    assert all(torch.equal(own[k], state[k.replace("_", ".", 1)] if k not in state else state[k]) for k in own)


def test_weights_for_a_user_backbone_and_refusals(user_module, tmp_path):
    torch.manual_seed(3)
    source = build_backbone("sipe_user_net:tiny").body
    good = tmp_path / "mine.pth"
    torch.save({"state_dict": source.state_dict()}, good)
    torch.manual_seed(0)
    before = _outputs(build_backbone("sipe_user_net:tiny"))
    torch.manual_seed(0)
    loaded = build_backbone("sipe_user_net:tiny", weights=good)
    assert not torch.allclose(before, _outputs(loaded))
    assert torch.equal(loaded.body.d.weight, source.d.weight)

    unrelated = tmp_path / "unrelated.pth"
    torch.save({"fc.weight": torch.zeros(3, 3), "fc.bias": torch.zeros(3)}, unrelated)
    with pytest.raises(BackboneError, match="match 0 of the backbone's 8 keys"):
        build_backbone("sipe_user_net:tiny", weights=unrelated)
    partial = tmp_path / "partial.pth"
    torch.save({k: v for k, v in source.state_dict().items() if not k.startswith("d.")}, partial)
    with pytest.raises(BackboneError, match=r"match 6 of the backbone's 8 keys \(2 missing"):
        build_backbone("sipe_user_net:tiny", weights=partial)
    with pytest.raises(BackboneError, match="does not exist"):
        build_backbone("timm:resnet18", weights=tmp_path / "absent.safetensors")
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not a safetensors file")
    with pytest.raises(BackboneError, match="cannot read weights from"):
        build_backbone("timm:resnet18", weights=broken)
    with pytest.raises(BackboneError, match="match 0 of the backbone's"):
        build_backbone("timm:convnext_atto", weights=good)


def test_timm_pretrained_offline_is_refused_not_random(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # no network: fails at once
    # Refused either by sipe's quick reachability probe (no HF_HUB_OFFLINE in the environment, no network) or,
    # when the hub answers, by the hub client's offline mode: never random weights.
    with pytest.raises((BackboneError, InputError), match="may be offline"):
        build_sipe("timm:resnet18", 3, weights="timm")
