"""Streaming: bounded memory, read-ahead, demand-driven paging, page deadlines, signed
resumable paging and fan-out into task groups. Real server, asyncio and trio."""

from __future__ import annotations

import gc
import secrets
from collections.abc import Iterator
from itertools import pairwise
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from _helpers import wait_until
from cassandra.concurrent import execute_concurrent
from cassandra.query import BatchStatement, BatchType, SimpleStatement, dict_factory

from async_cassandra import AsyncCassandraSession, AsyncCluster, QueryError, TimeoutError
from async_cassandra.paging import InvalidPagingToken, PagingTokenSigner
from async_cassandra.streaming import (
    _ROWS_PER_RUN,
    AsyncStreamingResultSet,
    StreamConfig,
    fan_out,
)
from async_cassandra.testing import LocalCassandra

pytestmark = pytest.mark.anyio

PARTITIONS = 100
ROWS_PER_PARTITION = 1000


@pytest.fixture(scope="module")
def big_table(cassandra_driver_session: Any) -> Iterator[str]:
    """100 partitions x 1,000 rows, loaded once for the module (unlogged batches)."""
    keyspace = f"stream_{secrets.token_hex(4)}"
    driver = cassandra_driver_session
    driver.execute(
        f"CREATE KEYSPACE {keyspace} WITH replication = "
        "{'class': 'SimpleStrategy', 'replication_factor': 1}"
    )
    table = f"{keyspace}.big"
    driver.execute(f"CREATE TABLE {table} (p int, c int, v int, PRIMARY KEY (p, c))")
    insert = driver.prepare(f"INSERT INTO {table} (p, c, v) VALUES (?, ?, ?)")
    batches = []
    for p in range(PARTITIONS):
        for start in range(0, ROWS_PER_PARTITION, 100):
            batch = BatchStatement(batch_type=BatchType.UNLOGGED)
            for c in range(start, start + 100):
                batch.add(insert, (p, c, p * ROWS_PER_PARTITION + c))
            batches.append((batch, ()))
    for success, result in execute_concurrent(driver, batches, concurrency=32):
        assert success, result
    yield table
    driver.execute(f"DROP KEYSPACE {keyspace}")


async def test_hundred_thousand_rows_in_bounded_memory(
    session: AsyncCassandraSession, big_table: str
) -> None:
    config = StreamConfig(fetch_size=1000, read_ahead=1)
    last_c: dict[int, int] = {}
    count = 0
    most_held = 0
    async with await session.execute_stream(
        f"SELECT p, c FROM {big_table}", stream_config=config
    ) as stream:
        async for row in stream:
            count += 1
            most_held = max(most_held, stream.rows_held)
            # In order within each partition, every row once.
            assert row.c == last_c.get(row.p, -1) + 1
            last_c[row.p] = row.c
            if count == 1001:  # the first row of page 2: page 3 is already on its way
                assert stream.pages_requested == 3
    assert count == PARTITIONS * ROWS_PER_PARTITION
    assert last_c == dict.fromkeys(range(PARTITIONS), ROWS_PER_PARTITION - 1)
    assert most_held <= 2000
    assert stream.max_rows_held <= 2000
    assert stream.total_rows_fetched == count
    assert stream.page_number == stream.pages_requested  # empty pages count too
    assert session.requests_registered == 0


async def test_a_consumer_that_stops_stops_the_paging(
    session: AsyncCassandraSession, big_table: str
) -> None:
    config = StreamConfig(fetch_size=1000, read_ahead=1)
    with anyio.CancelScope() as scope:
        async with await session.execute_stream(
            f"SELECT * FROM {big_table}", stream_config=config
        ) as stream:
            async for _ in stream:
                if stream.page_number == 3:
                    scope.cancel()
                    await anyio.sleep(1)  # cancelled while "processing" page 3
    assert scope.cancelled_caught
    assert stream.is_closed
    requested = stream.pages_requested
    assert requested <= 4  # the 3 consumed and at most one read ahead
    await wait_until(lambda: session.requests_registered == 0, "the last page is dropped")
    assert stream.pages_requested == requested
    assert stream.rows_held == 0
    assert (await session.execute("SELECT key FROM system.local")).one().key == "local"


async def test_a_consumer_without_awaits_lets_the_loop_run_within_a_page(
    session: AsyncCassandraSession, big_table: str
) -> None:
    # A page of 5,000 rows, read by a loop body with no await of its own: the stream
    # lets the loop run every _ROWS_PER_RUN rows, not only between pages. A task that
    # runs at every turn of the loop sees how far the consumer got each time (on trio
    # it may run before one run and after the next, hence two runs).
    config = StreamConfig(fetch_size=5000)
    count = 0
    seen: list[int] = []

    async def ticker() -> None:
        while True:
            seen.append(count)
            await anyio.lowlevel.checkpoint()

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(ticker)
        async with await session.execute_stream(
            f"SELECT p, c FROM {big_table}", stream_config=config
        ) as stream:
            async for _ in stream:
                count += 1
                if count == 15_000:
                    break
        tasks.cancel_scope.cancel()
    steps = [after - before for before, after in pairwise(seen)]
    assert max(steps) <= 2 * _ROWS_PER_RUN < 5000


