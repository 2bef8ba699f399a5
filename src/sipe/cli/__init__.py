"""``sipe`` command line: a thin layer over the library.

Each module in this package defines ``register(subparsers)``, which adds one sub-command
and sets ``func`` (a callable taking the parsed ``argparse.Namespace``) as its handler.
"""

from __future__ import annotations

import os

# OpenMP threads that spin while waiting stall badly when the cores are shared (DataLoader
# workers next to compute threads, other jobs): measured 6x slower on 2 cores. Must be set
# before torch is imported; an explicit setting by the user wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import importlib  # noqa: E402
import pkgutil  # noqa: E402
import sys  # noqa: E402

from sipe import __version__  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sipe",
        description="Image-level labels to segmentation masks with SIPE (CVPR 2022).",
    )
    parser.add_argument("--version", action="version", version=f"sipe {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        result = args.func(args)
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
