"""Typed configs from YAML: frozen dataclasses built from a mapping, dotted ``key=value``
overrides, and errors that name the field, the bad value and what is allowed. Used by job
configs (:mod:`albert_ray.finetune.config`) and label configs (:mod:`albert_ray.label.run`).
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from albert_ray.paths import not_found


class ConfigFileError(ValueError):
    """A config value that is missing, unknown or out of range; names the field."""


def read_yaml(path: str | Path, what: str = "config") -> dict:
    """A YAML file that must hold a mapping (empty file: ``{}``).

    Raises:
        FileNotFoundError: no such file.
        ConfigFileError: unparsable YAML (with the line), or not a mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise not_found(what, path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigFileError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigFileError(f"{path}: not valid YAML{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigFileError(
            f"{path}: expected a mapping of settings (key: value lines), got a {type(data).__name__}"
        )
    return data


def build(cls, data: dict, overrides: list[str] | None = None, prefix: str = ""):
    """``cls`` (a frozen dataclass, nested ones allowed) from ``data`` after ``overrides``."""
    data = apply_overrides(copy.deepcopy(data), list(overrides or []))
    return _build(cls, data, prefix)


def _build(cls, data: Any, prefix: str):
    if not isinstance(data, dict):
        raise ConfigFileError(f"{prefix or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigFileError(f"{prefix}{unknown[0]}: unknown field; allowed: {sorted(fields)}")
    kwargs = {}
    for name, f in fields.items():
        key = f"{prefix}{name}"
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigFileError(f"{key}: required field is missing")
            continue
        hint = hints[name]
        value = data[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, value, f"{key}.")
        else:
            kwargs[name] = _coerce(value, hint, key)
    return cls(**kwargs)


def _coerce(value: Any, hint, key: str):
    if typing.get_origin(hint) is tuple:  # tuple[str, ...]: a list, or one value
        items = value if isinstance(value, (list, tuple)) else [value]
        return tuple(_coerce(v, typing.get_args(hint)[0], key) for v in items)
    args = (
        typing.get_args(hint)
        if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union
        else (hint,)
    )
    if value is None:
        if type(None) in args:
            return None
        raise ConfigFileError(f"{key}: must not be empty")
    for t in args:
        if t is type(None):
            continue
        if t is bool and isinstance(value, bool):
            return value
        if t is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if t is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if t is float and isinstance(value, str):
            try:  # YAML 1.1 reads "3e-3" (no dot) as a string
                return float(value)
            except ValueError:
                pass
        if t is str and isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    names = " or ".join(getattr(t, "__name__", str(t)) for t in args)
    raise ConfigFileError(f"{key}={value!r}: must be {names}")


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``a.b=value`` overrides (values parsed as YAML scalars) to a nested dict."""
    for item in overrides:
        if "=" not in item:
            raise ConfigFileError(f"override {item!r}: expected key=value, e.g. train.epochs=2")
        key, raw = item.split("=", 1)
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigFileError(f"override {item!r}: {part} is not a section")
        node[parts[-1]] = yaml.safe_load(raw) if raw != "" else None
    return data
