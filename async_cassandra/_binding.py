"""Binding parameters before anything is sent, with errors that say which value and why.

The driver binds in plain Python and reports the lowest-level failure: "invalid literal
for int() with base 10: ''" for ``Decimal('NaN')``, "'str' object has no attribute
'bytes'" for a UUID given as text, an ``OSError`` for a bad inet address (which would
read as a network failure). Binding here, before a request exists, turns each into a
:class:`~async_cassandra.QueryError` naming the parameter, its column and CQL type, the
value, and the reason; it is also the built-in ``TypeError`` or ``ValueError`` the
driver raises for bad values, so code catching those keeps working.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

from cassandra.cqltypes import BytesType
from cassandra.encoder import Encoder
from cassandra.query import BoundStatement, PreparedStatement, bind_params

from .exceptions import bad_argument

__all__ = ["bind_prepared", "bind_string"]

_SHAPE_HINT = "pass a list or tuple with one value per bind marker (a dict for named markers)"


def bind_prepared(prepared: PreparedStatement, parameters: Any) -> BoundStatement:
    """``prepared`` bound to ``parameters``; raises QueryError (also TypeError or
    ValueError) saying which parameter could not be bound and why."""
    try:
        bound = prepared.bind(parameters)
    except Exception as error:
        raise _prepared_bind_error(prepared, parameters, error)  # noqa: B904 - cause set
    blobs = _blob_parameters(prepared)
    if blobs:
        _refuse_ints_for_blobs(prepared, bound.raw_values, blobs)
    return bound


# The positions of a statement's blob parameters, worked out once per statement.
_blob_positions: weakref.WeakKeyDictionary[PreparedStatement, tuple[int, ...]] = (
    weakref.WeakKeyDictionary()
)


def _blob_parameters(prepared: PreparedStatement) -> tuple[int, ...]:
    positions = _blob_positions.get(prepared)
    if positions is None:
        columns = prepared.column_metadata or []
        positions = tuple(i for i, c in enumerate(columns) if c.type is BytesType)
        _blob_positions[prepared] = positions
    return positions


def _refuse_ints_for_blobs(
    prepared: PreparedStatement, values: Sequence[Any], positions: tuple[int, ...]
) -> None:
    # The driver serializes a blob with bytes(value), and bytes(5) is five zero bytes:
    # an int would be stored as silent garbage.
    for index in positions:
        value = values[index] if index < len(values) else None
        if isinstance(value, int):
            name = prepared.column_metadata[index].name
            raise bad_argument(
                f'Could not bind parameter {index + 1} ("{name}", a CQL blob) to {value!r} '
                f"({type(value).__name__}): a blob takes bytes, bytearray or memoryview, not "
                "an int (the driver would store bytes(n): n zero bytes)",
                TypeError,
            )


def bind_string(query: str, parameters: Any, encoder: Encoder) -> str:
    """A plain CQL string with its ``%s`` / ``%(name)s`` parameters filled in, as the
    driver fills them; raises QueryError (also TypeError or ValueError) if they do not
    fit the markers."""
    try:
        bound: str = bind_params(query, parameters, encoder)
    except Exception as error:
        base = TypeError if isinstance(error, TypeError) else ValueError
        raise bad_argument(  # noqa: B904 - the cause is set by bad_argument
            f"Could not fill the %s markers of the query with its parameters: {error!s} "
            f"({type(error).__name__}). A plain string takes %s markers and a list or "
            "tuple of values, or %(name)s markers and a dict",
            base,
            cause=error,
        )
    return bound


def _prepared_bind_error(
    prepared: PreparedStatement, parameters: Any, error: Exception
) -> Exception:
    markers = _describe_markers(prepared)
    not_a_sequence = parameters is not None and not isinstance(parameters, (Sequence, Mapping))
    if not_a_sequence or isinstance(parameters, (str, bytes)):
        return bad_argument(
            f"Could not bind the parameters: got {type(parameters).__name__} "
            f"{parameters!r:.60}; {_SHAPE_HINT}. The statement takes {markers}",
            TypeError,
            cause=error,
        )
    failed = _failing_value(prepared, parameters)
    if failed is None:  # a count mismatch, a missing name, ...
        base = TypeError if isinstance(error, TypeError) else ValueError
        return bad_argument(
            f"Could not bind the parameters: {error!s}; {_SHAPE_HINT}. The statement "
            f"takes {markers}",
            base,
            cause=error,
        )
    index, name, cql_type, value, reason = failed
    # The class the driver raises for it (TypeError for a value of the wrong type,
    # ValueError for a bad value), and TypeError for its unwrapped AttributeErrors.
    wrong_type = isinstance(error, (TypeError, AttributeError))
    base = TypeError if wrong_type else ValueError
    return bad_argument(
        f'Could not bind parameter {index + 1} ("{name}", a CQL {cql_type}) to '
        f"{value!r:.60} ({type(value).__name__}): {_reason(cql_type, value, reason)}",
        base,
        cause=error,
    )


def _failing_value(
    prepared: PreparedStatement, parameters: Any
) -> tuple[int, str, str, Any, Exception] | None:
    """The first parameter whose value its column's type cannot serialize."""
    columns = prepared.column_metadata or []
    if isinstance(parameters, Mapping):
        values = [parameters.get(column.name) for column in columns]
    else:
        values = list(parameters) if parameters is not None else []
    for index, (value, column) in enumerate(zip(values, columns, strict=False)):
        if value is None:
            continue
        try:
            column.type.serialize(value, prepared.protocol_version)
        except Exception as reason:
            return index, column.name, _cql_name(column.type), value, reason
    return None


