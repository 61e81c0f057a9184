"""Simulacron: DataStax's fake Cassandra node, for protocol-v4 and fault tests.

It answers the driver's discovery queries by itself and whatever else it is *primed*
with over its REST API: rows, errors (read/write timeouts, unavailable, overloaded...),
delays, closed connections. It speaks protocol v3/v4 only, which is exactly what makes
it useful as "a server that cannot do v5"; never use it as a stand-in for features.

A :class:`Simulacron` runs one JVM holding one simulated cluster of one data center with
``nodes`` nodes on consecutive loopback addresses. Nodes are named by their index into
:attr:`Simulacron.contact_points`; every method that takes ``node`` acts on the whole
cluster when it is None. What each method sends (Simulacron 0.12.0's REST API, checked
against the running jar), ``{c}`` the cluster id and ``{n}`` the data center and node
ids of one node, ``0/i``:

=======================================  ===================================================
``prime_*``, ``prime``                   ``POST /prime/{c}[/{n}]`` ``{"when": {"query": ...},
                                         "then": {"result": ..., "delay_in_ms": ...}}``
``clear_primes``                         ``DELETE /prime/{c}[/{n}]`` (the cluster's clears
                                         every node's too; a node's only its own)
``activity``, ``attempts``               ``GET /log/{c}[/{n}]``
``clear_activity``                       ``DELETE /log/{c}[/{n}]``
``stop_listening``                       ``DELETE /listener/{c}[/{n}]?type=unbind|stop|
                                         reject_startup``
``start_listening``                      ``PUT /listener/{c}[/{n}]``
``connections``                          ``GET /connections/{c}[/{n}]``
``close_connections``                    ``DELETE /connections/{c}[/{n}]?type=disconnect|
                                         shutdown_read|shutdown_write``
=======================================  ===================================================

A primed query matches a request whose text is exactly the same (QUERY, and EXECUTE of
a statement prepared from that text); a node's own primes win over the cluster's. By
default a primed fault does not apply to PREPARE: preparing succeeds and executing
fails, as on a real server.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, get_args

from ._java import find_java
from ._maven import LauncherError, simulacron_jar
from ._net import free_port, loopback, port_free, tcp_ready
from ._process import pdeathsig_preexec, tail, terminate

__all__ = [
    "CloseScope",
    "CloseType",
    "Consistency",
    "ListenerStop",
    "LoggedQuery",
    "Simulacron",
    "WriteType",
]

Consistency = Literal[
    "ANY",
    "ONE",
    "TWO",
    "THREE",
    "QUORUM",
    "ALL",
    "LOCAL_QUORUM",
    "EACH_QUORUM",
    "SERIAL",
    "LOCAL_SERIAL",
    "LOCAL_ONE",
]
"""A consistency level, by the name the protocol (and the driver) gives it."""

WriteType = Literal[
    "SIMPLE", "BATCH", "UNLOGGED_BATCH", "COUNTER", "BATCH_LOG", "CAS", "VIEW", "CDC"
]
"""The kind of write a write timeout reports."""

CloseScope = Literal["connection", "node", "data_center", "cluster"]
"""What a primed ``close_connection`` closes: the connection the request came on, or
every client connection of its node, data center or cluster."""

CloseType = Literal["disconnect", "shutdown_read", "shutdown_write"]
"""How a connection is closed: both ways, or only the server's reading (it ignores
what the client sends) or writing (the client reads end-of-stream) half."""

ListenerStop = Literal["unbind", "stop", "reject_startup"]
"""How a node stops taking new connections: ``unbind`` closes its listening socket
(connecting is refused; connections already open keep working), ``stop`` does that and
closes every client connection (as a stopped node would), ``reject_startup`` keeps
accepting TCP connections but never answers their STARTUP (connecting times out)."""


@dataclass(frozen=True)
class LoggedQuery:
    """One request a simulated node received, from its activity log."""

    node: int
    """Index of the node (into :attr:`Simulacron.contact_points`)."""
    address: str
    """The node's address (without the port)."""
    type: str
    """The protocol message: ``QUERY``, ``EXECUTE``, ``PREPARE``, ``BATCH``, ``OPTIONS``,
    ``STARTUP``, ``REGISTER``..."""
    query: str | None
    """The CQL text (of an EXECUTE: the primed query it matched, else None; of a BATCH:
    None); for a message without CQL, its type."""
    consistency: str | None
    """The consistency level asked for (QUERY, EXECUTE), e.g. ``"LOCAL_ONE"``."""
    serial_consistency: str | None
    """The serial consistency level asked for (QUERY, EXECUTE)."""
    connection: str
    """The client end of the connection, ``"ip:port"``."""
    received_timestamp: int
    """When the node received it: milliseconds since the epoch."""
    client_timestamp: int
    """The client's default timestamp for writes (microseconds; 0 or less when none)."""
    primed: bool
    """Whether a prime answered it."""


