"""Tables: the values of a batch as columns, one numpy array per field of an event type.

A workload that makes a batch of events at once makes it as a :class:`Table`: ``VideoEvent``
values become an array of video ids, an array of user ids, an array of kinds (as small codes),
and so on. Tables travel as batches do (producer, partition ring, consumer, checkpoints,
gateways), and a processor with ``process_columns`` folds one with a handful of numpy calls
instead of a Python step per event.

A table is also a read-only sequence of its events: ``table[i]`` and ``for event in table``
build the event objects on demand, so code written record by record keeps working.

The fields a table can hold as arrays are those of a msgspec struct whose fields are ints,
floats, strings or a ``Literal`` of strings (see :func:`schema_of`); constraints declared with
``msgspec.Meta`` (``ge``, ``le``...) are checked on arrays when a table is decoded, as msgspec
checks them on single events.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Annotated, Any, Literal, get_args, get_origin, get_type_hints, overload

import attrs
import msgspec
import numpy as np
import numpy.typing as npt

Array = npt.NDArray[Any]

INT = "int"
FLOAT = "float"
ENUM = "enum"
TEXT = "text"

_DTYPES: dict[str, Any] = {INT: np.dtype("<i8"), FLOAT: np.dtype("<f8"), ENUM: np.dtype("u1")}


@attrs.frozen
class Field:
    """One field of an event type, as a column."""

    name: str
    kind: str
    """``int`` (int64), ``float`` (float64), ``enum`` (codes into :attr:`categories`, uint8)
    or ``text`` (an object array of str)."""
    categories: tuple[str, ...] = ()
    """For ``enum``: the values, in the order the ``Literal`` declares them."""
    low: float | None = None
    low_inclusive: bool = True
    high: float | None = None
    high_inclusive: bool = True

    def problem(self, column: Array) -> str | None:
        """What is wrong with ``column`` as this field's values, or None."""
        if self.kind == ENUM:
            if column.size and int(column.max()) >= len(self.categories):
                return f"field {self.name}: a code is not one of {len(self.categories)} values"
            return None
        if self.kind == TEXT:
            if not all(isinstance(value, str) for value in column.tolist()):
                return f"field {self.name}: a value is not a string"
            return None
        if self.kind == FLOAT and not np.isfinite(column).all():
            return f"field {self.name}: a value is not a finite number"
        if self.low is not None and column.size:
            low = column.min()
            if low < self.low or (low == self.low and not self.low_inclusive):
                sign = ">=" if self.low_inclusive else ">"
                return f"field {self.name}: values must be {sign} {self.low:g}, got {low}"
        if self.high is not None and column.size:
            high = column.max()
            if high > self.high or (high == self.high and not self.high_inclusive):
                sign = "<=" if self.high_inclusive else "<"
                return f"field {self.name}: values must be {sign} {self.high:g}, got {high}"
        return None


@attrs.frozen
class Schema:
    """How the events of one type are laid out as columns."""

    type: type[msgspec.Struct]
    name: str
    """The type's tag (or its class name): what a table's wire form names it by."""
    fields: tuple[Field, ...]
    kind: str | None
    """The kind of every event of the type, when it has no ``kind`` field but a class
    variable (a type with one kind only)."""
    names: tuple[str, ...] = attrs.field(init=False)
    """The field names, in the type's order."""

    @names.default
    def _names(self) -> tuple[str, ...]:
        return tuple(field.name for field in self.fields)


def _bounds(info: Any) -> dict[str, Any]:
    bounds: dict[str, Any] = {}
    if getattr(info, "ge", None) is not None:
        bounds.update(low=info.ge, low_inclusive=True)
    if getattr(info, "gt", None) is not None:
        bounds.update(low=info.gt, low_inclusive=False)
    if getattr(info, "le", None) is not None:
        bounds.update(high=info.le, high_inclusive=True)
    if getattr(info, "lt", None) is not None:
        bounds.update(high=info.lt, high_inclusive=False)
    return bounds


def _declared(hint: Any) -> tuple[Any, ...]:
    # The values of a Literal in the order declared (msgspec's inspection sorts them).
    while get_origin(hint) is Annotated:
        hint = get_args(hint)[0]
    return get_args(hint) if get_origin(hint) is Literal else ()


