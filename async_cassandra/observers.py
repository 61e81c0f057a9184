"""Request observers: the one hook into every request, for metrics, tracing and logs.

An observer sees each request start, each page end, and the request end; and each
prepare start and end. Install observers on a cluster (``AsyncCluster(observers=[...])``:
every session it connects gets them) or on one session (``session.add_observer(obs)``).
The metrics collectors (:mod:`async_cassandra.metrics`) and the OpenTelemetry
instrumentation (:mod:`async_cassandra.otel`) are observers.

Subclass :class:`RequestObserver` and override what you need::

    class SlowQueries(RequestObserver):
        def request_ended(self, request: ObservedRequest) -> None:
            if request.duration > 0.5:
                log.warning("%s took %.3f s", request.summary, request.duration)

**Where and when they run.** On the event-loop thread, in the task that awaits the
request, synchronously: context variables (an OpenTelemetry context, a request id) are
those of the caller, on asyncio and on trio. Keep them quick; a method that has slow
work to do hands it to a task group or a thread of its own. A method that raises is
logged (logger ``async_cassandra.observers``) and the request goes on as if it had not
been observed. With no observer installed, requests pay nothing for the mechanism.

**What they see.** :class:`ObservedRequest` (one per request, filled in as the request
goes), :class:`ObservedPage` (one per page), :class:`ObservedPrepare`. Query text is the
text as written, with its bind markers: parameter values are never in it. Times are
``time.time_ns()`` nanoseconds since the epoch (``start_time_ns``, ``end_time_ns``) and
durations are seconds. Observers may keep their own per-request state in
``request.state``, a dict (key it by the observer).

**Streams** (``execute_stream``): ``request_started``, then ``page_ended`` for the first
page as ``execute_stream`` returns, then ``page_ended`` for each later page as the
consumer takes it (``start_time_ns`` is when its fetch began, which read-ahead may put
well before), and ``request_ended`` when the stream is closed, exhausted or fails.
"""

from __future__ import annotations

import re
import time
from typing import Any

from cassandra import ConsistencyLevel

__all__ = ["ObservedPage", "ObservedPrepare", "ObservedRequest", "RequestObserver"]

# The first word of a CQL statement, after any comments.
_COMMENTS = re.compile(r"(--|//)[^\n]*|/\*.*?\*/", re.S)
_OPERATION = re.compile(r"\s*([A-Za-z]+)")


class _ObservedCall:
    """What requests and prepares have alike: who observes them, when they started,
    how they ended, and state for observers."""

    def __init__(self, observers: tuple[Any, ...]) -> None:
        #: The observers that see this call (those of the session when it started).
        self.observers = observers
        self.start_time_ns = time.time_ns()
        self._started = time.perf_counter()
        #: Set at the end: the exception the caller got (None on success), whether the
        #: caller was cancelled (then ``error`` is None), seconds from start to end.
        self.error: BaseException | None = None
        self.cancelled = False
        self.end_time_ns: int | None = None
        self.duration: float | None = None
        #: Free for observers: their own per-call state, keyed by observer.
        self.state: dict[Any, Any] = {}

    @property
    def outcome(self) -> str:
        """``"ok"``, ``"error"`` or ``"cancelled"`` once ended; ``"running"`` before."""
        if self.end_time_ns is None:
            return "running"
        if self.cancelled:
            return "cancelled"
        return "ok" if self.error is None else "error"

    def elapsed(self) -> float:
        """Seconds since the call started."""
        return time.perf_counter() - self._started


