"""Query results: :class:`AsyncResultSet`."""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from typing import Any

import anyio.lowlevel
from cassandra.cluster import ResponseFuture
from cassandra.query import BatchStatement, QueryTrace

from . import _driver
from ._offloop import OffLoopCalls
from ._rows import not_a_row_list
from .exceptions import translate_driver_error

__all__ = ["AsyncResultSet"]

# Comments and string literals, which may hide (or fake) the words of a batch.
_NOT_CODE = re.compile(r"'(?:[^']|'')*'|--[^\n]*|//[^\n]*|/\*.*?\*/", re.S)
_BATCH = re.compile(r"\s*BEGIN\s+(?:UNLOGGED\s+|COUNTER\s+|LOGGED\s+)?BATCH\b", re.I)


class AsyncResultSet:
    """The rows of a query, already fetched; iterating never does I/O.

    Rows are the driver's named tuples, or whatever the row factory in effect makes.
    ``for row in result`` and ``async for row in result`` both work; every iteration
    starts from the first row, so two iterations never interfere.

    A row factory that makes one object per result instead of a list of rows (a pandas
    ``DataFrame``) gives that object as :attr:`current_rows`; reading such a result row
    by row raises :class:`~async_cassandra.ConfigurationError` rather than iterate the
    object (a DataFrame iterates its column names).

    By default ``session.execute`` fetches every page before returning. When it was
    asked for one page (``paging_state=`` / ``fetch_size=``), :attr:`paging_state` and
    :attr:`has_more_pages` say where the next call resumes.
    """

    def __init__(
        self,
        rows: Any,
        response_future: ResponseFuture | None = None,
        *,
        paging_state: bytes | None = None,
        offloop: OffLoopCalls | None = None,
        trace: QueryTrace | BaseException | None = None,
        warnings: list[str] | None = None,
    ) -> None:
        self._rows = rows
        # Rows a factory made as one object of its own (not a sequence of rows).
        self._opaque = rows.__class__ is not list and (
            not isinstance(rows, Sequence) or isinstance(rows, (str, bytes))
        )
        self._future = response_future
        self._paging_state = paging_state
        self._offloop = offloop if offloop is not None else OffLoopCalls()
        self._trace = trace
        self._warnings = warnings if warnings is not None else []

    # -- rows ------------------------------------------------------------------------

    @property
    def rows(self) -> Any:
        """All fetched rows, in order (or the row factory's object holding them)."""
        return self._rows

    @property
    def current_rows(self) -> Any:
        """The driver ``ResultSet``'s name for :attr:`rows`."""
        return self._rows

    @property
    def _current_rows(self) -> Any:
        # The driver documentation's DataFrame recipe reads this private name.
        return self._rows

    def _row_list(self) -> Sequence[Any]:
        if self._opaque:
            raise not_a_row_list(self._rows, "the result")
        rows: Sequence[Any] = self._rows
        return rows

    def one(self) -> Any | None:
        """The first row, or None when there are none."""
        rows = self._row_list()
        return rows[0] if rows else None

    def all(self) -> list[Any]:
        """All rows as a new list."""
        return list(self._row_list())

    def __iter__(self) -> Iterator[Any]:
        return iter(self._row_list())

    def __aiter__(self) -> _AsyncRowIterator:
        return _AsyncRowIterator(iter(self._row_list()))

    def __len__(self) -> int:
        """How many rows (also for a factory's own container of them, if it knows)."""
        if self._opaque and hasattr(self._rows, "__len__"):
            return len(self._rows)
        return len(self._row_list())

    def __getitem__(self, index: int) -> Any:
        return self._row_list()[index]

    def __bool__(self) -> bool:
        return len(self) > 0

    def __repr__(self) -> str:
        count = type(self._rows).__name__ if self._opaque else f"{len(self._rows)}"
        return f"<AsyncResultSet rows={count} has_more_pages={self.has_more_pages}>"

    # -- metadata --------------------------------------------------------------------

    @property
    def response_future(self) -> ResponseFuture | None:
        """The driver's ``ResponseFuture`` behind this result (for warnings, hosts)."""
        return self._future

    @property
    def column_names(self) -> list[str] | None:
        """The result's column names (None for a statement without rows)."""
        return None if self._future is None else _driver.column_names(self._future)

    @property
    def column_types(self) -> list[Any] | None:
        """The result's column types: the driver's ``cassandra.cqltypes`` classes."""
        return None if self._future is None else _driver.column_types(self._future)

    @property
    def warnings(self) -> list[str]:
        """The server's warnings (batch too large, tombstones read, ...), every page's,
        in order. The driver logs each as it arrives (logger ``cassandra.protocol``);
        the driver's ``response_future.warnings`` holds only the last page's."""
        return list(self._warnings)

    @property
    def paging_state(self) -> bytes | None:
        """Where the next page starts, or None when this was the last page."""
        return self._paging_state

    @property
    def has_more_pages(self) -> bool:
        """Whether :attr:`paging_state` leads to more rows (one-page results only)."""
        return self._paging_state is not None

    @property
    def was_applied(self) -> bool:
        """For a lightweight transaction, or a conditional batch: whether it was applied.

        A conditional batch that was not applied returns one row per condition it
        checked, each with ``[applied]`` false; this reads the first, for a
        ``BatchStatement`` and for a ``BEGIN BATCH ... APPLY BATCH`` string (plain,
        ``SimpleStatement`` or prepared) alike, where the driver raises for the latter.
        Raises RuntimeError when the result is not that of an LWT, as the driver does.
        """
        names = self.column_names
        if not names or names[0] != "[applied]":
            raise RuntimeError("was_applied is only defined for LWT results")
        rows = self._row_list()
        if not self._is_batch() and len(rows) != 1:
            raise RuntimeError(f"LWT result should have exactly one row, not {len(rows)}")
        row = rows[0]
        return bool(row["[applied]"] if isinstance(row, dict) else row[0])

    def _is_batch(self) -> bool:
        query = getattr(self._future, "query", None)
        if isinstance(query, BatchStatement):
            return True
        text = getattr(query, "query_string", None)
        if text is None:  # a BoundStatement: the text is its prepared statement's
            text = getattr(getattr(query, "prepared_statement", None), "query_string", None)
        return isinstance(text, str) and _BATCH.match(_NOT_CODE.sub(" ", text)) is not None

    def get_query_trace(self) -> QueryTrace | None:
        """The server's trace of this query (run it with ``trace=True``), or None.

        ``session.execute(..., trace=True)`` already fetched it (in a worker thread), so
        this does no I/O, unlike async-cassandra 0.0.1's, which blocked the event loop.
        Raises :class:`~async_cassandra.TimeoutError` if the trace was not complete
        within the driver session's ``max_trace_wait`` (2 s by default); ``await
        query_trace()`` then tries again.
        """
        if isinstance(self._trace, BaseException):
            raise self._trace
        return self._trace

    async def query_trace(self, max_wait: float | None = 2.0) -> QueryTrace | None:
        """The server's trace of this query (run it with ``trace=True``), or None.

        The trace fetched by ``execute(..., trace=True)``; if that fetch failed, or for
        a result made otherwise, fetched now in a worker thread (the driver's fetch
        blocks). Cancelling abandons the thread; it ends by itself within ``max_wait``
        seconds (closing the session waits for it). Raises
        :class:`~async_cassandra.TimeoutError` if the trace is not complete within
        ``max_wait``.
        """
        if isinstance(self._trace, QueryTrace):
            return self._trace
        future = self._future
        if future is None or not _driver.was_traced(future):
            return None
        await anyio.lowlevel.checkpoint_if_cancelled()  # a cancelled scope sends nothing
        try:
            self._trace = await self._offloop.run(future.get_query_trace, max_wait)
        except Exception as error:
            raise translate_driver_error(error)  # noqa: B904 - the cause is set inside
        return self._trace


class _AsyncRowIterator:
    """``async for`` over rows already in memory: no I/O, so no awaits.

    A class rather than an async generator: abandoning it early needs no finalizer
    (trio warns about async generators garbage-collected unfinished).
    """

    __slots__ = ("_rows",)

    def __init__(self, rows: Iterator[Any]) -> None:
        self._rows = rows

    def __aiter__(self) -> _AsyncRowIterator:
        return self

    async def __anext__(self) -> Any:
        try:
            return next(self._rows)
        except StopIteration:
            raise StopAsyncIteration from None
