"""How the launcher tells that nodes are ready and see each other.

A node is ready when its log says it listens for CQL clients and its port accepts a
connection. Nodes form one cluster, as a client sees it, when every node lists every
other in ``system.peers_v2`` with what a driver needs and its gossip holds each of them
up; gossip's verdicts come from the logs, since CQL does not show them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import ssl

    from cassandra.cluster import Cluster, Session

__all__ = [
    "READY_LINE",
    "SUPERUSER_LINE",
    "LogFollower",
    "PeerProbe",
    "apply_gossip",
    "log_size",
]

READY_LINE = "Starting listening for CQL clients on /{address}:{port}"
SUPERUSER_LINE = "Created default superuser role 'cassandra'"
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


class LogFollower:
    """Reads the lines a log gained since the last look, from ``offset`` on."""

    def __init__(self, path: Path, offset: int = 0) -> None:
        self.path = path
        self.offset = offset
        self._partial = b""

    def read_new(self) -> str:
        """The complete lines appended since the last call (a line still being written
        is held back until its end arrives, so each line is seen once, whole)."""
        try:
            with open(self.path, "rb") as handle:
                handle.seek(self.offset)
                chunk = handle.read()
        except OSError:
            return ""
        self.offset += len(chunk)
        data = self._partial + chunk
        cut = data.rfind(b"\n") + 1
        self._partial = data[cut:]
        return data[:cut].decode("utf-8", "replace")


def apply_gossip(text: str, up: set[str]) -> None:
    """Update ``up`` (the addresses a node's gossip holds up) with the UP / DOWN lines of
    ``text``, a piece of that node's log."""
    # In log order, so the last word on a peer wins.
    for address, state in _UP_DOWN_LINE.findall(text):
        if state == "UP":
            up.add(address)
        else:
            up.discard(address)


def log_size(path: Path) -> int:
    """The size of a log now (0 if it does not exist yet)."""
    try:
        return path.stat().st_size
    except OSError:
        return 0


class PeerProbe:
    """Asks each node, over a driver connection pinned to it, which others it lists."""

    def __init__(
        self,
        port: int,
        username: str | None = None,
        password: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._port = port
        self._username = username
        self._password = password
        self._ssl_context = ssl_context
        self._clients: dict[str, tuple[Cluster, Session]] = {}

    def close(self) -> None:
        """Shut every driver down."""
        clients, self._clients = self._clients, {}
        for cluster, _ in clients.values():
            cluster.shutdown()

    def gaps(self, address: str, others: Iterable[str], up: set[str]) -> list[str]:
        """What a client connected to ``address`` would not see of ``others`` yet, given
        that its gossip holds ``up`` up: empty when it sees them all."""
        from cassandra.auth import PlainTextAuthProvider
        from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
        from cassandra.policies import WhiteListRoundRobinPolicy

        if address not in self._clients:
            # Pinned to this one node: the control connection and the only pool are there,
            # and the other nodes it learns of are ignored, so the peers read are its own.
            policy = WhiteListRoundRobinPolicy([address])
            cluster = Cluster(
                [address],
                port=self._port,
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
                    PlainTextAuthProvider(self._username, self._password)
                    if self._username is not None
                    else None
                ),
                ssl_context=self._ssl_context,
            )
            try:
                self._clients[address] = (cluster, cluster.connect())
            except Exception as error:  # NoHostAvailable and kin: try again next round
                cluster.shutdown()
                return [f"{address} refuses a CQL connection ({error})"]
        session = self._clients[address][1]
        try:
            rows = list(session.execute(_PEERS_QUERY))
        except Exception as error:  # a timeout or a dropped connection: ask again
            return [f"{address} does not answer {_PEERS_QUERY!r} ({error})"]
        lacks = {str(row.peer): [c for c in _PEER_COLUMNS if not getattr(row, c)] for row in rows}
        gaps = []
        for other in others:
            if other == address:
                continue
            if other not in lacks:
                gaps.append(f"{address} does not list {other} in system.peers_v2")
            elif lacks[other]:
                gaps.append(
                    f"{address} lists {other} without {', '.join(lacks[other])}, so a "
                    "driver ignores it"
                )
            elif other not in up:
                gaps.append(f"{address} does not hold {other} up (gossip)")
        return gaps
