"""The cattrs converter for topology files, and the description of what it refuses."""

from __future__ import annotations

import math
import re
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, Literal

import attrs
import cattrs
from cattrs.errors import ForbiddenExtraKeysError, IterableValidationNote

from .errors import FieldError


def _strict(kind: type, names: str) -> Callable[[Any, type], Any]:
    def structure(value: Any, _type: type) -> Any:
        if isinstance(value, bool) and kind is not bool:
            raise TypeError(f"expected {names}, got a boolean")
        if kind is float and isinstance(value, int):
            return float(value)
        if not isinstance(value, kind):
            raise TypeError(f"expected {names}, got {type(value).__name__} {value!r}")
        if isinstance(value, float) and not math.isfinite(value):
            raise TypeError(f"expected a finite number, got {value}")
        return value

    return structure


def _is_literal(kind: Any) -> bool:
    return typing.get_origin(kind) is Literal


def make_converter() -> cattrs.Converter:
    """Return the converter for topology files: strict types, no unknown fields."""
    result = cattrs.Converter(forbid_extra_keys=True)
    result.register_structure_hook(int, _strict(int, "a whole number"))
    result.register_structure_hook(float, _strict(float, "a number"))
    result.register_structure_hook(str, _strict(str, "a string"))
    result.register_structure_hook(bool, _strict(bool, "true or false"))

    def capacity(value: Any, _type: type) -> int | str:
        if value == "dynamic" or (isinstance(value, int) and not isinstance(value, bool)):
            return value  # type: ignore[no-any-return]
        raise TypeError(f"expected a whole number of records or 'dynamic', got {value!r}")

    result.register_structure_hook(int | Literal["dynamic"], capacity)

    def literal(value: Any, kind: Any) -> Any:
        choices = typing.get_args(kind)
        if value not in choices or isinstance(value, bool):
            raise TypeError(f"must be one of: {', '.join(map(str, choices))}; got {value!r}")
        return value

    result.register_structure_hook_func(_is_literal, literal)
    return result


converter = make_converter()
"""The one converter for topology files."""


def describe_errors(exc: BaseException, path: str = "$") -> list[str]:
    """Flatten what the converter raised into one ``path: message`` line per problem.

    cattrs walks its errors itself (:func:`cattrs.transform_error`); the messages are this
    module's, and so are the paths: a key of the file is written as it reads there
    (``$.topics.events``), where cattrs would write a Python expression (``$.topics['events']``).

    Args:
        exc: What :data:`converter` raised.
        path: Where the converted value sits in the file.
    """
    # transform_error writes "<description> @ <path>"; the description given to it is the
    # number of an entry of ``found``, so that neither a message nor a key of the file can be
    # taken for the separator.
    found: list[list[tuple[str, str]]] = []

    def format_exception(error: BaseException, wanted: Any) -> str:
        found.append(_describe(error, wanted))
        return str(len(found) - 1)

    keys = _noted_keys(exc)
    problems: list[str] = []
    for line in cattrs.transform_error(exc, path, format_exception):
        number, _, where = line.partition(" @ ")
        where = path + _file_path(where.removeprefix(path), keys)
        problems.extend(f"{where}{suffix}: {message}" for suffix, message in found[int(number)])
    return problems


def _describe(exc: BaseException, wanted: Any) -> list[tuple[str, str]]:
    # One (path below the value, message) per problem in ``exc``, which was raised while
    # converting a value that was to become ``wanted`` (None when cattrs does not say).
    if isinstance(exc, BaseExceptionGroup):  # every problem of a block (raise_field_errors)
        return [problem for sub in exc.exceptions for problem in _describe(sub, None)]
    if isinstance(exc, ForbiddenExtraKeysError):
        allowed = ", ".join(field.name for field in attrs.fields(exc.cl))
        # A key the YAML made a number, null or bytes is unknown as well: named as written.
        unknown = ", ".join(sorted(map(str, exc.extra_fields)))
        plural = "s" if len(exc.extra_fields) > 1 else ""
        if not allowed:
            return [("", f"unknown field{plural} {unknown}; it takes none")]
        return [("", f"unknown field{plural} {unknown}; allowed: {allowed}")]
    if isinstance(exc, FieldError):
        return [(f".{exc.field}", str(exc))]
    if isinstance(exc, KeyError):
        return [("", "required field missing")]
    if isinstance(exc, AttributeError) and ("items" in str(exc) or "keys" in str(exc)):
        return [("", "expected a mapping")]
    if isinstance(exc, TypeError | ValueError):
        message = str(exc)
        if "not iterable" in message or "unhashable" in message:
            message = "expected a mapping" if _wants_mapping(wanted) else "expected a list"
        return [("", message)]
    return [("", f"{type(exc).__name__}: {exc}")]


def _wants_mapping(wanted: Any) -> bool:
    # Whether a value was to become a mapping (a section, a dict), also inside an Optional.
    if wanted is dict or typing.get_origin(wanted) is dict:
        return True
    if isinstance(wanted, type) and attrs.has(wanted):
        return True
    if typing.get_origin(wanted) in (typing.Union, types.UnionType):
        return any(_wants_mapping(arg) for arg in typing.get_args(wanted))
    return False


def _noted_keys(exc: BaseException) -> dict[str, object]:
    # Every mapping key and list index cattrs noted in ``exc``, by the repr() its paths show.
    keys: dict[str, object] = {}
    todo = [exc]
    while todo:
        error = todo.pop()
        for note in getattr(error, "__notes__", ()):
            if isinstance(note, IterableValidationNote):
                keys[repr(note.index)] = note.index
        if isinstance(error, BaseExceptionGroup):
            todo.extend(error.exceptions)
    return keys


def _file_path(path: str, keys: Mapping[str, object]) -> str:
    # Rewrite each "[repr]" of a path written by cattrs as the file's reader knows the place:
    # ".events" for a string key, "[3]" for a list index or another key. A null key has no
    # such name, and is left out.
    if not keys:
        return path
    noted = "|".join(map(re.escape, sorted(keys, key=len, reverse=True)))
    return re.sub(rf"\[({noted})\]", lambda match: _segment(keys[match[1]]), path)


def _segment(key: object) -> str:
    if isinstance(key, str):
        return f".{key}"
    return "" if key is None else f"[{key}]"
