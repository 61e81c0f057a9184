"""Pid files: how a node outlives the run that started it without being lost.

Every node we start gets ``<cache>/run/<address>-<port>@<netns>.pid``, naming its JVM,
its node directory and the Python process that owns it. An address and port are taken
within one network namespace only (``ip netns exec`` gives a run its own 127.0.0.1), so
the file names the namespace too: runs in two namespaces never see each other's nodes.
A later launcher reads them to clean up after a run that was killed (its nodes died
with it, or still hold their ports) and to refuse to touch a node that a live process,
or the CLI, still owns.

A pid file whose JVM is gone while its owner still runs belongs to a node stopped on
purpose (``stop_node`` / ``kill``), which its owner may start again on the same data: it
is left alone until its owner stops the cluster or dies.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from ._config import MAIN_CLASS
from ._maven import LauncherError, cache_dir
from ._process import kill_pid, proc_alive, start_time

__all__ = [
    "NODE_MARKER",
    "PidRecord",
    "clean_dead_pid_files",
    "clear_stale",
    "network_namespace",
    "pid_file",
    "rm_node_dir",
    "run_dir",
    "stop_recorded_node",
]

# Every node directory we create holds this file; we only ever delete directories that
# have it, so a corrupted or hand-edited pid file can't make us remove someone's data.
NODE_MARKER = "async-cassandra-node"


def run_dir() -> Path:
    """Where pid files (and the CLI's node directories) live: ``<cache>/run``."""
    return cache_dir() / "run"


@functools.cache
def network_namespace() -> str:
    """This process's network namespace, as a name part: ``net`` and the namespace's
    inode number (``net4026531840``), or ``net`` where /proc does not say."""
    try:
        link = os.readlink("/proc/self/ns/net")  # "net:[4026531840]"
    except OSError:
        return "net"
    return "net" + "".join(filter(str.isdigit, link))


def pid_file(address: str, native_port: int, namespace: str | None = None) -> Path:
    """The pid file of the node on ``address:native_port`` in ``namespace`` (default:
    this process's network namespace)."""
    return run_dir() / f"{address}-{native_port}@{namespace or network_namespace()}.pid"


def rm_node_dir(path: Path) -> None:
    """Delete a node directory, if it is one of ours (it holds :data:`NODE_MARKER`)."""
    if (path / NODE_MARKER).is_file():
        shutil.rmtree(path, ignore_errors=True)


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
        if not proc_alive(self.pid):
            return False
        try:
            args = Path(f"/proc/{self.pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return False
        text = [arg.decode("utf-8", "replace") for arg in args]
        return MAIN_CLASS in text and any(str(self.node_dir) in arg for arg in text)

    def owner_alive(self) -> bool:
        """True if the Python process that started the node still runs."""
        if self.owner is None:
            return False
        if self.owner_start is None:
            # No start time was recorded (no /proc): the pid is all there is to go on.
            return proc_alive(self.owner)
        return start_time(self.owner) == self.owner_start

    def is_stopped_node(self) -> bool:
        """True if the JVM is gone but the process that owns the node still runs and its
        directory is still there: a node stopped on purpose, which its owner may start
        again on the same data."""
        return (
            not self.is_our_node()
            and self.owner_alive()
            and (self.node_dir / NODE_MARKER).is_file()
        )

    def remove_files(self) -> None:
        """Delete the node directory (and the emptied temporary base directory)."""
        rm_node_dir(self.node_dir)
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
        kill_pid(record.pid, grace, group=True)
        stopped = True
    record.remove_files()
    path.unlink(missing_ok=True)
    return stopped


def clean_dead_pid_files() -> None:
    """Pid files of nodes whose process is gone: delete their leftover node dirs.

    A node stopped on purpose by a process that still runs is not left over: see
    :meth:`PidRecord.is_stopped_node`.
    """
    folder = run_dir()
    if not folder.is_dir():
        return
    for path in folder.glob("*.pid"):
        record = PidRecord.read(path)
        if record is None or not record.is_our_node():
            if record is not None:
                if record.is_stopped_node():
                    continue
                record.remove_files()
            path.unlink(missing_ok=True)


def clear_stale(address: str, native_port: int) -> None:
    """Stop our node left on ``address:native_port`` by a run that was killed.

    A node of a live process, or one started by the CLI, is not stale: we say so instead
    of killing somebody's demo or test run. Neither is a node that a live process stopped
    for now (``stop_node`` / ``kill``): its address and data are still that process's.
    """
    record = PidRecord.read(pid_file(address, native_port))
    if record is None:
        return
    if not record.is_our_node():
        if record.is_stopped_node():
            raise LauncherError(
                f"{address}:{native_port} belongs to a Cassandra node of a running process "
                f"(pid {record.owner}) that is stopped for now (stop_node or kill: its data "
                f"in {record.node_dir} is kept for start_node); stop that cluster, or pass "
                "address=... / set ASYNC_CASSANDRA_ADDRESS to use another loopback address"
            )
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
