"""Every code block of the getting-started guide of the library we replace runs here.

The snippets are kept as the guide has them ('localhost', 'my_keyspace', a ``users``
table) and run against the suite's node: the asyncio ones with ``asyncio.run`` exactly
as written, the backend-neutral ones on trio as well. Where the guide documents a
limitation (streams leak unless closed), the test shows we do better.
"""

from __future__ import annotations

import asyncio
import gc
import os
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from _helpers import wait_until

from async_cassandra import AsyncCluster, ConfigurationError, ConnectionError, QueryError
from async_cassandra.streaming import StreamConfig


@pytest.fixture
def my_keyspace(cassandra_node: Any, cassandra_driver_session: Any) -> Iterator[list[uuid.UUID]]:
    """The guide's ``my_keyspace.users``, with a few users; yields their ids."""
    if cassandra_node.contact_points != ["127.0.0.1"] or cassandra_node.port != 9042:
        pytest.fail("the guide's snippets talk to localhost:9042: run the node there")
    driver = cassandra_driver_session
    driver.execute(
        "CREATE KEYSPACE IF NOT EXISTS my_keyspace WITH replication = "
        "{'class': 'SimpleStrategy', 'replication_factor': 1}"
    )
    driver.execute(
        "CREATE TABLE IF NOT EXISTS my_keyspace.users "
        "(id uuid PRIMARY KEY, name text, email text, created_at timestamp)"
    )
    driver.execute("TRUNCATE my_keyspace.users")
    ids = [uuid.uuid4() for _ in range(12)]
    for number, user_id in enumerate(ids):
        driver.execute(
            "INSERT INTO my_keyspace.users (id, name, email, created_at) "
            "VALUES (%s, %s, %s, toTimestamp(now()))",
            (user_id, f"User {number}", f"user{number}@example.com"),
        )
    yield ids
    driver.execute("DROP KEYSPACE IF EXISTS my_keyspace")


# --- "Your First async-cassandra Program" ------------------------------------------


async def first_program() -> None:
    # 1. Create a cluster object (doesn't connect yet)
    cluster = AsyncCluster(["localhost"])

    # 2. Connect and get a session (this is where connection happens)
    session = await cluster.connect("my_keyspace")

    # 3. Execute a query (waits for results without blocking)
    result = await session.execute("SELECT * FROM users LIMIT 10")

    # 4. Process results (rows are like dictionaries)
    for row in result:
        print(f"User: {row.name}, Email: {row.email}")

    # 5. Clean up (IMPORTANT: always close connections)
    await cluster.shutdown()


@pytest.mark.parametrize("run", [asyncio.run, trio.run], ids=["asyncio", "trio"])
def test_first_program(my_keyspace: list[uuid.UUID], run: Any, capsys: Any) -> None:
    run(first_program) if run is trio.run else run(first_program())
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 10
    assert all(line.startswith("User: User ") and "@example.com" in line for line in lines)


# --- "Using Context Managers" / manual cleanup ----------------------------------------


@pytest.mark.anyio
async def test_manual_cleanup(my_keyspace: list[uuid.UUID]) -> None:
    cluster = AsyncCluster(["localhost"])
    session = await cluster.connect("my_keyspace")
    try:
        result = await session.execute("SELECT * FROM users")
    finally:
        await session.close()  # You must remember this
        await cluster.shutdown()  # And this!
    assert len(result) == 12
    assert session.is_closed
    assert cluster.is_closed


@pytest.mark.anyio
async def test_context_managers(my_keyspace: list[uuid.UUID]) -> None:
    async with AsyncCluster(["localhost"]) as cluster:
        async with await cluster.connect("my_keyspace") as session:
            result = await session.execute("SELECT * FROM users")
            # Python automatically calls close() and shutdown() for you
    assert {row.id for row in result} == set(my_keyspace)
    assert session.is_closed
    assert cluster.is_closed


# --- "Authentication" -------------------------------------------------------------------