async def test_cancelled_between_runs_of_a_page_no_row_is_lost(
    session: AsyncCassandraSession, big_table: str
) -> None:
    config = StreamConfig(fetch_size=5000)
    async with await session.execute_stream(
        f"SELECT p, c FROM {big_table} WHERE p = 7", stream_config=config
    ) as stream:
        first = [await stream.__anext__() for _ in range(_ROWS_PER_RUN)]
        with anyio.CancelScope() as scope:
            scope.cancel()
            await stream.__anext__()  # the end of a run: the checkpoint raises
        assert scope.cancelled_caught
        rest = [row async for row in stream]
    assert [row.c for row in first + rest] == list(range(ROWS_PER_PARTITION))


@pytest.mark.parametrize("factory", ["Row", "dict_factory"])
async def test_rows_then_pages_hand_out_the_rest_of_a_run_and_of_its_page(
    cassandra_node: LocalCassandra, big_table: str, factory: str
) -> None:
    # 1,500 rows as rows (a run and a half of the first page), then pages(): the rest of
    # the page (3,500) whole, then the next pages; every row once, in order.
    query = f"SELECT p, c FROM {big_table} WHERE p IN (1, 2, 3, 4, 5, 6, 7, 8, 9)"
    config = StreamConfig(fetch_size=5000)
    node = cassandra_node
    async with (
        AsyncCluster(node.contact_points, port=node.port) as cluster,
        await cluster.connect() as session,
    ):
        if factory == "dict_factory":
            session.driver_session.row_factory = dict_factory
        async with await session.execute_stream(query, stream_config=config) as stream:
            rows = [await stream.__anext__() for _ in range(1500)]
            # The rest of the page, and the next page if it is already there.
            assert stream.rows_held == stream.total_rows_fetched - 1500
            pages = [list(page) async for page in stream.pages()]
    assert [len(page) for page in pages] == [3500, 4000]
    rows += [row for page in pages for row in page]
    if factory == "dict_factory":
        rows = [(row["p"], row["c"]) for row in rows]
    assert [tuple(row) for row in rows] == [
        (p, c) for p in range(1, 10) for c in range(ROWS_PER_PARTITION)
    ]


async def test_a_dropped_stream_is_freed_with_a_resource_warning(
    session: AsyncCassandraSession, big_table: str
) -> None:
    async def read_a_little() -> None:
        stream = await session.execute_stream(
            f"SELECT * FROM {big_table}", stream_config=StreamConfig(fetch_size=500)
        )
        for _ in range(10):
            await stream.__anext__()
        # ... and the task ends without closing it.

    with pytest.warns(ResourceWarning, match="never closed"):  # noqa: PT031
        async with anyio.create_task_group() as group:
            group.start_soon(read_a_little)
        gc.collect()
    await wait_until(lambda: session.requests_registered == 0, "the callbacks are dropped")
    gc.collect()
    # type(), not isinstance(): the heap holds the driver's weakref proxies, and asking
    # a dead one for its class raises ReferenceError.
    assert not [o for o in gc.get_objects() if type(o) is AsyncStreamingResultSet]


async def test_pages_max_pages_and_page_callback(
    session: AsyncCassandraSession, big_table: str
) -> None:
    seen: list[tuple[int, int]] = []
    config = StreamConfig(
        fetch_size=300, max_pages=4, page_callback=lambda n, r: seen.append((n, r))
    )
    statement = SimpleStatement(f"SELECT * FROM {big_table}", fetch_size=77)
    async with await session.execute_stream(statement, stream_config=config) as stream:
        pages = [list(page) async for page in stream.pages()]
    assert [len(page) for page in pages] == [300, 300, 300, 300]
    assert seen == [(1, 300), (2, 300), (3, 300), (4, 300)]
    assert stream.pages_requested == 4
    assert statement.fetch_size == 77  # the caller's statement was copied, not changed


async def test_page_callback_error_ends_the_stream(
    session: AsyncCassandraSession, big_table: str
) -> None:
    def callback(page_number: int, rows: int) -> None:
        if page_number == 2:
            raise ValueError("stop at page 2")

    config = StreamConfig(fetch_size=100, page_callback=callback)
    rows = 0
    stream = await session.execute_stream(f"SELECT * FROM {big_table}", stream_config=config)

    async def consume() -> None:
        nonlocal rows
        async with stream:
            async for _ in stream:
                rows += 1

    with pytest.raises(ValueError, match="stop at page 2"):
        await consume()
    assert rows == 100
    assert stream.is_closed
    await wait_until(lambda: session.requests_registered == 0, "the stream is released")


