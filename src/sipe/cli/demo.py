"""``sipe demo``: synthetic data -> classifier pretraining -> SIPE -> IS-CAM -> refinement -> segmentation,
on a CPU; the same as ``sipe run --config configs/demo.yaml``."""

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
    p.add_argument("--from", dest="start", default=None, metavar="STAGE",
                   help="redo this stage and every later one")
    p.add_argument("--until", default=None, metavar="STAGE", help="stop after this stage")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. engine.epochs=3")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # --seed wins over a `seed=` override or the config file only when it is given.
    seed = [] if args.seed is None else [f"seed={args.seed}"]
    return run_demo_config(args.config, [*args.overrides, *seed], args.out, start=args.start, until=args.until)


def run_demo_config(config: str | None, overrides: list[str], out: str, print_only: bool = False,
                    start: str | None = None, until: str | None = None) -> int:
    """The demo (``sipe demo``, or ``sipe run`` given a demo config); prints its metrics."""
    import sipe.demo
    from sipe.cli._common import print_config, setup_logging
    from sipe.config import load_config
    from sipe.demo import DemoConfig

    cfg = load_config(DemoConfig, config, overrides)
    if print_only:
        return print_config(cfg)
    setup_logging()
    stops = {k: v for k, v in (("start", start), ("until", until)) if v is not None}
    metrics = sipe.demo.run_demo(cfg, out, **stops)
    print(json.dumps(metrics, indent=2))
    return 0
