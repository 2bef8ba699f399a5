from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

PARITY = Path(__file__).parent / "data" / "parity"


def official_checkpoint() -> dict:
    """Rebuild the official-format checkpoint ({"net": state_dict} with every alias key)."""
    d = np.load(PARITY / "official_weights_int8.npz")
    state: dict[str, torch.Tensor] = {}
    for key in d.files:
        if key.startswith("q/"):
            name = key[2:]
            state[name] = torch.from_numpy(d[key].astype(np.float32) * d["s/" + name])
        elif key.startswith("i/"):
            state[key[2:]] = torch.from_numpy(d[key])
    for alias, canon in d["aliases"]:
        state[str(alias)] = state[str(canon)]
    return {"net": state}


@pytest.fixture(scope="session")
def official_state() -> dict:
    return official_checkpoint()


@pytest.fixture(scope="session")
def reference() -> dict[str, np.ndarray]:
    with np.load(PARITY / "reference_outputs.npz") as d:
        return {k: d[k] for k in d.files}


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a whole module (``pytestmark = pytest.mark.usefixtures("one_thread")``).

    The test machine is shared: tiny convolutions run much faster without OpenMP oversubscription.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory):
    """The tiny demo (``helpers.TINY_DEMO``) run once per session: (the config passed, out dir, metrics)."""
    from helpers import TINY_DEMO
    from sipe.config import load_config
    from sipe.demo import DemoConfig, run_demo

    cfg = load_config(DemoConfig, None, TINY_DEMO)
    out = tmp_path_factory.mktemp("tiny_demo") / "demo"
    return cfg, out, run_demo(cfg, out)