class ObservedRequest(_ObservedCall):
    """One request (``execute``, ``execute_stream``, a batch), as observers see it.

    Filled in as the request goes: what was asked at ``request_started``; the
    consistency level, coordinator and hosts tried as pages arrive; the outcome at
    ``request_ended``.
    """

    def __init__(
        self,
        observers: tuple[Any, ...],
        operation: str,
        statement_type: str,
        query: str | None,
        keyspace: str | None,
        *,
        is_idempotent: bool = False,
        fetch_size: int | None = None,
        batch_size: int | None = None,
        table: str | None = None,
        parameters_count: int = 0,
    ) -> None:
        super().__init__(observers)
        #: ``"execute"`` or ``"execute_stream"``.
        self.operation = operation
        #: ``"string"`` (a CQL string), ``"simple"`` (a ``SimpleStatement``),
        #: ``"prepared"`` (a prepared or bound statement) or ``"batch"``.
        self.statement_type = statement_type
        #: The CQL text with its bind markers (never parameter values); None for a batch.
        self.query = query
        #: The keyspace the request runs in, if known: the statement's, else the
        #: session's.
        self.keyspace = keyspace
        #: Whether the statement is marked idempotent (a plain string never is).
        self.is_idempotent = is_idempotent
        #: Rows per page asked for (None: the driver's default, or unpaged).
        self.fetch_size = fetch_size
        #: Statements in a batch; None for anything else.
        self.batch_size = batch_size
        #: How many parameters were given (their values are never recorded).
        self.parameters_count = parameters_count
        self._table = table
        self._operation_name: str | None = None  # worked out when first asked for
        #: ``cassandra.ConsistencyLevel`` value the request was sent with, once sent.
        self.consistency_level: int | None = None
        #: Seconds spent waiting for an in-flight slot (the session's limiter).
        self.limiter_wait = 0.0
        #: Pages and rows received so far.
        self.pages = 0
        self.rows = 0
        #: The ``cassandra.pool.Host`` that answered the last page, and every host the
        #: driver tried (retries and speculative executions included).
        self.coordinator: Any = None
        self.attempted_hosts: list[Any] = []
        #: The server's warnings, every page's.
        self.warnings: list[str] = []
        #: Entries an observer adds here in ``request_started`` are sent in the
        #: request's custom payload (the CQL protocol's string-to-bytes map), after the
        #: caller's own: how trace context reaches the server (see otel).
        self.outgoing_payload: dict[str, bytes] = {}

    @property
    def operation_name(self) -> str:
        """The CQL command (``SELECT``, ``INSERT``, ...; ``BATCH`` for a batch)."""
        name = self._operation_name
        if name is None:
            if self.statement_type == "batch" or self.query is None:
                name = "BATCH"
            else:
                match = _OPERATION.match(_COMMENTS.sub(" ", self.query))
                name = match.group(1).upper() if match else ""
            self._operation_name = name
        return name

    @property
    def table(self) -> str | None:
        """The table the statement names, where it can be told (from a prepared
        statement's metadata, else from the CQL text); None for a batch."""
        return self._table

    @property
    def summary(self) -> str:
        """A short, low-cardinality name for the request: ``"SELECT users"``,
        ``"BATCH"`` (the OpenTelemetry ``db.query.summary``)."""
        table = self.table
        return f"{self.operation_name} {table}" if table else self.operation_name

    @property
    def consistency_name(self) -> str | None:
        """The consistency level's name in lower case (``"local_quorum"``), once sent."""
        level = self.consistency_level
        if level is None:
            return None
        return str(ConsistencyLevel.value_to_name.get(level, level)).lower()

    def __repr__(self) -> str:
        return f"<ObservedRequest {self.operation} {self.summary!r} {self.outcome}>"


class ObservedPage:
    """One page of a request: ``number`` (1 for the first), its ``rows``, when its fetch
    started and ended (``time.time_ns()``), its ``duration`` in seconds, the host that
    answered it (``coordinator``, a ``cassandra.pool.Host``) and ``error`` (the
    exception, if the page failed)."""

    def __init__(
        self,
        number: int,
        rows: int,
        start_time_ns: int,
        end_time_ns: int,
        coordinator: Any = None,
        error: BaseException | None = None,
    ) -> None:
        self.number = number
        self.rows = rows
        self.start_time_ns = start_time_ns
        self.end_time_ns = end_time_ns
        self.coordinator = coordinator
        self.error = error

    @property
    def duration(self) -> float:
        return (self.end_time_ns - self.start_time_ns) / 1e9

    def __repr__(self) -> str:
        return f"<ObservedPage {self.number}: {self.rows} rows in {self.duration:.4f} s>"


class ObservedPrepare(_ObservedCall):
    """One ``session.prepare`` (or a ``prepare=True`` cache miss): its ``query``,
    ``keyspace``, times, and at the end ``error`` (None on success), ``cancelled``
    and ``duration`` in seconds."""

    def __init__(self, observers: tuple[Any, ...], query: str, keyspace: str | None) -> None:
        super().__init__(observers)
        self.query = query
        self.keyspace = keyspace


class RequestObserver:
    """Base class of observers: every method does nothing; override what you need.

    Any object with these methods works as an observer (duck typing); subclassing keeps
    it working when later versions add methods.
    """

    def request_started(self, request: ObservedRequest) -> None:
        """A request is starting (before it waits for an in-flight slot)."""

    def page_ended(self, request: ObservedRequest, page: ObservedPage) -> None:
        """A page arrived (or failed: ``page.error``)."""

    def request_ended(self, request: ObservedRequest) -> None:
        """The request is over: ``request.outcome``, ``error``, ``duration``."""

    def prepare_started(self, prepare: ObservedPrepare) -> None:
        """A statement is being prepared."""

    def prepare_ended(self, prepare: ObservedPrepare) -> None:
        """A prepare is over: ``prepare.error``, ``cancelled``, ``duration``."""
