"""Per-image label-map jobs over a dataset: resume, rank sharding, worker processes, progress."""

from __future__ import annotations

import multiprocessing as mp
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from sipe.data.classes_file import write_classes_file
from sipe.data.image import ImageReadError
from sipe.data.skiplist import SkipCounter, write_skipped
from sipe.engine.distributed import rank_and_world, shard_indices
from sipe.io import save_label_png

Job = Callable[[dict[str, Any]], np.ndarray]


@dataclass
class RunStats:
    """What a run over a dataset did: images written, images skipped (output present), and the
    images that could not be decoded (``bad``, with reasons)."""

    written: int = 0
    skipped: int = 0
    bad: SkipCounter = field(default_factory=lambda: SkipCounter("images"))

    @property
    def total(self) -> int:
        return self.written + self.skipped + len(self.bad)


def available_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1




# Worker-process state, set once per process by _init so the dataset is pickled once per worker.
_STATE: dict[str, Any] = {}


def _init(dataset: Any, job: Job, out_dir: Path, overwrite: bool) -> None:
    _STATE.update(dataset=dataset, job=job, out_dir=out_dir, overwrite=overwrite)


def _init_worker(dataset: Any, job: Job, out_dir: Path, overwrite: bool) -> None:
    _init(dataset, job, out_dir, overwrite)
    # One job per worker process and core: nested torch threads would only oversubscribe.
    import torch

    torch.set_num_threads(1)


def _process(index: int) -> bool | tuple[str, str, str, str]:
    """True: written; False: its PNG existed; a tuple (name, reason, detail, path): a bad image."""
    dataset, out_dir, overwrite = _STATE["dataset"], _STATE["out_dir"], _STATE["overwrite"]
    # sipe.data datasets list their names: a finished image is skipped without decoding it.
    names = getattr(dataset, "names", None)
    if names is not None and not overwrite and (out_dir / f"{names[index]}.png").exists():
        return False
    try:
        item = dataset[index]
    except ImageReadError as err:
        name = names[index] if names is not None else str(index)
        path = dataset.image_path(index) if hasattr(dataset, "image_path") else ""
        return (name, "unreadable", str(err), str(path))
    path = out_dir / f"{item['name']}.png"
    if path.exists() and not overwrite:
        return False
    label = _STATE["job"](item)
    save_label_png(path, label)
    return True


def run_label_job(
    dataset: Any,
    job: Job,
    out_dir: str | os.PathLike,
    *,
    num_workers: int | None = None,
    overwrite: bool = False,
    desc: str = "images",
    indices: Iterable[int] | None = None,
    ignore_name: str = "ignore",
) -> RunStats:
    """Apply ``job(item) -> (H, W) label map`` to every image and save ``out_dir/<name>.png``.

    Images whose PNG already exists are skipped (resume) unless ``overwrite``. Images that cannot
    be decoded are skipped by name and listed in ``out_dir/skipped.tsv`` (``skipped_rank<r>.tsv``
    under torchrun), after those of ``dataset.skipped`` (images the dataset dropped before). Under torchrun each
    rank takes its own shard. ``num_workers`` processes (default: the available cores; 0 or 1 runs
    in this process) share the work; ``job`` and ``dataset`` must be picklable for that.
    With the dataset's ``class_names``, ``out_dir/classes.json`` says which class each pixel value
    is (:mod:`sipe.data.classes_file`; ``ignore_name``: the meaning of 255 in these maps).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    class_names = getattr(dataset, "class_names", None)
    if class_names and rank_and_world()[0] == 0:
        write_classes_file(out_dir, class_names, ignore_name=ignore_name)
    if indices is None:
        rank, world = rank_and_world()
        indices = shard_indices(len(dataset), rank, world)
    indices = list(indices)
    workers = available_cores() if num_workers is None else num_workers
    workers = max(0, min(workers, len(indices)))
    stats = RunStats()
    show = rank_and_world()[0] == 0
    bar = tqdm(total=len(indices), desc=desc, unit="img", disable=not show, dynamic_ncols=True)
    if workers <= 1:
        _init(dataset, job, out_dir, overwrite)
        results: Iterable[bool] = map(_process, indices)
        executor = None
    else:
        executor = ProcessPoolExecutor(
            max_workers=workers,
            mp_context=mp.get_context("spawn"),
            initializer=_init_worker,
            initargs=(dataset, job, out_dir, overwrite),
        )
        results = executor.map(_process, indices, chunksize=max(1, min(8, len(indices) // (4 * workers))))
    try:
        for wrote in results:
            if isinstance(wrote, tuple):
                name, reason, detail, path = wrote
                stats.bad.add(name, reason, detail, path=path)
            elif wrote:
                stats.written += 1
            else:
                stats.skipped += 1
            bar.update(1)
    finally:
        bar.close()
        if executor is not None:
            executor.shutdown(cancel_futures=True)
        _STATE.clear()
    stats.bad.log(len(indices))
    rank, world = rank_and_world()
    write_skipped(out_dir, stats.bad, datasets=[dataset], rank=rank, world=world)  # + the dataset's drops
    return stats