# What a value of each CQL type is, in Python (the driver's encoders).
_TAKES = {
    "ascii": "a str of ASCII",
    "bigint": "an int",
    "blob": "bytes",
    "boolean": "a bool",
    "counter": "an int",
    "date": "a datetime.date",
    "decimal": "a decimal.Decimal (or an int or float)",
    "double": "a float",
    "duration": "a cassandra.util.Duration",
    "float": "a float",
    "inet": "an IP address (a str, or an ipaddress address)",
    "int": "an int from -2**31 to 2**31 - 1",
    "smallint": "an int from -2**15 to 2**15 - 1",
    "text": "a str",
    "time": "a datetime.time (or int nanoseconds)",
    "timestamp": "a datetime.datetime (or int milliseconds since 1970)",
    "timeuuid": "a uuid.UUID (version 1)",
    "tinyint": "an int from -128 to 127",
    "uuid": "a uuid.UUID",
    "varint": "an int",
}


def _reason(cql_type: str, value: Any, error: Exception) -> str:
    if cql_type == "decimal" and _is_not_finite(value):
        return (
            "NaN and infinities have no CQL decimal encoding (a decimal is an integer "
            "and a scale); store them in a double column, or as null"
        )
    kind = type(error)
    name = kind.__name__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__name__}"
    takes = _TAKES.get(cql_type)
    expected = f"; a CQL {cql_type} takes {takes}" if takes else ""
    return f"{str(error) or name} ({name}){expected}"


def _is_not_finite(value: Any) -> bool:
    if isinstance(value, Decimal):
        return not value.is_finite()
    return isinstance(value, float) and not math.isfinite(value)


def _describe_markers(prepared: PreparedStatement) -> str:
    columns = prepared.column_metadata or []
    if not columns:
        return "no parameters"
    described = ", ".join(f"{column.name} {_cql_name(column.type)}" for column in columns)
    return f"{len(columns)} value{'s' if len(columns) != 1 else ''}: ({described})"


def _cql_name(cql_type: Any) -> str:
    # The driver calls text "varchar" (the same type); tables are usually declared text.
    name: str = cql_type.cql_parameterized_type()
    return "text" if name == "varchar" else name
