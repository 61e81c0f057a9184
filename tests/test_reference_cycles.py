"""A finished request leaves no reference cycle behind: everything it made is freed by
reference counting the moment the caller drops the result (both backends, a real node).

Why it matters: objects in a cycle wait for the cycle collector, and under load they
pile up across its generations until a full collection frees tens of thousands at once,
holding the event loop 60-140 ms (the point-reads benchmark's loop lag came from there).
The driver's own ``ResponseFuture`` and its timer refer to each other; a failed request's
exception, whose traceback holds the frames that hold the request, is another such
cycle. Each case below made at least one cycle per request before it was broken.
"""

from __future__ import annotations

import gc
from collections.abc import Awaitable, Callable, Iterator

import anyio
import pytest
from cassandra.query import BatchStatement, SimpleStatement

from async_cassandra import (
    AsyncCassandraSession,
    QueryError,
    StreamConfig,
    TimeoutError,
    create_metrics_system,
)

pytestmark = pytest.mark.anyio

# What a request is made of, on the driver's side and ours; none of them may be found
# by the cycle collector after the request is over.
REQUEST_PARTS = {
    "ResponseFuture",
    "DriverRequest",
    "ObservedRequest",
    "ObservedPrepare",
    "AsyncResultSet",
    "AsyncStreamingResultSet",
    "ExecuteMessage",
    "QueryMessage",
    "BatchMessage",
}
CALLS = 10


def cyclic_garbage(table: str) -> list[str]:
    """Collect; the request parts of ``table``'s requests found only through a cycle
    (kept aside by DEBUG_SAVEALL instead of freed), each with its CQL text."""
    gc.collect()
    found = [
        f"{type(part).__qualname__} ({cql_text(part)})"
        for part in gc.garbage
        if type(part).__qualname__ in REQUEST_PARTS and of_this_test(part, table)
    ]
    gc.garbage.clear()
    return found


def cql_text(part: object) -> str | None:
    """The CQL text behind a request part, where it has one."""
    message = getattr(part, "message", part)  # a future's message, or the message
    text = getattr(message, "query", None)
    if isinstance(text, str):
        return text
    query = getattr(part, "query", None)
    statement = getattr(query, "prepared_statement", query)
    text = getattr(statement, "query_string", None)
    return text if isinstance(text, str) else None


def of_this_test(part: object, table: str) -> bool:
    """Whether ``part`` belongs to a request this test made through the library.

    The driver's own requests are cyclic garbage too, freed whenever its timer queue
    lets them go, which may be in the middle of a later test: the keyspace fixture's
    CREATE and DROP KEYSPACE (run on the plain driver session) and the driver's prepare
    (``prepare=True`` runs it once, in a worker thread). Every request of the cases
    names the test's table; those without a text (prepared executions, batches) and
    every part of the library's own are counted."""
    if type(getattr(part, "message", part)).__name__ == "PrepareMessage":
        return False
    text = cql_text(part)
    return text is None or table in text


@pytest.fixture
def no_collector() -> Iterator[None]:
    """The collector off (so nothing is freed behind the test's back) and garbage kept."""
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    gc.garbage.clear()
    try:
        yield
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        if was_enabled:
            gc.enable()


@pytest.fixture
async def table(session: AsyncCassandraSession, ks: str) -> str:
    await session.execute(f"CREATE TABLE {ks}.cyc (id int PRIMARY KEY, v text)")
    insert = await session.prepare(f"INSERT INTO {ks}.cyc (id, v) VALUES (?, ?)")
    for i in range(50):
        await session.execute(insert, [i, f"value {i}"])
    return f"{ks}.cyc"


# Each kind of request, as a call of (session, table). prepare=True prepares once,
# through the session's cache (the driver's own prepare, in a worker thread, is not a
# request of ours).


def _select(table: str) -> str:
    return f"SELECT * FROM {table} WHERE id = ?"


async def prepared(session: AsyncCassandraSession, table: str) -> None:
    (await session.execute(_select(table), [1], prepare=True)).one()


