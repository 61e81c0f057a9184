"""The monitored example (examples/monitored_app.py, written with 0.0.1's monitoring
calls) against the real test node, through its lifespan, on asyncio and on trio."""

from __future__ import annotations

from typing import Any

import anyio
import httpx
import pytest
from _helpers import load_example, wait_until
from asgi_lifespan import LifespanManager

pytestmark = pytest.mark.anyio

example = load_example("monitored_app.py", "monitored_example_app")


async def test_the_monitored_app_serves_and_reports(
    cassandra_node: Any, cassandra_keyspace: str
) -> None:
    app = example.create_app(
        contact_points=cassandra_node.contact_points,
        port=cassandra_node.port,
        keyspace=cassandra_keyspace,
        max_concurrent=4,
        monitor_interval=0.2,
    )
    async with (
        LifespanManager(app, startup_timeout=60, shutdown_timeout=30),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client,
    ):
        session = app.state.session
        assert session.session.max_concurrent_requests == 4
        ids: list[str] = []

        async def create(n: int) -> None:
            response = await client.post("/users", json={"name": f"u{n}", "email": f"{n}@x.y"})
            assert response.status_code == 201
            ids.append(response.json()["id"])

        async with anyio.create_task_group() as group:
            for n in range(20):
                group.start_soon(create, n)
        fetched = await client.get(f"/users/{ids[0]}")
        assert fetched.status_code == 200
        assert (await client.get(f"/users/{'0' * 8}-0000-4000-8000-{'0' * 12}")).status_code == 404

        health = (await client.get("/health")).json()
        assert (health["total_hosts"], health["up_hosts"], health["down_hosts"]) == (1, 1, 0)
        cluster = (await client.get("/metrics/cluster")).json()
        (host,) = cluster["hosts"]
        assert host["status"] == "up"
        assert host["latency_ms"] > 0
        assert set(host) == {
            "address",
            "datacenter",
            "rack",
            "status",
            "latency_ms",
            "last_check",
            "last_error",
        }
        queries = (await client.get("/metrics/queries")).json()
        assert queries["query_performance"]["total_queries"] >= 22  # 20 writes, 2 reads
        limits = (await client.get("/metrics/rate-limit")).json()
        assert limits["total_requests"] >= 22
        assert limits["active_requests"] == 0
        monitor = app.state.monitor
        await wait_until(
            lambda: monitor.metrics["last_health_check"] is not None, "a round of monitoring"
        )
        owned = session.session._owned_cluster
    # The lifespan's end stopped the monitoring and closed the session and its cluster.
    assert session.session.is_closed
    assert owned.is_closed
    assert monitor not in session.session.observers
