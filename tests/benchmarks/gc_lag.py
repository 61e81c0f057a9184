"""Event-loop lag and the cycle collector under point reads, for quick A/B checks.

    python tests/benchmarks/gc_lag.py [--backend asyncio|trio] [--concurrency 256]
        [--seconds 4] [--freeze] [--address 127.0.0.40]

Starts a node (or uses the one named by ``ASYNC_CASSANDRA_CONTACT_POINTS``), then runs
prepared point reads with N tasks for a fixed time while a task sleeping 5 ms in a loop
records how late it wakes, and ``gc.callbacks`` time every collection. Prints ops/s,
CPU µs per request (the whole process), lag p50/p99/max, and the collections: how
many, their total and longest time, and each full (generation 2) collection with the
objects it found unreachable. ``--freeze`` calls ``gc.freeze()`` after connecting (the
README's advice for services). To compare two versions of the library, run this
script alternately with each one on ``PYTHONPATH``, several times, and compare medians:
the figures the README quotes for the reference-cycle fix and the batched completions
came from such runs (4 s each, 256 in flight).
"""

from __future__ import annotations

import argparse
import gc
import time
from typing import Any

import anyio
from _bench import (
    cassandra_node,
    common_args,
    create_keyspace_cql,
    lag_probe,
    lag_summary,
    read_points_until,
)

from async_cassandra import AsyncCluster

KEYSPACE = "acs_bench_gc_lag"


class Collections:
    """Every collection of the cycle collector: (generation, seconds, unreachable found)."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, float, int]] = []
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.seen.append(
                (info["generation"], time.perf_counter() - self._started, info["collected"])
            )


async def run(args: argparse.Namespace, contact_points: list[str], port: int) -> None:
    collections = Collections()
    async with (
        AsyncCluster(contact_points, port=port) as cluster,
        await cluster.connect() as session,
    ):
        await session.execute(create_keyspace_cql(KEYSPACE))
        await session.execute(
            f"CREATE TABLE IF NOT EXISTS {KEYSPACE}.t (id int PRIMARY KEY, v text)"
        )
        insert = await session.prepare(f"INSERT INTO {KEYSPACE}.t (id, v) VALUES (?, ?)")
        for key in range(100):
            await session.execute(insert, [key, "x" * 100])
        select = await session.prepare(f"SELECT * FROM {KEYSPACE}.t WHERE id = ?")
        if args.freeze:
            gc.freeze()
        ops = 0
        lags: list[float] = []

        async def worker(stop: float) -> None:
            nonlocal ops
            # Not `ops += await ...`: that reads ops before the await, and the
            # workers would overwrite each other's counts.
            made = await read_points_until(session, select, 100, stop)
            ops += made

        async def phase(seconds: float, measured: bool) -> tuple[float, float]:
            stop = time.perf_counter() + seconds
            cpu, wall = time.process_time(), time.perf_counter()
            async with anyio.create_task_group() as outer:
                if measured:
                    outer.start_soon(lag_probe, lags)
                async with anyio.create_task_group() as workers:
                    for _ in range(args.concurrency):
                        workers.start_soon(worker, stop)
                outer.cancel_scope.cancel()
            return time.process_time() - cpu, time.perf_counter() - wall

        await phase(1.0, measured=False)  # warm-up
        ops = 0
        gc.callbacks.append(collections)
        try:
            cpu, wall = await phase(args.seconds, measured=True)
        finally:
            gc.callbacks.remove(collections)
    lag = lag_summary(lags)
    seen = collections.seen
    full = [
        (round(seconds * 1e3, 1), found) for generation, seconds, found in seen if generation == 2
    ]
    print(
        f"{args.backend}{' +freeze' if args.freeze else ''} {args.concurrency} in flight: "
        f"{ops / wall:,.0f} ops/s, {cpu * 1e6 / ops:.1f} µs CPU/request; lag "
        f"p50 {lag['p50']:.1f} p99 {lag['p99']:.1f} max {lag['max']:.1f} ms; "
        f"{len(seen)} collections, "
        f"{sum(s for _, s, _ in seen) * 1e3:.0f} ms in all, longest "
        f"{max((s for _, s, _ in seen), default=0) * 1e3:.1f} ms; full collections "
        f"(ms, unreachable found): {full}"
    )


def main() -> None:
    parser = common_args("Loop lag and the cycle collector under point reads.")
    parser.add_argument("--backend", choices=("asyncio", "trio"), default="asyncio")
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--freeze", action="store_true", help="gc.freeze() after connecting")
    args = parser.parse_args()
    with cassandra_node(args.address) as target:
        anyio.run(run, args, target.contact_points, target.port, backend=args.backend)


if __name__ == "__main__":
    main()
