"""A request alone on its connection is written by the thread that sends it (the event
loop's), not handed to the driver's reactor thread; everything else still goes through
the reactor's queue, and the bytes on the wire stay in order. See
``_driver.DirectWriteConnection`` for why, and for the measurements.

The write decision is checked case by case on a connection over a socket pair (no
server needed: only where the bytes go is in question); then, against a real node on
both backends, that requests use it, that a message larger than the socket takes
arrives whole, and that loops in several threads writing at once get the right rows.
"""

from __future__ import annotations

import socket
import threading
import time
from collections import deque
from collections.abc import Iterator
from typing import Any

import anyio
import pytest
from _helpers import (
    a_large_message_and_those_behind_it_arrive_whole,
    pool_connections,
)
from cassandra.cluster import DefaultConnection
from cassandra.connection import Timer, TimerManager

from async_cassandra import AsyncCassandraSession, AsyncCluster
from async_cassandra._driver import DirectWriteConnection, a_new_timer_is_due


def on_socket(sock: Any, in_flight: int = 1) -> DirectWriteConnection:
    """A DirectWriteConnection writing to ``sock``, with only the state its writing
    uses (built without ``__init__``, which would connect to a node)."""
    DirectWriteConnection.initialize_reactor()  # the driver's reactor, which queues wake
    connection: DirectWriteConnection = DirectWriteConnection.__new__(DirectWriteConnection)
    connection.deque = deque()
    connection._deque_lock = threading.Lock()
    connection._socket = sock
    connection._direct_writes_allowed = True
    connection.direct_writes = 0
    connection.in_flight = in_flight
    return connection


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    ours, peer = socket.socketpair()
    ours.setblocking(False)
    peer.setblocking(False)
    yield ours, peer
    ours.close()
    peer.close()


def received(peer: socket.socket) -> bytes:
    chunks: list[bytes] = []
    while True:
        try:
            chunk = peer.recv(1 << 20)
        except BlockingIOError:
            return b"".join(chunks)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def test_alone_on_its_connection_a_message_is_written_at_once(pair: Any) -> None:
    ours, peer = pair
    connection = on_socket(ours, in_flight=1)
    connection.push(b"request")
    assert received(peer) == b"request"
    assert list(connection.deque) == []
    assert connection.direct_writes == 1


@pytest.mark.parametrize(
    "situation", ["others in flight", "something queued", "reactor writing", "TLS"]
)
def test_otherwise_it_goes_to_the_reactor_queue(pair: Any, situation: str) -> None:
    ours, peer = pair
    connection = on_socket(ours, in_flight=2 if situation == "others in flight" else 1)
    if situation == "something queued":
        connection.deque.append(b"earlier")
    connection._reactor_writing = situation == "reactor writing"
    connection._direct_writes_allowed = situation != "TLS"
    connection.push(b"request")
    assert received(peer) == b""
    assert list(connection.deque)[-1] == b"request"
    assert connection.direct_writes == 0


def test_a_new_timer_that_is_due_is_seen() -> None:
    timers = TimerManager()
    now = time.time()
    assert not a_new_timer_is_due(timers, now)
    timers.add_timer(Timer(10.0, lambda: None))
    assert not a_new_timer_is_due(timers, now)
    timers.add_timer(Timer(1e-6, lambda: None))
    assert a_new_timer_is_due(timers, now + 0.001)
    timers.service_timeouts()  # the reactor looked at them: not new any more
    assert not a_new_timer_is_due(timers, now + 0.001)


