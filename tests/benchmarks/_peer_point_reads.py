"""The point-read loop of ``point_reads.py`` for a peer library, in that library's venv.

    <venv>/bin/python -I _peer_point_reads.py --client v001|acsylla --host H --port P
        --keyspace K --concurrency 1,64,256 --warmup S --measure S

Peers that cannot share a process with this project (async-cassandra 0.0.1 has our import
name; acsylla has its own venv) run here, in a subprocess ``point_reads.py`` drives. The
standard library, the peer's client library and two siblings only: ``_peer_common`` (what
the peer runners share) and ``_bench``'s /proc readers (standard library only at module
level). ``-I`` keeps the repository root off ``sys.path`` (its ``async_cassandra`` would
shadow 0.0.1's); this script puts its own folder there, which holds none: never the
``async_cassandra`` of this repository.

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
import itertools
import random
import sys
import time
from pathlib import Path
from typing import Any

# ``python -I`` leaves the script's folder off sys.path: put this folder (and only it)
# first, for the siblings below. It holds no ``async_cassandra``, unlike the repository
# root, which stays off (its package would shadow 0.0.1's).
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _bench import context_switches
from _peer_common import LagProbe, argument_parser, close, connect, emit, parse_args, versions


async def phase(
    client: str, session: Any, stmt: Any, keys: list[int], concurrency: int, seconds: float
) -> dict[str, Any]:
    """``point_reads.library_phase``, on asyncio, with the client's own calls inline."""
    mask = len(keys) - 1
    counter = itertools.count()
    ops = errors = 0
    first_error: str | None = None
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

    worker = worker_v001 if client == "v001" else worker_acsylla
    # The probe is running before the clock starts, as in anyio.
    async with LagProbe() as probe:
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
    return {
        "concurrency": concurrency,
        "ops": ops,
        "seconds": wall,
        "cpu": cpu,
        "thread_cpu": thread,
        "switches": switches,
        "lags": probe.lags,
        "errors": errors,
        "first_error": first_error,
    }


async def run(args: argparse.Namespace) -> None:
    rng = random.Random(args.seed)
    keys = [rng.randrange(args.table_rows) for _ in range(args.key_count)]
    query = f"SELECT * FROM {args.table} WHERE id = ?"
    cluster, session, protocol = await connect(args.client, args.host, args.port, args.keyspace)
    if args.client == "v001":
        stmt = await session.prepare(query)
    else:
        stmt = await session.create_prepared(query)
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
    await close(args.client, cluster, session)
    emit("closed")


def main() -> None:
    parser = argument_parser(__doc__.split("\n", 1)[0])
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
    args = parse_args(parser)
    try:
        asyncio.run(run(args))
    except Exception as error:
        emit("error", error=repr(error))
        raise


if __name__ == "__main__":
    main()
