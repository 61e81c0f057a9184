"""Single nodes of a real 3-node cluster failing and coming back: kill, stop, start, pause.

These tests check the launcher (``LocalCassandra``'s node control and the
``cassandra_cluster3`` / ``cassandra_keyspace_rf3`` fixtures), so they drive
cassandra-driver directly and synchronously. Each one leaves all three nodes up for the
next. A node restart costs 10-20 s on a 2-core machine, and a driver learns of a killed
node only from gossip (10-20 s): restarts are kept to one per test.

Addresses: the cluster is the plugin's, on 127.0.0.61-63; the tests that start no node
use 127.0.3.41-42 (test_launcher has the rest of 127.0.3.x).
"""

from __future__ import annotations

import contextlib
import os
import struct
import subprocess
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from _helpers import poll_until
from cassandra import ConsistencyLevel, OperationTimedOut
from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile, Session
from cassandra.policies import (
    DCAwareRoundRobinPolicy,
    TokenAwarePolicy,
    WhiteListRoundRobinPolicy,
)
from cassandra.query import SimpleStatement

from async_cassandra.testing import LauncherError, LocalCassandra
from async_cassandra.testing._pidfile import (
    NODE_MARKER,
    PidRecord,
    clean_dead_pid_files,
    pid_file,
)
from async_cassandra.testing._process import (
    all_threads_running,
    all_threads_stopped,
    proc_alive,
    start_time,
)
from async_cassandra.testing.pytest_plugin import CassandraCluster

pytestmark = pytest.mark.timeout(300)

QUORUM = ConsistencyLevel.QUORUM


@contextlib.contextmanager
def connect(
    cluster: CassandraCluster, only: str | None = None, request_timeout: float = 10.0
) -> Iterator[tuple[Cluster, Session]]:
    """A driver on the whole cluster, or pinned to the node on ``only`` (its control
    connection and its only pool there); shut down on the way out, before any node
    stops, so that it does not log the stop over a real failure."""
    policy: Any = (
        WhiteListRoundRobinPolicy([only])
        if only is not None
        else TokenAwarePolicy(DCAwareRoundRobinPolicy())
    )
    profile = ExecutionProfile(load_balancing_policy=policy, request_timeout=request_timeout)
    driver = Cluster(
        [only] if only is not None else cluster.contact_points,
        port=cluster.port,
        execution_profiles={EXEC_PROFILE_DEFAULT: profile},
    )
    try:
        yield driver, driver.connect()
    finally:
        driver.shutdown()


def host_up(driver: Cluster, address: str) -> bool:
    return any(host.address == address and host.is_up for host in driver.metadata.all_hosts())


def write(session: Session, table: str, keys: Iterable[int], level: int = QUORUM) -> dict[int, str]:
    insert = SimpleStatement(f"INSERT INTO {table} (k, v) VALUES (%s, %s)", consistency_level=level)
    rows = {k: f"v{k}" for k in keys}
    for k, v in rows.items():
        session.execute(insert, (k, v))
    return rows


def read(session: Session, table: str, keys: Iterable[int], level: int = QUORUM) -> dict[int, str]:
    select = SimpleStatement(f"SELECT k, v FROM {table} WHERE k = %s", consistency_level=level)
    found = {}
    for k in keys:
        row = session.execute(select, (k,)).one()
        if row is not None:
            found[row.k] = row.v
    return found


def local(session: Session) -> Any:
    return session.execute("SELECT host_id, tokens FROM system.local").one()


def test_killed_node_starts_again_on_its_data(
    cassandra_cluster3: CassandraCluster, cassandra_keyspace_rf3: str
) -> None:
    launcher = cassandra_cluster3.launcher
    table = f"{cassandra_keyspace_rf3}.t"
    # Rows whose one replica is node 1: found after its restart only if its own data
    # survived the SIGKILL (a read at any level of an RF 3 row may be answered by others).
    alone = f"{cassandra_keyspace_rf3}_one"
    killed = launcher.addresses[1]
    with connect(cassandra_cluster3) as (driver, session):
        session.execute(f"CREATE TABLE {table} (k int PRIMARY KEY, v text)")
        session.execute(
            f"CREATE KEYSPACE {alone} WITH replication = "
            "{'class': 'SimpleStrategy', 'replication_factor': 1}"
        )
        try:
            session.execute(f"CREATE TABLE {alone}.t (k int PRIMARY KEY, v text)")
            before = write(session, table, range(40))
            on_node1 = [
                k
                for k in range(60)
                if [h.address for h in driver.metadata.get_replicas(alone, struct.pack(">i", k))]
                == [killed]
            ]
            assert on_node1
            only_node1 = write(session, f"{alone}.t", on_node1, ConsistencyLevel.ONE)
            old_pid = launcher.pids[1]
            try:
                launcher.kill(1)
                assert not launcher.is_running(1)
                assert not proc_alive(old_pid)
                assert (launcher.node_dirs[1] / "data").is_dir()
                # Its pid file still names the dead JVM: its data is kept for start_node,
                # and the cleanup after a killed run would still find it.
                record = PidRecord.read(pid_file(killed, cassandra_cluster3.port))
                assert record is not None
                assert record.pid == old_pid
                with pytest.raises(LauncherError, match=r"node 1 .* is stopped"):
                    launcher.kill(1)

                # Gossip convicts the node in 10-20 s and tells the driver.
                poll_until(lambda: not host_up(driver, killed), "the driver sees node 1 down", 60)
                assert read(session, table, range(40)) == before
                during = write(session, table, range(40, 50))

                launcher.start_node(1)
                assert launcher.is_running(1)
                assert launcher.pids[1] != old_pid
                record = PidRecord.read(pid_file(killed, cassandra_cluster3.port))
                assert record is not None
                assert record.pid == launcher.pids[1]
                poll_until(lambda: host_up(driver, killed), "the driver sees node 1 up again", 60)
                assert read(session, table, range(50)) == before | during
            finally:
                if not launcher.is_running(1):
                    launcher.start_node(1)
            with connect(cassandra_cluster3, only=killed) as (_, pinned):
                assert read(pinned, table, range(40), ConsistencyLevel.ONE) == before
                assert read(pinned, f"{alone}.t", on_node1, ConsistencyLevel.ONE) == only_node1
        finally:
            session.execute(f"DROP KEYSPACE IF EXISTS {alone}")


