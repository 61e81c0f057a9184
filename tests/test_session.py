"""The session and its results against the real node, on asyncio and trio."""

from __future__ import annotations

import uuid

import anyio
import pytest
from cassandra.query import (
    BatchStatement,
    BatchType,
    SimpleStatement,
    dict_factory,
    named_tuple_factory,
)

from async_cassandra import AsyncCassandraSession, AsyncCluster, AsyncResultSet, QueryError

pytestmark = pytest.mark.anyio


@pytest.fixture
async def users(session: AsyncCassandraSession, ks: str) -> str:
    table = f"{ks}.users"
    await session.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, name text, email text)")
    insert = await session.prepare(f"INSERT INTO {table} (id, name, email) VALUES (?, ?, ?)")
    async with anyio.create_task_group() as tg:
        for i in range(20):
            tg.start_soon(session.execute, insert, (i, f"user{i}", f"u{i}@example.com"))
    return table


async def test_plain_string_with_positional_and_named_parameters(
    session: AsyncCassandraSession, users: str
) -> None:
    by_position = await session.execute(f"SELECT name FROM {users} WHERE id = %s", (3,))
    by_name = await session.execute(f"SELECT name FROM {users} WHERE id = %(id)s", {"id": 4})
    assert by_position.one().name == "user3"
    assert by_name.one().name == "user4"


async def test_statements_of_every_kind(session: AsyncCassandraSession, users: str) -> None:
    simple = SimpleStatement(f"SELECT name FROM {users} WHERE id = %s")
    assert (await session.execute(simple, (5,))).one().name == "user5"

    prepared = await session.prepare(f"SELECT name FROM {users} WHERE id = ?")
    assert (await session.execute(prepared, [6])).one().name == "user6"
    assert (await session.execute(prepared.bind([7]))).one().name == "user7"

    named = await session.prepare(f"SELECT name FROM {users} WHERE id = :id")
    assert (await session.execute(named, {"id": 8})).one().name == "user8"


async def test_batch_statement_and_execute_batch(
    session: AsyncCassandraSession, users: str
) -> None:
    insert = await session.prepare(f"INSERT INTO {users} (id, name) VALUES (?, ?)")
    batch = BatchStatement(batch_type=BatchType.LOGGED)
    for i in range(100, 105):
        batch.add(insert, (i, f"batched{i}"))
    result = await session.execute_batch(batch)
    assert len(result) == 0
    rows = await session.execute(f"SELECT id FROM {users} WHERE id IN (100, 101, 102, 103, 104)")
    assert sorted(r.id for r in rows) == [100, 101, 102, 103, 104]


async def test_results_without_rows_never_hang(session: AsyncCassandraSession, ks: str) -> None:
    # DDL, INSERT, TRUNCATE and an empty SELECT all complete with an empty result.
    results = [
        await session.execute(f"CREATE TABLE {ks}.empty (id int PRIMARY KEY)"),
        await session.execute(f"INSERT INTO {ks}.empty (id) VALUES (1)"),
        await session.execute(f"TRUNCATE {ks}.empty"),
        await session.execute(f"SELECT * FROM {ks}.empty"),
    ]
    for result in results:
        assert isinstance(result, AsyncResultSet)
        assert len(result) == 0
        assert result.one() is None
        assert result.all() == []
        assert not result


async def test_every_page_is_fetched_by_default(session: AsyncCassandraSession, ks: str) -> None:
    await session.execute(f"CREATE TABLE {ks}.paged (p int, c int, PRIMARY KEY (p, c))")
    insert = await session.prepare(f"INSERT INTO {ks}.paged (p, c) VALUES (0, ?)")
    async with anyio.create_task_group() as tg:
        for c in range(250):
            tg.start_soon(session.execute, insert, (c,))
    statement = SimpleStatement(f"SELECT c FROM {ks}.paged WHERE p = 0", fetch_size=30)
    result = await session.execute(statement)
    assert [row.c for row in result] == list(range(250))
    assert not result.has_more_pages
    assert statement.fetch_size == 30  # the caller's statement is not changed


