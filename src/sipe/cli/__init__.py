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
import time  # noqa: E402
import traceback  # noqa: E402

from sipe import __version__  # noqa: E402
from sipe.cli._common import INPUT_ERROR, USAGE_ERROR  # noqa: E402
from sipe.engine.env import torchrun_env  # noqa: E402

# Seconds a torchrun worker other than rank 0 waits before reporting a user error (see ``main``).
RANK_ERROR_GRACE_S = 5.0


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


def _leaf_parser(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The innermost sub-command parser ``args`` was parsed by (its usage line is the one to show)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            chosen = action.choices.get(getattr(args, action.dest, None) or "")
            if chosen is not None:
                return _leaf_parser(chosen, args)
    return parser


def exit_status(err: BaseException) -> int | None:
    """The exit status of a user-facing error, or ``None`` for a bug (shown with its traceback).

    2 (:data:`USAGE_ERROR`): :class:`sipe.errors.UsageError` (``ConfigError``, ``DatasetArgsError``);
    1 (:data:`INPUT_ERROR`): :class:`sipe.errors.InputError` and every other ``ValueError`` (the
    library's one-line messages), ``OSError`` (missing, unreadable or unwritable files) and
    ``ImportError`` (an optional package to install, named in the message).
    """
    from sipe.errors import UsageError

    if isinstance(err, UsageError):
        return USAGE_ERROR
    if isinstance(err, (ValueError, OSError, ImportError)):
        return INPUT_ERROR
    return None


def main(argv: list[str] | None = None) -> int:
    """Run one ``sipe`` command; returns its exit status (0 ok, 1 bad inputs, 2 bad command line or config).

    The one error path of every command: a user-facing error is printed as one line
    ``sipe COMMAND: error: MESSAGE`` (under torchrun by rank 0; another rank waits
    :data:`RANK_ERROR_GRACE_S` first, so that torchrun stops it quietly when rank 0 failed the same way,
    and prints its own error only when rank 0 did not fail); anything else is a bug and keeps its
    traceback. ``SIPE_DEBUG=1`` shows the traceback of every error.
    """
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    leaf = _leaf_parser(parser, args)
    # KEY=VALUE overrides after an option (`sipe run --out D seed=1`): argparse stops the positionals at the
    # first option, so it hands the later ones back; they are overrides like the others.
    if isinstance(getattr(args, "overrides", None), list):
        late = [e for e in extras if "=" in e and not e.startswith("-")]
        args.overrides += late
        extras = [e for e in extras if e not in late]
    if extras:  # reported with the sub-command's usage line, not the top-level one
        leaf.error(f"unrecognized arguments: {' '.join(extras)}")
    if not getattr(args, "func", None):
        leaf.print_help()
        return USAGE_ERROR
    rank = torchrun_env().rank
    main_rank = rank == 0
    try:
        result = args.func(args)
    except KeyboardInterrupt:
        if main_rank:
            print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except Exception as err:
        code = exit_status(err)
        if code is None:
            raise
        if not main_rank:
            # torchrun stops every worker once one exits: give rank 0 time to print the (usually
            # identical) error and exit first; an error of this rank alone is then printed here.
            time.sleep(RANK_ERROR_GRACE_S)
        if os.environ.get("SIPE_DEBUG") == "1":
            traceback.print_exc()
        where = "" if main_rank else f"rank {rank}: "
        print(f"{leaf.prog}: error: {where}{err}", file=sys.stderr)
        return code
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
