"""``generate_cams`` over a folder of VOC-like image sizes: images/s, batch 1 against batched.

Usage: python benchmarks/bench_generate.py [--images 24] [--batches 1,4] [--precisions fp32,bf16]
       [--full] [--official] [--cudnn-benchmark both] [--device cpu|cuda] [--out DIR]

The folder: synthetic scenes (PNG) of VOC's common sizes, 500x375 (half of them) and 375x500 (a
quarter), and a tail of other sizes, one image each; by default at half those sizes (250x188, ...) so
that a CPU run stays within minutes, ``--full`` for the real ones. The network: ResNet-50, K=21,
``bench_inference.probe_model`` (random weights calibrated so that IS-CAMs are not all zero, which
plain random weights give, and comparisons of maps mean something), each image labelled with the
classes drawn in it; 4 scales + flip; the files written (npy, float32, so that maps compare exactly).
The line under the table says how much of the maps is non-zero.

Rows: every (precision, batch_images) pair, and on CUDA with ``torch.backends.cudnn.benchmark`` off
and on (with it on, each image size is autotuned the first time it is seen: ``--per-image`` prints each
image's seconds, so that the first-seen-size cost shows). ``--official`` adds the official
``make_cam``'s computation over the same folder: the network as built (no batch-norm folding,
contiguous), an image and its flip as one batch of 2 per scale, the paper's IPE with its (K, P, P)
products materialised (``bench_ipe.official_ipe``), one pickled npy per image; and its maps against ours.
Each batched row's files are compared with batch 1's: how many are byte-equal, the max abs difference.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from _measure import load_average  # noqa: E402
from bench_inference import probe_model  # noqa: E402
from sipe.cams.generate import CamConfig, generate_cams  # noqa: E402
from sipe.cams.multiscale import DEFAULT_SCALES, fuse_scales, kept_classes, scale_batch  # noqa: E402
from sipe.core import ipe  # noqa: E402
from sipe.data.synthetic import draw_synthetic_image  # noqa: E402
from sipe.io import save_npy_dict  # noqa: E402

COMMON = [(375, 500)] * 2 + [(500, 375)]  # (H, W): VOC's 500x375 twice as often as 375x500
TAIL = [(333, 500), (500, 333), (334, 500), (400, 500), (360, 480), (366, 500), (500, 400), (281, 500)]


class Folder:
    """A folder of synthetic scenes (PNG) labelled with the classes drawn in them, as generate_cams reads it."""

    def __init__(self, root: Path, sizes: list[tuple[int, int]], num_classes: int = 21) -> None:
        self.root, self.class_names = root, ["background"] + [f"c{k}" for k in range(1, num_classes)]
        self.names, self.sizes = [f"{i:04d}" for i in range(len(sizes))], list(sizes)
        self.labels = np.zeros((len(sizes), num_classes - 1), np.float32)
        for i, (h, w) in enumerate(sizes):
            image, mask, _ = draw_synthetic_image(np.random.default_rng(100 + i), h, w, num_classes=6, max_objects=3)
            self.labels[i, [k - 1 for k in np.unique(mask) if 0 < k < num_classes]] = 1
            Image.fromarray(image).save(root / f"{self.names[i]}.png")

    def __len__(self) -> int:
        return len(self.names)

    def image_path(self, i: int) -> Path:
        return self.root / f"{self.names[i]}.png"

    def read_image(self, i: int) -> np.ndarray:
        return np.array(Image.open(self.image_path(i)).convert("RGB"))

    def get_labels(self, i: int) -> np.ndarray:
        return self.labels[i].copy()

    def first(self) -> Folder:
        """The same folder limited to its first image (for warm-ups)."""
        out = Folder.__new__(Folder)
        out.__dict__.update({**self.__dict__, "names": self.names[:1], "labels": self.labels[:1]})
        return out


def folder_sizes(n: int, full: bool) -> list[tuple[int, int]]:
    """n (H, W) sizes: 3/4 of them the common two, the rest the tail (one each, cycling), interleaved."""
    n_tail = n // 4
    common = [COMMON[i % len(COMMON)] for i in range(n - n_tail)]
    tail = [TAIL[i % len(TAIL)] for i in range(n_tail)]
    sizes = []
    for i in range(n):  # a tail image every fourth one, as a shuffled list would bring them
        sizes.append(tail.pop() if i % 4 == 3 and tail else common.pop())
    f = 1.0 if full else 0.5
    return [(round(h * f), round(w * f)) for h, w in sizes]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def official_ipe(cam: torch.Tensor, hie: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    from bench_ipe import official_ipe as materialised

    return materialised(cam, hie, hie, mask)


@torch.no_grad()
def official_make_cam(model: torch.nn.Module, ds: Folder, out: Path, device: torch.device) -> float:
    """The official make_cam's computation over ``ds``; returns seconds (files in ``out``)."""
    out.mkdir(parents=True)
    sync(device)
    t0 = time.perf_counter()
    for i in range(len(ds)):
        image, labels = ds.read_image(i), ds.get_labels(i)
        keys = kept_classes(labels)
        mask = torch.cat([torch.ones(1), torch.from_numpy(labels)]).view(1, -1, 1, 1).to(device)
        maps = []
        for s in DEFAULT_SCALES:
            f = model.features(scale_batch(image, s, True).to(device))  # image + flip, one batch of 2
            raw = f.raw_cam[:1] + f.raw_cam[1:].flip(-1)
            hie = f.hie[:1] + f.hie[1:].flip(-1)
            maps.append(official_ipe(ipe.normalize_cam(raw), hie, mask)[0][torch.as_tensor(keys, device=device)])
        fused = fuse_scales(maps, image.shape[:2]).cpu().numpy()
        save_npy_dict(out / f"{ds.names[i]}.npy", {"keys": keys, "IS_CAM": fused})
    sync(device)
    return time.perf_counter() - t0