async def test_prepared_statement_stream_with_parameters(
    session: AsyncCassandraSession, big_table: str
) -> None:
    prepared = await session.prepare(f"SELECT c FROM {big_table} WHERE p = ?")
    config = StreamConfig(fetch_size=64)
    async with await session.execute_stream(prepared, [7], stream_config=config) as stream:
        values = [row.c async for row in stream]
    assert values == list(range(ROWS_PER_PARTITION))
    assert stream.column_names == ["c"]


async def test_every_page_is_made_by_the_row_factory(
    cassandra_node: LocalCassandra, big_table: str
) -> None:
    # Pages after the first come from the driver raw and are made on the loop thread:
    # the default factory's Row named tuples (as each row is handed out), or what the
    # session's own row factory makes. Rows then pages() hand every row out once.
    query = f"SELECT p, c FROM {big_table} WHERE p = 3"
    config = StreamConfig(fetch_size=100)
    node = cassandra_node
    async with (
        AsyncCluster(node.contact_points, port=node.port) as cluster,
        await cluster.connect() as session,
    ):
        async with await session.execute_stream(query, stream_config=config) as stream:
            rows = [await stream.__anext__() for _ in range(150)]  # page 1, half of 2
            pages = [page async for page in stream.pages()]
        assert [len(page) for page in pages] == [50] + [100] * 8
        second = pages[1]  # its Rows are made as they are read (see RowPage)
        assert second[0] == second[0] == next(iter(second)) == second[:3][0] == second[-100]
        assert second[1:3] == list(second)[1:3] == [(3, 201), (3, 202)]
        assert second == list(second)
        assert second != list(second)[:-1]
        rows += [row for page in pages for row in page]
        assert {type(row) for row in rows} == {type(rows[0])}
        assert rows[0]._fields == ("p", "c")
        assert [(row.p, row.c) for row in rows] == [(3, c) for c in range(ROWS_PER_PARTITION)]

        session.driver_session.row_factory = dict_factory
        async with await session.execute_stream(query, stream_config=config) as stream:
            dicts = [row async for row in stream]
        assert dicts == [{"p": 3, "c": c} for c in range(ROWS_PER_PARTITION)]


async def test_bad_cql_raises_from_execute_stream(session: AsyncCassandraSession) -> None:
    with pytest.raises(QueryError):
        await session.execute_stream("SELECT * FROM nowhere.nothing")
    assert session.requests_registered == 0


async def test_empty_pages_in_the_middle_do_not_end_the_stream(
    session: AsyncCassandraSession, ks: str
) -> None:
    # Few rows match the filter, and whole partitions are deleted: the server pages
    # through rows and tombstones that do not match. Cassandra 5.0 fills filtering pages
    # rather than returning empty ones, so the empty-page path itself is pinned in
    # test_portal.py with a stand-in driver; here the whole result must arrive.
    await session.execute(f"CREATE TABLE {ks}.sparse (p int, c int, v int, PRIMARY KEY (p, c))")
    insert = await session.prepare(f"INSERT INTO {ks}.sparse (p, c, v) VALUES (?, ?, ?)")
    limiter = anyio.CapacityLimiter(64)

    async def put(p: int, c: int) -> None:
        async with limiter:
            await session.execute(insert, (p, c, 1 if c % 250 == 0 else 0))

    async with anyio.create_task_group() as group:
        for p in range(20):
            for c in range(500):
                group.start_soon(put, p, c)
    await session.execute(f"DELETE FROM {ks}.sparse WHERE p IN (3, 4, 5, 6)")
    config = StreamConfig(fetch_size=10)
    async with await session.execute_stream(
        f"SELECT p, c FROM {ks}.sparse WHERE v = 1 ALLOW FILTERING", stream_config=config
    ) as stream:
        found = sorted([(row.p, row.c) async for row in stream])
    expected = sorted((p, c) for p in range(20) if p not in (3, 4, 5, 6) for c in (0, 250))
    assert found == expected
    print(f"filtering stream: {stream.pages_requested} pages, {stream.empty_pages} empty")


