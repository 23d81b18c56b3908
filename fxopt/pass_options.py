"""Pass options: typed values from pipeline specs, and the spec text back from values.

A pass's options are a dataclass; its real type hints (``typing.get_type_hints``) drive the conversion of
the strings a spec gives::

    @dataclass
    class QuantOptions:
        mode: Literal["int8", "int8-weight-only"] = "int8"
        skip: tuple[str, ...] = ()
        percentile: float | None = None

    "insert-quant{mode=int8,skip=[lm_head,down_proj],percentile=none}"
        → QuantOptions(mode="int8", skip=("lm_head", "down_proj"), percentile=None)

Supported hints: ``str``, ``int``, ``float``, ``bool`` (true/false, yes/no, on/off, 1/0), ``Enum`` subclasses
(by name or value), ``Literal[...]``, ``list[X]``, ``tuple[X, ...]``, ``tuple[X, Y]``, ``X | None`` (``none``)
and unions. A list option also takes a single bare value (``skip=lm_head``). :func:`format_value` writes a
value so that :func:`convert` reads it back to the same value.
"""
from __future__ import annotations

import dataclasses
import enum
import re
import types
import typing
from typing import Any

_NONE = ("none", "null")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def option_hints(options_cls: type) -> dict[str, Any]:
    """Field name → resolved type hint of an options dataclass."""
    hints = typing.get_type_hints(options_cls)
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(options_cls)}


def convert(value: Any, hint: Any, *, where: str = "option") -> Any:
    """``value`` (a spec string, a list of them, or already a Python value) as an instance of ``hint``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any or hint is object:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in _NONE and type(None) in args):
            if type(None) in args:
                return None
        errors = []
        for member in (a for a in args if a is not type(None)):
            try:
                return convert(value, member, where=where)
            except (TypeError, ValueError) as e:
                errors.append(str(e))
        raise ValueError(f"{where}: {value!r} is none of {_hint_name(hint)} ({'; '.join(errors)})")
    if origin is typing.Literal:
        for choice in args:
            if value == choice or (isinstance(value, str) and str(choice) == value):
                return choice
        raise ValueError(f"{where}: {value!r} is not one of {', '.join(map(str, args))}")
    if origin in (list, tuple, typing.Sequence) or hint in (list, tuple):
        items = list(value) if isinstance(value, (list, tuple)) else [value]
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(items) != len(args):
                raise ValueError(f"{where}: expected {len(args)} values {_hint_name(hint)}, got {len(items)}")
            return tuple(convert(v, a, where=where) for v, a in zip(items, args))
        elem = args[0] if args else Any
        converted = [convert(v, elem, where=where) for v in items]
        return converted if (origin or hint) is list else tuple(converted)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        if isinstance(value, hint):
            return value
        for member in hint:
            if value in (member.name, member.value) or (isinstance(value, str) and str(member.value) == value):
                return member
        raise ValueError(f"{where}: {value!r} is not one of {', '.join(m.name for m in hint)}")
    if isinstance(value, (list, tuple)):
        raise ValueError(f"{where}: expected a single {_hint_name(hint)}, got a list {list(value)!r}")
    if hint is bool:
        if isinstance(value, bool):
            return value
        if str(value).lower() in _TRUE:
            return True
        if str(value).lower() in _FALSE:
            return False
        raise ValueError(f"{where}: {value!r} is not a boolean (use true/false)")
    if hint is int:
        if isinstance(value, bool) or (not isinstance(value, (int, str))):
            raise ValueError(f"{where}: {value!r} is not an integer")
        try:
            return int(value)
        except ValueError:
            raise ValueError(f"{where}: {value!r} is not an integer") from None
    if hint is float:
        if isinstance(value, bool):
            raise ValueError(f"{where}: {value!r} is not a number")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{where}: {value!r} is not a number") from None
    if hint is str:
        if not isinstance(value, str):
            raise ValueError(f"{where}: {value!r} is not a string")
        return value
    return value


def _hint_name(hint) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


_BARE = re.compile(r"^[A-Za-z0-9_.\-+:/*]+$")


def format_value(value: Any) -> str:
    """A value in spec syntax: ``true``, ``none``, ``[a,b]``, ``"a b"`` (quoted when not a bare word)."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, enum.Enum):
        return value.name
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(format_value(v) for v in value) + "]"
    if isinstance(value, float):
        return repr(value)
    text = str(value)
    if _BARE.match(text) and text.lower() not in _NONE:
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def changed_options(options: Any) -> dict[str, Any]:
    """The fields of an options instance that differ from their defaults, in declaration order."""
    if options is None or not dataclasses.is_dataclass(options):
        return {}
    default = type(options)()
    return {f.name: getattr(options, f.name) for f in dataclasses.fields(options)
            if getattr(options, f.name) != getattr(default, f.name)}
