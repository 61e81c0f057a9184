"""0.0.1's metrics names on request observers: the in-memory collector's statistics, the
Prometheus exposition, collectors of the user's own (both backends, real node)."""

from __future__ import annotations

import logging
import sys
from typing import Any

import anyio
import prometheus_client
import pytest

from async_cassandra import (
    AsyncCassandraSession,
    InMemoryMetricsCollector,
    MetricsCollector,
    MetricsMiddleware,
    PrometheusMetricsCollector,
    QueryError,
    QueryMetrics,
    create_metrics_system,
)

pytestmark = pytest.mark.anyio

STATS_KEYS = {"query_performance", "error_summary", "top_queries", "connection_health"}
PERFORMANCE_KEYS = {
    "total_queries",
    "recent_queries_5min",
    "avg_duration_ms",
    "min_duration_ms",
    "max_duration_ms",
    "success_rate",
    "queries_per_second",
}


async def test_the_in_memory_collector_gives_0_0_1s_statistics(
    session: AsyncCassandraSession, ks: str
) -> None:
    metrics = create_metrics_system(backend="memory")
    (memory,) = metrics.collectors
    assert isinstance(memory, InMemoryMetricsCollector)
    assert await memory.get_stats() == {"message": "No metrics available"}
    # As 0.0.1 code makes it: the driver session wrapped, with metrics=.
    observed = AsyncCassandraSession(session.driver_session, metrics=metrics)
    await observed.execute(f"CREATE TABLE {ks}.t (k int PRIMARY KEY, v int)")
    insert = await observed.prepare(f"INSERT INTO {ks}.t (k, v) VALUES (?, ?)")
    for k in range(10):
        await observed.execute(insert, [k, k])
    with pytest.raises(QueryError) as raised:
        await observed.execute(f"SELECT nope FROM {ks}.t")
    with anyio.move_on_after(0):
        await observed.execute(f"SELECT * FROM {ks}.t")
    stats = await memory.get_stats()
    assert set(stats) == STATS_KEYS
    performance = stats["query_performance"]
    assert set(performance) == PERFORMANCE_KEYS
    assert performance["total_queries"] == performance["recent_queries_5min"] == 13
    assert performance["success_rate"] == pytest.approx(11 / 13)
    assert 0 < performance["min_duration_ms"] <= performance["avg_duration_ms"]
    assert performance["avg_duration_ms"] <= performance["max_duration_ms"]
    assert performance["queries_per_second"] == pytest.approx(13 / 300)
    assert stats["error_summary"] == {type(raised.value).__name__: 1, "Cancelled": 1}
    # The ten inserts are one query (values are never part of it).
    assert max(stats["top_queries"].values()) == 10
    assert stats["connection_health"] == {}
    recorded = list(memory.query_metrics)
    assert [m.parameters_count for m in recorded[1:11]] == [2] * 10
    assert recorded[1].result_size == 0


async def test_the_prometheus_collector_exposes_counts_and_latency_histograms(
    session: AsyncCassandraSession,
) -> None:
    registry = prometheus_client.CollectorRegistry()
    collector = PrometheusMetricsCollector(registry=registry)
    again = PrometheusMetricsCollector(registry=registry)  # shares the registered metrics
    assert again.query_total is collector.query_total
    session.add_observer(MetricsMiddleware([collector]))
    try:
        select = await session.prepare("SELECT release_version FROM system.local")
        for _ in range(3):
            await session.execute(select)
        await session.execute("SELECT release_version FROM system.local")
        with pytest.raises(QueryError):
            await session.execute("SELECT nope FROM system.local")
    finally:
        session.remove_observer(session.observers[-1])
    await MetricsMiddleware([collector]).record_connection_metrics("127.0.0.1", True, 0.002)
    exposition = prometheus_client.generate_latest(registry).decode()
    lines = set(exposition.splitlines())
    assert 'cassandra_queries_total{query_type="prepared",success="success"} 3.0' in lines
    assert 'cassandra_queries_total{query_type="simple",success="success"} 1.0' in lines
    assert 'cassandra_queries_total{query_type="simple",success="failure"} 1.0' in lines
    assert (
        'cassandra_query_duration_seconds_count{query_type="prepared",success="success"} 3.0'
        in (lines)
    )
    assert any(
        line.startswith('cassandra_query_duration_seconds_bucket{le="0.005",query_type="prepared"')
        for line in lines
    )
    assert any(line.startswith("cassandra_errors_total{error_type=") for line in lines)
    assert 'cassandra_connection_healthy{host="127.0.0.1"} 1.0' in lines
    assert await collector.get_stats() == {"message": "Metrics available via Prometheus endpoint"}


class Appending(MetricsCollector):
    """A collector as 0.0.1 users write them: async methods that do not wait."""

    def __init__(self) -> None:
        self.queries: list[QueryMetrics] = []

    async def record_query(self, metrics: QueryMetrics) -> None:
        self.queries.append(metrics)

    async def record_connection_health(self, metrics: Any) -> None:
        pass

    async def get_stats(self) -> dict[str, Any]:
        return {"queries": len(self.queries)}


class Waiting(Appending):
    async def record_query(self, metrics: QueryMetrics) -> None:
        await anyio.sleep(0.01)  # I/O, say
        self.queries.append(metrics)


async def test_collectors_of_ones_own_are_recorded_without_a_task(
    session: AsyncCassandraSession, caplog: pytest.LogCaptureFixture
) -> None:
    appending, waiting, memory = Appending(), Waiting(), InMemoryMetricsCollector()
    metrics = MetricsMiddleware([waiting, appending, memory])
    session.add_observer(metrics)
    try:
        with caplog.at_level(logging.WARNING, logger="async_cassandra.metrics"):
            for _ in range(3):
                await session.execute("SELECT release_version FROM system.local")
            metrics.disable()
            await session.execute("SELECT release_version FROM system.local")
            metrics.enable()
    finally:
        session.remove_observer(metrics)
    assert len(appending.queries) == 3
    assert all(m.success for m in appending.queries)
    assert waiting.queries == []  # it waited: stopped, and said once
    warnings = [r for r in caplog.records if r.name == "async_cassandra.metrics"]
    assert len(warnings) == 1
    assert "waited" in warnings[0].getMessage()
    assert (await memory.get_stats())["query_performance"]["total_queries"] == 3
    # 0.0.1's hand-recording API goes to the same place.
    await metrics.record_query_metrics("SELECT 1", 0.004, True, parameters_count=0)
    await metrics.record_connection_metrics("127.0.0.9", False, 0.5, error_count=2)
    stats = await memory.get_stats()
    assert stats["query_performance"]["total_queries"] == 4
    assert stats["connection_health"] == {
        "127.0.0.9": {
            "healthy": False,
            "response_time_ms": 500.0,
            "error_count": 2,
            "total_queries": 0,
        }
    }


def test_the_prometheus_collector_without_prometheus_client_warns_and_does_nothing(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # import fails, as 0.0.1's
    with caplog.at_level(logging.WARNING, logger="async_cassandra.metrics"):
        collector = PrometheusMetricsCollector()
    assert "prometheus_client is not installed" in caplog.text
    collector.record_query_now(QueryMetrics("abc", 0.1, True))  # nothing, no error
    middleware = create_metrics_system(backend="none", prometheus_enabled=True)
    assert [type(c) for c in middleware.collectors] == [PrometheusMetricsCollector]
    stats = anyio.run(collector.get_stats)
    assert stats == {"error": "Prometheus client not available"}
