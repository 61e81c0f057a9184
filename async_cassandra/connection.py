"""Opt-in: the driver's connections served by the event loop's own thread.

    from async_cassandra import AsyncCluster
    from async_cassandra.connection import EventLoopConnection

    async with AsyncCluster(["127.0.0.1"], connection_class=EventLoopConnection) as cluster:
        ...

By default the driver reads and writes its sockets on a reactor thread of its own, and
every answer crosses from that thread into the event loop (a thread switch and a hand-off
of the GIL each time). With :class:`EventLoopConnection` the loop that calls
:meth:`AsyncCluster.connect` does that I/O itself, asyncio through its reader and writer
callbacks and trio through system tasks that wait for the socket, and the driver's
timers (request timeouts, speculative executions) are the loop's timers. Nothing
crosses threads on a request's path.

What it buys and what it costs (point reads against one local node, medians of
alternated rounds, ``tests/benchmarks/point_reads.py``; figures in the README): on a
machine whose cores are not busy with other work, more requests per second and less CPU
per request, because one thread does everything and no answer crosses threads; but one
thread is also all it gets, so beside other processes that keep the cores busy at the
same priority an earlier prototype of it served 0.7-0.8 times as many requests as the
default at 64 and 256 in flight, which spreads the work over two threads
(``docs/benchmarks/loop_io_vs_direct_busy.json``).

The rules that come with it:

* The connections belong to the loop that first connected the cluster (the cluster's
  first :meth:`~AsyncCluster.connect`). Other loops, in other threads, may use its
  sessions: their requests are handed to that loop. That loop must keep running until
  the cluster is shut down; once it has closed (asyncio) or its run has finished (trio),
  requests fail with :class:`~async_cassandra.ConnectionError` saying so, and
  :meth:`~AsyncCluster.shutdown` still works. So not for a cluster shared across
  per-test event loops (pytest-asyncio's default), nor across ``asyncio.run`` calls.
* Never blocks the loop: the driver opens connections on its own threads (connecting,
  reconnecting), and only those threads wait for a connection to be ready. A
  connection asked for on the loop's thread fails at once instead of waiting for the
  loop it blocks.
* A blocked loop stops the I/O too. The driver's blocking API
  (``session.driver_session.execute``, ``ResponseFuture.result()``) called on the
  loop's thread waits until the driver's heartbeat gives up on the connection (a
  minute or more with the driver's defaults), then fails with ``ConnectionShutdown``
  with every request on that connection; Ctrl-C does not interrupt it: the answer and
  the driver's timeout both need that loop. A loop held up for longer than a
  request's timeout may fail the requests then in flight with a timeout even when the
  server has answered (their timers and their answers wait for the loop alike).
* No TLS (``ssl_context`` / ``ssl_options``): :class:`AsyncCluster` raises
  :class:`~async_cassandra.ConfigurationError` for the pair.

Otherwise cancellation and deadlines behave as with the default connection: they act
on the ``await``, never on the socket.
"""

from __future__ import annotations

import threading
from typing import Any, ClassVar

from cassandra.connection import ConnectionException, ConnectionShutdown

from ._driver import KeepsPartialSegmentHeaders
from ._loop_reactor import LoopTimer, Reactor, call_on_loop, loop_gone

__all__ = ["EventLoopConnection"]

_UNBOUND = (
    "EventLoopConnection is served by an event loop, so it works only through "
    "AsyncCluster(..., connection_class=EventLoopConnection), which binds it to the loop "
    "that connects; a driver Cluster cannot use it"
)


