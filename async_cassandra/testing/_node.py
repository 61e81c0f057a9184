"""Start and stop real Apache Cassandra nodes on loopback addresses.

Nodes run the ``cassandra-all`` jars from Maven Central (see ``_maven``) on the machine's
Java, with a generated ``cassandra.yaml`` and data in a temporary directory. The flags and
settings below are the ones measured to start Cassandra 5.0.8 on Java 17 quickly and
self-contained (no ``bin/``, no ``conf/``: Maven Central has only the jars).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from ._maven import LauncherError, cache_dir, cassandra_lib

if TYPE_CHECKING:
    from cassandra.cluster import Cluster, Session

__all__ = ["LauncherError", "LocalCassandra"]

_MAIN_CLASS = "org.apache.cassandra.service.CassandraDaemon"
_READY_LINE = "Starting listening for CQL clients on /{address}:{port}"
_SUPERUSER_LINE = "Created default superuser role 'cassandra'"
# A node's view of another, as a client reads it. The driver takes the hosts it knows from
# the system.peers_v2 of the one node its control connection is on, and skips a row that
# lacks any of these columns (ControlConnection._is_valid_peer in cassandra/cluster.py).
_PEERS_QUERY = (
    "SELECT peer, native_address, host_id, data_center, rack, tokens FROM system.peers_v2"
)
_PEER_COLUMNS = ("native_address", "host_id", "data_center", "rack", "tokens")
# Gossip's verdict on a peer, which CQL does not show: Gossiper.realMarkAlive / markDead
# log it. A coordinator that holds a peer down answers Unavailable at QUORUM / ALL.
_UP_DOWN_LINE = re.compile(r"InetAddress \S*/([0-9.]+):\d+ is now (UP|DOWN)")
# Every node directory we create holds this file; we only ever delete directories that
# have it, so a corrupted or hand-edited pid file can't make us remove someone's data.
_NODE_MARKER = "async-cassandra-node"
_TLS_PASSWORD = "async-cassandra"

# Java 17 closes the JDK internals Cassandra reaches into; these are the exports and
# opens its own launch scripts pass (jvm17-server.options).
_EXPORTS = (
    "java.base/jdk.internal.misc",
    "java.management.rmi/com.sun.jmx.remote.internal.rmi",
    "java.management/com.sun.jmx.remote.security",
    "java.rmi/sun.rmi.registry",
    "java.rmi/sun.rmi.server",
    "java.sql/java.sql",
    "java.base/java.lang.ref",
    "jdk.unsupported/sun.misc",
)
_OPENS = (
    "java.base/java.lang.module",
    "java.base/jdk.internal.loader",
    "java.base/jdk.internal.ref",
    "java.base/jdk.internal.reflect",
    "java.base/jdk.internal.math",
    "java.base/jdk.internal.module",
    "java.base/jdk.internal.util.jar",
    "java.base/sun.nio.ch",
    "java.base/java.io",
    "java.base/java.lang.reflect",
    "java.base/java.lang",
    "java.base/java.util",
    "java.base/java.nio",
    "jdk.management/com.sun.management.internal",
)
_SUPPORTED_JAVA = (11, 17)

_LOGBACK = """<configuration scan="false">
  <appender name="FILE" class="ch.qos.logback.core.FileAppender">
    <file>${cassandra.logdir}/system.log</file>
    <encoder>
      <pattern>%-5level [%thread] %date{ISO8601} %F:%L - %msg%n</pattern>
    </encoder>
  </appender>
  <root level="INFO">
    <appender-ref ref="FILE"/>
  </root>
