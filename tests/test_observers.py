"""Request observers see every request, page and prepare, in the caller's task, and can
never break a request (both backends, real node)."""

from __future__ import annotations

import contextvars
import logging
import threading
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
from cassandra import ConsistencyLevel
from cassandra.pool import Host
from cassandra.query import BatchStatement, SimpleStatement

from async_cassandra import (
    AsyncCassandraSession,
    AsyncCluster,
    ConfigurationError,
    QueryError,
    StreamConfig,
)
from async_cassandra.observers import (
    ObservedPage,
    ObservedPrepare,
    ObservedRequest,
    RequestObserver,
)
from async_cassandra.testing import LocalCassandra

pytestmark = pytest.mark.anyio

ROWS = 50
caller = contextvars.ContextVar[str]("caller", default="nobody")


class Recorder(RequestObserver):
    """Every call, with the caller's context variable and the thread it ran on."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any, Any]] = []
        self.seen_in: list[tuple[str, int]] = []

    def _note(self, event: str, record: Any, page: Any = None) -> None:
        self.events.append((event, record, page))
        self.seen_in.append((caller.get(), threading.get_ident()))

    def request_started(self, request: ObservedRequest) -> None:
        self._note("started", request)

    def page_ended(self, request: ObservedRequest, page: ObservedPage) -> None:
        self._note("page", request, page)

    def request_ended(self, request: ObservedRequest) -> None:
        self._note("ended", request)

    def prepare_started(self, prepare: ObservedPrepare) -> None:
        self._note("prepare_started", prepare)

    def prepare_ended(self, prepare: ObservedPrepare) -> None:
        self._note("prepare_ended", prepare)

    def kinds(self) -> list[str]:
        return [event for event, _, _ in self.events]

    def pages(self) -> list[ObservedPage]:
        return [page for event, _, page in self.events if event == "page"]

    def last(self, event: str) -> Any:
        return [record for kind, record, _ in self.events if kind == event][-1]


@pytest.fixture
async def observed(
    session: AsyncCassandraSession, ks: str
) -> AsyncIterator[tuple[AsyncCassandraSession, Recorder, str]]:
    """The shared session with a recorder added, and a table of 50 rows."""
    await session.execute(f"CREATE TABLE {ks}.items (p int, c int, v text, PRIMARY KEY (p, c))")
    insert = await session.prepare(f"INSERT INTO {ks}.items (p, c, v) VALUES (0, ?, 'x')")
    async with anyio.create_task_group() as group:
        for c in range(ROWS):
            group.start_soon(session.execute, insert, [c])
    recorder = Recorder()
    session.add_observer(recorder)
    try:
        yield session, recorder, ks
    finally:
        session.remove_observer(recorder)


async def test_a_paged_execute_is_one_request_with_a_page_event_each(
    observed: tuple[AsyncCassandraSession, Recorder, str],
) -> None:
    session, recorder, ks = observed
    caller.set("the caller")
    select = await session.prepare(f"SELECT c, v FROM {ks}.items WHERE p = ?")
    select.consistency_level = ConsistencyLevel.LOCAL_ONE
    recorder.events.clear()
    recorder.seen_in.clear()
    result = await session.execute(select, [0], fetch_size=None)
    statement = SimpleStatement(f"SELECT c FROM {ks}.items WHERE p = %s", fetch_size=10)
    rows = await session.execute(statement, [0])
    assert len(result) == len(rows) == ROWS

    # The prepared statement: one page (5000 rows a page by default).
    assert recorder.kinds()[:3] == ["started", "page", "ended"]
    first = recorder.events[0][1]
    assert first.operation == "execute"
    assert first.statement_type == "prepared"
    assert first.query == f"SELECT c, v FROM {ks}.items WHERE p = ?"  # markers, no values
    assert (first.keyspace, first.table, first.summary) == (ks, "items", "SELECT items")
    assert first.consistency_level == ConsistencyLevel.LOCAL_ONE
    assert first.consistency_name == "local_one"
    assert (first.outcome, first.error, first.pages, first.rows) == ("ok", None, 1, ROWS)
    assert isinstance(first.coordinator, Host)
    assert first.coordinator.address.startswith("127.")
    assert first.attempted_hosts == [first.coordinator]
    assert first.duration is not None
    assert first.duration > 0
    assert first.limiter_wait >= 0

    # The simple statement, 10 rows a page: one request, five pages (and an empty
    # last one the server sends when the rows end on a page boundary).
    second = recorder.events[3][1]
    assert second.statement_type == "simple"
    assert second.query == f"SELECT c FROM {ks}.items WHERE p = %s"
    assert second.fetch_size == 10
    pages = [page for event, record, page in recorder.events if record is second and page]
    assert [page.number for page in pages] == list(range(1, len(pages) + 1))
    assert [page.rows for page in pages][:5] == [10] * 5
    assert sum(page.rows for page in pages) == second.rows == ROWS
    assert all(page.end_time_ns >= page.start_time_ns for page in pages)
    assert recorder.kinds()[3:] == ["started"] + ["page"] * len(pages) + ["ended"]
    assert second.outcome == "ok"
    assert second.pages == len(pages)

    # Every call ran in the caller's task: its context, its (the loop's) thread.
    assert set(recorder.seen_in) == {("the caller", threading.get_ident())}


async def test_a_stream_shows_each_page_as_it_is_taken_and_ends_when_closed(
    observed: tuple[AsyncCassandraSession, Recorder, str],
) -> None:
    session, recorder, ks = observed
    caller.set("the streamer")
    recorder.events.clear()
    async with await session.execute_stream(
        f"SELECT c FROM {ks}.items WHERE p = 0", stream_config=StreamConfig(fetch_size=10)
    ) as stream:
        # execute_stream returned with its first page, shown already.
        assert recorder.kinds() == ["started", "page"]
        taken = [row.c async for row in stream]
    assert taken == list(range(ROWS))
    request = recorder.last("ended")
    assert request.operation == "execute_stream"
    assert (request.outcome, request.rows) == ("ok", ROWS)
    pages = recorder.pages()
    assert [page.rows for page in pages][:5] == [10] * 5
    assert [page.number for page in pages] == list(range(1, len(pages) + 1))
    assert all(page.end_time_ns >= page.start_time_ns for page in pages)
    assert recorder.kinds() == ["started"] + ["page"] * len(pages) + ["ended"]
    assert {seen for seen, _ in recorder.seen_in} == {"the streamer"}


async def test_a_stream_left_early_ends_as_ok_and_a_cancelled_one_as_cancelled(
    observed: tuple[AsyncCassandraSession, Recorder, str],
) -> None:
    session, recorder, ks = observed
    query = f"SELECT c FROM {ks}.items WHERE p = 0"
    async with await session.execute_stream(
        query, stream_config=StreamConfig(fetch_size=10)
    ) as stream:
        async for _ in stream:
            break
    assert recorder.last("ended").outcome == "ok"
    with anyio.CancelScope() as scope:
        async with await session.execute_stream(
            query, stream_config=StreamConfig(fetch_size=10)
        ) as stream:
            async for _ in stream:
                scope.cancel()
                await anyio.lowlevel.checkpoint()
    assert recorder.last("ended").outcome == "cancelled"


async def test_failures_and_cancellations_end_the_request(
    observed: tuple[AsyncCassandraSession, Recorder, str],
) -> None:
    session, recorder, ks = observed
    with pytest.raises(QueryError) as raised:
        await session.execute(f"SELECT nope FROM {ks}.items")
    request = recorder.last("ended")
    assert request.outcome == "error"
    assert request.error is raised.value
    assert recorder.pages()[-1].error is raised.value  # the page that failed
    with pytest.raises(QueryError):
        await session.execute("SELECT * FROM t WHERE k = %s", ["too", "many"])
    assert recorder.last("ended").outcome == "error"  # refused before it was sent
    with anyio.move_on_after(0):
        await session.execute(f"SELECT c FROM {ks}.items")
    cancelled = recorder.last("ended")
    assert (cancelled.outcome, cancelled.error, cancelled.cancelled) == ("cancelled", None, True)


async def test_a_request_cancelled_in_flight_ends_as_cancelled(
    pausable_node: LocalCassandra,
) -> None:
    recorder = Recorder()
    async with (
        AsyncCluster(
            pausable_node.contact_points, port=pausable_node.native_port, observers=[recorder]
        ) as cluster,
        await cluster.connect() as session,
    ):
        assert session.observers == (recorder,)
        pausable_node.pause()
        try:
            with anyio.move_on_after(0.3):
                await session.execute("SELECT * FROM system.local")
        finally:
            pausable_node.resume()
    assert recorder.kinds() == ["started", "ended"]
    request = recorder.last("ended")
    assert request.outcome == "cancelled"
    assert request.duration is not None
    assert request.duration >= 0.3


async def test_a_batch_and_a_prepare_are_observed(
    observed: tuple[AsyncCassandraSession, Recorder, str],
) -> None:
    session, recorder, ks = observed
    insert = await session.prepare(f"INSERT INTO {ks}.items (p, c, v) VALUES (1, ?, 'b')")
    prepared = recorder.last("prepare_ended")
    assert prepared.query == f"INSERT INTO {ks}.items (p, c, v) VALUES (1, ?, 'b')"
    assert (prepared.error, prepared.cancelled) == (None, False)
    assert recorder.kinds()[-2:] == ["prepare_started", "prepare_ended"]
    batch = BatchStatement()
    for c in range(3):
        batch.add(insert, [c])
    await session.execute_batch(batch)
    request = recorder.last("ended")
    assert (request.statement_type, request.batch_size) == ("batch", 3)
    assert (request.operation_name, request.summary, request.query) == ("BATCH", "BATCH", None)
    with pytest.raises(QueryError) as raised:
        await session.prepare(f"SELECT nope FROM {ks}.items WHERE p = ?")
    assert recorder.last("prepare_ended").error is raised.value


class Broken(RequestObserver):
    def __init__(self) -> None:
        self.calls = 0

    def _fail(self, *args: Any) -> None:
        self.calls += 1
        raise RuntimeError("observer bug")

    request_started = page_ended = request_ended = prepare_started = prepare_ended = _fail


async def test_an_observer_that_raises_is_logged_and_breaks_nothing(
    observed: tuple[AsyncCassandraSession, Recorder, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    session, recorder, ks = observed
    broken = Broken()
    session.add_observer(broken)
    try:
        with caplog.at_level(logging.ERROR, logger="async_cassandra.observers"):
            select = await session.prepare(f"SELECT c FROM {ks}.items WHERE p = ?")
            assert len(await session.execute(select, [0])) == ROWS
    finally:
        session.remove_observer(broken)
    assert broken.calls == 5  # prepare started/ended, request started, page, ended
    assert recorder.last("ended").outcome == "ok"  # the next observer still ran
    failures = [r for r in caplog.records if r.name == "async_cassandra.observers"]
    assert len(failures) == 5
    assert all("observer bug" in str(r.exc_info[1]) for r in failures if r.exc_info)


async def test_observers_are_checked_and_removed(session: AsyncCassandraSession) -> None:
    with pytest.raises(ConfigurationError, match="not a request observer"):
        session.add_observer(object())
    with pytest.raises(ConfigurationError, match="not a request observer"):
        AsyncCluster(["127.0.0.1"], observers=[42])
    with pytest.raises(ValueError, match="not in"):
        session.remove_observer(Recorder())
    recorder = Recorder()
    session.add_observer(recorder)
    session.remove_observer(recorder)
    await session.execute("SELECT release_version FROM system.local")
    assert recorder.events == []
    # 0.0.1's metrics= takes an observer (its MetricsMiddleware is one here).
    wrapped = AsyncCassandraSession(session.driver_session, metrics=recorder)
    assert wrapped.observers == (recorder,)
    await wrapped.execute("SELECT release_version FROM system.local")
    assert recorder.kinds() == ["started", "page", "ended"]
