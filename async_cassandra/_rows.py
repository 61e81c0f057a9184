"""The default row factory: the driver's named tuples, without a new class per response.

``cassandra.query.named_tuple_factory`` builds a new ``Row`` namedtuple class for every
response it decodes. Making a class costs far more than decoding a small result, and
each one is garbage the cycle collector must find; under load that showed up as 1.4-2x
fewer point reads per second and long GC pauses in the event loop (see the point-reads
benchmark). Rows made here are the same ``Row`` named tuples, with the same field names
(the class comes from the driver's own factory), made once per set of column names.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import repeat
from typing import Any

from cassandra.cluster import Cluster as DriverCluster
from cassandra.cluster import Session as DriverSession
from cassandra.query import named_tuple_factory

__all__ = ["named_tuple_rows", "row_class", "use_cached_row_classes"]

# Column names -> Row class. Bounded: an application with ever-new column sets (ad-hoc
# queries) starts over rather than growing without end.
_row_classes: dict[tuple[str, ...], Any] = {}
_MAX_ROW_CLASSES = 4096


def row_class(colnames: Sequence[str]) -> Any:
    """The ``Row`` named tuple class for these column names."""
    # Runs on the driver's reactor and executor threads too. Dict reads and writes are
    # atomic; two threads building the same class at once is harmless.
    key = tuple(colnames)
    cls = _row_classes.get(key)
    if cls is None:
        # The driver's own factory, on one placeholder row, gives its exact class
        # (including how it renames columns that are not Python identifiers).
        cls = type(named_tuple_factory(colnames, [(None,) * len(key)])[0])
        if len(_row_classes) >= _MAX_ROW_CLASSES:
            _row_classes.clear()
        _row_classes[key] = cls
    return cls


def named_tuple_rows(colnames: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[Any]:
    """Rows as ``Row`` named tuples, like the driver's default factory."""
    # tuple.__new__ straight from C, not the class's _make or __new__ (Python functions
    # that check the length, which the decoder's rows always have): 1.7x faster.
    return list(map(tuple.__new__, repeat(row_class(colnames)), rows))


def use_cached_row_classes(cluster: DriverCluster, session: DriverSession) -> None:
    """Put :func:`named_tuple_rows` where the driver's default factory is configured.

    Only where the default is still in place: a ``row_factory`` the user chose (in a
    profile or on the session) is left alone. Done without the driver's setter, which
    would switch the cluster into its legacy configuration mode.
    """
    for profile in cluster.profile_manager.profiles.values():
        if profile.row_factory is named_tuple_factory:
            profile.row_factory = named_tuple_rows
    if session.row_factory is named_tuple_factory:
        session._row_factory = named_tuple_rows
