"""The first path through the library against the real local node, on both backends."""

from __future__ import annotations

import logging

import pytest

from async_cassandra import AsyncCassandraSession, AsyncCluster

pytestmark = pytest.mark.anyio


async def test_server_is_cassandra_5_0_8(session: AsyncCassandraSession) -> None:
    result = await session.execute("SELECT release_version FROM system.local")
    assert result.one().release_version == "5.0.8"


async def test_protocol_v5_is_negotiated(cluster: AsyncCluster) -> None:
    assert cluster.protocol_version == 5


async def test_driver_uses_the_libev_reactor(cluster: AsyncCluster) -> None:
    from cassandra.io.libevreactor import LibevConnection

    # The library's subclass of it, which writes a lone request from the sending thread.
    assert issubclass(cluster.driver_cluster.connection_class, LibevConnection)


async def test_write_then_read_rows(session: AsyncCassandraSession, ks: str) -> None:
    await session.execute(f"CREATE TABLE {ks}.users (id int PRIMARY KEY, name text)")
    for i in range(5):
        await session.execute(f"INSERT INTO {ks}.users (id, name) VALUES (%s, %s)", (i, f"u{i}"))
    rows = await session.execute(f"SELECT id, name FROM {ks}.users")
    assert sorted((r.id, r.name) for r in rows) == [(i, f"u{i}") for i in range(5)]


async def test_own_cluster_and_session_as_context_managers(
    cassandra_node: object, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    node = cassandra_node
    async with AsyncCluster(node.contact_points, port=node.port) as cluster:  # type: ignore[attr-defined]
        async with await cluster.connect() as session:
            assert (await session.execute("SELECT key FROM system.local")).one().key == "local"
        assert session.is_closed
    assert cluster.is_closed
    # Negotiating the protocol and the driver's default load balancing are what we
    # want: the driver's warnings about them are not passed on.
    assert [r.getMessage() for r in caplog.records] == []
