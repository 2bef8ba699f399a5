"""``sipe demo``: synthetic data -> classifier pretraining -> SIPE -> IS-CAM -> refinement -> segmentation,
on a CPU; exactly ``sipe run --config configs/demo.yaml`` (the package's copy of that file)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the whole method end to end on the embedded synthetic dataset",
                       description=__doc__)
    p.add_argument("--seed", type=int, default=None,
                   help="seed of the synthetic data and of the stages (default: the config's seed, 0)")
    p.add_argument("--out", default="demo_out", help="output folder (resumable: rerun to continue)")
    p.add_argument("--from", dest="start", default=None, metavar="STAGE",
                   help="redo this stage and every later one")
    p.add_argument("--until", default=None, metavar="STAGE", help="stop after this stage")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("overrides", nargs="*", help="key=value overrides of configs/demo.yaml, e.g. train.engine.epochs=3")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sipe.cli.run import run_config
    from sipe.run.config import DEMO_CONFIG

    # --seed wins over a `seed=` override only when it is given.
    seed = [] if args.seed is None else [f"seed={args.seed}"]
    return run_config(str(DEMO_CONFIG), [*args.overrides, *seed], args.out, args.print_config, args.start,
                      args.until)
