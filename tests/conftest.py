from __future__ import annotations

import sys
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
    from helpers import TINY_DEMO, run_demo
    from sipe.config import load_config
    from sipe.run.config import DEMO_CONFIG, RunConfig

    cfg = load_config(RunConfig, DEMO_CONFIG, TINY_DEMO)
    out = tmp_path_factory.mktemp("tiny_demo") / "demo"
    return cfg, out, run_demo(out)


@pytest.fixture(scope="module")
def user_module(tmp_path_factory):
    """A user's backbone module (``helpers.USER_MODULE``) importable as ``sipe_user_net`` for a module."""
    from helpers import USER_MODULE

    folder = tmp_path_factory.mktemp("user_module")
    (folder / "sipe_user_net.py").write_text(USER_MODULE)
    sys.path.insert(0, str(folder))
    yield folder
    sys.path.remove(str(folder))
    sys.modules.pop("sipe_user_net", None)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    """Four 64 px synthetic training images (VOC layout) for a module."""
    from sipe.data import generate_synthetic

    return generate_synthetic(tmp_path_factory.mktemp("syn"), seed=0, n_train=4, n_val=0, image_size=64,
                              progress=False)
