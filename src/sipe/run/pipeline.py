"""One resumable orchestrator of named stages, shared by ``sipe run`` and ``sipe demo``.

A run folder holds one subfolder (or file) per stage and ``.stages/``: ``<stage>.json`` (written atomically
once the stage's outputs are all written: its result as JSON, its seconds by the clock and the key of the
config it ran under) and ``config.json`` (the configuration the folder belongs to). Paths inside the run
folder are recorded relative to it (results and configuration alike), so that a folder can be moved or
copied and stays complete. A rerun skips every
recorded stage and reuses its result; an interrupted stage resumes by its own means (training stages from
``checkpoints/last.pt``, per-image stages by skipping the images whose output exists). A rerun under
another configuration stops before writing anything when a stage already started depends on what
changed, unless ``--from`` that stage (or an earlier one) redoes it. A key added to the configuration after
a folder was made is absent from its records; ``legacy`` names such keys with the behaviour they stand for
when absent (``LEGACY_VALUES`` for ``sipe run``), and for a folder that lacks the key, a key holding that
value is keyed as if absent, so that new keys do not invalidate old folders unless set otherwise. A key a
folder recorded that has since become incidental keeps the folder's value in its keys, for the same reason.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sipe import io
from sipe.errors import UsageError

__all__ = ["Pipeline", "RunConfigChanged", "Stage", "flatten", "in_run", "relative_to_run", "significant"]

logger = logging.getLogger("sipe.run")

RECORDS = ".stages"
RUN_PREFIX = "<run>/"  # how records and keys write a path inside the run folder
# Settings that change how fast or how loudly a stage runs, not what it writes: a rerun may change them.
_INCIDENTAL = ("num_workers", "progress", "log_every", "device", "resume", "ckpt_minutes", "ckpt_every",
               "stop_after",
               "plan")  # sipe run's plan: what it changes is in the keys it sets, keyed there


class RunConfigChanged(UsageError):
    """A rerun whose configuration or data differs from the one its run folder was made with."""


@dataclass
class Stage:
    """One step of a pipeline.

    fn: does the work and returns plain JSON data (recorded; a rerun returns it without running ``fn``).
    sections: config keys the stage's outputs depend on besides those of the stages before it: top-level
        names or dotted prefixes such as ``dataset.eval`` (empty: every key).
    outputs: paths inside the run folder the stage writes (removed when ``--from`` redoes the stage).
    enabled: false for a stage this configuration does not run (``why`` says why; listed, never run).
    """

    name: str
    fn: Callable[[], Any]
    sections: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    enabled: bool = True
    why: str = ""


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists stay values)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def _incidental(key: str) -> bool:
    return key.rsplit(".", 1)[-1] in _INCIDENTAL


def significant(config: Mapping[str, Any]) -> dict[str, Any]:
    """The flattened ``config`` without the settings that do not change a stage's outputs (workers, logging)."""
    return {k: v for k, v in flatten(config).items() if not _incidental(k)}


