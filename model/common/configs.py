"""Config dataclasses are the schema (docs/design.md §7.6): every field is declared once, and both
the checkpoint files and the command line are read through it.

- `config_from_dict(cls, data)`: build a config from JSON-like data, refusing unknown keys and
  values of the wrong type (`ConfigError`; checkpoints re-raise it as `CheckpointError`).
- `replace_config(config, overrides)`: the one override path (preset or checkpoint config, then
  what the command line gives), checked like `config_from_dict`; nested configs merge key by key.
- `option(default, help=...)`: a field that is also a command-line option, `--field-name` (or
  `flag=`), its type from the annotation (bool: a switch; `parse=`: a custom parser), its help from
  `help`. `add_options(parser, cls, defaults)` declares them; `given_options(args, cls)` reads
  back what was given, nested configs included (`option(default_factory=..., nested=True)`). A
  `bool | None` field is a switch with a `--no-` form (None: not given, the preset's value).
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any

_MISSING = dataclasses.MISSING


class ConfigError(ValueError):
    """Data that does not fit a config dataclass (unknown key, wrong type)."""


def option(default: Any = _MISSING, *, help: str | None = None, flag: str | None = None,
           choices: typing.Sequence | None = None, parse: Callable[[str], Any] | None = None,
           default_factory: Callable[[], Any] | Any = _MISSING, nested: bool = False) -> Any:
    """A dataclass field that is also a command-line option (`help` set) or holds nested options."""
    metadata = {"help": help, "flag": flag, "choices": choices, "parse": parse, "nested": nested}
    if default_factory is not _MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


# ----------------------------------------------------------------------------- data -> config


def config_to_dict(config: Any) -> dict:
    if not dataclasses.is_dataclass(config):
        raise TypeError(f"configs must be dataclasses, got {type(config).__name__}")
    return dataclasses.asdict(config)


def config_from_dict(cls: type, data: dict, source: str = "config") -> Any:
    """Build dataclass `cls` from `data`, refusing unknown keys and values of the wrong type."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected an object for {cls.__name__}, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{source}: unknown {cls.__name__} keys {unknown}; known: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    values = {}
    for name, value in data.items():
        values[name] = _coerce(value, hints.get(name, Any), f"{source}: {cls.__name__}.{name}")
    return cls(**values)


def _coerce(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        for choice in typing.get_args(hint):
            try:
                return _coerce(value, choice, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: {value!r} does not match {hint}")
    if hint is type(None):
        if value is None:
            return None
        raise ConfigError(f"{where}: expected null, got {value!r}")
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        item = args[0] if args else Any
        items = [_coerce(v, item, where) for v in value]
        return tuple(items) if origin is tuple else items
    if dataclasses.is_dataclass(hint):
        return config_from_dict(hint, value, where)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(hint, type) and not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise ConfigError(f"{where}: expected {getattr(hint, '__name__', hint)}, got {value!r}")
    return value


def replace_config(config: Any, overrides: Mapping[str, Any], source: str = "overrides") -> Any:
    """`config` with `overrides` applied (nested configs merged key by key), checked by the schema."""
    return config_from_dict(type(config), _merge(config_to_dict(config), overrides), source)


def _merge(base: dict, overrides: Mapping[str, Any]) -> dict:
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


# ----------------------------------------------------------------------------- command line


def _options(cls: type) -> list[tuple[dataclasses.Field, Any]]:
    hints = typing.get_type_hints(cls)
    return [(f, hints[f.name]) for f in dataclasses.fields(cls) if f.metadata.get("help") or f.metadata.get("nested")]


def add_options(parser: argparse.ArgumentParser, cls: type, defaults: Any = None, *, shown: Any = None) -> None:
    """One option per `option(help=...)` field of `cls` (nested configs' too). `defaults`: an
    instance whose values are the options' defaults (shown in --help); None: every option defaults
    to None, "not given" (the caller's preset or checkpoint decides). `shown` (with defaults None):
    an instance whose values --help names as the defaults while the options still default to None,
    for a command that puts something between the config's defaults and the command line (train
    teacher's --recipe: only what was given may override it)."""
    for f, hint in _options(cls):
        meta = f.metadata
        default = None if defaults is None else getattr(defaults, f.name)
        named = default if shown is None else getattr(shown, f.name)
        if meta.get("nested"):
            add_options(parser, hint, default, shown=None if shown is None else named)
            continue
        flag = "--" + (meta.get("flag") or f.name.replace("_", "-"))
        kwargs: dict[str, Any] = {"dest": _dest(f), "default": default, "help": meta["help"]}
        if hint is bool:
            kwargs["action"] = "store_true"
        elif hint == bool | None:  # a switch that may be left to a preset: --flag / --no-flag / not given
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = meta.get("parse") or _scalar_type(hint, f.name)
            if meta.get("choices") is not None:
                kwargs["choices"] = list(meta["choices"])
            if defaults is not None:
                kwargs["help"] += " (default %(default)s)"
            elif shown is not None:
                kwargs["help"] += f" (default {named})".replace("%", "%%")
        parser.add_argument(flag, **kwargs)


def given_options(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The options of `cls` that `args` holds a value for (not None), as a (nested) override dict."""
    given: dict[str, Any] = {}
    for f, hint in _options(cls):
        if f.metadata.get("nested"):
            inner = given_options(args, hint)
            if inner:
                given[f.name] = inner
            continue
        value = getattr(args, _dest(f), None)
        if value is not None:
            given[f.name] = value
    return given


def _dest(f: dataclasses.Field) -> str:
    """args attribute of an option: its flag's name (args.steps; args.teacher_guidance for the flag
    --teacher-guidance), so nested configs that share a field name need distinct flags."""
    return (f.metadata.get("flag") or f.name).replace("-", "_")


def _scalar_type(hint: Any, name: str) -> Callable[[str], Any]:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 1:
        hint = args[0]
    if hint in (int, float, str):
        return hint
    raise TypeError(f"option {name}: no command-line parser for {hint}; give option(parse=...)")
