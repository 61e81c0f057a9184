"""OpenTelemetry: one span per whole request, stream pages as child spans, errors and
cancellations on the span, parents right under concurrent tasks, the duration
histogram, trace context sent to the server (both backends, real nodes, the SDK's
in-memory exporter)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import anyio
import cassandra
import pytest
from cassandra import ConsistencyLevel
from cassandra.cluster import EXEC_PROFILE_DEFAULT, ExecutionProfile
from cassandra.policies import DCAwareRoundRobinPolicy, TokenAwarePolicy
from cassandra.protocol import ServerError
from cassandra.query import SimpleStatement
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from async_cassandra import (
    AsyncCassandraSession,
    AsyncCluster,
    QueryError,
    StreamConfig,
    TimeoutError,
)
from async_cassandra._driver import protocol_error_code
from async_cassandra.otel import OpenTelemetryObserver
from async_cassandra.testing import LocalCassandra
from async_cassandra.testing.pytest_plugin import CassandraCluster

pytestmark = pytest.mark.anyio

ROWS = 45  # five pages of 10 (the last one short, so no empty sixth page)


class Telemetry:
    def __init__(self, **options: Any) -> None:
        self.exporter = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])
        self.observer = OpenTelemetryObserver(self.tracer_provider, self.meter_provider, **options)
        self.tracer = self.tracer_provider.get_tracer("the application")

    def spans(self, name: str | None = None) -> list[ReadableSpan]:
        return [s for s in self.exporter.get_finished_spans() if name is None or s.name == name]

    def durations(self) -> list[Any]:
        data = self.reader.get_metrics_data()
        points = []
        for resource in data.resource_metrics if data else ():
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == "db.client.operation.duration":
                        points.extend(metric.data.data_points)
        return points


@pytest.fixture
def telemetry(session: AsyncCassandraSession) -> Iterator[Telemetry]:
    telemetry = Telemetry()
    session.add_observer(telemetry.observer)
    try:
        yield telemetry
    finally:
        session.remove_observer(telemetry.observer)


@pytest.fixture
async def items(session: AsyncCassandraSession, ks: str) -> str:
    await session.execute(f"CREATE TABLE {ks}.items (p int, c int, v text, PRIMARY KEY (p, c))")
    insert = await session.prepare(f"INSERT INTO {ks}.items (p, c, v) VALUES (0, ?, 'x')")
    async with anyio.create_task_group() as group:
        for c in range(ROWS):
            group.start_soon(session.execute, insert, [c])
    return f"{ks}.items"


async def test_a_paged_execute_is_one_client_span_under_the_callers(
    session: AsyncCassandraSession, telemetry: Telemetry, items: str
) -> None:
    select = await session.prepare(f"SELECT c FROM {items} WHERE p = ?")
    select.fetch_size = 10
    select.consistency_level = ConsistencyLevel.LOCAL_QUORUM
    telemetry.exporter.clear()
    with telemetry.tracer.start_as_current_span("handler") as handler:
        rows = await session.execute(select, [0])
    assert len(rows) == ROWS
    (span,) = telemetry.spans("SELECT items")
    assert span.kind is SpanKind.CLIENT
    assert span.parent is not None
    assert span.parent.span_id == handler.get_span_context().span_id
    attributes = dict(span.attributes or {})
    keyspace = items.split(".")[0]
    assert attributes == {
        "db.system.name": "cassandra",
        "db.namespace": keyspace,
        "db.collection.name": "items",
        "db.operation.name": "SELECT",
        "db.query.summary": "SELECT items",
        "db.query.text": f"SELECT c FROM {items} WHERE p = ?",
        "cassandra.query.idempotent": False,
        "cassandra.page.size": 10,
        "cassandra.consistency.level": "local_quorum",
        "db.response.returned_rows": ROWS,
        "server.address": attributes["server.address"],
        "network.peer.address": attributes["server.address"],
        "server.port": attributes["server.port"],
        "cassandra.coordinator.id": attributes["cassandra.coordinator.id"],
        "cassandra.coordinator.dc": "datacenter1",
    }
    assert str(attributes["server.address"]).startswith("127.")
    assert span.status.status_code is StatusCode.UNSET
    (point,) = [p for p in telemetry.durations() if p.attributes["db.operation.name"] == "SELECT"]
    assert point.count == 1
    assert point.attributes["db.operation.name"] == "SELECT"


async def test_a_stream_of_five_pages_gives_five_spans_under_the_callers(
    session: AsyncCassandraSession, telemetry: Telemetry, items: str
) -> None:
    with telemetry.tracer.start_as_current_span("export") as export:
        async with await session.execute_stream(
            f"SELECT c FROM {items} WHERE p = 0", stream_config=StreamConfig(fetch_size=10)
        ) as stream:
            assert len(telemetry.spans("SELECT items")) == 1  # the first page's, ended
            rows = [row async for row in stream]
    assert len(rows) == ROWS
    spans = telemetry.spans("SELECT items")
    assert len(spans) == 5
    assert {s.parent.span_id for s in spans if s.parent} == {export.get_span_context().span_id}
    assert [dict(s.attributes or {}).get("db.response.returned_rows") for s in spans] == [
        10,
        10,
        10,
        10,
        5,
    ]
    pages = [dict(s.attributes or {}).get("cassandra.page.number") for s in spans]
    assert pages == [None, 2, 3, 4, 5]
    assert "db.query.text" not in dict(spans[0].attributes or {})  # no parameters


async def test_errors_end_the_span_with_their_code(
    session: AsyncCassandraSession, telemetry: Telemetry, ks: str
) -> None:
    with pytest.raises(QueryError):
        await session.execute(f"SELECT nope FROM {ks}.nothing")
    (invalid,) = telemetry.spans("SELECT nothing")
    assert invalid.status.status_code is StatusCode.ERROR
    attributes = dict(invalid.attributes or {})
    assert attributes["db.response.status_code"] == "8704"  # 0x2200, Invalid
    assert attributes["error.type"] == "cassandra.InvalidRequest"
    assert any(event.name == "exception" for event in invalid.events)
    # Unavailable: three replicas asked for on a single node.
    await session.execute(
        f"CREATE KEYSPACE {ks}_rf3 WITH replication = "
        "{'class': 'SimpleStrategy', 'replication_factor': 3}"
    )
    try:
        await session.execute(f"CREATE TABLE {ks}_rf3.t (k int PRIMARY KEY)")
        quorum = SimpleStatement(
            f"SELECT * FROM {ks}_rf3.t WHERE k = 1", consistency_level=ConsistencyLevel.QUORUM
        )
        with pytest.raises(Exception, match=r"Unavailable|required"):
            await session.execute(quorum)
    finally:
        await session.execute(f"DROP KEYSPACE {ks}_rf3")
    unavailable = telemetry.spans("SELECT t")[-1]
    assert unavailable.status.status_code is StatusCode.ERROR
    assert dict(unavailable.attributes or {})["db.response.status_code"] == "4096"  # 0x1000
    errors = [p for p in telemetry.durations() if p.attributes.get("error.type")]
    assert {p.attributes.get("db.response.status_code") for p in errors} >= {"8704", "4096"}


def test_the_server_error_codes_of_the_drivers_exceptions() -> None:
    # A ServerError (0x0000) cannot be made on demand on a real node, and Simulacron,
    # which could prime one, speaks protocol v4 only.
    assert protocol_error_code(ServerError(0x0000, "boom", None)) == 0
    assert protocol_error_code(TimeoutError("ours")) is None


async def test_spans_parent_right_under_concurrent_tasks(
    session: AsyncCassandraSession, telemetry: Telemetry
) -> None:
    parents: dict[int, int] = {}

    async def handler(n: int) -> None:
        with telemetry.tracer.start_as_current_span(f"handler {n}") as span:
            parents[span.get_span_context().span_id] = n
            for _ in range(3):
                await session.execute("SELECT release_version FROM system.local")
                await anyio.lowlevel.checkpoint()

    async with anyio.create_task_group() as group:
        for n in range(20):
            group.start_soon(handler, n)
    spans = telemetry.spans("SELECT local")
    assert len(spans) == 60
    by_parent: dict[int, int] = {}
    for span in spans:
        assert span.parent is not None
        by_parent[span.parent.span_id] = by_parent.get(span.parent.span_id, 0) + 1
    assert set(by_parent) == set(parents)
    assert set(by_parent.values()) == {3}


async def test_a_prepare_span_and_query_text_only_when_parameterised(
    session: AsyncCassandraSession, telemetry: Telemetry, items: str
) -> None:
    await session.prepare(f"SELECT v FROM {items} WHERE p = ? AND c = ?")
    prepare = telemetry.spans("PREPARE items")[-1]
    assert dict(prepare.attributes or {})["db.query.text"].startswith("SELECT v")
    assert dict(prepare.attributes or {})["db.operation.name"] == "PREPARE"
    await session.execute(f"SELECT v FROM {items} WHERE p = 0 AND c = 1")
    await session.execute(f"SELECT v FROM {items} WHERE p = %s AND c = %s", [0, 1])
    literal, parameterised = telemetry.spans("SELECT items")[-2:]
    assert "db.query.text" not in dict(literal.attributes or {})  # literals may be secrets
    assert dict(parameterised.attributes or {})["db.query.text"].endswith("c = %s")
    capturing = Telemetry(capture_query_text=True)
    session.add_observer(capturing.observer)
    try:
        await session.execute(f"SELECT v FROM {items} WHERE p = 0 AND c = 1")
    finally:
        session.remove_observer(capturing.observer)
    (captured,) = capturing.spans("SELECT items")
    assert dict(captured.attributes or {})["db.query.text"].endswith("c = 1")


async def test_trace_context_reaches_the_server_only_when_asked(
    session: AsyncCassandraSession,
) -> None:
    payloads: list[dict[str, bytes] | None] = []

    def listener(future: Any) -> None:  # the driver's hook, as each request is sent
        payloads.append(future.message.custom_payload)

    session.driver_session.add_request_init_listener(listener)
    telemetry = Telemetry(propagate=True)
    quiet = Telemetry()
    try:
        session.add_observer(quiet.observer)
        await session.execute("SELECT release_version FROM system.local")
        session.remove_observer(quiet.observer)
        session.add_observer(telemetry.observer)
        with telemetry.tracer.start_as_current_span("caller"):
            await session.execute(
                "SELECT release_version FROM system.local", custom_payload={"mine": b"1"}
            )
        session.remove_observer(telemetry.observer)
    finally:
        session.driver_session.remove_request_init_listener(listener)
    assert not payloads[0]
    sent = payloads[-1] or {}
    (span,) = telemetry.spans("SELECT local")
    trace_id = format(span.context.trace_id, "032x")
    span_id = format(span.context.span_id, "016x")
    assert sent["mine"] == b"1"
    # version 00, the request span's ids, then its flags (sampled)
    assert sent["traceparent"].startswith(f"00-{trace_id}-{span_id}-".encode())


async def test_a_slow_request_and_a_cancelled_one(pausable_node: LocalCassandra) -> None:
    telemetry = Telemetry()
    async with (
        AsyncCluster(
            pausable_node.contact_points,
            port=pausable_node.native_port,
            observers=[telemetry.observer],
        ) as cluster,
        await cluster.connect() as session,
    ):
        await session.execute("SELECT release_version FROM system.local")
        # The node frozen for 0.3 s: the span covers the wait.
        pausable_node.pause()
        thaw = threading.Timer(0.3, pausable_node.resume)
        thaw.start()
        try:
            await session.execute("SELECT release_version FROM system.local")
        finally:
            thaw.join()
        slow = telemetry.spans("SELECT local")[-1]
        assert slow.end_time is not None
        assert slow.start_time is not None
        assert slow.end_time - slow.start_time >= 300_000_000
        pausable_node.pause()
        try:
            with pytest.raises(TimeoutError):
                await session.execute("SELECT release_version FROM system.local", timeout=0.2)
            timed_out = telemetry.spans("SELECT local")[-1]
            with anyio.move_on_after(0.2):
                await session.execute("SELECT release_version FROM system.local")
        finally:
            pausable_node.resume()
    assert timed_out.status.status_code is StatusCode.ERROR
    assert dict(timed_out.attributes or {})["error.type"] == "timeout"
    assert "db.response.status_code" not in dict(timed_out.attributes or {})  # no answer
    cancelled = telemetry.spans("SELECT local")[-1]
    assert cancelled.status.status_code is StatusCode.ERROR
    assert dict(cancelled.attributes or {})["error.type"] == "cancelled"


@pytest.mark.reliability
async def test_a_server_side_write_timeout_is_an_error_span_with_its_code(
    cassandra_cluster3: CassandraCluster, cassandra_keyspace_rf3: str
) -> None:
    # Two of three replicas frozen (not yet seen down by gossip): the coordinator waits
    # for a second acknowledgement until its write_request_timeout, then answers
    # WriteTimeout (0x1100) itself.
    launcher = cassandra_cluster3.launcher
    telemetry = Telemetry()
    profile = ExecutionProfile(
        load_balancing_policy=TokenAwarePolicy(DCAwareRoundRobinPolicy()), request_timeout=30
    )
    async with (
        AsyncCluster(
            cassandra_cluster3.contact_points,
            port=cassandra_cluster3.port,
            observers=[telemetry.observer],
            execution_profiles={EXEC_PROFILE_DEFAULT: profile},
        ) as cluster,
        await cluster.connect() as session,
    ):
        table = f"{cassandra_keyspace_rf3}.otel_writes"
        await session.execute(f"CREATE TABLE {table} (k int PRIMARY KEY, v text)")
        coordinator = cluster.metadata.get_host(launcher.addresses[0])
        insert = SimpleStatement(
            f"INSERT INTO {table} (k, v) VALUES (%s, %s)",
            consistency_level=ConsistencyLevel.QUORUM,
        )
        launcher.pause(1)
        launcher.pause(2)
        try:
            with pytest.raises(cassandra.WriteTimeout):
                await session.execute(insert, [1, "x"], host=coordinator)
        finally:
            launcher.resume(1)
            launcher.resume(2)
    span = telemetry.spans("INSERT otel_writes")[-1]
    assert span.status.status_code is StatusCode.ERROR
    attributes = dict(span.attributes or {})
    assert attributes["db.response.status_code"] == "4352"  # 0x1100
    assert attributes["error.type"] == "cassandra.WriteTimeout"
    assert attributes["cassandra.consistency.level"] == "quorum"
