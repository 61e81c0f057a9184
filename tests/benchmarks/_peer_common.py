"""What the peer runners ``_peer_point_reads.py`` and ``_peer_stream_rows.py`` share.

They run in the peers' venvs with ``python -I`` and import this as a sibling (they put
this folder on ``sys.path`` themselves). The standard library and ``_bench`` (itself
standard library only at import) only: the peer's client library (async-cassandra
0.0.1 or acsylla) is imported inside the functions that use it, never the
``async_cassandra`` of this repository.

The runners' protocol: one JSON object per line on stdout (:func:`emit`); ``--check``
prints ``{"event": "check", ...}`` with the versions (:func:`versions`) and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import platform
import sys
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from _bench import lag_probe

# What each client's package is called on PyPI (for its version) and imports as.
PACKAGES = {"v001": "async-cassandra", "acsylla": "acsylla"}


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def _version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def versions(client: str) -> dict[str, Any]:
    if client == "v001":
        import cassandra
        import cassandra.cluster

        import async_cassandra

        module = async_cassandra.__file__
        extra = {
            "cassandra_driver": cassandra.__version__,
            "driver_compiled": not cassandra.cluster.__file__.endswith(".py"),
            "driver_reactor": cassandra.cluster.Cluster.connection_class.__name__,
        }
    else:
        import acsylla

        module = acsylla.__file__
        extra = {}
    return {
        "client": client,
        "package": PACKAGES[client],
        "version": _version(PACKAGES[client]),
        "module": module,
        "python": platform.python_version(),
        "executable": sys.executable,
        **extra,
    }


def argument_parser(description: str) -> argparse.ArgumentParser:
    """The options both runners take: ``--client``, ``--check``, ``--host``, ``--port``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--client", choices=sorted(PACKAGES), required=True)
    parser.add_argument("--check", action="store_true", help="print the versions and exit")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9042)
    return parser


def parse_args(parser: argparse.ArgumentParser) -> argparse.Namespace:
    """The arguments; with ``--check``, print the versions (a ``check`` event) and exit."""
    args = parser.parse_args()
    if args.check:
        emit("check", **versions(args.client))
        sys.exit(0)
    return args


async def connect(
    client: str, host: str, port: int, keyspace: str | None = None
) -> tuple[Any, Any, int]:
    """(cluster, session, protocol version) of the client, connected to ``host:port``."""
    if client == "v001":
        from async_cassandra import AsyncCluster

        cluster = AsyncCluster(contact_points=[host], port=port)
        session = await cluster.connect(keyspace)
        return cluster, session, int(cluster._cluster.protocol_version)
    import acsylla

    cluster = acsylla.create_cluster([host], port=port, protocol_version=4)
    session = await cluster.create_session(keyspace=keyspace)
    return cluster, session, 4


async def close(client: str, cluster: Any, session: Any) -> None:
    if client == "v001":
        # 0.0.1's session.close() and cluster.shutdown() each sleep 5 s after the driver's
        # shutdown; call the driver's shutdowns they wrap instead (after the measurements:
        # only the run's length changes).
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(None, session._session.shutdown)
            await loop.run_in_executor(None, cluster._cluster.shutdown)
        except AttributeError:
            await session.close()
            await cluster.shutdown()
    else:
        await session.close()


class LagProbe:
    """``_bench.lag_probe`` as a task of the peer's asyncio loop; ``lags``, how late it
    woke each time, in seconds. Running before the body of the ``async with`` starts."""

    def __init__(self) -> None:
        self.lags: list[float] = []

    async def __aenter__(self) -> LagProbe:
        # asyncio's own sleep: the peers' venvs have no anyio.
        self._task = asyncio.create_task(lag_probe(self.lags, asyncio.sleep))
        await asyncio.sleep(0)  # the probe is running before the clock starts
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
