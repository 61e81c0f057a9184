"""Results are right whatever makes the rows: row factories of every kind, lightweight
transactions and conditional batches however they are sent, and parameters that cannot
be bound (named, with the reason). Never silent wrong rows; nothing left registered."""

from __future__ import annotations

import ipaddress
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import anyio
import pandas as pd
import pytest
from cassandra.cluster import EXEC_PROFILE_DEFAULT, ExecutionProfile
from cassandra.policies import DCAwareRoundRobinPolicy, TokenAwarePolicy
from cassandra.query import (
    BatchStatement,
    SimpleStatement,
    dict_factory,
    named_tuple_factory,
    ordered_dict_factory,
    tuple_factory,
)

from async_cassandra import (
    AsyncCassandraSession,
    AsyncCluster,
    ConfigurationError,
    QueryError,
    StreamConfig,
)

pytestmark = pytest.mark.anyio

ROWS = 25


def pandas_factory(colnames: list[str], rows: list[Any]) -> pd.DataFrame:
    """The driver documentation's recipe: one DataFrame per page."""
    return pd.DataFrame(rows, columns=colnames)


def generator_factory(colnames: list[str], rows: list[Any]) -> Any:
    return (dict(zip(colnames, row, strict=True)) for row in rows)


def failing_on_second_page(colnames: list[str], rows: list[Any]) -> list[Any]:
    if rows and rows[0][0] >= 10:
        raise ZeroDivisionError("the user's factory failed")
    return list(rows)


@pytest.fixture
async def nums(session: AsyncCassandraSession, ks: str) -> str:
    await session.execute(f"CREATE TABLE {ks}.nums (p int, c int, v text, PRIMARY KEY (p, c))")
    insert = await session.prepare(f"INSERT INTO {ks}.nums (p, c, v) VALUES (0, ?, ?)")
    async with anyio.create_task_group() as group:
        for c in range(ROWS):
            group.start_soon(session.execute, insert, [c, f"v{c}"])
    return f"{ks}.nums"


@pytest.fixture
async def factory_cluster(cassandra_node: Any) -> AsyncIterator[AsyncCluster]:
    """A cluster with one execution profile per row factory under test."""
    policy = TokenAwarePolicy(DCAwareRoundRobinPolicy())
    factories = {
        "pandas": pandas_factory,
        "generator": generator_factory,
        "failing": failing_on_second_page,
        "dict": dict_factory,
        "tuple": tuple_factory,
        "ordered_dict": ordered_dict_factory,
        "named_tuple": named_tuple_factory,
    }
    profiles = {
        name: ExecutionProfile(load_balancing_policy=policy, row_factory=factory)
        for name, factory in factories.items()
    }
    profiles[EXEC_PROFILE_DEFAULT] = ExecutionProfile(load_balancing_policy=policy)
    async with AsyncCluster(
        cassandra_node.contact_points, port=cassandra_node.port, execution_profiles=profiles
    ) as cluster:
        yield cluster


async def test_a_dataframe_factory_gets_every_row_of_every_page(
    factory_cluster: AsyncCluster, nums: str
) -> None:
    async with await factory_cluster.connect() as session:
        query = SimpleStatement(f"SELECT c, v FROM {nums}", fetch_size=10)  # 3 pages
        result = await session.execute(query, execution_profile="pandas")
        frame = result.current_rows
        assert isinstance(frame, pd.DataFrame)  # was: the column names, as rows
        assert list(frame.columns) == ["c", "v"]
        assert list(frame["c"]) == list(range(ROWS))
        assert list(frame["v"]) == [f"v{c}" for c in range(ROWS)]
        assert result._current_rows is frame  # the driver documentation's recipe
        assert (len(result), bool(result)) == (ROWS, True)  # the frame knows its length
        for read_rows in (result.one, result.all, lambda: list(result), lambda: result[0]):
            with pytest.raises(ConfigurationError, match=r"DataFrame.*current_rows"):
                read_rows()

        one_page = await session.execute(query, execution_profile="pandas", fetch_size=10)
        assert list(one_page.current_rows["c"]) == list(range(10))
        assert one_page.has_more_pages
        assert session.requests_registered == 0


