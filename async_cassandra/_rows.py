"""The default row factory: the driver's named tuples, without a new class per response.

``cassandra.query.named_tuple_factory`` builds a new ``Row`` namedtuple class for every
response it decodes. Making a class costs far more than decoding a small result, and
each one is garbage the cycle collector must find; under load that showed up as 1.4-2x
fewer point reads per second and long GC pauses in the event loop (see the point-reads
benchmark). Rows made here are the same ``Row`` named tuples, with the same field names
(the class comes from the driver's own factory), made once per set of column names.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from itertools import repeat
from typing import Any, overload

from cassandra.cluster import Cluster as DriverCluster
from cassandra.cluster import Session as DriverSession
from cassandra.query import named_tuple_factory

__all__ = ["RowPage", "named_tuple_rows", "new_row", "row_class", "use_cached_row_classes"]

# Makes a Row of a raw row (the decoder's plain tuple) straight from C: no Python frame,
# unlike the class's _make or __new__, which check a length the decoder always gets
# right. 1.7x faster.
new_row = tuple.__new__

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
    return list(map(new_row, repeat(row_class(colnames)), rows))


class RowPage(Sequence[Any]):
    """A page of rows that makes each ``Row`` as it is read.

    A list of Rows kept for a whole page outlives several collections and is promoted
    to the collector's oldest generation, which then runs full collections; rows made
    as they are read, and dropped, never get there (a 5x smaller share of GC time when
    streaming pages). Reading an item twice makes two equal Rows. ``list(page)`` gives
    a plain list.
    """

    __slots__ = ("_cls", "_raw")

    def __init__(self, raw: Sequence[Any], cls: Any) -> None:
        self._raw = raw
        self._cls = cls

    def __len__(self) -> int:
        return len(self._raw)

    def __iter__(self) -> Iterator[Any]:
        return map(new_row, repeat(self._cls), self._raw)

    @overload
    def __getitem__(self, index: int) -> Any: ...
    @overload
    def __getitem__(self, index: slice) -> list[Any]: ...
    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            return list(map(new_row, repeat(self._cls), self._raw[index]))
        return new_row(self._cls, self._raw[index])

    def __eq__(self, other: object) -> bool:
        if isinstance(other, RowPage):
            return self._cls is other._cls and list(self._raw) == list(other._raw)
        if isinstance(other, (list, tuple)):
            return list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # like a list

    def __repr__(self) -> str:
        return f"RowPage({list(self)!r})"


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