</configuration>
"""


# --------------------------------------------------------------------------- helpers


def find_java(java: str | os.PathLike[str] | None = None) -> str:
    """Resolve and check the ``java`` executable; raise :class:`LauncherError` if it is
    missing or not a supported version (11 or 17)."""
    if java is None:
        java = os.environ.get("ASYNC_CASSANDRA_JAVA")
    if java is None:
        home = os.environ.get("JAVA_HOME")
        java = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    if java is None:
        raise LauncherError(
            "no `java` on PATH: Cassandra 5.0 needs Java 17 (or 11). Install it "
            "(Debian/Ubuntu: `apt-get install openjdk-17-jre-headless`), or set "
            "ASYNC_CASSANDRA_JAVA / JAVA_HOME."
        )
    java = str(java)
    return _check_java(java)


_java_checked: dict[str, str] = {}


def _check_java(java: str) -> str:
    if java in _java_checked:
        return _java_checked[java]
    hint = "Cassandra 5.0 needs Java 17 (or 11); set ASYNC_CASSANDRA_JAVA or JAVA_HOME"
    try:
        done = subprocess.run(
            [java, "-version"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise LauncherError(f"cannot run Java at {java!r} ({exc}); {hint}") from exc
    # `java -version` prints to stderr: `openjdk version "17.0.15" ...` or `"1.8.0_392"`.
    match = re.search(r'version "(\d+)(?:\.(\d+))?', done.stderr + done.stdout)
    if done.returncode != 0 or match is None:
        raise LauncherError(
            f"{java!r} -version failed (exit code {done.returncode}): "
            f"{done.stderr.strip()[-500:]}; {hint}"
        )
    major = int(match.group(1))
    if major == 1 and match.group(2):
        major = int(match.group(2))
    if major not in _SUPPORTED_JAVA:
        raise LauncherError(f"{java!r} is Java {major}; {hint}")
    _java_checked[java] = java
    return java


def _loopback(address: str) -> ipaddress.IPv4Address:
    try:
        ip = ipaddress.IPv4Address(address)
    except ValueError as exc:
        raise LauncherError(f"{address!r} is not an IPv4 address") from exc
    if not ip.is_loopback:
        # Never bind a test database to a real interface.
        raise LauncherError(f"{address} is not a loopback address (use 127.0.0.0/8)")
    return ip


def _free_port(address: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((address, 0))
        port: int = sock.getsockname()[1]
        return port


def _port_free(address: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # SO_REUSEADDR, as the JVM uses: a port left in TIME_WAIT by a node we just stopped
        # is free for the next one; only a socket that is really bound conflicts.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((address, port))
        except OSError:
            return False
        return True


def _tcp_ready(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=1.0):
            return True
    except OSError:
        return False


_STACK_FRAME = re.compile(r"^\s+(at |\.\.\. \d+ (more|common frames omitted))")


def _tail(path: Path, lines: int) -> str:
    """The last ``lines`` lines of a log, without Java stack frames: a start-up error is
    a few lines of message drowned in a hundred ``at ...`` lines."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 256 * 1024))
            data = handle.read().decode("utf-8", "replace")
    except OSError:
        return ""
    kept = [line for line in data.splitlines() if not _STACK_FRAME.match(line)]
    return "\n".join(kept[-lines:])


def _yaml(config: Mapping[str, object]) -> str:
    # JSON is a subset of YAML 1.2 flow style, and SnakeYAML (Cassandra's parser) reads
    # it, so one `json.dumps` per top-level key is a complete and correct emitter.
    return "".join(f"{key}: {json.dumps(value)}\n" for key, value in config.items())


