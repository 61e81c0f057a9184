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
from typing import Any

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


def cyclic_garbage() -> list[str]:
    """Collect; the names of request parts found only through a cycle (kept aside by
    DEBUG_SAVEALL instead of freed)."""
    gc.collect()
    found = [
        type(o).__qualname__
        for o in gc.garbage
        if type(o).__qualname__ in REQUEST_PARTS and not is_driver_prepare(o)
    ]
    gc.garbage.clear()
    return found


def is_driver_prepare(part: object) -> bool:
    """The driver's own prepare (``prepare=True`` runs it once, in a worker thread): its
    future is cyclic garbage too, freed whenever the driver's timer queue lets it go,
    which may be in the middle of a test. Not a request of ours; prepares are cached."""
    return type(getattr(part, "message", None)).__name__ == "PrepareMessage"


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


def cases(session: AsyncCassandraSession, table: str) -> dict[str, Callable[[], Awaitable[Any]]]:
    # prepare=True: prepared once, through the session's cache (the driver's own
    # prepare, in a worker thread, is not a request of ours).
    select = f"SELECT * FROM {table} WHERE id = ?"
    insert = f"INSERT INTO {table} (id, v) VALUES (?, ?)"

    async def prepared() -> None:
        (await session.execute(select, [1], prepare=True)).one()

    async def simple() -> None:
        await session.execute(f"SELECT * FROM {table} WHERE id = %s", [2])

    async def every_page() -> None:
        assert (
            len(await session.execute(SimpleStatement(f"SELECT * FROM {table}", fetch_size=7)))
            == 50
        )

    async def stream_to_the_end() -> None:
        config = StreamConfig(fetch_size=7)
        async with await session.execute_stream(
            f"SELECT * FROM {table}", stream_config=config
        ) as rows:
            async for _ in rows:
                pass

    async def stream_left_early() -> None:
        config = StreamConfig(fetch_size=7)
        async with await session.execute_stream(
            f"SELECT * FROM {table}", stream_config=config
        ) as rows:
            async for _ in rows:
                break

    async def batch() -> None:
        statements = BatchStatement()
        statements.add(SimpleStatement(insert.replace("?", "%s")), [100, "a"])
        statements.add(SimpleStatement(insert.replace("?", "%s")), [101, "b"])
        await session.execute(statements)

    async def server_error() -> None:
        with pytest.raises(QueryError):
            await session.execute(f"SELECT * FROM {table}_missing")

    async def driver_timeout() -> None:
        with pytest.raises(TimeoutError):
            await session.execute(select, [3], timeout=1e-6, prepare=True)

    async def bad_parameter() -> None:
        with pytest.raises(QueryError):
            await session.execute(select, ["not an int"], prepare=True)

    async def unknown_execution_profile() -> None:
        with pytest.raises(QueryError):
            await session.execute(select, [1], prepare=True, execution_profile="nope")

    async def failed_prepare() -> None:
        with pytest.raises(QueryError):
            await session.prepare(f"SELECT * FROM {table}_missing WHERE id = ?")

    async def cancelled() -> None:
        with anyio.move_on_after(0):
            await session.execute(f"SELECT * FROM {table} WHERE id = %s", [4])

    return {
        "prepared": prepared,
        "simple": simple,
        "every_page": every_page,
        "stream_to_the_end": stream_to_the_end,
        "stream_left_early": stream_left_early,
        "batch": batch,
        "server_error": server_error,
        "driver_timeout": driver_timeout,
        "bad_parameter": bad_parameter,
        "unknown_execution_profile": unknown_execution_profile,
        "failed_prepare": failed_prepare,
        "cancelled": cancelled,
    }


CASES = [
    "prepared",
    "simple",
    "every_page",
    "stream_to_the_end",
    "stream_left_early",
    "batch",
    "server_error",
    "driver_timeout",
    "bad_parameter",
    "unknown_execution_profile",
    "failed_prepare",
    "cancelled",
]


@pytest.mark.parametrize("observed", [False, True], ids=["plain", "observed"])
@pytest.mark.parametrize("case", CASES)
async def test_a_finished_request_leaves_no_cycle(
    session: AsyncCassandraSession, table: str, case: str, observed: bool, no_collector: None
) -> None:
    call = cases(session, table)[case]
    observer = create_metrics_system(backend="memory")
    if observed:
        session.add_observer(observer)
    try:
        await call()  # prepares what it prepares, outside the count
        cyclic_garbage()
        for _ in range(CALLS):
            await call()
        # A cancelled or timed-out request's late answer: let the driver finish it.
        await anyio.sleep(0.2)
        found = cyclic_garbage()
    finally:
        if observed:
            session.remove_observer(observer)
    assert found == [], f"{len(found)} request parts in reference cycles after {CALLS} calls"
