"""Frozen batch norm of a module:function body (TensorFlow-style momentum 0.01 / eps 1e-3): what freezing
keeps, a body that says it is pretrained, and the warning for statistics that were never estimated."""

from __future__ import annotations

import logging
import sys
import textwrap

import pytest
import torch
from torch import nn

from sipe.config.seg import SegModelConfig, SegTrainConfig
from sipe.seg.train import prepare_model

BN_MODULE = textwrap.dedent('''
    import torch
    from torch import nn

    def _bn(c):
        return nn.BatchNorm2d(c, momentum=0.01, eps=1e-3)  # TensorFlow's defaults, as in ported EfficientNets

    class Net(nn.Module):
        out_channels = (8, 16, 16, 32)

        def __init__(self, trained=True):
            super().__init__()
            self.a = nn.Sequential(nn.Conv2d(3, 8, 3, stride=4, padding=1), _bn(8), nn.ReLU())
            self.b = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), _bn(16), nn.ReLU())
            self.c = nn.Sequential(nn.Conv2d(16, 16, 3, stride=2, padding=1), _bn(16), nn.ReLU())
            self.d = nn.Sequential(nn.Conv2d(16, 32, 3, padding=1), _bn(32), nn.ReLU())
            if trained:  # statistics as a pretrained network has them
                g = torch.Generator().manual_seed(0)
                for m in self.modules():
                    if isinstance(m, nn.BatchNorm2d):
                        m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                        m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)

        def forward(self, x):
            a = self.a(x)
            b = self.b(a)
            c = self.c(b)
            return [a, b, c, self.d(c)]

    def declared():
        net = Net()
        net.pretrained = True  # loads its own weights: the freezing rule may see it
        return net

    def undeclared():
        return Net()

    def random():
        return Net(trained=False)
''')


@pytest.fixture(scope="module")
def bn_module(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bn_module")
    (folder / "sipe_bn_net.py").write_text(BN_MODULE)
    sys.path.insert(0, str(folder))
    yield "sipe_bn_net"
    sys.path.remove(str(folder))
    sys.modules.pop("sipe_bn_net", None)


def _model(bn_module: str, factory: str, freeze_bn: bool | None) -> nn.Module:
    cfg = SegTrainConfig(model=SegModelConfig(backbone=f"{bn_module}:{factory}", weights=None, freeze_bn=freeze_bn,
                                              output_stride=16))
    return prepare_model(cfg, 3, 1, torch.device("cpu"))


def _body_norms(model: nn.Module) -> list[nn.BatchNorm2d]:
    return [m for m in model.backbone.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def test_frozen_user_batchnorm_keeps_eps_statistics_and_eval_mode(bn_module):
    model = _model(bn_module, "undeclared", True)
    norms = _body_norms(model)
    before = [(n.running_mean.clone(), n.running_var.clone()) for n in norms]
    model.train()  # what the engine does before every run
    assert all(n.eps == 1e-3 and not n.training for n in norms)
    assert not any(p.requires_grad for n in norms for p in n.parameters())
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    out = model(torch.randn(2, 3, 64, 64))["out"]
    out.square().mean().backward()
    opt.step()
    assert all(torch.equal(m, n.running_mean) and torch.equal(v, n.running_var)
               for (m, v), n in zip(before, norms, strict=True))


def test_a_body_that_says_it_is_pretrained_gets_frozen_batchnorm(bn_module, caplog):
    with caplog.at_level(logging.INFO, logger="sipe.seg.train"):
        assert not any(n.training for n in _body_norms(_model(bn_module, "declared", None).train()))
    # the log says why it is frozen and how to train it instead
    assert [r.getMessage() for r in caplog.records if "frozen" in r.getMessage()] == [
        "the body's batch norm is frozen (the body declares pretrained = True); model.freeze_bn=false trains it"]
    caplog.clear()
    # without the declaration (and without model.weights) it trains its batch norm, as before
    with caplog.at_level(logging.INFO, logger="sipe.seg.train"):
        assert all(n.training for n in _body_norms(_model(bn_module, "undeclared", None).train()))
    assert not [r for r in caplog.records if "frozen" in r.getMessage()]


def test_freezing_statistics_never_estimated_warns(bn_module, caplog):
    with caplog.at_level(logging.WARNING, logger="sipe.seg.backbones"):
        _model(bn_module, "random", True)
    assert any("initial ones" in r.getMessage() and "freeze_bn=false" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="sipe.seg.backbones"):
        _model(bn_module, "undeclared", True)
    assert not caplog.records