async def test_one_page_with_fetch_size_and_paging_state(
    session: AsyncCassandraSession, users: str
) -> None:
    query = f"SELECT id FROM {users}"
    seen: list[int] = []
    state = None
    calls = 0
    while True:
        page = await session.execute(query, fetch_size=7, paging_state=state)
        calls += 1
        seen.extend(row.id for row in page)
        assert len(page) <= 7
        if not page.has_more_pages:
            break
        state = page.paging_state
    assert sorted(seen) == list(range(20))
    assert calls == 3


async def test_result_set_api(session: AsyncCassandraSession, users: str) -> None:
    result = await session.execute(f"SELECT id, name FROM {users} WHERE id IN (1, 2, 3)")
    assert len(result) == 3
    assert result.column_names == ["id", "name"]
    assert result.column_types is not None
    assert len(result.column_types) == 2
    assert result[0].id == 1
    assert result[-1].id == 3
    assert result.one().id == 1
    assert [r.id for r in result.all()] == [1, 2, 3]
    assert list(result) == list(result.rows)
    # Two iterations never interfere: interleave them.
    first, second = iter(result), iter(result)
    assert next(first).id == 1
    assert [r.id for r in second] == [1, 2, 3]
    assert [r.id for r in first] == [2, 3]
    assert [r.id async for r in result] == [1, 2, 3]
    assert [r.id async for r in result] == [1, 2, 3]
    assert not result.has_more_pages
    assert result.paging_state is None


async def test_lightweight_transactions_report_was_applied(
    session: AsyncCassandraSession, users: str
) -> None:
    first = await session.execute(
        f"INSERT INTO {users} (id, name) VALUES (500, 'lwt') IF NOT EXISTS"
    )
    again = await session.execute(
        f"INSERT INTO {users} (id, name) VALUES (500, 'lwt') IF NOT EXISTS"
    )
    assert first.was_applied is True
    assert again.was_applied is False

    batch = BatchStatement()
    batch.add(SimpleStatement(f"UPDATE {users} SET name = 'x' WHERE id = 500 IF name = 'nope'"))
    assert (await session.execute(batch)).was_applied is False

    plain = await session.execute(f"SELECT * FROM {users} WHERE id = 500")
    with pytest.raises(RuntimeError):
        _ = plain.was_applied


async def test_query_trace(session: AsyncCassandraSession, users: str) -> None:
    result = await session.execute(f"SELECT * FROM {users} WHERE id = 1", trace=True)
    trace = await result.query_trace()
    assert trace is not None
    assert trace.duration is not None
    assert trace.events
    untraced = await session.execute(f"SELECT * FROM {users} WHERE id = 1")
    assert await untraced.query_trace() is None


async def test_prepare_true_prepares_once_through_the_cache(
    session: AsyncCassandraSession, users: str
) -> None:
    query = f"SELECT name FROM {users} WHERE id = ?"
    with pytest.raises(QueryError, match="prepare"):
        await session.execute(query, [1])
    cached = session.prepared_statements_cached
    first = await session.execute(query, [1], prepare=True)
    second = await session.execute(query, [2], prepare=True)
    assert (first.one().name, second.one().name) == ("user1", "user2")
    assert session.prepared_statements_cached == cached + 1


async def test_row_factory_of_the_driver_session_is_honoured(
    cassandra_node: object, users: str
) -> None:
    node = cassandra_node
    async with (
        AsyncCluster(node.contact_points, port=node.port) as cluster,  # type: ignore[attr-defined]
        await cluster.connect() as session,
    ):
        session.driver_session.row_factory = dict_factory
        row = (await session.execute(f"SELECT id, name FROM {users} WHERE id = 9")).one()
        assert row == {"id": 9, "name": "user9"}
        session.driver_session.row_factory = named_tuple_factory
        assert (await session.execute(f"SELECT name FROM {users} WHERE id = 9")).one().name


