"""A monitored, rate-limited FastAPI service, built the way async-cassandra 0.0.1's
"enhanced" FastAPI example builds one, with the same calls: ``create_monitored_session``,
``RateLimitedSession``, ``ConnectionMonitor``, ``create_metrics_system``.

Run it::

    python -m async_cassandra.testing start
    pip install fastapi uvicorn
    uvicorn monitored_app:app --app-dir examples

What differs from 0.0.1 under the same code: the monitoring loop runs in the
monitor's task group, owned by the lifespan (0.0.1 left an unowned task behind); the
rate limit is the session's own bound, an ``await`` on asyncio and trio alike (0.0.1
stacked an asyncio semaphore on top); the health check of each host is sent to that
host (0.0.1's went wherever the load balancer sent it); metrics are recorded as each
request ends, without a task per query; and closing the session closes the cluster that
``create_monitored_session`` made for it.

Endpoints: ``GET /health`` (hosts up and down, no I/O), ``GET /metrics/cluster`` (each
host checked now), ``GET /metrics/queries`` (query statistics), ``GET /metrics/rate-limit``
(the wrapper's counters), ``POST /users`` and ``GET /users/{id}``.
"""

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from pydantic import BaseModel, Field

from async_cassandra import (
    ConnectionMonitor,
    InMemoryMetricsCollector,
    RateLimitedSession,
    create_metrics_system,
    create_monitored_session,
)

__all__ = ["app", "create_app"]


class UserIn(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    email: str = Field(min_length=3, max_length=320)


def create_app(
    contact_points: list[str] | None = None,
    port: int | None = None,
    keyspace: str = "monitored_demo",
    max_concurrent: int = 100,
    monitor_interval: float = 30.0,
) -> FastAPI:
    """The service; ``contact_points`` and ``port`` default to ``CASSANDRA_CONTACT_POINTS``
    and ``CASSANDRA_PORT`` (127.0.0.1:9042). Nothing connects until the lifespan."""
    if contact_points is None:
        raw = os.environ.get("CASSANDRA_CONTACT_POINTS", "127.0.0.1")
        contact_points = [host.strip() for host in raw.split(",") if host.strip()]
    if port is None:
        port = int(os.environ.get("CASSANDRA_PORT", "9042"))
    metrics = create_metrics_system(backend="memory")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        session, monitor = await create_monitored_session(
            contact_points=contact_points,
            max_concurrent=max_concurrent,
            warmup=True,
            port=port,
        )
        assert isinstance(session, RateLimitedSession)
        try:
            session.add_observer(metrics)  # the wrapped session's
            await session.execute(
                f"CREATE KEYSPACE IF NOT EXISTS {keyspace} WITH replication = "
                "{'class': 'SimpleStrategy', 'replication_factor': 1}"
            )
            await session.execute(
                f"CREATE TABLE IF NOT EXISTS {keyspace}.users "
                "(id uuid PRIMARY KEY, name text, email text)"
            )
            app.state.insert = await session.prepare(
                f"INSERT INTO {keyspace}.users (id, name, email) VALUES (?, ?, ?)"
            )
            app.state.select = await session.prepare(
                f"SELECT id, name, email FROM {keyspace}.users WHERE id = ?"
            )
            app.state.session, app.state.monitor = session, monitor
            # 0.0.1's calls: the monitoring runs in the monitor's own task group,
            # entered here and left (monitoring stopped) before the session closes.
            async with monitor:
                await monitor.start_monitoring(interval=monitor_interval)
                yield
        finally:
            await session.session.close()  # also shuts down its cluster

    app = FastAPI(title="async-cassandra monitored example", lifespan=lifespan)

    @app.get("/health")
    async def health(request: Request) -> dict[str, Any]:
        monitor: ConnectionMonitor = request.app.state.monitor
        return monitor.get_connection_summary()

    @app.get("/metrics/cluster")
    async def cluster_metrics(request: Request) -> dict[str, Any]:
        monitor: ConnectionMonitor = request.app.state.monitor
        metrics_now = await monitor.get_cluster_metrics()
        return {
            "cluster_name": metrics_now.cluster_name,
            "protocol_version": metrics_now.protocol_version,
            "healthy_hosts": metrics_now.healthy_hosts,
            "unhealthy_hosts": metrics_now.unhealthy_hosts,
            "hosts": [
                {
                    "address": h.address,
                    "datacenter": h.datacenter,
                    "rack": h.rack,
                    "status": h.status,
                    "latency_ms": h.latency_ms,
                    "last_check": h.last_check.isoformat() if h.last_check else None,
                    "last_error": h.last_error,
                }
                for h in metrics_now.hosts
            ],
            "app_metrics": {
                k: v.isoformat() if hasattr(v, "isoformat") else v
                for k, v in metrics_now.app_metrics.items()
            },
        }

    @app.get("/metrics/queries")
    async def query_metrics() -> dict[str, Any]:
        (collector,) = metrics.collectors
        assert isinstance(collector, InMemoryMetricsCollector)
        return await collector.get_stats()

    @app.get("/metrics/rate-limit")
    async def rate_limit(request: Request) -> dict[str, int]:
        session: RateLimitedSession = request.app.state.session
        return session.get_metrics()

    @app.post("/users", status_code=201)
    async def create_user(body: UserIn, request: Request) -> dict[str, str]:
        user_id = uuid.uuid4()
        await request.app.state.session.execute(
            request.app.state.insert, [user_id, body.name, body.email]
        )
        return {"id": str(user_id), "name": body.name, "email": body.email}

    @app.get("/users/{user_id}")
    async def get_user(user_id: uuid.UUID, request: Request) -> dict[str, str]:
        row = (await request.app.state.session.execute(request.app.state.select, [user_id])).one()
        if row is None:
            raise HTTPException(status_code=404, detail="user not found")
        return {"id": str(row.id), "name": row.name, "email": row.email}

    return app


app = create_app()
