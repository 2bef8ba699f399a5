"""IS-CAM generation over a data set, sharded under torchrun: images/s with 1 and 2 processes.

Usage: python benchmarks/bench_sharding.py [--images 24] [--size 160,240] [--cores 2] [--cli]

Writes a small synthetic data set (``sipe.data.generate_synthetic``) and a random-weights ResNet-50
checkpoint to a temporary folder, then runs ``torchrun --nproc_per_node P`` with this script as
the worker for P = 1 and 2, splitting ``--cores`` threads between the processes. Each worker loads
the checkpoint, warms up on one image, waits at a barrier, runs ``sipe.cams.generate.generate_cams`` on its
shard (every P-th image, 4 scales + flip, channels-last, batch norm folded, one loader worker) and
waits at a barrier again: the time between the barriers is the generation time, without the
start-up (imports, checkpoint loading). ``--cli`` also times ``torchrun -m sipe cam`` end to end.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _measure import load_average  # noqa: E402


def worker(args: argparse.Namespace) -> None:
    import torch.distributed as dist

    from sipe.cams.generate import CamConfig, generate_cams
    from sipe.cams.multiscale import multiscale_is_cam, prepare_for_inference
    from sipe.data.synthetic import SyntheticDataset
    from sipe.models.checkpoint import load_checkpoint

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world > 1:
        dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(args.threads)
    dataset = SyntheticDataset(args.root, "train")
    model, _ = load_checkpoint(args.checkpoint)
    warm = prepare_for_inference(model)
    multiscale_is_cam(warm, dataset.read_image(0), dataset.get_labels(0))
    del warm
    if world > 1:
        dist.barrier()
    t0 = time.perf_counter()
    summary = generate_cams(model, dataset, args.out, CamConfig(channels_last=True, num_workers=1), rank, world)
    written = torch.tensor([summary["written"]])
    if world > 1:
        dist.barrier()
        dist.all_reduce(written)
    seconds = time.perf_counter() - t0
    if rank == 0:
        print(json.dumps({"seconds": seconds, "written": int(written.item())}), flush=True)
    if world > 1:
        dist.destroy_process_group()


def torchrun(nproc: int, threads: int, script_args: list[str]) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *script_args]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--size", default="160,240", help="image side range lo,hi (synthetic generator)")
    parser.add_argument("--cores", type=int, default=2, help="threads shared by the processes")
    parser.add_argument("--cli", action="store_true", help="also time 'torchrun -m sipe cam' end to end")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--root", help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    from sipe.data import generate_synthetic
    from sipe.io import save_torch
    from sipe.models import build_sipe

    lo, hi = (int(v) for v in args.size.split(","))
    print(f"torch {torch.__version__}, {args.cores} cores, {args.images} synthetic images of {lo}-{hi} px, "
          f"ResNet-50 (random weights), 4 scales + flip; load average at start {load_average()}")
    with tempfile.TemporaryDirectory(prefix="sipe_shard_") as tmp:
        tmp = Path(tmp)
        root = generate_synthetic(tmp / "data", seed=0, n_train=args.images, n_val=0, image_size=(lo, hi),
                                  num_classes=4, progress=False)
        torch.manual_seed(0)
        ckpt = tmp / "random.pt"
        save_torch({"model": build_sipe("resnet50", num_classes=5).state_dict()}, ckpt)
        rows = []
        for nproc in (1, 2):
            threads = max(1, args.cores // nproc)
            out = tmp / f"out{nproc}"
            res = torchrun(nproc, threads, [__file__, "--worker", "--root", str(root), "--checkpoint", str(ckpt),
                                            "--out", str(out), "--threads", str(threads)])
            stats = json.loads(res.stdout.strip().splitlines()[-1])
            if stats["written"] != args.images:
                raise SystemExit(f"{nproc} processes wrote {stats['written']} of {args.images} images")
            rows.append((nproc, threads, stats["seconds"], load_average()))
        cli_rows = []
        if args.cli:
            for nproc in (1, 2):
                threads = max(1, args.cores // nproc)
                t0 = time.perf_counter()
                torchrun(nproc, threads, ["-m", "sipe", "cam", "--checkpoint", str(ckpt), "--dataset", "synthetic",
                                          "--root", str(root), "--split", "train", "--out", str(tmp / f"cli{nproc}"),
                                          "--channels-last", "--workers", "1", "--device", "cpu"])
                cli_rows.append((nproc, threads, time.perf_counter() - t0))

    base = args.images / rows[0][2]
    print()
    print("| processes | threads each | images | generation time | images/s | speed-up | load average after |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for nproc, threads, seconds, load in rows:
        ips = args.images / seconds
        print(f"| {nproc} | {threads} | {args.images} | {seconds:.1f} s | {ips:.2f} | {ips / base:.2f}x | {load} |")
    if cli_rows:
        print("\n| `torchrun -m sipe cam`, end to end | threads each | wall time | images/s |")
        print("| --- | --- | --- | --- |")
        for nproc, threads, seconds in cli_rows:
            print(f"| {nproc} process(es) | {threads} | {seconds:.1f} s | {args.images / seconds:.2f} |")


if __name__ == "__main__":
    main()
