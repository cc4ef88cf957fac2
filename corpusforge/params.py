"""The schema helpers: ``Min``/``Max`` bounds for ``Annotated`` numbers, and checks of values against type hints.

A stage's or step's constructor (or, for the train and crawl stages, a keyword-only dataclass) is its
schema. ``validate_kwargs`` checks a recipe table against it and names the field path of the first problem,
e.g. ``stages[2].steps[0].min_words: must be >= 1, got -3``. A leaf module: standard library and errors only.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import math
import tomllib
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from corpusforge.errors import ConfigError


@dataclass(frozen=True)
class Min:
    """Lower bound (inclusive) for an ``Annotated`` number."""

    value: float


@dataclass(frozen=True)
class Max:
    """Upper bound (inclusive) for an ``Annotated`` number."""

    value: float


_TYPE_NAMES = {int: "int", float: "float", str: "str", bool: "bool", dict: "table", list: "list"}


def _type_name(tp: Any) -> str:
    if tp in _TYPE_NAMES:
        return _TYPE_NAMES[tp]
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def check_value(value: Any, tp: Any, path: str) -> Any:
    """Check ``value`` against the type hint ``tp``; return it converted (int → float, str → Path)."""
    origin = typing.get_origin(tp)
    if tp is Any or tp is inspect.Parameter.empty:
        return value
    if origin is Annotated:
        base, *marks = typing.get_args(tp)
        value = check_value(value, base, path)
        for m in marks:
            if isinstance(m, Min) and value is not None and value < m.value:
                raise ConfigError(f"must be >= {m.value:g}, got {value!r}", path=path)
            if isinstance(m, Max) and value is not None and value > m.value:
                raise ConfigError(f"must be <= {m.value:g}, got {value!r}", path=path)
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return check_value(value, a, path)
            except ConfigError as exc:
                errors.append(exc)
        if len(errors) == 1:
            raise errors[0]
        names = " or ".join(_type_name(a) for a in args if a is not type(None))
        raise ConfigError(f"expected {names}, got {type(value).__name__} {value!r}", path=path)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"must be one of {', '.join(map(repr, choices))}, got {value!r}.{hint}", path=path)
        return value
    if origin in (list, tuple) or tp in (list, tuple):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"expected a list, got {type(value).__name__} {value!r}", path=path)
        args = typing.get_args(tp)
        item = args[0] if args else Any
        return [check_value(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"expected a table, got {type(value).__name__} {value!r}", path=path)
        args = typing.get_args(tp)
        vt = args[1] if len(args) == 2 else Any
        return {k: check_value(v, vt, f"{path}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"expected true or false, got {value!r}", path=path)
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"expected int, got {type(value).__name__} {value!r}", path=path)
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"expected a number, got {type(value).__name__} {value!r}", path=path)
        # TOML has nan and inf literals; neither is a usable delay, rate or bound (nan compares false with
        # every bound, inf waits forever), so both are refused before anything starts.
        if not math.isfinite(value):
            raise ConfigError(f"expected a finite number, got {value!r}", path=path)
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"expected a string, got {type(value).__name__} {value!r}", path=path)
        return value
    if tp is Path:
        if not isinstance(value, str | Path):
            raise ConfigError(f"expected a path string, got {value!r}", path=path)
        return str(value)
    return value


def schema_fields(schema: Any) -> tuple[dict[str, bool], dict[str, Any]]:
    """The keyword parameters a schema accepts (name → required?) and their type hints.

    ``schema`` is a dataclass (its init fields), a class (its ``__init__``'s parameters) or a function (its
    keyword-only parameters, e.g. a function step ``f(docs, rank, world_size, *, k=3)``).
    """
    if dataclasses.is_dataclass(schema):
        fields = [f for f in dataclasses.fields(schema) if f.init]
        required = {
            f.name: f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING for f in fields
        }
        target: Any = schema
    else:
        if inspect.isclass(schema):
            target = schema.__dict__.get("__init__") or next(
                k.__dict__["__init__"] for k in schema.__mro__ if "__init__" in k.__dict__
            )
            kinds: tuple[Any, ...] = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        else:
            target, kinds = schema, (inspect.Parameter.KEYWORD_ONLY,)
        sig = inspect.signature(target)
        required = {
            n: p.default is inspect.Parameter.empty
            for n, p in sig.parameters.items()
            if n != "self" and p.kind in kinds
        }
    try:
        hints = typing.get_type_hints(target, include_extras=True)
    except Exception:  # noqa: BLE001 - unresolvable hints: fall back to no type checks
        hints = {}
    return required, hints


def validate_kwargs(schema: Any, kwargs: dict[str, Any], path: str) -> dict[str, Any]:
    """Check ``kwargs`` against ``schema`` (see ``schema_fields``); return the converted values."""
    params, hints = schema_fields(schema)
    out: dict[str, Any] = {}
    for key, value in kwargs.items():
        where = f"{path}.{key}" if path else key
        if key not in params:
            close = difflib.get_close_matches(key, list(params), n=3, cutoff=0.6)
            hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
            raise ConfigError(f"unknown key.{hint} Allowed keys: {', '.join(params) or '(none)'}", path=where)
        out[key] = check_value(value, hints.get(key, Any), where)
    for name, required in params.items():
        if required and name not in out:
            raise ConfigError("required key is missing", path=f"{path}.{name}" if path else name)
    return out


def schema_of(cls: Any) -> Any:
    """What a recipe table of ``cls`` is validated against: its ``schema`` dataclass, else ``cls`` itself."""
    return getattr(cls, "schema", None) or cls


def parse_value(text: str) -> Any:
    """A ``--set`` value as TOML (``3``, ``true``, ``[1, 2]``, ``"x"``), or the bare text when it is not TOML."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text