def _field(name: str, info: Any, hint: Any = None) -> Field | None:
    inspect = msgspec.inspect
    if isinstance(info, inspect.IntType):
        return Field(name, INT, **_bounds(info))
    if isinstance(info, inspect.FloatType):
        return Field(name, FLOAT, **_bounds(info))
    if isinstance(info, inspect.StrType) and not (info.min_length or info.max_length):
        return Field(name, TEXT)
    if (
        isinstance(info, inspect.LiteralType)
        and all(isinstance(v, str) for v in info.values)
        and 0 < len(info.values) <= 256
    ):
        values = _declared(hint)
        if set(values) != set(info.values):
            values = tuple(info.values)
        return Field(name, ENUM, tuple(str(v) for v in values))
    return None


@functools.cache
def schema_of(event_type: type) -> Schema | None:
    """The column layout of ``event_type``, or None when its events cannot be a table (not a
    msgspec struct, or a field that is not an int, a float, a plain string or a ``Literal``
    of strings)."""
    if not (isinstance(event_type, type) and issubclass(event_type, msgspec.Struct)):
        return None
    info = msgspec.inspect.type_info(event_type)
    if not isinstance(info, msgspec.inspect.StructType):
        return None
    hints = get_type_hints(event_type, include_extras=True)
    fields: list[Field] = []
    for field in info.fields:
        column = _field(field.name, field.type, hints.get(field.name))
        if column is None or not field.required:
            return None
        fields.append(column)
    tag = event_type.__struct_config__.tag
    kind = getattr(event_type, "kind", None)
    return Schema(
        event_type,
        tag if isinstance(tag, str) else event_type.__name__,
        tuple(fields),
        kind if isinstance(kind, str) and all(f.name != "kind" for f in info.fields) else None,
    )


