"""Names of the method's options, torch-free so that the configuration layer can declare them."""

from __future__ import annotations

from typing import Literal, get_args

__all__ = ["STRUCTURES", "Structure"]

# Which features' pixel correlations define the structure-aware seeds: the last backbone stage
# ("backbone") or the hierarchical side features ("hierarchical").
Structure = Literal["backbone", "hierarchical"]
STRUCTURES: tuple[str, ...] = get_args(Structure)
