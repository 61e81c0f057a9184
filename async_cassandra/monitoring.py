"""Host health and a rate-limited session, with async-cassandra 0.0.1's names.

:class:`ConnectionMonitor` reports each host of the cluster: up or down as the driver
sees it (its host state listeners: a lost connection marks a host down at once, gossip
marks it up again), and, for a host that is up, a health check **sent to that host**
(``SELECT now() FROM system.local`` routed with ``host=``) with its latency in ms::

    async with ConnectionMonitor(session) as monitor:
        await monitor.start_monitoring(interval=30)   # checks every 30 s, in the
        ...                                           # monitor's own task group
        metrics = await monitor.get_cluster_metrics()

Leaving the ``async with`` stops the monitoring. 0.0.1's way, without ``async with``
(``await monitor.start_monitoring(interval)`` ... ``await monitor.stop_monitoring()``),
works too: the monitoring then runs as a task of the event loop outside any task group
(asyncio) or a trio system task, until ``stop_monitoring()``; a monitor dropped while
monitoring warns with ``ResourceWarning``. Each round's :class:`ClusterMetrics` goes to
the callbacks given to :meth:`ConnectionMonitor.add_callback` (sync or async).

:class:`RateLimitedSession` bounds a session's requests in flight with the session's own
limiter (no second semaphore: one queue, an ``await``, both backends), and
:func:`create_monitored_session` connects a session and makes both, as in 0.0.1.
"""

from __future__ import annotations

import inspect
import logging
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from types import TracebackType
from typing import Any

import anyio
import anyio.abc
from anyio.lowlevel import current_token
from cassandra.query import SimpleStatement

from ._backends import kit_for
from .cluster import AsyncCluster
from .exceptions import ConfigurationError
from .observers import ObservedRequest, RequestObserver
from .session import AsyncCassandraSession

__all__ = [
    "HOST_STATUS_DOWN",
    "HOST_STATUS_UNKNOWN",
    "HOST_STATUS_UP",
    "ClusterMetrics",
    "ConnectionMonitor",
    "HostMetrics",
    "RateLimitedSession",
    "create_monitored_session",
]

logger = logging.getLogger(__name__)

HOST_STATUS_UP = "up"
HOST_STATUS_DOWN = "down"
#: Up as the driver sees it, but the health check failed.
HOST_STATUS_UNKNOWN = "unknown"

HEALTH_CHECK = "SELECT now() FROM system.local"
HEALTH_CHECK_TIMEOUT = 5.0  # seconds a host may take to answer its health check


@dataclass
class HostMetrics:
    """One host: where it is, its status (``HOST_STATUS_*``), the server's version,
    connections to it (one pool: 1 when up), the health check's latency in ms, when it
    was checked (UTC) and its last error; ``host_id`` and ``status_changed`` (when the
    driver last saw it go up or down, UTC) are ours."""

    address: str
    datacenter: str | None
    rack: str | None
    status: str
    release_version: str | None
    connection_count: int
    latency_ms: float | None = None
    last_error: str | None = None
    last_check: datetime | None = None
    host_id: str | None = None
    status_changed: datetime | None = None


@dataclass
class ClusterMetrics:
    """Every host's :class:`HostMetrics` at ``timestamp`` (UTC), with totals, and
    ``app_metrics``: the monitor's request counters and the session's state."""

    timestamp: datetime
    cluster_name: str | None
    protocol_version: int
    hosts: list[HostMetrics]
    total_connections: int
    healthy_hosts: int
    unhealthy_hosts: int
    app_metrics: dict[str, Any] = field(default_factory=dict)


