"""The opt-in ``EventLoopConnection``: the driver's socket I/O and timers on the event
loop that connected the cluster, on asyncio and on trio.

Against the run's node: requests and their answers never leave the loop's thread; a
message larger than the socket takes arrives whole; a frozen node times requests out on
the loop's timers; a connection the server closes fails its requests clearly and is
replaced; loops in other threads use the sessions; once the loop is gone, requests fail
saying so and the cluster still shuts down. Without a node: the timers, the misuses.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
import weakref
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from _helpers import (
    a_large_message_and_those_behind_it_arrive_whole,
    pool_connections,
    socket_pair_connection,
    wait_until,
)
from cassandra import OperationTimedOut
from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
from cassandra.connection import (
    ConnectionException,
    ConnectionShutdown,
    DefaultEndPoint,
)
from cassandra.policies import RoundRobinPolicy

from async_cassandra import (
    AsyncCassandraSession,
    AsyncCluster,
    ConfigurationError,
    ConnectionError,
)
from async_cassandra._loop_reactor import (
    LoopTimer,
    bind_to_running_loop,
    reactor_for_running_loop,
)
from async_cassandra.connection import EventLoopConnection
from async_cassandra.streaming import StreamConfig
from async_cassandra.testing import LocalCassandra

pytestmark = pytest.mark.anyio


def loop_io_cluster(node: Any) -> AsyncCluster:
    """A cluster on ``node`` with EventLoopConnection, bound when it first connects."""
    return AsyncCluster(node.contact_points, port=node.port, connection_class=EventLoopConnection)


@pytest.fixture
async def loop_session(cassandra_node: Any) -> AsyncIterator[AsyncCassandraSession]:
    """A cluster of the test's own, served by the test's loop."""
    async with loop_io_cluster(cassandra_node) as cluster, await cluster.connect() as session:
        yield session


async def test_answers_are_read_and_completed_on_the_loops_thread(
    loop_session: AsyncCassandraSession, ks: str
) -> None:
    session = loop_session
    connections = pool_connections(session)
    assert connections
    assert all(isinstance(c, EventLoopConnection) for c in connections)
    await session.execute(f"CREATE TABLE {ks}.kv (id int PRIMARY KEY, v text)")
    insert = await session.prepare(f"INSERT INTO {ks}.kv (id, v) VALUES (?, ?)")
    select = await session.prepare(f"SELECT id, v FROM {ks}.kv WHERE id = ?")
    loop_thread = threading.get_ident()
    completed_on: set[int] = set()
    # The driver's hook sees each request; its callbacks run where the answer is read
    # (a schema change's, made above, completes on the driver's executor after the
    # schema agreement wait).
    session.driver_session.add_request_init_listener(
        lambda future: future.add_callbacks(
            lambda _rows: completed_on.add(threading.get_ident()),
            lambda _error: completed_on.add(threading.get_ident()),
        )
    )
    keys = 300
    async with anyio.create_task_group() as tasks:
        for key in range(keys):
            tasks.start_soon(session.execute, insert, [key, f"value {key}"])
    wrong: list[str] = []

    async def read(key: int) -> None:
        row = (await session.execute(select, [key])).one()
        if row is None or row.v != f"value {key}":
            wrong.append(f"{key}: {row!r}")

    async with anyio.create_task_group() as tasks:
        for key in range(keys):
            tasks.start_soon(read, key)
    assert wrong == []
    assert completed_on == {loop_thread}
    rows = 0
    query, config = f"SELECT * FROM {ks}.kv", StreamConfig(fetch_size=50)
    async with await session.execute_stream(query, stream_config=config) as stream:
        async for _row in stream:
            rows += 1
    assert rows == keys


async def test_a_lone_request_is_written_at_once_and_a_turns_requests_together(
    loop_session: AsyncCassandraSession,
) -> None:
    # Alone in flight, a request waiting for the loop's next turn would only lose that
    # turn; with many in flight, the requests of one turn go out in one send.
    session = loop_session
    select = await session.prepare("SELECT release_version FROM system.local WHERE key = ?")
    connections = pool_connections(session)

    def direct_writes() -> int:
        return sum(connection.direct_writes for connection in connections)

    before = direct_writes()
    for _ in range(50):
        assert (await session.execute(select, ["local"])).one() is not None
    assert direct_writes() - before == 50
    before = direct_writes()
    async with anyio.create_task_group() as tasks:
        for _ in range(64):
            tasks.start_soon(session.execute, select, ["local"])
    assert direct_writes() - before < 32


async def test_a_message_larger_than_the_socket_takes_arrives_whole(
    loop_session: AsyncCassandraSession, ks: str
) -> None:
    # Written in parts as the loop finds the socket writable again, with small
    # requests queued behind it.
    await a_large_message_and_those_behind_it_arrive_whole(loop_session, ks)


async def test_a_frozen_node_times_requests_out_on_the_loops_timer(
    pausable_node: LocalCassandra,
) -> None:
    profile = ExecutionProfile(load_balancing_policy=RoundRobinPolicy(), request_timeout=0.3)
    async with (
        AsyncCluster(
            pausable_node.contact_points,
            port=pausable_node.native_port,
            connection_class=EventLoopConnection,
            execution_profiles={EXEC_PROFILE_DEFAULT: profile},
        ) as cluster,
        await cluster.connect() as session,
    ):
        pausable_node.pause()  # the server cannot answer now
        try:
            # The bound only turns a timer that never fires into a failure.
            with pytest.raises(TimeoutError) as raised, anyio.fail_after(30):
                await session.execute("SELECT * FROM system.local")
        finally:
            pausable_node.resume()
        # The driver's timer fired (not a deadline of ours: none was given).
        assert isinstance(raised.value.__cause__, OperationTimedOut)
        assert session.requests_in_flight == 0
        with anyio.fail_after(30):
            row = (await session.execute("SELECT release_version FROM system.local")).one()
        assert row is not None


async def test_a_connection_the_server_closes_fails_clearly_and_is_replaced(
    loop_session: AsyncCassandraSession,
) -> None:
    session = loop_session
    (connection,) = pool_connections(session)
    # What a node that goes away does to the socket: the loop reads the end of it.
    connection._socket.shutdown(socket.SHUT_RDWR)
    await wait_until(lambda: connection.is_defunct, "the connection is found closed")
    # The end of the stream, or a reset if the node wrote to the half-closed socket
    # first (test_the_end_of_the_stream_defuncts_the_connection checks the former).
    assert isinstance(connection.last_error, (ConnectionShutdown, OSError))
    # The driver then marks the host down and reconnects in the background: until it
    # has, requests fail as ConnectionError (never hang, never another type).
    failures = 0
    with anyio.fail_after(60):
        while True:
            try:
                row = (await session.execute("SELECT release_version FROM system.local")).one()
            except ConnectionError:
                failures += 1
                await anyio.sleep(0.1)
                continue
            break
    assert row is not None
    assert all(c is not connection for c in pool_connections(session))
    assert all(isinstance(c, EventLoopConnection) for c in pool_connections(session))


# Not ids "asyncio"/"trio": those name the test's own backend (see test_api_surface).
@pytest.mark.parametrize("other_backend", ["asyncio", "trio"], ids=["from_asyncio", "from_trio"])
async def test_loops_in_other_threads_use_its_sessions(
    loop_session: AsyncCassandraSession, other_backend: str
) -> None:
    session = loop_session
    select = await session.prepare("SELECT key FROM system.local WHERE key = ?")
    answers: list[str | None] = []

    async def reader() -> None:
        for _ in range(50):
            row = (await session.execute(select, ["local"])).one()
            answers.append(row.key if row is not None else None)

    def in_a_thread() -> None:
        anyio.run(reader, backend=other_backend)

    with anyio.fail_after(60):
        async with anyio.create_task_group() as tasks:
            for _ in range(3):
                tasks.start_soon(anyio.to_thread.run_sync, in_a_thread)
            tasks.start_soon(reader)
    assert answers == ["local"] * 200


async def test_once_its_loop_is_gone_requests_fail_saying_so(
    cassandra_node: Any, anyio_backend: tuple[str, dict[str, Any]]
) -> None:
    backend, options = anyio_backend
    cluster = loop_io_cluster(cassandra_node)

    async def connect_and_read() -> AsyncCassandraSession:
        session = await cluster.connect()
        assert (await session.execute("SELECT key FROM system.local")).one() is not None
        return session

    try:
        # Connected, and so served, by a loop that then ends.
        session = await anyio.to_thread.run_sync(
            lambda: anyio.run(connect_and_read, backend=backend, backend_options=options)
        )
        with pytest.raises(ConnectionError) as raised, anyio.fail_after(30):
            await session.execute("SELECT key FROM system.local")
        message = str(raised.value)
        # The advice once, from the hint, not again from the driver-level message.
        assert message.count("keep that loop running until the cluster is shut down") == 1
    finally:
        with anyio.fail_after(30):
            await cluster.shutdown()


def test_no_connection_is_opened_for_a_loop_that_is_gone(
    anyio_backend: tuple[str, dict[str, Any]],
) -> None:
    # The driver goes on reconnecting to a node on a backoff: once the serving loop is
    # gone, each attempt opened a socket to the node only to close it.
    backend, options = anyio_backend

    async def bind() -> type[EventLoopConnection]:
        return bind_to_running_loop(EventLoopConnection)

    bound = anyio.run(bind, backend=backend, backend_options=options)  # that run ends
    with socket.socket() as node:
        node.bind(("127.0.0.1", 0))
        node.listen()
        node.setblocking(False)
        with pytest.raises(ConnectionShutdown, match="is gone"):
            bound(DefaultEndPoint("127.0.0.1", node.getsockname()[1]))
        with pytest.raises(BlockingIOError):
            node.accept()  # nothing ever connected


def test_a_later_loop_on_the_same_thread_is_told_the_serving_loop_is_gone(
    cassandra_node: Any, anyio_backend: tuple[str, dict[str, Any]]
) -> None:
    # Two runs one after the other on one thread (two asyncio.run calls): the thread is
    # the serving loop's, the loop is not.
    backend, options = anyio_backend
    cluster = loop_io_cluster(cassandra_node)
    hint = "keep that loop running until the cluster is shut down"

    async def connect() -> AsyncCassandraSession:
        return await cluster.connect()

    async def use_it_later(session: AsyncCassandraSession) -> list[str]:
        failures = []
        with anyio.fail_after(30):
            for attempt in (
                lambda: session.execute("SELECT key FROM system.local"),
                lambda: session.execute_stream("SELECT key FROM system.local"),
                lambda: session.prepare("SELECT key FROM system.local"),
                lambda: cluster.connect(),
            ):
                with pytest.raises(ConnectionError) as raised:
                    await attempt()
                failures.append(str(raised.value))
        return failures

    try:
        session = anyio.run(connect, backend=backend, backend_options=options)
        failures = anyio.run(use_it_later, session, backend=backend, backend_options=options)
        assert len(failures) == 4
        assert all(message.count(hint) == 1 for message in failures), failures
    finally:
        anyio.run(cluster.shutdown, backend=backend, backend_options=options)


async def test_timers_fire_in_the_order_they_end_and_cancelled_ones_never() -> None:
    reactor = reactor_for_running_loop()
    fired: list[int] = []
    done = anyio.Event()

    def callback(index: int) -> Callable[[], None]:
        def fire() -> None:
            fired.append(index)
            if index == 0:
                done.set()

        return fire

    try:
        # Made in the reverse of the order they end in; every third one kept.
        timers = [LoopTimer(0.01 + 0.001 * (600 - i), callback(i), reactor) for i in range(1, 600)]
        LoopTimer(0.7, callback(0), reactor)  # ends last: the test's end
        for position, timer in enumerate(timers):
            if position % 3:
                timer.cancel()
        with anyio.fail_after(30):
            await done.wait()
        kept = [i for i in range(1, 600) if (i - 1) % 3 == 0]
        # In the order of the driver's own end times (time.time()), whatever the loop's
        # clock: the loop's deadlines are those times less one offset.
        by_end = sorted(kept, key=lambda i: (timers[i - 1].end, -i))
        assert fired == [*by_end, 0]
    finally:
        reactor.close()


async def test_a_timer_made_on_another_thread_fires_on_the_loop() -> None:
    reactor = reactor_for_running_loop()
    fired_on: list[int] = []
    done = anyio.Event()

    def fire() -> None:
        fired_on.append(threading.get_ident())
        done.set()

    try:
        await anyio.to_thread.run_sync(lambda: LoopTimer(0.01, fire, reactor))
        with anyio.fail_after(30):
            await done.wait()
        assert fired_on == [threading.get_ident()]
    finally:
        reactor.close()


async def test_cancelled_timers_are_not_held_until_due() -> None:
    # Every request arms a timer for its timeout (10 s by default) and cancels it when
    # the answer comes: the cancelled ones must not pile up.
    reactor = reactor_for_running_loop()
    try:
        for _ in range(5000):
            LoopTimer(600, lambda: None, reactor).cancel()
        await anyio.lowlevel.checkpoint()  # asyncio drops cancelled timers as it turns
        held = getattr(reactor, "_timers", None)  # trio's heap; asyncio's is the loop's
        if held is None:
            held = asyncio.get_running_loop()._scheduled  # type: ignore[attr-defined]
        assert len(held) <= 600
    finally:
        reactor.close()


async def test_a_connection_closed_before_its_io_first_runs_ends_quietly() -> None:
    # The driver's factory closes a connection that is not ready in time, and its
    # start, its handshake and its close can reach the loop together, before trio's
    # reader and writer tasks have first run: they then met a closed socket, and
    # trio's ValueError for its descriptor (-1) ended the whole run.
    connection, peer, reactor = socket_pair_connection()
    try:
        connection._io.start()
        connection.push(b"a handshake")
        connection.close()
        for _ in range(3):  # the tasks' first steps, and then some
            await anyio.lowlevel.checkpoint()
        assert connection.is_closed
        assert connection._socket.fileno() == -1
    finally:
        peer.close()
        reactor.close()


async def test_a_failed_direct_write_fails_the_connection_in_the_writers_turn() -> None:
    # The driver pushes from its send_msg with the request registered: failing the
    # connection inside push would run every request's callback inside that call.
    connection, peer, reactor = socket_pair_connection()
    try:
        connection._io.start()
        # trio's writer task parks once it has run; asyncio's writer is a callback.
        writer = getattr(connection._io, "_writer", None)
        await wait_until(lambda: writer is None or writer.parked, "writer parked")
        peer.close()  # what the socket meets now is an error (EPIPE), not a full buffer
        connection.push(b"a request alone in flight")
        assert connection.direct_writes == 1
        assert not connection.is_defunct
        await wait_until(lambda: connection.is_defunct, "the connection fails in a later turn")
        assert isinstance(connection.last_error, (OSError, ConnectionShutdown))
    finally:
        connection.close()
        peer.close()
        reactor.close()


async def test_the_end_of_the_stream_defuncts_the_connection() -> None:
    # The peer closes its end as a node that goes away does.
    connection, peer, reactor = socket_pair_connection()
    try:
        peer.close()
        assert connection.handle_readable() is False
        assert connection.is_defunct
        assert connection.is_closed
        assert isinstance(connection.last_error, ConnectionShutdown)
        assert "was closed by the server" in str(connection.last_error)
        assert connection._socket.fileno() == -1  # closed by the connection
    finally:
        connection._socket.close()
        reactor.close()


@pytest.mark.parametrize("step", [100.0, -100.0], ids=["forward", "backward"])
async def test_timers_made_after_the_wall_clock_steps_keep_their_length(step: float) -> None:
    # The driver's timers end at a time.time(), the loop's clock does not step with it.
    # As if time.time() had stepped by ``step`` seconds since the reactor read the two
    # clocks: with that old reading, a 0.05 s timer fired 100 s late (forward) and a
    # 50 s one at once (backward).
    reactor = reactor_for_running_loop()
    reactor.wall_minus_loop -= step
    fired: list[str] = []
    short_fired = anyio.Event()
    try:
        long = LoopTimer(50, lambda: fired.append("50 s"), reactor)
        LoopTimer(0.05, short_fired.set, reactor)
        with anyio.fail_after(20):  # fired after 0.05 s, not after 100
            await short_fired.wait()
        assert fired == []  # the 50 s timer is not due
        long.cancel()
    finally:
        reactor.close()


@pytest.mark.parametrize("where", ["on the loop", "on another thread"])
async def test_a_cancelled_timer_lets_go_of_its_callback(where: str) -> None:
    # A request's timer holds its future (and the answer); held until the timer's time
    # (10 s by default), every request's objects outlived the collections that should
    # have freed them, and full collections stalled the loop 10-30 ms many times a
    # second. The driver cancels timers on its own threads too, when it fails a
    # connection's requests: the loop's handle then held each request that long.
    reactor = reactor_for_running_loop()

    class Request:
        def on_timeout(self) -> None:
            raise AssertionError("a cancelled timer fired")

    try:
        request = Request()
        alive = weakref.ref(request)
        timer = LoopTimer(600, request.on_timeout, reactor)
        del request
        if where == "on the loop":
            timer.cancel()
            del timer
            assert alive() is None  # freed by its reference count: nothing holds it
        else:
            await anyio.to_thread.run_sync(timer.cancel)
            del timer  # what is left: the loop's handle, until the loop has cancelled it
            await wait_until(lambda: alive() is None, "the callback let go")
    finally:
        reactor.close()


def test_tls_is_refused_before_any_io() -> None:
    with pytest.raises(ConfigurationError, match="does not do TLS"):
        AsyncCluster(
            ["127.0.0.1"],
            connection_class=EventLoopConnection,
            ssl_context=ssl.create_default_context(),
        )


def test_a_driver_cluster_cannot_use_it() -> None:
    cluster = Cluster(["127.0.0.1"], port=1, connection_class=EventLoopConnection)
    try:
        with pytest.raises(ConnectionException, match="only through"):
            cluster.connect()
    finally:
        cluster.shutdown()


async def test_a_connection_asked_for_on_the_loops_thread_fails_at_once(
    loop_session: AsyncCassandraSession,
) -> None:
    # The driver's factory waits for the connection to be ready, which only the loop
    # can make it: on the loop's thread that would wait for ever.
    cluster = loop_session.driver_session.cluster
    host = next(iter(cluster.metadata.all_hosts()))
    with pytest.raises(ConnectionException, match="block the loop"):
        cluster.connection_factory(host.endpoint)
    assert (await loop_session.execute("SELECT key FROM system.local")).one() is not None
