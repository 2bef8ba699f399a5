"""Argument helpers shared by the sub-commands, so that every command speaks the same options.

Dataset: ``--dataset/--root/--split`` plus ``--class-names`` (voc, custom) and ``--mask-dir`` (custom);
a custom dataset's ``--split`` is its labels CSV/JSON. Device: ``--device auto|cpu|cuda|cuda:N``.
Configured training commands: ``--config``, ``--resume/--no-resume``, ``--print-config`` and
``KEY=VALUE`` overrides.
"""

from __future__ import annotations

import argparse
import logging
import re
from typing import Any

from sipe.config.dataset_kinds import DATASET_KINDS, kinds_with
from sipe.engine.env import torchrun_env
from sipe.errors import InputError, UsageError

_DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")


__all__ = ["INPUT_ERROR", "USAGE_ERROR", "DatasetArgsError", "InputError", "UsageError"]


class DatasetArgsError(UsageError):
    """Dataset options that do not fit together (a usage error; commands exit with status 2)."""


def add_dataset_args(
    parser: argparse.ArgumentParser,
    split_default: str | None = "train",
    masks_needed: bool = False,
    *,
    optional: bool = False,
    title: str = "dataset",
) -> argparse._ArgumentGroup:
    """``--dataset/--root/--split`` plus the ``--class-names`` and ``--mask-dir`` options, in a group
    ``title`` (returned, for a command's own options of the same kind). ``optional``: no default kind and
    no required root (the command checks that the three come together)."""
    def per_kind(what: str) -> str:
        return "; ".join(f"{k.name}: {getattr(k, what)}" for k in DATASET_KINDS.values())

    default = "" if optional else " (default: %(default)s)"
    g = parser.add_argument_group(title)
    g.add_argument("--dataset", default=None if optional else "voc", choices=tuple(DATASET_KINDS),
                   help=f"dataset kind{default}")
    g.add_argument("--root", required=not optional, help=f"dataset root ({per_kind('root')})")
    g.add_argument("--split", default=split_default, help=f"{per_kind('split')}{default}")
    g.add_argument("--class-names", default=None,
                   help=f"{', '.join(kinds_with('class_names'))}: comma-separated foreground classes in order "
                        "(default: the VOC classes; custom: inferred from the labels file)")
    required = " (required)" if masks_needed else " (optional)" if optional else ""
    g.add_argument("--mask-dir", default=None, help=f"{', '.join(kinds_with('mask_dir'))}: folder of ground-truth "
                                                     f"<name>.png index masks{required}")
    return g


def build_dataset_from_args(args: argparse.Namespace, *, masks_needed: bool = False, **kwargs: Any):
    """The :class:`sipe.data.SegDataset` the dataset options describe.

    ``kwargs`` go to :func:`sipe.data.build_dataset` (``with_masks``, a default ``class_names``);
    ``--class-names`` takes precedence over a ``class_names`` given here. Raises
    :class:`DatasetArgsError` for options that do not apply to ``--dataset`` and, with
    ``masks_needed``, for a custom dataset without ``--mask-dir``.
    """
    from sipe.data import build_dataset

    check_dataset_args(args, masks_needed=masks_needed)
    if args.class_names is not None:
        kwargs["class_names"] = [c.strip() for c in args.class_names.split(",") if c.strip()]
    if args.mask_dir is not None:
        kwargs["mask_dir"] = args.mask_dir
    return build_dataset(args.dataset, args.root, args.split, **kwargs)


def check_dataset_args(args: argparse.Namespace, *, masks_needed: bool = False) -> None:
    """Raise :class:`DatasetArgsError` for dataset options that do not fit together (cheap; no I/O)."""
    kind = DATASET_KINDS[args.dataset]  # one of argparse's choices
    if args.class_names is not None and not kind.takes_class_names:
        raise DatasetArgsError(f"--class-names applies to --dataset {' or '.join(kinds_with('class_names'))}, "
                               f"not {kind.name} (its classes are {kind.fixed_classes})")
    if args.mask_dir is not None and not kind.mask_dir:
        only = kinds_with("mask_dir")
        raise DatasetArgsError(f"--mask-dir applies to --dataset {' or '.join(only)}{' only' * (len(only) == 1)}, "
                               f"not {kind.name}")
    if masks_needed and kind.mask_dir and args.mask_dir is None:
        raise DatasetArgsError(f"--dataset {kind.name} needs --split LABELS_FILE and --mask-dir DIR (the ground truth)")


def _device_name(text: str) -> str:
    if not _DEVICE_PATTERN.fullmatch(text):
        raise argparse.ArgumentTypeError(f"invalid device {text!r}; use auto, cpu, cuda or cuda:N")
    return text


def add_device_arg(parser: argparse.ArgumentParser) -> None:
    """``--device auto|cpu|cuda|cuda:N`` (default auto: the process's GPU when CUDA is available)."""
    parser.add_argument("--device", type=_device_name, default="auto",
                        help="auto (cuda:LOCAL_RANK when CUDA is available, else cpu), cpu, cuda or cuda:N")


def resolve_device(name: str):
    """The ``torch.device`` of ``--device`` for this process (see :func:`sipe.engine.resolve_device`)."""
    from sipe.engine import resolve_device as _resolve

    return _resolve(name, torchrun_env().local_rank)


def _scale(text: str) -> float:
    if "," in text:
        raise argparse.ArgumentTypeError(
            f"scales are separated by spaces in every command: --scales {' '.join(text.split(','))} (not {text!r})"
        )
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid scale {text!r}; give numbers, e.g. --scales 1.0 0.5") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"scale {text!r} must be > 0")
    return value


def add_scales_arg(parser: argparse.ArgumentParser, default: list[float] | None, help: str) -> None:
    """``--scales S [S ...]``: test-time scales, space-separated in every command (commas are refused
    with a message showing the spaced form)."""
    parser.add_argument("--scales", type=_scale, nargs="+", default=default, metavar="S", help=help)


def add_config_args(parser: argparse.ArgumentParser, what: str) -> None:
    """``--config``, ``--resume/--no-resume``, ``--print-config`` and ``KEY=VALUE`` overrides."""
    parser.add_argument("--config", default=None, help=f"YAML file of {what} settings (default: the built-in defaults)")
    parser.add_argument("--resume", action=argparse.BooleanOptionalAction, default=None,
                        help="resume from OUT/checkpoints/last.pt if present (default: the config's "
                             "engine.resume, true)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. engine.lr=0.05")


def config_from_args(cls: type, args: argparse.Namespace) -> Any:
    """``cls`` defaults, then ``--config``, then the overrides, then ``--resume``.

    Raises :class:`sipe.config.ConfigError` or ``FileNotFoundError`` (a missing ``--config`` file).
    """
    from sipe.config import load_config

    cfg = load_config(cls, args.config, args.overrides)
    if args.resume is not None:
        cfg.engine.resume = args.resume
    return cfg


def print_config(cfg: Any) -> int:
    """Print ``cfg`` as YAML (``--print-config``); returns exit status 0."""
    import yaml

    from sipe.config import to_dict

    print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
    return 0


# Exit statuses, the same for every command (mapped from the exception in ``sipe.cli.main``): the
# command line or config is wrong (as argparse itself reports it), or the inputs it names are
# missing or bad (files, data sets, checkpoints).
USAGE_ERROR = 2
INPUT_ERROR = 1


def setup_logging(verbose: bool = False) -> None:
    """INFO logging on rank 0; under torchrun the other ranks log warnings and errors only."""
    level = logging.DEBUG if verbose else logging.INFO
    if not torchrun_env().is_main:
        level = logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