async def test_set_keyspace_and_keyspace_property(cluster: AsyncCluster, users: str) -> None:
    keyspace = users.split(".")[0]
    async with await cluster.connect() as session:
        assert session.keyspace is None
        await session.set_keyspace(keyspace)
        assert session.keyspace == keyspace
        assert (await session.execute("SELECT name FROM users WHERE id = 1")).one().name == "user1"
    assert session.is_closed


async def test_session_made_under_one_loop_works_under_another(
    cluster: AsyncCluster, users: str
) -> None:
    # The session fixture was connected under a loop (anyio.run) that has since closed;
    # a session made here is also used from a worker thread's own event loop.
    async with await cluster.connect() as session:

        def in_another_loop() -> str:
            async def read() -> str:
                row = (await session.execute(f"SELECT name FROM {users} WHERE id = 2")).one()
                return str(row.name)

            return anyio.run(read, backend="trio")

        assert await anyio.to_thread.run_sync(in_another_loop) == "user2"
        assert (await session.execute(f"SELECT name FROM {users} WHERE id = 3")).one()


async def test_close_and_shutdown_are_idempotent(cassandra_node: object) -> None:
    node = cassandra_node
    cluster = AsyncCluster(node.contact_points, port=node.port)  # type: ignore[attr-defined]
    session = await cluster.connect()
    await session.close()
    await session.close()
    assert session.is_closed
    await cluster.shutdown()
    await cluster.shutdown()
    await cluster.close()
    assert cluster.is_closed


async def test_register_user_type_and_metadata(cassandra_node: object, ks: str) -> None:
    # A cluster of its own: a registered type outlives the test's keyspace, and the
    # driver then fails every later connect of that cluster.
    node = cassandra_node
    async with (
        AsyncCluster(node.contact_points, port=node.port) as cluster,  # type: ignore[attr-defined]
        await cluster.connect() as session,
    ):
        await session.execute(f"CREATE TYPE {ks}.address (street text, zip int)")
        await session.execute(f"CREATE TABLE {ks}.people (id uuid PRIMARY KEY, home address)")

        class Address:
            def __init__(self, street: str, zip: int) -> None:
                self.street, self.zip = street, zip

        await cluster.refresh_schema_metadata()
        cluster.register_user_type(ks, "address", Address)
        person = uuid.uuid4()
        await session.execute(
            f"INSERT INTO {ks}.people (id, home) VALUES (%s, %s)",
            (person, Address("Main St", 12345)),
        )
        row = (
            await session.execute(f"SELECT home FROM {ks}.people WHERE id = %s", (person,))
        ).one()
        assert isinstance(row.home, Address)
        assert (row.home.street, row.home.zip) == ("Main St", 12345)
        assert ks in cluster.metadata.keyspaces


async def test_rows_are_named_tuples_of_one_class_per_column_set(
    session: AsyncCassandraSession, users: str
) -> None:
    first = await session.execute(f"SELECT id, name FROM {users} WHERE id = 1")
    second = await session.execute(f"SELECT id, name FROM {users} WHERE id = 2")
    other = await session.execute(f"SELECT name, email FROM {users} WHERE id = 2")
    row = first.one()
    assert type(row).__name__ == "Row"
    assert row._fields == ("id", "name")
    assert row == (1, "user1")
    assert (row.id, row.name) == (1, "user1")
    # The driver's default makes a new class per response; ours is made once.
    assert type(second.one()) is type(row)
    assert type(other.one()) is not type(row)
    assert other.one()._fields == ("name", "email")
    # Column names that are not identifiers are renamed as the driver renames them.
    count = (await session.execute(f"SELECT count(*) FROM {users}")).one()
    assert count.count == 20
