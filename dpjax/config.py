"""Frozen-dataclass configs: loading from experiments/, `--set a.b=value` overrides, JSON.

A config file is a Python file defining `CONFIG` (a frozen dataclass instance). Overrides
address nested fields with dots and are parsed by the field's declared type, so a typo or
a value of the wrong type fails before any work starts, naming the valid fields.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import re
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from dpjax.errors import ConfigError

EXPERIMENTS_DIR = Path(__file__).resolve().parents[1] / "experiments"


def config_names() -> list[str]:
    """experiments/*.py that define a CONFIG (the study scripts there do not)."""
    return sorted(
        p.stem
        for p in EXPERIMENTS_DIR.glob("*.py")
        if p.stem[0] != "_" and re.search(r"^CONFIG\b", p.read_text(), re.MULTILINE)
    )


def load_config_file(path_or_name: str) -> Any:
    """`CONFIG` from a .py file, or from experiments/<name>.py; "NAME:ATTR" takes the file's
    `ATTR` instead (e.g. "pusht_keypoints:PAPER", the paper-size recipe)."""
    attribute = "CONFIG"
    head, sep, tail = path_or_name.rpartition(":")
    if sep and tail.isidentifier() and head:
        path_or_name, attribute = head, tail
    path = Path(path_or_name)
    if not path.suffix and not path.exists():
        path = EXPERIMENTS_DIR / f"{path_or_name}.py"
    if not path.is_file():
        raise ConfigError(
            f"no config file {path_or_name!r}; experiments: {', '.join(config_names())}"
        )
    spec = importlib.util.spec_from_file_location(f"dpjax_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # a config file is user code: report, don't traceback
        raise ConfigError(f"{path}: failed to load: {type(e).__name__}: {e}") from e
    if not dataclasses.is_dataclass(getattr(module, attribute, None)):
        others = [k for k, v in vars(module).items() if k.isupper() and dataclasses.is_dataclass(v)
                  and not isinstance(v, type)]  # fmt: skip
        raise ConfigError(
            f"{path} does not define {attribute} = <a config dataclass>"
            + (f"; it defines {', '.join(others)}" if others else "")
        )
    return getattr(module, attribute)


def _resolved_hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _parse_value(text: str, annotation: Any, where: str) -> Any:
    """Parses `text` as the type `annotation` (int, float, bool, str, tuples, Optional)."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if text.lower() in ("none", "null") and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _parse_value(text, arg, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: cannot parse {text!r}")
    if annotation is bool:
        if text.lower() in ("true", "1", "yes"):
            return True
        if text.lower() in ("false", "0", "no"):
            return False
        raise ConfigError(f"{where}: expected true/false, got {text!r}")
    if annotation in (int, float):
        try:
            return annotation(text) if annotation is float else int(text)
        except ValueError as e:
            raise ConfigError(f"{where}: expected {annotation.__name__}, got {text!r}") from e
    if annotation is str:
        return text
    if origin is tuple:
        try:
            value = ast.literal_eval(text if text.strip().startswith("(") else f"({text},)")
        except (ValueError, SyntaxError) as e:
            raise ConfigError(f"{where}: expected a tuple like (1, 2), got {text!r}") from e
        if not isinstance(value, tuple):
            value = (value,)
        item = args[0] if args else Any
        if item is Any or item is Ellipsis:
            return value
        return tuple(_parse_value(str(v), item, where) for v in value)
    raise ConfigError(f"{where}: cannot set a field of type {annotation!r} from the command line")


def apply_overrides(config: Any, overrides: Iterable[str]) -> Any:
    """Returns a copy of `config` with each "dotted.field=value" applied."""
    for override in overrides:
        name, sep, text = override.partition("=")
        if not sep:
            raise ConfigError(f"override {override!r} is not of the form field=value")
        config = _set_field(config, name.strip().split("."), text.strip(), name.strip())
    return config


def _set_field(config: Any, path: list[str], text: str, full: str) -> Any:
    fields = {f.name: f for f in dataclasses.fields(config)}
    head = path[0]
    if head not in fields:
        raise ConfigError(
            f"unknown config field {full!r}; valid fields here: {', '.join(sorted(fields))}"
        )
    current = getattr(config, head)
    if len(path) > 1:
        if not dataclasses.is_dataclass(current):
            raise ConfigError(f"config field {head!r} has no sub-fields (in {full!r})")
        value = _set_field(current, path[1:], text, full)
    else:
        if dataclasses.is_dataclass(current):
            raise ConfigError(f"{full!r} is a group of fields; set one of its fields instead")
        value = _parse_value(text, _resolved_hints(type(config))[head], full)
    return dataclasses.replace(config, **{head: value})


def to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def from_dict(cls: type, data: Mapping[str, Any]) -> Any:
    """Rebuilds a (nested) config dataclass from `to_dict` output; unknown keys -> ConfigError."""
    hints = _resolved_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(f"{cls.__name__}: unknown fields {sorted(unknown)}")
    kwargs = {}
    for name, value in data.items():
        annotation = hints[name]
        if dataclasses.is_dataclass(annotation):
            value = from_dict(annotation, value)
        elif isinstance(value, list):
            value = _lists_to_tuples(value)
        kwargs[name] = value
    return cls(**kwargs)


def _lists_to_tuples(value):
    return tuple(_lists_to_tuples(v) for v in value) if isinstance(value, list) else value