@pytest.mark.anyio
async def test_authentication(cassandra_auth_node: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    contact_points = cassandra_auth_node.contact_points  # the auth node, not localhost
    cluster = AsyncCluster.create_with_auth(
        contact_points=contact_points, username="cassandra", password="cassandra"
    )

    # Then connect as usual
    session = await cluster.connect()
    assert (await session.execute("SELECT key FROM system.local")).one().key == "local"
    await cluster.shutdown()

    monkeypatch.setenv("CASSANDRA_USER", "cassandra")
    monkeypatch.setenv("CASSANDRA_PASS", "cassandra")
    cluster = AsyncCluster.create_with_auth(
        contact_points=contact_points,
        username=os.environ["CASSANDRA_USER"],
        password=os.environ["CASSANDRA_PASS"],
    )
    async with cluster, await cluster.connect() as session:
        rows = await session.execute("SELECT role FROM system_auth.roles")
        assert "cassandra" in {row.role for row in rows}


@pytest.mark.anyio
async def test_client_tls(cassandra_tls_node: Any) -> None:
    async with (
        AsyncCluster(
            cassandra_tls_node.contact_points,
            port=cassandra_tls_node.port,
            ssl_context=cassandra_tls_node.ssl_context(),
        ) as cluster,
        await cluster.connect() as session,
    ):
        row = (await session.execute("SELECT release_version FROM system.local")).one()
        assert row.release_version == "5.0.8"


# --- "Prepared Statements" ---------------------------------------------------------------


@pytest.mark.anyio
async def test_prepared_statements(my_keyspace: list[uuid.UUID], capsys: Any) -> None:
    async with (
        AsyncCluster(["localhost"]) as cluster,
        await cluster.connect("my_keyspace") as session,
    ):
        user_id = my_keyspace[0]
        # ❌ This will NOT work - direct parameters not supported
        with pytest.raises(QueryError, match="prepare"):
            await session.execute("SELECT * FROM users WHERE id = ?", [user_id])

        # ✅ This works - prepare first, then execute
        prepared = await session.prepare("SELECT * FROM users WHERE id = ?")
        result = await session.execute(prepared, [user_id])
        assert result.one().id == user_id

        # Prepare once (usually at startup)
        user_query = await session.prepare("SELECT * FROM users WHERE id = ?")
        insert_stmt = await session.prepare("INSERT INTO users (id, name, email) VALUES (?, ?, ?)")

        # Execute many times with different parameters
        user_ids = my_keyspace[:3]
        for user_id in user_ids:
            result = await session.execute(user_query, [user_id])
            user = result.one()
            print(user)

        # Insert new users
        await session.execute(insert_stmt, [uuid.uuid4(), "Alice", "alice@example.com"])
        everyone = await session.execute("SELECT name FROM users")
    assert "Alice" in {row.name for row in everyone}
    assert capsys.readouterr().out.count("Row(id=") == 3


# --- "Error Handling" --------------------------------------------------------------------


@pytest.mark.anyio
async def test_common_error_types(my_keyspace: list[uuid.UUID], capsys: Any) -> None:
    async with (
        AsyncCluster(["localhost"]) as cluster,
        await cluster.connect("my_keyspace") as session,
    ):
        for query in ("SELECT * FROM users", "SELECT * FROM no_such_table"):
            try:
                result = await session.execute(query)
            except ConnectionError as e:
                print(f"Connection failed: {e}")
            except QueryError as e:
                print(f"Query failed: {e}")
    assert len(result) == 12
    out = capsys.readouterr().out
    assert out.startswith("Query failed: ")
    assert "no_such_table" in out


async def get_user_with_retry(session: Any, user_id: Any, max_retries: int = 3) -> Any:
    """Get user with automatic retry on connection errors."""
    for attempt in range(max_retries):
        try:
            prepared = await session.prepare("SELECT * FROM users WHERE id = ?")
            result = await session.execute(prepared, [user_id])
            return result.one()

        except ConnectionError:
            if attempt == max_retries - 1:
                # Final attempt failed, re-raise
                raise
            # Wait before retry (exponential backoff)
            wait_time = 2**attempt
            print(f"Connection failed, retrying in {wait_time}s...")
            await asyncio.sleep(wait_time)

        except QueryError as e:
            # Don't retry query errors - they won't fix themselves
            print(f"Query error (not retrying): {e}")
            raise
    return None


def test_real_world_error_handling_with_retry(my_keyspace: list[uuid.UUID], capsys: Any) -> None:
    async def main() -> None:
        async with AsyncCluster(["localhost"]) as cluster:
            session = await cluster.connect("my_keyspace")
            user = await get_user_with_retry(session, my_keyspace[1])
            assert user.id == my_keyspace[1]

            await session.close()  # from now on every attempt fails to connect
            with pytest.raises(ConnectionError):
                await get_user_with_retry(session, my_keyspace[1], max_retries=2)

            broken = await cluster.connect("my_keyspace")
            broken.driver_session.execute("DROP TABLE users")
            with pytest.raises(QueryError):
                await get_user_with_retry(broken, my_keyspace[1])

    asyncio.run(main())
    out = capsys.readouterr().out
    assert out.count("Connection failed, retrying in 1s...") == 1
    assert "Query error (not retrying)" in out


# --- "Streaming Large Result Sets" ----------------------------------------------------


@pytest.mark.anyio
async def test_streaming_snippets(my_keyspace: list[uuid.UUID]) -> None:
    processed: list[Any] = []

    async def process_row(row: Any) -> None:
        processed.append(row)

    async with (
        AsyncCluster(["localhost"]) as cluster,
        await cluster.connect("my_keyspace") as session,
    ):
        # The streaming solution
        config = StreamConfig(fetch_size=5)
        async with await session.execute_stream(
            "SELECT * FROM users", stream_config=config
        ) as result:
            async for row in result:
                await process_row(row)
        assert result.is_closed

        # Alternative - try/finally
        query = "SELECT * FROM users"
        result = await session.execute_stream(query, stream_config=config)
        try:
            async for row in result:
                await process_row(row)
        finally:
            await result.close()

        # "NEVER DO THIS - Memory Leak": here it does not leak. A stream read to the
        # end releases everything by itself ...
        result = await session.execute_stream(query, stream_config=config)
        async for row in result:
            await process_row(row)
        assert result.is_closed
        assert session.requests_registered == 0

        # ... and one dropped half-read is freed too, with a ResourceWarning.
        result = await session.execute_stream(query, stream_config=config)
        await result.__anext__()
        with pytest.warns(ResourceWarning, match="never closed"):  # noqa: PT031
            del result
            gc.collect()
        # A read-ahead page may still be on its way: its callbacks go when it lands.
        await wait_until(lambda: session.requests_registered == 0, "the stream is released")
    assert len(processed) == 36


async def export_user_data(session: Any, output_file: Any) -> int:
    """Export all users to a CSV file using streaming."""
    config = StreamConfig(
        fetch_size=5000,  # Process 5000 rows at a time
        page_callback=lambda page_num, rows: print(f"Processing page {page_num}..."),
    )

    # CRITICAL: Use context manager for automatic cleanup
    async with await session.execute_stream(
        "SELECT id, name, email, created_at FROM users", stream_config=config
    ) as result:
        with open(output_file, "w") as f:  # noqa: ASYNC230 - the guide's code, unchanged
            f.write("id,name,email,created_at\n")

            row_count = 0
            async for row in result:
                f.write(f"{row.id},{row.name},{row.email},{row.created_at}\n")
                row_count += 1

                # Progress update every 10,000 rows
                if row_count % 10000 == 0:
                    print(f"Exported {row_count:,} users...")

    # Result is automatically closed here, preventing memory leaks
    print(f"Export complete! Total users: {row_count:,}")
    return row_count


def test_complete_streaming_example(
    my_keyspace: list[uuid.UUID], tmp_path: Path, capsys: Any
) -> None:
    output = tmp_path / "users_export.csv"

    async def main() -> None:
        async with AsyncCluster(["localhost"]) as cluster:
            async with await cluster.connect("my_keyspace") as session:
                await export_user_data(session, output)

    asyncio.run(main())
    lines = output.read_text().splitlines()
    assert lines[0] == "id,name,email,created_at"
    assert {line.split(",")[0] for line in lines[1:]} == {str(i) for i in my_keyspace}
    out = capsys.readouterr().out
    assert "Processing page 1..." in out
    assert "Export complete! Total users: 12" in out

    trio.run(main)  # the same code is backend-neutral
    assert len(output.read_text().splitlines()) == 13


# --- "Protocol Version Configuration" ----------------------------------------------


@pytest.mark.anyio
async def test_protocol_version_configuration(my_keyspace: list[uuid.UUID], capsys: Any) -> None:
    # Option 1: Automatic negotiation (RECOMMENDED)
    cluster = AsyncCluster(["localhost"])  # Gets v5 (highest currently supported)
    async with cluster, await cluster.connect():
        assert cluster.protocol_version == 5

    # Option 2: Explicitly specify v5
    cluster = AsyncCluster(["localhost"], protocol_version=5)  # Forces v5 exactly
    async with cluster, await cluster.connect():
        assert cluster.protocol_version == 5

    # ❌ This will raise ConfigurationError
    with pytest.raises(ConfigurationError, match="Protocol version 4 is not supported"):
        cluster = AsyncCluster(["localhost"], protocol_version=4)

    # Error when using old protocol
    try:
        cluster = AsyncCluster(["localhost"], protocol_version=3)
    except ConfigurationError as e:
        print(e)
    assert capsys.readouterr().out.startswith(
        "Protocol version 3 is not supported. async-cassandra requires CQL protocol v5 or higher"
    )


# --- "FastAPI Example", exactly as the guide has it (the made-right version lives in
# examples/fastapi_app and has its own tests) ------------------------------------------


def test_fastapi_example_from_the_guide(my_keyspace: list[uuid.UUID]) -> None:
    import httpx
    from asgi_lifespan import LifespanManager
    from fastapi import FastAPI, HTTPException

    # The guide uses on_event, which FastAPI deprecates (its lifespan handler replaces
    # it; see examples/fastapi_app). The guide's code must still run unchanged.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        app = FastAPI()

        # Global variables for cluster and session
        cluster = None
        session = None
        prepared_statements: dict[str, Any] = {}

        @app.on_event("startup")
        async def startup() -> None:
            """Initialize Cassandra connection when server starts."""
            nonlocal cluster, session, prepared_statements

            # Create cluster connection
            cluster = AsyncCluster(["localhost"])
            session = await cluster.connect("my_keyspace")

            # Prepare statements once at startup (more efficient)
            prepared_statements["get_user"] = await session.prepare(
                "SELECT * FROM users WHERE id = ?"
            )
            prepared_statements["create_user"] = await session.prepare(
                "INSERT INTO users (id, name, email) VALUES (?, ?, ?)"
            )

        @app.on_event("shutdown")
        async def shutdown() -> None:
            """Clean up when server stops."""
            if cluster:
                await cluster.shutdown()

    @app.get("/users/{user_id}")
    async def get_user(user_id: str) -> dict[str, str]:
        """Get a user by ID."""
        try:
            # Convert string to UUID
            user_uuid = uuid.UUID(user_id)

            # Execute prepared statement
            result = await session.execute(prepared_statements["get_user"], [user_uuid])

            user = result.one()
            if not user:
                raise HTTPException(status_code=404, detail="User not found")

            return {"id": str(user.id), "name": user.name, "email": user.email}

        except ValueError:
            raise HTTPException(status_code=400, detail="Invalid user ID format") from None
        except Exception as e:
            raise HTTPException(status_code=500, detail=str(e)) from e

    @app.post("/users")
    async def create_user(name: str, email: str) -> dict[str, str]:
        """Create a new user."""
        user_id = uuid.uuid4()

        await session.execute(prepared_statements["create_user"], [user_id, name, email])

        return {"id": str(user_id), "name": name, "email": email}

    async def drive() -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            async with LifespanManager(app):
                transport = httpx.ASGITransport(app=app)
                async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                    created = await client.post("/users", params={"name": "Eve", "email": "e@x"})
                    assert created.status_code == 200
                    user_id = created.json()["id"]
                    fetched = await client.get(f"/users/{user_id}")
                    assert fetched.json() == {"id": user_id, "name": "Eve", "email": "e@x"}
                    assert (await client.get("/users/not-a-uuid")).status_code == 400
        assert cluster is not None
        assert cluster.is_closed

    asyncio.run(drive())
