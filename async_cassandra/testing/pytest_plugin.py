"""pytest fixtures that provide a real Cassandra (enable with
``-p async_cassandra.testing.pytest_plugin``).

- ``cassandra_node`` (session): the cluster to test against. With
  ``ASYNC_CASSANDRA_CONTACT_POINTS`` set (comma-separated hosts, port from
  ``ASYNC_CASSANDRA_PORT``) that existing cluster is used; otherwise one local node is
  started the first time a test asks for it and stopped at the end of the session.
- ``cassandra_driver_session`` (session): a plain synchronous cassandra-driver session
  on it, for setting up data.
- ``cassandra_keyspace`` (function): a fresh keyspace (SimpleStrategy, RF 1), dropped
  afterwards.
- ``cassandra_auth_node`` / ``cassandra_tls_node`` (session): extra local nodes with
  password auth (127.0.0.20) and client TLS (127.0.0.21).
- ``cassandra_cluster3`` (session): a local cluster of three nodes (127.0.0.61-63, one
  token each) for tests of node failures: its ``launcher`` kills, pauses, stops and
  starts single nodes (``kill(i)``, ``pause(i)`` / ``resume(i)``, ``stop_node(i)`` /
  ``start_node(i)``). A test that takes a node down brings it back before it ends.
- ``cassandra_keyspace_rf3`` (function): a fresh keyspace on ``cassandra_cluster3``
  (SimpleStrategy, replication factor 3), dropped afterwards. Before the test it starts
  again any node of the cluster that an earlier test left down, and resumes any it left
  paused, so one test's failure does not become the next one's.
- ``simulacron`` (session): a Simulacron node on 127.0.1.1 (protocol v4 only, primed
  answers and faults).
- ``simulacron3`` (session): a Simulacron cluster of three nodes on 127.0.2.1-3 (one data
  center), for tests of retry and load-balancing policies: prime faults on one node or
  all (``prime_overloaded(query, node=1)``...), count each node's attempts
  (``attempts(query_prefix)``), stop a node's listener, close its connections; connect
  with ``driver_cluster()`` (protocol v4, nodes tried in order). Every test that uses
  it starts with no primes, an empty activity log and every node listening (``reset()``
  runs first), so prime inside the test, not in a fixture of a wider scope.

All are synchronous, so they work under any async test backend. A node that fails to
start makes the tests that need it error with the launcher's message and log tail; they
are never skipped.

The nodes that many tests share (``cassandra_node``, ``cassandra_auth_node``,
``cassandra_tls_node``) do not flush their system tables after each schema change, which
makes CREATE and DROP two to three times faster, and sync their commit log every 10 s;
one of them that is killed would come back without the schema created since it started
and without its last writes. Kill the nodes of ``cassandra_cluster3``, or of a
``LocalCassandra`` of your own: they keep everything they acknowledged.
"""

from __future__ import annotations

import os
import secrets
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from ._maven import CASSANDRA_VERSION
from ._node import LocalCassandra, shared_cluster
from ._simulacron import Simulacron

__all__ = [
    "CassandraCluster",
    "CassandraNode",
    "cassandra_auth_node",
    "cassandra_cluster3",
    "cassandra_driver_session",
    "cassandra_keyspace",
    "cassandra_keyspace_rf3",
    "cassandra_node",
    "cassandra_tls_node",
    "simulacron",
    "simulacron3",
]

AUTH_ADDRESS = "127.0.0.20"
TLS_ADDRESS = "127.0.0.21"
CLUSTER3_ADDRESS = "127.0.0.61"
SIMULACRON_ADDRESS = "127.0.1.1"
SIMULACRON3_ADDRESS = "127.0.2.1"


@dataclass(frozen=True)
class CassandraNode:
    """Where the tests' Cassandra is: ``contact_points`` and ``port``, plus the
    :class:`LocalCassandra` running it (None for an external cluster)."""

    contact_points: list[str]
    port: int
    launcher: LocalCassandra | None = None

    @property
    def username(self) -> str | None:
        """The superuser name when the node has password auth, else None."""
        return self.launcher.username if self.launcher else None

    @property
    def password(self) -> str | None:
        """The superuser password when the node has password auth, else None."""
        return self.launcher.password if self.launcher else None

    def ssl_context(self) -> ssl.SSLContext | None:
        """A context trusting the node's certificate when it is TLS-only, else None."""
        if self.launcher is None or self.launcher.cert_path is None:
            return None
        return self.launcher.ssl_context()


@dataclass(frozen=True)
class CassandraCluster(CassandraNode):
    """A local cluster of several nodes: ``contact_points`` (every node), ``port``, and
    the :class:`LocalCassandra` running it, which fails and restores single nodes."""

    launcher: LocalCassandra


def _external() -> CassandraNode | None:
    hosts = os.environ.get("ASYNC_CASSANDRA_CONTACT_POINTS", "")
    points = [host.strip() for host in hosts.split(",") if host.strip()]
    if not points:
        return None
    return CassandraNode(points, int(os.environ.get("ASYNC_CASSANDRA_PORT") or 9042))


def _local(**kwargs: Any) -> Iterator[CassandraNode]:
    with shared_cluster(**kwargs) as node:
        yield CassandraNode(node.contact_points, node.native_port, node)


