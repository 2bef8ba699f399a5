"""Where dataset caches live, and how they are read and written (atomically, JSON)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..io import write_text

logger = logging.getLogger("sipe.data")

CACHE_ENV = "SIPE_CACHE_DIR"


def default_cache_dir(root: Path, cache_dir: str | os.PathLike | None = None) -> Path:
    """The folder a dataset rooted at ``root`` keeps its caches in.

    In order: ``cache_dir`` when given; ``$SIPE_CACHE_DIR/<root name>-<hash>`` when that variable
    is set; ``<root>/.sipe_cache`` when the root is writable; else
    ``~/.cache/sipe/<root name>-<hash>`` (read-only dataset copies).
    """
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    resolved = root.resolve()
    key = f"{resolved.name}-{hashlib.sha1(str(resolved).encode()).hexdigest()[:10]}"
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser() / key
    if os.access(resolved, os.W_OK):
        return resolved / ".sipe_cache"
    out = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "sipe" / key
    logger.info("dataset root %s is read-only; caching in %s", resolved, out)
    return out


def file_stamp(path: Path) -> list[int]:
    """[size, mtime_ns] of ``path``: a cheap key that changes whenever the file is rewritten."""
    st = path.stat()
    return [int(st.st_size), int(st.st_mtime_ns)]


def load_json(path: Path, version: int) -> dict[str, Any] | None:
    """The cached dict at ``path`` if it exists, parses and has ``version``; else ``None``."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        logger.warning("ignoring unreadable cache %s (%s); it will be rebuilt", path, err)
        return None
    if not isinstance(data, dict) or data.get("version") != version:
        return None
    return data


def save_json(path: Path, data: dict[str, Any]) -> None:
    """Write a cache atomically; a read-only location is reported, not fatal (the cache is an optimisation)."""
    try:
        write_text(path, json.dumps(data, separators=(",", ":")))
    except OSError as err:
        logger.warning("could not write cache %s (%s); pass cache_dir= to a writable folder", path, err)


def cached_file_checks(
    cache_file: Path, paths: Sequence[Path], check: Callable[[Path], Any], *, version: int, desc: str = "check"
) -> list[Any]:
    """``check(path)`` for every path, reusing results cached in ``cache_file`` for unchanged files.

    A result is reused while the file's size and mtime (:func:`file_stamp`) are those it was
    computed for, so a second run over the same files checks nothing; ``check`` must return plain
    JSON data. Files that do not exist are checked every time (there is nothing to key them by).
    ``version`` changes whenever what ``check`` computes changes.
    """
    from tqdm.auto import tqdm

    cache = load_json(cache_file, version) or {"version": version, "entries": {}}
    entries: dict[str, Any] = cache["entries"]
    out: list[Any] = []
    fresh = 0
    stamps: list[list[int] | None] = []
    for p in paths:
        try:
            stamps.append(file_stamp(p))
        except OSError:
            stamps.append(None)
    todo = sum(1 for p, st in zip(paths, stamps, strict=True)
               if st is None or (entries.get(str(p)) or [None])[0] != st)
    with tqdm(total=todo, desc=desc, unit="img", disable=todo < 50, leave=False) as bar:
        for p, st in zip(paths, stamps, strict=True):
            hit = entries.get(str(p))
            if st is not None and hit is not None and hit[0] == st:
                out.append(hit[1])
                continue
            result = check(p)
            bar.update(1)
            out.append(result)
            if st is not None:
                entries[str(p)] = [st, result]
                fresh += 1
    if fresh:
        save_json(cache_file, cache)
    return out
