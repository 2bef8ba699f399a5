"""``sipe train``: SIPE training with the official recipe (single process, or DDP under torchrun)."""

from __future__ import annotations

import argparse

from sipe.cli._common import add_config_args, config_from_args, print_config, setup_logging

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
    p.add_argument("--out", required=True, help="run folder: checkpoints, TensorBoard logs, resolved config")
    add_config_args(p, "SIPETrainConfig")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # Config and datasets are checked before torch loads, so that their errors come in a second.
    from sipe.config.train import SIPETrainConfig
    from sipe.train.inputs import training_data

    cfg = config_from_args(SIPETrainConfig, args)
    if args.print_config:
        return print_config(cfg)
    setup_logging()
    data = training_data(cfg)
    from sipe.engine import is_main_process
    from sipe.train.trainer import train_sipe

    path = train_sipe(cfg, args.out, data)
    if is_main_process():
        print(f"checkpoint: {path}")
    return 0
