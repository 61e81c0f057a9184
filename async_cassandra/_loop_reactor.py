"""The event loop as the driver's reactor: socket I/O and timers of the opt-in
:class:`~async_cassandra.connection.EventLoopConnection`, for asyncio and for trio.

The driver's own reactors run on a thread of their own. Here the loop that connected the
cluster does the work: asyncio through ``add_reader`` / ``add_writer`` / ``call_at``;
trio, which has no callbacks on readiness, through two system tasks per connection (one
waits until the socket is readable, one writes what was queued in the last scheduler
batch) and one system task per cluster for the timers. Like ``_backends``, this is the
only place that knows the two backends apart for this feature.

Everything here runs on the loop's thread, except the entry points that say otherwise;
other threads reach the loop through :meth:`run_soon` (``call_soon_threadsafe``,
``TrioToken.run_sync_soon``), which raises ``ConnectionShutdown`` once the loop is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol, TypeVar, cast

from anyio.lowlevel import current_token
from cassandra.connection import ConnectionShutdown, Timer

from ._backends import ParkedTask, backend_of

try:  # trio is an optional extra
    import trio
except ImportError:  # pragma: no cover - exercised only without the extra
    trio = None  # type: ignore[assignment]

__all__ = [
    "ConnectionIO",
    "LoopTimer",
    "Reactor",
    "bind_to_running_loop",
    "close_reactor",
    "loop_gone_hint",
    "reactor_for_running_loop",
]

log = logging.getLogger(__name__)


class ReadyConnection(Protocol):
    """What the reactor needs of a connection (``EventLoopConnection``)."""

    _socket: Any
    endpoint: Any
    in_flight: int  # the driver's count of requests sent and not yet answered

    def handle_readable(self) -> bool: ...
    def defunct(self, exc: BaseException) -> Any: ...


def loop_gone(what: str) -> ConnectionShutdown:
    """The error of a connection whose loop has closed (or whose run has finished).
    What to do about it is :func:`loop_gone_hint`'s, which the library's errors carry."""
    return ConnectionShutdown(
        f"the {what} that served this connection is gone: a cluster made with "
        "connection_class=EventLoopConnection does its I/O on the event loop that "
        "connected it"
    )


class ConnectionIO(Protocol):
    """One connection's socket on the loop. Methods on the loop thread only."""

    # Messages written as they were sent (alone in flight, see alone_in_flight), not
    # in the loop's next turn: for tests and introspection.
    direct_writes: int

    def start(self) -> None: ...
    def send(self, data: bytes) -> None: ...
    def close(self) -> None: ...


class Reactor(Protocol):
    """The loop one cluster's connections and timers are served by."""

    thread_id: int
    # time.time() minus the loop's clock (see loop_time_of): the driver's timers end
    # at a time.time(), the loop's at a reading of its own clock.
    wall_minus_loop: float

    def clock(self) -> float:
        """The loop's clock, as ``call_at`` takes it. Loop thread."""
        ...

    @property
    def gone(self) -> bool:
        """Whether the loop has closed (asyncio) or its run has finished (trio)."""
        ...

    def run_soon(self, fn: Callable[..., None], *args: Any) -> None:
        """Call ``fn(*args)`` on the loop soon. Any thread, never blocking; raises
        ``ConnectionShutdown`` when the loop is gone."""
        ...

    def io_for(self, connection: ReadyConnection) -> ConnectionIO:
        """A (not yet started) I/O handle for ``connection``'s connected socket. Any
        thread."""
        ...

    def call_at(self, when: float, fn: Callable[[], None]) -> Any:
        """Call ``fn`` once the loop's clock reaches ``when``; returns a handle with
        ``cancel()``. Loop thread."""
        ...

    def close(self) -> None:
        """Stop what the reactor itself runs (trio's timer task). Loop thread."""
        ...


# A change of time.time() against the loop's clock larger than this is a step of the
# wall clock: NTP daemons step it only for larger errors (they slew it, and the loop's
# clock with it, for smaller ones), and so does a suspended machine or VM resuming.
_WALL_CLOCK_STEP = 0.1
# The two clocks are read between two readings of the loop's: closer than this, the
# offset read is true to within it (never a step), else it is not used.
_CLOCKS_READ_TOGETHER = 0.01


