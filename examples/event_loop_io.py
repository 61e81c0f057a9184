"""The opt-in EventLoopConnection next to the default connection, on asyncio and trio.

Start a node first (or point ASYNC_CASSANDRA_CONTACT_POINTS at yours):

    python -m async_cassandra.testing start
    python examples/event_loop_io.py [seconds]
    python -m async_cassandra.testing stop

For each backend and each connection class it runs 64 tasks reading rows for a few
seconds (default 2), and prints the reads per second and which thread read the answers:
the driver's reactor thread by default, the event loop's own thread with
``AsyncCluster(..., connection_class=EventLoopConnection)``. One short run says little
on a busy machine: alternate the two several times and compare medians, as
``tests/benchmarks/point_reads.py`` does. What the opt-in asks of you: the loop that
connects the cluster serves its connections, so it must run until the cluster is shut
down (see ``async_cassandra.connection``).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections import Counter
from typing import Any

import anyio

from async_cassandra import AsyncCluster
from async_cassandra.connection import EventLoopConnection

KEYSPACE = "event_loop_io_demo"
TASKS = 64


async def measure(contact_points: list[str], port: int, loop_io: bool, seconds: float) -> None:
    options: dict[str, Any] = {"connection_class": EventLoopConnection} if loop_io else {}
    async with (
        AsyncCluster(contact_points, port=port, **options) as cluster,
        await cluster.connect() as session,
    ):
        await session.execute(
            f"CREATE KEYSPACE IF NOT EXISTS {KEYSPACE} WITH replication = "
            "{'class': 'SimpleStrategy', 'replication_factor': 1}"
        )
        await session.execute(
            f"CREATE TABLE IF NOT EXISTS {KEYSPACE}.kv (k int PRIMARY KEY, v text)"
        )
        insert = await session.prepare(f"INSERT INTO {KEYSPACE}.kv (k, v) VALUES (?, ?)")
        async with anyio.create_task_group() as tasks:
            for key in range(100):
                tasks.start_soon(session.execute, insert, [key, f"value {key}"])
        select = await session.prepare(f"SELECT v FROM {KEYSPACE}.kv WHERE k = ?")

        # Where the driver calls back with each answer: the thread that read it.
        loop_thread = threading.get_ident()
        readers: Counter[str] = Counter()

        def note_reader(_rows: Any) -> None:
            here = threading.get_ident()
            readers["the event loop's thread" if here == loop_thread else "another thread"] += 1

        session.driver_session.add_request_init_listener(
            lambda future: future.add_callback(note_reader)
        )
        reads = 0
        stop = time.perf_counter() + seconds

        async def reader(offset: int) -> None:
            nonlocal reads
            key = offset
            while time.perf_counter() < stop:
                row = (await session.execute(select, [key % 100])).one()
                if row is None or row.v != f"value {key % 100}":
                    raise RuntimeError(f"key {key % 100}: read {row!r}")
                reads += 1
                key += TASKS

        began = time.perf_counter()
        async with anyio.create_task_group() as tasks:
            for offset in range(TASKS):
                tasks.start_soon(reader, offset)
        rate = reads / (time.perf_counter() - began)
        (where, _), *_ = readers.most_common(1)
        name = "EventLoopConnection" if loop_io else "default connection"
        print(f"  {name:<20} {rate:>9,.0f} reads/s; answers read on {where}")


def main() -> None:
    contact_points = os.environ.get("ASYNC_CASSANDRA_CONTACT_POINTS", "127.0.0.1").split(",")
    port = int(os.environ.get("ASYNC_CASSANDRA_PORT", "9042"))
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 2.0
    for backend in ("asyncio", "trio"):
        print(f"== {backend} ==")
        for loop_io in (False, True):
            anyio.run(measure, contact_points, port, loop_io, seconds, backend=backend)


if __name__ == "__main__":
    main()
