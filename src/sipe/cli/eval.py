"""``sipe eval``: mIoU of saved IS-CAMs, plain CAMs (threshold sweep) or label PNGs over a split.

Evaluate the predictions in --pred against the ground-truth masks of a split: per-class IoU, precision
and recall, mIoU. --kind is_cam takes the argmax of saved IS-CAMs; --kind cam sweeps the background
threshold of saved plain CAMs and reports the best; --kind labels reads <name>.png label maps (palette
or greyscale PNGs). Every image that can be evaluated is; the ones that cannot (prediction missing,
unreadable or of another size than the mask; mask unreadable) are listed at the end and in the report's
'failed', and the exit status is then 1. Images that the stage writing --pred skipped on purpose (listed
in its skipped.tsv; for sipe cam's is_cam/ and cam/ folders, in their parent's) are counted in
'skipped_earlier', not as failed.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from sipe.cli._common import INPUT_ERROR, UsageError, add_dataset_args, build_dataset_from_args, setup_logging


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("eval", description=__doc__, help="evaluate IS-CAMs, CAMs or label PNGs against "
                              "ground-truth masks (per-class IoU, mIoU)")
    add_dataset_args(p, split_default="train", masks_needed=True)
    p.add_argument("--pred", required=True, help="folder of predictions (<name>.npz/.npy or <name>.png)")
    p.add_argument("--kind", required=True, choices=["is_cam", "cam", "labels"], help="what --pred holds")
    p.add_argument("--out", default=None, help="also write the report as JSON to this file")
    p.add_argument(
        "--thresholds",
        type=float,
        nargs="+",
        default=None,
        help="--kind cam: background thresholds to sweep (default 0.00, 0.01, ..., 0.95)",
    )
    p.add_argument(
        "--skip-missing",
        action="store_true",
        help="leave out images without a prediction file (counted in the report's 'missing') instead of "
        "listing them as failed (exit status 1)",
    )
    p.set_defaults(func=handler)


def handler(args: argparse.Namespace) -> int:
    from sipe import metrics as evaluation
    from sipe.data.skiplist import read_skipped

    setup_logging()
    if args.thresholds is not None and args.kind != "cam":
        raise UsageError("--thresholds applies to --kind cam only")
    opts: dict[str, Any] = {"missing": "skip" if args.skip_missing else "error"}
    if args.thresholds is not None:
        opts["thresholds"] = args.thresholds
    dataset = build_dataset_from_args(args, masks_needed=True)
    # Images the stage that wrote --pred skipped on purpose (its skipped.tsv) have no prediction by design.
    listed, _ = read_skipped(args.pred)
    if listed:
        opts["names"] = [n for n in dataset.names if n not in listed]
    earlier = len(dataset.names) - len(opts.get("names", dataset.names))
    report = evaluation.evaluate(args.kind, args.pred, dataset, **opts)
    report = {"dataset": args.dataset, "split": str(args.split), "pred": str(args.pred), **report,
              "skipped_earlier": earlier}
    print(evaluation.format_report(report))
    if args.out:
        evaluation.write_report(args.out, report)
        print(f"report written to {args.out}")
    failed = report["failed"]
    if failed:
        total = report["num_images"] + len(failed)
        lines = [f"  {f['name']}: {f['reason']}" for f in failed]
        print(f"sipe eval: error: {len(failed)} of {total} images could not be evaluated (the metrics above are "
              "those of the others):\n" + "\n".join(lines), file=sys.stderr)
        return INPUT_ERROR
    return 0
