"""The point-read loop of ``point_reads.py`` for a peer library, in that library's venv.

    <venv>/bin/python -I _peer_point_reads.py --client v001|acsylla --host H --port P
        --keyspace K --concurrency 1,64,256 --warmup S --measure S

Peers that cannot share a process with this project (async-cassandra 0.0.1 has our import
name; acsylla has its own venv) run here, in a subprocess ``point_reads.py`` drives.
Self-contained on purpose: the standard library and the peer's client library only
(``-I`` keeps the repository off ``sys.path``), no ``_bench``, no ``async_cassandra`` of
this repository.

Protocol, one JSON object per line on stdout: ``{"event": "ready", ...}`` once connected
and prepared (versions, protocol, and the ``name`` read for the first key, as a check);
then for each concurrency a warm-up and a measured phase, each started by a line on stdin
(so the parent can bracket the measured one with its own readings of the server's and
the machine's CPU) and answered with ``{"event": "phase", ...}``: ops,
seconds (wall, first issue to last completion), cpu (``time.process_time``: every thread
of this process), thread_cpu (``time.thread_time`` of the loop thread), switches (context
switches of all threads, ``/proc/self/task/*/status``), lags (the probe's lateness per
5 ms sleep, in seconds), errors, first_error. Then ``{"event": "closed"}``. On a failure
(connecting, say): ``{"event": "error", "error": ...}``, the traceback on stderr, exit 1.
``--check`` only imports the library and prints its versions.

The phase is ``point_reads.library_phase`` on plain asyncio: N worker tasks, each looping
execute-then-read-the-``name``-value until the deadline, the same key sequence
(``random.Random(seed)``, cycled through), plus a probe task sleeping 5 ms in a loop.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import platform
import random
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

LAG_PROBE_SECONDS = 0.005
# What each client's package is called on PyPI (for its version) and imports as.
PACKAGES = {"v001": "async-cassandra", "acsylla": "acsylla"}


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def context_switches() -> int:
    total = 0
    with contextlib.suppress(OSError):
        for task in Path("/proc/self/task").iterdir():
            with contextlib.suppress(OSError):
                for line in (task / "status").read_text().splitlines():
                    if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                        total += int(line.split()[1])
    return total


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


async def phase(
    client: str, session: Any, stmt: Any, keys: list[int], concurrency: int, seconds: float
) -> dict[str, Any]:
    """``point_reads.library_phase``, on asyncio, with the client's own calls inline."""
    mask = len(keys) - 1
    counter = itertools.count()
    ops = errors = 0
    first_error: str | None = None
    lags: list[float] = []
    deadline = 0.0

    async def worker_v001() -> None:
        nonlocal ops, errors, first_error
        done = 0
        while time.perf_counter() < deadline:
            try:
                rows = await session.execute(stmt, [keys[next(counter) & mask]])
            except Exception as error:
                errors += 1
                first_error = first_error or repr(error)
                continue
            _ = rows.one().name
            done += 1
        ops += done

    async def worker_acsylla() -> None:
        nonlocal ops, errors, first_error
        done = 0
        while time.perf_counter() < deadline:
            try:
                result = await session.execute(stmt.bind([keys[next(counter) & mask]]))
            except Exception as error:
                errors += 1
                first_error = first_error or repr(error)
                continue
            _ = result.first().name
            done += 1
        ops += done

    async def probe() -> None:
        while True:
            began = time.perf_counter()
            await asyncio.sleep(LAG_PROBE_SECONDS)
            lags.append(time.perf_counter() - began - LAG_PROBE_SECONDS)

    worker = worker_v001 if client == "v001" else worker_acsylla
    prober = asyncio.create_task(probe())
    await asyncio.sleep(0)  # the probe is running before the clock starts, as in anyio
    switches0 = context_switches()
    thread0 = time.thread_time()
    cpu0 = time.process_time()
    wall0 = time.perf_counter()
    deadline = wall0 + seconds
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - wall0
    cpu = time.process_time() - cpu0
    thread = time.thread_time() - thread0
    switches = context_switches() - switches0
    prober.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await prober
    return {
        "concurrency": concurrency,
        "ops": ops,
        "seconds": wall,
        "cpu": cpu,
        "thread_cpu": thread,
        "switches": switches,
        "lags": lags,
        "errors": errors,
        "first_error": first_error,
    }


async def run(args: argparse.Namespace) -> None:
    rng = random.Random(args.seed)
    keys = [rng.randrange(args.table_rows) for _ in range(args.key_count)]
    query = f"SELECT * FROM {args.table} WHERE id = ?"
    if args.client == "v001":
        from async_cassandra import AsyncCluster

        cluster = AsyncCluster(contact_points=[args.host], port=args.port)
        session = await cluster.connect(args.keyspace)
        stmt = await session.prepare(query)
        protocol = cluster._cluster.protocol_version
    else:
        import acsylla

        cluster = acsylla.create_cluster([args.host], port=args.port, protocol_version=4)
        session = await cluster.create_session(keyspace=args.keyspace)
        stmt = await session.create_prepared(query)
        protocol = 4
    # One read outside the measurements, for the parent to check the rows are the ones
    # the table holds (and that reading ``name`` gives the value, not something lazy).
    if args.client == "v001":
        sample = (await session.execute(stmt, [keys[0]])).one().name
    else:
        sample = (await session.execute(stmt.bind([keys[0]]))).first().name
    emit(
        "ready",
        protocol_version=protocol,
        sample={"id": keys[0], "name": sample},
        **versions(args.client),
    )
    for concurrency in args.concurrency:
        for seconds in (args.warmup, args.measure):
            if not sys.stdin.readline():  # the parent went away
                return
            emit("phase", **await phase(args.client, session, stmt, keys, concurrency, seconds))
    if args.client == "v001":
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
    emit("closed")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--client", choices=sorted(PACKAGES), required=True)
    parser.add_argument("--check", action="store_true", help="print the versions and exit")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9042)
    parser.add_argument("--keyspace", default="acs_bench_point")
    parser.add_argument("--table", default="point")
    parser.add_argument(
        "--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 64, 256]
    )
    parser.add_argument("--warmup", type=float, default=1.5)
    parser.add_argument("--measure", type=float, default=6.0)
    parser.add_argument("--seed", type=int, default=20261125)
    parser.add_argument("--table-rows", type=int, default=10_000)
    parser.add_argument("--key-count", type=int, default=1 << 16)
    args = parser.parse_args()
    if args.check:
        emit("check", **versions(args.client))
        return
    try:
        asyncio.run(run(args))
    except Exception as error:
        emit("error", error=repr(error))
        raise


if __name__ == "__main__":
    main()