async def test_a_dataframe_factory_streams_one_frame_per_page(
    factory_cluster: AsyncCluster, nums: str
) -> None:
    async with await factory_cluster.connect() as session:
        config = StreamConfig(fetch_size=10)
        async with await session.execute_stream(
            f"SELECT c FROM {nums}", stream_config=config, execution_profile="pandas"
        ) as stream:
            frames = [frame async for frame in stream.pages()]
        assert [list(frame["c"]) for frame in frames] == [
            list(range(10)),
            list(range(10, 20)),
            list(range(20, ROWS)),
        ]
        # Row by row: a clear error, not the column names (nor pandas' own error).
        stream = await session.execute_stream(
            f"SELECT c FROM {nums}", stream_config=config, execution_profile="pandas"
        )
        with pytest.raises(ConfigurationError, match=r"DataFrame.*stream\.pages\(\)"):
            async for _row in stream:
                pass
        assert stream.is_closed
        assert await _nothing_registered(session)


async def _nothing_registered(session: AsyncCassandraSession) -> bool:
    with anyio.move_on_after(10):
        while session.requests_registered:  # noqa: ASYNC110 - driver threads change it
            await anyio.sleep(0.01)
    return session.requests_registered == 0


@pytest.mark.parametrize("profile", ["dict", "tuple", "ordered_dict", "named_tuple", "generator"])
async def test_list_factories_join_pages_and_stream_rows(
    factory_cluster: AsyncCluster, nums: str, profile: str
) -> None:
    def as_pair(row: Any) -> tuple[int, str]:
        return (row["c"], row["v"]) if isinstance(row, dict) else (row[0], row[1])

    expected = [(c, f"v{c}") for c in range(ROWS)]
    async with await factory_cluster.connect() as session:
        query = SimpleStatement(f"SELECT c, v FROM {nums}", fetch_size=10)
        result = await session.execute(query, execution_profile=profile)
        assert [as_pair(row) for row in result] == expected
        assert len(result) == ROWS
        one_page = await session.execute(f"SELECT c, v FROM {nums}", execution_profile=profile)
        assert [as_pair(row) for row in one_page] == expected
        assert as_pair(one_page.one()) == expected[0]
        async with await session.execute_stream(
            f"SELECT c, v FROM {nums}", None, StreamConfig(fetch_size=10), execution_profile=profile
        ) as stream:
            assert [as_pair(row) async for row in stream] == expected


async def test_a_factory_that_raises_leaves_nothing_registered(
    factory_cluster: AsyncCluster, nums: str
) -> None:
    async with await factory_cluster.connect() as session:
        query = SimpleStatement(f"SELECT c FROM {nums}", fetch_size=10)
        with pytest.raises(ZeroDivisionError, match="the user's factory"):
            await session.execute(query, execution_profile="failing")
        assert await _nothing_registered(session)
        stream = await session.execute_stream(
            f"SELECT c FROM {nums}", None, StreamConfig(fetch_size=10), execution_profile="failing"
        )
        async with stream:
            with pytest.raises(ZeroDivisionError):
                async for _row in stream:
                    pass
        assert await _nothing_registered(session)
        assert session.requests_in_flight == 0
        assert len((await session.execute(f"SELECT c FROM {nums}")).all()) == ROWS


async def test_the_driver_session_stays_a_plain_driver_session(
    session: AsyncCassandraSession, nums: str
) -> None:
    def lwt_through_the_driver() -> tuple[bool, bool]:
        insert = f"INSERT INTO {nums} (p, c, v) VALUES (1, 1, 'x') IF NOT EXISTS"
        first = session.driver_session.execute(insert).was_applied
        again = session.driver_session.execute(insert).was_applied
        return first, again

    # Was: RuntimeError("Cannot determine LWT result with row factory ...").
    assert await anyio.to_thread.run_sync(lwt_through_the_driver) == (True, False)
    assert session.driver_session.row_factory is named_tuple_factory


@pytest.fixture
async def accounts(session: AsyncCassandraSession, ks: str) -> str:
    await session.execute(f"CREATE TABLE {ks}.acc (id int, seq int, v int, PRIMARY KEY (id, seq))")
    await session.execute(f"INSERT INTO {ks}.acc (id, seq, v) VALUES (1, 1, 10)")
    await session.execute(f"INSERT INTO {ks}.acc (id, seq, v) VALUES (1, 2, 20)")
    return f"{ks}.acc"


