"""Query metrics with async-cassandra 0.0.1's names, recorded by a request observer.

``create_metrics_system(backend="memory", prometheus_enabled=False)`` gives a
:class:`MetricsMiddleware`; pass it to the session (``AsyncCassandraSession(driver_session,
metrics=middleware)``, as in 0.0.1) or as an observer (``AsyncCluster(observers=[middleware])``,
``session.add_observer(middleware)``). Each request that ends is recorded, as one
:class:`QueryMetrics`, in every collector: :class:`InMemoryMetricsCollector` (statistics
by ``await collector.get_stats()``, with 0.0.1's keys) and
:class:`PrometheusMetricsCollector` (``prometheus_client``, the ``prometheus`` extra:
``pip install 'async-cassandra[prometheus]'``).

**Recording is synchronous.** The middleware is an observer, so it runs in the task that
made the request, on the loop thread, as the request ends (see
:mod:`async_cassandra.observers`): no task is started, nothing outlives the request, and
nothing queues up behind a slow collector. The collectors here record without waiting.
A collector of your own (a :class:`MetricsCollector` subclass, with 0.0.1's ``async def
record_query``) is driven the same way: its coroutine runs at once and must finish
without waiting for anything (appending to a list, incrementing a counter); one that
waits (for I/O, a contended lock) is stopped there, not recorded, and logged once. Hand
slow work to a task group or a thread of your own.

What 0.0.1 did differently: a task per recorded query (fire-and-forget, unowned), an
``asyncio.Lock`` (no trio), and Prometheus ``query_type`` guessed from a hash (always
"simple"). Here ``query_type`` is the statement's kind: ``simple`` (a CQL string or
``SimpleStatement``), ``prepared`` or ``batch``.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import re
import threading
import weakref
from collections import defaultdict, deque
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from .observers import ObservedRequest, RequestObserver

__all__ = [
    "ConnectionMetrics",
    "InMemoryMetricsCollector",
    "MetricsCollector",
    "MetricsMiddleware",
    "PrometheusMetricsCollector",
    "QueryMetrics",
    "create_metrics_system",
]

logger = logging.getLogger(__name__)

RECENT_WINDOW = timedelta(minutes=5)  # get_stats()'s "recent": the last five minutes


def _now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class QueryMetrics:
    """One query: ``query_hash`` (12 hex digits naming the normalized CQL text, values
    left out; ``"BATCH"`` for a batch), ``duration`` in seconds, ``success``,
    ``error_type`` (the exception class's name; ``"Cancelled"`` for a call cancelled by
    its caller), when it ended, how many parameters it had and rows it returned; and,
    after 0.0.1's fields, ``query_type``: ``simple`` (a CQL string or
    ``SimpleStatement``), ``prepared`` or ``batch``."""

    query_hash: str
    duration: float
    success: bool
    error_type: str | None = None
    timestamp: datetime = field(default_factory=_now)
    parameters_count: int = 0
    result_size: int = 0
    query_type: str = "simple"


@dataclass
class ConnectionMetrics:
    """One health check of a host: its address, whether it answered, how long it took
    (``response_time``, seconds), when (``last_check``), errors and queries counted."""

    host: str
    is_healthy: bool
    last_check: datetime
    response_time: float
    error_count: int = 0
    total_queries: int = 0


class MetricsCollector:
    """Where metrics go (0.0.1's base class). Subclass it with ``async def record_query``
    / ``record_connection_health`` / ``get_stats``; see the module's note on recording.

    The collectors of this module also record synchronously, through
    ``record_query_now`` and ``record_connection_health_now``: a subclass may define
    those instead, and is then called without a coroutine at all.
    """

    async def record_query(self, metrics: QueryMetrics) -> None:
        """Record one query."""
        raise NotImplementedError

    async def record_connection_health(self, metrics: ConnectionMetrics) -> None:
        """Record one host health check."""
        raise NotImplementedError

    async def get_stats(self) -> dict[str, Any]:
        """Aggregated statistics."""
        raise NotImplementedError


class InMemoryMetricsCollector(MetricsCollector):
    """The last ``max_entries`` queries and the latest health of each host, in memory.

    ``await get_stats()`` returns 0.0.1's dictionary: ``query_performance``
    (``total_queries``, ``recent_queries_5min``, ``avg_duration_ms``, ``min_duration_ms``,
    ``max_duration_ms``, ``success_rate``, ``queries_per_second`` over the last five
    minutes), ``error_summary`` (count per error type), ``top_queries`` (the ten most
    frequent query hashes and their counts), ``connection_health`` (per host: ``healthy``,
    ``response_time_ms``, ``error_count``, ``total_queries``); ``{"message": "No metrics
    available"}`` before the first query. Memory is bounded by ``max_entries`` queries
    (and one count per distinct query and error type). Safe to record from several
    threads (loops in threads share a session).
    """

    def __init__(self, max_entries: int = 10000) -> None:
        self.max_entries = max_entries
        self.query_metrics: deque[QueryMetrics] = deque(maxlen=max_entries)
        self.connection_metrics: dict[str, ConnectionMetrics] = {}
        self.error_counts: dict[str, int] = defaultdict(int)
        self.query_counts: dict[str, int] = defaultdict(int)
        # A thread lock, held for a few appends: asyncio's lock would tie the collector
        # to one loop and to asyncio.
        self._lock = threading.Lock()

    def record_query_now(self, metrics: QueryMetrics) -> None:
        with self._lock:
            self.query_metrics.append(metrics)
            self.query_counts[metrics.query_hash] += 1
            if not metrics.success and metrics.error_type:
                self.error_counts[metrics.error_type] += 1

    def record_connection_health_now(self, metrics: ConnectionMetrics) -> None:
        with self._lock:
            self.connection_metrics[metrics.host] = metrics

    async def record_query(self, metrics: QueryMetrics) -> None:
        self.record_query_now(metrics)

    async def record_connection_health(self, metrics: ConnectionMetrics) -> None:
        self.record_connection_health_now(metrics)

    async def get_stats(self) -> dict[str, Any]:
        """The statistics (see the class); awaitable as in 0.0.1, it never waits and
        never raises."""
        return self.stats()

    def stats(self) -> dict[str, Any]:
        """What :meth:`get_stats` returns, without an ``await``."""
        with self._lock:
            queries = list(self.query_metrics)
            errors = dict(self.error_counts)
            counts = dict(self.query_counts)
            hosts = dict(self.connection_metrics)
        if not queries:
            return {"message": "No metrics available"}
        since = _now() - RECENT_WINDOW
        recent = [q for q in queries if q.timestamp > since]
        health = {
            host: {
                "healthy": m.is_healthy,
                "response_time_ms": m.response_time * 1000,
                "error_count": m.error_count,
                "total_queries": m.total_queries,
            }
            for host, m in hosts.items()
        }
        if not recent:
            return {
                "query_performance": {"message": "No recent queries"},
                "error_summary": errors,
                "top_queries": {},
                "connection_health": {},
            }
        durations = [q.duration for q in recent]
        return {
            "query_performance": {
                "total_queries": len(queries),
                "recent_queries_5min": len(recent),
                "avg_duration_ms": sum(durations) / len(durations) * 1000,
                "min_duration_ms": min(durations) * 1000,
                "max_duration_ms": max(durations) * 1000,
                "success_rate": sum(q.success for q in recent) / len(recent),
                "queries_per_second": len(recent) / RECENT_WINDOW.total_seconds(),
            },
            "error_summary": errors,
            "top_queries": dict(sorted(counts.items(), key=lambda kv: kv[1], reverse=True)[:10]),
            "connection_health": health,
        }


class PrometheusMetricsCollector(MetricsCollector):
    """Query counts, latency histograms, errors and host health for Prometheus.

    Metric names are 0.0.1's: ``cassandra_query_duration_seconds`` (histogram) and
    ``cassandra_queries_total`` (counter), labelled ``query_type`` (``simple``,
    ``prepared``, ``batch``) and ``success`` (``success``/``failure``);
    ``cassandra_errors_total`` labelled ``error_type``; ``cassandra_connection_healthy``
    (gauge, 1 or 0) labelled ``host``. They are registered once per ``registry``
    (default: ``prometheus_client``'s global one, which its HTTP server and
    ``generate_latest()`` expose), so several collectors share them. Without
    ``prometheus_client`` installed the collector logs a warning and does nothing, as
    in 0.0.1.
    """

    def __init__(self, registry: Any = None) -> None:
        self._available = False
        self.query_duration: Any = None
        self.query_total: Any = None
        self.connection_health: Any = None
        self.error_total: Any = None
        try:
            import prometheus_client
        except ImportError:
            logger.warning(
                "prometheus_client is not installed: PrometheusMetricsCollector records "
                "nothing (pip install 'async-cassandra[prometheus]')"
            )
            return
        registry = prometheus_client.REGISTRY if registry is None else registry
        with _registered_lock:
            metrics = _registered.get(registry)
            if metrics is None:
                metrics = _registered[registry] = (
                    prometheus_client.Histogram(
                        "cassandra_query_duration_seconds",
                        "Time spent executing Cassandra queries",
                        ["query_type", "success"],
                        registry=registry,
                    ),
                    prometheus_client.Counter(
                        "cassandra_queries_total",
                        "Total number of Cassandra queries",
                        ["query_type", "success"],
                        registry=registry,
                    ),
                    prometheus_client.Gauge(
                        "cassandra_connection_healthy",
                        "Whether Cassandra connection is healthy",
                        ["host"],
                        registry=registry,
                    ),
                    prometheus_client.Counter(
                        "cassandra_errors_total",
                        "Total number of Cassandra errors",
                        ["error_type"],
                        registry=registry,
                    ),
                )
        self.query_duration, self.query_total, self.connection_health, self.error_total = metrics
        self._available = True

    def record_query_now(self, metrics: QueryMetrics) -> None:
        if not self._available:
            return
        success = "success" if metrics.success else "failure"
        labels = {"query_type": metrics.query_type, "success": success}
        self.query_duration.labels(**labels).observe(metrics.duration)
        self.query_total.labels(**labels).inc()
        if not metrics.success and metrics.error_type:
            self.error_total.labels(error_type=metrics.error_type).inc()

    def record_connection_health_now(self, metrics: ConnectionMetrics) -> None:
        if self._available:
            self.connection_health.labels(host=metrics.host).set(1 if metrics.is_healthy else 0)

    async def record_query(self, metrics: QueryMetrics) -> None:
        self.record_query_now(metrics)

    async def record_connection_health(self, metrics: ConnectionMetrics) -> None:
        self.record_connection_health_now(metrics)

    async def get_stats(self) -> dict[str, Any]:
        if not self._available:
            return {"error": "Prometheus client not available"}
        return {"message": "Metrics available via Prometheus endpoint"}


# The metrics made in each registry: prometheus_client refuses a name registered twice.
_registered: weakref.WeakKeyDictionary[Any, tuple[Any, Any, Any, Any]] = weakref.WeakKeyDictionary()
_registered_lock = threading.Lock()

_QUERY_TYPES = {"string": "simple", "simple": "simple", "prepared": "prepared", "batch": "batch"}


class MetricsMiddleware(RequestObserver):
    """Records every request that ends, in each of ``collectors`` (0.0.1's class, now a
    request observer: see the module's note). ``enable()`` / ``disable()`` switch it."""

    def __init__(self, collectors: Sequence[MetricsCollector]) -> None:
        self.collectors = list(collectors)
        self._enabled = True
        self._warned: set[int] = set()  # collectors already reported as waiting

    def enable(self) -> None:
        """Record again."""
        self._enabled = True

    def disable(self) -> None:
        """Stop recording (requests go on unrecorded)."""
        self._enabled = False

    # -- as an observer ------------------------------------------------------------------

    def request_ended(self, request: ObservedRequest) -> None:
        if not self._enabled:
            return
        if request.cancelled:
            error_type: str | None = "Cancelled"
        elif request.error is not None:
            error_type = type(request.error).__name__
        else:
            error_type = None
        metrics = QueryMetrics(
            query_hash=self._normalize_query(request.query) if request.query else "BATCH",
            duration=request.duration or 0.0,
            success=request.outcome == "ok",
            error_type=error_type,
            parameters_count=request.parameters_count,
            result_size=request.rows,
            query_type=_QUERY_TYPES.get(request.statement_type, "simple"),
        )
        self._hand_over("record_query", metrics)

    # -- 0.0.1's recording API ---------------------------------------------------------

    async def record_query_metrics(
        self,
        query: str,
        duration: float,
        success: bool,
        error_type: str | None = None,
        parameters_count: int = 0,
        result_size: int = 0,
    ) -> None:
        """Record one query by hand (``duration`` in seconds), synchronously in every
        collector; never waits, and a collector that raises is logged, not raised."""
        if not self._enabled:
            return
        self._hand_over(
            "record_query",
            QueryMetrics(
                query_hash=self._normalize_query(query),
                duration=duration,
                success=success,
                error_type=error_type,
                parameters_count=parameters_count,
                result_size=result_size,
            ),
        )

    async def record_connection_metrics(
        self,
        host: str,
        is_healthy: bool,
        response_time: float,
        error_count: int = 0,
        total_queries: int = 0,
    ) -> None:
        """Record one health check of ``host`` (``response_time`` in seconds), as
        :meth:`record_query_metrics` records a query."""
        if self._enabled:
            self.record_connection_health(
                ConnectionMetrics(
                    host=host,
                    is_healthy=is_healthy,
                    last_check=_now(),
                    response_time=response_time,
                    error_count=error_count,
                    total_queries=total_queries,
                )
            )

    def record_connection_health(self, metrics: ConnectionMetrics) -> None:
        """Hand one health check to every collector, synchronously."""
        self._hand_over("record_connection_health", metrics)

    # -- mechanism ---------------------------------------------------------------------

    def _hand_over(self, method: str, metrics: Any) -> None:
        # Every collector's synchronous ``<method>_now`` if it has one, else its
        # coroutine ``<method>`` (0.0.1's interface), driven in place.
        for collector in self.collectors:
            now = getattr(collector, f"{method}_now", None)
            if now is not None:
                self._call(collector, now, metrics)
            else:
                self._drive(collector, getattr(collector, method)(metrics))

    def _call(self, collector: Any, record: Any, *args: Any) -> None:
        try:
            record(*args)
        except Exception:
            logger.exception("metrics collector %r failed to record", collector)

    def _drive(self, collector: Any, coroutine: Coroutine[Any, Any, Any]) -> None:
        # Runs the collector's coroutine to its end right here, with no task: one that
        # finishes without waiting (the usual append or increment) is recorded; one
        # that waits cannot be finished here, and is stopped.
        try:
            coroutine.send(None)
        except StopIteration:
            return
        except Exception:
            logger.exception("metrics collector %r failed to record", collector)
            return
        coroutine.close()
        if id(collector) not in self._warned:
            self._warned.add(id(collector))
            logger.warning(
                "metrics collector %r waited for something while recording; records "
                "are made synchronously as each request ends, so this one (and each "
                "later one that waits) is not recorded: record without awaiting, and "
                "hand slow work to a task group of your own",
                collector,
            )

    def _normalize_query(self, query: str) -> str:
        """12 hex digits naming ``query`` with literals and numbers left out."""
        return _query_hash(query)


@functools.lru_cache(maxsize=4096)
def _query_hash(query: str) -> str:
    # Cached: a service runs the same few statements over and over, and three regular
    # expressions and a digest per request would cost more than the rest of recording.
    normalized = re.sub(r"\s+", " ", query.strip().upper())
    normalized = re.sub(r"'[^']*'", "'?'", normalized)  # string literals
    normalized = re.sub(r"\b\d+\b", "?", normalized)  # numbers
    return hashlib.md5(normalized.encode(), usedforsecurity=False).hexdigest()[:12]


def create_metrics_system(
    backend: str = "memory", prometheus_enabled: bool = False
) -> MetricsMiddleware:
    """A :class:`MetricsMiddleware` with an in-memory collector (``backend="memory"``)
    and/or a Prometheus one (``prometheus_enabled=True``), as in 0.0.1."""
    collectors: list[MetricsCollector] = []
    if backend == "memory":
        collectors.append(InMemoryMetricsCollector())
    if prometheus_enabled:
        collectors.append(PrometheusMetricsCollector())
    return MetricsMiddleware(collectors)