def _pdeathsig_preexec() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child get SIGTERM when this process dies.

    PR_SET_PDEATHSIG fires when the *thread* that forked the child exits, not the
    process, so it is only used from the main thread (whose end is the process's end).
    """
    if not sys.platform.startswith("linux"):
        return None
    if threading.current_thread() is not threading.main_thread():
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()
    pr_set_pdeathsig = 1

    def preexec() -> None:
        prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)
        # The parent may have died between fork and prctl; then no signal would come.
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


def _proc_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie (a killed child we have not reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    # The state follows the parenthesised command name, which may itself hold spaces.
    state = stat.rsplit(")", 1)[-1].split()[0]
    return state not in ("Z", "X")


def _all_threads_stopped(pid: int) -> bool:
    """True once every thread of ``pid`` is stopped (state T): a SIGSTOP has taken hold.

    Without /proc (not Linux) there is nothing to look at: True.
    """
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return not Path("/proc/self").exists()
    for tid in tids:
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except OSError:
            continue  # the thread has just ended
        if stat.rsplit(")", 1)[-1].split()[0] not in ("T", "t"):
            return False
    return True


def _reap(pid: int) -> None:
    # If the stale node is our own child (a detached node started earlier in this
    # process), collect it so it does not linger as a zombie.
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _kill_pid(pid: int, grace: float, *, group: bool) -> None:
    """SIGTERM ``pid`` (or its process group), wait up to ``grace`` s, then SIGKILL."""

    def send(sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if group:
                os.killpg(pid, sig)
            else:
                os.kill(pid, sig)

    send(signal.SIGTERM)
    # A paused (SIGSTOPped) JVM would sit on the SIGTERM forever.
    send(signal.SIGCONT)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        _reap(pid)
        if not _proc_alive(pid):
            return
        time.sleep(0.05)
    send(signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        _reap(pid)
        if not _proc_alive(pid):
            return
        time.sleep(0.05)


def _rm_node_dir(path: Path) -> None:
    if (path / _NODE_MARKER).is_file():
        shutil.rmtree(path, ignore_errors=True)


# ------------------------------------------------------------------------- pid files


def run_dir() -> Path:
    """Where pid files (and the CLI's node directories) live: ``<cache>/run``."""
    return cache_dir() / "run"


def pid_file(address: str, native_port: int) -> Path:
    """The pid file of the node on ``address:native_port``."""
    return run_dir() / f"{address}-{native_port}.pid"


def _start_time(pid: int) -> int | None:
    """The kernel's start time of ``pid`` (clock ticks since boot), None if it is gone.

    A pid plus its start time names one process for good: a recycled pid has another
    start time.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])  # field 22 of stat(5), counted from after the command name


@dataclass(frozen=True)
class PidRecord:
    """What a pid file holds.

    ``pid`` and ``node_dir`` identify the JVM; ``temp_base`` is the temporary base
    directory to remove once empty (None when the caller owns the base directory);
    ``owner``/``owner_start`` identify the Python process that started the node, or are
    None for a node started by the CLI, which is meant to run on its own.
    """

    pid: int
    node_dir: Path
    temp_base: Path | None = None
    owner: int | None = None
    owner_start: int | None = None

    @classmethod
    def read(cls, path: Path) -> PidRecord | None:
        """Parse a pid file; None if it is missing or unreadable."""
        try:
            data = json.loads(path.read_text())
            temp = data.get("temp_base")
            owner = data.get("owner")
            owner_start = data.get("owner_start")
            return cls(
                pid=int(data["pid"]),
                node_dir=Path(data["node_dir"]),
                temp_base=Path(temp) if temp else None,
                owner=int(owner) if owner is not None else None,
                owner_start=int(owner_start) if owner_start is not None else None,
            )
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None

    def write(self, path: Path) -> None:
        """Write the pid file atomically (readers never see half of it)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {
            "pid": self.pid,
            "node_dir": str(self.node_dir),
            "temp_base": str(self.temp_base) if self.temp_base else None,
            "owner": self.owner,
            "owner_start": self.owner_start,
        }
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data) + "\n")
        os.replace(tmp, path)

    def is_our_node(self) -> bool:
        """True if the pid is alive and is a CassandraDaemon running from ``node_dir``
        (so a recycled pid can never make us kill an unrelated process)."""
        if not _proc_alive(self.pid):
            return False
        try:
            args = Path(f"/proc/{self.pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return False
        text = [arg.decode("utf-8", "replace") for arg in args]
        return _MAIN_CLASS in text and any(str(self.node_dir) in arg for arg in text)

    def owner_alive(self) -> bool:
        """True if the Python process that started the node still runs."""
        if self.owner is None:
            return False
        return _start_time(self.owner) == self.owner_start

    def remove_files(self) -> None:
        """Delete the node directory (and the emptied temporary base directory)."""
        _rm_node_dir(self.node_dir)
        if self.temp_base is not None:
            with contextlib.suppress(OSError):
                self.temp_base.rmdir()  # only succeeds once every node dir is gone


def stop_recorded_node(address: str, native_port: int, grace: float = 20.0) -> bool:
    """Stop the node recorded in the pid file for ``address:native_port`` (if that pid is
    still our node), delete its data and the pid file. Return True if one was stopped."""
    path = pid_file(address, native_port)
    record = PidRecord.read(path)
    if record is None:
        path.unlink(missing_ok=True)
        return False
    stopped = False
    if record.is_our_node():
        _kill_pid(record.pid, grace, group=True)
        stopped = True
    record.remove_files()
    path.unlink(missing_ok=True)
    return stopped


def _clean_dead_pid_files() -> None:
    """Pid files of nodes whose process is gone: delete their leftover node dirs."""
    folder = run_dir()
    if not folder.is_dir():
        return
    for path in folder.glob("*.pid"):
        record = PidRecord.read(path)
        if record is None or not record.is_our_node():
            if record is not None:
                record.remove_files()
            path.unlink(missing_ok=True)


def _clear_stale(address: str, native_port: int) -> None:
    """Stop our node left on ``address:native_port`` by a run that was killed.

    A node of a live process, or one started by the CLI, is not stale: we say so instead
    of killing somebody's demo or test run.
    """
    record = PidRecord.read(pid_file(address, native_port))
    if record is None or not record.is_our_node():
        return
    if record.owner is None:
        raise LauncherError(
            f"port {native_port} on {address} is in use by a Cassandra node started with "
            f"`python -m async_cassandra.testing start` (pid {record.pid}); stop it with "
            f"`python -m async_cassandra.testing stop --address {address} --port "
            f"{native_port}`, or use it by setting ASYNC_CASSANDRA_CONTACT_POINTS={address}"
        )
    if record.owner_alive():
        raise LauncherError(
            f"port {native_port} on {address} is in use by a Cassandra node (pid "
            f"{record.pid}) of another running process (pid {record.owner}); stop that, "
            "or pass address=... / set ASYNC_CASSANDRA_ADDRESS to use another loopback "
            "address"
        )
    stop_recorded_node(address, native_port)


# ----------------------------------------------------------------------------- nodes


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

    @property
    def log(self) -> Path:
        return self.dir / "logs" / "system.log"

    @property
    def stdout(self) -> Path:
        return self.dir / "stdout.log"

    def tail(self, lines: int) -> str:
        parts = [f"--- {self.log} ---\n{_tail(self.log, lines) or '(empty)'}"]
        out = _tail(self.stdout, 10)
        if out:
            parts.append(f"--- {self.stdout} ---\n{out}")
        return "\n".join(parts)


# Popen objects of nodes meant to outlive us: kept referenced so that dropping the
# LocalCassandra does not trigger Popen's "still running" ResourceWarning.
_detached: list[subprocess.Popen[bytes]] = []


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if not value:
        return default
    try:
        return int(value)
    except ValueError as exc:
        raise LauncherError(f"${name}={value!r} is not a port number") from exc


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
            native_port = _env_int("ASYNC_CASSANDRA_PORT", 9042)
        first = _loopback(address)
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
        """The JVM process ids, in node order."""
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

    def pause(self, index: int = 0, timeout: float = 10.0) -> None:
        """Freeze node ``index`` (SIGSTOP): it keeps its sockets but answers nothing.

        Returns once every thread of the JVM has stopped. ``kill`` only starts the
        stop: the kernel stops one thread after another, and until then the node's
        running threads go on answering requests (for tens of ms on a busy machine).
        """
        pid = self._proc(index).pid
        os.kill(pid, signal.SIGSTOP)
        deadline = time.monotonic() + timeout
        while not _all_threads_stopped(pid):
            if not _proc_alive(pid):
                raise LauncherError(f"node {index} (pid {pid}) died while being paused")
            if time.monotonic() > deadline:
                raise LauncherError(f"node {index} (pid {pid}) did not stop within {timeout} s")
            time.sleep(0.001)

    def resume(self, index: int = 0) -> None:
        """Undo :meth:`pause` (SIGCONT)."""
        os.kill(self._proc(index).pid, signal.SIGCONT)

    def _proc(self, index: int) -> subprocess.Popen[bytes]:
        proc = self._nodes[index].proc if index < len(self._nodes) else None
        if proc is None:
            raise LauncherError(f"node {index} is not running")
        return proc

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
        lib = cassandra_lib()
        jamm = sorted(lib.glob("jamm-*.jar"))
        if not jamm:
            raise LauncherError(f"no jamm-*.jar in {lib}; delete that directory to re-download")
        if opts.base_dir is None:
            self._base = Path(tempfile.mkdtemp(prefix="async-cassandra-"))
            self._temp_base = True
        else:
            self._base = opts.base_dir
            self._base.mkdir(parents=True, exist_ok=True)
        if opts.tls:
            self._cert = self._make_keystore(java, self._base / "tls")
        jmx = opts.jmx_port
        step = 2**64 // opts.nodes
        for i, address in enumerate(self._addresses):
            node_dir = self._base / f"node{i + 1}"
            if node_dir.exists():
                if not (node_dir / _NODE_MARKER).is_file():
                    raise LauncherError(f"{node_dir} exists and is not a node directory of ours")
                shutil.rmtree(node_dir)
            node_dir.mkdir(parents=True)
            (node_dir / _NODE_MARKER).write_text("created by async_cassandra.testing\n")
            self._nodes.append(
                _Node(
                    index=i,
                    address=address,
                    jmx_port=jmx + i if jmx is not None else _free_port(),
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
            self._launch(java, lib, jamm[-1], node)
        self._wait_ready(began)
        if len(self._nodes) > 1:
            self._wait_until_formed(began)
        self.start_seconds = time.monotonic() - began

    def stop(self, grace: float = 20.0) -> None:
        """Stop every node (SIGTERM, SIGKILL after ``grace`` s) and delete the node
        directories (unless ``keep_data``) and pid files. Safe to call more than once."""
        with self._lock:
            if self._stopped or not self._started:
                return
            self._stopped = True
        with contextlib.suppress(Exception):
            atexit.unregister(self.stop)
        procs = [node.proc for node in self._nodes if node.proc is not None]
        for proc in procs:
            if proc.poll() is None:
                for sig in (signal.SIGTERM, signal.SIGCONT):
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(proc.pid, sig)
        deadline = time.monotonic() + grace
        for proc in procs:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            if proc in _detached:
                _detached.remove(proc)
        for node in self._nodes:
            path = pid_file(node.address, self._opts.native_port)
            record = PidRecord.read(path)
            if record is not None and node.proc is not None and record.pid == node.proc.pid:
                path.unlink(missing_ok=True)
            if not self._opts.keep_data:
                _rm_node_dir(node.dir)
        if self._base is not None and not self._opts.keep_data:
            shutil.rmtree(self._base / "tls", ignore_errors=True)
            if self._temp_base:
                with contextlib.suppress(OSError):
                    self._base.rmdir()

    # ------------------------------------------------------------------- helpers

    def _prepare_ports(self) -> None:
        opts = self._opts
        _clean_dead_pid_files()
        for address in self._addresses:
            # A node of ours left running by a killed run holds exactly these ports.
            _clear_stale(address, opts.native_port)
        for address in self._addresses:
            for port, what, hint in (
                (opts.native_port, "native", "native_port=... / set ASYNC_CASSANDRA_PORT"),
                (opts.storage_port, "storage", "storage_port=..."),
            ):
                if not _port_free(address, port):
                    raise LauncherError(
                        f"port {port} on {address} (Cassandra's {what} port) is already "
                        f"in use by another process; stop it or pass {hint}, or use "
                        "another loopback address (address=... / ASYNC_CASSANDRA_ADDRESS)"
                    )
        if opts.jmx_port is not None:
            for i in range(opts.nodes):
                if not _port_free("127.0.0.1", opts.jmx_port + i):
                    raise LauncherError(
                        f"JMX port {opts.jmx_port + i} on 127.0.0.1 is already in use; "
                        "pass another jmx_port=... or leave it None to pick free ports"
                    )

    def _make_keystore(self, java: str, folder: Path) -> Path:
        keytool = Path(java).resolve().parent / "keytool"
        tool = str(keytool) if keytool.exists() else shutil.which("keytool")
        if tool is None:
            raise LauncherError("tls=True needs `keytool` (it comes with the JDK)")
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        keystore = folder / "keystore.p12"
        cert = folder / "cert.pem"
        sans = ",".join(f"IP:{address}" for address in self._addresses)
        common = ["-storetype", "PKCS12", "-storepass", _TLS_PASSWORD, "-alias", "node"]
        generate = ["-genkeypair", "-keyalg", "RSA", "-keysize", "2048", "-validity", "3650"]
        generate += ["-dname", "CN=async-cassandra test node", "-ext", f"SAN={sans}"]
        generate += ["-keypass", _TLS_PASSWORD, "-keystore", str(keystore)]
        export = ["-exportcert", "-rfc", "-keystore", str(keystore), "-file", str(cert)]
        for args in (generate, export):
            done = subprocess.run(
                [tool, *args, *common],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                errors="replace",
                check=False,
            )
            if done.returncode != 0:
                raise LauncherError(f"keytool failed: {done.stdout}{done.stderr}")
        return cert

    def _write_config(self, node: _Node) -> None:
        opts = self._opts
        data = node.dir / "data"
        seeds = ",".join(f"{address}:{opts.storage_port}" for address in self._addresses)
        config: dict[str, object] = {
            "cluster_name": opts.cluster_name,
            "num_tokens": 1,
            "initial_token": str(node.token),
            "partitioner": "org.apache.cassandra.dht.Murmur3Partitioner",
            "endpoint_snitch": "SimpleSnitch",
            "commitlog_sync": "periodic",
            "commitlog_sync_period": "10000ms",
            "seed_provider": [
                {
                    "class_name": "org.apache.cassandra.locator.SimpleSeedProvider",
                    # Only this instance's own addresses: a seed of another local cluster
                    # with the same name would pull this node into that ring.
                    "parameters": [{"seeds": seeds}],
                }
            ],
            "listen_address": node.address,
            "rpc_address": node.address,
            "storage_port": opts.storage_port,
            "native_transport_port": opts.native_port,
            "start_native_transport": True,
            "auto_bootstrap": False,
            "data_file_directories": [str(data / "data")],
            "commitlog_directory": str(data / "commitlog"),
            "hints_directory": str(data / "hints"),
            "saved_caches_directory": str(data / "saved_caches"),
            "cdc_raw_directory": str(data / "cdc_raw"),
            "authenticator": "PasswordAuthenticator" if opts.auth else "AllowAllAuthenticator",
            "authorizer": "CassandraAuthorizer" if opts.auth else "AllowAllAuthorizer",
            "role_manager": "CassandraRoleManager",
            "concurrent_reads": 8,
            "concurrent_writes": 8,
            "concurrent_counter_writes": 8,
            "concurrent_compactors": 1,
            "auto_snapshot": False,
            "storage_compatibility_mode": "NONE",
        }
        if self._cert is not None:
            config["client_encryption_options"] = {
                "enabled": True,
                "optional": False,
                "keystore": str(self._cert.parent / "keystore.p12"),
                "keystore_password": _TLS_PASSWORD,
                "store_type": "PKCS12",
            }
        config.update(opts.extra_yaml)
        conf = node.dir / "conf"
        conf.mkdir()
        (conf / "cassandra.yaml").write_text(_yaml(config))
        (conf / "logback.xml").write_text(_LOGBACK)
        for sub in ("logs", "tmp"):
            (node.dir / sub).mkdir()

    def _command(self, java: str, lib: Path, jamm: Path, node: _Node) -> list[str]:
        opts = self._opts
        conf = node.dir / "conf"
        props = {
            "cassandra.config": (conf / "cassandra.yaml").as_uri(),
            "cassandra.storagedir": str(node.dir / "data"),
            "cassandra.logdir": str(node.dir / "logs"),
            "logback.configurationFile": str(conf / "logback.xml"),
            "cassandra-foreground": "yes",
            "cassandra.jmx.local.port": str(node.jmx_port),
            # Fast single-machine start: no 30 s gossip settling, no superuser delay.
            "cassandra.skip_wait_for_gossip_to_settle": "0",
            "cassandra.superuser_setup_delay_ms": "0",
            "cassandra.unsafesystem": "true",
            # Nodes of one instance stop together, so waiting 2 s after telling the peers
            # we are going away only slows every stop() down.
            "cassandra.shutdown_announce_in_ms": "0",
            "jna.tmpdir": str(node.dir / "tmp"),
            "java.io.tmpdir": str(node.dir / "tmp"),
            "java.net.preferIPv4Stack": "true",
            "chronicle.analytics.disable": "true",
            "jdk.attach.allowAttachSelf": "true",
        }
        cmd = [
            java,
            f"-Xms{opts.heap}",
            f"-Xmx{opts.heap}",
            "-Xss256k",
            "-XX:+UseG1GC",
            f"-XX:ErrorFile={node.dir / 'hs_err_%p.log'}",
            f"-javaagent:{jamm}",
        ]
        cmd += [f"--add-exports={module}=ALL-UNNAMED" for module in _EXPORTS]
        cmd += [f"--add-opens={module}=ALL-UNNAMED" for module in _OPENS]
        cmd += [f"-D{key}={value}" for key, value in props.items()]
        cmd += ["-cp", f"{conf}{os.pathsep}{lib / '*'}", _MAIN_CLASS]
        return cmd

    def _launch(self, java: str, lib: Path, jamm: Path, node: _Node) -> None:
        opts = self._opts
        preexec = _pdeathsig_preexec() if opts.die_with_parent else None
        with open(node.stdout, "wb") as out:
            try:
                node.proc = subprocess.Popen(
                    self._command(java, lib, jamm, node),
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
            owner_start=_start_time(owner) if owner is not None else None,
        ).write(pid_file(node.address, opts.native_port))

    def _wait_ready(self, began: float) -> None:
        opts = self._opts
        deadline = began + opts.startup_timeout
        offsets = dict.fromkeys(range(len(self._nodes)), 0)
        carry = dict.fromkeys(range(len(self._nodes)), "")
        superuser = not opts.auth
        while True:
            self._raise_if_exited()
            for node in self._nodes:
                if node.ready and superuser:
                    continue
                text = self._read_new(node, offsets, carry)
                if not superuser and _SUPERUSER_LINE in text:
                    # Only one node of a cluster creates the role, so any node will do.
                    superuser = True
                if _READY_LINE.format(address=node.address, port=opts.native_port) in text:
                    node.saw_ready_line = True
                if (
                    node.saw_ready_line
                    and not node.ready
                    and _tcp_ready(node.address, opts.native_port)
                ):
                    node.ready = True
            if superuser and all(node.ready for node in self._nodes):
                return
            if time.monotonic() > deadline:
                waiting = [node.address for node in self._nodes if not node.ready]
                detail = "the default superuser role" if not waiting else ", ".join(waiting)
                raise LauncherError(
                    f"Cassandra was not ready within {opts.startup_timeout:.0f} s "
                    f"(waiting for {detail}); pass a larger startup_timeout if the machine "
                    f"is slow. Last lines of the logs:\n{self.log_tail(40)}"
                )
            time.sleep(0.1)

    def _raise_if_exited(self) -> None:
        for node in self._nodes:
            assert node.proc is not None
            code = node.proc.poll()
            if code is not None:
                raise LauncherError(
                    f"Cassandra node on {node.address} exited with code {code} during "
                    f"start-up; last lines of its log:\n{node.tail(40)}"
                )

    def _wait_until_formed(self, began: float) -> None:
        """Wait until a client sees every node up, whichever node it connects to.

        The nodes start together, so each one's first gossip round finds no peer ready
        ("Unable to gossip with any peers"): each starts as a ring of its own, opens its
        CQL port, and learns of the others by gossip a second or more later, each at its
        own pace. A driver reads the topology from the one node its control connection is
        on, so one client seeing all nodes says nothing of the next client, connected to
        another node. Every node is therefore asked directly, over a connection of its
        own, until each lists every other in ``system.peers_v2`` with the columns the
        driver needs, and its gossip holds each of them up.
        """
        opts = self._opts
        deadline = began + opts.startup_timeout
        clients: dict[str, tuple[Cluster, Session]] = {}
        # Gossip's UP / DOWN lines, read from each log as it grows.
        offsets = dict.fromkeys(range(len(self._nodes)), 0)
        carry = dict.fromkeys(range(len(self._nodes)), "")
        up: dict[str, set[str]] = {node.address: set() for node in self._nodes}
        try:
            while True:
                self._raise_if_exited()
                gaps: list[str] = []
                for node in self._nodes:
                    text = self._read_new(node, offsets, carry)
                    # In log order, so the last word on a peer wins; lines carried over
                    # from the previous read repeat in order, which changes nothing.
                    for address, state in _UP_DOWN_LINE.findall(text):
                        if state == "UP":
                            up[node.address].add(address)
                        else:
                            up[node.address].discard(address)
                    gaps += self._view_gaps(node, clients, up[node.address])
                if not gaps:
                    return
                if time.monotonic() > deadline:
                    raise LauncherError(
                        f"the {len(self._nodes)} nodes started but did not form one "
                        f"cluster within {opts.startup_timeout:.0f} s: "
                        f"{'; '.join(gaps)}. Last lines of the logs:\n{self.log_tail(40)}"
                    )
                time.sleep(0.2)
        finally:
            for cluster, _ in clients.values():
                cluster.shutdown()

    def _view_gaps(
        self, node: _Node, clients: dict[str, tuple[Cluster, Session]], up: set[str]
    ) -> list[str]:
        """What a client connected to ``node`` would not see of the other nodes yet."""
        from cassandra.auth import PlainTextAuthProvider
        from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
        from cassandra.policies import WhiteListRoundRobinPolicy

        opts = self._opts
        if node.address not in clients:
            # Pinned to this one node: the control connection and the only pool are there,
            # and the other nodes it learns of are ignored, so the peers read are its own.
            policy = WhiteListRoundRobinPolicy([node.address])
            cluster = Cluster(
                [node.address],
                port=opts.native_port,
                protocol_version=5,  # Cassandra 5.0: no negotiation, no downgrade warnings
                execution_profiles={
                    EXEC_PROFILE_DEFAULT: ExecutionProfile(
                        load_balancing_policy=policy, request_timeout=5.0
                    )
                },
                # Only peers_v2 is read: no schema or token map to build for each probe.
                schema_metadata_enabled=False,
                token_metadata_enabled=False,
                auth_provider=(
                    PlainTextAuthProvider(self.username, self.password) if opts.auth else None
                ),
                ssl_context=self.ssl_context() if opts.tls else None,
            )
            try:
                clients[node.address] = (cluster, cluster.connect())
            except Exception as error:  # NoHostAvailable and kin: try again next round
                cluster.shutdown()
                return [f"{node.address} refuses a CQL connection ({error})"]
        session = clients[node.address][1]
        try:
            rows = list(session.execute(_PEERS_QUERY))
        except Exception as error:  # a timeout or a dropped connection: ask again
            return [f"{node.address} does not answer {_PEERS_QUERY!r} ({error})"]
        lacks = {str(row.peer): [c for c in _PEER_COLUMNS if not getattr(row, c)] for row in rows}
        gaps = []
        for other in self._addresses:
            if other == node.address:
                continue
            if other not in lacks:
                gaps.append(f"{node.address} does not list {other} in system.peers_v2")
            elif lacks[other]:
                gaps.append(
                    f"{node.address} lists {other} without {', '.join(lacks[other])}, so a "
                    "driver ignores it"
                )
            elif other not in up:
                gaps.append(f"{node.address} does not hold {other} up (gossip)")
        return gaps

    @staticmethod
    def _read_new(node: _Node, offsets: dict[int, int], carry: dict[int, str]) -> str:
        # Read only what was appended since the last look; keep the end of the previous
        # chunk so a line split between two reads is still found.
        try:
            with open(node.log, "rb") as handle:
                handle.seek(offsets[node.index])
                chunk = handle.read()
        except OSError:
            return carry[node.index]
        offsets[node.index] += len(chunk)
        text = carry[node.index] + chunk.decode("utf-8", "replace")
        carry[node.index] = text[-300:]
        return text


def _detached_dir(address: str, native_port: int) -> Path:
    return run_dir() / f"{address}-{native_port}"


@dataclass(frozen=True)
class DetachedNode:
    """One node started by :func:`start_detached`, as found by :func:`detached_status`."""

    address: str
    native_port: int
    pid: int | None
    running: bool


def start_detached(
    nodes: int = 1,
    *,
    address: str | None = None,
    native_port: int | None = None,
    auth: bool = False,
    tls: bool = False,
    startup_timeout: float = 180.0,
) -> LocalCassandra:
    """Start nodes that outlive this process (what ``python -m async_cassandra.testing
    start`` does), with their data under ``<cache>/run/<address>-<port>/``.

    Stop them with :func:`stop_detached`. Nothing else stops them: no other launcher
    treats them as stale.
    """
    address = address or os.environ.get("ASYNC_CASSANDRA_ADDRESS") or "127.0.0.1"
    if native_port is None:
        native_port = _env_int("ASYNC_CASSANDRA_PORT", 9042)
    base = _detached_dir(address, native_port)
    running = [node for node in detached_status(address, native_port) if node.running]
    if running:
        raise LauncherError(
            f"a node started by this tool already runs on {address}:{native_port} "
            f"(pid {running[0].pid}); stop it first with `python -m async_cassandra.testing "
            f"stop --address {address} --port {native_port}`"
        )
    stop_detached(address, native_port)  # leftovers of one that died
    cluster = LocalCassandra(
        nodes,
        address=address,
        native_port=native_port,
        auth=auth,
        tls=tls,
        startup_timeout=startup_timeout,
        base_dir=base,
        die_with_parent=False,
    )
    cluster._record_owner = False
    try:
        cluster.start()
    except BaseException:
        shutil.rmtree(base, ignore_errors=True)
        raise
    info = {
        "addresses": cluster.addresses,
        "native_port": native_port,
        "cluster_name": cluster.cluster_name,
        "auth": auth,
        "cert": str(cluster.cert_path) if cluster.cert_path else None,
    }
    (base / "cluster.json").write_text(json.dumps(info, indent=2) + "\n")
    return cluster


def _detached_addresses(address: str, native_port: int) -> list[str]:
    try:
        info = json.loads((_detached_dir(address, native_port) / "cluster.json").read_text())
        return [str(a) for a in info["addresses"]]
    except (OSError, ValueError, KeyError, TypeError):
        return [address]


def detached_status(address: str, native_port: int) -> list[DetachedNode]:
    """The nodes :func:`start_detached` recorded for ``address:native_port`` (empty if
    there are none), each with whether it still runs."""
    found = []
    for node_address in _detached_addresses(address, native_port):
        record = PidRecord.read(pid_file(node_address, native_port))
        if record is not None:
            found.append(DetachedNode(node_address, native_port, record.pid, record.is_our_node()))
    return found


def stop_detached(address: str, native_port: int, grace: float = 20.0) -> int:
    """Stop the nodes :func:`start_detached` started on ``address:native_port`` and delete
    their data. Return how many were running."""
    stopped = 0
    for node_address in _detached_addresses(address, native_port):
        stopped += stop_recorded_node(node_address, native_port, grace)
    shutil.rmtree(_detached_dir(address, native_port), ignore_errors=True)
    return stopped