class _HostEvents:
    """The driver's host state listener: when each host last went up or down. Its
    methods run on the driver's threads, hence the lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.changed: dict[Any, tuple[str, datetime]] = {}
        self.downs = 0
        self.ups = 0

    def _note(self, host: Any, status: str) -> None:
        with self._lock:
            self.changed[host] = (status, datetime.now(timezone.utc))
            if status == HOST_STATUS_UP:
                self.ups += 1
            else:
                self.downs += 1

    def on_up(self, host: Any) -> None:
        self._note(host, HOST_STATUS_UP)

    def on_down(self, host: Any) -> None:
        self._note(host, HOST_STATUS_DOWN)

    def on_add(self, host: Any) -> None:
        pass

    def on_remove(self, host: Any) -> None:
        with self._lock:
            self.changed.pop(host, None)

    def since(self, host: Any) -> datetime | None:
        with self._lock:
            change = self.changed.get(host)
        return change[1] if change else None


class ConnectionMonitor(RequestObserver):
    """Health of every host of ``session``'s cluster; see the module's documentation.

    While monitoring it is also an observer of the session, counting its requests in
    ``metrics`` (``requests_sent``, ``requests_completed``, ``requests_failed``).
    """

    def __init__(self, session: AsyncCassandraSession) -> None:
        self.session = session
        self.metrics: dict[str, Any] = {
            "requests_sent": 0,
            "requests_completed": 0,
            "requests_failed": 0,
            "last_health_check": None,
            "monitoring_started": datetime.now(timezone.utc),
        }
        self._callbacks: list[Callable[[ClusterMetrics], Any]] = []
        self._events = _HostEvents()
        self._cluster = session.driver_session.cluster
        self._cluster.register_listener(self._events)
        self._group: anyio.abc.TaskGroup | None = None  # while in `async with`
        self._scope: anyio.CancelScope | None = None  # of the monitoring loop
        self._stopped: anyio.Event | None = None
        self._detached: object = None  # 0.0.1's way: what keeps the loop's task alive

    # -- 0.0.1's API ---------------------------------------------------------------------

    def add_callback(self, callback: Callable[[ClusterMetrics], Any]) -> None:
        """Call ``callback(metrics)`` (awaited if it returns an awaitable) after each
        round of monitoring; one that raises is logged."""
        self._callbacks.append(callback)

    async def check_host_health(self, host: Any) -> HostMetrics:
        """Check ``host`` (a ``cassandra.pool.Host``): a query sent to it, timed.

        Never raises for the host's sake: a failed check is ``HOST_STATUS_UNKNOWN``
        with ``last_error``; a host the driver sees down is ``HOST_STATUS_DOWN``
        without a query. Cancellation propagates.
        """
        up = bool(host.is_up)
        metrics = HostMetrics(
            address=str(host.address),
            datacenter=host.datacenter,
            rack=host.rack,
            status=HOST_STATUS_UP if up else HOST_STATUS_DOWN,
            release_version=host.release_version,
            connection_count=1 if up else 0,
            host_id=str(host.host_id) if host.host_id else None,
            status_changed=self._events.since(host),
        )
        if not up:
            return metrics
        began = time.perf_counter()
        try:
            with anyio.fail_after(HEALTH_CHECK_TIMEOUT):
                await self.session.execute(
                    SimpleStatement(HEALTH_CHECK, is_idempotent=True), host=host
                )
        except Exception as error:
            metrics.status = HOST_STATUS_UNKNOWN
            metrics.last_error = f"{type(error).__name__}: {error}"
            metrics.connection_count = 0
            logger.warning("health check of %s failed: %s", host.address, metrics.last_error)
        else:
            metrics.latency_ms = (time.perf_counter() - began) * 1000
        metrics.last_check = datetime.now(timezone.utc)
        return metrics

    async def get_cluster_metrics(self) -> ClusterMetrics:
        """Check every host, all at once (one task each, in a task group of this call);
        see :meth:`check_host_health`. Cancellation cancels every check and propagates;
        nothing else raises for a host's sake. Each check takes at most
        ``HEALTH_CHECK_TIMEOUT`` (5 s)."""
        hosts = list(self._cluster.metadata.all_hosts())
        results: list[HostMetrics | None] = [None] * len(hosts)

        async def check(index: int) -> None:
            results[index] = await self.check_host_health(hosts[index])

        async with anyio.create_task_group() as group:
            for index in range(len(hosts)):
                group.start_soon(check, index)
        checked = [r for r in results if r is not None]
        healthy = sum(h.status == HOST_STATUS_UP for h in checked)
        app = dict(self.metrics)
        app.update(
            requests_in_flight=self.session.requests_in_flight,
            requests_waiting=self.session.requests_waiting,
            host_downs_seen=self._events.downs,
            host_ups_seen=self._events.ups,
        )
        return ClusterMetrics(
            timestamp=datetime.now(timezone.utc),
            cluster_name=self._cluster.metadata.cluster_name,
            protocol_version=self._cluster.protocol_version,
            hosts=checked,
            total_connections=sum(h.connection_count for h in checked),
            healthy_hosts=healthy,
            unhealthy_hosts=len(checked) - healthy,
            app_metrics=app,
        )

    async def warmup_connections(self) -> None:
        """Send one query to each host that is up, one after the other, so that first
        requests find their connections ready; failures are logged, not raised.
        Cancellation stops it and propagates."""
        hosts = [h for h in self._cluster.metadata.all_hosts() if h.is_up]
        ok = 0
        for host in hosts:
            checked = await self.check_host_health(host)
            ok += checked.status == HOST_STATUS_UP
        logger.info("connection warm-up: %d of %d hosts answered", ok, len(hosts))

    def get_connection_summary(self) -> dict[str, Any]:
        """Hosts up and down as the driver sees them now (no I/O), with 0.0.1's keys."""
        hosts = list(self._cluster.metadata.all_hosts())
        up = sum(bool(h.is_up) for h in hosts)
        return {
            "total_hosts": len(hosts),
            "up_hosts": up,
            "down_hosts": len(hosts) - up,
            "protocol_version": self._cluster.protocol_version,
            "max_requests_per_connection": 32768,
            "note": "one connection per host (protocol v3+), up to 32768 requests each",
            "requests_in_flight": self.session.requests_in_flight,
        }

    async def start_monitoring(self, interval: float = 60) -> None:
        """Check every host every ``interval`` seconds until :meth:`stop_monitoring` or
        the end of the ``async with`` block. A second start while running is ignored
        (with a warning), as in 0.0.1. Returns at once (the checks run in the
        background: the monitor's task group, or outside one without ``async with``);
        raises :class:`ConfigurationError` for an ``interval`` that is not a number of
        seconds above 0. A round that fails is logged and the next one runs."""
        if isinstance(interval, bool) or not isinstance(interval, (int, float)) or interval <= 0:
            raise ConfigurationError(f"interval must be a number of seconds > 0, not {interval!r}")
        if self._scope is not None:
            logger.warning("monitoring is already running")
            return
        scope = self._scope = anyio.CancelScope()
        stopped = self._stopped = anyio.Event()
        self.session.add_observer(self)
        if self._group is not None:
            self._group.start_soon(self._monitor, interval, scope, stopped)
        else:
            self._detached = kit_for(current_token()).spawn_detached(
                lambda: self._monitor(interval, scope, stopped)
            )
        logger.info("monitoring every %g s", interval)

    async def stop_monitoring(self) -> None:
        """Stop the monitoring and wait until it has stopped (its current health
        checks are cancelled). Idempotent. The wait is shielded: cancelling the caller
        does not leave the monitoring half-stopped."""
        scope, stopped = self._scope, self._stopped
        if scope is None or stopped is None:
            return
        scope.cancel()
        with anyio.CancelScope(shield=True):
            await stopped.wait()

    async def _monitor(
        self, interval: float, scope: anyio.CancelScope, stopped: anyio.Event
    ) -> None:
        try:
            with scope:
                while True:
                    began = anyio.current_time()
                    try:
                        metrics = await self.get_cluster_metrics()
                        self.metrics["last_health_check"] = metrics.timestamp.isoformat()
                        if metrics.unhealthy_hosts:
                            logger.warning(
                                "%d of %d hosts unhealthy",
                                metrics.unhealthy_hosts,
                                len(metrics.hosts),
                            )
                        await self._run_callbacks(metrics)
                    except Exception:
                        logger.exception("a round of monitoring failed")
                    await anyio.sleep_until(began + interval)
        finally:
            self._scope = None
            self._detached = None
            self.session.remove_observer(self)
            stopped.set()

    async def _run_callbacks(self, metrics: ClusterMetrics) -> None:
        for callback in self._callbacks:
            try:
                outcome = callback(metrics)
                if inspect.isawaitable(outcome):
                    await outcome
            except Exception:
                logger.exception("monitoring callback %r failed", callback)

    # -- as a request observer (while monitoring) -----------------------------------------

    def request_started(self, request: ObservedRequest) -> None:
        self.metrics["requests_sent"] += 1

    def request_ended(self, request: ObservedRequest) -> None:
        if request.outcome == "ok":
            self.metrics["requests_completed"] += 1
        elif request.outcome == "error":
            self.metrics["requests_failed"] += 1

    # -- scope ---------------------------------------------------------------------------

    async def __aenter__(self) -> ConnectionMonitor:
        group = anyio.create_task_group()
        await group.__aenter__()
        self._group = group
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        group, self._group = self._group, None
        assert group is not None
        if self._scope is not None:
            self._scope.cancel()
        try:
            return await group.__aexit__(exc_type, exc, tb)
        finally:
            self._cluster.unregister_listener(self._events)

    def __del__(self) -> None:
        if getattr(self, "_detached", None) is not None:
            warnings.warn(
                "ConnectionMonitor dropped while monitoring: call `await "
                "monitor.stop_monitoring()`, or use `async with ConnectionMonitor(...)`",
                ResourceWarning,
                source=self,
                stacklevel=1,
            )


