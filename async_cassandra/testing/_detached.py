"""Nodes that outlive the process that started them: what ``python -m
async_cassandra.testing start|stop|status`` does.

Their data lives under ``<cache>/run/<address>-<port>@<netns>/`` (the network namespace:
see _pidfile) with a ``cluster.json`` naming the nodes, and their pid files name no
owner, so only :func:`stop_detached` stops them.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from ._maven import LauncherError
from ._net import env_port
from ._node import LocalCassandra, detached_cluster
from ._pidfile import PidRecord, network_namespace, pid_file, run_dir, stop_recorded_node

__all__ = ["DetachedNode", "detached_status", "start_detached", "stop_detached"]


def _detached_dir(address: str, native_port: int) -> Path:
    return run_dir() / f"{address}-{native_port}@{network_namespace()}"


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
    start`` does), with their data under ``<cache>/run/<address>-<port>@<netns>/``.

    Stop them with :func:`stop_detached`. Nothing else stops them: no other launcher
    treats them as stale.
    """
    address = address or os.environ.get("ASYNC_CASSANDRA_ADDRESS") or "127.0.0.1"
    if native_port is None:
        native_port = env_port("ASYNC_CASSANDRA_PORT", 9042)
    base = _detached_dir(address, native_port)
    running = [node for node in detached_status(address, native_port) if node.running]
    if running:
        raise LauncherError(
            f"a node started by this tool already runs on {address}:{native_port} "
            f"(pid {running[0].pid}); stop it first with `python -m async_cassandra.testing "
            f"stop --address {address} --port {native_port}`"
        )
    stop_detached(address, native_port)  # leftovers of one that died
    cluster = detached_cluster(
        nodes,
        address=address,
        native_port=native_port,
        auth=auth,
        tls=tls,
        startup_timeout=startup_timeout,
        base_dir=base,
    )
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
