"""``sipe train``: SIPE training with the official recipe (single process, or DDP under torchrun)."""

from __future__ import annotations

import argparse
import sys

EPILOG = """\
examples:
  sipe train --config configs/voc.yaml --out runs/voc data.root=/data/VOCdevkit/VOC2012
  sipe train --config configs/voc.yaml --out runs/voc engine.amp=true engine.channels_last=true
  torchrun --nproc_per_node 2 -m sipe train --config configs/voc.yaml --out runs/voc data.root=...

Rerunning the same command resumes from OUT/checkpoints/last.pt (unless --no-resume).
Writes OUT/config.yaml, OUT/run_info.json, OUT/checkpoints/{last,best,final}.pt and OUT/tb/.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train SIPE (official recipe; DDP under torchrun)",
        description="Train SIPE. Defaults are the official recipe; a YAML config and key=value overrides "
        "change them.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", default=None, help="YAML config (e.g. configs/voc.yaml); default: built-in defaults")
    p.add_argument("--out", required=True, help="run folder: checkpoints, TensorBoard logs, resolved config")
    p.add_argument(
        "--resume",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="resume from OUT/checkpoints/last.pt if present (default: the config's engine.resume, true)",
    )
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. engine.lr=0.05")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import yaml

    from sipe.cli._common import setup_logging
    from sipe.config import ConfigError, load_config, to_dict
    from sipe.train import SIPETrainConfig, train_sipe

    try:
        cfg = load_config(SIPETrainConfig, args.config, args.overrides)
    except (ConfigError, FileNotFoundError) as err:
        print(f"sipe train: {err}", file=sys.stderr)
        return 2
    if args.resume is not None:
        cfg.engine.resume = args.resume
    if args.print_config:
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
        return 0
    setup_logging()
    from sipe.data import DatasetError, DatasetRootError

    try:
        path = train_sipe(cfg, args.out)
    except (DatasetError, DatasetRootError) as err:
        print(f"sipe train: {err}", file=sys.stderr)
        return 2
    from sipe.engine import is_main_process

    if is_main_process():
        print(f"checkpoint: {path}")
    return 0
