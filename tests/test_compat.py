"""Code written for async-cassandra 0.0.1 runs unchanged: its names, module paths,
signatures, and the stream behaviour its users rely on (both backends, real node)."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
from collections.abc import Iterator
from typing import Any

import anyio
import anyio.lowlevel
import cassandra
import pytest
from _helpers import wait_until
from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
from cassandra.policies import DCAwareRoundRobinPolicy, TokenAwarePolicy
from cassandra.query import BatchStatement, SimpleStatement

import async_cassandra
from async_cassandra import (
    AsyncCassandraSession,
    AsyncCluster,
    QueryError,
    StreamConfig,
    create_streaming_statement,
)

# Everything async-cassandra 0.0.1 exports from its top-level package.
NAMES_OF_0_0_1 = [
    "AsyncCassandraSession",
    "AsyncCluster",
    "AsyncCassandraError",
    "ConnectionError",
    "QueryError",
    "AsyncResultSet",
    "AsyncStreamingResultSet",
    "StreamConfig",
    "create_streaming_statement",
    "AsyncRetryPolicy",
    "ConnectionMonitor",
    "RateLimitedSession",
    "create_monitored_session",
    "HOST_STATUS_UP",
    "HOST_STATUS_DOWN",
    "HOST_STATUS_UNKNOWN",
    "HostMetrics",
    "ClusterMetrics",
    "MetricsMiddleware",
    "MetricsCollector",
    "InMemoryMetricsCollector",
    "PrometheusMetricsCollector",
    "QueryMetrics",
    "ConnectionMetrics",
    "create_metrics_system",
]


@pytest.mark.parametrize("name", NAMES_OF_0_0_1)
def test_every_top_level_name_of_0_0_1(name: str) -> None:
    assert name in async_cassandra.__all__
    assert getattr(async_cassandra, name) is not None


def test_streaming_names_are_the_same_objects_at_top_level() -> None:
    from async_cassandra import streaming

    for name in ("AsyncStreamingResultSet", "StreamConfig", "create_streaming_statement"):
        assert getattr(async_cassandra, name) is getattr(streaming, name)


def test_constants_module_of_0_0_1() -> None:
    # 0.0.1's FastAPI example imports MAX_CONCURRENT_QUERIES from here.
    from async_cassandra.constants import MAX_CONCURRENT_QUERIES

    constants = importlib.import_module("async_cassandra.constants")
    assert MAX_CONCURRENT_QUERIES == 100
    assert {name: getattr(constants, name) for name in constants.__all__} == {
        "DEFAULT_FETCH_SIZE": 1000,
        "DEFAULT_EXECUTOR_THREADS": 4,
        "DEFAULT_CONNECTION_TIMEOUT": 30.0,
        "DEFAULT_REQUEST_TIMEOUT": 120.0,
        "MAX_CONCURRENT_QUERIES": 100,
        "MAX_RETRY_ATTEMPTS": 3,
        "MIN_EXECUTOR_THREADS": 1,
        "MAX_EXECUTOR_THREADS": 128,
    }
    assert StreamConfig().fetch_size == constants.DEFAULT_FETCH_SIZE


@pytest.mark.parametrize(
    "module",
    [
        "metrics",
        "monitoring",
        "retry_policy",
    ],
)
def test_module_paths_of_0_0_1(module: str) -> None:
    importlib.import_module(f"async_cassandra.{module}")


# The positional parameters of 0.0.1's public callables, in order: code may pass any of
# them by position or by name.
SIGNATURES_OF_0_0_1: dict[str, tuple[str, ...]] = {
    "AsyncCluster.__init__": (
        "contact_points",
        "port",
        "auth_provider",
        "load_balancing_policy",
        "reconnection_policy",
        "retry_policy",
        "ssl_context",
        "protocol_version",
        "executor_threads",
        "max_schema_agreement_wait",
        "control_connection_timeout",
        "idle_heartbeat_interval",
        "schema_event_refresh_window",
        "topology_event_refresh_window",
        "status_event_refresh_window",
    ),
    "AsyncCluster.create_with_auth": ("contact_points", "username", "password"),
    "AsyncCluster.connect": ("keyspace", "timeout"),
    "AsyncCluster.shutdown": (),
    "AsyncCluster.close": (),
    "AsyncCluster.register_user_type": ("keyspace", "user_type", "klass"),
    "AsyncCassandraSession.__init__": ("session", "metrics"),
    "AsyncCassandraSession.create": ("cluster", "keyspace"),
    "AsyncCassandraSession.execute": (
        "query",
        "parameters",
        "trace",
        "custom_payload",
        "timeout",
        "execution_profile",
        "paging_state",
        "host",
        "execute_as",
    ),
    "AsyncCassandraSession.execute_stream": (
        "query",
        "parameters",
        "stream_config",
        "trace",
        "custom_payload",
        "timeout",
        "execution_profile",
        "paging_state",
        "host",
        "execute_as",
    ),
    "AsyncCassandraSession.execute_batch": (
        "batch_statement",
        "trace",
        "custom_payload",
        "timeout",
        "execution_profile",
    ),
    "AsyncCassandraSession.prepare": ("query", "custom_payload", "timeout"),
    "AsyncCassandraSession.set_keyspace": ("keyspace",),
    "AsyncCassandraSession.close": (),
    "AsyncResultSet.__init__": ("rows", "response_future"),
    "AsyncResultSet.one": (),
    "AsyncResultSet.all": (),
    "AsyncResultSet.get_query_trace": (),
    "AsyncStreamingResultSet.pages": (),
    "AsyncStreamingResultSet.close": (),
    "AsyncStreamingResultSet.cancel": (),
    "StreamConfig.__init__": ("fetch_size", "max_pages", "page_callback", "timeout_seconds"),
    "create_streaming_statement": ("query", "fetch_size", "consistency_level"),
    "AsyncCassandraError.__init__": ("message", "cause"),
    "MetricsMiddleware.__init__": ("collectors",),
    "MetricsMiddleware.record_query_metrics": (
        "query",
        "duration",
        "success",
        "error_type",
        "parameters_count",
        "result_size",
    ),
    "MetricsMiddleware.record_connection_metrics": (
        "host",
        "is_healthy",
        "response_time",
        "error_count",
        "total_queries",
    ),
    "InMemoryMetricsCollector.__init__": ("max_entries",),
    "QueryMetrics.__init__": (
        "query_hash",
        "duration",
        "success",
        "error_type",
        "timestamp",
        "parameters_count",
        "result_size",
    ),
    "ConnectionMetrics.__init__": (
        "host",
        "is_healthy",
        "last_check",
        "response_time",
        "error_count",
        "total_queries",
    ),
    "create_metrics_system": ("backend", "prometheus_enabled"),
    "ConnectionMonitor.__init__": ("session",),
    "ConnectionMonitor.add_callback": ("callback",),
    "ConnectionMonitor.check_host_health": ("host",),
    "ConnectionMonitor.start_monitoring": ("interval",),
    "RateLimitedSession.__init__": ("session", "max_concurrent"),
    "RateLimitedSession.execute": ("query", "parameters"),
    "RateLimitedSession.prepare": ("query",),
    "create_monitored_session": ("contact_points", "keyspace", "max_concurrent", "warmup"),
    "HostMetrics.__init__": (
        "address",
        "datacenter",
        "rack",
        "status",
        "release_version",
        "connection_count",
        "latency_ms",
        "last_error",
        "last_check",
    ),
    "ClusterMetrics.__init__": (
        "timestamp",
        "cluster_name",
        "protocol_version",
        "hosts",
        "total_connections",
        "healthy_hosts",
        "unhealthy_hosts",
        "app_metrics",
    ),
}


@pytest.mark.parametrize("qualname", sorted(SIGNATURES_OF_0_0_1))
def test_signature_takes_0_0_1_arguments_in_its_order(qualname: str) -> None:
    target: Any = async_cassandra
    for part in qualname.split("."):
        target = getattr(target, part)
    positional = [
        p.name
        for p in inspect.signature(target).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.name not in ("self", "cls")
    ]
    expected = list(SIGNATURES_OF_0_0_1[qualname])
    assert positional[: len(expected)] == expected


def test_properties_of_0_0_1() -> None:
    for cls, names in [
        (AsyncCassandraSession, ["is_closed", "keyspace"]),
        (AsyncCluster, ["is_closed", "metadata"]),
        (async_cassandra.AsyncResultSet, ["rows"]),
    ]:
        for name in names:
            assert hasattr(cls, name), f"{cls.__name__}.{name}"


def test_errors_take_a_message_and_a_cause() -> None:
    cause = ValueError("underneath")
    error = QueryError("Query execution failed: underneath", cause=cause)
    assert str(error) == "Query execution failed: underneath"
    assert error.cause is cause
    assert error.__cause__ is cause
    assert async_cassandra.ConnectionError("no cause").cause is None


def test_stream_config_is_a_mutable_dataclass_checked_when_made() -> None:
    config = StreamConfig(100, None, None, 5.0)  # 0.0.1's positional order
    assert (config.fetch_size, config.timeout_seconds, config.read_ahead) == (100, 5.0, 1)
    config.page_callback = print  # no FrozenInstanceError
    config.fetch_size = 10
    assert dataclasses.asdict(config)["fetch_size"] == 10
    for bad, kind in [
        ({"fetch_size": 0}, ValueError),
        ({"fetch_size": "10"}, TypeError),
        ({"max_pages": 0}, ValueError),
        ({"timeout_seconds": -1}, ValueError),
        ({"read_ahead": -1}, ValueError),
        ({"page_callback": 3}, TypeError),
    ]:
        with pytest.raises(QueryError) as raised:
            StreamConfig(**bad)
        assert isinstance(raised.value, kind)
        assert next(iter(bad)) in str(raised.value)


# -- against the node ------------------------------------------------------------------


@pytest.fixture
async def tables(session: AsyncCassandraSession, ks: str) -> str:
    await session.execute(f"CREATE TABLE {ks}.empty (k int PRIMARY KEY, v int)")
    await session.execute(f"CREATE TABLE {ks}.nums (k int PRIMARY KEY, v int)")
    insert = await session.prepare(f"INSERT INTO {ks}.nums (k, v) VALUES (?, ?)")
    async with anyio.create_task_group() as group:
        for k in range(25):
            group.start_soon(session.execute, insert, [k, k])
    return ks


@pytest.mark.anyio
async def test_a_config_changed_after_it_was_made_is_used_and_checked(
    session: AsyncCassandraSession, tables: str
) -> None:
    calls: list[tuple[int, int]] = []
    config = StreamConfig(fetch_size=1000)
    config.page_callback = lambda page, rows: calls.append((page, rows))  # as 0.0.1 users do
    config.fetch_size = 10
    async with await session.execute_stream(
        f"SELECT * FROM {tables}.nums", stream_config=config
    ) as stream:
        rows = [row async for row in stream]
    assert len(rows) == 25
    assert calls[:3] == [(1, 10), (2, 10), (3, 5)]

    config.fetch_size = 0  # invalid, set after the config passed its first check
    with pytest.raises(QueryError, match="fetch_size must be at least 1") as raised:
        await session.execute_stream(f"SELECT * FROM {tables}.nums", stream_config=config)
    assert isinstance(raised.value, ValueError)
    assert session.requests_registered == 0
    assert len((await session.execute(f"SELECT * FROM {tables}.nums")).all()) == 25


@pytest.mark.anyio
async def test_an_async_page_callback_is_awaited(
    session: AsyncCassandraSession, tables: str
) -> None:
    calls: list[tuple[int, int]] = []

    async def report(page: int, rows: int) -> None:
        await anyio.lowlevel.checkpoint()  # it really is awaited
        calls.append((page, rows))

    config = StreamConfig(fetch_size=10, page_callback=report)
    async with await session.execute_stream(
        f"SELECT * FROM {tables}.nums", stream_config=config
    ) as stream:
        assert len([row async for row in stream]) == 25
    assert calls == [(1, 10), (2, 10), (3, 5)]


def _empty_queries(ks: str) -> list[Any]:
    return [
        f"SELECT * FROM {ks}.empty",
        f"SELECT * FROM {ks}.nums WHERE k = 999",
        f"SELECT * FROM {ks}.empty LIMIT 10",
    ]


@pytest.mark.anyio
@pytest.mark.parametrize("how", ["rows", "pages", "create_streaming_statement"])
async def test_an_empty_result_is_one_page_as_in_0_0_1(
    session: AsyncCassandraSession, tables: str, how: str
) -> None:
    for query in _empty_queries(tables):
        calls: list[tuple[int, int]] = []
        config = StreamConfig(
            page_callback=lambda page, rows, calls=calls: calls.append((page, rows))
        )
        if how == "create_streaming_statement":
            statement: Any = create_streaming_statement(query, fetch_size=100)
            opened = session.execute_stream(statement, stream_config=config)
        else:
            opened = session.execute_stream(query, stream_config=config)
        async with await opened as stream:
            if how == "pages":
                items = [page async for page in stream.pages()]
            else:
                items = [row async for row in stream]
        assert items == []
        assert stream.page_number == 1, query
        assert calls == [(1, 0)], query
        assert stream.total_rows_fetched == 0
    assert session.requests_registered == 0


@pytest.mark.anyio
async def test_a_statements_own_fetch_size_pages_a_stream_without_config(
    session: AsyncCassandraSession, tables: str
) -> None:
    statement = create_streaming_statement(f"SELECT * FROM {tables}.nums", fetch_size=7)
    async with await session.execute_stream(statement) as stream:
        sizes = [len(page) async for page in stream.pages()]
    assert sizes == [7, 7, 7, 4]
    assert statement.fetch_size == 7  # the caller's statement is left as it was


@pytest.mark.anyio
async def test_stream_cancel_stops_it(session: AsyncCassandraSession, tables: str) -> None:
    stream = await session.execute_stream(
        f"SELECT * FROM {tables}.nums", stream_config=StreamConfig(fetch_size=5)
    )
    assert (await stream.__anext__()).k is not None
    await stream.cancel()
    assert stream.is_closed
    assert [row async for row in stream] == []
    assert (stream.page_number, stream.total_rows_fetched) >= (1, 5)  # 0.0.1's names
    # The page read ahead finishes in the driver, and drops our callbacks then.
    await wait_until(lambda: session.requests_registered == 0, "the last page is in")


@pytest.mark.anyio
async def test_execute_takes_0_0_1_positional_arguments(
    session: AsyncCassandraSession, tables: str
) -> None:
    seen_timeouts: list[float] = []

    def record(future: Any) -> None:  # the driver's hook, called as each request is sent
        seen_timeouts.append(future.timeout)

    session.driver_session.add_request_init_listener(record)
    try:
        # (query, parameters, trace, custom_payload, timeout)
        result = await session.execute(
            f"SELECT * FROM {tables}.nums WHERE k = %s", [3], False, None, 7.5
        )
        batch = BatchStatement()
        batch.add(SimpleStatement(f"INSERT INTO {tables}.nums (k, v) VALUES (100, 1)"))
        await session.execute_batch(batch_statement=batch, timeout=6.5)
    finally:
        session.driver_session.remove_request_init_listener(record)
    assert result.one().v == 3
    assert seen_timeouts[:2] == [7.5, 6.5]


@pytest.mark.anyio
async def test_set_keyspace_refuses_a_bad_name_as_a_value_error(
    session: AsyncCassandraSession,
) -> None:
    with pytest.raises(ValueError, match="not a valid keyspace name"):
        await session.set_keyspace("no spaces; allowed")


@pytest.mark.anyio
async def test_get_query_trace_without_await(session: AsyncCassandraSession, tables: str) -> None:
    result = await session.execute(f"SELECT * FROM {tables}.nums WHERE k = 1", trace=True)
    trace = result.get_query_trace()  # not awaited: execute fetched it already
    assert trace is not None
    assert trace.duration is not None
    assert any("Executing single-partition query" in event.description for event in trace.events)
    untraced = await session.execute(f"SELECT * FROM {tables}.nums WHERE k = 1")
    assert untraced.get_query_trace() is None


@pytest.fixture
def driver_cluster(cassandra_node: Any) -> Iterator[Cluster]:
    policy = TokenAwarePolicy(DCAwareRoundRobinPolicy())
    cluster = Cluster(
        cassandra_node.contact_points,
        port=cassandra_node.port,
        execution_profiles={EXEC_PROFILE_DEFAULT: ExecutionProfile(load_balancing_policy=policy)},
    )
    yield cluster
    cluster.shutdown()


@pytest.mark.anyio
async def test_a_session_made_from_a_driver_cluster_or_session(
    driver_cluster: Cluster, tables: str
) -> None:
    async with await AsyncCassandraSession.create(driver_cluster, tables) as session:
        assert session.keyspace == tables
        assert (await session.execute("SELECT v FROM nums WHERE k = 4")).one().v == 4
        again = AsyncCassandraSession(session.driver_session)
        assert (await again.execute("SELECT v FROM nums WHERE k = 5")).one().v == 5
    with pytest.raises(async_cassandra.ConfigurationError, match="metrics"):
        AsyncCassandraSession(session.driver_session, metrics=object())
    with pytest.raises(QueryError) as raised:
        await AsyncCassandraSession.create(driver_cluster, "no_such_keyspace_here")
    assert isinstance(raised.value, cassandra.cluster.NoHostAvailable)
