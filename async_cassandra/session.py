"""The session: :class:`AsyncCassandraSession`."""

from __future__ import annotations

import copy
import re
import time
from collections.abc import Iterable
from functools import partial
from types import TracebackType
from typing import Any

import anyio
import anyio.lowlevel
from cassandra.cluster import EXEC_PROFILE_DEFAULT
from cassandra.cluster import Session as DriverSession
from cassandra.pool import Host
from cassandra.protocol import ProtocolException
from cassandra.query import BoundStatement, PreparedStatement, SimpleStatement, Statement

from . import _driver
from ._binding import bind_prepared, bind_string
from ._loop_reactor import loop_gone_hint
from ._observing import (
    checked_observers,
    observe_prepare,
    observe_request,
    page_ended,
    prepare_ended,
    request_ended,
)
from ._offloop import OffLoopCalls
from ._paging_state import is_well_formed
from ._portal import InFlightLimiter, current_portal
from ._prepared_cache import PreparedCache
from ._request import DriverRequest, caller_deadline
from ._resources import CLOSE_TIMEOUT, SessionResources, close_in_exit, close_within
from ._rows import JoinedPages, as_row_list, rows_maker
from .exceptions import (
    ConfigurationError,
    ConnectionError,
    QueryError,
    TimeoutError,
    bad_argument,
    translate_driver_error,
)
from .observers import ObservedRequest
from .result import AsyncResultSet
from .streaming import AsyncStreamingResultSet, StreamConfig

__all__ = ["AsyncCassandraSession"]

# Per connected host. The driver allows 32767 stream ids per connection and blocks the
# calling thread (our event loop) when they run out; 1024 keeps far below that, and
# bounds the memory and server queue one session can fill.
DEFAULT_IN_FLIGHT_PER_HOST = 1024
PREPARED_CACHE_SIZE = 512

