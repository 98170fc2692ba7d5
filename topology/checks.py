"""Checks of the values in a topology file, and the mixin that runs all of them at once."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import attrs

from .errors import FieldError, raise_field_errors
from .limits import limit_problem

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
"""What a name in a topology file (of the topology, a topic, a node...) may look like."""

Check = Callable[[Any, "attrs.Attribute[Any]", Any], None]
"""A check of one field's value: raises :exc:`FieldError` when the value is wrong."""


def at_least(low: float) -> Check:
    """Return a check that a value (when given) is ``low`` or more."""

    def check(_instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value is not None and value < low:
            raise FieldError(attribute.name, f"must be >= {low:g}, got {value}")

    return check


def at_most(high: int, what: str, why: str) -> Check:
    """Return a check that a value (when given) is within a limit of :mod:`topology.limits`.

    Args:
        high: The largest value allowed.
        what: What is counted, for the message (``partitions per topic``).
        why: The reason for the limit.
    """

    def check(_instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        problem = None if value is None else limit_problem(value, high, what, why)
        if problem is not None:
            raise FieldError(attribute.name, problem)

    return check


def positive(_instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    """Check that a value (when given) is above 0."""
    if value is not None and not value > 0:
        raise FieldError(attribute.name, f"must be > 0, got {value}")


def optional_name(_instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    """Check that a value (when given) is a valid name (see :data:`NAME`)."""
    if value is not None and not NAME.match(value):
        raise FieldError(
            attribute.name,
            f"{value!r} is not a valid name: use letters, digits, '_', '-' and '.', "
            "at most 64, starting with a letter or digit",
        )


def checks(*run: Check) -> dict[str, Any]:
    """Field metadata naming the checks of a field of a :class:`Checked` class.

    Unlike attrs validators, which stop at the first value that is wrong, every check of every
    field runs, so a block with several problems has all of them reported at once.
    """
    return {"checks": run}


class Checked:
    """A mixin for attrs classes of a topology file: checks every field, reports every problem.

    Fields name their checks with :func:`checks`; a class adds checks across its fields by
    overriding :meth:`problems`. After ``__init__`` every check runs, and all the problems
    found are raised at once (see :func:`raise_field_errors`).
    """

    __slots__ = ()

    def __attrs_post_init__(self) -> None:
        errors = []
        for field in attrs.fields(type(self)):  # type: ignore[arg-type]
            for check in field.metadata.get("checks", ()):
                try:
                    check(self, field, getattr(self, field.name))
                except FieldError as error:
                    errors.append(error)
        errors.extend(self.problems())
        raise_field_errors(errors)

    def problems(self) -> list[FieldError]:
        """Return the problems across fields (values that are wrong alone are already
        reported: skip them here)."""
        return []
