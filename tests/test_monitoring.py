"""0.0.1's monitoring names: host health checked on each host, monitoring owned by a task
group (or started and stopped 0.0.1's way), a rate-limited session on the session's own
limiter (both backends, real nodes)."""

from __future__ import annotations

import time
from typing import Any

import anyio
import pytest
from _helpers import wait_until
from cassandra.pool import Host

from async_cassandra import (
    HOST_STATUS_DOWN,
    HOST_STATUS_UP,
    AsyncCassandraSession,
    AsyncCluster,
    ClusterMetrics,
    ConfigurationError,
    ConnectionMonitor,
    RateLimitedSession,
    create_monitored_session,
)
from async_cassandra.observers import ObservedRequest, RequestObserver
from async_cassandra.testing.pytest_plugin import CassandraCluster

pytestmark = pytest.mark.anyio


class Coordinators(RequestObserver):
    """Which host answered each health check."""

    def __init__(self) -> None:
        self.hosts: list[Host] = []

    def request_ended(self, request: ObservedRequest) -> None:
        if request.query == "SELECT now() FROM system.local":
            self.hosts.append(request.coordinator)


async def test_a_monitor_checks_each_host_and_stops_with_its_block(
    session: AsyncCassandraSession,
) -> None:
    observers_before = session.observers
    rounds: list[ClusterMetrics] = []
    awaited: list[int] = []

    async def async_callback(metrics: ClusterMetrics) -> None:
        await anyio.lowlevel.checkpoint()
        awaited.append(metrics.healthy_hosts)

    async with ConnectionMonitor(session) as monitor:
        metrics = await monitor.get_cluster_metrics()
        (host,) = metrics.hosts
        assert host.status == HOST_STATUS_UP
        assert (metrics.healthy_hosts, metrics.unhealthy_hosts) == (1, 0)
        assert host.address.startswith("127.")
        assert host.latency_ms is not None
        assert host.latency_ms > 0
        assert host.last_check is not None
        assert host.release_version is not None
        assert host.release_version.startswith("5.0")
        assert metrics.protocol_version == 5
        assert metrics.total_connections == 1
        summary = monitor.get_connection_summary()
        assert (summary["total_hosts"], summary["up_hosts"], summary["down_hosts"]) == (1, 1, 0)
        monitor.add_callback(rounds.append)
        monitor.add_callback(async_callback)
        await monitor.start_monitoring(interval=0.1)
        await wait_until(lambda: len(rounds) >= 3, "three rounds of monitoring")
        assert monitor in session.observers  # counting requests while monitoring
        await session.execute("SELECT release_version FROM system.local")
        assert monitor.metrics["requests_completed"] >= 4  # 3 checks and this one
    # Leaving the block stopped it: no round after, and the session is as it was.
    done = len(rounds)
    await anyio.sleep(0.3)
    assert len(rounds) == done
    assert awaited[: len(rounds)] == [1] * len(awaited)
    assert session.observers == observers_before
    assert monitor.metrics["last_health_check"] == rounds[-1].timestamp.isoformat()


async def test_monitoring_started_and_stopped_the_0_0_1_way(
    session: AsyncCassandraSession,
) -> None:
    monitor = ConnectionMonitor(session)
    rounds: list[ClusterMetrics] = []
    monitor.add_callback(rounds.append)
    for interval in (0, -1, "30"):
        with pytest.raises(ConfigurationError, match="interval"):
            await monitor.start_monitoring(interval=interval)  # type: ignore[arg-type]
    await monitor.start_monitoring(interval=0.1)
    await monitor.start_monitoring(interval=0.1)  # already running: ignored
    await wait_until(lambda: len(rounds) >= 2, "two rounds of monitoring")
    await monitor.stop_monitoring()
    done = len(rounds)
    await anyio.sleep(0.3)
    assert len(rounds) == done
    assert monitor not in session.observers
    await monitor.stop_monitoring()  # idempotent


async def test_a_rate_limited_session_bounds_requests_in_flight(
    session: AsyncCassandraSession,
) -> None:
    before = session.max_concurrent_requests
    limited = RateLimitedSession(session, max_concurrent=4)
    try:
        assert session.max_concurrent_requests == 4
        most = 0

        async def one() -> None:
            nonlocal most
            most = max(most, session.requests_in_flight)
            await limited.execute("SELECT release_version FROM system.local")
            most = max(most, session.requests_in_flight)

        async with anyio.create_task_group() as group:
            for _ in range(50):
                group.start_soon(one)
        assert most <= 4
        assert limited.get_metrics() == {
            "total_requests": 50,
            "active_requests": 0,
            "rejected_requests": 0,
        }
        assert limited.keyspace == session.keyspace  # the rest is the session's
    finally:
        session.set_max_concurrent_requests(before)


async def test_create_monitored_session_connects_warms_up_and_closes_its_cluster(
    cassandra_node: Any,
) -> None:
    limited, monitor = await create_monitored_session(
        contact_points=cassandra_node.contact_points,
        max_concurrent=8,
        warmup=True,
        port=cassandra_node.port,
    )
    assert isinstance(limited, RateLimitedSession)
    session = limited.session
    assert session.max_concurrent_requests == 8
    row = (await limited.execute("SELECT release_version FROM system.local")).one()
    assert row.release_version.startswith("5.0")
    metrics = await monitor.get_cluster_metrics()
    assert metrics.healthy_hosts == 1
    owned = session._owned_cluster
    assert isinstance(owned, AsyncCluster)
    await session.close()
    assert owned.is_closed


@pytest.mark.reliability
async def test_a_killed_node_is_reported_down_then_up(
    cassandra_cluster3: CassandraCluster,
) -> None:
    launcher = cassandra_cluster3.launcher
    coordinators = Coordinators()
    async with (
        AsyncCluster(
            cassandra_cluster3.contact_points,
            port=cassandra_cluster3.port,
            observers=[coordinators],
        ) as cluster,
        await cluster.connect() as session,
        ConnectionMonitor(session) as monitor,
    ):
        # Connecting waits for one host's pool only, and a node an earlier test brought
        # back may still be coming up in the driver's eyes: wait for three healthy.
        with anyio.fail_after(60):
            while True:
                metrics = await monitor.get_cluster_metrics()
                if metrics.healthy_hosts == 3:
                    break
                await anyio.sleep(0.5)
        # Each health check went to the host it checked.
        answered = [h for h in coordinators.hosts if h is not None]
        assert {h.address for h in answered} == set(launcher.addresses)
        killed = launcher.addresses[2]
        await anyio.to_thread.run_sync(launcher.kill, 2)
        try:
            began = time.monotonic()
            with anyio.fail_after(60):
                while True:
                    metrics = await monitor.get_cluster_metrics()
                    status = {h.address: h.status for h in metrics.hosts}
                    if status[killed] == HOST_STATUS_DOWN:
                        break
                    await anyio.sleep(0.2)
            seen_down_after = time.monotonic() - began
            assert metrics.healthy_hosts == 2
            assert monitor.get_connection_summary()["down_hosts"] == 1
        finally:
            await anyio.to_thread.run_sync(launcher.start_node, 2)
        with anyio.fail_after(120):
            while True:
                metrics = await monitor.get_cluster_metrics()
                if {h.address: h.status for h in metrics.hosts}[killed] == HOST_STATUS_UP:
                    break
                await anyio.sleep(0.5)
        assert metrics.healthy_hosts == 3
        assert metrics.app_metrics["host_downs_seen"] >= 1
        assert metrics.app_metrics["host_ups_seen"] >= 1
        assert seen_down_after < 60