def loop_time_of(reactor: Reactor, end: float) -> float:
    """The reading of the loop's clock at which ``end``, a ``time.time()``, comes. Loop
    thread.

    Converted with one offset, read when the reactor was made, so timers keep exactly
    the driver's order (reading both clocks for each would jitter by microseconds); but
    read again, and kept, when the wall clock has stepped since: with the old offset
    every later timer would fire late by the step (a request timeout that never comes)
    or early by it (requests timed out before the server could answer). Timers already
    armed keep their time on the loop's clock, which does not step.
    """
    before = reactor.clock()
    wall = time.time()
    after = reactor.clock()
    offset = wall - before
    if abs(offset - reactor.wall_minus_loop) > _WALL_CLOCK_STEP and (
        after - before < _CLOCKS_READ_TOGETHER
    ):
        reactor.wall_minus_loop = offset
    return end - reactor.wall_minus_loop


def call_on_loop(reactor: Reactor, fn: Callable[..., None], *args: Any) -> None:
    """``fn(*args)`` now when on the loop's thread, else soon on it (see ``run_soon``).
    Raises ``ConnectionShutdown`` when the loop is gone."""
    if threading.get_ident() == reactor.thread_id:
        if reactor.gone:
            # The same thread may run a later loop (a second asyncio.run or trio.run):
            # that loop is not the one serving the connection.
            raise loop_gone("event loop")
        fn(*args)
    else:
        reactor.run_soon(fn, *args)


class LoopTimer(Timer):  # type: ignore[misc]
    """The driver's ``Timer`` (a request's timeout, a speculative execution), fired by
    the loop. Made on any thread; a timer made off the loop is armed when the loop gets
    to it, for what is left of its time."""

    def __init__(self, timeout: float, callback: Callable[[], None], reactor: Reactor) -> None:
        super().__init__(timeout, callback)
        self._reactor = reactor
        self._handle: Any = None
        # If the loop is gone, so is every connection the timer's request could use,
        # and the request fails for that reason.
        with contextlib.suppress(ConnectionShutdown):
            call_on_loop(reactor, self._arm)

    def _arm(self) -> None:
        if not self.canceled:
            reactor = self._reactor
            self._handle = reactor.call_at(loop_time_of(reactor, self.end), self._fire)

    def _fire(self) -> None:
        self._handle = None
        if self.canceled:
            return
        try:
            self.callback()
        except Exception:
            # Never into the loop: an error here would end a trio run.
            log.exception("a driver timer's callback failed")

    def cancel(self) -> None:
        # Any thread (the driver cancels a request's timer where its answer arrives,
        # which is the loop, or where it fails the connection's requests: a driver
        # thread). The flag is enough for _fire, which checks it; the loop's handle is
        # cancelled too, on the loop, because it holds the callback (and with it the
        # request and its answer) until the timer's time, 10 s by default.
        self.canceled = True
        reactor = self._reactor
        if threading.get_ident() == reactor.thread_id:
            # Nothing else to ask here (unlike call_on_loop): a handle of a loop that
            # is gone cancels harmlessly, and this runs for every request answered.
            self._drop_handle()
        else:
            with contextlib.suppress(ConnectionShutdown):  # gone: nothing is held then
                reactor.run_soon(self._drop_handle)

    def _drop_handle(self) -> None:
        handle, self._handle = self._handle, None
        if handle is not None:
            handle.cancel()


def alone_in_flight(connection: ReadyConnection) -> bool:
    """Whether a message queued now is better written at once than in the loop's next
    turn: its request is the connection's only one in flight (or it is no request: a
    heartbeat, the handshake). Waiting for the turn lets the messages of every task the
    turn resumes go out in one ``send``, which pays when requests answer in bursts; a
    lone request would only wait a turn (a poll of the selector) for nothing. The
    default connection class writes at once on the same condition (see
    ``_driver.DirectWriteConnection``)."""
    return connection.in_flight <= 1


