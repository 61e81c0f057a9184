"""Streaming large results in bounded memory, and fanning them out to worker tasks.

``await session.execute_stream(query, stream_config=StreamConfig(fetch_size=1000))``
returns an :class:`AsyncStreamingResultSet`. Pages are pulled on demand: while the
consumer works through one page, at most ``read_ahead`` further pages are fetched, so
the rows held never exceed ``fetch_size * (1 + read_ahead)`` whatever the table size,
and a consumer that stops reading stops the paging.

Speed: the next page is asked for from the driver's thread the moment a page arrives
and the bound leaves room, so the server never waits for the hop to the event loop (or
for a busy loop); rows are made on the loop thread as they are read, not on the
driver's thread before the next request, and rows the consumer drops are freed at once
instead of ageing into full garbage collections.

Fan-out: :meth:`AsyncStreamingResultSet.feed` pushes rows (or pages) into an anyio
memory object stream that worker tasks read in a task group; :func:`fan_out` does the
whole pattern. Backpressure runs from the slowest worker back to the paging; cancelling
the group stops the stream, and a worker's exception cancels the others and closes the
stream.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import threading
import time
import warnings
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Sequence
from itertools import islice, repeat
from operator import length_hint
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
from anyio.abc import ObjectSendStream
from cassandra.query import SimpleStatement

from . import _driver
from ._backends import is_cancellation
from ._observing import page_ended, request_ended
from ._portal import InFlightLimiter, Portal, current_portal
from ._request import DriverRequest, page_rows
from ._rows import (
    RowPage,
    as_row_list,
    named_tuple_rows,
    new_row,
    not_a_row_list,
    row_class,
    rows_maker,
)
from .constants import DEFAULT_FETCH_SIZE
from .exceptions import TimeoutError, bad_argument, translate_driver_error
from .observers import ObservedRequest

if TYPE_CHECKING:
    from ._backends import Waiter

__all__ = [
    "AsyncStreamingResultSet",
    "StreamConfig",
    "create_streaming_statement",
    "fan_out",
]

T = TypeVar("T")

# Rows of a page handed out before the stream lets the loop run (a checkpoint), so that
# a consumer with no awaits of its own holds the loop for about a millisecond at a time
# (at 1 µs of its own work per row), not for a whole page.
_ROWS_PER_RUN = 1000


@dataclasses.dataclass
class StreamConfig:
    """How a stream pages: a plain dataclass, as in async-cassandra 0.0.1 (same fields in
    the same order, then ours), whose fields may be set after it is made.

    ``fetch_size``: rows per page. ``max_pages``: stop after this many pages, empty
    ones included (None: all). ``page_callback(page_number, rows_in_page)``: called on
    the event-loop thread (never a driver thread) as each page starts being consumed,
    empty pages included (so an empty result, once read, calls it once, with
    ``(1, 0)``); an ``async def`` callback is awaited there; an exception it raises
    ends the stream with that exception. ``timeout_seconds``: how
    long *each page* may take to arrive, counted from its request (default: the
    request's timeout, see ``session.execute``). 0.0.1 documented it as a limit on the
    whole stream but applied it per page, as here; for a limit on the whole stream, put
    the stream in ``anyio.fail_after(...)``. ``read_ahead``: pages fetched ahead of the
    consumer (0: fetch only when asked).

    Checked when made and again when a stream starts (``execute_stream``), which uses
    a copy: changing the config afterwards does not change a running stream. An invalid
    value raises :class:`~async_cassandra.QueryError`, also a ``ValueError`` (or a
    ``TypeError`` for a value of the wrong type).
    """

    fetch_size: int = DEFAULT_FETCH_SIZE
    max_pages: int | None = None
    page_callback: Callable[[int, int], Any] | None = None
    timeout_seconds: float | None = None
    read_ahead: int = 1

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise QueryError (also ValueError or TypeError) for a value out of range."""
        _check_int("fetch_size", self.fetch_size, minimum=1)
        if self.max_pages is not None:
            _check_int("max_pages", self.max_pages, minimum=1)
        _check_int("read_ahead", self.read_ahead, minimum=0)
        timeout = self.timeout_seconds
        if timeout is not None:
            if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
                raise bad_argument(
                    f"timeout_seconds must be a number of seconds or None, not {timeout!r}",
                    TypeError,
                )
            if not timeout > 0:
                raise bad_argument(f"timeout_seconds must be positive, not {timeout}")
        if self.page_callback is not None and not callable(self.page_callback):
            raise bad_argument(
                "page_callback must be callable(page_number, rows_in_page), not "
                f"{self.page_callback!r}",
                TypeError,
            )

    def validated(self) -> StreamConfig:
        """A checked copy, for one stream."""
        return dataclasses.replace(self)  # runs __post_init__, so validate()


def _check_int(name: str, value: Any, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise bad_argument(f"{name} must be an int, not {value!r}", TypeError)
    if value < minimum:
        raise bad_argument(f"{name} must be at least {minimum}, not {value}")


def create_streaming_statement(
    query: str, fetch_size: int = DEFAULT_FETCH_SIZE, consistency_level: Any = None
) -> SimpleStatement:
    """A ``SimpleStatement`` paged by ``fetch_size`` (kept for code written for 0.0.1)."""
    if consistency_level is None:
        return SimpleStatement(query, fetch_size=fetch_size)
    return SimpleStatement(query, fetch_size=fetch_size, consistency_level=consistency_level)


class _PageSink:
    """Where the driver request delivers later pages: :meth:`on_arrival` on the
    driver's thread, which hands them on to :meth:`set_result` on the loop thread.

    Refers to its stream weakly: the driver's future holds the request, which holds
    this sink, and none of that may keep a dropped stream alive.
    """

    __slots__ = ("_stream",)

    def __init__(self, stream: AsyncStreamingResultSet) -> None:
        self._stream = weakref.ref(stream)

    def on_arrival(self, portal: Portal, rows: Any, error: BaseException | None) -> None:
        # The driver's thread, as a page arrives.
        stream = self._stream()
        if stream is not None:
            stream._arrived_on_driver_thread(portal, rows, error)

    def set_result(self, rows: Any) -> None:
        stream = self._stream()
        if stream is not None:
            stream._taken_in()
            stream._page_arrived(rows)

    def set_exception(self, error: BaseException) -> None:
        stream = self._stream()
        if stream is not None:
            stream._taken_in()
            stream._page_failed(error)

    async def wait(self) -> Any:  # pragma: no cover - a sink is never awaited
        raise RuntimeError("a page sink is not awaited")


class AsyncStreamingResultSet:
    """The rows of a query, fetched page by page as they are consumed.

    ``async for row in stream`` yields rows; ``async for page in stream.pages()`` yields
    whole pages. Use it as an async context manager (or call :meth:`close`): leaving
    the block, normally, by exception or by cancellation, stops the paging and frees
    the buffers. A stream read to its end frees them by itself; one dropped half-read
    frees them too, with a ``ResourceWarning``.

    Iterating waits for the next page at most ``timeout_seconds`` (from its request);
    past that it raises :class:`~async_cassandra.TimeoutError` and closes the stream.
    Cancelling a consumer stops the stream from asking for more pages. Iterating lets
    the event loop run at every page and every 1,000 rows within one (a checkpoint:
    a pending cancellation is raised there, before the next row is taken, so none is
    lost), so a loop body with no await of its own does not hold the loop for a
    whole page.

    Every page the server sends counts, empty ones included (as in async-cassandra
    0.0.1): :attr:`page_number` and ``page_callback`` see them as the stream is read,
    and an empty result is one empty page. ``pages()`` skips empty pages. With a row
    factory that makes one object per page (a pandas ``DataFrame``), read the stream
    with ``pages()``; ``async for row`` then raises
    :class:`~async_cassandra.ConfigurationError`.

    Counters (plain attributes, as in 0.0.1): ``page_number``, the pages consumed so
    far (the current one included); ``total_rows_fetched``, rows that arrived;
    ``empty_pages``, pages that arrived without rows; ``max_rows_held``, the most rows
    held at once (never more than ``fetch_size * (1 + read_ahead)``).
    """

    def __init__(
        self,
        request: DriverRequest,
        first_page: Any,
        config: StreamConfig,
        *,
        limiter: InFlightLimiter,
        observed: ObservedRequest | None = None,
    ) -> None:
        self._request = request
        self._config = config
        # The request's record when the session has observers: later pages are shown
        # to them as the consumer takes each (in its task), with when its fetch began
        # and when it arrived (taken on the driver's thread, in page order, and paired
        # with the page as the loop takes it in).
        self._observed = observed
        self._fetch_started_ns = 0
        self._arrival_times: deque[tuple[int, int]] = deque()  # appended on any thread
        self._page_times: deque[tuple[int, int]] = deque()  # the buffered pages'
        self._end_error: BaseException | None = None
        self._limiter = limiter
        timeout = request.page_timeout
        self._page_timeout = timeout if timeout is not None else math.inf
        self._sink = _PageSink(self)
        self._portal: Portal = current_portal()
        # The page being consumed: _rows yields its rows in turn, a run of at most
        # _ROWS_PER_RUN of them (see _first_row_of_next_run); _page_rows is the
        # iterator of the page itself under it (which knows how many are left). With
        # the default row factory the page holds raw tuples and _rows makes each a Row
        # as it is handed out (see _take_buffered_page).
        self._page_rows: Iterator[Any] = iter(())
        self._rows: Iterator[Any] = self._page_rows
        self._row_class: Any = None  # the Row class when the page holds raw tuples
        # The page as a row factory made it when that is not a list of rows (a
        # DataFrame): handed out whole by pages(), never iterated as rows.
        self._opaque: Any = None
        # Pages that arrived and wait for the consumer: the decoder's raw rows (the
        # driver hands every page over raw; rows are made here, see _rows).
        self._buffer: deque[list[Any]] = deque()
        self._buffered_rows = 0
        # Shared with the driver's threads (which ask for the next page as one arrives,
        # see _arrived_on_driver_thread), under _lock: whether a page is in flight, how
        # many pages arrived and are not current yet (buffered, or still on their way
        # to the loop), how many outcomes (pages, and errors) are on their way to the
        # loop, and whether the consumer waits for a page.
        self._lock = threading.Lock()
        self._fetching = False
        self._pages_ahead = 1  # the first page, not current yet
        self._in_transit = 0
        self._consumer_waiting = False
        self._fetch_started = 0.0
        self._error: BaseException | None = None
        self._consumer: Waiter | None = None
        self._closed = False
        self.page_number = 0
        self.total_rows_fetched = 0
        self.max_rows_held = 0
        self.empty_pages = 0
        self._make_rows = rows_maker(request.row_factory)
        self._page_arrived(first_page)

    # -- introspection ---------------------------------------------------------------

    @property
    def rows_held(self) -> int:
        """Rows this stream holds now: the rest of the current page plus read-ahead."""
        return length_hint(self._page_rows) + self._buffered_rows

    @property
    def pages_requested(self) -> int:
        """Pages asked of the server so far, the first included."""
        return self._request.pages_requested

    @property
    def paging_state(self) -> bytes | None:
        """The driver's paging state after the last page that arrived."""
        return _driver.paging_state(self._request.future)

    @property
    def column_names(self) -> list[str] | None:
        """The result's column names (None for a statement without rows)."""
        return _driver.column_names(self._request.future)

    @property
    def warnings(self) -> list[str]:
        """The server's warnings for the pages that arrived so far, every page's in
        order (the driver logs each as it arrives)."""
        return list(self._request.warnings)

    @property
    def is_closed(self) -> bool:
        """Whether the stream was closed (or read to its end, or failed)."""
        return self._closed

    # -- rows ------------------------------------------------------------------------

    def __aiter__(self) -> AsyncStreamingResultSet:
        return self

    async def __anext__(self) -> Any:
        # The per-row path: one step of a C iterator. A for loop, not next(), which
        # would cost a call and a sentinel test per row.
        for row in self._rows:
            return row
        return await self._first_row_of_next_run()

    async def _first_row_of_next_run(self) -> Any:
        if self._opaque is None and length_hint(self._page_rows):
            # The page goes on after a turn of the loop: a consumer with no awaits of
            # its own would otherwise hold the loop for a whole page (5,000 rows took
            # it 5-8 ms, the loop's other tasks and timers waiting).
            await anyio.lowlevel.checkpoint()
            self._rows = self._run_of_rows()  # empty if the stream was closed meanwhile
            for row in self._rows:
                return row
        # Moving to the next page may ask for another: not from a cancelled scope.
        await anyio.lowlevel.checkpoint_if_cancelled()
        while True:
            if self._opaque is not None:
                error = not_a_row_list(self._opaque, "`async for row in stream`")
                await self.close()
                raise error
            if not await self._next_page():
                raise StopAsyncIteration
            for row in self._rows:
                return row

    def pages(self) -> _PageIterator:
        """Iterate whole pages (sequences of rows), starting with what remains of the
        current one.

        With the default row factory a page makes each ``Row`` as it is read, so rows
        you drop are freed at once (``list(page)`` gives a plain list); with a row
        factory of your own, a page is what it makes (a list, or a ``DataFrame``...).
        Empty pages are skipped. Waiting for a page, raising
        (:class:`~async_cassandra.TimeoutError`, driver errors) and cancellation are as
        for iterating rows.
        """
        return _PageIterator(self)

    async def feed(self, send_stream: ObjectSendStream[Any], *, pages: bool = False) -> None:
        """Send every row (or page, with ``pages=True``) into ``send_stream``.

        Waits while the receivers are behind (backpressure reaches the paging), closes
        ``send_stream`` at the end so receivers finish, and closes this stream however
        it ends: at the last row, when cancelled (the task group was), or when every
        receiver has closed its end (then it returns quietly). Raises what the stream
        raises (:class:`~async_cassandra.TimeoutError`, ...).
        """
        async with send_stream:
            try:
                source = self.pages() if pages else self
                async for item in source:
                    await send_stream.send(item)
            except anyio.BrokenResourceError:
                pass  # every receiver is closed: nobody wants the rest
            finally:
                await self.close()

    # -- paging: the loop thread unless said otherwise ------------------------------------

    async def _next_page(self) -> bool:
        """Make the next page current; False when there are no more.

        A stream read to its end releases everything by itself, as close() would.
        """
        self._page_rows = self._rows = iter(())
        self._portal = current_portal()
        while True:
            if self._closed:
                return False
            if self._buffer:
                await self._take_buffered_page()
                return True
            if self._error is not None:
                error, self._error = self._error, None
                self._end_error = error
                await self.close()
                raise error
            with self._lock:
                # Not idle while an outcome the driver thread handed over is still on
                # its way: an error must be raised, not followed by another request for
                # the same page (whose paging state the failure left unchanged).
                idle = not self._fetching and not self._pages_ahead and not self._in_transit
            if idle:
                if self._no_more_requests():
                    self._release()
                    return False
                # An earlier try found every in-flight slot taken: wait for one here.
                await self._limiter.acquire(self._portal)
                if self._claim_fetch(current_done=True, slot_held=True):
                    self._start_fetch()
                continue
            await self._wait_for_fetch()

    async def _take_buffered_page(self) -> None:
        """Make the oldest buffered page current. Its rows are made here, on the loop
        thread, where that overlaps the server's work on the page requested ahead (the
        driver would make them on its reactor thread, between the server's answer and
        our request for the next page, where nothing overlaps it)."""
        raw = self._buffer.popleft()
        self._buffered_rows -= len(raw)
        with self._lock:
            self._pages_ahead -= 1
        self._row_class = None
        self._opaque = None
        page: Sequence[Any] = raw
        if raw:
            names = _driver.column_names(self._request.future) or []
            if self._make_rows is named_tuple_rows:
                # Each row becomes a Row as the consumer takes it, so a consumer that
                # drops its rows frees them at once: Rows held in a page survive
                # collections and are promoted to the cycle collector's oldest
                # generation, which made full collections a large part of a stream's
                # time. The raw tuples (of ints, strings, ...) are untracked by the
                # collector's first look at them.
                self._row_class = row_class(names)
            else:
                made = self._make_rows(names, raw)
                rows = as_row_list(made)
                if rows is None:
                    self._opaque = made  # counted as its raw rows until handed out
                else:
                    page = rows
        self._page_rows = iter(page)
        self._rows = iter(()) if self._opaque is not None else self._run_of_rows()
        self.page_number += 1  # first: _maybe_fetch asks whether a page is current
        if self._observed is not None and self.page_number > 1:
            # (The first page was shown as execute_stream returned it.)
            fetched, arrived = self._page_times.popleft()
            page_ended(self._observed, self._request.future, raw, fetched, end_time_ns=arrived)
        self._maybe_fetch()
        callback = self._config.page_callback
        if callback is not None:
            try:
                outcome = callback(self.page_number, len(raw))
                if inspect.isawaitable(outcome):  # an async def callback
                    await outcome
            except BaseException:
                await self.close()
                raise
        # A page boundary is a checkpoint even when the next page was already there,
        # so a consumer with no awaits of its own still lets the loop run.
        await anyio.lowlevel.checkpoint()

    def _run_of_rows(self) -> Iterator[Any]:
        """The current page's next _ROWS_PER_RUN rows, as they are handed out: taken
        from ``_page_rows`` one at a time, so ``rows_held`` counts them until then."""
        run = islice(self._page_rows, _ROWS_PER_RUN)
        if self._row_class is not None:
            return map(new_row, repeat(self._row_class), run)
        return run

    def _take_rest(self) -> Any | None:
        """Hand out the rest of the current page at once (see RowPage); None when
        nothing of it is left."""
        if self._opaque is not None:
            opaque, self._opaque = self._opaque, None
            self._page_rows = iter(())
            return opaque
        if self._row_class is None:
            rest = list(self._rows)  # what is left of the run, then of the page
            rest.extend(self._page_rows)
            return rest or None
        raw = list(self._page_rows)
        return RowPage(raw, self._row_class) if raw else None

    async def _wait_for_fetch(self) -> None:
        waiter = self._consumer = self._portal.new_waiter()
        with self._lock:
            self._consumer_waiting = True
        remaining = self._fetch_started + self._page_timeout - time.monotonic()
        try:
            with anyio.move_on_after(max(remaining, 0.0)) as scope:
                await waiter.wait()
        finally:
            self._consumer = None
            with self._lock:
                self._consumer_waiting = False
        if scope.cancelled_caught:
            error = TimeoutError(
                f"page {self.pages_requested} of the stream did not arrive within "
                f"{self._page_timeout:g} s of its request; the server or the connection "
                "is stalled (StreamConfig.timeout_seconds sets this limit, else the "
                "request's timeout)"
            )
            self._end_error = error
            await self.close()
            raise error

    def _no_more_requests(self) -> bool:
        max_pages = self._config.max_pages
        return not self._request.future.has_more_pages or (
            max_pages is not None and self._request.pages_requested >= max_pages
        )

    def _maybe_fetch(self) -> None:
        # Loop thread. Synchronous (it also runs from the portal's drain), so it only
        # takes a free slot; if none is free the consumer waits for one when it needs
        # the page. Before the consumer takes its first page there is no current page.
        if self._claim_fetch(current_done=self.page_number == 0, slot_held=False):
            self._start_fetch()

    def _claim_fetch(self, *, current_done: bool, slot_held: bool) -> bool:
        """Whether to ask for the next page now; if so, the caller must, holding an
        in-flight slot. Any thread.

        Fetch ahead while fewer than ``read_ahead`` pages wait ahead of the current
        one. When the current page is done (the consumer waits for the next), the next
        page to arrive counts as current, not as read-ahead. So the rows held never
        exceed ``fetch_size * (1 + read_ahead)``: every page asked for has room.
        """
        with self._lock:
            room = self._config.read_ahead + (current_done or self._consumer_waiting)
            # _closed and _error are the loop thread's, read here without its order: a
            # driver thread that misses a close asks anyway, and start_next_page then
            # finds the request detached; no page is in flight after an error.
            claimed = (
                not self._fetching
                and not self._closed
                and self._error is None
                and self._pages_ahead < room
                and not self._no_more_requests()
                and (slot_held or self._limiter.try_acquire())
            )
            if claimed:
                self._fetching = True
                # time.monotonic, not anyio's clock: this may run outside any task.
                self._fetch_started = time.monotonic()
                self._fetch_started_ns = time.time_ns()  # for observers
        if slot_held and not claimed:
            self._limiter.release()
        return claimed

    def _start_fetch(self) -> None:
        # Any thread, after _claim_fetch. The page comes back through on_arrival.
        try:
            started = self._request.start_next_page(self._portal, self._sink, self._sink.on_arrival)
        except Exception as error:  # the request released the slot and detached
            with self._lock:
                self._fetching = False
                self._in_transit += 1  # the delivery below
                self._error = error  # seen at once if this is the loop thread
            self._portal.deliver(self._sink, None, error)  # else wakes the consumer
            return
        if not started:  # detached: the stream was closed meanwhile
            with self._lock:
                self._fetching = False

    def _arrived_on_driver_thread(
        self, portal: Portal, rows: Any, error: BaseException | None
    ) -> None:
        """A page (or an error) arrived: hand it to the loop, and ask for the next page
        at once if there is room for it, without waiting for the loop to see this one
        (the loop may be busy, and this is where the server would otherwise idle).

        On the driver's thread; the request sends from here as the driver's own
        callback-paging does. Pages reach the loop in order: this one is delivered
        before the next is asked for.
        """
        with self._lock:
            self._fetching = False
            self._in_transit += 1  # until the loop takes it in (_taken_in)
            if error is None:
                self._pages_ahead += 1
                if self._observed is not None:
                    # Read under the lock, before the next fetch can be claimed.
                    self._arrival_times.append((self._fetch_started_ns, time.time_ns()))
        portal.deliver(self._sink, rows, error)
        if error is None and self._claim_fetch(current_done=False, slot_held=False):
            self._start_fetch()

    def _taken_in(self) -> None:
        # The loop thread, as the portal hands over what _arrived_on_driver_thread (or a
        # failed _start_fetch) sent.
        with self._lock:
            self._in_transit -= 1

    def _page_arrived(self, rows: Any) -> None:
        # The loop thread, after _arrived_on_driver_thread (or for the first page).
        if self._closed:
            return
        # The decoder's list; None for a result without rows (a streamed INSERT).
        page: list[Any] = rows if isinstance(rows, list) else list(page_rows(rows))
        self.total_rows_fetched += len(page)
        # Empty pages are pages too (counted, and given to page_callback): an empty
        # result is one empty page, and one mid-result (tombstones, filtering) does
        # not end it.
        self._buffer.append(page)
        if self._arrival_times:  # observed, and not the first page
            self._page_times.append(self._arrival_times.popleft())
        self._buffered_rows += len(page)
        self.max_rows_held = max(self.max_rows_held, self.rows_held)
        if not page:
            self.empty_pages += 1
        self._maybe_fetch()
        self._wake_consumer()

    def _page_failed(self, error: BaseException) -> None:
        if not self._closed:
            self._error = translate_driver_error(error)
            self._wake_consumer()

    def _wake_consumer(self) -> None:
        waiter, self._consumer = self._consumer, None
        if waiter is not None:
            waiter.set_result(None)

    # -- closing ---------------------------------------------------------------------

    async def close(self) -> None:
        """Stop paging and free the buffers. Idempotent; never blocks."""
        self._release()
        await anyio.lowlevel.cancel_shielded_checkpoint()

    async def cancel(self) -> None:
        """Stop the stream: the same as :meth:`close` (async-cassandra 0.0.1's name)."""
        await self.close()

    def _release(self, *, observed: bool = True) -> None:
        if self._closed:
            return
        self._closed = True
        if observed and self._observed is not None:
            request_ended(self._observed, self._end_error, self._request.warnings)
        self._buffer.clear()
        self._buffered_rows = 0
        self._page_rows = self._rows = iter(())
        self._opaque = None
        # Thread-safe: a page still in flight drops its callbacks when it finishes.
        self._request.detach()
        self._wake_consumer()

    async def __aenter__(self) -> AsyncStreamingResultSet:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is not None and is_cancellation(exc) and self._end_error is None:
            self._end_error = exc  # observers see the stream as cancelled
        await self.close()

    def __del__(self) -> None:
        # May run on any thread (the cycle collector's). Nothing awaits a stream that is
        # being collected, and _release only touches this object and the thread-safe
        # detach, so that is fine.
        if not getattr(self, "_closed", True):
            warnings.warn(
                "AsyncStreamingResultSet was never closed; use `async with await "
                "session.execute_stream(...)` or call `await stream.close()`",
                ResourceWarning,
                source=self,
                stacklevel=1,
            )
            # Observers are not told: they run on the loop thread, and this may not.
            self._release(observed=False)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return (
            f"<AsyncStreamingResultSet page={self.page_number} "
            f"rows_fetched={self.total_rows_fetched} {state}>"
        )


class _PageIterator:
    """``stream.pages()``: a class, not an async generator, so abandoning it early
    needs no finalizer (trio warns about unclosed async generators)."""

    __slots__ = ("_stream",)

    def __init__(self, stream: AsyncStreamingResultSet) -> None:
        self._stream = stream

    def __aiter__(self) -> _PageIterator:
        return self

    async def __anext__(self) -> Any:
        stream = self._stream
        await anyio.lowlevel.checkpoint_if_cancelled()  # may ask for a page: see above
        rest = stream._take_rest()
        while rest is None:
            if not await stream._next_page():
                raise StopAsyncIteration
            rest = stream._take_rest()
        return rest


async def fan_out(
    stream: AsyncStreamingResultSet,
    handler: Callable[[T], Awaitable[Any]],
    *,
    workers: int = 4,
    pages: bool = False,
    buffer_size: int | None = None,
) -> None:
    """Process a stream's rows (or pages) with ``workers`` concurrent tasks.

    ``handler`` is awaited once per row (per page with ``pages=True``), by one of the
    workers. The rows in memory at once are bounded: the stream's own bound, plus
    ``buffer_size`` items queued (default: ``workers``), plus one per worker.

    Returns when every item is processed; the stream is then closed. If a handler
    raises, the other workers are cancelled, the stream is closed, and the error
    propagates (in an ``ExceptionGroup``, as anyio task groups raise). Cancelling the
    caller cancels the workers and stops the stream.
    """
    if workers < 1:
        raise ValueError(f"workers must be at least 1, not {workers}")
    send, receive = anyio.create_memory_object_stream[Any](
        max_buffer_size=workers if buffer_size is None else buffer_size
    )

    async def work(items: Any) -> None:
        async with items:
            async for item in items:
                await handler(item)

    try:
        async with anyio.create_task_group() as group:
            with receive:
                for _ in range(workers):
                    group.start_soon(work, receive.clone())
            await stream.feed(send, pages=pages)
    finally:
        await stream.close()