def test_stopped_node_starts_again_with_its_data_and_token(
    cassandra_cluster3: CassandraCluster, cassandra_keyspace_rf3: str
) -> None:
    launcher = cassandra_cluster3.launcher
    table = f"{cassandra_keyspace_rf3}.t"
    stopped = launcher.addresses[2]
    with connect(cassandra_cluster3) as (driver, session):
        session.execute(f"CREATE TABLE {table} (k int PRIMARY KEY, v text)")
        rows = write(session, table, range(30))
        with connect(cassandra_cluster3, only=stopped) as (_, pinned):
            was = local(pinned)
        try:
            launcher.stop_node(2)
            assert not launcher.is_running(2)
            assert (launcher.node_dirs[2] / "data").is_dir()
            with pytest.raises(LauncherError, match=r"start_node\(2\)"):
                launcher.pause(2)
            launcher.start_node(2)
            assert launcher.is_running(2)
            with pytest.raises(LauncherError, match="already running"):
                launcher.start_node(2)
        finally:
            if not launcher.is_running(2):
                launcher.start_node(2)
        with connect(cassandra_cluster3, only=stopped) as (_, pinned):
            now = local(pinned)
            assert now.tokens == was.tokens
            assert now.host_id == was.host_id
            assert read(pinned, table, range(30), ConsistencyLevel.ONE) == rows
        poll_until(lambda: host_up(driver, stopped), "the driver sees node 2 up again", 60)
        assert read(session, table, range(30)) == rows


def test_paused_node_answers_nothing_until_resumed(
    cassandra_cluster3: CassandraCluster, cassandra_keyspace_rf3: str
) -> None:
    launcher = cassandra_cluster3.launcher
    pid = launcher.pids[0]
    with connect(cassandra_cluster3, only=launcher.addresses[0], request_timeout=1.0) as (
        _,
        session,
    ):
        query = "SELECT release_version FROM system.local"
        assert session.execute(query).one() is not None
        try:
            launcher.pause(0)
            assert all_threads_stopped(pid)
            assert launcher.is_running(0)
            with pytest.raises(OperationTimedOut):
                session.execute(query)
        finally:
            launcher.resume(0)
        assert all_threads_running(pid)
        assert session.execute(query).one() is not None


def test_misuse_says_what_is_wrong(cassandra_cluster3: CassandraCluster) -> None:
    launcher = cassandra_cluster3.launcher
    with pytest.raises(LauncherError, match=r"there is no node 3: .* nodes 0 to 2"):
        launcher.kill(3)
    with pytest.raises(LauncherError, match="there is no node -1"):
        launcher.is_running(-1)
    with pytest.raises(LauncherError, match=r"node 0 \(127\.0\.0\.61\) is already running"):
        launcher.start_node(0)
    unstarted = LocalCassandra(address="127.0.3.42")
    assert not unstarted.is_running()
    with pytest.raises(LauncherError, match=r"start\(\)"):
        unstarted.kill()
    with pytest.raises(LauncherError, match=r"start\(\)"):
        unstarted.start_node()


def _dead_pid() -> int:
    done = subprocess.Popen([sys.executable, "-c", "pass"])
    done.wait()
    return done.pid


def test_pid_file_of_a_stopped_node_is_kept_while_its_owner_runs(tmp_path: Path) -> None:
    # A node that a live test run stopped on purpose: its JVM is gone, its data is kept
    # for start_node. Another launcher must neither delete it nor take its address.
    address = "127.0.3.41"
    node_dir = tmp_path / "node2"
    node_dir.mkdir()
    (node_dir / NODE_MARKER).touch()
    path = pid_file(address, 9042)
    me = os.getpid()
    PidRecord(_dead_pid(), node_dir, None, me, start_time(me)).write(path)
    try:
        clean_dead_pid_files()
        assert path.exists()
        assert node_dir.exists()
        with pytest.raises(LauncherError, match=r"running process .* stopped for now"):
            LocalCassandra(address=address).start()
        assert node_dir.exists()

        # Once its owner is gone too (a killed test run), it is a leftover like any other.
        owner = _dead_pid()
        PidRecord(_dead_pid(), node_dir, None, owner, 12345).write(path)
        clean_dead_pid_files()
        assert not path.exists()
        assert not node_dir.exists()
    finally:
        path.unlink(missing_ok=True)