class Table(Sequence[Any]):
    """Events of one type as columns: ``columns[name]`` holds every event's ``name`` field.

    Columns are numpy arrays of equal length: int64 for ints, float64 for floats, uint8 codes
    for a ``Literal`` (see :meth:`decoded` for the values), an object array for strings.
    Tables are never changed once made: slicing shares the arrays.

    Args:
        event_type: The msgspec struct the events are (see :func:`schema_of`).
        columns: An array per field, all of one length.

    Raises:
        TypeError: ``event_type`` cannot be a table.
        ValueError: A column is missing or of another length.

    Example:
        >>> class Point(msgspec.Struct):
        ...     x: int
        ...     y: int
        >>> table = Table(Point, {"x": np.array([1, 2]), "y": np.array([3, 4])})
        >>> table[1]
        Point(x=2, y=4)
    """

    __slots__ = ("_length", "columns", "schema")

    def __init__(self, event_type: type, columns: Mapping[str, Array]) -> None:
        schema = schema_of(event_type)
        if schema is None:
            raise TypeError(f"{event_type!r} events cannot be a table")
        self.schema = schema
        self.columns = dict(columns)
        lengths = {len(self.columns[name]) for name in schema.names if name in self.columns}
        missing = [name for name in schema.names if name not in self.columns]
        if missing or len(lengths) > 1:
            raise ValueError(
                f"a table of {schema.name} needs one column per field of equal length; "
                f"missing {missing}, lengths {sorted(lengths)}"
            )
        self._length = lengths.pop() if lengths else 0

    @property
    def type(self) -> type[msgspec.Struct]:
        """The events' type."""
        return self.schema.type

    def __len__(self) -> int:
        return self._length

    @overload
    def __getitem__(self, index: int) -> Any: ...
    @overload
    def __getitem__(self, index: slice) -> Table: ...
    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            return self._with({name: column[index] for name, column in self.columns.items()})
        if not -self._length <= index < self._length:
            raise IndexError(f"index {index} out of a table of {self._length} events")
        return self.type(*self._row(index))

    def _row(self, index: int) -> list[Any]:
        row = []
        for field in self.schema.fields:
            value = self.columns[field.name][index]
            if field.kind == ENUM:
                value = field.categories[value]
            elif field.kind != TEXT:
                value = value.item()
            row.append(value)
        return row

    def _with(self, columns: dict[str, Array]) -> Table:
        table = Table.__new__(Table)
        table.schema, table.columns = self.schema, columns
        table._length = len(next(iter(columns.values()))) if columns else 0
        return table

    def __iter__(self) -> Iterator[Any]:
        return iter(self.rows())

    def rows(self) -> list[Any]:
        """The events as objects, built now (one object each: the slow form)."""
        make = self.type
        return [make(*row) for row in zip(*map(self.decoded, self.schema.names), strict=True)]

    def decoded(self, name: str) -> list[Any]:
        """The values of field ``name`` as Python objects (a ``Literal``'s strings, not
        codes)."""
        column = self.columns[name]
        field = self.schema.fields[self.schema.names.index(name)]
        if field.kind == ENUM:
            return np.asarray(field.categories, dtype=object)[column].tolist()  # type: ignore[no-any-return]
        return column.tolist()  # type: ignore[no-any-return]

    def take(self, indices: Array) -> Table:
        """The events at ``indices``, in that order."""
        return self._with({name: column[indices] for name, column in self.columns.items()})

    def kind_counts(self) -> dict[str, int]:
        """Events per kind: by the ``kind`` field, or the type's one kind."""
        if self.schema.kind is not None:
            return {self.schema.kind: self._length} if self._length else {}
        field = self.schema.fields[self.schema.names.index("kind")]
        column = self.columns["kind"]
        if field.kind == ENUM:
            counts = np.bincount(column, minlength=len(field.categories)).tolist()
            return {name: n for name, n in zip(field.categories, counts, strict=True) if n}
        values, counts = np.unique(column, return_counts=True)
        return dict(zip(values.tolist(), counts.tolist(), strict=True))

    @classmethod
    def concat(cls, tables: Sequence[Table]) -> Table:
        """One table of ``tables`` one after another (all of one type)."""
        first = tables[0]
        if len(tables) == 1:
            return first
        if any(table.schema is not first.schema for table in tables):
            raise TypeError("tables of different event types cannot be joined")
        return first._with(
            {name: np.concatenate([t.columns[name] for t in tables]) for name in first.columns}
        )

    @classmethod
    def from_events(cls, event_type: Any, events: Sequence[Any]) -> Table:
        """The table of ``events`` (objects of ``event_type``)."""
        schema = schema_of(event_type)
        if schema is None:
            raise TypeError(f"{event_type!r} events cannot be a table")
        columns: dict[str, Array] = {}
        for field in schema.fields:
            values = [getattr(event, field.name) for event in events]
            if field.kind == ENUM:
                code = {value: i for i, value in enumerate(field.categories)}
                columns[field.name] = np.array([code[v] for v in values], dtype=np.uint8)
            elif field.kind == TEXT:
                column = np.empty(len(values), dtype=object)
                column[:] = values
                columns[field.name] = column
            else:
                columns[field.name] = np.array(values, dtype=_DTYPES[field.kind])
        return cls(event_type, columns)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Table):
            return self.schema is other.schema and all(
                np.array_equal(self.columns[name], other.columns[name])
                for name in self.schema.names
            )
        if isinstance(other, Sequence) and not isinstance(other, str):
            return len(other) == self._length and self.rows() == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"<Table of {self._length} {self.schema.name} events>"


# -- columns of any form ----------------------------------------------------------------------


def as_list(column: Any) -> list[Any]:
    """``column`` as a list of Python objects, whatever its form (list, array, table)."""
    if isinstance(column, np.ndarray):
        listed: list[Any] = column.tolist()
        return listed
    if isinstance(column, Table):
        return column.rows()
    return column if isinstance(column, list) else list(column)


def concat(parts: Sequence[Any]) -> Any:
    """The columns ``parts`` one after another, in the form they share: one array when all
    are arrays, one table when all are tables of one type, a list otherwise."""
    if len(parts) == 1:
        return parts[0]
    if all(isinstance(part, np.ndarray) and part.dtype == parts[0].dtype for part in parts):
        return np.concatenate(parts)
    if all(isinstance(part, Table) for part in parts):
        first = parts[0]
        if all(part.schema is first.schema for part in parts):
            return Table.concat(parts)
    joined: list[Any] = []
    for part in parts:
        joined.extend(as_list(part))
    return joined


def take(column: Any, positions: Array) -> Any:
    """The items of ``column`` at ``positions`` (an index array), in the same form."""
    if isinstance(column, (np.ndarray, Table)):
        return column[positions] if isinstance(column, np.ndarray) else column.take(positions)
    return [column[i] for i in positions.tolist()]


