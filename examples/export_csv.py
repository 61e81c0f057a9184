"""Export a table to CSV by streaming it: bounded memory, progress per page, asyncio or trio.

The getting-started guide's export example, made correct: the csv module quotes names
with commas, quotes and newlines, and the file is written by the same task that reads the
stream, page by page (at most fetch_size * (1 + read_ahead) rows in memory).

    python -m async_cassandra.testing start
    python examples/export_csv.py --seed 20000 --output users.csv            # asyncio
    python examples/export_csv.py --backend trio --output users.csv          # trio
    python -m async_cassandra.testing stop

ASYNC_CASSANDRA_CONTACT_POINTS / ASYNC_CASSANDRA_PORT point it at another cluster.
"""

from __future__ import annotations

import argparse
import csv
import os
import time
import uuid
from typing import Any

import anyio

from async_cassandra import AsyncCassandraSession, AsyncCluster
from async_cassandra.streaming import StreamConfig

KEYSPACE = "export_demo"


async def seed(session: AsyncCassandraSession, count: int) -> None:
    """Create the keyspace and table and write ``count`` users (10 writers at a time)."""
    await session.execute(
        f"CREATE KEYSPACE IF NOT EXISTS {KEYSPACE} WITH replication = "
        "{'class': 'SimpleStrategy', 'replication_factor': 1}"
    )
    await session.execute(
        f"CREATE TABLE IF NOT EXISTS {KEYSPACE}.users "
        "(id uuid PRIMARY KEY, name text, email text, created_at timestamp)"
    )
    insert = await session.prepare(
        f"INSERT INTO {KEYSPACE}.users (id, name, email, created_at) "
        "VALUES (?, ?, ?, toTimestamp(now()))"
    )
    limiter = anyio.CapacityLimiter(64)

    async def write(number: int) -> None:
        async with limiter:
            # Every 7th name has a comma and a quote: what naive f-string CSV breaks on.
            name = f'Smith, "J{number}"' if number % 7 == 0 else f"User {number}"
            await session.execute(insert, (uuid.uuid4(), name, f"user{number}@example.com"))

    async with anyio.create_task_group() as group:
        for number in range(count):
            group.start_soon(write, number)


async def export_user_data(session: AsyncCassandraSession, output_file: str) -> int:
    """Export all users to ``output_file``; returns the number of rows written."""
    config = StreamConfig(
        fetch_size=5000,
        # Runs in the event loop, between pages: safe to print or update a progress bar.
        page_callback=lambda page, rows: print(f"  page {page}: {rows} rows"),
    )
    row_count = 0
    async with await session.execute_stream(
        f"SELECT id, name, email, created_at FROM {KEYSPACE}.users", stream_config=config
    ) as stream:
        # A local file written row by row: each write is a short blocking call, the
        # same as print(); wrap the file in anyio.wrap_file for slow storage.
        with open(output_file, "w", newline="") as handle:  # noqa: ASYNC230
            writer = csv.writer(handle)
            writer.writerow(["id", "name", "email", "created_at"])
            async for row in stream:
                writer.writerow([row.id, row.name, row.email, row.created_at])
                row_count += 1
                if row_count % 10_000 == 0:
                    print(f"  exported {row_count:,} users, {stream.rows_held} rows in memory")
    return row_count


async def main(args: Any) -> None:
    contact_points = os.environ.get("ASYNC_CASSANDRA_CONTACT_POINTS", "127.0.0.1").split(",")
    port = int(os.environ.get("ASYNC_CASSANDRA_PORT", "9042"))
    async with AsyncCluster(contact_points, port=port) as cluster:
        async with await cluster.connect() as session:
            if args.seed:
                began = time.perf_counter()
                await seed(session, args.seed)
                print(f"seeded {args.seed} users in {time.perf_counter() - began:.1f} s")
            began = time.perf_counter()
            count = await export_user_data(session, args.output)
            took = time.perf_counter() - began
            print(f"Export complete! Total users: {count:,} in {took:.2f} s -> {args.output}")
            if args.drop:
                await session.execute(f"DROP KEYSPACE IF EXISTS {KEYSPACE}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    parser.add_argument("--output", default="users_export.csv")
    parser.add_argument("--seed", type=int, default=0, help="first write this many users")
    parser.add_argument("--drop", action="store_true", help="drop the keyspace afterwards")
    arguments = parser.parse_args()
    anyio.run(main, arguments, backend=arguments.backend)