_CONSISTENCIES: frozenset[str] = frozenset(get_args(Consistency))
_WRITE_TYPES: frozenset[str] = frozenset(get_args(WriteType))
_CLOSE_SCOPES: frozenset[str] = frozenset(get_args(CloseScope))
_CLOSE_TYPES: frozenset[str] = frozenset(get_args(CloseType))
_LISTENER_STOPS: frozenset[str] = frozenset(get_args(ListenerStop))


class Simulacron:
    """A running Simulacron: one simulated cluster of ``nodes`` nodes (one data center)
    on ``ip``, ``ip + 1``, ... port ``native_port``.

    ``with Simulacron() as sim: sim.prime_rows("SELECT ...", [...], {"id": "int"})`` then
    connect a driver (protocol v4) to ``sim.contact_points``/``sim.native_port``, or use
    :meth:`driver_cluster`. The REST API listens on ``http_address:http_port`` (a free
    port by default); :meth:`api` calls it directly.
    """

    def __init__(
        self,
        ip: str = "127.0.1.1",
        *,
        nodes: int = 1,
        native_port: int = 9042,
        http_address: str = "127.0.0.1",
        http_port: int | None = None,
        java: str | os.PathLike[str] | None = None,
        startup_timeout: float = 60.0,
    ) -> None:
        first = loopback(ip)
        loopback(http_address)
        if isinstance(nodes, bool) or not isinstance(nodes, int) or nodes < 1:
            raise ValueError(f"nodes must be an int of 1 or more, not {nodes!r}")
        if nodes > 1 and native_port != 9042:
            # Simulacron puts the nodes of a cluster on consecutive addresses only with
            # its default port; with another one it stacks them on one address.
            raise LauncherError(
                f"Simulacron runs several nodes on one port only: nodes={nodes} needs "
                f"native_port=9042, not {native_port}"
            )
        if int(first) % 256 + nodes - 1 > 254:
            # Past .254 Simulacron wraps to .0 of the next block, not to .255.
            raise LauncherError(f"{nodes} consecutive addresses from {ip} cross a .255")
        self._addresses = [str(first + index) for index in range(nodes)]
        for address in self._addresses:
            loopback(address)
        self._native_port = native_port
        self._http_address = http_address
        self._http_port = http_port
        self._java = java
        self._startup_timeout = startup_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._dir: Path | None = None
        self._cluster_id: int | None = None
        # Per node, in address order: its "data center id/node id" in REST paths.
        self._node_paths: list[str] = []
        self._lock = threading.Lock()
        # Every prime made through this object, oldest first: (node, its `when` as
        # JSON, the body posted). Simulacron can neither delete one prime nor clear one
        # node's (see clear_primes), so those are done by clearing all and priming the
        # rest again.
        self._primes: list[tuple[int | None, str, dict[str, object]]] = []
        self._primes_lock = threading.Lock()
        self._started = False
        self._stopped = False
        self.start_seconds: float | None = None
        """Seconds from launching the JVM to every simulated node accepting connections."""

    @property
    def contact_points(self) -> list[str]:
        """The simulated nodes' addresses, node 0 first, as driver contact points."""
        return list(self._addresses)

    @property
    def native_port(self) -> int:
        """The simulated nodes' CQL port."""
        return self._native_port

    @property
    def http_url(self) -> str:
        """Base URL of the REST API, e.g. ``http://127.0.0.1:41234``."""
        return f"http://{self._http_address}:{self._http_port}"

    @property
    def cluster_id(self) -> int:
        """Simulacron's id of the simulated cluster (used in REST paths)."""
        if self._cluster_id is None:
            raise LauncherError("Simulacron is not started")
        return self._cluster_id

    @property
    def pid(self) -> int | None:
        """The JVM's process id while it runs."""
        return self._proc.pid if self._proc is not None else None

    def logtail(self, lines: int = 40) -> str:
        """The last lines of Simulacron's output."""
        if self._dir is None:
            return ""
        return tail(self._dir / "simulacron.log", lines)

    # ---------------------------------------------------------------- REST API

    def api(self, method: str, path: str, body: object = None) -> object:
        """Call the REST API (``path`` like ``/prime/0``) and return the decoded JSON
        answer (None when empty). Raises :class:`LauncherError` on an HTTP error."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.http_url + path, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                text = response.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", "replace")
            raise LauncherError(f"Simulacron {method} {path} failed: {exc}: {detail}") from exc
        except OSError as exc:
            raise LauncherError(
                f"Simulacron {method} {path} failed: {exc}; its log:\n{self.logtail()}"
            ) from exc
        return json.loads(text) if text.strip() else None

    def _scope(self, node: int | None) -> str:
        """The REST path suffix naming the cluster (None) or one of its nodes."""
        if node is None:
            return f"/{self.cluster_id}"
        if isinstance(node, bool) or not isinstance(node, int):
            raise TypeError(f"node must be an int index or None, not {node!r}")
        if not 0 <= node < len(self._addresses):
            raise IndexError(
                f"node {node} does not exist: this Simulacron has {len(self._addresses)} "
                f"node(s), 0 to {len(self._addresses) - 1}"
            )
        path = f"/{self.cluster_id}"  # also checks that it runs
        return f"{path}/{self._node_paths[node]}"

    # ----------------------------------------------------------------- priming

    def prime(
        self,
        when_query: str,
        result: str = "success",
        rows: Sequence[Mapping[str, object]] | None = None,
        column_types: Mapping[str, str] | None = None,
        delay_ms: int = 0,
        *,
        when: Mapping[str, object] | None = None,
        node: int | None = None,
        **then: object,
    ) -> None:
        """Prime the answer to ``when_query`` (on every node, or on ``node`` only).

        The generic form of the ``prime_*`` methods. ``result`` is ``"success"`` (with
        ``rows`` and ``column_types`` such as ``{"id": "int", "name": "text"}``) or a
        fault: ``"read_timeout"``, ``"write_timeout"``, ``"unavailable"``,
        ``"overloaded"``, ``"server_error"``, ``"is_bootstrapping"``,
        ``"truncate_error"``, ``"no_result"``, ``"close_connection"``, ``"invalid"``,
        ``"syntax_error"``, ``"unauthorized"``... Extra keyword arguments go into the
        ``then`` part as is (e.g. ``consistency_level="ONE", received=0, block_for=1``
        for timeouts, ``close_type="disconnect", scope="connection"`` for closed
        connections, ``message="..."`` for errors, ``ignore_on_prepare=False`` to fail
        PREPARE too); ``when`` adds to the ``when`` part (e.g.
        ``{"consistency_level": ["ONE"], "params": ...}``). ``delay_ms``: answer that
        many milliseconds late.
        """
        if isinstance(delay_ms, bool) or not isinstance(delay_ms, int) or delay_ms < 0:
            raise ValueError(f"delay_ms must be an int of 0 or more, not {delay_ms!r}")
        then_part: dict[str, object] = {"result": result, "delay_in_ms": delay_ms}
        if rows is not None:
            then_part["rows"] = [dict(row) for row in rows]
        if column_types is not None:
            # Simulacron's codec registry knows CQL `text` only by its alias `varchar`
            # (priming a `text` column fails with a bare HTTP 400).
            then_part["column_types"] = {
                name: re.sub(r"\btext\b", "varchar", cql_type)
                for name, cql_type in column_types.items()
            }
        then_part.update(then)
        when_part: dict[str, object] = {"query": when_query, **(when or {})}
        body: dict[str, object] = {"when": when_part, "then": then_part}
        key = json.dumps(when_part, sort_keys=True)
        path = f"/prime{self._scope(node)}"
        with self._primes_lock:
            if not any(n == node and k == key for n, k, _ in self._primes):
                self.api("POST", path, body)
                self._primes.append((node, key, body))
                return
            # Simulacron answers with the *first* matching prime of a node (or of the
            # cluster): the earlier one would hide this one, so it goes.
            kept = [p for p in self._primes if not (p[0] == node and p[1] == key)]
            self._reprime(kept)
            self.api("POST", path, body)
            self._primes.append((node, key, body))

    def prime_rows(
        self,
        query: str,
        rows: Sequence[Mapping[str, object]] = (),
        column_types: Mapping[str, str] | None = None,
        *,
        node: int | None = None,
        delay_ms: int = 0,
    ) -> None:
        """Answer ``query`` with ``rows`` (none: an empty result, as for a write) of
        the CQL types ``column_types`` (``{"id": "int", "name": "text"}``; by default
        every column of the first row as ``varchar``)."""
        if not rows and not column_types:
            # A result of no columns is a VOID result: primed as "success" with no
            # columns, Simulacron sends a ROWS message the driver's decoder rejects.
            self.prime(query, "void", None, None, delay_ms, node=node)
            return
        if column_types is None:
            column_types = dict.fromkeys(rows[0], "varchar")
        self.prime(query, "success", rows, column_types, delay_ms, node=node)

    def prime_read_timeout(
        self,
        query: str,
        *,
        consistency: Consistency = "QUORUM",
        received: int = 1,
        block_for: int = 2,
        data_present: bool = False,
        node: int | None = None,
        delay_ms: int = 0,
    ) -> None:
        """Answer ``query`` with a read timeout: at ``consistency``, ``received`` of the
        ``block_for`` replicas needed answered, ``data_present`` whether the replica
        asked for the data was one of them. The driver raises ``ReadTimeout`` with
        ``consistency``, ``received_responses``, ``required_responses`` and
        ``data_retrieved``."""
        self.prime(
            query,
            "read_timeout",
            delay_ms=delay_ms,
            node=node,
            consistency_level=_consistency(consistency),
            received=_count("received", received),
            block_for=_count("block_for", block_for),
            data_present=bool(data_present),
        )

    def prime_write_timeout(
        self,
        query: str,
        *,
        consistency: Consistency = "QUORUM",
        received: int = 1,
        block_for: int = 2,
        write_type: WriteType = "SIMPLE",
        node: int | None = None,
        delay_ms: int = 0,
    ) -> None:
        """Answer ``query`` with a write timeout: at ``consistency``, ``received`` of the
        ``block_for`` replicas needed acknowledged a write of kind ``write_type``. The
        driver raises ``WriteTimeout`` with ``consistency``, ``received_responses``,
        ``required_responses`` and ``write_type``."""
        if write_type not in _WRITE_TYPES:
            raise ValueError(
                f"write_type must be one of {sorted(_WRITE_TYPES)}, not {write_type!r}"
            )
        self.prime(
            query,
            "write_timeout",
            delay_ms=delay_ms,
            node=node,
            consistency_level=_consistency(consistency),
            received=_count("received", received),
            block_for=_count("block_for", block_for),
            write_type=write_type,
        )

    def prime_unavailable(
        self,
        query: str,
        *,
        consistency: Consistency = "QUORUM",
        required: int = 2,
        alive: int = 1,
        node: int | None = None,
        delay_ms: int = 0,
    ) -> None:
        """Answer ``query`` with unavailable: ``consistency`` needs ``required`` replicas
        and the coordinator knows only ``alive`` of them up. The driver raises
        ``Unavailable`` with ``consistency``, ``required_replicas`` and
        ``alive_replicas``."""
        self.prime(
            query,
            "unavailable",
            delay_ms=delay_ms,
            node=node,
            consistency_level=_consistency(consistency),
            required=_count("required", required),
            alive=_count("alive", alive),
        )

    def prime_overloaded(
        self,
        query: str,
        *,
        message: str = "overloaded (primed)",
        node: int | None = None,
        delay_ms: int = 0,
    ) -> None:
        """Answer ``query`` with an overloaded error (code 0x1001) saying ``message``;
        the driver raises ``OverloadedErrorMessage``."""
        self.prime(query, "overloaded", delay_ms=delay_ms, node=node, message=message)

    def prime_server_error(
        self,
        query: str,
        *,
        message: str = "server error (primed)",
        node: int | None = None,
        delay_ms: int = 0,
    ) -> None:
        """Answer ``query`` with a server error (code 0x0000) saying ``message``; the
        driver raises ``ServerError``."""
        self.prime(query, "server_error", delay_ms=delay_ms, node=node, message=message)

    def prime_is_bootstrapping(
        self, query: str, *, node: int | None = None, delay_ms: int = 0
    ) -> None:
        """Answer ``query`` with "is bootstrapping" (code 0x1002; Simulacron's fixed
        message); the driver raises ``IsBootstrappingErrorMessage``."""
        self.prime(query, "is_bootstrapping", delay_ms=delay_ms, node=node)

    def prime_truncate_error(
        self,
        query: str,
        *,
        message: str = "truncate error (primed)",
        node: int | None = None,
        delay_ms: int = 0,
    ) -> None:
        """Answer ``query`` with a truncate error (code 0x1003) saying ``message``; the
        driver raises ``TruncateError``."""
        self.prime(query, "truncate_error", delay_ms=delay_ms, node=node, message=message)

    def prime_close_connection(
        self,
        query: str,
        *,
        scope: CloseScope = "connection",
        close_type: CloseType = "disconnect",
        node: int | None = None,
        delay_ms: int = 0,
    ) -> None:
        """Answer ``query`` by closing connections instead: the one it came on
        (``scope="connection"``) or every client connection of its node, data center or
        cluster, in the way ``close_type`` says. The driver fails the request with a
        ``ConnectionShutdown`` (a ``ConnectionException``) and reconnects."""
        if scope not in _CLOSE_SCOPES:
            raise ValueError(f"scope must be one of {sorted(_CLOSE_SCOPES)}, not {scope!r}")
        self.prime(
            query,
            "close_connection",
            delay_ms=delay_ms,
            node=node,
            scope=scope,
            close_type=_close_type(close_type),
        )

    def prime_no_result(self, query: str, *, node: int | None = None, delay_ms: int = 0) -> None:
        """Never answer ``query``: the driver's request times out client-side
        (``OperationTimedOut``) while the connection stays up."""
        self.prime(query, "no_result", delay_ms=delay_ms, node=node)

    def clear_primes(self, node: int | None = None) -> None:
        """Forget every primed query (None), or the primes made for ``node`` alone
        (the cluster's and the other nodes' stay)."""
        self._scope(node)  # checks node
        with self._primes_lock:
            if node is None:
                self._reprime([])
            else:
                # DELETE /prime/{cluster}/{dc}/{node} is routed to the priming handler
                # in Simulacron 0.12.0 (an HTTP 400), so clear all, prime the rest again.
                self._reprime([p for p in self._primes if p[0] != node])

    def _reprime(self, primes: list[tuple[int | None, str, dict[str, object]]]) -> None:
        """Clear every prime, then make ``primes`` again, in order. Primes made with
        :meth:`api` directly are not known, so they are gone."""
        self.api("DELETE", f"/prime/{self.cluster_id}")  # the nodes' too
        self._primes = []
        for node, key, body in primes:
            self.api("POST", f"/prime{self._scope(node)}", body)
            self._primes.append((node, key, body))

    # ------------------------------------------------------------ activity log

    def activity(self, node: int | None = None) -> list[LoggedQuery]:
        """What the nodes (or ``node``) received, oldest first: every request, the
        driver's own (OPTIONS, STARTUP, REGISTER, discovery and schema queries)
        included. Across nodes the order is by received time (milliseconds)."""
        report = self.api("GET", f"/log{self._scope(node)}")
        index = {path: i for i, path in enumerate(self._node_paths)}
        logged: list[LoggedQuery] = []
        for dc in _objects(_field(report, "data_centers")):
            for sim_node in _objects(dc.get("nodes")):
                position = index.get(f"{dc.get('id')}/{sim_node.get('id')}")
                if position is None:
                    continue
                for entry in _objects(sim_node.get("queries")):
                    logged.append(_logged(position, self._addresses[position], entry))
        logged.sort(key=lambda entry: entry.received_timestamp)  # stable: per node in order
        return logged

    def attempts(self, query_prefix: str) -> dict[int, int]:
        """How many times a request whose CQL starts with ``query_prefix`` reached each
        node (QUERY and EXECUTE messages; PREPARE is not an attempt): ``{node index:
        count}``, every node listed."""
        counts = dict.fromkeys(range(len(self._addresses)), 0)
        for entry in self.activity():
            if entry.type in ("QUERY", "EXECUTE") and (entry.query or "").startswith(query_prefix):
                counts[entry.node] += 1
        return counts

    def clear_activity(self, node: int | None = None) -> None:
        """Forget what the nodes (or ``node``) received."""
        self.api("DELETE", f"/log{self._scope(node)}")

    def activity_log(self) -> object:
        """The queries the simulated nodes received (Simulacron's ``/log`` JSON); see
        :meth:`activity` for the same as :class:`LoggedQuery` objects."""
        return self.api("GET", f"/log/{self.cluster_id}")

    def clear_activity_log(self) -> None:
        """Forget the received queries (:meth:`clear_activity` for every node)."""
        self.clear_activity()

    # ------------------------------------------------ listeners and connections

    def stop_listening(self, node: int | None, *, how: ListenerStop = "unbind") -> None:
        """Make ``node`` (None: every node) take no new connections, as ``how`` says:
        ``"unbind"`` (connecting is refused; open connections keep working), ``"stop"``
        (also closes the open ones, as a stopped node would) or ``"reject_startup"``
        (TCP connects, the STARTUP is never answered). :meth:`start_listening` undoes
        it."""
        if how not in _LISTENER_STOPS:
            raise ValueError(f"how must be one of {sorted(_LISTENER_STOPS)}, not {how!r}")
        query = urllib.parse.urlencode({"type": how})
        self.api("DELETE", f"/listener{self._scope(node)}?{query}")

    def start_listening(self, node: int | None = None) -> None:
        """Make ``node`` (None: every node) take new connections again (after
        :meth:`stop_listening`; otherwise it changes nothing)."""
        self.api("PUT", f"/listener{self._scope(node)}")

    def connections(self, node: int | None = None) -> dict[int, list[str]]:
        """The client connections open on each node (or on ``node``): ``{node index:
        ["ip:port", ...]}``."""
        report = self.api("GET", f"/connections{self._scope(node)}")
        return self._connections_by_node(report)

    def close_connections(
        self, node: int | None = None, *, close_type: CloseType = "disconnect"
    ) -> dict[int, list[str]]:
        """Close every client connection of ``node`` (None: of every node) in the way
        ``close_type`` says; returns the connections closed, as :meth:`connections`.
        The nodes keep listening: a driver sees the connections drop and reconnects."""
        query = urllib.parse.urlencode({"type": _close_type(close_type)})
        report = self.api("DELETE", f"/connections{self._scope(node)}?{query}")
        return self._connections_by_node(report)

    def _connections_by_node(self, report: object) -> dict[int, list[str]]:
        index = {path: i for i, path in enumerate(self._node_paths)}
        found: dict[int, list[str]] = {}
        for dc in _objects(_field(report, "data_centers")):
            for sim_node in _objects(dc.get("nodes")):
                position = index.get(f"{dc.get('id')}/{sim_node.get('id')}")
                if position is not None:
                    found[position] = [str(c) for c in _list(sim_node.get("connections"))]
        return found

    def reset(self) -> None:
        """Back to a fresh start for the next test: no primes, an empty activity log,
        every node listening. Connections open now stay open."""
        self.clear_primes()
        self.start_listening()
        self.clear_activity()

    # ---------------------------------------------------------------- drivers

    def driver_cluster(self, *, retry_policy: object = None, **cluster_kwargs: Any) -> Any:
        """A plain cassandra-driver ``Cluster`` for these nodes, not connected yet.

        Protocol v4 (all Simulacron speaks); a default execution profile whose
        load-balancing policy tries the nodes in order, node 0 first, so which node each
        attempt of a request reaches is known; ``retry_policy`` in that profile (None:
        the driver's own ``RetryPolicy``); a reconnection every 0.5 s to a node that went
        down. ``cluster_kwargs`` go to ``Cluster`` (and override those). The caller
        shuts it down.
        """
        from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
        from cassandra.policies import ConstantReconnectionPolicy

        profile = ExecutionProfile(
            load_balancing_policy=_in_order_policy(self._addresses),
            **({} if retry_policy is None else {"retry_policy": retry_policy}),
        )
        kwargs: dict[str, Any] = {
            "contact_points": self.contact_points,
            "port": self._native_port,
            "protocol_version": 4,
            "execution_profiles": {EXEC_PROFILE_DEFAULT: profile},
            "reconnection_policy": ConstantReconnectionPolicy(0.5, max_attempts=None),
        }
        kwargs.update(cluster_kwargs)
        return Cluster(**kwargs)

    def driver_session(self, cluster: Any, *, timeout: float = 10.0) -> Any:
        """``cluster.connect()``, returned once the session holds an open connection
        pool for every node (at most ``timeout`` seconds, else :class:`LauncherError`).

        The driver returns from ``connect()`` as soon as any one pool is ready; a
        request sent before node 0's pool is would skip node 0, and the attempts the
        activity log shows would depend on that race.
        """
        session = cluster.connect()
        deadline = time.monotonic() + timeout
        while True:
            # get_pool_state() is public: {host: {"open_count": n, ...}} per pool.
            pools = session.get_pool_state()
            ready = {host.address for host, state in pools.items() if state["open_count"] > 0}
            if set(self._addresses) <= ready:
                return session
            if time.monotonic() > deadline:
                missing = sorted(set(self._addresses) - ready)
                raise LauncherError(
                    f"the driver opened no connection pool to {missing} within {timeout} s"
                )
            time.sleep(0.01)

    # --------------------------------------------------------------- lifecycle

    def __enter__(self) -> Simulacron:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> Simulacron:
        """Start the JVM, create the cluster and wait until every node accepts CQL
        connections. Raises :class:`LauncherError` with the log tail on failure."""
        with self._lock:
            if self._started:
                raise LauncherError("this Simulacron was already started")
            self._started = True
        atexit.register(self.stop)
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        java = find_java(self._java)
        for address in self._addresses:
            if not port_free(address, self._native_port):
                raise LauncherError(
                    f"port {self._native_port} on {address} is already in use by another "
                    "process; stop it or pass ip=... / native_port=..."
                )
        if self._http_port is None:
            self._http_port = free_port(self._http_address)
        jar = simulacron_jar()
        self._dir = Path(tempfile.mkdtemp(prefix="async-cassandra-simulacron-"))
        cmd = [java, "-jar", str(jar), "--ip", self._addresses[0]]
        cmd += ["--httpintf", self._http_address, "--httpport", str(self._http_port)]
        if self._native_port != 9042:
            cmd += ["--starting-port", str(self._native_port)]
        began = time.monotonic()
        with open(self._dir / "simulacron.log", "wb") as out:
            self._proc = subprocess.Popen(
                cmd,
                cwd=self._dir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=pdeathsig_preexec(),
            )
        deadline = began + self._startup_timeout
        self._wait(deadline, lambda: tcp_ready(self._http_address, self._http_port or 0))
        name = f"acs-simulacron-{os.getpid()}"
        # data_centers lists the node count of each data center: "3" is one of three.
        query = urllib.parse.urlencode({"data_centers": str(len(self._addresses)), "name": name})
        created = self.api("POST", f"/cluster?{query}")
        if not isinstance(created, dict) or "id" not in created:
            raise LauncherError(f"Simulacron answered POST /cluster with {created!r}")
        self._cluster_id = int(created["id"])
        self._node_paths = self._map_nodes(created)
        self._wait(
            deadline,
            lambda: all(tcp_ready(address, self._native_port) for address in self._addresses),
        )
        self.start_seconds = time.monotonic() - began

    def _map_nodes(self, created: Mapping[str, object]) -> list[str]:
        """Each address's "dc id/node id", from the answer to ``POST /cluster``."""
        paths: dict[str, str] = {}
        for dc in _objects(created.get("data_centers")):
            for sim_node in _objects(dc.get("nodes")):
                host, _, port = str(sim_node.get("address", "")).rpartition(":")
                paths[f"{host.lstrip('/')}:{port}"] = f"{dc.get('id')}/{sim_node.get('id')}"
        wanted = [f"{address}:{self._native_port}" for address in self._addresses]
        if sorted(paths) != sorted(wanted):
            raise LauncherError(
                f"Simulacron made nodes on {sorted(paths)}, not on {wanted}; its log:\n"
                f"{self.logtail()}"
            )
        return [paths[address] for address in wanted]

    def _wait(self, deadline: float, ready: Callable[[], bool]) -> None:
        assert self._proc is not None
        while not ready():
            code = self._proc.poll()
            if code is not None:
                raise LauncherError(
                    f"Simulacron exited with code {code} during start-up; last lines of "
                    f"its log:\n{self.logtail()}"
                )
            if time.monotonic() > deadline:
                raise LauncherError(
                    f"Simulacron was not ready within {self._startup_timeout:.0f} s; last "
                    f"lines of its log:\n{self.logtail()}"
                )
            time.sleep(0.1)

    def stop(self, grace: float = 10.0) -> None:
        """Stop the JVM (SIGTERM, SIGKILL after ``grace`` s) and delete its log
        directory. Safe to call more than once."""
        with self._lock:
            if self._stopped or not self._started:
                return
            self._stopped = True
        with contextlib.suppress(Exception):
            atexit.unregister(self.stop)
        if self._proc is not None:
            terminate([self._proc], grace)
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)


# ---------------------------------------------------------------------- helpers


def _consistency(level: str) -> str:
    if level not in _CONSISTENCIES:
        raise ValueError(f"consistency must be one of {sorted(_CONSISTENCIES)}, not {level!r}")
    return level


def _close_type(close_type: str) -> str:
    if close_type not in _CLOSE_TYPES:
        raise ValueError(f"close_type must be one of {sorted(_CLOSE_TYPES)}, not {close_type!r}")
    return close_type


def _count(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be an int of 0 or more, not {value!r}")
    return value


def _field(report: object, name: str) -> object:
    if not isinstance(report, dict):
        raise LauncherError(f"Simulacron answered {report!r}, not a JSON object")
    return report.get(name)


def _list(value: object) -> list[object]:
    return list(value) if isinstance(value, list) else []


def _objects(value: object) -> Iterable[dict[str, Any]]:
    return [item for item in _list(value) if isinstance(item, dict)]


def _logged(node: int, address: str, entry: Mapping[str, Any]) -> LoggedQuery:
    query = entry.get("query")
    consistency = entry.get("consistency_level")
    serial = entry.get("serial_consistency_level")
    return LoggedQuery(
        node=node,
        address=address,
        type=str(entry.get("type") or ""),
        query=None if query is None else str(query),
        consistency=None if consistency is None else str(consistency),
        serial_consistency=None if serial is None else str(serial),
        connection=str(entry.get("connection") or "").lstrip("/"),
        received_timestamp=int(entry.get("received_timestamp") or 0),
        client_timestamp=int(entry.get("client_timestamp") or 0),
        primed=bool(entry.get("primed")),
    )


def _in_order_policy(addresses: Sequence[str]) -> Any:
    """A driver load-balancing policy whose query plan is every host up, in the order of
    ``addresses`` (others after them, by address): node 0 first, then node 1..."""
    from cassandra.policies import HostDistance, LoadBalancingPolicy

    rank = {address: i for i, address in enumerate(addresses)}

    class InOrderPolicy(LoadBalancingPolicy):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self._up: dict[Any, None] = {}
            self._lock = threading.Lock()

        def _key(self, host: Any) -> tuple[int, str]:
            return (rank.get(host.address, len(rank)), str(host.address))

        def populate(self, cluster: Any, hosts: Iterable[Any]) -> None:
            with self._lock:
                self._up = dict.fromkeys(hosts)

        def distance(self, host: Any) -> Any:
            return HostDistance.LOCAL

        def make_query_plan(self, working_keyspace: Any = None, query: Any = None) -> Any:
            with self._lock:
                hosts = sorted(self._up, key=self._key)
            return iter(hosts)

        def on_up(self, host: Any) -> None:
            with self._lock:
                self._up[host] = None

        def on_down(self, host: Any) -> None:
            with self._lock:
                self._up.pop(host, None)

        def on_add(self, host: Any) -> None:
            self.on_up(host)

        def on_remove(self, host: Any) -> None:
            self.on_down(host)

    return InOrderPolicy()
