"""``execute(..., prepare=True)`` never answers with a statement prepared for another
meaning of the text: another keyspace, or a schema that has changed since."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest

from async_cassandra import AsyncCassandraSession, AsyncCluster

pytestmark = pytest.mark.anyio

WHOAMI = "SELECT v FROM whoami WHERE k = ?"


@pytest.fixture
async def two_keyspaces(cassandra_driver_session: Any) -> AsyncIterator[tuple[str, str]]:
    """ks_a and ks_b, each with whoami(k int, v text) holding (1, 'a') / (1, 'b')."""
    names = (f"ks_a_{secrets.token_hex(3)}", f"ks_b_{secrets.token_hex(3)}")
    for name, value in zip(names, "ab", strict=True):
        cassandra_driver_session.execute(
            f"CREATE KEYSPACE {name} WITH replication = "
            "{'class': 'SimpleStrategy', 'replication_factor': 1}"
        )
        cassandra_driver_session.execute(f"CREATE TABLE {name}.whoami (k int PRIMARY KEY, v text)")
        cassandra_driver_session.execute(f"INSERT INTO {name}.whoami (k, v) VALUES (1, '{value}')")
    yield names
    for name in names:
        cassandra_driver_session.execute(f"DROP KEYSPACE IF EXISTS {name}")


async def whoami(session: AsyncCassandraSession) -> str:
    value: str = (await session.execute(WHOAMI, [1], prepare=True)).one().v
    return value


async def test_the_cache_follows_set_keyspace(
    cluster: AsyncCluster, two_keyspaces: tuple[str, str]
) -> None:
    ks_a, ks_b = two_keyspaces
    async with await cluster.connect(ks_a) as session:
        assert await whoami(session) == "a"
        await session.set_keyspace(ks_b)
        assert await whoami(session) == "b"  # was 'a': the statement prepared in ks_a
        await session.set_keyspace(ks_a)
        assert await whoami(session) == "a"
        assert session.prepared_statements_cached == 2  # one per keyspace, reused


async def test_the_cache_follows_a_use_statement(
    cluster: AsyncCluster, two_keyspaces: tuple[str, str]
) -> None:
    ks_a, ks_b = two_keyspaces
    async with await cluster.connect() as session:
        await session.execute(f"USE {ks_a}")
        assert await whoami(session) == "a"
        await session.execute(f'USE "{ks_b}"')
        assert session.keyspace == ks_b
        assert await whoami(session) == "b"


async def test_a_session_connected_to_another_keyspace_prepares_its_own(
    cluster: AsyncCluster, two_keyspaces: tuple[str, str]
) -> None:
    ks_a, ks_b = two_keyspaces
    async with await cluster.connect(ks_a) as first, await cluster.connect(ks_b) as second:
        assert (await whoami(first), await whoami(second)) == ("a", "b")


@pytest.fixture
async def table_t(session: AsyncCassandraSession, ks: str) -> str:
    await session.execute(f"CREATE TABLE {ks}.t (pk int PRIMARY KEY, x int)")
    return f"{ks}.t"


async def test_a_table_recreated_with_other_types_through_this_cluster(
    session: AsyncCassandraSession, table_t: str
) -> None:
    update = f"UPDATE {table_t} SET x = ? WHERE pk = ?"
    await session.execute(update, [5, 1], prepare=True)
    await session.execute(f"DROP TABLE {table_t}")
    await session.execute(f"CREATE TABLE {table_t} (pk int PRIMARY KEY, x blob)")
    # Was: "Expected: Int32Type" for the rest of the session.
    await session.execute(update, [b"\x01", 1], prepare=True)
    row = (await session.execute(f"SELECT x FROM {table_t} WHERE pk = 1")).one()
    assert row.x == b"\x01"
    # And back: a value of the old type now fails clearly, as a fresh prepare would.
    with pytest.raises(TypeError, match=r'"x", a CQL blob'):
        await session.execute(update, [5, 1], prepare=True)
    assert (await session.execute(f"SELECT x FROM {table_t} WHERE pk = 1")).one().x == b"\x01"


async def test_a_table_recreated_by_another_client(
    session: AsyncCassandraSession, table_t: str, cassandra_driver_session: Any
) -> None:
    # Another client's change reaches this cluster's metadata only after its schema
    # event is debounced: binding against the stale types fails, and the cache then
    # prepares again, once.
    update = f"UPDATE {table_t} SET x = ? WHERE pk = ?"
    await session.execute(update, [5, 1], prepare=True)

    def recreate() -> None:
        cassandra_driver_session.execute(f"DROP TABLE {table_t}")
        cassandra_driver_session.execute(f"CREATE TABLE {table_t} (pk int PRIMARY KEY, x text)")

    await anyio.to_thread.run_sync(recreate)
    await session.execute(update, ["now text", 1], prepare=True)
    row = (await session.execute(f"SELECT x FROM {table_t} WHERE pk = 1")).one()
    assert row.x == "now text"


async def test_select_star_sees_a_column_added_later(
    session: AsyncCassandraSession, table_t: str
) -> None:
    select = f"SELECT * FROM {table_t} WHERE pk = ?"
    await session.execute(f"INSERT INTO {table_t} (pk, x) VALUES (1, 10)")
    before = (await session.execute(select, [1], prepare=True)).one()
    assert before._fields == ("pk", "x")
    await session.execute(f"ALTER TABLE {table_t} ADD y text")
    await session.execute(f"UPDATE {table_t} SET y = 'new' WHERE pk = 1")
    after = (await session.execute(select, [1], prepare=True)).one()
    assert (after.pk, after.x, after.y) == (1, 10, "new")
