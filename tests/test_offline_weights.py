"""model.weights=timm without a network: refused in seconds (one bounded probe of the Hugging Face Hub),
not after the hub client's minute of retries."""

from __future__ import annotations

import time

import pytest

from helpers import free_port
from sipe.errors import InputError
from sipe.models.weights import check_hub_reachable

pytest.importorskip("timm")


def test_timm_weights_are_refused_within_seconds_when_the_hub_cannot_be_reached(monkeypatch):
    from sipe.models.registry import build_backbone

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    start = time.monotonic()
    with pytest.raises(ValueError) as err:  # BackboneError: the command line's exit status 1
        build_backbone("timm:convnext_atto", "timm")
    assert time.monotonic() - start < 5.0
    message = str(err.value)
    assert "timm's pretrained weights of 'convnext_atto' (model.weights=timm)" in message
    assert "cannot be reached (ConnectionRefusedError" in message and "HF_HUB_OFFLINE=1" in message


def test_a_lookup_that_hangs_counts_as_offline_after_the_timeout(monkeypatch):
    import socket

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    def hangs(*args, **kwargs):
        time.sleep(10)
        raise OSError("answered too late")  # the probe thread ends cleanly, after the test

    monkeypatch.setattr(socket, "create_connection", hangs)
    start = time.monotonic()
    with pytest.raises(InputError, match="no answer within 0.2 s"):
        check_hub_reachable("the weights", timeout=0.2)
    assert time.monotonic() - start < 1.0


def test_hf_hub_offline_skips_the_probe(monkeypatch):
    import socket

    def no_network(*a, **k):
        raise AssertionError("probed although HF_HUB_OFFLINE=1")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    check_hub_reachable("the weights")


def test_unfetchable_torchvision_weights_name_the_three_ways_forward_in_one_line(monkeypatch):
    from torchvision.models import ResNet18_Weights

    from sipe.models.weights import resnet_pretrained_state

    def offline(self, *args, **kwargs):
        raise OSError("Name or service not known")

    monkeypatch.setattr(type(ResNet18_Weights.IMAGENET1K_V1), "get_state_dict", offline)
    with pytest.raises(InputError) as err:
        resnet_pretrained_state("resnet18", "IMAGENET1K_V1")
    message = str(err.value)
    assert "\n" not in message and len(message) < 700
    assert "(1) a local weights file" in message and "/path/to/resnet18-f37072fd.pth" in message
    assert "(2) a timm:<model> or module:function backbone with its own weights" in message
    assert "(3) weights=null: random weights" in message and "cost most of the accuracy" in message


def test_an_unreachable_hub_names_the_three_ways_forward_too(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    with pytest.raises(InputError, match=r"\(1\) a local weights file.*\(2\) a timm:<model>.*\(3\) weights=null"):
        check_hub_reachable("the weights", timeout=1.0)