class RateLimitedSession:
    """``session`` with at most ``max_concurrent`` requests in flight (0.0.1's class).

    The bound is the session's own (:meth:`AsyncCassandraSession.set_max_concurrent_requests`):
    calls past it wait as an ``await`` in the session's one queue, on asyncio and trio,
    whoever makes them. ``execute`` takes :meth:`AsyncCassandraSession.execute`'s
    arguments; ``prepare`` is not limited; ``get_metrics()`` counts this wrapper's calls
    (``total_requests``, ``active_requests``, ``rejected_requests``: always 0, as
    nothing is refused). Other attributes are the session's.
    """

    def __init__(self, session: AsyncCassandraSession, max_concurrent: int = 1000) -> None:
        session.set_max_concurrent_requests(max_concurrent)
        self.session = session
        self.metrics = {"total_requests": 0, "active_requests": 0, "rejected_requests": 0}

    async def execute(self, query: Any, parameters: Any = None, **kwargs: Any) -> Any:
        """:meth:`AsyncCassandraSession.execute`, counted; it waits for an in-flight slot
        of the session's bound as any call does. Cancellation and errors as there."""
        self.metrics["total_requests"] += 1
        self.metrics["active_requests"] += 1
        try:
            return await self.session.execute(query, parameters, **kwargs)
        finally:
            self.metrics["active_requests"] -= 1

    async def prepare(self, query: str, *args: Any, **kwargs: Any) -> Any:
        """:meth:`AsyncCassandraSession.prepare`, not counted; cancellation and errors
        as there."""
        return await self.session.prepare(query, *args, **kwargs)

    def get_metrics(self) -> dict[str, int]:
        """A copy of this wrapper's counters (0.0.1's keys)."""
        return dict(self.metrics)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.session, name)


