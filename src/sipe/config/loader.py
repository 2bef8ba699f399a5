"""Dataclass configurations: defaults, then a YAML file, then ``a.b=value`` overrides.

A configuration is a (nested) dataclass whose fields all have defaults. ``load_config`` merges the
three sources, checks every key and converts every value to the field's declared type, so a typo
fails loudly with the valid keys listed instead of being silently ignored.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

from sipe.errors import UsageError

T = TypeVar("T")

__all__ = ["ConfigError", "load_config", "from_dict", "to_dict"]


class ConfigError(UsageError):
    """A configuration key or value that does not fit the configuration dataclass."""


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def _describe(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, key: str, source: str) -> Any:
    """Convert ``value`` to the annotated type ``tp`` or raise a ``ConfigError`` naming ``key``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)

    def fail(extra: str = "") -> ConfigError:
        return ConfigError(
            f"config key '{key}' ({source}): expected {_describe(tp)}, got {value!r}{extra}"
        )

    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if dataclasses.is_dataclass(value) and isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise fail(" (a mapping of its fields)")
        return _merge(_default_instance(tp, key, source), value, key, source)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        if isinstance(value, str) and value.lower() in ("none", "null") and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, key, source)
            except ConfigError:
                pass
        raise fail()
    if origin is typing.Literal:
        if value in args:
            return value
        raise fail(f" (one of {list(args)})")
    if origin in (tuple, list):
        if not isinstance(value, list | tuple):
            raise fail(" (a list)")
        if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            if len(value) != len(args):
                raise fail(f" (exactly {len(args)} items)")
            items = [_convert(v, a, f"{key}[{i}]", source) for i, (v, a) in enumerate(zip(value, args, strict=True))]
        else:
            item_tp = args[0] if args else Any
            items = [_convert(v, item_tp, f"{key}[{i}]", source) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, Mapping):
            raise fail(" (a mapping)")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise fail(" (true or false)")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise fail()
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            # YAML 1.1 reads "1e-4" (no dot) as a string; accept it as the number it obviously is.
            try:
                return float(value)
            except ValueError:
                raise fail() from None
        raise fail()
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        raise fail()
    if tp is Path:
        if isinstance(value, str | Path):
            return Path(value)
        raise fail()
    if isinstance(tp, type):
        if isinstance(value, tp):
            return value
        raise fail()
    return value


def _default_instance(cls: type[T], prefix: str, source: str) -> T:
    try:
        return cls()
    except (TypeError, ValueError) as e:
        where = f" for '{prefix}'" if prefix else ""
        raise ConfigError(f"cannot build the default {cls.__name__}{where} ({source}): {e}") from e


def _merge(base: T, data: Mapping[str, Any], prefix: str, source: str) -> T:
    """``base`` with the keys of ``data`` replaced; nested sections merge into ``base``'s own values.

    Merging into the instance rather than rebuilding from the class keeps what a parent's
    ``default_factory`` put there (``aug: {flip: false}`` changes ``flip`` only, not ``crop_size``).
    """
    cls = type(base)
    types_ = _field_types(cls)
    unknown = [k for k in data if k not in types_]
    if unknown:
        where = f"'{prefix}'" if prefix else "the top level"
        full = f"{prefix}.{unknown[0]}" if prefix else str(unknown[0])
        raise ConfigError(
            f"unknown config key '{full}' ({source}); valid keys at {where}: {', '.join(types_)}"
        )
    changes = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        current = getattr(base, name)
        if isinstance(value, Mapping) and dataclasses.is_dataclass(current) and not isinstance(current, type):
            changes[name] = _merge(current, value, key, source)
        else:
            changes[name] = _convert(value, types_[name], key, source)
    try:
        # replace() runs __init__ (and __post_init__ validation) on the merged values.
        return dataclasses.replace(base, **changes)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"invalid configuration for {cls.__name__} ({source}): {e}") from e


def from_dict(cls: type[T], data: Mapping[str, Any], source: str = "dict") -> T:
    """Build ``cls`` from a (nested) mapping; missing keys keep their defaults, unknown keys raise.

    The defaults are those of ``cls()``: a nested section keeps the values its parent's
    ``default_factory`` gives, except the keys the mapping names.
    """
    return _merge(_default_instance(cls, "", source), data, "", source)


def to_dict(cfg: Any) -> dict[str, Any]:
    """The configuration as plain YAML/JSON-friendly data (tuples become lists, paths strings)."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, list | tuple):
            return [plain(x) for x in v]
        if isinstance(v, Mapping):
            return {str(k): plain(x) for k, x in v.items()}
        if isinstance(v, Path):
            return str(v)
        return v

    return plain(cfg)


def _deep_merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = _deep_merge(dict(out[k]), v)
        else:
            out[k] = v
    return out


def _parse_override(text: str, cls: type) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key=value (for example engine.lr=0.05)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} has an empty key; write section.key=value")
    # Walk the dataclass tree so a misspelt key fails here, naming the valid keys at that level.
    tp: Any = cls
    parts = key.split(".")
    for i, part in enumerate(parts):
        parent = ".".join(parts[:i])
        if not dataclasses.is_dataclass(tp):
            raise ConfigError(f"override '{key}': '{parent}' is a value, not a section")
        types_ = _field_types(tp)
        if part not in types_:
            where = f"'{parent}'" if i else "the top level"
            raise ConfigError(
                f"unknown config key '{key}' (command line); valid keys at {where}: {', '.join(types_)}"
            )
        tp = _section_type(types_[part])
    return parts, yaml.safe_load(raw) if raw.strip() else ""


def _section_type(tp: Any) -> Any:
    """The dataclass of an optional section (``X | None`` -> ``X``), else ``tp``."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        sections = [a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)]
        if len(sections) == 1:
            return sections[0]
    return tp


def load_config(
    cls: type[T], path: str | os.PathLike | None = None, overrides: Sequence[str] = ()
) -> T:
    """Resolve a configuration: ``cls()``, then the YAML file at ``path``, then overrides, each merged in.

    ``overrides`` are ``"a.b=value"`` strings; values are parsed as YAML (``engine.lr=0.05``,
    ``aug.resize_long=[256,512]``, ``engine.max_steps=null``). Unknown keys and ill-typed values
    raise :class:`ConfigError` naming the key and listing the valid ones.
    """
    data: dict[str, Any] = {}
    sources = []
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist; pass an existing YAML file")
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path} is not valid YAML: {e}") from e
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, Mapping):
            raise ConfigError(f"config file {path} must hold a mapping of keys, got {type(loaded).__name__}")
        # Validate the file on its own first so its errors name the file.
        from_dict(cls, loaded, str(path))
        data = dict(loaded)
        sources.append(str(path))
    for text in overrides:
        parts, value = _parse_override(text, cls)
        nested: Any = value
        for part in reversed(parts):
            nested = {part: nested}
        data = _deep_merge(data, nested)
    if overrides:
        sources.append("command line")
    return from_dict(cls, data, " + ".join(sources) or "defaults")
