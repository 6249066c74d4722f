"""Load one section of ``params.yaml`` into a dataclass, rejecting unknown keys.

Every stage declares its config as a plain dataclass with defaults and help text
(``field(metadata={"help": ...})``). ``load_section`` fills it from params.yaml; a key the
dataclass does not know is an error that names the valid keys, so a typo never silently
falls back to a default.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")

PARAMS_FILE = Path(os.environ.get("POLICYTUNE_PARAMS", "params.yaml"))


class ParamsError(ValueError):
    """A params.yaml value that cannot be used (unknown key, wrong type)."""


def read_params(path: str | Path | None = None) -> dict:
    path = Path(path or PARAMS_FILE)
    if not path.exists():
        raise ParamsError(f"{path} not found; run stages from the repository root")
    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: top level must be a mapping")
    return data


def from_dict(cls: type[T], data: Any, where: str) -> T:
    """Build dataclass ``cls`` from a mapping, recursing into nested dataclass fields."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ParamsError(f"params '{where}' must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ParamsError(
            f"unknown key(s) in params '{where}': {', '.join(unknown)}; "
            f"valid keys: {', '.join(sorted(fields))}"
        )
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            value = from_dict(hint, value, f"{where}.{name}")
        kwargs[name] = _check_type(value, hint, f"{where}.{name}")
    return cls(**kwargs)


def _check_type(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float, str, bool):
        if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
            raise ParamsError(f"params '{where}' must be {hint.__name__}, got {value!r}")
    elif origin in (list, tuple) and not isinstance(value, (list, tuple)):
        raise ParamsError(f"params '{where}' must be a list, got {value!r}")
    elif origin is dict and not isinstance(value, dict):
        raise ParamsError(f"params '{where}' must be a mapping, got {value!r}")
    return value


def load_section(cls: type[T], section: str, path: str | Path | None = None) -> T:
    """Load ``params.yaml[section]`` into ``cls`` (missing keys take the dataclass defaults)."""
    return from_dict(cls, read_params(path).get(section), section)


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)