def send_at_once(out: list[Any], sock: Any) -> None:
    """Send the one message ``out`` holds now, as far as the socket takes it; what it
    does not take stays in ``out``, and so does all of it on a socket error. That error
    is left for the writer's turn (:func:`send_queued`), as the default connection class
    leaves it to its reactor: failing the connection here would run every request's
    callback inside the driver's ``send_msg`` of the one being sent."""
    try:
        sent = sock.send(out[0])
    except OSError:
        return
    rest = memoryview(out[0])[sent:]
    if rest:
        out[0] = rest
    else:
        out.clear()


def send_queued(out: list[Any], sock: Any, connection: ReadyConnection) -> Any:
    """Send the messages queued in ``out`` (emptied) in one ``send``, as far as the socket
    takes them. Returns the rest (empty when all went), or None when the socket failed:
    the connection is then defunct, its requests failed."""
    data = out[0] if len(out) == 1 else b"".join(out)
    out.clear()
    try:
        sent = sock.send(data)
    except (BlockingIOError, InterruptedError):
        sent = 0
    except OSError as error:
        connection.defunct(error)
        return None
    return memoryview(data)[sent:]


# -- asyncio -------------------------------------------------------------------------


class _AsyncioReactor:
    __slots__ = ("_loop", "thread_id", "wall_minus_loop")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.thread_id = threading.get_ident()
        self.wall_minus_loop = time.time() - loop.time()

    def clock(self) -> float:
        return self._loop.time()

    @property
    def gone(self) -> bool:
        return self._loop.is_closed()

    def run_soon(self, fn: Callable[..., None], *args: Any) -> None:
        try:
            # Thread-safe by contract: queues the call and writes to the self-pipe.
            self._loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # "Event loop is closed"
            raise loop_gone("asyncio event loop") from None

    def io_for(self, connection: ReadyConnection) -> ConnectionIO:
        return _AsyncioIO(self._loop, connection)

    def call_at(self, when: float, fn: Callable[[], None]) -> Any:
        return self._loop.call_at(when, fn)

    def close(self) -> None:
        pass  # nothing of its own runs: the loop's timers and readers belong to the loop


class _AsyncioIO:
    """A socket served by an asyncio loop's reader and writer callbacks."""

    __slots__ = (
        "_closed",
        "_connection",
        "_fd",
        "_flushing",
        "_loop",
        "_out",
        "_socket",
        "_waiting_writable",
        "direct_writes",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop, connection: ReadyConnection) -> None:
        self._loop = loop
        self._connection = connection
        self._socket = connection._socket
        self._fd = self._socket.fileno()
        self._out: list[Any] = []
        # A flush is scheduled, or the socket was full and the writer callback waits
        # for it: either way what send() queues goes out with it.
        self._flushing = False
        self._waiting_writable = False  # a writer callback waits for the socket
        self._closed = False
        self.direct_writes = 0

    def start(self) -> None:
        if not self._closed:
            self._loop.add_reader(self._fd, self._connection.handle_readable)

    def send(self, data: bytes) -> None:
        if self._closed:
            return  # the connection's requests were failed when it closed
        self._out.append(data)
        if self._flushing:
            return  # goes out with what the scheduled flush (or writer) sends
        if alone_in_flight(self._connection):
            self.direct_writes += 1
            send_at_once(self._out, self._socket)
            if not self._out:
                return
        self._flushing = True
        # Written after the current turn's other callbacks: every message the tasks
        # resumed in this turn send goes out in one send() (and a lone message's rest,
        # or its error, is met there).
        self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        if self._closed:
            return
        rest = send_queued(self._out, self._socket, self._connection)
        if rest is None:
            return
        if rest:
            self._out.append(rest)
            if not self._waiting_writable:
                self._waiting_writable = True
                self._loop.add_writer(self._fd, self._flush)
            return
        if self._waiting_writable:
            self._waiting_writable = False
            self._loop.remove_writer(self._fd)
        self._flushing = False

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._out.clear()
        self._loop.remove_reader(self._fd)
        self._loop.remove_writer(self._fd)
        self._socket.close()


# -- trio ------------------------------------------------------------------------------


