"""The session: :class:`AsyncCassandraSession`."""

from __future__ import annotations

import copy
import re
import threading
from collections import OrderedDict
from types import TracebackType
from typing import TYPE_CHECKING, Any

import anyio
from cassandra.cluster import _NOT_SET, EXEC_PROFILE_DEFAULT
from cassandra.cluster import Session as DriverSession
from cassandra.query import PreparedStatement, SimpleStatement, Statement

from ._offloop import OffLoopCalls
from ._portal import InFlightLimiter, current_portal
from ._request import DriverRequest, driver_timeout, page_rows
from .exceptions import ConnectionError, QueryError, translate_driver_error
from .result import AsyncResultSet
from .streaming import AsyncStreamingResultSet, StreamConfig

if TYPE_CHECKING:
    from .cluster import AsyncCluster

__all__ = ["AsyncCassandraSession"]

# How long closing may take before we stop waiting for the driver (it goes on in a
# worker thread). Closing runs shielded, so it needs a bound of its own.
CLOSE_TIMEOUT = 10.0
# Per connected host. The driver allows 32767 stream ids per connection and blocks the
# calling thread (our event loop) when they run out; 1024 keeps far below that, and
# bounds the memory and server queue one session can fill.
DEFAULT_IN_FLIGHT_PER_HOST = 1024
PREPARED_CACHE_SIZE = 512

_VALID_KEYSPACE = re.compile(r"^[A-Za-z0-9_]{1,48}$")
# String literals ('it''s'), quoted identifiers and comments hide bind markers.
_NOT_CODE = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|--[^\n]*|//[^\n]*|/\*.*?\*/", re.S)
_BIND_MARKER = re.compile(r"\?|(?<![:\w]):[A-Za-z_]\w*")


def _uses_bind_markers(query: str) -> bool:
    code = _NOT_CODE.sub(" ", query)
    return "%s" not in code and "%(" not in code and _BIND_MARKER.search(code) is not None


