"""Parallel export: one stream feeding N worker tasks in a task group, with backpressure.

The stream pages through the table; `stream.feed(send)` pushes rows into an anyio
memory object stream; each worker owns one output file and takes rows as fast as it can
write them. When the workers are slow the buffer fills, `feed` waits, and the stream
stops asking for pages: memory stays bounded by the stream's bound plus the buffer. If a
worker fails, the task group cancels the others and the stream is closed; cancelling the
whole thing (Ctrl-C, a deadline) does the same.

For the common case `async_cassandra.streaming.fan_out(stream, handler, workers=4)` is
this pattern in one call; here it is spelled out to give each worker its own file.

    python -m async_cassandra.testing start
    python examples/export_csv.py --seed 20000          # makes export_demo.users
    python examples/parallel_export.py --workers 4 --output-dir parts/ [--backend trio]
"""

from __future__ import annotations

import argparse
import csv
import os
import time
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import ObjectReceiveStream

from async_cassandra import AsyncCluster
from async_cassandra.streaming import StreamConfig


async def worker(number: int, rows: ObjectReceiveStream[Any], directory: Path) -> int:
    written = 0
    path = directory / f"part-{number}.csv"
    async with rows, await anyio.open_file(path, "w", newline="") as handle:
        async for row in rows:
            line = f"{row.id},{_csv_field(row.name)},{_csv_field(row.email)}\n"
            await handle.write(line)  # real async file I/O: runs in a worker thread
            written += 1
    print(f"  worker {number}: {written} rows -> {path}")
    return written


def _csv_field(value: str | None) -> str:
    # csv.writer needs a sync file; quote one field the way it would.
    if value is None:
        return ""
    if any(ch in value for ch in ',"\n\r'):
        return '"' + value.replace('"', '""') + '"'
    return value


async def main(args: Any) -> None:
    contact_points = os.environ.get("ASYNC_CASSANDRA_CONTACT_POINTS", "127.0.0.1").split(",")
    port = int(os.environ.get("ASYNC_CASSANDRA_PORT", "9042"))
    directory = Path(args.output_dir)
    counts: list[int] = []
    began = time.perf_counter()
    async with AsyncCluster(contact_points, port=port) as cluster:
        async with await cluster.connect() as session:
            stream = await session.execute_stream(
                f"SELECT id, name, email FROM {args.keyspace}.users",
                stream_config=StreamConfig(fetch_size=2000, read_ahead=1),
            )
            send, receive = anyio.create_memory_object_stream[Any](max_buffer_size=1000)

            async def run_worker(number: int, rows: ObjectReceiveStream[Any]) -> None:
                counts.append(await worker(number, rows, directory))

            async with anyio.create_task_group() as group:
                with receive:  # each worker gets its own clone; this one is closed here
                    for number in range(args.workers):
                        group.start_soon(run_worker, number, receive.clone())
                group.start_soon(stream.feed, send)  # closes `send` and the stream
            print(f"most rows the stream held at once: {stream.max_rows_held}")
    took = time.perf_counter() - began
    print(f"exported {sum(counts):,} rows with {args.workers} workers in {took:.2f} s")


def count_rows(directory: Path) -> int:
    """Rows in the part files, read back with the csv module: a check a reader can trust."""
    total = 0
    for part in sorted(directory.glob("part-*.csv")):
        with part.open(newline="") as handle:
            total += sum(1 for _ in csv.reader(handle))
    return total


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--output-dir", default="export-parts")
    parser.add_argument("--keyspace", default="export_demo")
    arguments = parser.parse_args()
    output = Path(arguments.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    for old_part in output.glob("part-*.csv"):
        old_part.unlink()
    anyio.run(main, arguments, backend=arguments.backend)
    print(f"rows in the part files: {count_rows(output):,}")