class _TrioTimerHandle:
    __slots__ = ("_reactor", "cancelled", "fn")

    def __init__(self, fn: Callable[[], None], reactor: _TrioReactor) -> None:
        self.fn: Callable[[], None] | None = fn
        self._reactor = reactor
        self.cancelled = False

    def cancel(self) -> None:
        if not self.cancelled:
            self.cancelled = True
            # Let go of the callback now (a request's timer holds its future, and with
            # it the answer), not when the heap drops the handle: held that long,
            # every request's objects outlived two collections, and full collections
            # came 10-20 times as often (loop lag p99 10-30 ms at 64 in flight).
            self.fn = None
            self._reactor.timer_cancelled()


class _TrioReactor:
    """A trio run as a reactor: ``run_sync_soon`` in, and a system task for timers."""

    # A heap holding more cancelled timers than this, and more than live ones, is
    # rebuilt: every request arms a timer (its timeout, 10 s by default) and nearly all
    # are cancelled long before they are due.
    _COMPACT_AFTER = 256

    def __init__(self, token: Any) -> None:
        self._token = token
        self.thread_id = threading.get_ident()
        self.wall_minus_loop = time.time() - trio.current_time()
        self._gone = False
        self._timers: list[tuple[float, int, _TrioTimerHandle]] = []
        self._order = itertools.count()  # ties: first armed, first fired
        self._cancelled = 0
        self._timer_scope: Any = None
        self._closed = False
        trio.lowlevel.spawn_system_task(self._run_timers, name="async-cassandra timers")

    def clock(self) -> float:
        return float(trio.current_time())

    def run_soon(self, fn: Callable[..., None], *args: Any) -> None:
        try:
            # Documented as safe from any thread, never blocking.
            self._token.run_sync_soon(fn, *args)
        except trio.RunFinishedError:
            self._gone = True
            raise loop_gone("trio run") from None

    @property
    def gone(self) -> bool:
        return self._gone

    def io_for(self, connection: ReadyConnection) -> ConnectionIO:
        return _TrioIO(connection)

    def call_at(self, when: float, fn: Callable[[], None]) -> Any:
        handle = _TrioTimerHandle(fn, self)
        heapq.heappush(self._timers, (when, next(self._order), handle))
        scope = self._timer_scope
        if scope is not None and when < scope.deadline:
            scope.deadline = when  # wakes the timer task earlier
        return handle

    def timer_cancelled(self) -> None:
        self._cancelled += 1
        timers = self._timers
        if self._cancelled > self._COMPACT_AFTER and self._cancelled * 2 > len(timers):
            timers[:] = [entry for entry in timers if not entry[2].cancelled]
            heapq.heapify(timers)
            self._cancelled = 0

    async def _run_timers(self) -> None:
        # A system task: it must never raise but Cancelled (at the end of the run).
        try:
            await self._fire_timers()
        except trio.Cancelled:
            self._gone = True  # the run is ending; close() ends this task without this
            raise

    async def _fire_timers(self) -> None:
        timers = self._timers
        while not self._closed:
            with trio.CancelScope(deadline=timers[0][0] if timers else math.inf) as scope:
                self._timer_scope = scope
                await trio.sleep_forever()
            self._timer_scope = None
            now = trio.current_time()
            while timers and timers[0][0] <= now:
                _, _, handle = heapq.heappop(timers)
                if handle.cancelled:
                    self._cancelled -= 1
                    continue
                fn, handle.fn = handle.fn, None
                handle.cancelled = True  # fired: a later cancel() counts nothing
                if fn is not None:
                    fn()  # LoopTimer._fire: catches its own errors

    def close(self) -> None:
        self._closed = True
        self._timers.clear()
        if self._timer_scope is not None:
            self._timer_scope.cancel()


