"""Query results: :class:`AsyncResultSet`."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from cassandra.cluster import ResponseFuture
from cassandra.query import BatchStatement, QueryTrace

from ._offloop import OffLoopCalls

__all__ = ["AsyncResultSet"]


class AsyncResultSet:
    """The rows of a query, already fetched; iterating never does I/O.

    Rows are the driver's named tuples, or whatever the driver session's
    ``row_factory`` makes. ``for row in result`` and ``async for row in result`` both
    work; every iteration starts from the first row, so two iterations never interfere.

    By default ``session.execute`` fetches every page before returning. When it was
    asked for one page (``paging_state=`` / ``fetch_size=``), :attr:`paging_state` and
    :attr:`has_more_pages` say where the next call resumes.
    """

    def __init__(
        self,
        rows: Sequence[Any],
        response_future: ResponseFuture | None = None,
        *,
        paging_state: bytes | None = None,
        offloop: OffLoopCalls | None = None,
    ) -> None:
        self._rows = rows
        self._future = response_future
        self._paging_state = paging_state
        self._offloop = offloop if offloop is not None else OffLoopCalls()

    # -- rows ------------------------------------------------------------------------

    @property
    def rows(self) -> Sequence[Any]:
        """All fetched rows, in order."""
        return self._rows

    current_rows = rows  # the driver ResultSet's name for the same thing

    def one(self) -> Any | None:
        """The first row, or None when there are none."""
        return self._rows[0] if self._rows else None

    def all(self) -> list[Any]:
        """All rows as a new list."""
        return list(self._rows)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._rows)

    def __aiter__(self) -> _AsyncRowIterator:
        return _AsyncRowIterator(iter(self._rows))

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, index: int) -> Any:
        return self._rows[index]

    def __bool__(self) -> bool:
        return bool(self._rows)

    def __repr__(self) -> str:
        return f"<AsyncResultSet rows={len(self._rows)} has_more_pages={self.has_more_pages}>"

    # -- metadata --------------------------------------------------------------------

    @property
    def response_future(self) -> ResponseFuture | None:
        """The driver's ``ResponseFuture`` behind this result (for warnings, hosts)."""
        return self._future

    @property
    def column_names(self) -> list[str] | None:
        return getattr(self._future, "_col_names", None)

    @property
    def column_types(self) -> list[Any] | None:
        return getattr(self._future, "_col_types", None)

    @property
    def paging_state(self) -> bytes | None:
        """Where the next page starts, or None when this was the last page."""
        return self._paging_state

    @property
    def has_more_pages(self) -> bool:
        return self._paging_state is not None

    @property
    def was_applied(self) -> bool:
        """For a lightweight transaction (or a batch of them): whether it was applied.

        Raises RuntimeError when the result is not that of an LWT, as the driver does.
        """
        query = getattr(self._future, "query", None)
        names = self.column_names
        if not names or names[0] != "[applied]":
            raise RuntimeError("was_applied is only defined for LWT results")
        if not isinstance(query, BatchStatement) and len(self._rows) != 1:
            raise RuntimeError(f"LWT result should have exactly one row, not {len(self._rows)}")
        row = self._rows[0]
        return bool(row["[applied]"] if isinstance(row, dict) else row[0])

    async def query_trace(self, max_wait: float | None = 2.0) -> QueryTrace | None:
        """The server's trace of this query (run it with ``trace=True``), or None.

        The driver fetches trace events with blocking queries, so this runs in a worker
        thread. Cancelling abandons the thread; it ends by itself within ``max_wait``
        (closing the session waits for it).
        """
        future = self._future
        # The driver's _query_traces stays None for a request that was not traced.
        if future is None or not getattr(future, "_query_traces", None):
            return None
        return await self._offloop.run(future.get_query_trace, max_wait)


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