_VALID_KEYSPACE = re.compile(r"^[A-Za-z0-9_]{1,48}$")
# String literals ('it''s', $$a body$$), quoted identifiers and comments hide bind
# markers.
_NOT_CODE = re.compile(
    r"'(?:[^']|'')*'|\$\$.*?\$\$|\"(?:[^\"]|\"\")*\"|--[^\n]*|//[^\n]*|/\*.*?\*/", re.S
)
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

    ``AsyncCassandraSession(driver_session)`` wraps a connected
    ``cassandra.cluster.Session`` of your own (as in async-cassandra 0.0.1), and
    :meth:`create` connects a driver ``Cluster`` and wraps it.
    """

    def __init__(
        self,
        session: DriverSession,
        metrics: Any = None,
        *,
        max_concurrent_requests: int | None = None,
        observers: Iterable[Any] = (),
    ) -> None:
        observing = list(observers)
        if metrics is not None:
            if not callable(getattr(metrics, "request_ended", None)):
                raise ConfigurationError(
                    f"metrics= takes a MetricsMiddleware (or another request observer), "
                    f"not {type(metrics).__name__}"
                )
            observing.append(metrics)
        # A tuple, replaced (never changed in place) by add_observer/remove_observer:
        # a request keeps the observers it started with.
        self._observers: tuple[Any, ...] = checked_observers(observing)
        # An AsyncCluster made for this session alone (create_monitored_session), shut
        # down when the session closes.
        self._owned_cluster: Any = None
        self._session = session
        if max_concurrent_requests is None:
            hosts = max(1, len(session.get_pools()))
            max_concurrent_requests = hosts * DEFAULT_IN_FLIGHT_PER_HOST
        self._limiter = InFlightLimiter(max_concurrent_requests)
        self._resources = SessionResources()
        self._prepared = PreparedCache(lambda: session.cluster.metadata, PREPARED_CACHE_SIZE)

    @classmethod
    async def create(cls, cluster: Any, keyspace: str | None = None) -> AsyncCassandraSession:
        """Connect a driver ``cassandra.cluster.Cluster`` (off the event loop) and wrap
        the session. Prefer :meth:`AsyncCluster.connect`, which also checks the
        protocol version and bounds the time; this is async-cassandra 0.0.1's way.

        Raises as :meth:`AsyncCluster.connect` does (:class:`ConnectionError`,
        :class:`QueryError` for an unknown keyspace, ...).
        """
        await anyio.lowlevel.checkpoint_if_cancelled()  # a cancelled scope connects nothing
        try:
            driver_session = await OffLoopCalls().run(cluster.connect, keyspace)
        except Exception as error:
            raise translate_driver_error(error)  # noqa: B904 - the cause is set inside
        return cls(driver_session)

    # -- observers -------------------------------------------------------------------

    @property
    def observers(self) -> tuple[Any, ...]:
        """The request observers of this session (see :mod:`async_cassandra.observers`):
        its cluster's, then its own."""
        return self._observers

    def add_observer(self, observer: Any) -> None:
        """Show every request started from now on to ``observer`` too (a
        :class:`~async_cassandra.observers.RequestObserver`, or any object with some
        of its methods). Requests already running keep the observers they had.
        Raises :class:`ConfigurationError` for an object with none of those methods
        (tests/test_observers.py shows both)."""
        self._observers = (*self._observers, *checked_observers([observer]))

    def remove_observer(self, observer: Any) -> None:
        """Stop showing new requests to ``observer``; ValueError if it was not added."""
        observers = list(self._observers)
        observers.remove(observer)
        self._observers = tuple(observers)

    # -- state -----------------------------------------------------------------------

    @property
    def driver_session(self) -> DriverSession:
        """The wrapped ``cassandra.cluster.Session``, untouched by us: it behaves as a
        plain driver session (do not call its blocking methods on the event loop)."""
        return self._session

    @property
    def keyspace(self) -> str | None:
        keyspace: str | None = self._session.keyspace
        return keyspace

    @property
    def is_closed(self) -> bool:
        return self._resources.closed or bool(self._session.is_shutdown)

    @property
    def max_concurrent_requests(self) -> int:
        """The bound on requests in flight (pages being fetched); more calls wait."""
        return self._limiter.limit

    def set_max_concurrent_requests(self, limit: int) -> None:
        """Change the bound on requests in flight, at once, for every user of the
        session: raised, waiting calls go ahead; lowered, requests in flight finish and
        new calls wait until fewer than ``limit`` are out. ConfigurationError below 1."""
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ConfigurationError(
                f"max_concurrent_requests must be an int of at least 1, not {limit!r}"
            )
        self._limiter.set_limit(limit)

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
        return len(self._resources.requests)

    @property
    def requests_waiting(self) -> int:
        """Calls waiting for an in-flight slot."""
        return self._limiter.waiting

    @property
    def prepared_statements_cached(self) -> int:
        """Statements in the cache behind ``execute(..., prepare=True)``."""
        return len(self._prepared)

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
        trace: bool = False,
        custom_payload: dict[str, bytes] | None = None,
        timeout: float | None = None,
        execution_profile: Any = EXEC_PROFILE_DEFAULT,
        paging_state: bytes | None = None,
        host: Any = None,
        execute_as: str | None = None,
        *,
        prepare: bool = False,
        fetch_size: int | None = None,
    ) -> AsyncResultSet:
        """Run ``query`` and return its rows: every page, unless asked for one.

        ``query`` is a CQL string (``%s`` / ``%(name)s`` parameters), a
        ``SimpleStatement``, a ``PreparedStatement`` or ``BoundStatement`` (``?`` /
        ``:name`` parameters), or a ``BatchStatement``, exactly as the driver takes
        them; the positional order of the arguments is that of async-cassandra 0.0.1
        (and of the driver's ``execute_async``). A CQL string with ``?`` markers must
        be prepared: pass ``prepare=True`` to prepare it once through the session's
        cache, which is keyed on the keyspace in effect and notices schema changes.

        One page only: pass ``fetch_size`` (rows per page) and/or ``paging_state``
        (bytes a previous result's :attr:`~AsyncResultSet.paging_state` gave; anything
        else is refused before it is sent); the result's ``paging_state`` and
        ``has_more_pages`` say where to resume. Hand a paging state to a web client only
        signed: see :mod:`async_cassandra.paging`. ``fetch_size=0`` runs the statement
        unpaged, in one response (the server requires it for ``ORDER BY`` with ``IN``).
        For large results use :meth:`execute_stream` (bounded memory).

        ``host``: a ``cassandra.pool.Host`` of ``cluster.metadata`` to send to.
        ``execute_as`` is DataStax Enterprise's; on Apache Cassandra it raises
        :class:`ConfigurationError` (the server would ignore it and run the request as
        the session's own role). ``custom_payload`` is copied, never written to. The
        server's warnings are in :attr:`~AsyncResultSet.warnings`.

        **Timeouts.** Each page may take the request's timeout, in seconds: ``timeout``
        if given, else the execution profile's ``request_timeout`` (the driver's
        default profile: 10 s). The first page's is also cut to the time left before
        the caller's anyio deadline, so the driver gives up when the caller does. The
        driver times only the first page; later pages are timed by us, with the same
        timeout. A timeout raises :class:`TimeoutError` saying how long was waited.

        Rows are made by the row factory in effect (the execution profile's or the
        session's), on the event loop. With a factory that does not return a list of
        rows (a pandas ``DataFrame`` per page), the result is one such object for all
        pages, in :attr:`~AsyncResultSet.current_rows`.

        ``trace=True`` also fetches the server's trace (in a worker thread) before
        returning, for :meth:`AsyncResultSet.get_query_trace`.

        Cancellation returns at once and detaches from the request: CQL has no cancel
        message, so the server may still run it, and a cancelled write **may or may
        not have been applied**. Its late response is discarded. Called in a scope that
        is already cancelled or past its deadline, it sends nothing and raises at once.
        When many requests start in one turn of the event loop, those past the turn's
        sending budget are sent in later turns (see the README, "A burst does not
        stall the loop"); one cancelled before it was sent was not sent at all.

        Raises :class:`QueryError` (bad CQL, schema, parameters: a parameter that cannot
        be bound is named, with its column, type and the reason; anything the driver
        could not encode, before it is sent), :class:`TimeoutError`,
        :class:`ConnectionError` (no host, closed session), each also an instance of the
        driver's own exception class (or of ``TypeError``/``ValueError`` for bad
        parameter values, as the driver raises them).
        """
        observers = self._observers
        observed = (
            observe_request(
                observers, "execute", query, parameters, self._session.keyspace, fetch_size
            )
            if observers
            else None
        )
        try:
            request, first_page = await self._start_request(
                query,
                parameters,
                trace=trace,
                custom_payload=custom_payload,
                timeout=timeout,
                execution_profile=execution_profile,
                paging_state=paging_state,
                host=host,
                execute_as=execute_as,
                prepare=prepare,
                fetch_size=fetch_size,
                observed=observed,
            )
            try:
                one_page = paging_state is not None or fetch_size is not None
                rows = await self._rows_of(
                    request, first_page, one_page=one_page, observed=observed
                )
            finally:
                request.detach()
            future = request.future
            trace_outcome: Any = None
            if trace and _driver.was_traced(future):
                # Fetched now, in a worker thread (the driver's fetch blocks), so that
                # result.get_query_trace() needs no I/O, as 0.0.1 code calls it unawaited.
                try:
                    trace_outcome = await self._resources.offloop.run(
                        future.get_query_trace, self._session.max_trace_wait
                    )
                except Exception as error:
                    trace_outcome = translate_driver_error(error)
            result = AsyncResultSet(
                rows,
                future,
                paging_state=_driver.paging_state(future),
                offloop=self._resources.offloop,
                trace=trace_outcome,
                warnings=request.warnings,
            )
        except BaseException as error:
            if observed is not None:
                request_ended(observed, error)
                observed = None  # holds error, whose traceback holds this frame: no cycle
            raise
        if observed is not None:
            request_ended(observed, None, request.warnings)
        return result

    async def _rows_of(
        self,
        request: DriverRequest,
        first_page: Any,
        *,
        one_page: bool,
        observed: ObservedRequest | None = None,
    ) -> Any:
        """The rows of the request: its first page, or every page."""
        if first_page is None:
            return []  # no rows at all (INSERT, DDL, USE)
        future = request.future
        names = _driver.column_names(future) or []
        make_rows = rows_maker(request.row_factory)
        if one_page or not future.has_more_pages:
            made = make_rows(names, first_page)
            rows = as_row_list(made)  # a generator's rows, say
            return made if rows is None else rows
        pages = JoinedPages(make_rows, names)
        pages.add(first_page)
        portal = current_portal()
        while future.has_more_pages:
            if observed is None:
                pages.add(await request.next_page(portal) or [])
                continue
            asked = time.time_ns()
            try:
                page = await request.next_page(portal)
            except Exception as error:
                page_ended(observed, future, None, asked, error)
                observed = None  # the caller stores error in it (see execute)
                raise
            page_ended(observed, future, page, asked)
            pages.add(page or [])
        return pages.result()

    async def _start_request(
        self,
        query: str | Statement | PreparedStatement,
        parameters: Any = None,
        *,
        trace: bool = False,
        custom_payload: dict[str, bytes] | None = None,
        timeout: float | None = None,
        execution_profile: Any = EXEC_PROFILE_DEFAULT,
        paging_state: bytes | None = None,
        host: Any = None,
        execute_as: str | None = None,
        prepare: bool = False,
        fetch_size: int | None = None,
        observed: ObservedRequest | None = None,
    ) -> tuple[DriverRequest, Any]:
        """Send ``query`` and wait for its first page (raw rows, or None for a result
        without rows): the mechanism behind :meth:`execute` and :meth:`execute_stream`.
        ``observed``: the request's record when the session has observers."""
        try:
            session = self._check_open()
            if observed is not None and observed.outgoing_payload:
                custom_payload = {**(custom_payload or {}), **observed.outgoing_payload}
            if paging_state is not None or host is not None or execute_as is not None:
                _check_request_options(session, paging_state, host, execute_as)
            statement, parameters = await self._statement(query, parameters, prepare)
            if fetch_size is not None:
                statement = _with_fetch_size(statement, fetch_size)
        except Exception:
            observed = None  # the caller stores the error in it (see execute)
            raise
        portal = current_portal()
        if observed is None:
            await self._limiter.acquire(portal)
        else:
            waiting_since = time.perf_counter()
            await self._limiter.acquire(portal)
            observed.limiter_wait = time.perf_counter() - waiting_since
        try:
            # A call in a cancelled scope (or past its deadline) does nothing: checked
            # last before the request goes out, after every await that came before.
            deadline = await caller_deadline()
            # The timeout each page gets, as configured (timeout=, else the profile's);
            # the first page's is also cut to the caller's deadline when it is sent.
            configured = _driver.configured_timeout(
                session, _driver.NOT_SET if timeout is None else timeout, execution_profile
            )
        except BaseException as error:
            self._limiter.release()
            observed = None  # the caller stores the error in it (see execute)
            raise translate_driver_error(error)  # noqa: B904 - the cause is set inside
        build = partial(
            _driver.start_request,
            session,
            statement,
            parameters,
            trace,
            custom_payload,
            execution_profile,
            paging_state,
            host,
            execute_as,
        )
        request = DriverRequest(
            self._limiter,
            portal,
            self._resources.requests,
            build,
            page_timeout=configured,
            deadline=deadline,
        )
        # Now, or in a later turn of the loop if this turn has sent its share (see
        # _outbox); the in-flight bound keeps the driver from blocking on stream ids.
        sent_at = time.time_ns() if observed is not None else 0
        portal.outbox.send(request)
        try:
            first_page = await request.page()
        except BaseException as error:
            request.detach()
            if observed is not None and isinstance(error, Exception):
                page_ended(observed, request.sent_future, None, sent_at, error)
            observed = None  # the caller stores error in it (see execute)
            if paging_state is not None and _is_paging_state_refusal(error):
                raise _paging_state_error(error)  # noqa: B904 - the cause is set inside
            raise
        if observed is not None:
            page_ended(observed, request.future, first_page, sent_at)
        return request, first_page

    async def _statement(self, query: Any, parameters: Any, prepare: bool) -> tuple[Any, Any]:
        """``query`` with its parameters bound, before a request exists, so that a bad
        parameter is reported as one (see _binding): a statement or a CQL string, and
        the parameters left for the driver to bind (None but for a SimpleStatement)."""
        if isinstance(query, str):
            if prepare:
                return await self._bind_cached(query, parameters), None
            if parameters is None:
                return query, None
            _refuse_bind_markers(query)
            return bind_string(query, parameters, self._session.encoder), None
        if isinstance(query, PreparedStatement):
            return bind_prepared(query, parameters), None
        if isinstance(query, SimpleStatement):
            if prepare:
                raise bad_argument(
                    "prepare=True prepares a CQL string, not a SimpleStatement: pass the "
                    "string, or `await session.prepare(statement.query_string)` and set "
                    "the statement's options on the prepared statement",
                    TypeError,
                )
            if parameters is not None:
                # Checked here so that a mismatch is reported as one; the driver binds
                # it into the statement (whose other settings a copy could lose).
                _refuse_bind_markers(query.query_string)
                bind_string(query.query_string, parameters, self._session.encoder)
        return query, parameters

    async def _bind_cached(self, query: str, parameters: Any) -> BoundStatement:
        keyspace = self._session.keyspace
        prepared = self._prepared.get(keyspace, query)
        if prepared is None:
            prepared = await self._prepare(query, None, None, keyspace)
            self._prepared.put(keyspace, query, prepared)
            return bind_prepared(prepared, parameters)
        try:
            return bind_prepared(prepared, parameters)
        except QueryError:
            # The cached parameter types may predate a schema change the driver has
            # not heard of yet (made by another client): prepare again, once.
            self._prepared.discard(keyspace, query)
            prepared = await self._prepare(query, None, None, keyspace)
            self._prepared.put(keyspace, query, prepared)
            return bind_prepared(prepared, parameters)

    async def execute_stream(
        self,
        query: str | Statement | PreparedStatement,
        parameters: Any = None,
        stream_config: StreamConfig | None = None,
        trace: bool = False,
        custom_payload: dict[str, bytes] | None = None,
        timeout: float | None = None,
        execution_profile: Any = EXEC_PROFILE_DEFAULT,
        paging_state: bytes | None = None,
        host: Any = None,
        execute_as: str | None = None,
        *,
        prepare: bool = False,
    ) -> AsyncStreamingResultSet:
        """Run ``query`` and stream its rows page by page, in bounded memory.

        Returns once the first page is there (so bad CQL raises here), as an
        :class:`~async_cassandra.streaming.AsyncStreamingResultSet`: use it as ``async
        with await session.execute_stream(...) as stream: async for row in stream``.
        At most ``fetch_size * (1 + read_ahead)`` rows are held at any time; pages are
        fetched as the consumer reads. See :class:`~async_cassandra.streaming.StreamConfig`
        (validated here, when the stream starts: it is a plain dataclass whose fields
        may be set after it is made). Without a ``stream_config``, a statement's own
        ``fetch_size`` (``create_streaming_statement``) is the page size.

        Each page may take ``stream_config.timeout_seconds``, else the request's timeout
        (as for :meth:`execute`). The keywords are those of :meth:`execute`, in 0.0.1's
        positional order. Cancellation while waiting for the first page detaches as for
        :meth:`execute`. Raises the same errors.
        """
        if stream_config is None:
            statement_fetch_size = getattr(query, "fetch_size", None)
            if isinstance(statement_fetch_size, int) and statement_fetch_size > 0:
                config = StreamConfig(fetch_size=statement_fetch_size)
            else:
                config = StreamConfig()
        else:
            config = stream_config.validated()
        if config.timeout_seconds is not None:
            timeout = config.timeout_seconds  # every page's, the first included
        observers = self._observers
        observed = (
            observe_request(
                observers,
                "execute_stream",
                query,
                parameters,
                self._session.keyspace,
                config.fetch_size,
            )
            if observers
            else None
        )
        try:
            request, first_page = await self._start_request(
                query,
                parameters,
                trace=trace,
                custom_payload=custom_payload,
                timeout=timeout,
                execution_profile=execution_profile,
                paging_state=paging_state,
                host=host,
                execute_as=execute_as,
                prepare=prepare,
                fetch_size=config.fetch_size,
                observed=observed,
            )
        except BaseException as error:
            if observed is not None:
                request_ended(observed, error)
                observed = None  # holds error, whose traceback holds this frame: no cycle
            raise
        try:
            return AsyncStreamingResultSet(
                request, first_page, config, limiter=self._limiter, observed=observed
            )
        except BaseException as error:
            request.detach()
            if observed is not None:
                request_ended(observed, error)
                observed = None  # holds error, whose traceback holds this frame: no cycle
            raise

    async def execute_batch(
        self,
        batch_statement: Statement,
        trace: bool = False,
        custom_payload: dict[str, bytes] | None = None,
        timeout: float | None = None,
        execution_profile: Any = EXEC_PROFILE_DEFAULT,
        **kwargs: Any,
    ) -> AsyncResultSet:
        """Run a ``BatchStatement``; the arguments are 0.0.1's, and the other keywords of
        :meth:`execute` are accepted too.

        Cancellation and errors as for :meth:`execute`: a cancelled batch may or may
        not have been applied (a LOGGED batch is applied whole or not at all).
        """
        return await self.execute(
            batch_statement,
            trace=trace,
            custom_payload=custom_payload,
            timeout=timeout,
            execution_profile=execution_profile,
            **kwargs,
        )

    async def prepare(
        self,
        query: str,
        custom_payload: dict[str, bytes] | None = None,
        timeout: float | None = None,
    ) -> PreparedStatement:
        """Prepare ``query`` on the cluster, without blocking the event loop.

        The driver's prepare blocks its caller, so it runs in a worker thread. It may
        take ``timeout`` seconds (default: the driver session's ``default_timeout``, as
        the driver's own prepare). On cancellation or timeout this returns at once; the
        worker finishes the prepare by itself (it is harmless), and :meth:`close` waits
        for it. Called in a cancelled scope, it sends nothing.

        Cassandra 5 answers the prepare of a statement with unqualified table names, on
        a session that has a keyspace (``connect(keyspace)``, ``set_keyspace``), with a
        warning the driver logs ("... considered to be an anti-pattern ..."): qualify
        the table names (``keyspace.table``) to avoid it.

        Raises :class:`QueryError` for invalid CQL, or text the driver could not send
        (not valid Unicode; a ``custom_payload`` that is not str to bytes), before
        anything is sent; :class:`TimeoutError`; :class:`ConnectionError`.
        """
        return await self._prepare(query, custom_payload, timeout, None)

    async def _prepare(
        self,
        query: str,
        custom_payload: dict[str, bytes] | None,
        timeout: float | None,
        keyspace: str | None,
    ) -> PreparedStatement:
        session = self._check_open()
        # What the driver would fail to encode after taking a stream id (see _driver).
        _driver.check_text(query, "the CQL text to prepare")
        if custom_payload:
            _driver.check_payload(custom_payload)
        limit = timeout if timeout is not None else session.default_timeout
        await anyio.lowlevel.checkpoint_if_cancelled()  # a cancelled scope sends nothing
        observers = self._observers
        if not observers:
            return await self._prepare_in_thread(session, query, custom_payload, keyspace, limit)
        observed = observe_prepare(observers, query, keyspace or session.keyspace)
        try:
            prepared = await self._prepare_in_thread(
                session, query, custom_payload, keyspace, limit
            )
        except BaseException as error:
            prepare_ended(observed, error)
            del observed  # holds error, whose traceback holds this frame: no cycle
            raise
        prepare_ended(observed, None)
        return prepared

    async def _prepare_in_thread(
        self,
        session: DriverSession,
        query: str,
        custom_payload: dict[str, bytes] | None,
        keyspace: str | None,
        limit: float,
    ) -> PreparedStatement:
        try:
            with anyio.move_on_after(limit) as scope:
                prepared: PreparedStatement = await self._resources.offloop.run(
                    session.prepare, query, custom_payload, keyspace
                )
                return prepared
        except Exception as error:
            hint = loop_gone_hint(session.cluster)  # None unless an EventLoopConnection's
            raise translate_driver_error(error, hint=hint)  # noqa: B904
        assert scope.cancelled_caught
        raise TimeoutError(
            f"preparing {query!r:.100} did not finish within {limit:g} s; the server or "
            "the connection is stalled (the prepare goes on in a worker thread)"
        )

    async def set_keyspace(self, keyspace: str) -> None:
        """Make ``keyspace`` the default for this session's unqualified tables.

        Raises :class:`QueryError` (also a ``ValueError``, as 0.0.1 raised) for a name
        that is not a valid keyspace name, before any I/O, and :class:`QueryError` for a
        keyspace that does not exist. Statements cached by ``prepare=True`` are keyed
        on the keyspace, so they follow the switch. Cancelled, the switch may or may not
        have happened on the session's connections: set it again before relying on it.
        """
        check_keyspace_name(keyspace)
        await self.execute(f'USE "{keyspace}"')

    # -- closing ---------------------------------------------------------------------

    async def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """Close the session's connections. Idempotent; safe to call from any loop.

        Runs shielded from cancellation and off the event loop (the driver's shutdown
        blocks). Requests still in flight, and streams waiting for a page, fail at once
        with :class:`ConnectionError`. Closing waits for the worker threads the session
        started (prepares and trace fetches abandoned by cancelled callers), ``timeout``
        seconds at most in all; past that it raises :class:`TimeoutError` and the
        driver's shutdown goes on in its thread (``async with`` logs this instead when
        another exception is already leaving the block).
        """
        if not self._resources.mark_closed():
            return
        resources = self._resources
        closed = await close_within(
            timeout, resources.offloop, self._session.shutdown, "session shutdown"
        )
        if self._owned_cluster is not None:
            await self._owned_cluster.shutdown()
        if not closed:
            raise TimeoutError(
                f"closing the session did not finish within {timeout:g} s; the driver's "
                "shutdown goes on in a worker thread"
            )

    async def __aenter__(self) -> AsyncCassandraSession:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await close_in_exit(self.close, exc)

    def __repr__(self) -> str:
        state = "closed" if self.is_closed else "open"
        return f"<AsyncCassandraSession keyspace={self.keyspace!r} {state}>"