def _driver(contact_points: list[str], port: int) -> Any:
    """A driver ``Cluster`` (not connected yet) with the driver's own default policy."""
    from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
    from cassandra.policies import DCAwareRoundRobinPolicy, TokenAwarePolicy

    # The driver's own default policy, spelled out: without it every Cluster() logs a
    # "no load_balancing_policy" warning into the test output.
    # Schema changes get a minute: a node just restarted under load (hints to replay,
    # commit log to read) can take longer than the driver's default 10 s to agree.
    profile = ExecutionProfile(
        load_balancing_policy=TokenAwarePolicy(DCAwareRoundRobinPolicy()), request_timeout=60.0
    )
    return Cluster(contact_points, port=port, execution_profiles={EXEC_PROFILE_DEFAULT: profile})


def pytest_report_header(config: pytest.Config) -> str:
    """Say which Cassandra the run uses."""
    external = _external()
    if external is not None:
        points = ",".join(external.contact_points)
        return f"cassandra: external cluster at {points} port {external.port}"
    return f"cassandra: local Apache Cassandra {CASSANDRA_VERSION}, started when first needed"


@pytest.fixture(scope="session")
def cassandra_node() -> Iterator[CassandraNode]:
    """The Cassandra to test against (external via ``ASYNC_CASSANDRA_CONTACT_POINTS``, or
    a local node started for this session)."""
    external = _external()
    if external is not None:
        yield external
        return
    yield from _local()


@pytest.fixture(scope="session")
def cassandra_auth_node() -> Iterator[CassandraNode]:
    """A local node with password auth (user and password ``cassandra``)."""
    yield from _local(address=AUTH_ADDRESS, auth=True)


@pytest.fixture(scope="session")
def cassandra_tls_node() -> Iterator[CassandraNode]:
    """A local node that accepts only TLS clients; see ``ssl_context()``."""
    yield from _local(address=TLS_ADDRESS, tls=True)


@pytest.fixture(scope="session")
def cassandra_cluster3() -> Iterator[CassandraCluster]:
    """Three local nodes on 127.0.0.61-63 forming one cluster, for node-failure tests."""
    with LocalCassandra(3, address=CLUSTER3_ADDRESS) as cluster:
        yield CassandraCluster(cluster.contact_points, cluster.native_port, cluster)


@pytest.fixture(scope="session")
def simulacron() -> Iterator[Simulacron]:
    """A Simulacron node on 127.0.1.1 (protocol v4 only)."""
    with Simulacron(SIMULACRON_ADDRESS) as sim:
        yield sim


@pytest.fixture(scope="session")
def simulacron3() -> Iterator[Simulacron]:
    """Three Simulacron nodes on 127.0.2.1-3, one cluster (protocol v4 only); each test
    using it starts with no primes, an empty activity log and every node listening."""
    with Simulacron(SIMULACRON3_ADDRESS, nodes=3) as sim:
        yield sim


@pytest.fixture(autouse=True)
def _simulacron3_reset(request: pytest.FixtureRequest) -> None:
    # Autouse, and a no-op for tests that do not use simulacron3 (directly or through
    # another fixture): the session fixture itself cannot act between tests.
    if "simulacron3" in request.fixturenames:
        request.getfixturevalue("simulacron3").reset()


@pytest.fixture(scope="session")
def cassandra_driver_session(cassandra_node: CassandraNode) -> Iterator[Any]:
    """A synchronous ``cassandra.cluster.Session`` on ``cassandra_node``, for fixtures."""
    cluster = _driver(cassandra_node.contact_points, cassandra_node.port)
    try:
        session = cluster.connect()
        yield session
    finally:
        cluster.shutdown()


@pytest.fixture
def cassandra_keyspace(cassandra_driver_session: Any) -> Iterator[str]:
    """The name of a fresh keyspace (SimpleStrategy, replication factor 1), dropped after
    the test."""
    name = f"test_{secrets.token_hex(4)}"
    cassandra_driver_session.execute(
        f"CREATE KEYSPACE {name} WITH replication = "
        "{'class': 'SimpleStrategy', 'replication_factor': 1}"
    )
    try:
        yield name
    finally:
        cassandra_driver_session.execute(f"DROP KEYSPACE IF EXISTS {name}")


@pytest.fixture
def cassandra_keyspace_rf3(cassandra_cluster3: CassandraCluster) -> Iterator[str]:
    """The name of a fresh keyspace on ``cassandra_cluster3`` (SimpleStrategy,
    replication factor 3), dropped after the test. Every node of the cluster runs, and
    none is paused, when the test starts."""
    launcher = cassandra_cluster3.launcher
    for index in range(len(launcher.addresses)):
        if launcher.is_running(index):
            launcher.resume(index)
        else:
            launcher.start_node(index)
    name = f"test_rf3_{secrets.token_hex(4)}"
    cluster = _driver(cassandra_cluster3.contact_points, cassandra_cluster3.port)
    try:
        cluster.connect().execute(
            f"CREATE KEYSPACE {name} WITH replication = "
            "{'class': 'SimpleStrategy', 'replication_factor': 3}"
        )
    finally:
        cluster.shutdown()
    try:
        yield name
    finally:
        cluster = _driver(cassandra_cluster3.contact_points, cassandra_cluster3.port)
        try:
            cluster.connect().execute(f"DROP KEYSPACE IF EXISTS {name}")
        finally:
            cluster.shutdown()