class EventLoopConnection(KeepsPartialSegmentHeaders):
    """A driver connection (``cassandra.connection.Connection``) whose socket I/O and
    timers run on the event loop that connected the cluster. Pass it as
    ``AsyncCluster(..., connection_class=EventLoopConnection)``; see the module's
    documentation for what it changes and the rules that come with it.
    """

    # Set on the subclass that ``_loop_reactor.bind_to_running_loop`` makes for one
    # cluster.
    _reactor: ClassVar[Reactor | None] = None

    @classmethod
    def _bound_reactor(cls) -> Reactor:
        # The unbound class reaches the driver only through a driver Cluster.
        if cls._reactor is None:
            raise ConnectionException(_UNBOUND)
        return cls._reactor

    @classmethod
    def initialize_reactor(cls) -> None:
        # Called by the driver's Cluster.connect; the loop is the reactor.
        cls._bound_reactor()

    @classmethod
    def handle_fork(cls) -> None:
        pass  # nothing of the driver's runs in a thread for it

    @classmethod
    def create_timer(cls, timeout: float, callback: Any) -> LoopTimer:
        # Any thread: the driver arms a request's timer where it sends the request.
        return LoopTimer(timeout, callback, cls._bound_reactor())

    @classmethod
    def factory(cls, endpoint: Any, timeout: float, *args: Any, **kwargs: Any) -> Any:
        # The driver's factory waits (blocking) until the connection is ready, which
        # the loop makes it: on the loop's own thread that wait could never end.
        if threading.get_ident() == cls._bound_reactor().thread_id:
            raise ConnectionException(
                "a connection was asked for on the event loop's thread, which would "
                "block the loop that serves it (EventLoopConnection)",
                endpoint,
            )
        return super().factory(endpoint, timeout, *args, **kwargs)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # A driver thread (the factory refuses the loop's).
        reactor = self._bound_reactor()
        if reactor.gone:
            # The driver reconnects on a backoff for as long as the cluster lives:
            # each attempt would open a socket to the node only to close it.
            raise loop_gone("event loop")
        super().__init__(*args, **kwargs)
        if self.ssl_context is not None:
            raise ConnectionException(
                "EventLoopConnection does not do TLS; use the default connection_class "
                "with ssl_context",
                self.endpoint,
            )
        self._connect_socket()  # blocking, bounded by connect_timeout, on this thread
        self._socket.setblocking(False)
        self._loop_reactor: Reactor = reactor
        self._io = reactor.io_for(self)
        try:
            call_on_loop(reactor, self._io.start)
        except ConnectionShutdown:
            self._socket.close()
            raise
        self._send_options_message()

    @property
    def direct_writes(self) -> int:
        """Messages written to the socket as they were sent, not in the loop's next
        turn with the others of its turn: those of a request alone in flight on this
        connection (as with the default ``DirectWriteConnection``). For tests and
        introspection."""
        return self._io.direct_writes

    def push(self, data: bytes) -> None:
        # Any thread: the loop's (requests), other loops' threads and the driver's
        # (heartbeats, control queries). Each message is queued whole, in order per
        # thread, so messages never interleave on the wire.
        try:
            call_on_loop(self._loop_reactor, self._io.send, data)
        except ConnectionShutdown as gone:
            self.defunct(gone)

    def close(self) -> None:
        # Any thread.
        with self.lock:
            if self.is_closed:
                return
            self.is_closed: bool = True
        try:
            call_on_loop(self._loop_reactor, self._io.close)
        except ConnectionShutdown:
            self._socket.close()  # the loop is gone, and its readers with it
        if not self.is_defunct:
            # As the driver's connections do: no request is left waiting.
            self.error_all_requests(ConnectionShutdown(f"Connection to {self.endpoint} was closed"))

    def handle_readable(self) -> bool:
        """Read what the socket holds and hand complete messages to the driver. The
        loop's thread, when the socket is readable. False once the connection is
        closed (the reader stops)."""
        size = self.in_buffer_size
        buffer = self._iobuf
        got = False
        ended = False
        # Until a short read, as the driver's reactors do: one pass of the decoder for
        # all that is there. (A segment header cut by the end of a read is kept for the
        # next: see KeepsPartialSegmentHeaders; one recv per readable event made the
        # driver's decoder lose such headers often, "CRC mismatch on header" under load.)
        while True:
            try:
                chunk = self._socket.recv(size)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as error:
                self.defunct(error)
                return False
            if not chunk:
                ended = True
                break
            buffer.write(chunk)
            got = True
            if len(chunk) < size:
                break
        if got:
            try:
                self.process_io_buffer()
            except Exception as error:  # a corrupt frame: what the driver's reactors do
                self.defunct(error)
                return False
        if ended:
            closed = f"Connection to {self.endpoint} was closed by the server"
            self.defunct(ConnectionShutdown(closed))
            return False
        return not self.is_closed
