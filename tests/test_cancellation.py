"""Cancellation detaches, deadlines reach the driver, scopes close what they opened,
overload waits as an await, and nothing blocks the loop. Real server, both backends."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import anyio
import pytest
from _helpers import wait_until
from cassandra.cluster import EXEC_PROFILE_DEFAULT, ExecutionProfile
from cassandra.policies import DCAwareRoundRobinPolicy, TokenAwarePolicy

from async_cassandra import AsyncCluster
from async_cassandra._portal import current_portal
from async_cassandra.testing import LocalCassandra

pytestmark = pytest.mark.anyio


async def test_a_thousand_cancelled_executes_leave_nothing_behind(
    pausable_node: LocalCassandra, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    async with (
        AsyncCluster(pausable_node.contact_points, port=pausable_node.native_port) as cluster,
        await cluster.connect() as session,
    ):
        stmt = await session.prepare("SELECT key FROM system.local WHERE key = ?")
        finished = 0

        async def execute_until_cancelled() -> None:
            nonlocal finished
            await session.execute(stmt, ["local"])
            finished += 1

        # Frozen, the server cannot answer: every request is still in flight when the
        # callers are cancelled.
        pausable_node.pause()
        try:
            async with anyio.create_task_group() as group:
                for _ in range(1000):
                    group.start_soon(execute_until_cancelled)
                await anyio.wait_all_tasks_blocked()
                assert session.requests_in_flight == 1000
                group.cancel_scope.cancel()
        finally:
            pausable_node.resume()
        assert finished == 0

        # The driver still finishes the detached requests; each releases its slot and
        # drops its callbacks when it does, and the late results are discarded.
        await wait_until(lambda: session.requests_in_flight == 0, "all slots are released")
        await wait_until(lambda: session.requests_registered == 0, "all callbacks dropped")
        assert session.requests_waiting == 0
        assert current_portal().pending == 0
        assert caplog.records == []

        # ... and then the session serves 1,000 queries normally.
        async def read() -> None:
            nonlocal finished
            assert (await session.execute(stmt, ["local"])).one().key == "local"
            finished += 1

        async with anyio.create_task_group() as group:
            for _ in range(1000):
                group.start_soon(read)
        assert finished == 1000
        assert session.requests_in_flight == 0
        assert session.requests_registered == 0


async def test_deadline_becomes_the_driver_timeout(pausable_node: LocalCassandra) -> None:
    # The profile's own timeout is far longer than the test: if the caller's deadline
    # did not reach the driver's timer, the slots below would stay taken for 600 s.
    policy = TokenAwarePolicy(DCAwareRoundRobinPolicy())
    profile = ExecutionProfile(load_balancing_policy=policy, request_timeout=600)
    async with (
        AsyncCluster(
            pausable_node.contact_points,
            port=pausable_node.native_port,
            execution_profiles={EXEC_PROFILE_DEFAULT: profile},
        ) as cluster,
        await cluster.connect() as session,
    ):
        given_timeouts: list[float] = []
        # The driver's hook, called with each request just before it is sent.
        session.driver_session.add_request_init_listener(
            lambda future: given_timeouts.append(future.timeout)
        )
        pausable_node.pause()  # the server cannot answer now
        try:
            began = time.perf_counter()
            with pytest.raises(TimeoutError), anyio.fail_after(0.3):
                await session.execute("SELECT * FROM system.local")
            elapsed = time.perf_counter() - began
            # The driver gives up by itself, the node still frozen, so the slot is free
            # again without the server: its timer had the deadline, not the 600 s.
            await wait_until(lambda: session.requests_in_flight == 0, "the driver timed out")
            assert session.requests_registered == 0
        finally:
            pausable_node.resume()
        print(f"fail_after(0.3) around a stalled query raised after {elapsed:.3f} s")
        assert len(given_timeouts) == 1
        assert 0 < given_timeouts[0] <= 0.3
        # A generous bound that only catches a hang, not a slow machine.
        assert elapsed < 5

        # move_on_after gets the cancellation it asked for, not a driver error.
        pausable_node.pause()
        try:
            with anyio.move_on_after(0.2) as scope:
                await session.execute("SELECT * FROM system.local")
        finally:
            pausable_node.resume()
        assert scope.cancelled_caught

        # The explicit timeout wins when it is the smaller one.
        with anyio.fail_after(30):
            await session.execute("SELECT * FROM system.local", timeout=0.25)
        assert given_timeouts[-1] == 0.25
        assert (await session.execute("SELECT key FROM system.local")).one().key == "local"


async def test_overload_waits_as_an_await(cassandra_node: Any, ks: str) -> None:
    cluster = AsyncCluster(
        cassandra_node.contact_points, port=cassandra_node.port, max_concurrent_requests=4
    )
    async with cluster, await cluster.connect() as session:
        assert session.max_concurrent_requests == 4
        await session.execute(f"CREATE TABLE {ks}.kv (k int PRIMARY KEY, v int)")
        in_flight_at_send: list[int] = []
        waiting_seen: list[int] = []

        def record(future: Any) -> None:
            # The driver's hook, called with each request just before it is sent.
            in_flight_at_send.append(session.requests_in_flight)
            waiting_seen.append(session.requests_waiting)

        session.driver_session.add_request_init_listener(record)
        insert = await session.prepare(f"INSERT INTO {ks}.kv (k, v) VALUES (?, ?)")
        async with anyio.create_task_group() as group:
            for k in range(200):
                group.start_soon(session.execute, insert, (k, k))
        assert len(in_flight_at_send) == 200
        # The slot is taken before the send, so at most 4 including this one.
        assert max(in_flight_at_send) <= 4
        assert max(waiting_seen) > 0  # the rest really waited
        assert session.requests_waiting == 0
        assert session.requests_in_flight == 0
        count = await session.execute(f"SELECT count(*) FROM {ks}.kv")
        assert count.one().count == 200


async def test_leaving_scopes_by_cancellation_closes_everything(cassandra_node: Any) -> None:
    cluster = AsyncCluster(cassandra_node.contact_points, port=cassandra_node.port)
    with anyio.CancelScope() as scope:
        async with cluster, await cluster.connect() as session:
            scope.cancel()
            await anyio.sleep(10)  # cancelled right here
    assert scope.cancelled_caught
    assert session.is_closed
    assert cluster.is_closed
    # The driver's shutdown ran to the end before `async with` returned.
    assert cluster.driver_cluster.is_shutdown
    assert session.driver_session.is_shutdown


async def test_leaving_scopes_by_exception_closes_everything(cassandra_node: Any) -> None:
    cluster = AsyncCluster(cassandra_node.contact_points, port=cassandra_node.port)
    session = None

    async def fail_inside_the_scopes() -> None:
        nonlocal session
        async with cluster, await cluster.connect() as session:
            _ = 1 / 0

    with pytest.raises(ZeroDivisionError):
        await fail_inside_the_scopes()
    assert session is not None
    assert session.is_closed
    assert cluster.driver_cluster.is_shutdown


async def test_cancelled_connect_returns_at_once_and_leaves_no_session(
    cassandra_node: Any,
) -> None:
    async with AsyncCluster(cassandra_node.contact_points, port=cassandra_node.port) as cluster:
        with anyio.CancelScope() as scope:
            scope.cancel()
            await cluster.connect()
        assert scope.cancelled_caught
        session = await cluster.connect()
        assert (await session.execute("SELECT key FROM system.local")).one().key == "local"
    # The abandoned connect's worker thread was started inside the cluster's scope:
    # it has finished (and closed what it opened) by the time the scope is left.
    assert cluster._offloop.running == 0


async def test_blocking_driver_calls_run_off_the_loop(cassandra_node: Any, ks: str) -> None:
    loop_thread = threading.get_ident()
    threads: dict[str, int] = {}
    lags: list[float] = []
    cluster = AsyncCluster(cassandra_node.contact_points, port=cassandra_node.port)
    driver = cluster.driver_cluster

    def spy(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        def recording(*args: Any, **kwargs: Any) -> Any:
            threads[name] = threading.get_ident()
            return function(*args, **kwargs)

        return recording

    async def lag_probe() -> None:
        # Wakes every 5 ms and records how late; a blocked loop shows as a long lag.
        while True:
            expected = anyio.current_time() + 0.005
            await anyio.sleep(0.005)
            lags.append(anyio.current_time() - expected)

    async with anyio.create_task_group() as group:
        group.start_soon(lag_probe)
        driver.connect = spy("connect", driver.connect)
        driver.shutdown = spy("cluster shutdown", driver.shutdown)
        session = await cluster.connect()
        session.driver_session.prepare = spy("prepare", session.driver_session.prepare)
        session.driver_session.shutdown = spy("session close", session.driver_session.shutdown)
        await session.prepare("SELECT release_version FROM system.local WHERE key = ?")
        await session.close()
        await cluster.shutdown()
        group.cancel_scope.cancel()

    assert set(threads) == {"connect", "prepare", "session close", "cluster shutdown"}
    assert loop_thread not in threads.values()
    lags.sort()
    print(
        f"loop lag while connecting/preparing/closing: p50 {lags[len(lags) // 2] * 1000:.1f} ms,"
        f" max {lags[-1] * 1000:.1f} ms over {len(lags)} probes"
    )


async def test_closing_a_session_fails_its_requests_in_flight(
    pausable_node: LocalCassandra,
) -> None:
    from async_cassandra import ConnectionError

    async with AsyncCluster(
        pausable_node.contact_points, port=pausable_node.native_port
    ) as cluster:
        session = await cluster.connect()
        outcomes: list[BaseException] = []

        async def execute() -> None:
            try:
                # A timeout far beyond the test: only the close can end this in time.
                await session.execute("SELECT * FROM system.local", timeout=600)
            except ConnectionError as error:
                outcomes.append(error)

        pausable_node.pause()
        try:
            async with anyio.create_task_group() as group:
                for _ in range(50):
                    group.start_soon(execute)
                await anyio.wait_all_tasks_blocked()
                assert session.requests_in_flight == 50
                with anyio.fail_after(30):  # only turns a hang into a failure
                    await session.close()
        finally:
            pausable_node.resume()
        assert len(outcomes) == 50
        assert all("closed while this request was in flight" in str(e) for e in outcomes)
        assert session.requests_in_flight == 0
        assert session.requests_registered == 0
