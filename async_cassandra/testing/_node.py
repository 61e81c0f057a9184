"""Start and stop real Apache Cassandra nodes on loopback addresses, and fail them.

Nodes run the ``cassandra-all`` jars from Maven Central (see ``_maven``) on the machine's
Java (``_java``), with a generated ``cassandra.yaml`` (``_config``) and data in a
temporary directory. ``LocalCassandra`` is one node or a cluster of several; besides
starting and stopping all of them it fails one at a time, the way tests of a client's
failure handling need: kill it, pause it, stop it, start it again on the same data.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import secrets
import shutil
import signal
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from ._config import cassandra_yaml, jvm_command, make_keystore, write_node_files
from ._formation import (
    READY_LINE,
    SUPERUSER_LINE,
    LogFollower,
    PeerProbe,
    apply_gossip,
    log_size,
)
from ._java import find_java
from ._maven import LauncherError, cassandra_lib
from ._net import env_port, free_port, loopback, port_free, tcp_ready
from ._pidfile import (
    NODE_MARKER,
    PidRecord,
    clean_dead_pid_files,
    clear_stale,
    pid_file,
    rm_node_dir,
)
from ._process import (
    all_threads_running,
    all_threads_stopped,
    kill_group,
    pdeathsig_preexec,
    proc_alive,
    start_time,
    tail,
    terminate,
)

__all__ = ["LauncherError", "LocalCassandra", "detached_cluster", "shared_cluster"]


@dataclass
class _Node:
    index: int
    address: str
    jmx_port: int
    token: int
    dir: Path
    proc: subprocess.Popen[bytes] | None = None
    saw_ready_line: bool = False
    ready: bool = False
    # Where the part of system.log written by the current JVM begins: the log of a node
    # started again goes on in the same file.
    log_start: int = 0
    # Stopped on purpose (stop_node / kill) and not started again yet.
    down: bool = False

    @property
    def log(self) -> Path:
        return self.dir / "logs" / "system.log"

    @property
    def stdout(self) -> Path:
        return self.dir / "stdout.log"

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tail(self, lines: int) -> str:
        parts = [f"--- {self.log} ---\n{tail(self.log, lines) or '(empty)'}"]
        out = tail(self.stdout, 10)
        if out:
            parts.append(f"--- {self.stdout} ---\n{out}")
        return "\n".join(parts)


# Popen objects of nodes meant to outlive us: kept referenced so that dropping the
# LocalCassandra does not trigger Popen's "still running" ResourceWarning.
_detached: list[subprocess.Popen[bytes]] = []


@dataclass
class _Options:
    nodes: int
    address: str
    native_port: int
    storage_port: int
    jmx_port: int | None
    cluster_name: str
    auth: bool
    tls: bool
    java: str | os.PathLike[str] | None
    heap: str
    startup_timeout: float
    base_dir: Path | None
    extra_yaml: dict[str, object] = field(default_factory=dict)
    keep_data: bool = False
    die_with_parent: bool = True


class LocalCassandra:
    """One or more local Apache Cassandra 5.0 nodes on loopback addresses.

    Use it as a context manager (``with LocalCassandra() as node: ...``) or call
    :meth:`start` and :meth:`stop`. Node *i* of ``nodes`` listens on ``address + i``
    with the same native and storage ports; every node of one instance is a seed of the
    others and nothing else's, under a cluster name of its own.

    Nodes fail one at a time on request, for tests of what a client does then:
    :meth:`kill` (SIGKILL, a crash), :meth:`pause` / :meth:`resume` (SIGSTOP / SIGCONT,
    a node that hangs), :meth:`stop_node` (a clean shutdown) and :meth:`start_node` (the
    node again, on the data, token and configuration it had). :meth:`stop` stops every
    node, whatever state each is in, and deletes the data.

    Environment: ``ASYNC_CASSANDRA_ADDRESS`` / ``ASYNC_CASSANDRA_PORT`` change the
    defaults of ``address`` / ``native_port``; ``ASYNC_CASSANDRA_JAVA`` picks Java;
    ``ASYNC_CASSANDRA_MVN`` picks Maven; ``ASYNC_CASSANDRA_CACHE`` moves the jar cache.
    """

    def __init__(
        self,
        nodes: int = 1,
        *,
        address: str | None = None,
        native_port: int | None = None,
        storage_port: int = 7000,
        jmx_port: int | None = None,
        cluster_name: str | None = None,
        auth: bool = False,
        tls: bool = False,
        java: str | os.PathLike[str] | None = None,
        heap: str = "1G",
        startup_timeout: float = 180.0,
        base_dir: str | os.PathLike[str] | None = None,
        extra_yaml: Mapping[str, object] | None = None,
        keep_data: bool = False,
        die_with_parent: bool = True,
    ) -> None:
        """See the class docstring. ``jmx_port`` is that of the first node (the others
        count up from it); by default every node gets a free port. ``extra_yaml`` is
        merged over the generated cassandra.yaml. ``die_with_parent=False`` makes the
        nodes outlive this process (no death signal, no stop at exit): the CLI's mode.
        """
        if nodes < 1:
            raise ValueError("nodes must be at least 1")
        address = address or os.environ.get("ASYNC_CASSANDRA_ADDRESS") or "127.0.0.1"
        if native_port is None:
            native_port = env_port("ASYNC_CASSANDRA_PORT", 9042)
        first = loopback(address)
        last = first + (nodes - 1)
        if not last.is_loopback:
            raise LauncherError(f"{nodes} nodes from {address} leave 127.0.0.0/8")
        self._opts = _Options(
            nodes=nodes,
            address=address,
            native_port=native_port,
            storage_port=storage_port,
            jmx_port=jmx_port,
            cluster_name=cluster_name or f"acs-{address}-{secrets.token_hex(3)}",
            auth=auth,
            tls=tls,
            java=java,
            heap=heap,
            startup_timeout=startup_timeout,
            base_dir=Path(base_dir) if base_dir is not None else None,
            extra_yaml=dict(extra_yaml or {}),
            keep_data=keep_data,
            die_with_parent=die_with_parent,
        )
        self._addresses = [str(first + i) for i in range(nodes)]
        self._nodes: list[_Node] = []
        self._base: Path | None = None
        self._temp_base = False
        self._cert: Path | None = None
        self._started = False
        self._stopped = False
        self._lock = threading.Lock()
        # False only for the CLI's nodes: no owning process, so never "stale".
        self._record_owner = True
        # False only for nodes no test kills (see shared_cluster).
        self._crash_safe = True
        self.start_seconds: float | None = None
        """Seconds from launching the JVMs to the cluster being formed (see :meth:`start`)."""

    # ---------------------------------------------------------------- properties

    @property
    def addresses(self) -> list[str]:
        """The nodes' addresses, in node order."""
        return list(self._addresses)

    @property
    def contact_points(self) -> list[str]:
        """Contact points for ``cassandra.cluster.Cluster`` (all node addresses)."""
        return list(self._addresses)

    @property
    def native_port(self) -> int:
        """The CQL port (the same on every node's address)."""
        return self._opts.native_port

    @property
    def cluster_name(self) -> str:
        """The cluster name written into cassandra.yaml."""
        return self._opts.cluster_name

    @property
    def username(self) -> str | None:
        """``"cassandra"`` when started with ``auth=True``, else None."""
        return "cassandra" if self._opts.auth else None

    @property
    def password(self) -> str | None:
        """``"cassandra"`` when started with ``auth=True``, else None."""
        return "cassandra" if self._opts.auth else None

    @property
    def cert_path(self) -> Path | None:
        """The PEM certificate of the nodes when started with ``tls=True``, else None."""
        return self._cert

    @property
    def base_dir(self) -> Path | None:
        """The directory holding one ``node<i>`` directory per node (once started)."""
        return self._base

    @property
    def node_dirs(self) -> list[Path]:
        """Each node's directory (config, data, logs)."""
        return [node.dir for node in self._nodes]

    @property
    def pids(self) -> list[int]:
        """The JVM process ids, in node order: of each node's latest JVM, so a node that
        :meth:`start_node` started again has a new one, and one stopped by
        :meth:`stop_node` or :meth:`kill` keeps that of the JVM that ended (see
        :meth:`is_running`)."""
        return [node.proc.pid for node in self._nodes if node.proc is not None]

    def ssl_context(self) -> ssl.SSLContext:
        """A client ``SSLContext`` that trusts the generated certificate (``tls=True``)."""
        if self._cert is None:
            raise LauncherError("ssl_context() needs a node started with tls=True")
        return ssl.create_default_context(cafile=str(self._cert))

    def log_tail(self, lines: int = 40, index: int | None = None) -> str:
        """The last ``lines`` lines of the system.log of node ``index`` (all if None)."""
        nodes = self._nodes if index is None else [self._nodes[index]]
        return "\n".join(node.tail(lines) for node in nodes)

    # ------------------------------------------------------------ one node's faults

    def is_running(self, index: int = 0) -> bool:
        """True while the JVM of node ``index`` runs (a paused node runs); False before
        :meth:`start`, after :meth:`stop`, after :meth:`stop_node` or :meth:`kill` until
        :meth:`start_node`, and after the node exited by itself.

        Raises :class:`LauncherError` if there is no node ``index``.
        """
        self._check_index(index)
        return index < len(self._nodes) and self._nodes[index].running()

    def kill(self, index: int = 0, timeout: float = 30.0) -> None:
        """Kill node ``index`` with SIGKILL, as a crash would: no shutdown, no flush, no
        word to the other nodes, which find out by gossip (in 10-20 s) that it is gone.

        Returns once the process has exited and is reaped, so its ports are free. Its
        data directory stays: :meth:`start_node` starts it again on it, replaying the
        commit log, which holds every write the node acknowledged (its commit log is
        synced before each acknowledgement; Cassandra's default, a sync every 10 s, would
        lose the last seconds). The other nodes and the clients' drivers are not waited
        for.

        Raises :class:`LauncherError` if the node is not running (with the log tail if
        it exited by itself), or is still there ``timeout`` s after the signal.
        """
        node, proc = self._running_node(index)
        if not kill_group(proc, timeout):
            raise LauncherError(
                f"node {index} ({node.address}, pid {proc.pid}) was still there {timeout} s "
                f"after SIGKILL; last lines of its log:\n{node.tail(40)}"
            )
        self._mark_down(node)

    def stop_node(self, index: int = 0, grace: float = 20.0) -> None:
        """Stop node ``index`` cleanly: SIGTERM (Cassandra's shutdown hook flushes its
        data and tells the other nodes it is going), SIGKILL after ``grace`` s.

        Returns once the process has exited and is reaped. Unlike :meth:`stop` it keeps
        the node's directory (data, commit log, configuration) for :meth:`start_node`.
        The other nodes and the clients' drivers are not waited for.

        Raises :class:`LauncherError` if the node is not running (with the log tail if
        it exited by itself).
        """
        node, proc = self._running_node(index)
        terminate([proc], grace)
        self._mark_down(node)

    def start_node(self, index: int = 0, timeout: float | None = None) -> None:
        """Start node ``index`` again after :meth:`stop_node` or :meth:`kill` (or after
        it exited by itself), on its own directory: the same configuration, data and
        commit log (replayed at start), so it keeps its rows, host id and token.

        Waits, as :meth:`start` does, until the node accepts CQL connections and, with
        several nodes, until each running node lists every other in its
        ``system.peers_v2`` and holds it up in gossip; the other nodes must have seen
        this one come up after this start, not before it went down. ``timeout``
        defaults to the ``startup_timeout`` given to the constructor. Its pid file
        names the new JVM.

        Raises :class:`LauncherError` (with the log tail) if the node is already
        running, its ports are taken, it exits during start-up, or it is not ready or
        not seen by the others within ``timeout`` s; the new JVM is stopped again then
        (and on KeyboardInterrupt), leaving the node down.
        """
        opts = self._opts
        self._check_index(index)
        with self._lock:
            if not self._started or self._stopped or index >= len(self._nodes):
                raise LauncherError("start_node() needs a started LocalCassandra; call start()")
        node = self._nodes[index]
        if node.running():
            assert node.proc is not None
            raise LauncherError(
                f"node {index} ({node.address}) is already running (pid {node.proc.pid})"
            )
        timeout = opts.startup_timeout if timeout is None else timeout
        java = find_java(opts.java)
        lib, jamm = self._jars()
        for address, port, what in (
            (node.address, opts.native_port, "native"),
            (node.address, opts.storage_port, "storage"),
            ("127.0.0.1", node.jmx_port, "JMX"),
        ):
            if not port_free(address, port):
                raise LauncherError(
                    f"cannot start node {index} again: port {port} on {address} (its "
                    f"{what} port) is in use by another process"
                )
        # What each other running node's gossip has said so far; this node must be seen
        # come up anew, so it counts as down in every view until then.
        logs: dict[int, LogFollower] = {}
        up: dict[int, set[str]] = {}
        for other in self._nodes:
            if other is node or not other.running():
                continue
            logs[other.index] = LogFollower(other.log, other.log_start)
            up[other.index] = set()
            apply_gossip(logs[other.index].read_new(), up[other.index])
            up[other.index].discard(node.address)
        began = time.monotonic()
        with self._lock:
            if self._stopped:
                raise LauncherError("this LocalCassandra was stopped")
            self._launch(java, lib, jamm, node)
        logs[node.index] = LogFollower(node.log, node.log_start)
        up[node.index] = set()
        try:
            self._wait_ready(began, [node], timeout)
            if len(logs) > 1:
                self._wait_until_formed(began, logs, up, timeout, restarted=node)
        except BaseException:
            assert node.proc is not None
            terminate([node.proc], 20.0)
            self._mark_down(node)
            raise

    def pause(self, index: int = 0, timeout: float = 10.0) -> None:
        """Freeze node ``index`` (SIGSTOP): it keeps its sockets but answers nothing.

        Returns once every thread of the JVM has stopped. Sending SIGSTOP only starts
        the stop: the kernel stops one thread after another, and until then the node's
        running threads go on answering requests (for tens of ms on a busy machine).
        Undo it with :meth:`resume`; :meth:`stop`, :meth:`stop_node` and :meth:`kill`
        also work on a paused node.

        Raises :class:`LauncherError` (with the log tail) if the node is not running,
        dies, or has a thread still running after ``timeout`` s.
        """
        self._signal_and_wait(
            index, signal.SIGSTOP, all_threads_stopped, "paused", "did not stop", timeout
        )

    def resume(self, index: int = 0, timeout: float = 10.0) -> None:
        """Undo :meth:`pause` (SIGCONT). Returns once no thread of the JVM is stopped any
        more (at once for a node that was not paused).

        Raises :class:`LauncherError` (with the log tail) if the node is not running,
        dies, or has a thread still stopped after ``timeout`` s.
        """
        self._signal_and_wait(
            index,
            signal.SIGCONT,
            all_threads_running,
            "resumed",
            "still had a stopped thread",
            timeout,
        )

    def _signal_and_wait(
        self,
        index: int,
        signum: signal.Signals,
        done: Callable[[int], bool],
        doing: str,
        failed: str,
        timeout: float,
    ) -> None:
        """Send ``signum`` to node ``index`` and poll until ``done(pid)``: the kernel
        stops or wakes a process's threads one after another, not at once."""
        node, proc = self._running_node(index)
        pid = proc.pid
        os.kill(pid, signum)
        deadline = time.monotonic() + timeout
        while not done(pid):
            if not proc_alive(pid):
                raise LauncherError(
                    f"node {index} (pid {pid}) died while being {doing}; last lines of its "
                    f"log:\n{node.tail(40)}"
                )
            if time.monotonic() > deadline:
                raise LauncherError(
                    f"node {index} (pid {pid}) {failed} {timeout} s after "
                    f"{signum.name}; last lines of its log:\n{node.tail(40)}"
                )
            time.sleep(0.001)

    def _check_index(self, index: int) -> None:
        if not 0 <= index < self._opts.nodes:
            raise LauncherError(
                f"there is no node {index}: this LocalCassandra has nodes 0 to "
                f"{self._opts.nodes - 1}"
            )

    def _running_node(self, index: int) -> tuple[_Node, subprocess.Popen[bytes]]:
        """Node ``index`` and its JVM, which must be running."""
        self._check_index(index)
        if self._stopped:
            raise LauncherError(f"node {index} is not running: this LocalCassandra is stopped")
        node = self._nodes[index] if index < len(self._nodes) else None
        if node is None or node.proc is None:
            raise LauncherError(f"node {index} is not running (start() it first)")
        code = node.proc.poll()
        if code is not None:
            if node.down:
                raise LauncherError(
                    f"node {index} ({node.address}) is stopped (stop_node or kill); "
                    f"start_node({index}) starts it again"
                )
            raise LauncherError(
                f"node {index} ({node.address}) is not running: it exited with code {code}; "
                f"last lines of its log:\n{node.tail(40)}"
            )
        return node, node.proc

    @staticmethod
    def _mark_down(node: _Node) -> None:
        node.down = True
        node.ready = node.saw_ready_line = False
        if node.proc in _detached:
            _detached.remove(node.proc)

    # ----------------------------------------------------------------- lifecycle

    def __enter__(self) -> LocalCassandra:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self._started and not self._stopped else "stopped"
        points = ",".join(self._addresses)
        return f"<LocalCassandra {points}:{self._opts.native_port} {state}>"

    def start(self) -> LocalCassandra:
        """Start every node and wait until all accept CQL connections and, with several
        nodes, until they form one cluster as any client sees it: whichever node a driver
        connects to lists every other node, usable, in its ``system.peers_v2``, and holds
        it up.

        Raises :class:`LauncherError` (with the log tail) if a node exits or is not ready
        within ``startup_timeout``; whatever was started is stopped again then, and also
        on KeyboardInterrupt.
        """
        with self._lock:
            if self._started:
                raise LauncherError("this LocalCassandra was already started")
            self._started = True
        opts = self._opts
        if opts.die_with_parent:
            # Registered before anything is launched, so even an exit in the middle of
            # start() stops what was started.
            atexit.register(self.stop)
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        opts = self._opts
        java = find_java(opts.java)
        self._prepare_ports()
        lib, jamm = self._jars()
        if opts.base_dir is None:
            self._base = Path(tempfile.mkdtemp(prefix="async-cassandra-"))
            self._temp_base = True
        else:
            self._base = opts.base_dir
            self._base.mkdir(parents=True, exist_ok=True)
        if opts.tls:
            self._cert = make_keystore(java, self._base / "tls", self._addresses)
        jmx = opts.jmx_port
        step = 2**64 // opts.nodes
        for i, address in enumerate(self._addresses):
            node_dir = self._base / f"node{i + 1}"
            if node_dir.exists():
                if not (node_dir / NODE_MARKER).is_file():
                    raise LauncherError(f"{node_dir} exists and is not a node directory of ours")
                shutil.rmtree(node_dir)
            node_dir.mkdir(parents=True)
            (node_dir / NODE_MARKER).write_text("created by async_cassandra.testing\n")
            self._nodes.append(
                _Node(
                    index=i,
                    address=address,
                    jmx_port=jmx + i if jmx is not None else free_port(),
                    # Evenly spaced over Murmur3's range so the ring is balanced from the
                    # start: no bootstrap, no token allocation.
                    token=-(2**63) + i * step,
                    dir=node_dir,
                )
            )
        for node in self._nodes:
            self._write_config(node)
        began = time.monotonic()
        # All JVMs at once: they start in parallel and gossip finds them all as seeds.
        for node in self._nodes:
            self._launch(java, lib, jamm, node)
        self._wait_ready(began)
        if len(self._nodes) > 1:
            logs = {node.index: LogFollower(node.log, node.log_start) for node in self._nodes}
            up: dict[int, set[str]] = {node.index: set() for node in self._nodes}
            self._wait_until_formed(began, logs, up)
        self.start_seconds = time.monotonic() - began

    def stop(self, grace: float = 20.0) -> None:
        """Stop every node (SIGTERM, SIGKILL after ``grace`` s), whether it runs, is
        paused, or was stopped or killed on its own before, and delete the node
        directories (unless ``keep_data``) and pid files. Safe to call more than once."""
        with self._lock:
            if self._stopped or not self._started:
                return
            self._stopped = True
            # Taken under the lock: start_node() launches under it too, so no JVM it
            # starts can be missed here.
            procs = [node.proc for node in self._nodes if node.proc is not None]
        with contextlib.suppress(Exception):
            atexit.unregister(self.stop)
        terminate(procs, grace)
        for proc in procs:
            if proc in _detached:
                _detached.remove(proc)
        for node in self._nodes:
            path = pid_file(node.address, self._opts.native_port)
            record = PidRecord.read(path)
            if record is not None and node.proc is not None and record.pid == node.proc.pid:
                path.unlink(missing_ok=True)
            if not self._opts.keep_data:
                rm_node_dir(node.dir)
        if self._base is not None and not self._opts.keep_data:
            shutil.rmtree(self._base / "tls", ignore_errors=True)
            if self._temp_base:
                with contextlib.suppress(OSError):
                    self._base.rmdir()

    # ------------------------------------------------------------------- helpers

    def _jars(self) -> tuple[Path, Path]:
        """The Cassandra lib directory and its jamm agent jar."""
        lib = cassandra_lib()
        jamm = sorted(lib.glob("jamm-*.jar"))
        if not jamm:
            raise LauncherError(f"no jamm-*.jar in {lib}; delete that directory to re-download")
        return lib, jamm[-1]

    def _prepare_ports(self) -> None:
        opts = self._opts
        clean_dead_pid_files()
        for address in self._addresses:
            # A node of ours left running by a killed run holds exactly these ports.
            clear_stale(address, opts.native_port)
        for address in self._addresses:
            for port, what, hint in (
                (opts.native_port, "native", "native_port=... / set ASYNC_CASSANDRA_PORT"),
                (opts.storage_port, "storage", "storage_port=..."),
            ):
                if not port_free(address, port):
                    raise LauncherError(
                        f"port {port} on {address} (Cassandra's {what} port) is already "
                        f"in use by another process; stop it or pass {hint}, or use "
                        "another loopback address (address=... / ASYNC_CASSANDRA_ADDRESS)"
                    )
        if opts.jmx_port is not None:
            for i in range(opts.nodes):
                if not port_free("127.0.0.1", opts.jmx_port + i):
                    raise LauncherError(
                        f"JMX port {opts.jmx_port + i} on 127.0.0.1 is already in use; "
                        "pass another jmx_port=... or leave it None to pick free ports"
                    )

    def _write_config(self, node: _Node) -> None:
        opts = self._opts
        config = cassandra_yaml(
            cluster_name=opts.cluster_name,
            address=node.address,
            token=node.token,
            seeds=self._addresses,
            storage_port=opts.storage_port,
            native_port=opts.native_port,
            data=node.dir / "data",
            auth=opts.auth,
            tls_dir=self._cert.parent if self._cert is not None else None,
            crash_safe=self._crash_safe,
            extra=opts.extra_yaml,
        )
        write_node_files(node.dir, config)

    def _launch(self, java: str, lib: Path, jamm: Path, node: _Node) -> None:
        opts = self._opts
        preexec = pdeathsig_preexec() if opts.die_with_parent else None
        command = jvm_command(
            java,
            lib,
            jamm,
            node.dir,
            jmx_port=node.jmx_port,
            heap=opts.heap,
            crash_safe=self._crash_safe,
        )
        node.log_start = log_size(node.log)
        node.saw_ready_line = node.ready = node.down = False
        # Appended to: a node started again keeps the output of its earlier JVMs.
        with open(node.stdout, "ab") as out:
            try:
                node.proc = subprocess.Popen(
                    command,
                    cwd=node.dir,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    # Its own process group: Ctrl-C in a terminal goes to the test run,
                    # not straight to the JVMs, which we stop in order in stop().
                    start_new_session=True,
                    preexec_fn=preexec,
                )
            except OSError as exc:
                raise LauncherError(f"cannot start {java!r}: {exc}") from exc
        if not opts.die_with_parent:
            _detached.append(node.proc)
        owner = os.getpid() if self._record_owner else None
        PidRecord(
            pid=node.proc.pid,
            node_dir=node.dir,
            temp_base=self._base if self._temp_base else None,
            owner=owner,
            owner_start=start_time(owner) if owner is not None else None,
        ).write(pid_file(node.address, opts.native_port))

    def _wait_ready(
        self, began: float, nodes: Sequence[_Node] | None = None, timeout: float | None = None
    ) -> None:
        """Wait until ``nodes`` (all if None) accept CQL connections (and, with auth, the
        superuser role exists, which only the first start of a cluster creates)."""
        opts = self._opts
        starting = list(self._nodes if nodes is None else nodes)
        timeout = opts.startup_timeout if timeout is None else timeout
        deadline = began + timeout
        logs = {node.index: LogFollower(node.log, node.log_start) for node in starting}
        superuser = not opts.auth or nodes is not None
        while True:
            self._raise_if_exited(starting)
            for node in starting:
                if node.ready and superuser:
                    continue
                text = logs[node.index].read_new()
                if not superuser and SUPERUSER_LINE in text:
                    # Only one node of a cluster creates the role, so any node will do.
                    superuser = True
                if READY_LINE.format(address=node.address, port=opts.native_port) in text:
                    node.saw_ready_line = True
                if (
                    node.saw_ready_line
                    and not node.ready
                    and tcp_ready(node.address, opts.native_port)
                ):
                    node.ready = True
            if superuser and all(node.ready for node in starting):
                return
            if time.monotonic() > deadline:
                waiting = [node.address for node in starting if not node.ready]
                detail = "the default superuser role" if not waiting else ", ".join(waiting)
                raise LauncherError(
                    f"Cassandra was not ready within {timeout:.0f} s "
                    f"(waiting for {detail}); pass a larger startup_timeout if the machine "
                    f"is slow. Last lines of the logs:\n{self._tails(starting)}"
                )
            time.sleep(0.1)

    def _tails(self, nodes: Sequence[_Node], lines: int = 40) -> str:
        return "\n".join(node.tail(lines) for node in nodes)

    def _raise_if_exited(self, nodes: Sequence[_Node]) -> None:
        for node in nodes:
            assert node.proc is not None
            code = node.proc.poll()
            if code is not None:
                raise LauncherError(
                    f"Cassandra node on {node.address} exited with code {code} during "
                    f"start-up; last lines of its log:\n{node.tail(40)}"
                )

    def _wait_until_formed(
        self,
        began: float,
        logs: Mapping[int, LogFollower],
        up: Mapping[int, set[str]],
        timeout: float | None = None,
        restarted: _Node | None = None,
    ) -> None:
        """Wait until a client sees every running node up, whichever node it connects to.

        The nodes start together, so each one's first gossip round finds no peer ready
        ("Unable to gossip with any peers"): each starts as a ring of its own, opens its
        CQL port, and learns of the others by gossip a second or more later, each at its
        own pace. A driver reads the topology from the one node its control connection is
        on, so one client seeing all nodes says nothing of the next client, connected to
        another node. Every node is therefore asked directly, over a connection of its
        own, until each lists every other in ``system.peers_v2`` with the columns the
        driver needs, and its gossip holds each of them up.

        ``logs`` follow each running node's system.log and ``up`` holds what its gossip
        has said so far (the addresses it holds up), both by node index.
        """
        opts = self._opts
        timeout = opts.startup_timeout if timeout is None else timeout
        deadline = began + timeout
        running = [node for node in self._nodes if node.index in logs]
        addresses = [node.address for node in running]
        probe = PeerProbe(
            opts.native_port,
            self.username,
            self.password,
            self.ssl_context() if opts.tls else None,
        )
        try:
            while True:
                self._raise_if_exited(running)
                gaps: list[str] = []
                for node in running:
                    apply_gossip(logs[node.index].read_new(), up[node.index])
                    gaps += probe.gaps(node.address, addresses, up[node.index])
                if not gaps:
                    return
                if time.monotonic() > deadline:
                    what = (
                        f"the {len(running)} nodes started but did not form one cluster"
                        if restarted is None
                        else f"node {restarted.index} ({restarted.address}) started again "
                        f"but the {len(running)} running nodes did not see each other up"
                    )
                    raise LauncherError(
                        f"{what} within {timeout:.0f} s: {'; '.join(gaps)}. Last lines of "
                        f"the logs:\n{self._tails(running)}"
                    )
                time.sleep(0.2)
        finally:
            probe.close()


def detached_cluster(nodes: int = 1, **kwargs: Any) -> LocalCassandra:
    """A :class:`LocalCassandra` for the CLI: its nodes outlive this process (no death
    signal, no stop at exit) and their pid files name no owner, so no other launcher
    takes them for the leftovers of a killed run."""
    cluster = LocalCassandra(nodes, die_with_parent=False, **kwargs)
    cluster._record_owner = False
    return cluster


def shared_cluster(nodes: int = 1, **kwargs: Any) -> LocalCassandra:
    """A :class:`LocalCassandra` for nodes that many tests share and none kills (the
    pytest plugin's). They run as every node did before nodes could be killed and
    started again: system tables not flushed after each schema change
    (``cassandra.unsafesystem``), which makes CREATE and DROP two to three times faster,
    and the commit log synced every 10 s, not before each write is acknowledged. A node
    of theirs that is killed comes back without the keyspaces and tables created since
    it started (and their data), and without its last seconds of writes (see
    ``_config.cassandra_yaml`` and ``_config.jvm_command``)."""
    cluster = LocalCassandra(nodes, **kwargs)
    cluster._crash_safe = False
    return cluster
