"""The option vocabulary the sub-commands share: dataset, device, configuration."""

from __future__ import annotations

import argparse

import pytest
import torch
import yaml

from sipe.cli import build_parser, main
from sipe.cli._common import DatasetArgsError, build_dataset_from_args, resolve_device
from sipe.engine import resolve_device as engine_resolve_device

DATASET_OPTIONS = {"--dataset", "--root", "--split", "--class-names", "--mask-dir"}


def _subcommands(parser: argparse.ArgumentParser, prefix: str = "") -> dict[str, argparse.ArgumentParser]:
    """Every leaf sub-command parser, keyed by its command words ("refine labels")."""
    out = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out.update(_subcommands(sub, f"{prefix} {name}".strip()))
    return out or {prefix: parser}


def test_every_dataset_command_speaks_the_same_options():
    commands = _subcommands(build_parser())
    readers = {name: p for name, p in commands.items() if "--root" in p._option_string_actions}
    assert set(readers) == {"cam", "eval", "seg eval", "refine crf-regions", "refine crf", "refine train-irn",
                            "refine labels", "report"}
    for name, p in readers.items():
        assert DATASET_OPTIONS <= set(p._option_string_actions), name
        # The pre-helper names of the custom-dataset options are gone everywhere.
        assert not {"--labels", "--masks"} & set(p._option_string_actions), name
        assert p._option_string_actions["--dataset"].choices == ("voc", "coco", "custom", "synthetic"), name
    with_device = {name for name, p in commands.items() if "--device" in p._option_string_actions}
    assert with_device == {"cam", "seg eval", "predict", "refine labels"}
    for name in with_device:
        dev = commands[name]._option_string_actions["--device"]
        assert dev.default == "auto" and dev.type is commands["cam"]._option_string_actions["--device"].type, name
    configured = {name for name, p in commands.items() if "--print-config" in p._option_string_actions}
    assert configured == {"train", "seg train", "refine train-irn", "run", "demo"}
    for name in configured - {"run", "demo"}:  # sipe run resumes by itself, stage by stage (--from / --until)
        assert {"--config", "--resume", "--no-resume"} <= set(commands[name]._option_string_actions), name


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "CPU", "cuda:"])
def test_bad_device_names_are_usage_errors(device, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["predict", "x.jpg", "--checkpoint", "c.pt", "--device", device])
    assert exc.value.code == 2
    assert f"invalid device '{device}'; use auto, cpu, cuda or cuda:N" in capsys.readouterr().err


def test_resolve_device(monkeypatch):
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        engine_resolve_device("tpu")
    # No CUDA: auto falls back to the CPU, an explicit CUDA device is an error that says so.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ValueError, match="needs CUDA, which is not available here"):
        resolve_device("cuda")
    # Two GPUs: the process's own GPU for auto and bare cuda, an index as given if it exists.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert resolve_device("auto") == torch.device("cuda", 1)
    assert resolve_device("cuda") == torch.device("cuda", 1)
    assert resolve_device("cuda:0") == torch.device("cuda", 0)
    with pytest.raises(ValueError, match="'cuda:2' does not exist: this machine has 2 CUDA device"):
        resolve_device("cuda:2")


def _args(**kw) -> argparse.Namespace:
    base = {"dataset": "voc", "root": "r", "split": "train", "class_names": None, "mask_dir": None}
    return argparse.Namespace(**{**base, **kw})


def test_build_dataset_from_args(monkeypatch):
    import sipe.data

    calls = []
    monkeypatch.setattr(sipe.data, "build_dataset", lambda *a, **kw: calls.append((a, kw)) or "ds")
    assert build_dataset_from_args(_args(dataset="custom", split="l.csv", class_names="a, b,", mask_dir="m"),
                                   with_masks=False) == "ds"
    assert calls[-1] == (("custom", "r", "l.csv"), {"with_masks": False, "class_names": ["a", "b"], "mask_dir": "m"})
    # --class-names wins over a caller's default class list.
    build_dataset_from_args(_args(class_names="cat"), class_names=["background", "dog"])
    assert calls[-1] == (("voc", "r", "train"), {"class_names": ["cat"]})
    build_dataset_from_args(_args(), class_names=["background", "dog"])
    assert calls[-1] == (("voc", "r", "train"), {"class_names": ["background", "dog"]})
    n = len(calls)
    with pytest.raises(DatasetArgsError, match="--class-names applies to --dataset voc or custom, not coco"):
        build_dataset_from_args(_args(dataset="coco", class_names="a"))
    with pytest.raises(DatasetArgsError, match="--mask-dir applies to --dataset custom only, not synthetic"):
        build_dataset_from_args(_args(dataset="synthetic", mask_dir="m"))
    with pytest.raises(DatasetArgsError, match="needs --split LABELS_FILE and --mask-dir DIR"):
        build_dataset_from_args(_args(dataset="custom", split="l.csv"), masks_needed=True)
    assert len(calls) == n  # usage errors are raised before any dataset is read


def test_dataset_usage_errors_exit_2_before_reading_anything(tmp_path, capsys):
    missing = str(tmp_path / "missing.pt")
    assert main(["seg", "eval", "--checkpoint", missing, "--dataset", "custom", "--root", str(tmp_path),
                 "--split", "l.csv"]) == 2
    err = capsys.readouterr().err
    assert "sipe seg eval: error: --dataset custom needs --split LABELS_FILE and --mask-dir DIR" in err
    assert main(["refine", "crf", "--dataset", "synthetic", "--root", str(tmp_path), "--mask-dir", "m",
                 "--cam-dir", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "sipe refine crf: error: --mask-dir applies to --dataset custom only" in capsys.readouterr().err
    assert main(["cam", "--checkpoint", missing, "--dataset", "coco", "--root", str(tmp_path), "--class-names", "a",
                 "--out", str(tmp_path / "o")]) == 2
    assert "sipe cam: error: --class-names applies to --dataset voc or custom" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(("command", "lr", "momentum"), [
    (["train"], 0.1, 1e-4),
    (["seg", "train"], 0.01, 0.9),
    (["refine", "train-irn", "--root", "r", "--label-dir", "l"], 0.1, 1e-4),
])
def test_print_config_with_resume_flag_and_partial_overrides(command, lr, momentum, tmp_path, capsys):
    assert main([*command, "--out", str(tmp_path / "run"), "--no-resume", "--print-config", "engine.epochs=7"]) == 0
    engine = yaml.safe_load(capsys.readouterr().out)["engine"]
    # The override changes one key; the command's own engine defaults stay.
    assert (engine["epochs"], engine["resume"], engine["lr"], engine["momentum"]) == (7, False, lr, momentum)
    assert not (tmp_path / "run").exists()
    assert main([*command, "--out", str(tmp_path / "run"), "engine.epochz=7"]) == 2
    assert "error: unknown config key 'engine.epochz'" in capsys.readouterr().err