def check_keyspace_name(keyspace: object) -> None:
    """Raise QueryError (also ValueError) for a name Cassandra cannot have given a
    keyspace, before it is sent anywhere."""
    if not isinstance(keyspace, str) or not _VALID_KEYSPACE.match(keyspace):
        raise bad_argument(
            f"{keyspace!r} is not a valid keyspace name: use 1 to 48 letters, digits or underscores"
        )


def open_session(
    driver_session: DriverSession,
    *,
    max_concurrent_requests: int | None,
    observers: Iterable[Any] = (),
) -> tuple[AsyncCassandraSession, SessionResources]:
    """A session for ``AsyncCluster.connect``, with the resources the cluster closes at
    its shutdown (the driver's cluster shutdown closes the driver session too)."""
    session = AsyncCassandraSession(
        driver_session, max_concurrent_requests=max_concurrent_requests, observers=observers
    )
    return session, session._resources


def _refuse_bind_markers(query: str) -> None:
    if _uses_bind_markers(query):
        raise bad_argument(
            "this CQL text uses ? or :name bind markers, which only prepared statements "
            "take: `stmt = await session.prepare(query)` then `await session.execute(stmt, "
            "parameters)`, or pass the string with prepare=True (or use %s markers for a "
            "plain string)"
        )


def _with_fetch_size(statement: Any, fetch_size: int) -> Any:
    """``statement`` paged by ``fetch_size`` (0: not paged), leaving the caller's object
    untouched."""
    if isinstance(fetch_size, bool) or not isinstance(fetch_size, int) or fetch_size < 0:
        raise bad_argument(
            f"fetch_size must be an int: rows per page, or 0 for no paging; not {fetch_size!r}"
        )
    # The driver's way to send a statement unpaged is a fetch_size of None on it.
    size = fetch_size if fetch_size > 0 else None
    if isinstance(statement, str):
        return SimpleStatement(statement, fetch_size=size)
    # A copy: the caller's statement object may be shared (module-level, reused).
    statement = copy.copy(statement)
    statement.fetch_size = size
    return statement


