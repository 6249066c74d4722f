"""Load one section of ``params.yaml`` into a dataclass, validating every key and value.

Every stage declares its config as a plain dataclass with defaults and help text
(``field(metadata={"help": ...})``). ``load_section`` fills it from params.yaml:

- a key the dataclass does not know is an error that names the valid keys, so a typo never
  silently falls back to a default;
- every value is validated against its field's annotation with pydantic in strict mode:
  ``Optional[...]``, ``Literal[...]`` choices, ``list[...]`` / ``dict[...]`` element types and
  ranges (``Annotated[float, Range(ge=0, le=1)]``, or the aliases ``Fraction``, ``PositiveInt``,
  ...). Strict means no silent coercion: ``"0.9"`` is not a number and ``1`` is not ``true``;
  an integer is accepted for a float (and stored as a float);
- nested dataclass fields are sections of their own (``train.lora``), validated the same way;
- the dataclass's own ``__post_init__`` checks still run.

A failure is a :class:`ParamsError` naming the full key (``split.near_dup_threshold``), what it
must be (``a number or null``, ``one of 'chunk', 'doc'``, ``a number in [0, 1]``) and the value.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, Union

import yaml
from pydantic import Field as Range  # Annotated[float, Range(ge=0, le=1)]: bounds pydantic checks

T = TypeVar("T")

PARAMS_FILE = Path(os.environ.get("POLICYTUNE_PARAMS", "params.yaml"))

# Range aliases for config annotations (bounds inclusive unless the name says otherwise).
Fraction = Annotated[float, Range(ge=0, le=1)]
PositiveInt = Annotated[int, Range(ge=1)]
NonNegInt = Annotated[int, Range(ge=0)]
PositiveFloat = Annotated[float, Range(gt=0)]
NonNegFloat = Annotated[float, Range(ge=0)]
Dtype = Literal["auto", "bfloat16", "float16", "float32"]

__all__ = ["ParamsError", "Range", "Fraction", "PositiveInt", "NonNegInt", "PositiveFloat", "NonNegFloat",
           "Dtype", "read_params", "from_dict", "validate_value", "describe_type", "load_section", "to_dict",
           "PARAMS_FILE"]


class ParamsError(ValueError):
    """A params.yaml value that cannot be used (unknown key, wrong type, out of range)."""


def read_params(path: str | Path | None = None) -> dict:
    path = Path(path or PARAMS_FILE)
    if not path.exists():
        raise ParamsError(f"{path} not found; run stages from the repository root")
    with open(path, encoding="utf-8") as f:
        try:
            data = yaml.safe_load(f) or {}
        except yaml.YAMLError as e:
            raise ParamsError(f"{path} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: top level must be a mapping")
    return data


# --------------------------------------------------------------------------- type hints

@functools.lru_cache(maxsize=None)
def field_hints(cls: type) -> dict[str, Any]:
    """``{field name: annotation}`` of dataclass ``cls``, ``Annotated`` extras kept."""
    return typing.get_type_hints(cls, include_extras=True)


def _strip(hint: Any) -> Any:
    while typing.get_origin(hint) is Annotated:
        hint = typing.get_args(hint)[0]
    return hint


def _union_args(hint: Any) -> tuple | None:
    h = _strip(hint)
    return typing.get_args(h) if typing.get_origin(h) in (Union, types.UnionType) else None


def section_class(hint: Any) -> type | None:
    """The dataclass a field holds (``Cfg`` or ``Optional[Cfg]``), else None."""
    h = _strip(hint)
    if dataclasses.is_dataclass(h) and isinstance(h, type):
        return h
    args = _union_args(h)
    if args:
        dcs = [a for a in args if dataclasses.is_dataclass(a)]
        if len(dcs) == 1 and all(a is type(None) or a is dcs[0] for a in args):
            return dcs[0]
    return None


def _bounds(hint: Any) -> list[str]:
    out = []
    for meta in typing.get_args(hint)[1:] if typing.get_origin(hint) is Annotated else ():
        for m in getattr(meta, "metadata", [meta]):
            for attr, sym in (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<=")):
                v = getattr(m, attr, None)
                if v is not None:
                    out.append((sym, v))
    lows = [(s, v) for s, v in out if s in (">", ">=")]
    highs = [(s, v) for s, v in out if s in ("<", "<=")]
    if lows and highs:
        (ls, lv), (hs, hv) = lows[-1], highs[-1]
        return [f"in {'[' if ls == '>=' else '('}{lv:g}, {hv:g}{']' if hs == '<=' else ')'}"]
    return [f"{s} {v:g}" for s, v in lows + highs]


_SIMPLE = {int: "an integer", float: "a number", str: "a string", bool: "true or false", type(None): "null",
           Any: "any value", object: "any value"}


def describe_type(hint: Any) -> str:
    """Plain-words type of an annotation: ``a number in [0, 1] or null``, ``one of 'a', 'b'``."""
    if typing.get_origin(hint) is Annotated:
        base, bounds = describe_type(typing.get_args(hint)[0]), _bounds(hint)
        return " ".join([base, *bounds])
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (Union, types.UnionType):
        parts = [describe_type(a) for a in args if a is not type(None)]
        return " or ".join(parts + (["null"] if type(None) in args else []))
    if hint in (list, tuple) or origin in (list, tuple):
        return "a list" + (f" (each item {describe_type(args[0])})" if args and args[0] is not Ellipsis else "")
    if hint is dict or origin is dict:
        if len(args) == 2:
            return f"a mapping (keys: {describe_type(args[0])}; values: {describe_type(args[1])})"
        return "a mapping"
    if dataclasses.is_dataclass(hint):
        return f"a mapping with keys {', '.join(f.name for f in dataclasses.fields(hint))}"
    return _SIMPLE.get(hint, getattr(hint, "__name__", str(hint)))


# --------------------------------------------------------------------------- validation

@functools.lru_cache(maxsize=None)
def _adapter(cls: type, name: str):
    from pydantic import TypeAdapter

    return TypeAdapter(field_hints(cls)[name])


def _sub_hint(hint: Any, loc: tuple) -> tuple[str, Any]:
    """The dotted/indexed suffix of a pydantic error location and the annotation found there."""
    suffix, h = "", hint
    i = 0
    while i < len(loc):
        part = loc[i]
        base = _strip(h) if h is not None else None
        args = typing.get_args(base) if base is not None else ()
        if i + 1 < len(loc) and loc[i + 1] == "[key]":  # a mapping key that failed
            return f"{suffix} key {part!r}", args[0] if len(args) == 2 else None
        if isinstance(part, int):
            suffix += f"[{part}]"
            h = args[0] if args else None
        elif typing.get_origin(base) is dict or base is dict:
            suffix += f".{part}"
            h = args[1] if len(args) == 2 else None
        else:  # a union member tag (pydantic names the member it tried); keep the whole hint
            pass
        i += 1
    return suffix, h


def _message(key: str, hint: Any, value: Any, err) -> str:
    problems = []
    for e in err.errors(include_url=False)[:3]:
        suffix, sub = _sub_hint(hint, tuple(e["loc"]))
        where = f"'{key}'{suffix}" if suffix.startswith(" key") else f"'{key}{suffix}'"
        expected = describe_type(sub if sub is not None else hint)
        got = e.get("input", value)
        text = f"params {where} must be {expected}, got {got!r}"
        if isinstance(got, str) and expected.startswith(("a number", "an integer")):
            text += _numeric_string_hint(got)
        problems.append(text)
    return "; ".join(problems)


def _numeric_string_hint(s: str) -> str:
    """Why a number-looking string is a string in YAML, and how to write it."""
    try:
        float(s)
    except ValueError:
        return ""
    m = re.fullmatch(r"\s*([+-]?\d+)([eE][+-]?\d+)\s*", s)
    if m:  # YAML 1.1 (PyYAML) needs a decimal point in scientific notation
        return f" (YAML reads {s} as text: write {m.group(1)}.0{m.group(2)})"
    return " (a quoted string: write the number without quotes)"


def validate_value(cls: type, name: str, value: Any, key: str) -> Any:
    """``value`` checked (strict) against the annotation of field ``name`` of ``cls``."""
    from pydantic import ValidationError

    try:
        return _adapter(cls, name).validate_python(value, strict=True)
    except ValidationError as e:
        raise ParamsError(_message(key, field_hints(cls)[name], value, e)) from None


def from_dict(cls: type[T], data: Any, where: str) -> T:
    """Build dataclass ``cls`` from a mapping, recursing into nested dataclass fields."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ParamsError(f"params '{where}' must be a mapping, got {type(data).__name__} {data!r}")
    hints = field_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields), key=str)
    if unknown:
        raise ParamsError(
            f"unknown key(s) in params '{where}': {', '.join(map(str, unknown))}; "
            f"valid keys: {', '.join(sorted(fields))}"
        )
    kwargs = {}
    for name, value in data.items():
        sub = section_class(hints[name])
        if sub is not None and not (value is None and _union_args(hints[name])):
            kwargs[name] = from_dict(sub, value, f"{where}.{name}")
        else:
            kwargs[name] = validate_value(cls, name, value, f"{where}.{name}")
    return cls(**kwargs)


def load_section(cls: type[T], section: str, path: str | Path | None = None) -> T:
    """Load ``params.yaml[section]`` into ``cls`` (missing keys take the dataclass defaults)."""
    return from_dict(cls, read_params(path).get(section), section)


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)
