"""The local Cassandra launcher: a real 3-node cluster, the CLI, and each failure's error.

Every test uses its own loopback address, away from 127.0.0.1 (the session node), the
plugin's auth/TLS/Simulacron addresses and the benchmarks', so no two nodes meet: the
3-node cluster on 127.0.0.2-4, everything else on 127.0.3.x.
Real node starts cost ~10 s each on a 2-core machine: keep them few.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cassandra import ConsistencyLevel
from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
from cassandra.policies import DCAwareRoundRobinPolicy, TokenAwarePolicy
from cassandra.query import SimpleStatement

from async_cassandra.testing import LauncherError, LocalCassandra, cache_dir
from async_cassandra.testing._config import MAIN_CLASS
from async_cassandra.testing._java import find_java
from async_cassandra.testing._pidfile import (
    NODE_MARKER,
    PidRecord,
    clear_stale,
    network_namespace,
    pid_file,
)
from async_cassandra.testing._process import proc_alive, start_time

REPO = Path(__file__).resolve().parents[1]
MakeCluster = Callable[[list[str]], Cluster]


def _alive(pid: int) -> bool:
    return proc_alive(pid)


def _python_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def _wait_dead(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.1)
    return False


@pytest.fixture
def make_cluster() -> Iterator[MakeCluster]:
    """Make driver clusters that are shut down even when the test fails."""
    clusters: list[Cluster] = []

    def make(contact_points: list[str]) -> Cluster:
        # The driver's default policy, explicit so it logs no warning about its absence.
        policy = TokenAwarePolicy(DCAwareRoundRobinPolicy())
        profiles = {EXEC_PROFILE_DEFAULT: ExecutionProfile(load_balancing_policy=policy)}
        cluster = Cluster(contact_points, execution_profiles=profiles)
        clusters.append(cluster)
        return cluster

    yield make
    for cluster in clusters:
        cluster.shutdown()


@pytest.mark.timeout(300)
def test_three_node_cluster(make_cluster: MakeCluster) -> None:
    with LocalCassandra(3, address="127.0.0.2") as cluster:
        assert cluster.addresses == ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
        pids, dirs = cluster.pids, cluster.node_dirs
        assert len(set(pids)) == 3
        yaml = (dirs[1] / "conf" / "cassandra.yaml").read_text()
        assert '"seeds": "127.0.0.2:7000,127.0.0.3:7000,127.0.0.4:7000"' in yaml
        assert 'initial_token: "-3074457345618258603"' in yaml

        # A driver learns the cluster from the one node it connects to: whichever that
        # is, it must see all three up as soon as start() returns. Every driver is shut
        # down before the nodes stop, even on a failed assert: one left connected to
        # stopping nodes logs "marked down" / "Connection refused" over the real failure.
        for address in cluster.addresses:
            driver = make_cluster([address])
            try:
                driver.connect()
                hosts = driver.metadata.all_hosts()
                assert sorted(host.address for host in hosts) == cluster.addresses, address
                assert all(host.is_up for host in hosts), address
            finally:
                driver.shutdown()

        driver = make_cluster(["127.0.0.2"])
        try:
            session = driver.connect()
            session.execute(
                "CREATE KEYSPACE rf3 WITH replication = "
                "{'class': 'SimpleStrategy', 'replication_factor': 3}"
            )
            session.execute("CREATE TABLE rf3.t (k int PRIMARY KEY, v text)")
            insert = SimpleStatement(
                "INSERT INTO rf3.t (k, v) VALUES (%s, %s)",
                consistency_level=ConsistencyLevel.QUORUM,
            )
            for k in range(20):
                session.execute(insert, (k, f"v{k}"))
            select = SimpleStatement(
                "SELECT k, v FROM rf3.t WHERE k = %s", consistency_level=ConsistencyLevel.QUORUM
            )
            assert session.execute(select, (7,)).one().v == "v7"
            count = SimpleStatement(
                "SELECT count(*) FROM rf3.t", consistency_level=ConsistencyLevel.ALL
            )
            assert session.execute(count).one()[0] == 20
        finally:
            driver.shutdown()

        # stop() stops every node whatever state it is in: here one stopped and one
        # killed on their own before it, and one still running.
        cluster.stop_node(1)
        cluster.kill(2)
        assert [cluster.is_running(i) for i in range(3)] == [True, False, False]
        assert (dirs[1] / "data").is_dir()
        assert (dirs[2] / "data").is_dir()

    assert not any(_alive(pid) for pid in pids)
    assert not any(path.exists() for path in dirs)
    assert not any(pid_file(a, 9042).exists() for a in cluster.addresses)


def test_port_in_use_names_address_and_port() -> None:
    address = "127.0.3.1"
    # A pid file left by a run whose node is gone: its directory is cleaned up first.
    leftover = Path(os.environ.get("TMPDIR", "/tmp")) / f"async-cassandra-test-{uuid.uuid4().hex}"
    (leftover / "node1").mkdir(parents=True)
    (leftover / "node1" / NODE_MARKER).touch()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    PidRecord(dead.pid, leftover / "node1", leftover, owner=dead.pid).write(
        pid_file("127.0.3.2", 9042)
    )

    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind((address, 9042))
        squatter.listen()
        started = time.monotonic()
        with pytest.raises(LauncherError, match=r"port 9042 on 127\.0\.3\.1 .*already in use"):
            LocalCassandra(address=address).start()
        assert time.monotonic() - started < 10

    assert not leftover.exists()
    assert not pid_file("127.0.3.2", 9042).exists()


@contextlib.contextmanager
def node_of_this_live_process(tmp_path: Path) -> Iterator[PidRecord]:
    """A stand-in whose command line looks like one of our nodes (main class + node
    dir), owned by this very (live) process: somebody's running node, not a stale one.
    Its pid record, written nowhere yet."""
    node_dir = tmp_path / "node1"
    node_dir.mkdir()
    (node_dir / NODE_MARKER).touch()
    fake = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(120)", MAIN_CLASS, str(node_dir)]
    )
    try:
        yield PidRecord(fake.pid, node_dir, None, os.getpid(), start_time(os.getpid()))
        assert fake.poll() is None  # never killed
    finally:
        fake.kill()
        fake.wait()


def test_node_of_a_live_run_is_not_killed(tmp_path: Path) -> None:
    try:
        with node_of_this_live_process(tmp_path) as record:
            record.write(pid_file("127.0.3.9", 9042))
            assert record.is_our_node()
            with pytest.raises(
                LauncherError, match=rf"of another running process \(pid {os.getpid()}\)"
            ):
                LocalCassandra(address="127.0.3.9").start()
            assert record.node_dir.exists()
    finally:
        pid_file("127.0.3.9", 9042).unlink(missing_ok=True)


def test_a_node_in_another_network_namespace_is_not_in_the_way(tmp_path: Path) -> None:
    # The same address and port in another network namespace (`ip netns exec`) is
    # another socket: a live run's node recorded there must not stop a start here.
    # clear_stale is the launcher's check before a start (the same record in this
    # namespace's pid file makes it refuse).
    elsewhere = pid_file("127.0.3.10", 9042, namespace="net1")
    here = pid_file("127.0.3.10", 9042)
    assert network_namespace() != "net1"
    try:
        with node_of_this_live_process(tmp_path) as record:
            record.write(elsewhere)
            clear_stale("127.0.3.10", 9042)  # nothing of this namespace's: no error
            assert elsewhere.exists()
            record.write(here)
            with pytest.raises(LauncherError, match="of another running process"):
                clear_stale("127.0.3.10", 9042)
    finally:
        elsewhere.unlink(missing_ok=True)
        here.unlink(missing_ok=True)


def test_bad_java_path_fails_fast() -> None:
    started = time.monotonic()
    with pytest.raises(LauncherError, match=r"/nonexistent/java.*Java 17") as info:
        LocalCassandra(address="127.0.3.3", java="/nonexistent/java").start()
    assert time.monotonic() - started < 5
    assert "ASYNC_CASSANDRA_JAVA" in str(info.value)


@pytest.mark.parametrize("how", ["path", "env"])
def test_missing_maven_says_install_it(
    how: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    java = find_java()  # resolved first: an empty PATH would hide it too
    cache = tmp_path / "cache"
    monkeypatch.setenv("ASYNC_CASSANDRA_CACHE", str(cache))
    if how == "path":
        monkeypatch.delenv("ASYNC_CASSANDRA_MVN", raising=False)
        monkeypatch.setenv("PATH", str(tmp_path))
    else:
        monkeypatch.setenv("ASYNC_CASSANDRA_MVN", "/nonexistent/mvn")
    with pytest.raises(LauncherError, match=r"Install Maven 3\.x and Java 17") as info:
        LocalCassandra(address="127.0.3.4", java=java).start()
    assert "ASYNC_CASSANDRA_MVN" in str(info.value)
    # Nothing half-downloaded is left behind.
    assert not list(cache.glob("cassandra-*"))


@pytest.mark.timeout(300)
def test_node_that_dies_at_start_reports_exit_and_log() -> None:
    node = LocalCassandra(address="127.0.3.5", extra_yaml={"num_tokens": "not-a-number"})
    with pytest.raises(LauncherError) as info:
        node.start()
    message = str(info.value)
    assert "Cassandra node on 127.0.3.5 exited with code" in message
    assert "Invalid yaml" in message  # the log tail, with the actual reason
    assert not any(path.exists() for path in node.node_dirs)
    assert node.base_dir is not None
    assert not node.base_dir.exists()


def test_interrupt_during_start_stops_what_was_started(monkeypatch: pytest.MonkeyPatch) -> None:
    launched: list[int] = []

    def interrupted(self: LocalCassandra, began: float) -> None:
        launched.extend(self.pids)
        time.sleep(0.5)
        raise KeyboardInterrupt

    monkeypatch.setattr(LocalCassandra, "_wait_ready", interrupted)
    node = LocalCassandra(address="127.0.3.6")
    with pytest.raises(KeyboardInterrupt):
        node.start()
    assert launched
    assert not any(_alive(pid) for pid in launched)
    assert not any(path.exists() for path in node.node_dirs)
    assert not pid_file("127.0.3.6", 9042).exists()


_KILLED_RUN = textwrap.dedent(
    """
    import json, threading, time
    from async_cassandra.testing import LocalCassandra

    # One node meant to outlive us, one that must die with us (PR_SET_PDEATHSIG, which
    # needs the main thread); started side by side to halve the wait.
    kept = LocalCassandra(address="127.0.3.7", die_with_parent=False)
    starting = threading.Thread(target=kept.start)
    starting.start()
    dies = LocalCassandra(address="127.0.3.8").start()
    starting.join()
    print(json.dumps({"kept": [kept.pids[0], str(kept.node_dirs[0])],
                      "dies": [dies.pids[0], str(dies.node_dirs[0])]}), flush=True)
    time.sleep(600)
    """
)


@pytest.mark.timeout(300)
def test_killed_run_leaves_nothing_behind(make_cluster: MakeCluster) -> None:
    # A test run that is SIGKILLed gets no chance to stop its nodes.
    with subprocess.Popen(
        [sys.executable, "-c", _KILLED_RUN],
        stdout=subprocess.PIPE,
        text=True,
        env=_python_env(),
    ) as run:
        try:
            assert run.stdout is not None
            line = run.stdout.readline()
            assert line, "the child run failed to start its nodes"
            started = json.loads(line)
        finally:
            run.kill()
    kept_pid, kept_dir = started["kept"][0], Path(started["kept"][1])
    dies_pid, dies_dir = started["dies"][0], Path(started["dies"][1])

    # The JVM started with die_with_parent=True goes down with its parent.
    assert _wait_dead(dies_pid, 60)
    # The detached one survives, and a new node on its address replaces it.
    assert _alive(kept_pid)
    with LocalCassandra(address="127.0.3.7") as node:
        assert not _alive(kept_pid)
        assert not kept_dir.exists()
        # The new start also cleared the dead node's leftover directory.
        assert not dies_dir.exists()
        assert not pid_file("127.0.3.8", 9042).exists()
        driver = make_cluster(node.contact_points)
        assert driver.connect().execute("SELECT key FROM system.local").one().key == "local"
    assert not pid_file("127.0.3.7", 9042).exists()


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "async_cassandra.testing", *args],
        capture_output=True,
        text=True,
        env=_python_env(),
        timeout=240,
        check=False,
    )


@pytest.mark.timeout(300)
def test_cli_start_status_stop(make_cluster: MakeCluster) -> None:
    where = ["--address", "127.0.3.30", "--port", "9042"]
    try:
        started = _cli("start", *where)
        assert started.returncode == 0, started.stderr
        assert "127.0.3.30:9042" in started.stdout
        assert "stop --address 127.0.3.30 --port 9042" in started.stdout

        status = _cli("status", *where)
        assert status.returncode == 0, status.stdout + status.stderr
        assert "127.0.3.30:9042" in status.stdout
        assert "running" in status.stdout
        record = PidRecord.read(pid_file("127.0.3.30", 9042))
        assert record is not None
        assert record.is_our_node()

        driver = make_cluster(["127.0.3.30"])
        assert driver.connect().execute("SELECT key FROM system.local").one().key == "local"
        driver.shutdown()

        # The node outlived the CLI process; a launcher in another run must not treat it
        # as stale and kill it.
        with pytest.raises(LauncherError, match=r"async_cassandra\.testing stop"):
            LocalCassandra(address="127.0.3.30").start()
        assert record.is_our_node()
    finally:
        stopped = _cli("stop", *where)
    assert stopped.returncode == 0, stopped.stderr
    assert "stopped 1 node" in stopped.stdout
    assert not _alive(record.pid)
    assert not (cache_dir() / "run" / "127.0.3.30-9042").exists()

    status = _cli("status", *where)
    assert status.returncode == 3
    assert "not running" in status.stdout


def test_cli_reports_errors_with_exit_code() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "async_cassandra.testing", "start", "--address", "10.1.2.3"],
        capture_output=True,
        text=True,
        env=_python_env(),
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert "not a loopback address" in done.stderr