class _TrioIO:
    """A socket served by two trio system tasks: a reader and a writer."""

    def __init__(self, connection: ReadyConnection) -> None:
        self._connection = connection
        self._socket = connection._socket
        self._out: list[Any] = []
        self._writer = ParkedTask()  # parked while nothing is queued
        self._scopes = (trio.CancelScope(), trio.CancelScope())
        self._closed = False
        self.direct_writes = 0

    def start(self) -> None:
        if self._closed:
            return
        name = f"async-cassandra connection to {self._connection.endpoint}"
        trio.lowlevel.spawn_system_task(self._read, name=name + " (reader)")
        trio.lowlevel.spawn_system_task(self._write, name=name + " (writer)")

    def send(self, data: bytes) -> None:
        if self._closed:
            return  # the connection's requests were failed when it closed
        self._out.append(data)
        if not self._writer.parked:
            return  # the writer is at work, and sends this after what it holds
        if alone_in_flight(self._connection):
            self.direct_writes += 1
            send_at_once(self._out, self._socket)
            if not self._out:
                return  # all sent: the writer stays parked
        # Runs in the next scheduler batch, after the tasks of this one: what they all
        # send goes out in one send() (and a lone message's rest, or its error).
        self._writer.wake()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._out.clear()
        for scope in self._scopes:
            scope.cancel()
        trio.lowlevel.notify_closing(self._socket)
        self._socket.close()

    async def _read(self) -> None:
        connection = self._connection
        try:
            with self._scopes[0]:
                # Checked before each wait: trio registers the socket's descriptor with
                # its selector before it looks at the cancellation, and a socket closed
                # before this task first ran (close() right after start(), as the
                # driver's factory does when a connection is not ready in time) has
                # none: ValueError, which would end the whole run.
                while not self._closed:
                    await trio.lowlevel.wait_readable(self._socket)
                    if not connection.handle_readable():
                        return
        except trio.Cancelled:
            self._lost_the_run()
            raise
        except (trio.ClosedResourceError, OSError):
            return  # closed by close(), which said why

    async def _write(self) -> None:
        out = self._out
        try:
            with self._scopes[1]:
                while not self._closed:  # see _read
                    if not out:
                        await self._writer.park()
                        continue  # woken by send(): look at _closed again first
                    rest = send_queued(out, self._socket, self._connection)
                    if rest is None:
                        return
                    if rest:
                        # Ahead of what is queued while the socket drains.
                        out.append(rest)
                        await trio.lowlevel.wait_writable(self._socket)
        except trio.Cancelled:
            self._lost_the_run()
            raise
        except (trio.ClosedResourceError, OSError):
            return

    def _lost_the_run(self) -> None:
        # Cancelled from outside our scopes: the run is ending with the connection open.
        if not self._closed:
            self._connection.defunct(loop_gone("trio run"))


def reactor_for_running_loop() -> Reactor:
    """A reactor on the running event loop (asyncio or trio). Loop thread."""
    native = current_token().native_token
    if backend_of(native) == "asyncio":
        return _AsyncioReactor(native)  # type: ignore[arg-type]
    return _TrioReactor(native)


_Class = TypeVar("_Class", bound=type)


def bind_to_running_loop(connection_class: _Class) -> _Class:
    """A subclass of ``connection_class`` (an ``EventLoopConnection``) served by the
    running event loop, for one cluster. Loop thread."""
    reactor = reactor_for_running_loop()
    return cast(_Class, type(connection_class.__name__, (connection_class,), {"_reactor": reactor}))


def loop_gone_hint(cluster: Any) -> str | None:
    """What to do when ``cluster`` (a driver ``Cluster``) failed a request because the
    event loop serving its connections is gone; None for any other cluster."""
    reactor: Reactor | None = getattr(cluster.connection_class, "_reactor", None)
    if reactor is None or not reactor.gone:
        return None
    return (
        "This cluster's connections (connection_class=EventLoopConnection) were served "
        "by the event loop that connected it, which has closed or finished: keep that "
        "loop running until the cluster is shut down, or use the default "
        "connection_class, whose I/O does not depend on any loop"
    )


def close_reactor(bound: type) -> None:
    """Stop what the reactor of a class made by :func:`bind_to_running_loop` runs of
    its own; after the cluster's connections are closed. Any thread; nothing to do
    when the loop is gone."""
    reactor: Reactor | None = getattr(bound, "_reactor", None)
    if reactor is None:
        return
    with contextlib.suppress(ConnectionShutdown):
        call_on_loop(reactor, reactor.close)
