"""``sipe report``: one self-contained HTML results page (tables, plots, image grid) of a run folder."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    from sipe.cli._common import add_dataset_args

    p = sub.add_parser(
        "report", help="write a self-contained HTML results page of a run folder", description=__doc__,
        epilog="Open the page in any browser (file:// works; nothing is fetched from the network).",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="the run folder (e.g. the --out folder of sipe demo)")
    p.add_argument("--out", default=None, help="the HTML file to write (default: RUN_DIR/report.html)")
    p.add_argument("--num-images", type=int, default=12,
                   help="rows of the image grid: the best, median and worst thirds by IS-CAM IoU when masks "
                        "exist, else the first ones (default: %(default)s)")
    p.add_argument("--max-side", type=int, default=256, help="thumbnails' long side in pixels (default: %(default)s)")
    g = add_dataset_args(p, split_default=None, optional=True,
                         title="images shown (default: a sipe demo run's held-out split and folders)")
    g.add_argument("--cam-dir", default=None, help="folder holding cam/ and is_cam/ (default: RUN_DIR/cams_val)")
    g.add_argument("--pseudo-dir", default=None, help="pseudo-mask PNGs (default: RUN_DIR/pseudo_val)")
    g.add_argument("--seg-dir", default=None, help="segmentation-prediction PNGs (default: RUN_DIR/seg_val)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sipe.cli._common import UsageError, build_dataset_from_args

    if args.num_images < 0 or args.max_side < 16:
        raise UsageError("--num-images must be >= 0 and --max-side >= 16")
    given = [o for o in ("dataset", "root", "split") if getattr(args, o) is not None]
    if given and len(given) < 3:
        missing = ", ".join(f"--{o}" for o in ("dataset", "root", "split") if getattr(args, o) is None)
        raise UsageError(f"--dataset, --root and --split go together; add {missing}")
    if not given and (args.class_names or args.mask_dir):
        raise UsageError("--class-names and --mask-dir need --dataset, --root and --split")

    from sipe.cli._common import setup_logging
    from sipe.report import write_report_html

    setup_logging()
    dataset = build_dataset_from_args(args) if given else None
    if dataset is not None:
        dataset.drop_small(1)  # unreadable images are left out by name (decoded once, cached), not shown
    path = write_report_html(args.run_dir, args.out, dataset=dataset, cam_dir=args.cam_dir,
                             pseudo_dir=args.pseudo_dir, seg_dir=args.seg_dir, num_images=args.num_images,
                             max_side=args.max_side)
    print(f"wrote {path}; open it in a browser: file://{path.resolve()}")
    return 0
