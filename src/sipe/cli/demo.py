"""``sipe demo``: synthetic data -> classifier pretraining -> SIPE -> IS-CAM -> evaluation, on a CPU."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the whole method end to end on the embedded synthetic dataset",
                       description=__doc__)
    p.add_argument("--seed", type=int, default=None,
                   help="seed of the synthetic data and of every stage (default: the config's seed, 0)")
    p.add_argument("--out", default="demo_out", help="output folder (resumable: rerun to continue)")
    p.add_argument("--config", default=None, help="YAML overriding the demo defaults (see configs/demo.yaml)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. engine.epochs=3")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sipe.cli._common import setup_logging
    from sipe.config import load_config
    from sipe.demo import DemoConfig, run_demo

    # --seed wins over a `seed=` override or the config file only when it is given.
    seed = [] if args.seed is None else [f"seed={args.seed}"]
    cfg = load_config(DemoConfig, args.config, [*args.overrides, *seed])
    setup_logging()
    metrics = run_demo(cfg, args.out)
    print(json.dumps(metrics, indent=2))
    return 0
