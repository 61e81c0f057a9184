"""The Simulacron launcher against the running jar: several nodes, typed priming, the
activity log, listeners and connections, seen through the plain cassandra-driver.

Simulacron speaks protocol v4 only and our library requires v5, so these tests use the
driver directly (``Simulacron.driver_cluster()``: protocol v4, node 0 tried first, then
1, 2). They share the session's ``simulacron3`` (127.0.2.1-3), which the plugin resets
(no primes, an empty log, every node listening) before each test; each test connects a
driver of its own (about 20 ms), since several of them drop its connections.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from _helpers import poll_until
from cassandra import (
    ConsistencyLevel,
    OperationTimedOut,
    ReadTimeout,
    Unavailable,
    WriteTimeout,
)
from cassandra.cluster import EXEC_PROFILE_DEFAULT, ExecutionProfile, NoHostAvailable
from cassandra.connection import ConnectionShutdown
from cassandra.policies import (
    FallthroughRetryPolicy,
    HostStateListener,
    WhiteListRoundRobinPolicy,
    WriteType,
)
from cassandra.protocol import (
    IsBootstrappingErrorMessage,
    OverloadedErrorMessage,
    ServerError,
    TruncateError,
)
from cassandra.query import SimpleStatement

from async_cassandra.testing import LauncherError, Simulacron
from async_cassandra.testing._simulacron import LoggedQuery

ADDRESSES = ["127.0.2.1", "127.0.2.2", "127.0.2.3"]


@pytest.fixture
def sim(simulacron3: Simulacron) -> Simulacron:
    return simulacron3


@pytest.fixture
def cluster(sim: Simulacron) -> Iterator[Any]:
    """A driver for the three nodes that never retries: each request reaches node 0
    (unless pinned with ``host=``) once, and its error comes back as it is."""
    driver_cluster = sim.driver_cluster(retry_policy=FallthroughRetryPolicy())
    try:
        yield driver_cluster
    finally:
        driver_cluster.shutdown()


@pytest.fixture
def session(sim: Simulacron, cluster: Any) -> Any:
    """The driver's session (it holds the connections: keep it while they matter), with
    a connection pool open to every node."""
    return sim.driver_session(cluster)


def _hosts(cluster: Any) -> dict[str, Any]:
    return {host.address: host for host in cluster.metadata.all_hosts()}


def _only_node_cluster(sim: Simulacron, node: int, **kwargs: Any) -> Any:
    """A driver that knows of ``node`` alone (contact point and load balancing)."""
    address = sim.contact_points[node]
    profile = ExecutionProfile(load_balancing_policy=WhiteListRoundRobinPolicy([address]))
    return sim.driver_cluster(
        contact_points=[address], execution_profiles={EXEC_PROFILE_DEFAULT: profile}, **kwargs
    )


# ------------------------------------------------------------------------ nodes


def test_three_nodes_on_consecutive_addresses(sim: Simulacron, cluster: Any, session: Any) -> None:
    assert sim.contact_points == ADDRESSES
    assert sim.native_port == 9042
    hosts = _hosts(cluster)
    assert sorted(hosts) == ADDRESSES
    assert all(host.is_up for host in hosts.values())
    # The driver holds a connection to every node (and its control connection on node 0).
    connections = sim.connections()
    assert sorted(connections) == [0, 1, 2]
    assert all(connections[node] for node in connections)
    assert list(sim.connections(2)) == [2]


def test_one_node_by_default(simulacron: Simulacron) -> None:
    # The plugin's single node: not reset between tests, so this test cleans up.
    assert simulacron.contact_points == ["127.0.1.1"]
    query = "SELECT v FROM test_simulacron.one_node"
    simulacron.prime_rows(query, [{"v": "x"}])
    cluster = simulacron.driver_cluster()
    try:
        session = simulacron.driver_session(cluster)
        simulacron.clear_activity()
        rows = session.execute(query).all()
        assert [row.v for row in rows] == ["x"]
        assert simulacron.attempts(query) == {0: 1}
    finally:
        cluster.shutdown()
        simulacron.clear_primes()


def test_arguments_are_checked_before_anything_starts(sim: Simulacron) -> None:
    with pytest.raises(ValueError, match="nodes"):
        Simulacron("127.0.3.60", nodes=0)
    with pytest.raises(LauncherError, match="native_port=9042"):
        Simulacron("127.0.3.60", nodes=2, native_port=9043)
    with pytest.raises(LauncherError, match=r"cross a \.255"):
        Simulacron("127.0.3.253", nodes=3)
    with pytest.raises(LauncherError, match="loopback"):
        Simulacron("10.0.0.1")
    with pytest.raises(IndexError, match="0 to 2"):
        sim.prime_overloaded("SELECT 1", node=3)
    with pytest.raises(TypeError):
        sim.prime_overloaded("SELECT 1", node=True)
    with pytest.raises(ValueError, match="consistency"):
        sim.prime_read_timeout("SELECT 1", consistency="QUARUM")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="write_type"):
        sim.prime_write_timeout("SELECT 1", write_type="LOGGED")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="received"):
        sim.prime_write_timeout("SELECT 1", received=-1)
    with pytest.raises(ValueError, match="how"):
        sim.stop_listening(0, how="drop")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="close_type"):
        sim.close_connections(0, close_type="reset")  # type: ignore[arg-type]


# ---------------------------------------------------------------------- priming


def test_prime_rows_typed_and_delayed(sim: Simulacron, session: Any) -> None:
    query = "SELECT id, name FROM test_simulacron.users"
    sim.prime_rows(
        query,
        [{"id": 1, "name": "ada"}, {"id": 2, "name": "bob"}],
        {
            "id": "int",
            "name": "text",
        },
    )
    assert [tuple(row) for row in session.execute(query)] == [(1, "ada"), (2, "bob")]

    sim.prime_rows("SELECT word FROM test_simulacron.words", [{"word": "w"}])  # varchar
    assert session.execute("SELECT word FROM test_simulacron.words").one().word == "w"

    sim.prime_rows("INSERT INTO test_simulacron.words (word) VALUES ('w')")  # no rows
    assert session.execute("INSERT INTO test_simulacron.words (word) VALUES ('w')").all() == []

    sim.prime_rows(
        "SELECT slow FROM test_simulacron.t", [{"slow": 1}], {"slow": "int"}, delay_ms=300
    )
    began = time.monotonic()
    assert session.execute("SELECT slow FROM test_simulacron.t").one().slow == 1
    assert time.monotonic() - began >= 0.3


# Each fault helper, the driver error it yields, and the protocol fields it carries.
FAULTS: list[tuple[str, Callable[[Simulacron, str], None], type[Exception], dict[str, Any]]] = [
    (
        "read_timeout",
        lambda sim, q: sim.prime_read_timeout(
            q, consistency="LOCAL_QUORUM", received=2, block_for=3, data_present=True
        ),
        ReadTimeout,
        {
            "consistency": ConsistencyLevel.LOCAL_QUORUM,
            "received_responses": 2,
            "required_responses": 3,
            "data_retrieved": True,
        },
    ),
    (
        "write_timeout",
        lambda sim, q: sim.prime_write_timeout(
            q, consistency="ALL", received=1, block_for=3, write_type="BATCH_LOG"
        ),
        WriteTimeout,
        {
            "consistency": ConsistencyLevel.ALL,
            "received_responses": 1,
            "required_responses": 3,
            "write_type": WriteType.BATCH_LOG,
        },
    ),
    (
        "unavailable",
        lambda sim, q: sim.prime_unavailable(q, consistency="EACH_QUORUM", required=3, alive=1),
        Unavailable,
        {"consistency": ConsistencyLevel.EACH_QUORUM, "required_replicas": 3, "alive_replicas": 1},
    ),
    (
        "overloaded",
        lambda sim, q: sim.prime_overloaded(q, message="too busy"),
        OverloadedErrorMessage,
        {"code": 0x1001, "message": "too busy"},
    ),
    (
        "server_error",
        lambda sim, q: sim.prime_server_error(q, message="boom"),
        ServerError,
        {"code": 0x0000, "message": "boom"},
    ),
    (
        "is_bootstrapping",
        lambda sim, q: sim.prime_is_bootstrapping(q),
        IsBootstrappingErrorMessage,
        {"code": 0x1002},
    ),
    (
        "truncate_error",
        lambda sim, q: sim.prime_truncate_error(q, message="no truncate"),
        TruncateError,
        {"code": 0x1003, "message": "no truncate"},
    ),
    ("close_connection", lambda sim, q: sim.prime_close_connection(q), ConnectionShutdown, {}),
    ("no_result", lambda sim, q: sim.prime_no_result(q), OperationTimedOut, {}),
]


@pytest.mark.parametrize(
    ("prime", "error", "fields"), [f[1:] for f in FAULTS], ids=[f[0] for f in FAULTS]
)
def test_each_fault_yields_its_driver_error_with_the_fields_primed(
    sim: Simulacron,
    session: Any,
    prime: Callable[[Simulacron, str], None],
    error: type[Exception],
    fields: dict[str, Any],
) -> None:
    query = "UPDATE test_simulacron.t SET v = 1 WHERE k = 1"
    prime(sim, query)
    with pytest.raises(error) as caught:
        session.execute(query, timeout=0.5)
    assert {name: getattr(caught.value, name) for name in fields} == fields
    assert sim.attempts(query) == {0: 1, 1: 0, 2: 0}


def test_a_fault_can_be_delayed(sim: Simulacron, session: Any) -> None:
    query = "UPDATE test_simulacron.t SET v = 2 WHERE k = 1"
    sim.prime_write_timeout(query, delay_ms=300)
    began = time.monotonic()
    with pytest.raises(WriteTimeout):
        session.execute(query)
    assert time.monotonic() - began >= 0.3


@pytest.mark.parametrize(
    ("scope", "close_type", "error"),
    [
        ("connection", "disconnect", ConnectionShutdown),
        ("connection", "shutdown_write", ConnectionShutdown),
        # The node stops reading: the request is never answered, the socket stays open.
        ("connection", "shutdown_read", OperationTimedOut),
        ("node", "disconnect", ConnectionShutdown),
    ],
)
def test_prime_close_connection_scopes_and_types(
    sim: Simulacron, cluster: Any, scope: Any, close_type: Any, error: type[Exception]
) -> None:
    session = sim.driver_session(cluster)
    query = f"SELECT {scope}_{close_type} FROM test_simulacron.t"
    sim.prime_close_connection(query, scope=scope, close_type=close_type)
    before = {node: set(conns) for node, conns in sim.connections().items()}
    with pytest.raises(error):
        session.execute(query, timeout=0.5)
    assert sim.attempts(query) == {0: 1, 1: 0, 2: 0}

    def gone() -> set[str]:
        return before[0] - set(sim.connections(0)[0])

    if close_type == "shutdown_read":
        time.sleep(0.2)
        assert gone() == set()
        sim.close_connections(0)  # else the half-closed socket stays on the node's list
    elif scope == "connection":
        # The request's connection; the driver may then mark node 0 down and move its
        # control connection too, so at least one, and (below) no other node's.
        poll_until(lambda: len(gone()) >= 1, "a connection of node 0 is closed")
    else:
        poll_until(lambda: gone() == before[0], "every connection of node 0 is closed")
    # Other nodes' connections are untouched.
    now = sim.connections()
    assert before[1] <= set(now[1])
    assert before[2] <= set(now[2])


def test_node_primes_affect_only_that_node(sim: Simulacron, cluster: Any, session: Any) -> None:
    query = "SELECT v FROM test_simulacron.per_node"
    sim.prime_rows(query, [{"v": "cluster"}])
    sim.prime_overloaded(query, node=1)
    sim.prime_rows(query, [{"v": "node 2"}], node=2)
    hosts = [_hosts(cluster)[address] for address in sim.contact_points]

    def answers() -> list[object]:
        results: list[object] = []
        for host in hosts:
            try:
                results.append(session.execute(query, host=host).one().v)
            except OverloadedErrorMessage:
                results.append("overloaded")
        return results

    assert answers() == ["cluster", "overloaded", "node 2"]
    assert sim.attempts(query) == {0: 1, 1: 1, 2: 1}
    sim.clear_primes(1)  # node 1's own prime only
    assert answers() == ["cluster", "cluster", "node 2"]
    sim.clear_primes()
    assert [session.execute(query, host=host).all() for host in hosts] == [[], [], []]


def test_priming_the_same_query_again_replaces_the_prime(sim: Simulacron, session: Any) -> None:
    # Simulacron itself answers with the first matching prime; ours replace it.
    query = "SELECT v FROM test_simulacron.again"
    sim.prime_overloaded(query)
    with pytest.raises(OverloadedErrorMessage):
        session.execute(query)
    sim.prime_rows(query, [{"v": "recovered"}])
    assert session.execute(query).one().v == "recovered"


# ---------------------------------------------------------------- activity log


def test_activity_log_records_each_request_per_node(
    sim: Simulacron, cluster: Any, session: Any
) -> None:
    query = "SELECT v FROM test_simulacron.logged"
    sim.prime_rows(query, [{"v": "x"}])
    node2 = _hosts(cluster)[sim.contact_points[2]]
    sim.clear_activity()
    began_ms = int(time.time() * 1000)
    statement = SimpleStatement(
        query,
        consistency_level=ConsistencyLevel.ONE,
        serial_consistency_level=ConsistencyLevel.LOCAL_SERIAL,
    )
    session.execute(statement)
    session.execute(statement)
    session.execute(statement, host=node2)
    session.execute("SELECT v FROM test_simulacron.not_primed")
    ended_ms = int(time.time() * 1000)

    logged = [entry for entry in sim.activity() if entry.query == query]
    assert [(entry.node, entry.address) for entry in logged] == [
        (0, "127.0.2.1"),
        (0, "127.0.2.1"),
        (2, "127.0.2.3"),
    ]
    first = logged[0]
    assert isinstance(first, LoggedQuery)
    assert (first.type, first.consistency, first.serial_consistency, first.primed) == (
        "QUERY",
        "ONE",
        "LOCAL_SERIAL",
        True,
    )
    assert re.fullmatch(r"127\.0\.0\.1:\d+", first.connection)
    assert began_ms - 1000 <= first.received_timestamp <= ended_ms + 1000
    assert first.client_timestamp > 0  # the driver's default timestamp, in µs
    unprimed = [e for e in sim.activity(0) if e.query == "SELECT v FROM test_simulacron.not_primed"]
    assert [entry.primed for entry in unprimed] == [False]

    assert sim.attempts(query) == {0: 2, 1: 0, 2: 1}
    assert sim.attempts("SELECT v FROM test_simulacron.") == {0: 3, 1: 0, 2: 1}
    assert {entry.node for entry in sim.activity(2)} == {2}
    sim.clear_activity(0)
    assert sim.attempts(query) == {0: 0, 1: 0, 2: 1}
    # The raw JSON is still there.
    raw = sim.activity_log()
    assert isinstance(raw, dict)
    assert [len(node["queries"]) for node in raw["data_centers"][0]["nodes"]][2] >= 1
    sim.clear_activity_log()
    assert sim.activity() == []


def test_attempts_count_executes_not_prepares(sim: Simulacron, session: Any) -> None:
    query = "SELECT v FROM test_simulacron.prepared"
    sim.prime_rows(query, [{"v": "x"}])
    sim.clear_activity()
    prepared = session.prepare(query)  # the driver prepares it on every node
    assert {entry.type for entry in sim.activity() if entry.query == query} == {"PREPARE"}
    assert sim.attempts(query) == {0: 0, 1: 0, 2: 0}
    assert session.execute(prepared).one().v == "x"
    assert session.execute(prepared).one().v == "x"
    assert sim.attempts(query) == {0: 2, 1: 0, 2: 0}
    executes = [entry for entry in sim.activity() if entry.type == "EXECUTE"]
    assert [entry.query for entry in executes] == [query, query]


# ---------------------------------------------- listeners and connections


@pytest.mark.parametrize("how", ["unbind", "stop", "reject_startup"])
def test_stop_listening_fails_new_connections_until_start_listening(
    sim: Simulacron, cluster: Any, session: Any, how: Any
) -> None:
    before = sim.connections()
    sim.stop_listening(1, how=how)
    try:
        probe = _only_node_cluster(sim, 1, connect_timeout=1)
        try:
            with pytest.raises(NoHostAvailable) as caught:
                probe.connect()
        finally:
            probe.shutdown()
        (reason,) = caught.value.errors.values()
        expected = OperationTimedOut if how == "reject_startup" else ConnectionRefusedError
        assert isinstance(reason, expected)
        if how == "stop":  # as a stopped node: its open connections are closed too
            poll_until(
                lambda: not set(before[1]) & set(sim.connections(1)[1]),
                "node 1's open connections are closed",
            )
        else:  # open connections keep working
            assert set(before[1]) <= set(sim.connections(1)[1])
        # The other nodes still take connections.
        other = _only_node_cluster(sim, 2)
        try:
            other.connect()
        finally:
            other.shutdown()
    finally:
        sim.start_listening(1)
    probe = _only_node_cluster(sim, 1)
    try:
        probe.connect().execute("SELECT v FROM test_simulacron.listening")
    finally:
        probe.shutdown()
    assert sim.attempts("SELECT v FROM test_simulacron.listening") == {0: 0, 1: 1, 2: 0}


class _HostEvents(HostStateListener):  # type: ignore[misc]
    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    def on_up(self, host: Any) -> None:
        self.events.append(("up", host.address))

    def on_down(self, host: Any) -> None:
        self.events.append(("down", host.address))

    def on_add(self, host: Any) -> None:
        pass

    def on_remove(self, host: Any) -> None:
        pass


def test_close_connections_the_driver_sees_the_drop_and_reconnects(
    sim: Simulacron, cluster: Any, session: Any
) -> None:
    query = "SELECT v FROM test_simulacron.reconnect"
    sim.prime_rows(query, [{"v": "x"}])
    listener = _HostEvents()
    cluster.register_listener(listener)
    before = set(sim.connections(0)[0])
    closed = sim.close_connections(0)
    assert set(closed[0]) == before
    assert sim.connections(0)[0] == []

    # The driver (3.30, libev) finds its closed connection when it next uses it: the
    # request goes to node 1 instead, node 0 is marked down and reconnected.
    assert session.execute(query).one().v == "x"
    assert sim.attempts(query) == {0: 0, 1: 1, 2: 0}
    poll_until(lambda: ("down", ADDRESSES[0]) in listener.events, "node 0 is seen down")
    poll_until(lambda: ("up", ADDRESSES[0]) in listener.events, "node 0 is seen up")
    poll_until(lambda: bool(set(sim.connections(0)[0]) - before), "node 0 is reconnected to")
    poll_until(
        lambda: session.get_pool_state()[_hosts(cluster)[ADDRESSES[0]]]["open_count"] > 0,
        "node 0 has a connection pool again",
    )
    sim.clear_activity()
    assert session.execute(query).one().v == "x"
    assert sim.attempts(query) == {0: 1, 1: 0, 2: 0}
    (entry,) = [e for e in sim.activity() if e.query == query]
    assert entry.connection not in before