class AsyncCassandraSession:
    """A connection to the cluster (optionally bound to a keyspace), for async code.

    Made by :meth:`AsyncCluster.connect`; use it as ``async with await
    cluster.connect(...) as session``. A session is not tied to the event loop it was
    made under: use it from any loop, asyncio or trio, in any thread.

    Requests in flight are bounded (``max_concurrent_requests``); when the bound is
    reached, further calls wait as an ``await`` instead of blocking the loop inside
    the driver.
    """

    def __init__(
        self,
        driver_session: DriverSession,
        cluster: AsyncCluster | None = None,
        *,
        max_concurrent_requests: int | None = None,
    ) -> None:
        self._session = driver_session
        self._cluster = cluster
        if max_concurrent_requests is None:
            hosts = max(1, len(driver_session.get_pools()))
            max_concurrent_requests = hosts * DEFAULT_IN_FLIGHT_PER_HOST
        self._limiter = InFlightLimiter(max_concurrent_requests)
        self._closed = False
        self._close_lock = threading.Lock()
        self._prepared: OrderedDict[str, PreparedStatement] = OrderedDict()
        self._offloop = OffLoopCalls()
        # Driver requests whose callbacks are still registered (introspection).
        self._requests: set[DriverRequest] = set()

    # -- state -----------------------------------------------------------------------

    @property
    def driver_session(self) -> DriverSession:
        """The wrapped ``cassandra.cluster.Session`` (do not call its blocking methods
        on the event loop)."""
        return self._session

    @property
    def keyspace(self) -> str | None:
        keyspace: str | None = self._session.keyspace
        return keyspace

    @property
    def is_closed(self) -> bool:
        return self._closed or bool(self._session.is_shutdown)

    @property
    def max_concurrent_requests(self) -> int:
        return self._limiter.limit

    @property
    def requests_in_flight(self) -> int:
        """Driver requests (pages) started and not yet finished by the driver.

        A cancelled call's request stays here until the driver finishes it.
        """
        return self._limiter.in_use

    @property
    def requests_registered(self) -> int:
        """Driver requests that still have our callbacks registered.

        Includes requests whose caller was cancelled, until the driver finishes them.
        """
        return len(self._requests)

    @property
    def requests_waiting(self) -> int:
        """Calls waiting for an in-flight slot."""
        return self._limiter.waiting

    def _check_open(self) -> DriverSession:
        if self.is_closed:
            raise ConnectionError(
                "this session is closed; open a new one with `await cluster.connect()`"
            )
        return self._session

    # -- queries ---------------------------------------------------------------------

    async def execute(
        self,
        query: str | Statement | PreparedStatement,
        parameters: Any = None,
        *,
        timeout: float | None = None,
        trace: bool = False,
        custom_payload: dict[str, bytes] | None = None,
        execution_profile: Any = EXEC_PROFILE_DEFAULT,
        paging_state: bytes | None = None,
        host: Any = None,
        execute_as: str | None = None,
        prepare: bool = False,
        fetch_size: int | None = None,
    ) -> AsyncResultSet:
        """Run ``query`` and return its rows: every page, unless asked for one.

        ``query`` is a CQL string (``%s`` / ``%(name)s`` parameters), a
        ``SimpleStatement``, a ``PreparedStatement`` or ``BoundStatement`` (``?`` /
        ``:name`` parameters), or a ``BatchStatement``, exactly as the driver takes
        them. A CQL string with ``?`` markers must be prepared: pass ``prepare=True``
        to prepare it once through the session's cache.

        One page only: pass ``fetch_size`` (rows per page) and/or ``paging_state``
        (where a previous result's :attr:`~AsyncResultSet.paging_state` left off); the
        result's ``paging_state`` and ``has_more_pages`` say where to resume. Hand a
        paging state to a web client only signed: see :mod:`async_cassandra.paging`.
        For large results use :meth:`execute_stream` (bounded memory).

        The driver request timeout is the smaller of ``timeout`` and the time left
        before the caller's anyio deadline. Every page after the first is waited for
        at most ``timeout`` (or the driver session's ``default_timeout``) as well.

        Cancellation returns at once and detaches from the request: CQL has no cancel
        message, so the server may still run it, and a cancelled write **may or may
        not have been applied**. Its late response is discarded.

        Raises :class:`QueryError` (bad CQL, schema, parameters), :class:`TimeoutError`,
        :class:`ConnectionError` (no host, closed session), each also an instance of
        the driver's own exception class.
        """
        request, first_page = await self.start_request(
            query,
            parameters,
            timeout=timeout,
            trace=trace,
            custom_payload=custom_payload,
            execution_profile=execution_profile,
            paging_state=paging_state,
            host=host,
            execute_as=execute_as,
            prepare=prepare,
            fetch_size=fetch_size,
        )
        future = request.future
        rows = page_rows(first_page)
        if paging_state is None and fetch_size is None and future.has_more_pages:
            # Later pages are not timed by the driver; give each a deadline of ours.
            page_timeout = timeout if timeout is not None else self._session.default_timeout
            portal = current_portal()
            rows = list(rows)
            while future.has_more_pages:
                rows.extend(page_rows(await request.next_page(portal, page_timeout)))
        request.detach()
        return AsyncResultSet(
            rows, future, paging_state=future._paging_state, offloop=self._offloop
        )

    async def start_request(
        self,
        query: str | Statement | PreparedStatement,
        parameters: Any = None,
        *,
        timeout: float | None = None,
        trace: bool = False,
        custom_payload: dict[str, bytes] | None = None,
        execution_profile: Any = EXEC_PROFILE_DEFAULT,
        paging_state: bytes | None = None,
        host: Any = None,
        execute_as: str | None = None,
        prepare: bool = False,
        fetch_size: int | None = None,
    ) -> tuple[DriverRequest, Any]:
        """Send ``query`` and wait for its first page (the mechanism behind
        :meth:`execute` and :meth:`execute_stream`; not public API)."""
        session = self._check_open()
        query = await self._resolve(query, parameters, prepare)
        if fetch_size is not None:
            query, parameters = _with_fetch_size(query, parameters, fetch_size)
        portal = current_portal()
        timeout_for_driver, deadline = driver_timeout(timeout)
        await self._limiter.acquire(portal)
        try:
            # On the loop thread: execute_async only binds and queues the request on a
            # connection; the in-flight bound keeps it from blocking on stream ids.
            future = session.execute_async(
                query,
                parameters,
                trace,
                custom_payload,
                _NOT_SET if timeout_for_driver is None else timeout_for_driver,
                execution_profile,
                paging_state,
                host,
                execute_as,
            )
        except BaseException as error:
            self._limiter.release()
            raise translate_driver_error(error, hint=_binding_hint(error))  # noqa: B904
        request = DriverRequest(future, self._limiter, portal, self._requests)
        try:
            first_page = await request.page(deadline)
        except BaseException:
            request.detach()
            raise
        return request, first_page

    async def execute_stream(
        self,
        query: str | Statement | PreparedStatement,
        parameters: Any = None,
        *,
        stream_config: StreamConfig | None = None,
        timeout: float | None = None,
        trace: bool = False,
        custom_payload: dict[str, bytes] | None = None,
        execution_profile: Any = EXEC_PROFILE_DEFAULT,
        paging_state: bytes | None = None,
        host: Any = None,
        execute_as: str | None = None,
        prepare: bool = False,
    ) -> AsyncStreamingResultSet:
        """Run ``query`` and stream its rows page by page, in bounded memory.

        Returns once the first page is there (so bad CQL raises here), as an
        :class:`~async_cassandra.streaming.AsyncStreamingResultSet`: use it as ``async
        with await session.execute_stream(...) as stream: async for row in stream``.
        At most ``fetch_size * (1 + read_ahead)`` rows are held at any time; pages are
        fetched as the consumer reads. See :class:`~async_cassandra.streaming.StreamConfig`.

        The keywords are those of :meth:`execute`. Cancellation while waiting for the
        first page detaches as for :meth:`execute`. Raises the same errors.
        """
        config = stream_config if stream_config is not None else StreamConfig()
        request, first_page = await self.start_request(
            query,
            parameters,
            timeout=timeout,
            trace=trace,
            custom_payload=custom_payload,
            execution_profile=execution_profile,
            paging_state=paging_state,
            host=host,
            execute_as=execute_as,
            prepare=prepare,
            fetch_size=config.fetch_size,
        )
        page_timeout = config.timeout_seconds
        if page_timeout is None:
            page_timeout = timeout if timeout is not None else self._session.default_timeout
        return AsyncStreamingResultSet(
            request, first_page, config, limiter=self._limiter, page_timeout=page_timeout
        )

    async def execute_batch(self, batch: Statement, **kwargs: Any) -> AsyncResultSet:
        """Run a ``BatchStatement``; the keywords are those of :meth:`execute`.

        Cancellation and errors as for :meth:`execute`: a cancelled batch may or may
        not have been applied (a LOGGED batch is applied whole or not at all).
        """
        return await self.execute(batch, **kwargs)

    async def prepare(
        self,
        query: str,
        custom_payload: dict[str, bytes] | None = None,
        timeout: float | None = None,
    ) -> PreparedStatement:
        """Prepare ``query`` on the cluster, without blocking the event loop.

        The driver's prepare blocks its caller, so it runs in a worker thread. On
        cancellation or ``timeout`` this returns at once; the worker finishes the
        prepare by itself (it is harmless), and :meth:`close` waits for it. Raises
        :class:`QueryError` for invalid CQL, :class:`TimeoutError`,
        :class:`ConnectionError`.
        """
        session = self._check_open()
        try:
            with anyio.fail_after(timeout if timeout is not None else session.default_timeout):
                return await self._offloop.run(session.prepare, query, custom_payload)
        except Exception as error:
            raise translate_driver_error(error)  # noqa: B904 - the cause is set inside

    async def _resolve(self, query: Any, parameters: Any, prepare: bool) -> Any:
        if not isinstance(query, str):
            return query
        if prepare:
            return await self._cached_prepare(query)
        if parameters is not None and _uses_bind_markers(query):
            raise QueryError(
                "this CQL string uses ? or :name bind markers, which only prepared "
                "statements take: `stmt = await session.prepare(query)` then "
                "`await session.execute(stmt, parameters)`, or pass prepare=True "
                "(or use %s markers for a plain string)"
            )
        return query

    async def _cached_prepare(self, query: str) -> PreparedStatement:
        prepared = self._prepared.get(query)
        if prepared is None:
            prepared = await self.prepare(query)
            self._prepared[query] = prepared
            while len(self._prepared) > PREPARED_CACHE_SIZE:
                self._prepared.popitem(last=False)
        else:
            self._prepared.move_to_end(query)
        return prepared

    async def set_keyspace(self, keyspace: str) -> None:
        """Make ``keyspace`` the default for this session's unqualified tables.

        Raises :class:`QueryError` for a name that is not a valid keyspace name (before
        any I/O) or a keyspace that does not exist. Cancelled, the switch may or may not
        have happened on the session's connections: set it again before relying on it.
        """
        if not isinstance(keyspace, str) or not _VALID_KEYSPACE.match(keyspace):
            raise QueryError(
                f"{keyspace!r} is not a valid keyspace name: use 1 to 48 letters, digits "
                "or underscores"
            )
        await self.execute(f'USE "{keyspace}"')

    # -- closing ---------------------------------------------------------------------

    async def close(self) -> None:
        """Close the session's connections. Idempotent; safe to call from any loop.

        Runs shielded from cancellation, bounded by a timeout of its own, and off the
        event loop (the driver's shutdown blocks). Requests still in flight, and streams
        waiting for a page, fail at once with :class:`ConnectionError`.
        """
        if not self._mark_closed():
            return
        with anyio.CancelScope(shield=True), anyio.move_on_after(CLOSE_TIMEOUT):
            await self._offloop.run(self._session.shutdown)
            # Prepares and trace fetches abandoned by cancelled callers: ours to finish.
            await self._offloop.wait_idle(CLOSE_TIMEOUT)

    def _mark_closed(self) -> bool:
        """Refuse new requests and fail those in flight; False if already closed."""
        with self._close_lock:
            if self._closed:
                return False
            self._closed = True
        for request in list(self._requests):
            request.abandon(
                ConnectionError("the session was closed while this request was in flight")
            )
        return True

    async def __aenter__(self) -> AsyncCassandraSession:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        state = "closed" if self.is_closed else "open"
        return f"<AsyncCassandraSession keyspace={self.keyspace!r} {state}>"


def _binding_hint(error: BaseException) -> str | None:
    # The driver binds parameters in plain Python: its TypeError/ValueError says what
    # went wrong at the lowest level ("object of type 'int' has no len()"), not where.
    if isinstance(error, (TypeError, ValueError)):
        return (
            "Could not bind the parameters to the query: pass a list or tuple (a dict "
            "for named markers) with one value of the column's type per bind marker"
        )
    return None


def _with_fetch_size(query: Any, parameters: Any, fetch_size: int) -> tuple[Any, Any]:
    """``query`` as a statement paged by ``fetch_size``, leaving the caller's untouched."""
    if isinstance(fetch_size, bool) or not isinstance(fetch_size, int) or fetch_size < 1:
        raise QueryError(f"fetch_size must be a positive int, not {fetch_size!r}")
    if isinstance(query, str):
        return SimpleStatement(query, fetch_size=fetch_size), parameters
    if isinstance(query, PreparedStatement):
        try:
            query = query.bind(parameters)
        except Exception as error:
            raise translate_driver_error(error, hint=_binding_hint(error))  # noqa: B904
        parameters = None
    else:
        # A copy: the caller's statement object may be shared (module-level, reused).
        query = copy.copy(query)
    query.fetch_size = fetch_size
    return query, parameters