def timed_generate(model: torch.nn.Module, ds: Folder, out: Path, cfg: CamConfig, device: torch.device,
                   live: bool = False) -> tuple[float, list[float]]:
    """Seconds of one generate_cams call, and the seconds between one IS-CAM file and the next (with
    ``live``, each printed as it comes with its image's size: a run cut short still shows them)."""
    import sipe.cams.generate as gen

    stamps, write = [], gen.write_cam_file

    def stamped(path, *args, **kwargs):  # the maps are on the CPU by then: the GPU work is done
        write(path, *args, **kwargs)
        if Path(path).parent.name == "is_cam":
            stamps.append(time.perf_counter())
            if live:
                h, w = ds.sizes[ds.names.index(Path(path).stem)]
                since = stamps[-2] if len(stamps) > 1 else t0
                print(f"    image {len(stamps)} ({w}x{h}): {stamps[-1] - since:.2f} s", flush=True)

    gen.write_cam_file = stamped
    try:
        sync(device)
        t0 = time.perf_counter()
        summary = generate_cams(model, ds, out, cfg)
        sync(device)
        seconds = time.perf_counter() - t0
    finally:
        gen.write_cam_file = write
    if summary["written"] != len(ds):
        raise SystemExit(f"generate_cams wrote {summary['written']} of {len(ds)} files: {summary}")
    return seconds, [b - a for a, b in zip([t0, *stamps[:-1]], stamps, strict=True)]


def nonzero_share(folder: Path) -> float:
    """Share of the foreground channels' pixels above 0.01 in a folder of npy IS-CAMs (0: degenerate maps)."""
    shares = [float((np.load(f, allow_pickle=True).item()["IS_CAM"][1:] > 0.01).mean()) for f in folder.glob("*.npy")]
    return float(np.mean(shares)) if shares else 0.0