async def test_a_conditional_batch_reports_was_applied_however_it_is_sent(
    session: AsyncCassandraSession, accounts: str
) -> None:
    def text(v1: int | str, v2: int | str, comment: str = "") -> str:
        return (
            f"{comment}BEGIN BATCH "
            f"UPDATE {accounts} SET v = 11 WHERE id = 1 AND seq = 1 IF v = {v1}; "
            f"UPDATE {accounts} SET v = 21 WHERE id = 1 AND seq = 2 IF v = {v2}; "
            "APPLY BATCH"
        )

    not_applied = text(99, 99)
    prepared = await session.prepare(text("?", "?"))
    batch = BatchStatement()
    batch.add(SimpleStatement(f"UPDATE {accounts} SET v = 1 WHERE id = 1 AND seq = 1 IF v = 99"))
    batch.add(SimpleStatement(f"UPDATE {accounts} SET v = 2 WHERE id = 1 AND seq = 2 IF v = 99"))
    for statement, parameters in [
        (not_applied, None),
        (text(99, 99, "-- a comment first\n").lower(), None),
        (SimpleStatement(not_applied), None),
        (prepared, [99, 99]),
        (batch, None),
    ]:
        result = await session.execute(statement, parameters)
        assert len(result) == 2  # one row per condition checked
        assert result.was_applied is False  # was: RuntimeError for the strings
    applied = await session.execute(text(10, 20))
    assert applied.was_applied is True
    assert [row.v for row in await session.execute(f"SELECT v FROM {accounts}")] == [11, 21]

    plain = await session.execute(f"SELECT * FROM {accounts}")
    with pytest.raises(RuntimeError, match="only defined for LWT"):
        _ = plain.was_applied


@pytest.fixture
async def typed(session: AsyncCassandraSession, ks: str) -> str:
    await session.execute(
        f"CREATE TABLE {ks}.typed (k int PRIMARY KEY, d decimal, u uuid, i inet, b blob, n int)"
    )
    return f"{ks}.typed"


# (column, value, the class it must also be, what the message must say)
UNBINDABLE = [
    ("d", Decimal("NaN"), ValueError, "NaN and infinities have no CQL decimal encoding"),
    ("d", Decimal("Infinity"), TypeError, "NaN and infinities have no CQL decimal encoding"),
    ("d", Decimal("-Infinity"), TypeError, "NaN and infinities"),
    ("d", Decimal("sNaN"), ValueError, "NaN and infinities"),
    ("d", float("nan"), ValueError, "NaN and infinities"),
    ("d", float("inf"), TypeError, "NaN and infinities"),
    ("u", "3f2504e0-4f89-11d3-9a0c-0305e82c3301", TypeError, "non-UUID"),
    ("i", "not-an-address", ValueError, "inet address"),
    ("b", 5, TypeError, "a blob takes bytes"),
    ("b", True, TypeError, "a blob takes bytes"),
    ("n", 2**31, TypeError, "format requires"),
    ("n", "5", TypeError, "not an integer"),
]


@pytest.mark.parametrize(("column", "value", "also", "says"), UNBINDABLE)
async def test_a_value_that_cannot_be_bound_is_named_with_its_reason(
    session: AsyncCassandraSession, typed: str, column: str, value: Any, also: type, says: str
) -> None:
    statement = await session.prepare(f"INSERT INTO {typed} (k, {column}) VALUES (?, ?)")
    cql_type = {"d": "decimal", "u": "uuid", "i": "inet", "b": "blob", "n": "int"}[column]
    query = f"INSERT INTO {typed} (k, {column}) VALUES (?, ?)"
    for positional, how in [(True, {}), (False, {}), (True, {"prepare": True})]:
        parameters: Any = [1, value] if positional else {"k": 1, column: value}
        with pytest.raises(QueryError) as raised:
            await session.execute(query if how else statement, parameters, **how)
        error = raised.value
        assert isinstance(error, also)
        assert f'parameter 2 ("{column}", a CQL {cql_type})' in str(error)
        assert says in str(error)
        assert repr(value)[:20] in str(error)
        # The driver's own error behind it (none for a blob: the driver takes an int).
        assert (error.__cause__ is None) == (column == "b")
    # Nothing was written, and the session goes on.
    assert (await session.execute(f"SELECT * FROM {typed}")).all() == []
    good = {
        "d": Decimal("1.5"),
        "u": uuid.uuid4(),
        "i": ipaddress.ip_address("127.0.0.1"),
        "b": b"\x01",
        "n": 7,
    }
    await session.execute(statement, [2, good[column]])
    assert (await session.execute(f"SELECT k FROM {typed}")).one().k == 2
