"""A call made in a cancelled scope, or past its deadline, sends nothing (anyio's rule:
a cancelled scope does nothing), on asyncio and trio, against the real node.

"A cancelled write may or may not have been applied" is for requests already on the
wire; one we never had to send is never sent. Every public coroutine that sends or
starts something is checked: execute (strings, prepared, prepare=True, batches),
execute_stream and a stream's next page, prepare, set_keyspace, connect, traces.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import anyio
import pytest
from cassandra.query import BatchStatement, SimpleStatement

from async_cassandra import AsyncCassandraSession, AsyncCluster, StreamConfig

pytestmark = pytest.mark.anyio


@contextmanager
def cancelled_or_expired(how: str) -> Iterator[None]:
    """A scope cancelled before the call, or whose deadline has passed."""
    if how == "cancelled":
        with anyio.CancelScope() as scope:
            scope.cancel()
            yield
        assert scope.cancelled_caught
    else:
        with pytest.raises(TimeoutError), anyio.fail_after(0):
            yield


@pytest.fixture
def sent(session: AsyncCassandraSession) -> Iterator[list[Any]]:
    """Every request the driver session is about to send (the driver's own hook)."""
    requests: list[Any] = []
    session.driver_session.add_request_init_listener(requests.append)
    yield requests
    session.driver_session.remove_request_init_listener(requests.append)


@pytest.fixture
async def kv(session: AsyncCassandraSession, ks: str) -> str:
    await session.execute(f"CREATE TABLE {ks}.kv (k text PRIMARY KEY, v text)")
    return f"{ks}.kv"


Call = Callable[[AsyncCassandraSession, str, str], Awaitable[Any]]


async def insert_string(session: AsyncCassandraSession, kv: str, key: str) -> Any:
    return await session.execute(f"INSERT INTO {kv} (k, v) VALUES (%s, 'x')", [key])


async def insert_with_prepare_true(session: AsyncCassandraSession, kv: str, key: str) -> Any:
    return await session.execute(f"INSERT INTO {kv} (k, v) VALUES (?, 'x')", [key], prepare=True)


async def insert_batch(session: AsyncCassandraSession, kv: str, key: str) -> Any:
    batch = BatchStatement()
    batch.add(SimpleStatement(f"INSERT INTO {kv} (k, v) VALUES (%s, 'x')"), [key])
    return await session.execute_batch(batch)


async def insert_statement(session: AsyncCassandraSession, kv: str, key: str) -> Any:
    statement = SimpleStatement(f"INSERT INTO {kv} (k, v) VALUES (%s, 'x')")
    return await session.execute(statement, [key])


async def stream_insert(session: AsyncCassandraSession, kv: str, key: str) -> Any:
    return await session.execute_stream(f"INSERT INTO {kv} (k, v) VALUES (%s, 'x')", [key])


WRITES: list[Call] = [
    insert_string,
    insert_statement,
    insert_with_prepare_true,
    insert_batch,
    stream_insert,
]


@pytest.mark.parametrize("how", ["cancelled", "expired"])
@pytest.mark.parametrize("write", WRITES, ids=[write.__name__ for write in WRITES])
async def test_a_write_in_a_cancelled_scope_is_never_sent(
    session: AsyncCassandraSession, kv: str, sent: list[Any], write: Call, how: str
) -> None:
    key = uuid.uuid4().hex
    with cancelled_or_expired(how):
        await write(session, kv, key)
    assert sent == []  # was: sent with a 1 ms timeout, and applied
    assert session.requests_registered == 0
    assert session.requests_in_flight == 0
    # The session goes on, and the row is not there (nothing was ever sent for it).
    await anyio.sleep(0.3)
    assert (await session.execute(f"SELECT * FROM {kv} WHERE k = %s", [key])).all() == []


@pytest.mark.parametrize("how", ["cancelled", "expired"])
async def test_a_prepared_statement_in_a_cancelled_scope_is_never_sent(
    session: AsyncCassandraSession, kv: str, sent: list[Any], how: str
) -> None:
    statement = await session.prepare(f"INSERT INTO {kv} (k, v) VALUES (?, 'x')")
    key = uuid.uuid4().hex
    with cancelled_or_expired(how):
        await session.execute(statement, [key])
    assert sent == []
    await anyio.sleep(0.3)
    assert (await session.execute(f"SELECT * FROM {kv} WHERE k = %s", [key])).all() == []


@pytest.mark.parametrize("how", ["cancelled", "expired"])
async def test_prepare_set_keyspace_and_traces_in_a_cancelled_scope_do_nothing(
    session: AsyncCassandraSession, cluster: AsyncCluster, kv: str, sent: list[Any], how: str
) -> None:
    marker = uuid.uuid4().hex
    with cancelled_or_expired(how):
        await session.prepare(f"SELECT * FROM {kv} WHERE k = ? AND v = '{marker}' ALLOW FILTERING")
    traced = await session.execute(f"SELECT * FROM {kv}", trace=True)
    sent.clear()
    async with await cluster.connect() as other:
        other_sent: list[Any] = []
        other.driver_session.add_request_init_listener(other_sent.append)
        with cancelled_or_expired(how):
            await other.set_keyspace(kv.split(".")[0])
        assert other_sent == []
        assert other.keyspace is None
    with cancelled_or_expired(how):
        await type(traced)(traced.rows, traced.response_future).query_trace()
    assert sent == []  # no trace query either
    await anyio.sleep(0.3)
    prepared = await session.execute("SELECT query_string FROM system.prepared_statements")
    assert not any(marker in row.query_string for row in prepared)


async def test_a_streams_next_page_is_not_asked_for_from_a_cancelled_scope(
    session: AsyncCassandraSession, kv: str
) -> None:
    for key in range(6):
        await session.execute(f"INSERT INTO {kv} (k, v) VALUES (%s, 'x')", [str(key)])
    config = StreamConfig(fetch_size=2, read_ahead=0)
    async with await session.execute_stream(f"SELECT * FROM {kv}", stream_config=config) as stream:
        first = [await stream.__anext__(), await stream.__anext__()]  # all of page 1
        assert len(first) == 2
        assert stream.pages_requested == 1  # nothing read ahead
        for how in ("cancelled", "expired"):
            with cancelled_or_expired(how):
                await stream.__anext__()
            with cancelled_or_expired(how):
                await stream.pages().__anext__()
        assert stream.pages_requested == 1  # was 2: asked for before the checkpoint
        rest = [row async for row in stream]  # and it goes on when asked properly
    assert len(rest) == 4


@pytest.mark.parametrize("how", ["cancelled", "expired"])
async def test_connect_in_a_cancelled_scope_connects_nothing(cassandra_node: Any, how: str) -> None:
    async with AsyncCluster(cassandra_node.contact_points, port=cassandra_node.port) as cluster:
        with cancelled_or_expired(how):
            await cluster.connect()
        await anyio.sleep(0.3)
        assert cluster.driver_cluster.control_connection._connection is None
        assert len(cluster.driver_cluster.sessions) == 0
        async with await cluster.connect() as session:  # and it connects when asked
            assert (await session.execute("SELECT key FROM system.local")).one().key == "local"