async def test_resumable_paging_with_signed_tokens(cluster: AsyncCluster, big_table: str) -> None:
    signer = PagingTokenSigner(secrets.token_bytes(32))
    scope = f"partition:{big_table}:42"
    query = f"SELECT c FROM {big_table} WHERE p = %s"
    token: str | None = None
    seen: list[int] = []
    calls = 0
    tokens: list[str] = []
    while True:
        # Each request on a fresh session, as separate web requests would be.
        async with await cluster.connect() as session:
            state = signer.loads(token, scope=scope) if token else None
            page = await session.execute(query, (42,), fetch_size=100, paging_state=state)
            calls += 1
            seen.extend(row.c for row in page)
            token = signer.dumps(page.paging_state, scope=scope)
        if token is None:
            break
        tokens.append(token)
    assert calls in (10, 11)  # the last call may be an empty page marking the end
    assert seen == list(range(ROWS_PER_PARTITION))

    raw = bytearray(tokens[3].encode())
    raw[len(raw) // 2] = ord("A") if raw[len(raw) // 2] != ord("A") else ord("B")
    with pytest.raises(InvalidPagingToken, match="altered"):
        signer.loads(raw.decode(), scope=scope)
    with pytest.raises(InvalidPagingToken):
        signer.loads(tokens[3], scope="partition:other")
    with pytest.raises(InvalidPagingToken):
        PagingTokenSigner(secrets.token_bytes(32)).loads(tokens[3], scope=scope)
    with pytest.raises(QueryError):  # InvalidPagingToken is a QueryError (and ValueError)
        signer.loads("not a token!", scope=scope)


async def test_fan_out_processes_every_row_once(
    session: AsyncCassandraSession, big_table: str
) -> None:
    seen: list[int] = []
    workers_used: set[int] = set()
    lock = anyio.Lock()

    async def handle(row: Any) -> None:
        async with lock:
            seen.append(row.v)
        workers_used.add(anyio.get_current_task().id)
        await anyio.lowlevel.checkpoint()

    config = StreamConfig(fetch_size=1000)
    async with await session.execute_stream(
        f"SELECT v FROM {big_table} WHERE p IN (1, 2, 3, 4, 5)", stream_config=config
    ) as stream:
        await fan_out(stream, handle, workers=4)
    assert sorted(seen) == sorted(
        p * ROWS_PER_PARTITION + c for p in range(1, 6) for c in range(1000)
    )
    assert len(seen) == 5000
    assert len(workers_used) == 4
    assert stream.is_closed


async def test_a_failing_worker_ends_the_group_and_closes_the_stream(
    session: AsyncCassandraSession, big_table: str
) -> None:
    handled = 0

    async def handle(page: Any) -> None:
        nonlocal handled
        handled += 1
        if handled == 3:
            raise RuntimeError("worker failed on its page")
        await anyio.sleep(0.01)

    stream = await session.execute_stream(
        f"SELECT * FROM {big_table}", stream_config=StreamConfig(fetch_size=200)
    )
    with pytest.RaisesGroup(pytest.RaisesExc(RuntimeError, match="worker failed")):
        await fan_out(stream, handle, workers=4, pages=True)
    assert stream.is_closed
    assert stream.pages_requested < PARTITIONS * ROWS_PER_PARTITION // 200
    await wait_until(lambda: session.requests_registered == 0, "the stream is released")
    assert session.requests_in_flight == 0


async def test_feed_into_a_memory_object_stream_with_backpressure(
    session: AsyncCassandraSession, big_table: str
) -> None:
    send, receive = anyio.create_memory_object_stream[Any](max_buffer_size=0)
    config = StreamConfig(fetch_size=100, read_ahead=1)
    stream = await session.execute_stream(f"SELECT * FROM {big_table}", stream_config=config)
    taken = 0
    async with anyio.create_task_group() as group:
        group.start_soon(stream.feed, send)
        async with receive:
            async for _ in receive:
                taken += 1
                if taken == 250:
                    # A slow consumer: the feeder waits on send(), the stream on it.
                    await anyio.sleep(0.2)
                    assert stream.pages_requested <= 4
                    break
    assert stream.is_closed
    await wait_until(lambda: session.requests_registered == 0, "the stream is released")


async def test_a_page_that_does_not_arrive_in_time_raises(pausable_node: LocalCassandra) -> None:
    async with (
        AsyncCluster(pausable_node.contact_points, port=pausable_node.native_port) as cluster,
        await cluster.connect() as session,
    ):
        config = StreamConfig(fetch_size=2, read_ahead=0, timeout_seconds=0.5)
        stream = await session.execute_stream(
            "SELECT keyspace_name FROM system_schema.keyspaces", stream_config=config
        )
        async with stream:
            await stream.__anext__()
            await stream.__anext__()  # the first page is used up
            pausable_node.pause()
            try:
                with anyio.fail_after(10), pytest.raises(TimeoutError, match="did not arrive"):
                    await stream.__anext__()
            finally:
                pausable_node.resume()
        assert stream.is_closed
        await wait_until(lambda: session.requests_registered == 0, "the page is dropped")
        assert (await session.execute("SELECT key FROM system.local")).one().key == "local"