async def simple(session: AsyncCassandraSession, table: str) -> None:
    await session.execute(f"SELECT * FROM {table} WHERE id = %s", [2])


async def every_page(session: AsyncCassandraSession, table: str) -> None:
    statement = SimpleStatement(f"SELECT * FROM {table}", fetch_size=7)
    assert len(await session.execute(statement)) == 50


async def _stream(session: AsyncCassandraSession, table: str, *, to_the_end: bool) -> None:
    config = StreamConfig(fetch_size=7)
    async with await session.execute_stream(f"SELECT * FROM {table}", stream_config=config) as rows:
        async for _ in rows:
            if not to_the_end:
                break


async def stream_to_the_end(session: AsyncCassandraSession, table: str) -> None:
    await _stream(session, table, to_the_end=True)


async def stream_left_early(session: AsyncCassandraSession, table: str) -> None:
    await _stream(session, table, to_the_end=False)


async def batch(session: AsyncCassandraSession, table: str) -> None:
    insert = SimpleStatement(f"INSERT INTO {table} (id, v) VALUES (%s, %s)")
    statements = BatchStatement()
    statements.add(insert, [100, "a"])
    statements.add(insert, [101, "b"])
    await session.execute(statements)


async def server_error(session: AsyncCassandraSession, table: str) -> None:
    with pytest.raises(QueryError):
        await session.execute(f"SELECT * FROM {table}_missing")


async def driver_timeout(session: AsyncCassandraSession, table: str) -> None:
    # A timeout shorter than the time to send the request. Not every such request times
    # out: should the driver's reactor fire the timer before the request has its
    # connection, the driver arms it again 10 ms later (PYTHON-853), and a local node
    # answers within that (seen on a loaded machine, more often with observers, whose
    # hooks run in that window). The answered ones are counted all the same.
    for _ in range(20):
        try:
            await session.execute(_select(table), [3], timeout=1e-6, prepare=True)
        except TimeoutError:
            return
    pytest.fail("none of 20 requests given 1 µs timed out")


async def bad_parameter(session: AsyncCassandraSession, table: str) -> None:
    with pytest.raises(QueryError):
        await session.execute(_select(table), ["not an int"], prepare=True)


async def unknown_execution_profile(session: AsyncCassandraSession, table: str) -> None:
    with pytest.raises(QueryError):
        await session.execute(_select(table), [1], prepare=True, execution_profile="nope")


async def failed_prepare(session: AsyncCassandraSession, table: str) -> None:
    with pytest.raises(QueryError):
        await session.prepare(f"SELECT * FROM {table}_missing WHERE id = ?")


async def cancelled(session: AsyncCassandraSession, table: str) -> None:
    with anyio.move_on_after(0):
        await session.execute(f"SELECT * FROM {table} WHERE id = %s", [4])


CASES: list[Callable[[AsyncCassandraSession, str], Awaitable[None]]] = [
    prepared,
    simple,
    every_page,
    stream_to_the_end,
    stream_left_early,
    batch,
    server_error,
    driver_timeout,
    bad_parameter,
    unknown_execution_profile,
    failed_prepare,
    cancelled,
]


@pytest.mark.parametrize("observed", [False, True], ids=["plain", "observed"])
@pytest.mark.parametrize("case", CASES, ids=lambda case: case.__name__)
async def test_a_finished_request_leaves_no_cycle(
    session: AsyncCassandraSession,
    table: str,
    case: Callable[[AsyncCassandraSession, str], Awaitable[None]],
    observed: bool,
    no_collector: None,
) -> None:
    observer = create_metrics_system(backend="memory")
    if observed:
        session.add_observer(observer)
    try:
        await case(session, table)  # prepares what it prepares, outside the count
        cyclic_garbage(table)
        for _ in range(CALLS):
            await case(session, table)
        # A cancelled or timed-out request's late answer: let the driver finish it.
        await anyio.sleep(0.2)
        found = cyclic_garbage(table)
    finally:
        if observed:
            session.remove_observer(observer)
    assert found == [], f"request parts in reference cycles after {CALLS} calls: {found}"