def same(a: Any, b: Any) -> bool:
    """Whether two columns hold equal values, whatever their forms."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return len(a) == len(b) and as_list(a) == as_list(b)
    if isinstance(a, Table):
        return bool(a == b)
    if isinstance(b, Table):
        return bool(b == a)
    return list(a) == list(b)


def all_finite(timestamps: Any) -> bool:
    """Whether every timestamp is a finite number."""
    if isinstance(timestamps, np.ndarray):
        return bool(np.isfinite(timestamps).all())
    return all(map(math.isfinite, timestamps))


# -- the encoded form, for gateways and checkpoints ---------------------------------------------


class TableData(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A table as it is encoded: its type's name and one entry per field, in the type's field
    order (little-endian int64 / float64 bytes, uint8 codes, or a list of strings).

    It encodes as a MessagePack map, so a field typed ``list[T] | TableData`` takes either
    form."""

    type: str
    length: int
    columns: list[bytes | list[str]]


def pack_values(values: Sequence[Any]) -> list[Any] | TableData:
    """The encodable form of a batch's values: a list, or :class:`TableData` for a table."""
    if not isinstance(values, Table):
        return as_list(values)
    columns: list[bytes | list[str]] = []
    for field in values.schema.fields:
        column = values.columns[field.name]
        if field.kind == TEXT:
            columns.append(column.tolist())
        else:
            columns.append(np.ascontiguousarray(column, dtype=_DTYPES[field.kind]).tobytes())
    return TableData(values.schema.name, len(values), columns)


def pack_array(column: Any) -> list[Any] | bytes:
    """The encodable form of keys or timestamps: the raw bytes of an int64 array of keys or
    a float64 array of timestamps (what :class:`~actors.record.Columns` makes of arrays), or
    a list."""
    if isinstance(column, np.ndarray) and column.dtype in (_DTYPES[INT], _DTYPES[FLOAT]):
        return np.ascontiguousarray(column).tobytes()
    return as_list(column)


def unpack_array(data: list[Any] | bytes, dtype: str) -> Any:
    """The inverse of :func:`pack_array`; ``dtype`` is ``<i8`` for keys, ``<f8`` for
    timestamps.

    Raises:
        ValueError: The bytes are not a whole number of items.
    """
    if isinstance(data, bytes):
        if len(data) % 8:
            raise ValueError(f"{len(data)} bytes are not a whole number of 8-byte items")
        return np.frombuffer(data, dtype=dtype)
    return data


def unpack_values(data: list[Any] | TableData, types: Sequence[type]) -> Sequence[Any]:
    """The inverse of :func:`pack_values`: a table is checked against ``types``, the event
    types the values may be (a table of any other type is refused), field by field, with the
    constraints its type declares.

    Raises:
        ValueError: What is wrong with the table, in words.
    """
    if not isinstance(data, TableData):
        return data
    schema = _schema_named(data.type, tuple(types))
    if schema is None:
        raise ValueError(f"values of type {data.type!r} are not carried here")
    if len(data.columns) != len(schema.fields):
        raise ValueError(
            f"a table of {schema.name} needs {len(schema.fields)} columns, got {len(data.columns)}"
        )
    columns: dict[str, Array] = {}
    for field, raw in zip(schema.fields, data.columns, strict=True):
        if field.kind == TEXT:
            if not isinstance(raw, list):
                raise ValueError(f"field {field.name}: expected strings")
            column = np.empty(len(raw), dtype=object)
            column[:] = raw
        else:
            if not isinstance(raw, bytes):
                raise ValueError(f"field {field.name}: expected the bytes of an array")
            dtype: Any = _DTYPES[field.kind]
            if len(raw) != data.length * dtype.itemsize:
                raise ValueError(
                    f"field {field.name}: {len(raw)} bytes for {data.length} values of "
                    f"{dtype.itemsize} bytes"
                )
            column = np.frombuffer(raw, dtype=dtype)
        if len(column) != data.length:
            raise ValueError(f"field {field.name}: {len(column)} values, expected {data.length}")
        problem = field.problem(column)
        if problem is not None:
            raise ValueError(problem)
        columns[field.name] = column
    return Table(schema.type, columns)


def _schema_named(name: str, types: tuple[type, ...]) -> Schema | None:
    for event_type in types:
        schema = schema_of(event_type)
        if schema is not None and schema.name == name:
            return schema
    return None
