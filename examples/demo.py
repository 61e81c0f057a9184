"""The main job, end to end: a local Cassandra 5.0.8 node, rows written and read back
on asyncio and on trio, each step timed.

    python3 -m pip install nox && python3 -m nox -s demo

Starts its own node on 127.0.0.1 (jars from Maven Central on first use, cached after),
and stops it and deletes its data at the end, also on Ctrl-C. To use a node you already
run instead, set ASYNC_CASSANDRA_CONTACT_POINTS=127.0.0.1.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import anyio

from async_cassandra import AsyncCluster
from async_cassandra.testing import LocalCassandra


@contextmanager
def step(what: str) -> Iterator[None]:
    began = time.perf_counter()
    yield
    print(f"  {what:<44} {1000 * (time.perf_counter() - began):8.1f} ms")


async def main(contact_points: list[str], port: int, backend: str) -> None:
    keyspace = f"demo_{backend}"
    with step("create AsyncCluster (no I/O)"):
        cluster = AsyncCluster(contact_points, port=port)
    try:
        with step("connect"):
            session = await cluster.connect()
        try:
            with step("read the server version"):
                version = (await session.execute("SELECT release_version FROM system.local")).one()
            print(
                f"  server: Cassandra {version.release_version}, protocol "
                f"v{cluster.protocol_version}"
            )
            with step(f"create keyspace {keyspace}"):
                await session.execute(
                    f"CREATE KEYSPACE IF NOT EXISTS {keyspace} WITH replication = "
                    "{'class': 'SimpleStrategy', 'replication_factor': 1}"
                )
            with step("create table users"):
                await session.execute(
                    f"CREATE TABLE IF NOT EXISTS {keyspace}.users "
                    "(id uuid PRIMARY KEY, name text, email text)"
                )
            await session.set_keyspace(keyspace)
            insert = await session.prepare("INSERT INTO users (id, name, email) VALUES (?, ?, ?)")
            people = [
                ("Ada", "ada@example.com"),
                ("Grace", "grace@example.com"),
                ("Barbara", "barbara@example.com"),
            ]
            with step(f"write {len(people)} rows concurrently (task group)"):
                async with anyio.create_task_group() as tg:
                    for name, email in people:
                        tg.start_soon(session.execute, insert, (uuid.uuid4(), name, email))
            with step("read them back"):
                rows = await session.execute("SELECT id, name, email FROM users")
            for row in sorted(rows, key=lambda r: r.name):
                print(f"    {row.name:<8} {row.email:<22} {row.id}")
            with step(f"drop keyspace {keyspace}"):
                await session.execute(f"DROP KEYSPACE {keyspace}")
        finally:
            # `async with` does these two for you; here they are timed.
            with step("close the session"):
                await session.close()
    finally:
        with step("shut down the cluster"):
            await cluster.shutdown()


def run_everything(contact_points: list[str], port: int) -> None:
    for backend in ("asyncio", "trio"):
        print(f"\n== {backend} ==")
        began = time.perf_counter()
        anyio.run(main, contact_points, port, backend, backend=backend)
        print(f"  {backend} total: {time.perf_counter() - began:.2f} s")


if __name__ == "__main__":
    existing = os.environ.get("ASYNC_CASSANDRA_CONTACT_POINTS")
    if existing:
        run_everything(existing.split(","), int(os.environ.get("ASYNC_CASSANDRA_PORT", "9042")))
    else:
        print("Starting a local Cassandra 5.0.8 node on 127.0.0.1:9042 ...")
        with LocalCassandra() as node:
            print(f"  node ready in {node.start_seconds:.1f} s")
            run_everything(node.contact_points, node.native_port)
            print("\nStopping the node and deleting its data ...")
        print("done.")