def _check_request_options(
    session: DriverSession, paging_state: Any, host: Any, execute_as: str | None
) -> None:
    """Refuse, before anything is sent, the options the driver would misread."""
    if paging_state is not None:
        if not isinstance(paging_state, bytes):
            raise bad_argument(
                f"paging_state must be the bytes a result's paging_state gave, not "
                f"{type(paging_state).__name__}; to hand one to a web client, sign it "
                "with async_cassandra.paging.PagingTokenSigner",
                TypeError,
            )
        if not is_well_formed(paging_state):
            raise _paging_state_error(None)
    if host is not None and not isinstance(host, Host):
        raise bad_argument(
            f"host must be a cassandra.pool.Host of this cluster (from "
            f"cluster.metadata.all_hosts() or cluster.metadata.get_host(address)), not "
            f"{type(host).__name__} {host!r}",
            TypeError,
        )
    if execute_as is not None and not any(
        getattr(h, "dse_version", None) for h in session.cluster.metadata.all_hosts()
    ):
        raise ConfigurationError(
            "execute_as runs a request as another role on DataStax Enterprise only: "
            "Apache Cassandra ignores it, and the request would run with the rights of "
            "the role this session logged in as. Connect as that role instead "
            "(AsyncCluster.create_with_auth)"
        )


def _paging_state_error(cause: BaseException | None) -> Exception:
    return bad_argument(
        "paging_state is not one the server gave for this query (it is not a paging "
        "state at all, or the server refused it); resume only from a result's "
        "paging_state, and hand it to clients signed (async_cassandra.paging."
        "PagingTokenSigner), so that they cannot edit it",
        ValueError,
        cause=cause,
    )


def _is_paging_state_refusal(error: BaseException) -> bool:
    # The server's "Invalid value for the paging state" is a protocol error, which would
    # read as a connection problem.
    return isinstance(error, ProtocolException) and "paging state" in str(error)
