"""The FastAPI example's operations as a trio program: nurseries, deadlines, cancel scopes.

Start a node first (or point ASYNC_CASSANDRA_CONTACT_POINTS at yours):

    python -m async_cassandra.testing start
    python examples/trio_app.py
    python -m async_cassandra.testing stop

What it shows:
- prepared statements made once, then used by many tasks;
- a nursery doing 200 concurrent reads under one deadline (`trio.fail_after`): the
  deadline becomes each request's driver timeout, so nothing outlives the nursery;
- a `trio.move_on_after` that gives up on a slow batch of reads and carries on: the
  cancelled reads are detached, their late answers discarded, and the session is fine;
- typed errors: a missing user is None, invalid CQL is a QueryError.
"""

from __future__ import annotations

import os
import time
import uuid

import trio

from async_cassandra import AsyncCassandraSession, AsyncCluster, QueryError

KEYSPACE = os.environ.get("CASSANDRA_KEYSPACE", "trio_app")


async def setup(session: AsyncCassandraSession) -> None:
    await session.execute(
        f"CREATE KEYSPACE IF NOT EXISTS {KEYSPACE} WITH replication = "
        "{'class': 'SimpleStrategy', 'replication_factor': 1}"
    )
    await session.set_keyspace(KEYSPACE)
    await session.execute(
        "CREATE TABLE IF NOT EXISTS users (id uuid PRIMARY KEY, name text, email text)"
    )


async def main() -> None:
    contact_points = os.environ.get("ASYNC_CASSANDRA_CONTACT_POINTS", "127.0.0.1").split(",")
    port = int(os.environ.get("ASYNC_CASSANDRA_PORT", "9042"))
    async with AsyncCluster(contact_points, port=port) as cluster:
        async with await cluster.connect() as session:
            await setup(session)
            insert = await session.prepare("INSERT INTO users (id, name, email) VALUES (?, ?, ?)")
            get_user = await session.prepare("SELECT id, name, email FROM users WHERE id = ?")

            # Create users concurrently: one task each, all inside one nursery.
            ids = [uuid.uuid4() for _ in range(50)]
            async with trio.open_nursery() as nursery:
                for number, user_id in enumerate(ids):
                    nursery.start_soon(
                        session.execute, insert, (user_id, f"user{number}", f"u{number}@x.org")
                    )
            print(f"created {len(ids)} users")

            # Get one; a missing one is simply None (the API would answer 404).
            user = (await session.execute(get_user, [ids[0]])).one()
            print(f"found {user.name} <{user.email}>")
            missing = (await session.execute(get_user, [uuid.uuid4()])).one()
            print(f"missing user -> {missing}")

            # 200 concurrent reads under one deadline.
            found: list[str] = []

            async def read(user_id: uuid.UUID) -> None:
                row = (await session.execute(get_user, [user_id])).one()
                found.append(row.name)

            began = time.perf_counter()
            with trio.fail_after(10):
                async with trio.open_nursery() as nursery:
                    for i in range(200):
                        nursery.start_soon(read, ids[i % len(ids)])
            took = time.perf_counter() - began
            print(f"200 concurrent reads in {took * 1000:.0f} ms under a 10 s deadline")

            # Give up on a batch that cannot finish in time, and carry on.
            with trio.move_on_after(0.001) as scope:
                async with trio.open_nursery() as nursery:
                    for i in range(500):
                        nursery.start_soon(read, ids[i % len(ids)])
            print(
                f"gave up on a batch after 1 ms: cancelled={scope.cancelled_caught}; "
                f"session still open: {not session.is_closed}"
            )

            try:
                await session.execute("SELEC * FROM users")
            except QueryError as error:
                print(f"invalid CQL -> {type(error).__name__} (a QueryError)")

            row = (await session.execute(get_user, [ids[1]])).one()
            print(f"and the session still serves queries: {row.name}")
            await session.execute(f"DROP KEYSPACE {KEYSPACE}")


if __name__ == "__main__":
    trio.run(main)