def compare(a: Path, b: Path) -> tuple[int, float]:
    """(files byte-equal, max abs difference of the maps) between two folders of npy IS-CAMs."""
    equal, diff = 0, 0.0
    for f in sorted(a.glob("*.npy")):
        g = b / f.name
        equal += f.read_bytes() == g.read_bytes()
        x, y = (np.load(p, allow_pickle=True).item()["IS_CAM"] for p in (f, g))
        diff = max(diff, float(np.abs(x - y).max()))
    return equal, diff


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}"
    model, flags = platform.processor() or "?", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model in ("?", ""):
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    simd = [f for f in ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16") if f in flags]
    return (f"{model}, {torch.get_num_threads()} threads, flags {' '.join(simd) or 'none of avx2/avx512/amx'}, "
            f"torch {torch.__version__}, load {load_average()}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=24)
    ap.add_argument("--full", action="store_true", help="VOC's real sizes (default: half of them)")
    ap.add_argument("--batches", default="1,4", help="batch_images values; the first is the reference")
    ap.add_argument("--precisions", default=None, help="default: fp32,bf16 on CPU, fp32,bf16,fp16 on CUDA")
    ap.add_argument("--cudnn-benchmark", default="off", choices=("off", "on", "both"))
    ap.add_argument("--official", action="store_true", help="also the official make_cam's computation")
    ap.add_argument("--per-image", action="store_true", help="print each image's seconds (batch 1 rows)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="run every row this many times, round by round (shared machines); the fastest counts")
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default=None, help="folder for results.json")
    args = ap.parse_args()
    device = torch.device(args.device)
    batches = [int(b) for b in args.batches.split(",")]
    precisions = (args.precisions or ("fp32,bf16,fp16" if device.type == "cuda" else "fp32,bf16")).split(",")
    modes = {"off": [False], "on": [True], "both": [False, True]}[args.cudnn_benchmark]
    if device.type != "cuda":
        modes = [None]  # cudnn.benchmark: n/a on CPU
    print(f"machine: {machine(device)}", flush=True)
    from tqdm import tqdm

    import sipe.cams.generate as gen

    # No progress bars: their carriage returns would swallow the per-image lines in a log.
    gen.tqdm = lambda *a, **k: tqdm(*a, **{**k, "disable": True})
    model = probe_model(21, (500, 375))[0].to(device)  # random weights would give all-zero IS-CAMs
    with tempfile.TemporaryDirectory(prefix="bench_generate_") as folder:
        rows, official, sizes = run_rows(args, device, model, Path(folder), batches, precisions, modes)
    print_table(rows, official, args.images)
    if args.out:
        from sipe.io import write_text

        Path(args.out).mkdir(parents=True, exist_ok=True)
        write_text(Path(args.out) / "bench_generate.json", json.dumps(
            {"machine": machine(device), "sizes": sizes, "rows": rows, "official": official}, indent=1))


def run_rows(args: argparse.Namespace, device: torch.device, model: torch.nn.Module, tmp: Path, batches: list[int],
             precisions: list[str], modes: list[bool | None]) -> tuple[list[dict], dict | None, list]:
    """Every row (files under ``tmp``); returns the rows, the official row and the image sizes."""
    (tmp / "images").mkdir()
    ds = Folder(tmp / "images", folder_sizes(args.images, args.full))
    sizes = sorted({tuple(ds.read_image(i).shape[:2]) for i in range(len(ds))})
    print(f"{len(ds)} images, {len(sizes)} sizes (H, W): {sizes}", flush=True)
    best: dict[str, dict] = {}
    for rnd in range(args.rounds):
        for mode in modes:
            if mode is not None:
                torch.backends.cudnn.benchmark = mode
            for precision in precisions:
                for batch in batches:
                    row = one_row(args, device, model, ds, tmp, mode, precision, batch, batches[0], rnd)
                    key = f"{row['cudnn_benchmark']}-{precision}-b{batch}"
                    if key not in best or row["seconds"] < best[key]["seconds"]:
                        best[key] = row
    rows = list(best.values())
    official = None
    if args.official:
        torch.backends.cudnn.benchmark = False
        # The network as built (generate_cams prepared copies of it): batch norm unfolded, contiguous.
        official_make_cam(model, ds.first(), tmp / "official-warm", device)
        seconds = official_make_cam(model, ds, tmp / "official", device)
        label = "cpu" if modes[0] is None else ("cudnn_on" if modes[0] else "cudnn_off")
        ours = tmp / f"{label}-fp32-b{batches[0]}-0" / "is_cam"
        official = {"seconds": seconds, "images_per_s": len(ds) / seconds}
        if "fp32" in precisions:
            official["byte_equal"], official["max_abs_diff"] = compare(tmp / "official", ours)
        print(f"  official make_cam: {seconds:.1f} s, {official['images_per_s']:.2f} images/s", flush=True)
    return rows, official, sizes


def one_row(args: argparse.Namespace, device: torch.device, model: torch.nn.Module, ds: Folder, tmp: Path,
            mode: bool | None, precision: str, batch: int, ref_batch: int, rnd: int) -> dict:
    """One generate_cams run over ``ds`` (after a one-image warm-up), its files against ``ref_batch``'s."""
    cfg = CamConfig(format="npy", precision=precision, batch_images=batch, num_workers=args.workers,
                    channels_last=args.channels_last)
    label = "cpu" if mode is None else ("cudnn_on" if mode else "cudnn_off")
    name = f"{label}-{precision}-b{batch}"
    # Warm-up on the first image only: other sizes stay first-seen, as in a real run.
    generate_cams(model, ds.first(), tmp / f"warm-{name}-{rnd}", CamConfig(**{**cfg.__dict__, "num_workers": 0}))
    live = args.per_image and batch == ref_batch
    seconds, per_image = timed_generate(model, ds, tmp / f"{name}-{rnd}", cfg, device, live)
    row = {"cudnn_benchmark": "n/a on CPU" if mode is None else ("on" if mode else "off"),
           "precision": precision, "batch_images": batch, "seconds": seconds, "images_per_s": len(ds) / seconds}
    if live:
        row["per_image_s"] = per_image
    if batch == ref_batch:
        row["nonzero_share"] = nonzero_share(tmp / f"{name}-{rnd}" / "is_cam")
    else:
        row["byte_equal"], row["max_abs_diff"] = compare(tmp / f"{label}-{precision}-b{ref_batch}-{rnd}" / "is_cam",
                                                         tmp / f"{name}-{rnd}" / "is_cam")
    print(f"  {name} (round {rnd + 1}): {seconds:.1f} s, {row['images_per_s']:.2f} images/s", flush=True)
    return row


def print_table(rows: list[dict], official: dict | None, n: int) -> None:
    """The markdown table: each row against batch 1 (same precision and mode) and fp32 (same batch)."""
    def find(**kw):
        return next((r for r in rows if all(r[k] == v for k, v in kw.items())), None)

    print(f"\n| cudnn.benchmark | precision | batch_images | seconds ({n} images) | images/s | vs batch 1 | vs fp32 | "
          "files byte-equal to batch 1 | max abs diff |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        one = find(cudnn_benchmark=r["cudnn_benchmark"], precision=r["precision"])
        fp32 = find(cudnn_benchmark=r["cudnn_benchmark"], precision="fp32", batch_images=r["batch_images"])
        eq = f"{r['byte_equal']}/{n}" if "byte_equal" in r else "(reference)"
        diff = f"{r['max_abs_diff']:.1e}" if "max_abs_diff" in r else "-"
        vs_fp32 = f"{r['images_per_s'] / fp32['images_per_s']:.2f}x" if fp32 else "-"
        print(f"| {r['cudnn_benchmark']} | {r['precision']} | {r['batch_images']} | {r['seconds']:.1f} | "
              f"{r['images_per_s']:.2f} | {r['images_per_s'] / one['images_per_s']:.2f}x | {vs_fp32} | {eq} | {diff} |")
    shares = [r["nonzero_share"] for r in rows if "nonzero_share" in r]
    if shares:
        print(f"\nmaps: {min(shares):.1%}-{max(shares):.1%} of the labelled classes' pixels above 0.01 "
              "(0 would mean degenerate maps, whose equality says nothing)")
    if official:
        best = max(r["images_per_s"] for r in rows)
        extra = (f", its maps vs ours (fp32, batch 1): {official['byte_equal']}/{n} byte-equal, max abs diff "
                 f"{official['max_abs_diff']:.1e}") if "max_abs_diff" in official else ""
        print(f"\nofficial make_cam's computation: {official['seconds']:.1f} s, {official['images_per_s']:.2f} "
              f"images/s; best row above {best / official['images_per_s']:.2f}x of it{extra}")


if __name__ == "__main__":
    main()
