"""Every timeout the library raises is an ``async_cassandra.TimeoutError`` saying what
timed out and after how long, and every page of a request gets the timeout its first
page had (both backends, real nodes; a frozen node, or a loopback listener that never
answers, makes things time out)."""

from __future__ import annotations

import builtins
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import cassandra
import pytest
from _helpers import wait_until
from cassandra.cluster import EXEC_PROFILE_DEFAULT, ExecutionProfile
from cassandra.policies import DCAwareRoundRobinPolicy, TokenAwarePolicy
from cassandra.query import SimpleStatement, named_tuple_factory

from async_cassandra import (
    AsyncCassandraSession,
    AsyncCluster,
    ConnectionError,
    ConnectTimeoutError,
    StreamConfig,
    TimeoutError,
)
from async_cassandra.testing import LocalCassandra

pytestmark = pytest.mark.anyio


@pytest.fixture
def silent_listener() -> Iterator[int]:
    """A loopback port that accepts TCP connections and never says a word."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield int(server.getsockname()[1])
    stop.set()
    thread.join()
    for connection in accepted:
        connection.close()
    server.close()


def _assert_timeout(error: BaseException, *says: str) -> None:
    assert isinstance(error, TimeoutError)
    assert isinstance(error, builtins.TimeoutError)  # what asyncio.wait_for raises
    for text in says:
        assert text in str(error), str(error)


async def test_connect_that_gets_no_answer_is_a_connect_timeout(silent_listener: int) -> None:
    # The driver's own connect_timeout (3 s) is longer: ours fires first, and the
    # worker it abandons ends well within the cluster's close bound.
    async with AsyncCluster(["127.0.0.1"], port=silent_listener, connect_timeout=3) as cluster:
        began = time.monotonic()
        with pytest.raises(ConnectTimeoutError) as raised:
            await cluster.connect(timeout=1.5)
        assert time.monotonic() - began >= 1.5
    # Was a ConnectionError only, with an empty message.
    _assert_timeout(raised.value, "1.5 s", f"127.0.0.1:{silent_listener}", "connect")
    assert isinstance(raised.value, ConnectionError)  # as before, and for retry loops


async def test_the_drivers_connect_timeout_is_a_connect_timeout(silent_listener: int) -> None:
    async with AsyncCluster(["127.0.0.1"], port=silent_listener, connect_timeout=0.5) as cluster:
        with pytest.raises(ConnectTimeoutError) as raised:
            await cluster.connect(timeout=30)
    _assert_timeout(raised.value, "0.5 s", f"127.0.0.1:{silent_listener}")
    assert isinstance(raised.value, cassandra.cluster.NoHostAvailable)
    assert isinstance(raised.value, ConnectionError)


@pytest.fixture
async def frozen(
    pausable_node: LocalCassandra,
) -> AsyncIterator[tuple[AsyncCassandraSession, LocalCassandra]]:
    """A session on the pausable node; the test freezes the node when it wants."""
    async with (
        AsyncCluster(pausable_node.contact_points, port=pausable_node.native_port) as cluster,
        await cluster.connect() as session,
    ):
        try:
            yield session, pausable_node
        finally:
            pausable_node.resume()


async def test_prepare_and_query_timeouts_say_how_long(
    frozen: tuple[AsyncCassandraSession, LocalCassandra],
) -> None:
    session, node = frozen
    node.pause()
    with pytest.raises(TimeoutError) as raised:
        await session.prepare("SELECT * FROM system.local WHERE key = ?", timeout=0.5)
    _assert_timeout(raised.value, "preparing", "0.5 s")

    with pytest.raises(TimeoutError) as raised:
        await session.execute("SELECT * FROM system.local", timeout=0.5)
    _assert_timeout(raised.value, "within 0.5 s")
    assert isinstance(raised.value, cassandra.OperationTimedOut)

    # A stream's timeout_seconds is every page's, the first included (was: 10 s).
    config = StreamConfig(timeout_seconds=0.5)
    with pytest.raises(TimeoutError) as raised:
        await session.execute_stream("SELECT * FROM system.local", stream_config=config)
    _assert_timeout(raised.value, "within 0.5 s")
    node.resume()
    await wait_until(lambda: session.requests_in_flight == 0, "the driver gave up")
    assert (await session.execute("SELECT key FROM system.local")).one().key == "local"


@pytest.fixture
async def slow_pages(
    pausable_node: LocalCassandra,
) -> AsyncIterator[tuple[AsyncCluster, str, LocalCassandra]]:
    """A cluster whose default execution profile allows 2 s per request (the session's
    legacy default_timeout stays 10 s), with a 30-row table to page through."""
    policy = TokenAwarePolicy(DCAwareRoundRobinPolicy())

    def pause_on_the_first_page(colnames: list[str], rows: list[Any]) -> Any:
        # Made on the loop, after page 1 arrived and before page 2 is asked for.
        pausable_node.pause()
        return named_tuple_factory(colnames, rows)

    profiles = {
        EXEC_PROFILE_DEFAULT: ExecutionProfile(load_balancing_policy=policy, request_timeout=2),
        "pause": ExecutionProfile(
            load_balancing_policy=policy, request_timeout=2, row_factory=pause_on_the_first_page
        ),
    }
    async with AsyncCluster(
        pausable_node.contact_points, port=pausable_node.native_port, execution_profiles=profiles
    ) as cluster:
        async with await cluster.connect() as session:
            await session.execute(
                "CREATE KEYSPACE IF NOT EXISTS paging WITH replication = "
                "{'class': 'SimpleStrategy', 'replication_factor': 1}"
            )
            await session.execute("CREATE TABLE IF NOT EXISTS paging.t (k int PRIMARY KEY)")
            for k in range(30):
                await session.execute("INSERT INTO paging.t (k) VALUES (%s)", [k])
        try:
            yield cluster, "SELECT k FROM paging.t", pausable_node
        finally:
            pausable_node.resume()


async def test_a_later_page_gets_the_execution_profiles_timeout(
    slow_pages: tuple[AsyncCluster, str, LocalCassandra],
) -> None:
    cluster, query, node = slow_pages
    async with await cluster.connect() as session:
        assert session.driver_session.default_timeout == 10
        statement = SimpleStatement(query, fetch_size=10)
        began = time.monotonic()
        with pytest.raises(TimeoutError) as raised:
            await session.execute(statement, execution_profile="pause")
        waited = time.monotonic() - began
        node.resume()
        # Was: the session's default_timeout (10 s), whatever the profile said.
        _assert_timeout(raised.value, "page 2", "within 2 s")
        assert waited >= 2

        # An explicit timeout= wins over the profile, for every page.
        with pytest.raises(TimeoutError) as raised:
            await session.execute(statement, execution_profile="pause", timeout=1)
        node.resume()
        _assert_timeout(raised.value, "page 2", "within 1 s")
        await wait_until(lambda: session.requests_registered == 0, "the pages are over")


async def test_a_later_page_of_a_stream_gets_the_requests_timeout(
    slow_pages: tuple[AsyncCluster, str, LocalCassandra],
) -> None:
    cluster, query, node = slow_pages
    async with await cluster.connect() as session:
        for timeout, expected in [(None, "within 2 s"), (1.0, "within 1 s")]:
            config = StreamConfig(fetch_size=10, read_ahead=0)
            async with await session.execute_stream(
                query, stream_config=config, timeout=timeout
            ) as stream:
                first_page = [await stream.__anext__() for _ in range(10)]
                assert len(first_page) == 10
                node.pause()
                with pytest.raises(TimeoutError) as raised:
                    await stream.__anext__()
                node.resume()
            _assert_timeout(raised.value, "page 2", expected)
            assert stream.is_closed
            assert stream.rows_held == 0


async def test_a_trace_that_is_not_ready_is_a_timeout(
    session: AsyncCassandraSession,
) -> None:
    session.driver_session.max_trace_wait = 0  # execute's fetch of the trace cannot wait
    try:
        result = await session.execute("SELECT key FROM system.local", trace=True)
    finally:
        session.driver_session.max_trace_wait = 2.0
    assert result.one().key == "local"  # the query itself succeeded
    with pytest.raises(TimeoutError) as raised:
        result.get_query_trace()
    _assert_timeout(raised.value, "Trace information was not available within 0")
    assert isinstance(raised.value, cassandra.query.TraceUnavailable)
    # Asked again, with time to wait, it comes.
    trace = await result.query_trace(max_wait=10)
    assert trace is not None
    assert trace.duration is not None


async def test_closing_that_takes_too_long_is_a_timeout(silent_listener: int) -> None:
    # A connect abandoned by its cancelled caller keeps its worker thread blocked in the
    # driver (no answer, connect_timeout 5 s); shutting down waits for that thread.
    cluster = AsyncCluster(["127.0.0.1"], port=silent_listener, connect_timeout=5)
    with anyio.move_on_after(0.2):
        await cluster.connect()
    began = time.monotonic()
    with pytest.raises(TimeoutError) as raised:
        await cluster.shutdown(timeout=0.5)
    assert time.monotonic() - began >= 0.5
    _assert_timeout(raised.value, "shutting down the cluster", "within 0.5 s")
    assert cluster.is_closed
    await cluster.shutdown()  # idempotent: nothing left to wait for, no error
    # The worker ends by itself once the driver gives up.
    await wait_until(lambda: cluster._offloop.running == 0, "the abandoned connect ended")


async def test_leaving_a_block_with_an_error_is_not_hidden_by_a_slow_close(
    silent_listener: int, caplog: pytest.LogCaptureFixture
) -> None:
    cluster = AsyncCluster(["127.0.0.1"], port=silent_listener, connect_timeout=5)

    async def block_that_fails() -> None:
        async with cluster:
            with anyio.move_on_after(0.2):
                await cluster.connect()
            cluster.shutdown = lambda: type(cluster).shutdown(cluster, timeout=0.5)  # type: ignore[method-assign]
            raise KeyError("the block's own error")

    with pytest.raises(KeyError, match="the block's own error"):
        await block_that_fails()
    assert "shutting down the cluster did not finish within 0.5 s" in caplog.text
    await wait_until(lambda: cluster._offloop.running == 0, "the abandoned connect ended")
