"""``sipe demo``: the whole method end to end on the embedded synthetic dataset, on a CPU."""

from sipe.demo.config import DemoConfig, SyntheticConfig
from sipe.demo.run import run_demo

__all__ = ["DemoConfig", "SyntheticConfig", "run_demo"]
