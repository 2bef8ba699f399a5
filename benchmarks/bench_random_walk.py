"""Benchmark of the sparse random walk (``sipe.refine.random_walk``) against the official dense one.

One 500x375 image at stride 4 is a 125x94 map. The official code materialises the (hw x hw)
transition and squares it 8 times (2 * 8 * (hw)^3 FLOP, ~26 TFLOP here); the dense formula is
timed on a smaller map to give the ratio.

    python benchmarks/bench_random_walk.py [--threads 2] [--repeats 3] [--device cuda]

On CUDA (``--device cuda``) the torch sparse backend is timed instead of the CPU ones.
"""

from __future__ import annotations

import argparse
import functools
import time
import warnings

import torch

from sipe.refine.random_walk import dense_random_walk, random_walk


def _inputs(c: int, h: int, w: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    cams = torch.rand(c, h, w, generator=g)
    # Sparse strong boundaries on a weak background, like a trained boundary map.
    edge = torch.rand(1, h, w, generator=g) ** 8
    return cams, edge


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _best_time(fn, repeats: int, device: torch.device) -> float:
    fn()  # warm-up (CUDA context, sparse kernels, caches)
    _sync(device)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    parser.add_argument("--repeats", type=int, default=3, help="best of N runs (default 3)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message="Sparse")  # torch's beta notice for sparse CSR

    print(f"torch {torch.__version__}, up to {args.threads} threads, best of {args.repeats}")
    print("\n500x375 image -> 125x94 map at stride 4, radius 5, beta 10, 2^8 steps")
    print(f"{'channels':>8} {'backend':>8} {'dtype':>8} {'threads':>7} {'seconds':>8}")
    rows = []
    configs = [("scipy", torch.float32, 1), ("scipy", torch.float32, args.threads),
               ("scipy", torch.float64, args.threads), ("torch", torch.float32, args.threads)]
    if device.type == "cuda":
        print(f"device: {torch.cuda.get_device_name(device)}")
        configs = [("torch", torch.float32, args.threads), ("torch", torch.float64, args.threads)]
    for c in (3, 21):
        cams, edge = (t.to(device) for t in _inputs(c, 94, 125))
        for backend, dtype, threads in configs:
            torch.set_num_threads(threads)
            run = functools.partial(random_walk, cams, edge, backend=backend, dtype=dtype)
            t = _best_time(run, args.repeats, device)
            rows.append((c, backend, dtype, threads, t))
            print(f"{c:>8} {backend:>8} {str(dtype).split('.')[-1]:>8} {threads:>7} {t:8.3f}")
    torch.set_num_threads(args.threads)

    h, w, c = 30, 40, 3
    cams, edge = (t.to(device) for t in _inputs(c, h, w))
    n = h * w
    t_sparse = _best_time(lambda: random_walk(cams, edge), args.repeats, device)
    t_dense = _best_time(lambda: dense_random_walk(cams, edge, dtype=torch.float32), args.repeats, device)
    err = (random_walk(cams, edge, dtype=torch.float64) - dense_random_walk(cams, edge)).abs().max().item()
    print(f"\n{w}x{h} map ({n} pixels, {c} channels): dense matrix powers {t_dense:.3f} s "
          f"({2 * 8 * n**3 / 1e9:.0f} GFLOP), sparse {t_sparse:.3f} s: {t_dense / t_sparse:.1f}x faster; "
          f"max |sparse64 - dense64| = {err:.1e}")
    n_big = 125 * 94
    print(f"dense formula at 125x94 would be {2 * 8 * n_big**3 / 1e12:.0f} TFLOP and "
          f"{n_big**2 * 4 / 2**30:.2f} GiB per matrix (not run)")
    default = "scipy" if device.type == "cpu" else "torch"
    worst = max(t for c, b, d, n, t in rows if b == default and d == torch.float32 and n == args.threads)
    print(f"\ntarget < 2 s per 500x375 image (default backend, float32): worst {worst:.3f} s -> "
          f"{'met' if worst < 2 else 'MISSED'}")


if __name__ == "__main__":
    main()