async def create_monitored_session(
    contact_points: list[str],
    keyspace: str | None = None,
    max_concurrent: int | None = None,
    warmup: bool = True,
    **cluster_options: Any,
) -> tuple[RateLimitedSession | AsyncCassandraSession, ConnectionMonitor]:
    """Connect a session (to ``contact_points``, in ``keyspace``), warm its connections
    up, and return it, wrapped in a :class:`RateLimitedSession` when ``max_concurrent``
    is given, with a :class:`ConnectionMonitor` of it (0.0.1's function).

    ``cluster_options`` go to :class:`~async_cassandra.AsyncCluster` (``port=``, ...).
    The session owns the cluster made for it: ``await session.close()`` shuts both
    down. Raises what :meth:`AsyncCluster.connect` raises (:class:`ConnectionError`,
    :class:`TimeoutError`, :class:`ConfigurationError`); then, or if cancelled while
    connecting, the cluster is shut down before the error propagates
    (tests/test_monitoring.py and examples/monitored_app.py show it in use).
    """
    cluster = AsyncCluster(contact_points, **cluster_options)
    try:
        session = await cluster.connect(keyspace)
    except BaseException:
        with anyio.CancelScope(shield=True):
            await cluster.shutdown()
        raise
    session._owned_cluster = cluster  # closed with the session
    monitor = ConnectionMonitor(session)
    if warmup:
        await monitor.warmup_connections()
    if max_concurrent:
        return RateLimitedSession(session, max_concurrent), monitor
    return session, monitor
