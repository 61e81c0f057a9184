"""What the server says reaches the caller: its warnings (every page's), a way to run
what it will only run unpaged, and no silent change of who a request runs as (both
backends, real node)."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from cassandra.query import BatchStatement, SimpleStatement

from async_cassandra import AsyncCassandraSession, ConfigurationError, QueryError, StreamConfig
from async_cassandra._paging_state import is_well_formed

pytestmark = pytest.mark.anyio

# Cassandra 5.0 defaults: tombstone_warn_threshold 1000, batch_size_warn_threshold 5 KiB.
TOMBSTONES_PER_GAP = 1100
LIVE_PER_GAP = 20


@pytest.fixture
async def tombstoned(session: AsyncCassandraSession, ks: str) -> str:
    """One partition: 1100 deleted rows, 20 live, 1100 deleted, 20 live. Reading it 20
    rows per page, pages 1 and 2 each step over more tombstones than the threshold."""
    await session.execute(f"CREATE TABLE {ks}.t (p int, c int, v int, PRIMARY KEY (p, c))")
    insert = await session.prepare(f"INSERT INTO {ks}.t (p, c, v) VALUES (0, ?, 1)")
    delete = await session.prepare(f"DELETE FROM {ks}.t WHERE p = 0 AND c = ?")
    gap = TOMBSTONES_PER_GAP + LIVE_PER_GAP
    rows = range(2 * gap)

    async def write(c: int) -> None:
        await session.execute(insert, [c])
        if c % gap < TOMBSTONES_PER_GAP:
            await session.execute(delete, [c])

    for start in range(0, len(rows), 200):  # 200 at a time
        async with anyio.create_task_group() as group:
            for c in rows[start : start + 200]:
                group.start_soon(write, c)
    return f"{ks}.t"


def tombstone_warnings(warnings: list[str]) -> list[str]:
    return [w for w in warnings if "tombstone" in w]


async def test_every_pages_warnings_reach_a_result_and_a_stream(
    session: AsyncCassandraSession, tombstoned: str
) -> None:
    query = SimpleStatement(f"SELECT c FROM {tombstoned} WHERE p = 0", fetch_size=LIVE_PER_GAP)
    result = await session.execute(query)
    assert len(result) == 2 * LIVE_PER_GAP
    # Was: only the last page's, and only on the driver's response_future.
    assert len(tombstone_warnings(result.warnings)) == 2
    assert all("tombstone" in w for w in tombstone_warnings(result.warnings))

    config = StreamConfig(fetch_size=LIVE_PER_GAP)
    async with await session.execute_stream(
        f"SELECT c FROM {tombstoned} WHERE p = 0", stream_config=config
    ) as stream:
        rows = [row async for row in stream]
    assert len(rows) == 2 * LIVE_PER_GAP
    assert len(tombstone_warnings(stream.warnings)) == 2


async def test_a_large_batchs_warning_reaches_the_result(
    session: AsyncCassandraSession, ks: str
) -> None:
    await session.execute(f"CREATE TABLE {ks}.big (k int PRIMARY KEY, v text)")
    batch = BatchStatement()
    for k in range(10):
        batch.add(SimpleStatement(f"INSERT INTO {ks}.big (k, v) VALUES (%s, %s)"), (k, "x" * 1024))
    result = await session.execute(batch)
    assert any("Batch" in w and "exceeding" in w for w in result.warnings), result.warnings
    assert (await session.execute(f"SELECT * FROM {ks}.big WHERE k = 1")).warnings == []


async def test_fetch_size_zero_runs_a_statement_unpaged(
    session: AsyncCassandraSession, tombstoned: str
) -> None:
    query = f"SELECT c FROM {tombstoned} WHERE p IN (0, 1) ORDER BY c DESC"
    with pytest.raises(QueryError, match=r"disable paging.*fetch_size=0"):
        await session.execute(query)
    result = await session.execute(query, fetch_size=0)  # was: refused as invalid
    last = 2 * (TOMBSTONES_PER_GAP + LIVE_PER_GAP) - 1
    assert [row.c for row in result][:2] == [last, last - 1]  # ordered, as asked
    assert len(result) == 2 * LIVE_PER_GAP
    assert not result.has_more_pages
    statement = SimpleStatement(query, fetch_size=100)
    await session.execute(statement, fetch_size=0)
    assert statement.fetch_size == 100  # the caller's statement is left as it was


async def test_execute_as_is_refused_on_apache_cassandra_and_the_payload_is_left_alone(
    session: AsyncCassandraSession, ks: str
) -> None:
    payload = {"app": b"orders"}
    with pytest.raises(ConfigurationError, match="DataStax Enterprise"):
        await session.execute(
            "SELECT key FROM system.local", custom_payload=payload, execute_as="x"
        )
    assert payload == {"app": b"orders"}  # was: ProxyExecute written into it
    sent: list[Any] = []
    session.driver_session.add_request_init_listener(sent.append)
    try:
        await session.execute("SELECT key FROM system.local", custom_payload=payload)
    finally:
        session.driver_session.remove_request_init_listener(sent.append)
    assert sent[0].message.custom_payload == payload
    assert sent[0].message.custom_payload is not payload  # a copy goes out


async def test_every_paging_state_the_server_gives_is_accepted_back(
    session: AsyncCassandraSession, tombstoned: str
) -> None:
    states = []
    state = None
    query = f"SELECT c FROM {tombstoned} WHERE p = 0"
    for _ in range(5):
        page = await session.execute(query, fetch_size=7, paging_state=state)
        if page.paging_state is None:
            break
        state = page.paging_state
        states.append(state)
    for table_query in ["SELECT * FROM system_schema.tables", "SELECT * FROM system.local"]:
        page = await session.execute(table_query, fetch_size=3)
        if page.paging_state is not None:
            states.append(page.paging_state)
    assert len(states) >= 5
    assert all(is_well_formed(state) for state in states)
    assert not is_well_formed(b"let me read other rows")