def test_with_a_due_timer_not_yet_fired_a_message_goes_to_the_queue(
    pair: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A request whose timeout is shorter than the time it took to send it: through the
    # queue the reactor fires its timer before writing it, as the driver's own
    # connection does. Written at once, its answer could be read first when the reactor
    # thread is slow to run (a loaded machine), and the request succeed: seen once in
    # 600 such requests with three busy processes on the two cores, none in 4,800 since.
    ours, peer = pair
    monkeypatch.setattr("async_cassandra._driver.a_new_timer_is_due", lambda *_: True)
    connection = on_socket(ours)
    connection.push(b"request")
    assert received(peer) == b""
    assert list(connection.deque) == [b"request"]
    assert connection.direct_writes == 0


def test_what_the_socket_does_not_take_is_queued_right_behind(pair: Any) -> None:
    ours, peer = pair
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
    message = bytes(range(256)) * 4096  # 1 MiB, far more than the buffer
    connection = on_socket(ours)
    connection.push(message)
    sent = received(peer)
    assert 0 < len(sent) < len(message)
    assert sent + b"".join(connection.deque) == message
    assert connection.direct_writes == 1


def test_a_broken_socket_leaves_the_message_to_the_reactor(pair: Any) -> None:
    ours, _ = pair
    connection = on_socket(ours)
    ours.close()  # the driver's reactor meets the error and fails the connection
    connection.push(b"request")
    assert list(connection.deque) == [b"request"]
    assert connection.direct_writes == 0


def test_a_message_pushed_while_the_reactor_writes_goes_out_after_its_message() -> None:
    # The reactor has taken the last queued message and not sent it yet: the queue
    # looks empty, but a direct write then would go out first.
    wire: list[bytes] = []

    class Socket:
        def send(self, data: bytes) -> int:
            if data == b"queued":
                connection.push(b"pushed meanwhile")  # another thread, in the window
            wire.append(bytes(data))
            return len(data)

    connection = on_socket(Socket())
    connection.deque.append(b"queued")
    connection.handle_write(None, 0)  # the reactor thread's write callback
    assert wire == [b"queued", b"pushed meanwhile"]
    assert connection.direct_writes == 0
    assert not connection._reactor_writing


def test_the_cluster_uses_it_unless_the_caller_names_a_connection_class() -> None:
    assert DefaultConnection.__name__ == "LibevConnection"  # the driver's wheels have it
    assert AsyncCluster(["127.0.0.1"]).driver_cluster.connection_class is DirectWriteConnection
    chosen = AsyncCluster(["127.0.0.1"], connection_class=DefaultConnection)
    assert chosen.driver_cluster.connection_class is DefaultConnection


# Against a real node: a cluster of this module's own, so that no other test's request
# (one left to the driver by a cancelled caller) is in flight on its connections.


@pytest.fixture(scope="module")
def own_session(cassandra_node: Any) -> Iterator[AsyncCassandraSession]:
    cluster = AsyncCluster(cassandra_node.contact_points, port=cassandra_node.port)
    try:
        yield anyio.run(cluster.connect)
    finally:
        anyio.run(cluster.shutdown)


def direct_writes(session: AsyncCassandraSession) -> int:
    return sum(connection.direct_writes for connection in pool_connections(session))


@pytest.mark.anyio
async def test_a_request_alone_on_its_connection_is_written_by_the_sending_thread(
    own_session: AsyncCassandraSession,
) -> None:
    connections = pool_connections(own_session)
    assert connections
    assert all(isinstance(c, DirectWriteConnection) for c in connections)
    select = await own_session.prepare("SELECT release_version FROM system.local")
    before = direct_writes(own_session)
    calls = 20
    for _ in range(calls):
        assert (await own_session.execute(select)).one() is not None
    # One at a time: each was the only request in flight when it was written. The
    # driver's idle heartbeat (at most one per connection in a test this short) may
    # be in flight beside one of them, which then goes through the queue.
    assert direct_writes(own_session) - before >= calls - len(connections)


@pytest.mark.anyio
async def test_a_message_larger_than_the_socket_takes_arrives_whole(
    own_session: AsyncCassandraSession, ks: str
) -> None:
    # The sending thread writes a part of the large message, the reactor the rest,
    # and the small requests sent meanwhile queue behind it.
    await a_large_message_and_those_behind_it_arrive_whole(
        own_session, ks, direct_writes=lambda: direct_writes(own_session)
    )


@pytest.mark.anyio
async def test_loops_in_several_threads_writing_at_once_get_every_answer_right(
    own_session: AsyncCassandraSession, ks: str, anyio_backend: tuple[str, dict[str, Any]]
) -> None:
    # Threads racing to write on one connection, each one request at a time, so that
    # direct and queued writes may mix (how often depends on the timing): a byte out
    # of order would break a frame (the node closes the connection) or answer a
    # request with another's row.
    session = own_session
    await session.execute(f"CREATE TABLE {ks}.kv (id int PRIMARY KEY, v text)")
    insert = await session.prepare(f"INSERT INTO {ks}.kv (id, v) VALUES (?, ?)")
    select = await session.prepare(f"SELECT id, v FROM {ks}.kv WHERE id = ?")
    keys = 200

    def value(key: int) -> str:
        return f"value {key} " * (key % 7 + 1)

    for key in range(keys):
        await session.execute(insert, [key, value(key)])
    threads, calls = 4, 150
    wrong: list[str] = []

    async def reader(offset: int) -> None:
        for call in range(calls):
            key = (offset * 37 + call) % keys
            row = (await session.execute(select, [key])).one()
            if row is None or row.id != key or row.v != value(key):
                wrong.append(f"key {key}: {row!r}")

    def in_a_thread(offset: int) -> None:
        backend, options = anyio_backend
        anyio.run(reader, offset, backend=backend, backend_options=options)

    async with anyio.create_task_group() as tasks:
        for offset in range(threads):
            tasks.start_soon(anyio.to_thread.run_sync, in_a_thread, offset)
        tasks.start_soon(reader, threads)
    assert wrong == []
    assert all(not c.is_defunct and not c.is_closed for c in pool_connections(own_session))


@pytest.mark.anyio
async def test_a_full_socket_queues_requests_and_leaks_no_stream_ids(
    own_session: AsyncCassandraSession,
) -> None:
    # What the driver's reactor records when a send finds the socket full (a large
    # message still going out). The driver's connection then refused every request with
    # ConnectionBusy (NoHostAvailable with one node) and kept, for each, an in-flight
    # slot and a stream id for ever.
    select = await own_session.prepare("SELECT release_version FROM system.local")
    (connection,) = pool_connections(own_session)
    free_ids = len(connection.request_ids)
    connection._socket_writable = False
    for _ in range(5):
        assert (await own_session.execute(select)).one() is not None
    assert connection.in_flight == 0
    await stream_ids_returned(connection, free_ids)


async def stream_ids_returned(connection: Any, expected: int) -> None:
    """Wait until ``connection`` holds ``expected`` free stream ids; fail if it never does.

    The driver's reactor thread puts a stream id back after it has run the answer's
    callback (``Connection.process_msg``), so the awaiting task can resume while the
    last answer's id is still out. A leak keeps it out for ever: after 10 s the wait
    fails with the count.
    """
    with anyio.move_on_after(10):
        # Polled: the driver signals nothing after it puts an id back.
        while len(connection.request_ids) != expected:  # noqa: ASYNC110
            await anyio.sleep(0.001)
    assert len(connection.request_ids) == expected
