"""The skip list: the inputs a command left out, with reasons, logged as they happen and listed in the
``skipped.tsv`` (:data:`SKIPPED_FILE`) of its output folder, which later stages read back (:func:`read_skipped`).

The TSV format (header ``name path reason detail``, one record per line) is written and read here only.
"""

from __future__ import annotations

import csv
import logging
import os
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

__all__ = ["SKIPPED_FILE", "SkipCounter", "read_skipped", "skipped_file_name", "write_skipped"]

logger = logging.getLogger("sipe.data")

SKIPPED_FILE = "skipped.tsv"  # every command that skips inputs lists them in its output folder
_PER_RANK = "skipped_rank"  # under torchrun every process lists its own: skipped_rank<r>.tsv


class SkipCounter:
    """Items a run skipped, with reasons: log each (the first few) as it happens, and a count at the end.

    ``add(name, reason)`` records one skip; ``summary()`` gives e.g.
    ``"skipped 3 of 120 images: 2 unreadable, 1 no labels"``; ``log()`` writes it as a warning.
    Callers that loop over a dataset catch :class:`~sipe.data.image.ImageReadError` and ``add`` the item here;
    :func:`write_skipped` (or ``write_tsv(run_dir / SKIPPED_FILE)``) lists every skipped item in the run folder.
    """

    def __init__(self, what: str = "images", *, show: int = 10, log: logging.Logger | None = None) -> None:
        self.what = what
        self.show = show
        self.items: list[tuple[str, str]] = []  # (name, reason)
        self.details: list[tuple[str, str]] = []  # (path, detail), parallel to items
        self._log = log or logger

    def add(self, name: str, reason: str, detail: str = "", path: str | os.PathLike | None = None) -> None:
        """Record that ``name`` (file ``path`` when known) was skipped for ``reason`` (a short category
        such as ``"unreadable"``); ``detail`` (e.g. the decoder's message) is logged and kept for the TSV."""
        self.items.append((str(name), reason))
        self.details.append((str(path) if path is not None else "", detail))
        if len(self.items) <= self.show:
            self._log.warning("skipping %s (%s)%s", name, reason, f": {detail}" if detail else "")
        elif len(self.items) == self.show + 1:
            self._log.warning("further skipped %s are counted, not listed", self.what)

    def extend(self, other: SkipCounter, *, new_only: bool = False) -> None:
        """Add ``other``'s records (e.g. gathered from other ranks) without logging them again;
        ``new_only``: only those of names not recorded here yet."""
        seen = set(self.names) if new_only else set()
        for item, detail in zip(other.items, other.details, strict=True):
            if item[0] not in seen:
                self.items.append(item)
                self.details.append(detail)

    def write_tsv(self, path: str | os.PathLike) -> Path:
        """Write every skipped item to ``path`` as a TSV (header ``name path reason detail``), atomically.

        The file is written even when nothing was skipped (header only), so that a run folder always
        tells whether its command dropped anything.
        """
        from sipe.io import write_text

        def clean(text: str) -> str:  # one record per line, one field per tab
            return " ".join(str(text).split())

        rows = ["name\tpath\treason\tdetail"]
        for (name, reason), (file, detail) in zip(self.items, self.details, strict=True):
            rows.append("\t".join(clean(x) for x in (name, file, reason, detail)))
        path = Path(path)
        write_text(path, "\n".join(rows) + "\n")
        return path

    def __len__(self) -> int:
        return len(self.items)

    @property
    def names(self) -> list[str]:
        return [n for n, _ in self.items]

    def by_reason(self) -> dict[str, int]:
        return dict(Counter(r for _, r in self.items))

    def summary(self, total: int | None = None) -> str:
        of = f" of {total}" if total is not None else ""
        if not self.items:
            return f"skipped 0{of} {self.what}"
        reasons = ", ".join(f"{n} {r}" for r, n in sorted(self.by_reason().items()))
        return f"skipped {len(self.items)}{of} {self.what}: {reasons}"

    def log(self, total: int | None = None, level: int = logging.WARNING) -> None:
        """Log the summary (only when something was skipped)."""
        if self.items:
            self._log.log(level, self.summary(total))


def skipped_file_name(rank: int = 0, world: int = 1) -> str:
    """``skipped.tsv``, or ``skipped_rank<rank>.tsv`` for one of ``world`` > 1 processes (each lists its own)."""
    return SKIPPED_FILE if world == 1 else f"{_PER_RANK}{rank}.tsv"


def write_skipped(
    out_dir: str | os.PathLike,
    *lists: SkipCounter,
    datasets: Iterable[object] = (),
    rank: int = 0,
    world: int = 1,
) -> Path:
    """Write the skip list of a command's output folder: ``out_dir/skipped.tsv`` (see :func:`skipped_file_name`).

    It lists the images ``datasets`` dropped while they were built (their ``skipped``; by rank 0 only, as
    every rank built the same datasets), then ``lists`` (this process's own skips); a name two of them
    hold is listed once. Written even when empty (header only). Returns the file's path.
    """
    listed = SkipCounter()
    if rank == 0:
        for dataset in datasets:
            skips = getattr(dataset, "skipped", None)
            if isinstance(skips, SkipCounter):
                listed.extend(skips, new_only=True)
    for skips in lists:
        listed.extend(skips, new_only=True)
    return listed.write_tsv(Path(out_dir) / skipped_file_name(rank, world))


# Folders whose skipped.tsv sits one level up: `sipe cam --out D` writes D/skipped.tsv beside D/is_cam, D/cam.
_LISTED_IN_PARENT = ("is_cam", "cam")


def read_skipped(folder: str | os.PathLike) -> tuple[dict[str, str], list[Path]]:
    """The images an earlier stage skipped on purpose, from the ``skipped.tsv`` it wrote beside its outputs.

    Reads ``folder/skipped.tsv`` and ``folder/skipped_rank<r>.tsv`` (torchrun), or, for the ``is_cam`` /
    ``cam`` folder of ``sipe cam``, those of its parent. Returns ``{name: reason}`` and the files read
    (both empty when the folder has no such list).
    """
    folder = Path(folder)
    where = folder.parent if folder.name in _LISTED_IN_PARENT else folder
    files = sorted(p for p in where.glob("skipped*.tsv") if p.name == SKIPPED_FILE or p.name.startswith(_PER_RANK))
    listed: dict[str, str] = {}
    for path in files:
        with path.open(newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f, delimiter="\t"):
                if row.get("name"):
                    listed[row["name"]] = row.get("reason") or "skipped"
    return listed, files
