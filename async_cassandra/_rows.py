"""Making rows: on the event loop, from the decoder's raw tuples, as the row factory says.

Every request hands its pages over as the decoder's plain tuples (the driver's
``tuple_factory``, see ``_driver.take_row_factory``), and the row factory in effect for
the request (the execution profile's or the session's) is applied here, on the loop:

* ``named_tuple_factory``, the default, builds a new ``Row`` namedtuple class for every
  response it decodes. Making a class costs far more than decoding a small result, and
  each one is garbage the cycle collector must find; under load that showed up as
  1.4-2x fewer point reads per second and long GC pauses in the event loop (see the
  point-reads benchmark). Rows made here are the same ``Row`` named tuples, with the
  same field names (the class comes from the driver's own factory), made once per set
  of column names.
* Any other factory is called as the driver would call it, once per page (or, for a
  factory that does not return a list of rows, once for the whole result: see
  :class:`JoinedPages`).

Nothing of the driver's configuration is changed, so the driver session itself keeps
behaving as a plain driver session (``ResultSet.was_applied`` checks the factory).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from itertools import repeat
from typing import Any, overload

from cassandra.query import named_tuple_factory, tuple_factory

from .exceptions import ConfigurationError

__all__ = [
    "JoinedPages",
    "MakeRows",
    "RowPage",
    "as_row_list",
    "named_tuple_rows",
    "new_row",
    "not_a_row_list",
    "row_class",
    "rows_maker",
]

# (column names, the decoder's raw rows) -> the page as the row factory makes it.
MakeRows = Callable[[Sequence[str], list[Any]], Any]

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


def _raw_rows(colnames: Sequence[str], rows: list[Any]) -> list[Any]:
    return rows


def rows_maker(row_factory: Any) -> MakeRows:
    """What makes a page's rows for ``row_factory``, the factory in effect for a request
    (None: the rows as the decoder made them, plain tuples)."""
    if row_factory is None or row_factory is tuple_factory:
        return _raw_rows
    if row_factory is named_tuple_factory:
        return named_tuple_rows
    return row_factory  # type: ignore[no-any-return]


def as_row_list(made: Any) -> list[Any] | None:
    """A row factory's page as a list of rows; None when the factory made one object
    for the whole page (a pandas ``DataFrame``, say), whose iteration is not its rows."""
    if isinstance(made, list):
        return made
    if isinstance(made, (tuple, Iterator)):  # a tuple, or a generator of rows
        return list(made)
    return None


def not_a_row_list(made: Any, what: str) -> ConfigurationError:
    """The error for reading ``made`` (not a list of rows) row by row in ``what``."""
    kind = type(made).__name__
    return ConfigurationError(
        f"the row factory made a {kind} for the page, not a list of rows, so {what} "
        f"cannot hand out its rows one by one (iterating a {kind} need not give its "
        "rows). Read the page whole: result.current_rows, or `async for page in "
        "stream.pages()`; or use a row factory that returns a list (the driver's "
        "named_tuple_factory, dict_factory, tuple_factory and ordered_dict_factory do)"
    )


class JoinedPages:
    """The rows of every page of one result, joined into one result.

    Pages are made as they arrive (overlapping the fetch of the next). A factory that
    returns lists of rows gives one list of every row; one that makes a container of
    its own per page (a ``DataFrame``) cannot be joined page by page, so it is called
    once, at the end, on every page's raw rows: one container of every row, never the
    column names or the first page alone.
    """

    __slots__ = ("_make", "_names", "_raw", "_rows")

    def __init__(self, make: MakeRows, names: Sequence[str]) -> None:
        self._make = make
        self._names = names
        self._rows: list[Any] | None = None
        self._raw: list[Any] | None = None

    def add(self, raw: list[Any]) -> None:
        """Add the next page's raw rows."""
        if self._raw is not None:
            self._raw.extend(raw)
            return
        made = self._make(self._names, raw)
        rows = as_row_list(made)
        if rows is None and self._rows is None:
            self._raw = list(raw)  # a container per page: make it once, at the end
        elif rows is None:
            raise not_a_row_list(made, "joining the pages of execute()")
        elif self._rows is None:
            # A copy: the first page's list may be the driver's own (tuple_factory).
            self._rows = list(rows)
        else:
            self._rows.extend(rows)

    def result(self) -> Any:
        """Every row: a list, or the factory's container of them all."""
        if self._raw is not None:
            return self._make(self._names, self._raw)
        return self._rows if self._rows is not None else []
