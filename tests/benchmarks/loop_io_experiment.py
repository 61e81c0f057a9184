"""Experiment (not part of the library): where the driver's connection does its socket
I/O, under this library, compared in one run.

    python tests/benchmarks/loop_io_experiment.py [--address 127.0.0.40] [--quick]
        [--backend asyncio|trio] [--classes queue,direct,loop]

Three connection classes, alternated round by round in fresh processes:

- ``queue``: the driver's libev connection as it is: every message is queued for the
  driver's reactor thread, which is woken to write it; responses are read and decoded
  there and every completion crosses to the event loop's thread.
- ``direct``: the library's default, ``_driver.DirectWriteConnection``: the same, except
  that a request alone on its connection is written by the sending thread.
- ``loop``: the opt-in ``async_cassandra.connection.EventLoopConnection``: the socket
  is served by the running loop (asyncio's reader/writer callbacks, trio's system
  tasks), the writes of one turn of the loop go out in one ``send``, and the driver's
  timers are the loop's: no reactor thread, no hand-off.

Prepared point reads at 1, 64 and 256 in flight; reported: ops/s, CPU µs per request
(the whole process), context switches per request (all its threads), loop lag p50/p99
(a task sleeping 5 ms in a loop), and the cores' worth of time its threads ran and
spent runnable in the run queue (``_bench.scheduler_seconds``). Results:
``bench-results/loop_io_experiment.json`` (``loop_io_experiment_trio.json`` on trio).

Until this experiment's prototype became ``EventLoopConnection``, ``loop`` was an
asyncio-only sketch of it; the figures of ``docs/benchmarks/loop_io_vs_direct_*.json``
and ``loop_io_experiment*.json`` were measured with that sketch.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from typing import Any

from _bench import (
    cassandra_node,
    common_args,
    context_switches,
    create_keyspace_cql,
    lag_probe,
    lag_summary,
    metadata,
    read_points_until,
    scheduler_seconds,
    write_json,
)
from cassandra.io.libevreactor import LibevConnection

KEYSPACE = "acs_bench_loop_io"
CONCURRENCY = (1, 64, 256)
CLASSES = ("queue", "direct", "loop")


def child(spec: dict[str, Any]) -> dict[str, Any]:
    """One measurement in this process: a fresh cluster with one connection class."""
    import anyio

    from async_cassandra import AsyncCluster
    from async_cassandra.connection import EventLoopConnection

    async def main() -> dict[str, Any]:
        options: dict[str, Any] = {}
        if spec["connection"] == "queue":
            options["connection_class"] = LibevConnection
        if spec["connection"] == "loop":
            options["connection_class"] = EventLoopConnection
        async with (
            AsyncCluster(spec["contact_points"], port=spec["port"], **options) as cluster,
            await cluster.connect() as session,
        ):
            select = await session.prepare(f"SELECT * FROM {KEYSPACE}.point WHERE id = ?")
            figures = {}
            for concurrency in CONCURRENCY:
                for measured in (False, True):
                    seconds = spec["seconds"] if measured else spec["seconds"] / 3
                    ops = 0
                    lags: list[float] = []
                    stop = time.perf_counter() + seconds

                    async def worker(stop: float = stop) -> None:
                        nonlocal ops
                        # Not `ops += await ...`: that reads ops before the await, and the
                        # workers would overwrite each other's counts.
                        made = await read_points_until(session, select, 1000, stop)
                        ops += made

                    switches = context_switches()
                    running, waiting = scheduler_seconds()
                    cpu, wall = time.process_time(), time.perf_counter()
                    async with anyio.create_task_group() as outer:
                        outer.start_soon(lag_probe, lags)
                        async with anyio.create_task_group() as workers:
                            for _ in range(concurrency):
                                workers.start_soon(worker)
                        outer.cancel_scope.cancel()
                    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
                    ran, waited = scheduler_seconds()
                    if measured:
                        lag = lag_summary(lags)
                        figures[str(concurrency)] = {
                            "ops_per_s": round(ops / wall, 1),
                            "cpu_us_per_op": round(cpu * 1e6 / ops, 1),
                            "lag_p50_ms": lag["p50"],
                            "lag_p99_ms": lag["p99"],
                            "switches_per_op": round((context_switches() - switches) / ops, 2),
                            "cores_running": round((ran - running) / wall, 3),
                            "cores_waiting": round((waited - waiting) / wall, 3),
                        }
            return figures

    return anyio.run(main, backend=spec["backend"])


def main() -> None:
    parser = common_args("Driver I/O on the loop's thread vs the libev reactor thread.")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--backend", choices=("asyncio", "trio"), default="asyncio")
    parser.add_argument(
        "--classes",
        default=None,
        help="comma-separated, of queue, direct, loop (default: all the backend can run)",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    classes = tuple(args.classes.split(",")) if args.classes else CLASSES
    if not classes or set(classes) - set(CLASSES):
        parser.error(f"--classes: choose from {', '.join(CLASSES)}")
    rounds = args.rounds or (1 if args.quick else 4)
    seconds = 1.5 if args.quick else 5.0
    runs: list[dict[str, Any]] = []
    with cassandra_node(args.address) as target:
        from cassandra.cluster import Cluster

        cluster = Cluster(target.contact_points, port=target.port)
        try:
            session = cluster.connect()
            session.execute(create_keyspace_cql(KEYSPACE))
            session.execute(
                f"CREATE TABLE IF NOT EXISTS {KEYSPACE}.point (id int PRIMARY KEY, v text)"
            )
            insert = session.prepare(f"INSERT INTO {KEYSPACE}.point (id, v) VALUES (?, ?)")
            for key in range(1000):
                session.execute(insert, [key, "x" * 100])
        finally:
            cluster.shutdown()
        for round_ in range(rounds):
            order = classes if round_ % 2 == 0 else classes[::-1]
            for connection in order:
                spec = {
                    "connection": connection,
                    "backend": args.backend,
                    "contact_points": target.contact_points,
                    "port": target.port,
                    "seconds": seconds,
                }
                done = subprocess.run(
                    [sys.executable, __file__, "--child", json.dumps(spec)],
                    capture_output=True,
                    text=True,
                    check=False,
                )
                if done.returncode != 0:
                    raise RuntimeError(f"{connection} failed:\n{done.stderr[-3000:]}")
                figures = json.loads(done.stdout.strip().splitlines()[-1])
                runs.append({"round": round_, "connection": connection, "figures": figures})
                print(f"round {round_ + 1} {connection:6} {figures}", flush=True)
        meta = metadata(target, None, None)
    summary = {
        connection: {
            str(n): {
                key: statistics.median(
                    r["figures"][str(n)][key] for r in runs if r["connection"] == connection
                )
                for key in (
                    "ops_per_s",
                    "cpu_us_per_op",
                    "switches_per_op",
                    "lag_p50_ms",
                    "lag_p99_ms",
                    "cores_running",
                    "cores_waiting",
                )
            }
            for n in CONCURRENCY
        }
        for connection in classes
    }
    for connection, by_n in summary.items():
        for n, figures in by_n.items():
            print(f"{connection:6} N={n:>3}: {figures}")
    path = write_json(
        args.output_dir,
        "loop_io_experiment.json" if args.backend == "asyncio" else "loop_io_experiment_trio.json",
        {
            "benchmark": "loop_io_experiment",
            "backend": args.backend,
            "metadata": meta,
            "summary": summary,
            "runs": runs,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
