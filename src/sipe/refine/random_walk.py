"""Random-walk propagation of class maps over IRN's boundary map, with a sparse transition.

The official code (``propagate_to_edge``) materialises the (hw x hw) transition matrix at stride
4 and squares it ``exp_times`` times: ~26 TFLOP and 0.5-0.7 GiB for a 500x375 image. Every
pixel only has its radius-5 neighbours, so the same ``2 ** exp_times`` steps are applied here
one at a time with a sparse matrix (~69 non-zeros per row): the result equals the official one
up to float rounding.
"""

from __future__ import annotations

import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from sipe.refine.affinity import edge_to_affinity, pair_paths

Backend = Literal["auto", "scipy", "torch"]


@dataclass(frozen=True)
class Walk:
    """The random walk's settings, which travel together from the config to every function here (defaults:
    the official ones). ``beta``: affinity exponent; ``exp_times``: log2 of the number of steps; ``radius``:
    neighbourhood radius of the transition at the boundary grid (stride 4)."""

    beta: float = 10.0
    exp_times: int = 8
    radius: int = 5


OFFICIAL_WALK = Walk()


def _check(cams: torch.Tensor, edge: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if cams.dim() == 4 and cams.shape[1] == 1:
        cams = cams[:, 0]
    if cams.dim() != 3:
        raise ValueError(f"cams must be (C, h, w), got shape {tuple(cams.shape)}")
    edge = edge.reshape(-1, *edge.shape[-2:])
    if edge.shape[0] != 1 or edge.shape[-2:] != cams.shape[-2:]:
        raise ValueError(
            f"edge must be (1, h, w) on the grid of cams {tuple(cams.shape[-2:])}, got {tuple(edge.shape)}"
        )
    return cams.float(), edge.float().to(cams.device)


def transition_pairs(
    edge: torch.Tensor, beta: float = 10.0, radius: int = 5
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Symmetric affinity graph of a boundary map as COO pairs (both directions, no self loops).

    Args:
        edge: (1, h, w) boundary probabilities.

    Returns:
        rows, cols (P,) int64 flat pixel indices and weights (P,) = affinity ** beta, where the
        affinity of a pair is ``1 - max(edge)`` along the straight path between its pixels.
    """
    h, w = edge.shape[-2:]
    rf = pair_paths(radius).margin
    # Padding with boundary 1 gives affinity 0 to pairs that leave the map; they are dropped.
    padded = F.pad(edge.reshape(1, h, w), (rf, rf, 0, rf), value=1.0)
    weights = edge_to_affinity(padded, radius)[0].pow(beta)  # (D, h, w), sources = all pixels
    offsets = torch.as_tensor(pair_paths(radius).offsets, device=edge.device)
    ys = torch.arange(h, device=edge.device).view(1, h, 1)
    xs = torch.arange(w, device=edge.device).view(1, 1, w)
    dst_y = ys + offsets[:, 0].view(-1, 1, 1)
    dst_x = xs + offsets[:, 1].view(-1, 1, 1)
    inside = (dst_y < h) & (dst_x >= 0) & (dst_x < w)
    src = (ys * w + xs).expand_as(inside)[inside]
    dst = (dst_y * w + dst_x)[inside]
    val = weights[inside]
    return torch.cat([src, dst]), torch.cat([dst, src]), torch.cat([val, val])


def _row_normalised(
    edge: torch.Tensor, beta: float, radius: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """COO of ``S = D^-1 A`` with A = affinity^beta plus self loops of 1, D its degrees."""
    n = edge.shape[-2] * edge.shape[-1]
    rows, cols, vals = transition_pairs(edge, beta, radius)
    diag = torch.arange(n, device=edge.device)
    rows = torch.cat([rows, diag])
    cols = torch.cat([cols, diag])
    vals = torch.cat([vals, torch.ones(n, device=edge.device, dtype=vals.dtype)])
    degree = torch.zeros(n, device=edge.device, dtype=vals.dtype).index_add_(0, rows, vals)
    return rows, cols, vals / degree[rows], n


def _scipy_steps(s: sp.csr_matrix, y: np.ndarray, steps: int, threads: int) -> np.ndarray:
    """``y <- s @ y`` ``steps`` times; row blocks on ``threads`` threads (scipy frees the GIL)."""
    n = s.shape[0]
    threads = max(1, min(threads, n // 2048))
    if threads == 1:
        for _ in range(steps):
            y = s @ y
        return y
    bounds = np.linspace(0, n, threads + 1).astype(int)
    blocks = [s[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(steps):
            y = np.concatenate(list(pool.map(lambda blk, v=y: blk @ v, blocks)))
    return y


def random_walk(cams: torch.Tensor, edge: torch.Tensor, walk: Walk = OFFICIAL_WALK, *, backend: Backend = "auto",
                dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Propagate class maps over the boundary map (the official ``propagate_to_edge``).

    The maps are multiplied by ``1 - edge``, then ``2 ** exp_times`` random-walk steps with the
    transition ``T = A / colsum(A)`` are applied (``x <- x @ T``), where ``A`` holds
    ``(1 - max edge on the path) ** beta`` for pixel pairs closer than ``radius`` and 1 on the
    diagonal.

    Args:
        cams: (C, h, w) non-negative class maps at the boundary grid (stride 4).
        edge: (1, h, w) boundary probabilities in [0, 1].
        walk: beta, exp_times, radius (:class:`Walk`).
        backend: ``"scipy"`` (CPU sparse matrix, the fastest on CPU), ``"torch"`` (torch sparse
            CSR on the tensors' device) or ``"auto"`` (scipy for CPU tensors, torch otherwise).
        dtype: precision of the walk. 256 float32 steps drift by ~5e-5 relative from the exact
            result, as much as the official float32 matrix powers do; float64 is exact to ~1e-12.

    Returns:
        (C, h, w) float32 propagated maps on the device of ``cams``.
    """
    cams, edge = _check(cams, edge)
    beta, exp_times, radius = walk.beta, walk.exp_times, walk.radius
    c, h, w = cams.shape
    if backend == "auto":
        backend = "scipy" if cams.device.type == "cpu" else "torch"
    if backend not in ("scipy", "torch"):
        raise ValueError(f"unknown random-walk backend {backend!r}; use 'auto', 'scipy' or 'torch'")
    with torch.no_grad():
        # The transition is built in float64 so that its rows sum to 1 up to the final rounding.
        x = (cams * (1.0 - edge)).reshape(c, h * w).t().contiguous().to(dtype)  # (N, C)
        rows, cols, vals, n = _row_normalised(edge.double(), float(beta), radius)
        vals = vals.to(dtype)
        steps = 2 ** int(exp_times)
        if backend == "scipy":
            s = sp.csr_matrix((vals.cpu().numpy(), (rows.cpu().numpy(), cols.cpu().numpy())), shape=(n, n))
            y = _scipy_steps(s, x.cpu().numpy(), steps, torch.get_num_threads())
            out = torch.from_numpy(y).to(cams.device)
        else:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Sparse")  # torch's beta-state notices
                s = torch.sparse_coo_tensor(torch.stack([rows, cols]), vals, (n, n)).coalesce().to_sparse_csr()
            y = x
            for _ in range(steps):
                y = s @ y
            out = y
    return out.t().reshape(c, h, w).float().contiguous()


def dense_random_walk(cams: torch.Tensor, edge: torch.Tensor, walk: Walk = OFFICIAL_WALK,
                      dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Reference: the official dense formula (matrix squared ``exp_times`` times). Tests only.

    Memory is (h w)^2; use on small maps. Args and result as :func:`random_walk`.
    """
    cams, edge = _check(cams, edge)
    beta, exp_times, radius = walk.beta, walk.exp_times, walk.radius
    c, h, w = cams.shape
    n = h * w
    rf = pair_paths(radius).margin
    # As the official code: pad by the radius with boundary 1, pair up the padded grid, densify,
    # crop the padding away, then raise to beta and normalise the columns.
    hp, wp = h + radius, w + 2 * radius
    padded = F.pad(edge.to(dtype), (radius, radius, 0, radius), value=1.0)
    aff = edge_to_affinity(padded, radius)[0].reshape(len(pair_paths(radius).offsets), -1)
    full = torch.arange(hp * wp, device=cams.device).view(hp, wp)
    src = full[: hp - rf, rf : wp - rf].reshape(1, -1).expand_as(aff)
    dst = torch.stack([full[dy : dy + hp - rf, rf + dx : wp - rf + dx].reshape(-1)
                       for dy, dx in pair_paths(radius).offsets.tolist()])
    dense = torch.zeros(hp * wp, hp * wp, dtype=dtype, device=cams.device)
    dense[src.reshape(-1), dst.reshape(-1)] = aff.reshape(-1)
    dense[dst.reshape(-1), src.reshape(-1)] = aff.reshape(-1)
    dense.fill_diagonal_(1.0)
    dense = dense.view(hp, wp, hp, wp)[:-radius, radius:-radius, :-radius, radius:-radius].reshape(n, n)
    scaled = dense.pow(beta)
    trans = scaled / scaled.sum(dim=0, keepdim=True)
    for _ in range(exp_times):
        trans = trans @ trans
    x = (cams.to(dtype) * (1.0 - edge.to(dtype))).reshape(c, n)
    return (x @ trans).reshape(c, h, w).float()
