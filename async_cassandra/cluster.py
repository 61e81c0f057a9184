"""The cluster: :class:`AsyncCluster`."""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Any

import anyio
import anyio.lowlevel
import cassandra.cluster
from cassandra.auth import PlainTextAuthProvider
from cassandra.cluster import EXEC_PROFILE_DEFAULT
from cassandra.cluster import Cluster as DriverCluster
from cassandra.policies import ExponentialReconnectionPolicy

from . import _driver
from ._loop_reactor import bind_to_running_loop, close_reactor, loop_gone_hint
from ._observing import checked_observers
from ._offloop import OffLoopCalls
from ._resources import CLOSE_TIMEOUT, SessionResources, close_in_exit, close_within
from .connection import EventLoopConnection
from .constants import DEFAULT_CONNECTION_TIMEOUT
from .exceptions import (
    AuthenticationError,
    ConfigurationError,
    ConnectionError,
    ConnectTimeoutError,
    QueryError,
    TimeoutError,
    category_of,
    translate_driver_error,
)
from .retry_policy import AsyncRetryPolicy
from .session import AsyncCassandraSession, check_keyspace_name, open_session

__all__ = ["AsyncCluster"]

MIN_PROTOCOL_VERSION = 5
# The default reconnection schedule, in seconds: from 1 s, doubling, at most 60 s apart.
DEFAULT_RECONNECT_BASE_DELAY = 1.0
DEFAULT_RECONNECT_MAX_DELAY = 60.0


# Set in the thread that runs our driver calls whose warnings we expect and handle.
_quiet = threading.local()

# Driver warnings about what AsyncCluster does on purpose:
# - negotiating the protocol (the default; we check the result is v5+) logs two
#   "Downgrading core protocol version" warnings per connect to Cassandra, as the driver
#   starts from the DataStax Enterprise versions (66, 65);
# - a cluster with contact points but no explicit load-balancing policy logs a warning
#   about the driver's next major version. Passing the policy explicitly would lock the
#   driver into its legacy configuration mode (no execution profiles) or its profiles
#   mode (no `session.row_factory = ...`); the driver's own default keeps both working.
_EXPECTED_WARNINGS = (
    "Downgrading core protocol version",
    "Cluster.__init__ called with contact_points specified, but no load_balancing_policy",
)