def relative_to_run(value: Any, out: Path) -> Any:
    """``value`` with every string that is a path inside ``out`` written as ``<run>/rel/path`` (lists, dicts
    recursed), so that records and keys do not depend on where the run folder lies."""
    if isinstance(value, str):
        # The run folder as resolved, or as given (a relative --out gives relative paths under it).
        for root in {str(out.resolve()), os.path.normpath(str(out))}:
            if value == root or value.startswith(root + os.sep):
                return RUN_PREFIX + os.path.relpath(value, root)
        return value
    if isinstance(value, Mapping):
        return {k: relative_to_run(v, out) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [relative_to_run(v, out) for v in value]
    return value


def in_run(value: Any, out: Path) -> Any:
    """The inverse of :func:`relative_to_run`: ``<run>/x`` strings -> paths under ``out`` (as strings)."""
    if isinstance(value, str):
        return str(out.resolve() / value[len(RUN_PREFIX):]) if value.startswith(RUN_PREFIX) else value
    if isinstance(value, Mapping):
        return {k: in_run(v, out) for k, v in value.items()}
    if isinstance(value, list):
        return [in_run(v, out) for v in value]
    return value


def _in_sections(key: str, sections: set[str]) -> bool:
    """Whether flattened ``key`` belongs to one of ``sections`` (top-level names or dotted prefixes)."""
    return "*" in sections or any(key == s or key.startswith(s + ".") for s in sections)


def _digest(data: Any) -> str:
    return hashlib.sha1(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


class Pipeline:
    """Runs ``stages`` in order into ``out``, each at most once per configuration (see the module docstring).

    ``config``: the resolved configuration as plain data (``sipe.config.to_dict``), plus any data
    fingerprint under its own key (``derived`` names such keys, and copies of other keys, by prefix).
    A stage's record key hashes the significant values of its sections and of the stages before it, so
    that ``--from`` a late stage keeps the records of the early ones.
    """

    def __init__(self, out: str | Path, stages: Sequence[Stage], config: Mapping[str, Any], command: str = "sipe run",
                 derived: tuple[str, ...] = (), legacy: Mapping[str, Any] | None = None):
        self.out = Path(out)
        self.dir = self.out / RECORDS
        self.stages = list(stages)
        self.legacy = dict(legacy or {})  # flattened key -> what folders made before the key existed did
        self.config = self._as_recorded(relative_to_run(significant(config), self.out))
        self.command = command
        self.derived = derived  # key prefixes copied or computed from other keys: named last when they differ
        self.timings: dict[str, float] = {}
        self.ran: list[str] = []  # stages run (not skipped) by this invocation, in order
        self.results: dict[str, Any] = {}  # stage -> result, as the stages finish (later stages read it)
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names must be unique, got {names}")
        self.keys: dict[str, str] = {}
        seen: set[str] = set()
        for stage in self.stages:
            seen |= set(stage.sections) if stage.sections else {"*"}
            self.keys[stage.name] = _digest({k: v for k, v in self.config.items() if _in_sections(k, seen)})

    # ------------------------------------------------------------------ records

    def names(self) -> list[str]:
        return [s.name for s in self.stages]

    def stage(self, name: str) -> Stage:
        for s in self.stages:
            if s.name == name:
                return s
        raise UsageError(f"unknown stage {name!r}; the stages are: {', '.join(self.names())}")

    def record(self, name: str) -> dict[str, Any] | None:
        """The completion record of stage ``name`` under this configuration, or ``None``."""
        try:
            rec = json.loads((self.dir / f"{name}.json").read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError):
            return None
        return rec if rec.get("config") == self.keys[name] else None

    def started(self, stage: Stage) -> bool:
        """Whether ``stage`` left anything in the run folder (a record or one of its outputs)."""
        return (self.dir / f"{stage.name}.json").exists() or any((self.out / o).exists() for o in stage.outputs)

    def status(self) -> list[tuple[str, str]]:
        """(stage, state) per stage: ``done (S s)``, ``interrupted`` (outputs but no record), ``to do`` or
        ``off: why``."""
        rows = []
        for s in self.stages:
            rec = self.record(s.name)
            if not s.enabled:
                state = f"off: {s.why}"
            elif rec is not None:
                state = f"done ({rec['seconds']} s)"
            elif self.started(s):
                state = "interrupted: resumes"
            else:
                state = "to do"
            rows.append((s.name, state))
        return rows

    # ------------------------------------------------------------------ configuration check

    def _stored_config(self) -> dict[str, Any] | None:
        try:
            return json.loads((self.dir / "config.json").read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError):
            return None

    def _as_recorded(self, config: dict[str, Any]) -> dict[str, Any]:
        """``config`` in the terms of the folder's stored configuration, so that its records keep their keys:
        without a key the folder lacks while it holds its legacy value, and with the folder's value of a key
        that has become incidental since. A new folder: ``config`` as it is."""
        stored = self._stored_config()
        if stored is None:
            return config
        out = {k: v for k, v in config.items() if k in stored or k not in self.legacy or self.legacy[k] != v}
        return {**out, **{k: v for k, v in stored.items() if k not in out and _incidental(k)}}

    def check_config(self, start: str | None = None) -> None:
        """Raise :class:`RunConfigChanged` (one line, before anything is written) when the folder's stored
        configuration differs in a key that a stage already started depends on and ``start`` (``--from``)
        does not redo that stage."""
        stored = self._stored_config()
        if stored is None:
            return
        changed = sorted((k for k in set(stored) | set(self.config) if stored.get(k) != self.config.get(k)),
                         key=lambda k: (k.startswith(self.derived) if self.derived else False, k))
        if not changed:
            return
        first = self._first_affected(changed)
        if first is not None:  # name a stage that runs: --from it redoes what the change affects
            first = next((i for i in range(first, len(self.stages)) if self.stages[i].enabled), None)
        if first is None or not any(self.started(s) for s in self.stages[first:]):
            return
        start_at = self.names().index(start) if start is not None else None
        if start_at is not None and start_at <= first:
            return
        key = changed[0]
        what = f"{key}: {stored.get(key)!r} -> {self.config.get(key)!r}"
        more = f" (and {len(changed) - 1} more)" if len(changed) > 1 else ""
        raise RunConfigChanged(
            f"{self.out} was made with another configuration or data ({what}{more}); use another --out or "
            f"--from {self.stages[first].name}"
        )

    def _first_affected(self, keys: Sequence[str]) -> int | None:
        """Index of the first stage whose key covers one of the flattened ``keys``."""
        seen: set[str] = set()
        for i, stage in enumerate(self.stages):
            seen |= set(stage.sections) if stage.sections else {"*"}
            if any(_in_sections(k, seen) for k in keys):
                return i
        return None

    # ------------------------------------------------------------------ running

    def complete(self) -> bool:
        """Every enabled stage recorded as done under this configuration."""
        return all(self.record(s.name) is not None for s in self.stages if s.enabled)

    def log_status(self) -> None:
        width = max(len(n) for n in self.names())
        lines = [f"  {i + 1:2d}. {name:<{width}}  {state}" for i, (name, state) in enumerate(self.status())]
        logger.info("%s stages in %s:\n%s", self.command, self.out, "\n".join(lines))

    def redo_from(self, start: str) -> None:
        """Forget the records and remove the outputs of stage ``start`` and every later one."""
        at = self.names().index(self.stage(start).name)
        for stage in self.stages[at:]:
            (self.dir / f"{stage.name}.json").unlink(missing_ok=True)
            for rel in stage.outputs:
                path = self.out / rel
                if path.is_dir():
                    shutil.rmtree(path)
                elif path.exists():
                    path.unlink()

    def run(self, start: str | None = None, until: str | None = None,
            setup: Callable[[], None] | None = None) -> dict[str, Any]:
        """Run the stages (from ``start`` when given, redoing it and every later one; up to ``until``
        included); returns ``{stage: result}`` of every stage done so far.

        Checks the configuration first (:meth:`check_config`); a folder that is complete says so and
        writes nothing. ``setup`` runs once the checks passed, before the first stage (run metadata, seeds).
        """
        for name in (start, until):
            if name is not None:
                self.stage(name)
        self.check_config(start)
        if start is None and self.complete():
            for stage in self.stages:
                rec = self.record(stage.name)
                if stage.enabled and rec is not None:
                    self.results[stage.name] = in_run(rec["result"], self.out)
                    self.timings[stage.name] = rec["seconds"]
            logger.info("%s is complete: every stage is done (%s); nothing to do. Use --from STAGE to redo one.",
                        self.out, self.dir)
            return dict(self.results)
        if start is not None:
            self.redo_from(start)
        self.log_status()
        self.out.mkdir(parents=True, exist_ok=True)
        io.write_text(self.dir / "config.json", json.dumps(self.config, indent=1, sort_keys=True, default=str) + "\n")
        if setup is not None:
            setup()
        enabled = [s for s in self.stages if s.enabled]
        for i, stage in enumerate(enabled):
            self.run_stage(stage, f"[{i + 1}/{len(enabled)}]")
            if stage.name == until:
                logger.info("stopped after %s (--until); rerun without --until to go on", until)
                break
        return dict(self.results)

    def run_stage(self, stage: Stage, tag: str = "") -> Any:
        """``stage.fn()``'s result, run only when the stage has no record under this configuration."""
        rec = self.record(stage.name)
        if rec is not None:
            self.timings[stage.name] = rec["seconds"]
            self.results[stage.name] = in_run(rec["result"], self.out)
            logger.info("%s %s: done before (%s); skipped", tag, stage.name, self.dir / f"{stage.name}.json")
            return self.results[stage.name]
        logger.info("%s %s ...", tag, stage.name)
        t0 = time.perf_counter()
        result = stage.fn()
        seconds = round(time.perf_counter() - t0, 1)
        self.timings[stage.name] = seconds
        self.results[stage.name] = result
        logger.info("%s %s done in %.1f s", tag, stage.name, seconds)
        self.ran.append(stage.name)
        record = {"config": self.keys[stage.name], "seconds": seconds,
                  "result": relative_to_run(json.loads(json.dumps(result, default=str)), self.out)}
        io.write_text(self.dir / f"{stage.name}.json", json.dumps(record, indent=1, default=str) + "\n")
        return result