class _QuietExpectedWarnings(logging.Filter):
    """Drops those warnings, and only when logged by our own calls into the driver."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (
            getattr(_quiet, "active", False) and str(record.msg).startswith(_EXPECTED_WARNINGS)
        )


logging.getLogger("cassandra.cluster").addFilter(_QuietExpectedWarnings())


@contextmanager
def _expected_driver_warnings() -> Iterator[None]:
    _quiet.active = True
    try:
        yield
    finally:
        _quiet.active = False


def _protocol_error(version: int, *, negotiated: bool) -> ConfigurationError:
    # The first sentence is the one users of async-cassandra 0.0.1 know.
    if negotiated:
        how = (
            f"The server speaks CQL protocol v{version} at most (negotiated v{version}); "
            "upgrade it to Cassandra 4.0 or later."
        )
    else:
        how = "Leave protocol_version unset to negotiate, or set it to 5."
    return ConfigurationError(
        f"Protocol version {version} is not supported. async-cassandra requires CQL "
        f"protocol v{MIN_PROTOCOL_VERSION} or higher (Cassandra 4.0+). {how}"
    )


def _check_options(
    *,
    contact_points: Any,
    port: Any,
    executor_threads: Any,
    max_concurrent_requests: Any,
    seconds: dict[str, Any],
) -> None:
    """Refuse, in the constructor, options the driver would only trip over in connect()
    (or never: it iterates a str of contact points letter by letter)."""

    def is_int(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    if contact_points is not None and (
        isinstance(contact_points, (str, bytes))
        or not all(isinstance(point, str) for point in contact_points)
    ):
        raise ConfigurationError(
            f"contact_points must be a list of host names or addresses, such as "
            f"['127.0.0.1'], not {contact_points!r}"
        )
    if not is_int(port) or not 0 < port < 65536:
        raise ConfigurationError(f"port must be an int from 1 to 65535, not {port!r}")
    if not is_int(executor_threads) or executor_threads < 1:
        raise ConfigurationError(
            f"executor_threads must be an int of at least 1, not {executor_threads!r}"
        )
    if max_concurrent_requests is not None and (
        not is_int(max_concurrent_requests) or max_concurrent_requests < 1
    ):
        raise ConfigurationError(
            "max_concurrent_requests must be an int of at least 1 (requests in flight per "
            f"session), or None for the default; not {max_concurrent_requests!r}"
        )
    for name, value in seconds.items():
        if value is None and name in ("control_connection_timeout", "connect_timeout"):
            continue  # the driver's "no timeout"
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ConfigurationError(f"{name} must be a number of seconds (>= 0), not {value!r}")
    if seconds["connect_timeout"] == 0:
        raise ConfigurationError("connect_timeout must be more than 0 seconds, or None")


class AsyncCluster:
    """A Cassandra cluster to connect to, for async code (asyncio or trio).

    Takes the driver ``Cluster``'s keywords (``connect_timeout``,
    ``execution_profiles``, ``compression``, ...) and passes every one through; the
    positional order is async-cassandra 0.0.1's. Creating it does no I/O; :meth:`connect`
    does. Use it as ``async with AsyncCluster([...]) as cluster``, or call
    :meth:`shutdown` yourself.

    ``max_concurrent_requests``: requests in flight per session (default 1024 per
    connected host); more wait as an ``await``. ``observers``: request observers every
    session connected here starts with (see :mod:`async_cassandra.observers`; the
    metrics middleware and the OpenTelemetry instrumentation are observers).

    Defaults that differ from the driver's: the retry policy is
    :class:`~async_cassandra.AsyncRetryPolicy`, which never runs a statement that is not
    marked idempotent twice (given no ``retry_policy`` and no ``execution_profiles``
    entry for ``EXEC_PROFILE_DEFAULT``; yours are left alone), and a lost host is
    reconnected to at exponentially growing intervals of at most 60 s, for ever (the
    driver's reach 600 s); pass ``reconnection_policy`` to choose another. Where the
    driver's default ``connection_class`` is its libev connection, the library's
    subclass of it is used instead: a request alone on its connection is written by
    the sending thread (the event loop's) rather than by waking the driver's reactor
    thread to write it, which made point reads at one request in flight 1.04-1.2x as
    fast here, and a request made while a large message is still being written waits
    its turn instead of being refused as "overloaded" (which with the driver's
    connection lost a stream id each time); pass ``connection_class`` to keep the
    driver's. ``connection_class=EventLoopConnection`` (from
    :mod:`async_cassandra.connection`, opt-in) does the driver's socket I/O and timers on
    the event loop of the first :meth:`connect` instead of a thread of the driver's;
    that loop must then run until the cluster is shut down (see that module).

    Raises :class:`ConfigurationError`, before any I/O, for an unknown keyword, a
    ``protocol_version`` below 5, and an option of the wrong type or out of range
    (contact points given as one string, a port outside 1-65535, no executor threads,
    a ``max_concurrent_requests`` below 1, a negative number of seconds), and for
    ``EventLoopConnection`` with TLS.
    """

    def __init__(
        self,
        contact_points: list[str] | None = None,
        port: int = 9042,
        auth_provider: Any = None,
        load_balancing_policy: Any = None,
        reconnection_policy: Any = None,
        retry_policy: Any = None,
        ssl_context: Any = None,
        protocol_version: int | None = None,
        executor_threads: int = 2,
        max_schema_agreement_wait: int = 10,
        control_connection_timeout: float = 2.0,
        idle_heartbeat_interval: float = 30.0,
        schema_event_refresh_window: float = 2.0,
        topology_event_refresh_window: float = 10.0,
        status_event_refresh_window: float = 2.0,
        connect_timeout: float = 10.0,
        *,
        max_concurrent_requests: int | None = None,
        observers: Iterable[Any] = (),
        **driver_kwargs: Any,
    ) -> None:
        if protocol_version is not None and protocol_version < MIN_PROTOCOL_VERSION:
            raise _protocol_error(protocol_version, negotiated=False)
        _check_options(
            contact_points=contact_points,
            port=port,
            executor_threads=executor_threads,
            max_concurrent_requests=max_concurrent_requests,
            seconds={
                "max_schema_agreement_wait": max_schema_agreement_wait,
                "control_connection_timeout": control_connection_timeout,
                "idle_heartbeat_interval": idle_heartbeat_interval,
                "schema_event_refresh_window": schema_event_refresh_window,
                "topology_event_refresh_window": topology_event_refresh_window,
                "status_event_refresh_window": status_event_refresh_window,
                "connect_timeout": connect_timeout,
            },
        )
        observing = checked_observers(observers)
        options: dict[str, Any] = {
            "contact_points": contact_points if contact_points is not None else ["127.0.0.1"],
            "port": port,
            "executor_threads": executor_threads,
            "max_schema_agreement_wait": max_schema_agreement_wait,
            "control_connection_timeout": control_connection_timeout,
            "idle_heartbeat_interval": idle_heartbeat_interval,
            "schema_event_refresh_window": schema_event_refresh_window,
            "topology_event_refresh_window": topology_event_refresh_window,
            "status_event_refresh_window": status_event_refresh_window,
            "connect_timeout": connect_timeout,
        }
        if reconnection_policy is None:
            # The driver's default backs off to 600 s: after an outage an application
            # could wait ten minutes for a cluster that is back. Retried for ever.
            reconnection_policy = ExponentialReconnectionPolicy(
                DEFAULT_RECONNECT_BASE_DELAY, DEFAULT_RECONNECT_MAX_DELAY, max_attempts=None
            )
        # Pass only what was given: the driver tells "unset" from None for several.
        for name, value in (
            ("auth_provider", auth_provider),
            ("load_balancing_policy", load_balancing_policy),
            ("reconnection_policy", reconnection_policy),
            ("default_retry_policy", retry_policy),
            ("ssl_context", ssl_context),
            ("protocol_version", protocol_version),
        ):
            if value is not None:
                options[name] = value
        options.update(driver_kwargs)
        chosen = options.get("connection_class")
        # Bound to the loop of the first connect() (see async_cassandra.connection).
        self._loop_io_class: type[EventLoopConnection] | None = (
            chosen if isinstance(chosen, type) and issubclass(chosen, EventLoopConnection) else None
        )
        self._loop_io_bound: type[EventLoopConnection] | None = None
        if self._loop_io_class is not None and (
            options.get("ssl_context") is not None or options.get("ssl_options")
        ):
            raise ConfigurationError(
                "connection_class=EventLoopConnection does not do TLS: drop ssl_context / "
                "ssl_options, or connection_class (the default connection does TLS)"
            )
        if "connection_class" not in options:
            # The driver's libev connection, writing a lone request from the sending
            # thread (see _driver.DirectWriteConnection); None keeps the driver's choice.
            connection_class = _driver.default_connection_class()
            if connection_class is not None:
                options["connection_class"] = connection_class
        try:
            # No I/O: the driver only records its configuration here.
            with _expected_driver_warnings():
                self._cluster = DriverCluster(**options)
        except TypeError as error:
            raise ConfigurationError(f"invalid AsyncCluster option: {error}") from error
        except Exception as error:
            raise translate_driver_error(error)  # noqa: B904 - the cause is set inside
        profiles = driver_kwargs.get("execution_profiles") or {}
        if retry_policy is None and EXEC_PROFILE_DEFAULT not in profiles:
            # Neither a policy nor a default profile of the user's: ours, which never
            # runs a write twice (the driver's retries any request error on the next
            # host). A user's profiles keep their own.
            _driver.use_default_retry_policy(self._cluster, AsyncRetryPolicy())
        self._max_concurrent_requests = max_concurrent_requests
        self._observers = observing
        self._closed = False
        self._close_lock = threading.Lock()
        # What shutdown() must close of each session made here (see _resources).
        self._sessions: weakref.WeakSet[SessionResources] = weakref.WeakSet()
        self._offloop = OffLoopCalls()

    @classmethod
    def create_with_auth(
        cls,
        contact_points: list[str] | None = None,
        username: str | None = None,
        password: str | None = None,
        **kwargs: Any,
    ) -> AsyncCluster:
        """An :class:`AsyncCluster` that logs in with a username and password."""
        if not username or password is None:
            raise ConfigurationError("create_with_auth needs both a username and a password")
        return cls(
            contact_points=contact_points,
            auth_provider=PlainTextAuthProvider(username=username, password=password),
            **kwargs,
        )

    # -- state -----------------------------------------------------------------------

    @property
    def driver_cluster(self) -> DriverCluster:
        """The wrapped ``cassandra.cluster.Cluster``."""
        return self._cluster

    @property
    def is_closed(self) -> bool:
        return self._closed

    @property
    def metadata(self) -> Any:
        """The driver's cluster metadata (hosts, keyspaces, tables)."""
        return self._cluster.metadata

    @property
    def protocol_version(self) -> int:
        """The CQL protocol version in use (negotiated once connected)."""
        return self._cluster.protocol_version  # type: ignore[no-any-return]

    async def refresh_schema_metadata(self, max_schema_agreement_wait: float | None = None) -> None:
        """Re-read the whole schema into :attr:`metadata` now, off the event loop.

        The driver refreshes metadata after schema changes it is told about, debounced
        by ``schema_event_refresh_window``; call this when you need a change (say, one
        made by another client) visible at once. Cancellation abandons the worker
        thread, which finishes the refresh by itself (:meth:`shutdown` waits for it).
        """
        await anyio.lowlevel.checkpoint_if_cancelled()  # a cancelled scope sends nothing
        try:
            await self._offloop.run(
                self._cluster.refresh_schema_metadata, max_schema_agreement_wait
            )
        except Exception as error:
            raise translate_driver_error(error)  # noqa: B904 - the cause is set inside

    def register_user_type(self, keyspace: str, user_type: str, klass: type) -> None:
        """Map a CQL user-defined type to a Python class (the driver's method).

        The type must be in :attr:`metadata`: after creating it from another client,
        ``await refresh_schema_metadata()`` first. Raises :class:`QueryError` for an
        unknown type or keyspace.
        """
        try:
            self._cluster.register_user_type(keyspace, user_type, klass)
        except Exception as error:
            raise translate_driver_error(error)  # noqa: B904 - the cause is set inside

    # -- connecting ------------------------------------------------------------------

    async def connect(
        self, keyspace: str | None = None, timeout: float | None = None
    ) -> AsyncCassandraSession:
        """Connect and return a session (bound to ``keyspace`` if given).

        The driver's connect blocks, so it runs in a worker thread; the event loop
        stays free. Bounded by ``timeout`` seconds (default 30, as in 0.0.1; each connection attempt
        is also bounded by the driver's ``connect_timeout``). Cancellation returns at
        once; a connection that completes afterwards is closed by the worker, and
        :meth:`shutdown` waits for that worker.

        Raises :class:`ConnectionError` (no host reachable, cluster shut down),
        :class:`ConnectTimeoutError` (no answer in time: both a :class:`TimeoutError`
        and a :class:`ConnectionError`), :class:`AuthenticationError`,
        :class:`QueryError` (unknown keyspace; an invalid keyspace name, before any
        I/O), :class:`ConfigurationError` (a server that only speaks protocol v4 or
        lower).
        """
        if self._closed:
            raise ConnectionError(
                "this cluster is shut down; create a new AsyncCluster to connect again"
            )
        if keyspace is not None:
            check_keyspace_name(keyspace)
        abandoned = threading.Event()

        def connect_in_thread() -> cassandra.cluster.Session:
            with _expected_driver_warnings():
                session = self._cluster.connect(keyspace)
            if abandoned.is_set():
                # Nobody awaits this session any more: close it here, in the worker,
                # rather than leaving open connections behind.
                session.shutdown()
            return session

        # Connecting does several round trips per host plus schema reads; a bound keeps a
        # forgotten firewall rule from hanging start-up forever.
        limit = timeout if timeout is not None else DEFAULT_CONNECTION_TIMEOUT
        await anyio.lowlevel.checkpoint_if_cancelled()  # a cancelled scope connects nothing
        if self._loop_io_class is not None and self._loop_io_bound is None:
            # Before the driver makes its first connection: this loop serves them all.
            self._loop_io_bound = bind_to_running_loop(self._loop_io_class)
            self._cluster.connection_class = self._loop_io_bound
        try:
            with anyio.move_on_after(limit) as scope:
                try:
                    driver_session = await self._offloop.run(connect_in_thread)
                except BaseException:
                    abandoned.set()
                    raise
        except Exception as error:
            raise translate_driver_error(error, hint=self._connect_hint(error))  # noqa: B904
        if scope.cancelled_caught:
            raise ConnectTimeoutError(
                f"connecting to {self._contact_points()} did not finish within {limit:g} s "
                "(connect(timeout=...)); check that Cassandra is running and answering "
                "there, and that the TLS settings (ssl_context) match the server's"
            )
        negotiated = self._cluster.protocol_version
        if negotiated < MIN_PROTOCOL_VERSION:
            # The driver negotiated down to what an old server speaks. Not retried:
            # no retry makes the server newer.
            await self.shutdown()
            raise _protocol_error(negotiated, negotiated=True)
        session, resources = open_session(
            driver_session,
            max_concurrent_requests=self._max_concurrent_requests,
            observers=self._observers,
        )
        self._sessions.add(resources)
        return session

    def _connect_hint(self, error: BaseException) -> str | None:
        if not isinstance(error, cassandra.cluster.NoHostAvailable):
            return None
        gone = loop_gone_hint(self._cluster)
        if gone is not None:
            return gone
        category = category_of(error)
        if category is QueryError:
            return (
                "Check that the keyspace exists (CREATE KEYSPACE first, or connect "
                "without one and create it)"
            )
        if category is ConfigurationError:
            return (
                f"The server does not speak CQL protocol v{self._cluster.protocol_version}: "
                f"async-cassandra requires protocol v{MIN_PROTOCOL_VERSION} or higher, "
                "which Cassandra 4.0 and later speak"
            )
        if category is AuthenticationError:
            return "Check the username and password (AsyncCluster.create_with_auth)"
        if category is ConnectTimeoutError:
            return (
                f"No answer from {self._contact_points()} within the driver's "
                f"connect_timeout ({self._cluster.connect_timeout:g} s): check that "
                "Cassandra is running and answering there, and that the TLS settings "
                "(ssl_context) match the server's"
            )
        return (
            f"Could not connect to {self._contact_points()}: check that Cassandra is "
            "running and listening there, and that the credentials and TLS settings "
            "(ssl_context) match the server's"
        )

    def _contact_points(self) -> str:
        return ", ".join(f"{h}:{self._cluster.port}" for h in self._cluster.contact_points)

    # -- closing ---------------------------------------------------------------------

    async def shutdown(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """Close every session and connection of this cluster. Idempotent.

        Shielded from cancellation and off the event loop (the driver's shutdown
        blocks while it joins its threads). Works from any loop, also after the loop
        that created the cluster has closed. Waits for the worker threads the cluster
        and its sessions started (a connect or prepare abandoned by a cancelled
        caller), ``timeout`` seconds at most in all; past that it raises
        :class:`TimeoutError` and the rest goes on in its threads (``async with``
        logs this instead when another exception is already leaving the block).
        """
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        sessions = list(self._sessions)
        for resources in sessions:
            # The driver's cluster shutdown closes the driver sessions; mark ours.
            resources.mark_closed()
        finished = await close_within(
            timeout,
            self._offloop,
            self._cluster.shutdown,
            "cluster shutdown",
            also_wait=[resources.offloop for resources in sessions],
        )
        if finished and self._loop_io_bound is not None:
            close_reactor(self._loop_io_bound)  # its connections are closed now
        if not finished:
            raise TimeoutError(
                f"shutting down the cluster did not finish within {timeout:g} s; the "
                "driver's shutdown goes on in a worker thread"
            )

    async def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """The same as :meth:`shutdown` (async-cassandra 0.0.1 has both names)."""
        await self.shutdown(timeout)

    async def __aenter__(self) -> AsyncCluster:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await close_in_exit(self.shutdown, exc)

    def __repr__(self) -> str:
        state = "shut down" if self._closed else "open"
        return f"<AsyncCluster contact_points={self._cluster.contact_points!r} {state}>"
