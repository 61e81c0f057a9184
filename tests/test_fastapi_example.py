"""The FastAPI example (examples/fastapi_app/app.py) against the real test node, through
its lifespan, on asyncio and on trio."""

from __future__ import annotations

import csv
import io
import logging
import uuid
from collections.abc import AsyncIterator, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
import prometheus_client
import pytest
from _helpers import load_example, wait_until
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import async_cassandra
from async_cassandra.otel import OpenTelemetryObserver

pytestmark = pytest.mark.anyio

PAGING_KEY = b"k" * 32

example = load_example("fastapi_app/app.py", "fastapi_example_app")


@asynccontextmanager
async def running_app(
    node: Any, keyspace: str, **options: Any
) -> AsyncIterator[tuple[httpx.AsyncClient, FastAPI]]:
    """The app with its lifespan running, and a client for it.

    A context manager rather than an async fixture, so the lifespan's task group is
    entered and left in the test's own task (trio insists on that).
    """
    app = example.create_app(
        contact_points=node.contact_points,
        port=node.port,
        keyspace=keyspace,
        paging_key=PAGING_KEY,
        **options,
    )
    # Start-up connects and creates two tables: more than asgi-lifespan's default 5 s
    # on a busy machine.
    async with (
        LifespanManager(app, startup_timeout=60, shutdown_timeout=30),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client,
    ):
        yield client, app


async def create_users(client: httpx.AsyncClient, users: list[dict[str, str]]) -> list[str]:
    """POST every user, 16 at a time; return their ids in order."""
    ids: list[str] = [""] * len(users)
    limiter = anyio.CapacityLimiter(16)

    async def post(index: int, user: dict[str, str]) -> None:
        async with limiter:
            response = await client.post("/users", json=user)
        assert response.status_code == 201, response.text
        ids[index] = response.json()["id"]

    async with anyio.create_task_group() as group:
        for index, user in enumerate(users):
            group.start_soon(post, index, user)
    return ids


def team_of(team: str, count: int) -> list[dict[str, str]]:
    return [
        {"name": f"{team} user {i}", "email": f"{team}{i}@example.com", "team": team}
        for i in range(count)
    ]


def assert_safe(response: httpx.Response, detail: str) -> None:
    """The body is exactly the fixed message: no driver text, no traceback."""
    assert response.json() == {"detail": detail}
    for leak in ("Traceback", "Error", "session", "cassandra", "unconfigured"):
        assert leak not in response.text


# -- users ---------------------------------------------------------------------------------


async def test_create_then_get_user(cassandra_node: Any, cassandra_keyspace: str) -> None:
    async with running_app(cassandra_node, cassandra_keyspace) as (client, app):
        session = app.state.db.session
        body = {"name": "Ada Lovelace", "email": "ada@example.com", "team": "engines"}
        created = await client.post("/users", json=body)
        assert created.status_code == 201
        user = created.json()
        assert {k: user[k] for k in body} == body
        assert uuid.UUID(user["id"]).version == 4

        fetched = await client.get(f"/users/{user['id']}")
        assert fetched.status_code == 200
        assert fetched.json() == user

        # Written to the query table too, in the same logged batch.
        listed = await client.get("/teams/engines/users")
        assert listed.json() == {"users": [user], "next": None}

        # Really stored, not echoed: read it back without the app.
        row = (
            await session.execute(
                f"SELECT name, email, team FROM {cassandra_keyspace}.users WHERE id = %s",
                [uuid.UUID(user["id"])],
            )
        ).one()
        assert (row.name, row.email, row.team) == ("Ada Lovelace", "ada@example.com", "engines")
    # The lifespan closed what it opened, and dropped the handle.
    assert session.is_closed
    assert not hasattr(app.state, "db")


async def test_invalid_user_id_is_400(cassandra_node: Any, cassandra_keyspace: str) -> None:
    async with running_app(cassandra_node, cassandra_keyspace) as (client, _app):
        response = await client.get("/users/not-a-uuid")
    assert response.status_code == 400
    assert "UUID" in response.json()["detail"]


async def test_missing_user_is_404(cassandra_node: Any, cassandra_keyspace: str) -> None:
    async with running_app(cassandra_node, cassandra_keyspace) as (client, _app):
        response = await client.get(f"/users/{uuid.uuid4()}")
    assert response.status_code == 404
    assert response.json() == {"detail": "user not found"}


async def test_invalid_user_body_is_422(cassandra_node: Any, cassandra_keyspace: str) -> None:
    async with running_app(cassandra_node, cassandra_keyspace) as (client, _app):
        missing_team = await client.post("/users", json={"name": "a", "email": "a@b"})
        bad_email = await client.post(
            "/users", json={"name": "a", "email": "no at sign", "team": "t"}
        )
        listed = await client.get("/teams/t/users")
    assert missing_team.status_code == 422
    assert bad_email.status_code == 422
    assert listed.json() == {"users": [], "next": None}  # nothing was written


# -- database failures ----------------------------------------------------------------------


async def test_closed_session_is_503_with_safe_body(
    cassandra_node: Any, cassandra_keyspace: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with running_app(cassandra_node, cassandra_keyspace) as (client, app):
        created = await client.post("/users", json=team_of("ops", 1)[0])
        assert created.status_code == 201
        # The session the app uses is really closed (as at shutdown, or after the
        # cluster went away): the library raises its ConnectionError from then on.
        await app.state.db.session.close()
        with caplog.at_level(logging.ERROR, logger="fastapi_app"):
            responses = [
                await client.get(f"/users/{created.json()['id']}"),
                await client.post("/users", json=team_of("ops", 1)[0]),
                await client.get("/teams/ops/users"),
                await client.get("/teams/ops/users.csv"),
            ]
    for response in responses:
        assert response.status_code == 503
        assert response.headers["retry-after"] == "1"
        assert_safe(response, "database unavailable, retry later")
    # The real error is in the server log, with its traceback.
    logged = [r for r in caplog.records if r.name == "fastapi_app"]
    assert len(logged) == 4
    for record in logged:
        assert record.levelno == logging.ERROR
        assert record.exc_info is not None
        assert "this session is closed" in str(record.exc_info[1])


async def test_dropped_table_is_500_with_safe_body(
    cassandra_node: Any, cassandra_keyspace: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with running_app(cassandra_node, cassandra_keyspace) as (client, app):
        created = await client.post("/users", json=team_of("ops", 1)[0])
        assert created.status_code == 201
        # A schema the app's prepared statements no longer match: a QueryError, a bug
        # or broken deployment on the server side, so 500 rather than "retry later".
        await app.state.db.session.execute(f"DROP TABLE {cassandra_keyspace}.users")
        with caplog.at_level(logging.ERROR, logger="fastapi_app"):
            response = await client.get(f"/users/{created.json()['id']}")
    assert response.status_code == 500
    assert_safe(response, "internal error")
    assert cassandra_keyspace not in response.text
    logged = [r for r in caplog.records if r.name == "fastapi_app"]
    assert len(logged) == 1
    assert logged[0].exc_info is not None
    assert "users" in str(logged[0].exc_info[1])  # the driver's message names the table


# -- pagination -----------------------------------------------------------------------------


async def test_pages_return_every_user_once(cassandra_node: Any, cassandra_keyspace: str) -> None:
    async with running_app(cassandra_node, cassandra_keyspace) as (client, _app):
        blue = await create_users(client, team_of("blue", 230))
        red = await create_users(client, team_of("red", 7))

        seen: list[str] = []
        sizes: list[int] = []
        token: str | None = None
        while True:
            params: dict[str, Any] = {"page_size": 50}
            if token is not None:
                params["page"] = token
            response = await client.get("/teams/blue/users", params=params)
            assert response.status_code == 200, response.text
            page = response.json()
            sizes.append(len(page["users"]))
            seen.extend(user["id"] for user in page["users"])
            assert all(user["team"] == "blue" for user in page["users"])
            token = page["next"]
            if token is None:
                break
            assert len(sizes) < 10, "paging does not end"

        assert sizes == [50, 50, 50, 50, 30]
        assert len(seen) == len(set(seen)) == 230
        assert set(seen) == set(blue)

        red_page = (await client.get("/teams/red/users")).json()
        assert sorted(user["id"] for user in red_page["users"]) == sorted(red)
        assert red_page["next"] is None


async def test_bad_page_tokens_are_400(cassandra_node: Any, cassandra_keyspace: str) -> None:
    async with running_app(cassandra_node, cassandra_keyspace) as (client, _app):
        await create_users(client, team_of("blue", 12) + team_of("red", 12))
        first = (await client.get("/teams/blue/users", params={"page_size": 5})).json()
        token = first["next"]
        assert token is not None

        async def page(team: str, page_token: str, size: int = 5) -> httpx.Response:
            return await client.get(
                f"/teams/{team}/users", params={"page_size": size, "page": page_token}
            )

        # The untouched token works, and moves on to other users.
        second = await page("blue", token)
        assert second.status_code == 200
        second_ids = {user["id"] for user in second.json()["users"]}
        assert len(second_ids) == 5
        assert not second_ids & {user["id"] for user in first["users"]}

        refused = []
        for position in (0, len(token) // 2, len(token) - 2):
            replacement = "A" if token[position] != "A" else "B"
            refused.append(
                await page("blue", token[:position] + replacement + token[position + 1 :])
            )
        refused.append(await page("red", token))  # made for another team
        refused.append(await page("blue", token, size=6))  # for another page size
        refused.append(await page("blue", "not-a-token"))
        for response in refused:
            assert response.status_code == 400, response.text
            assert response.json() == {
                "detail": "invalid or expired page token; start again from the first page"
            }


async def test_page_size_is_validated(cassandra_node: Any, cassandra_keyspace: str) -> None:
    async with running_app(cassandra_node, cassandra_keyspace) as (client, _app):
        await create_users(client, team_of("blue", 3))
        too_small = await client.get("/teams/blue/users", params={"page_size": 0})
        too_big = await client.get("/teams/blue/users", params={"page_size": 501})
        largest = await client.get("/teams/blue/users", params={"page_size": 500})
    assert too_small.status_code == 422
    assert too_big.status_code == 422
    assert largest.status_code == 200
    assert len(largest.json()["users"]) == 3


# -- CSV export -----------------------------------------------------------------------------


async def test_csv_export_has_every_row_quoted(
    cassandra_node: Any, cassandra_keyspace: str
) -> None:
    # A small fetch size: the export spans several pages (41 rows, 7 per page).
    async with running_app(cassandra_node, cassandra_keyspace, export_fetch_size=7) as (
        client,
        app,
    ):
        users = [
            *team_of("blue", 38),
            {"name": 'Smith, "Jo"', "email": "jo@example.com", "team": "blue"},
            {"name": "two\nlines", "email": "nl@example.com", "team": "blue"},
            {"name": "Zoë ünïcode", "email": "z@example.com", "team": "blue"},
        ]
        ids = await create_users(client, users + team_of("red", 5))
        response = await client.get("/teams/blue/users.csv")
        empty = await client.get("/teams/nobody/users.csv")
        assert app.state.db.session.requests_registered == 0  # the stream was closed

    assert response.status_code == 200
    assert response.headers["content-type"] == "text/csv; charset=utf-8"
    assert response.headers["content-disposition"] == 'attachment; filename="users.csv"'
    # The quoting is the csv module's: a field with a comma or quote is quoted, quotes
    # inside it doubled.
    assert '"Smith, ""Jo"""' in response.text
    rows = list(csv.reader(io.StringIO(response.text, newline="")))
    assert rows[0] == ["id", "name", "email"]
    expected = {(ids[i], u["name"], u["email"]) for i, u in enumerate(users)}
    got = [tuple(row) for row in rows[1:]]
    assert len(got) == len(expected) == 41
    assert set(got) == expected

    assert empty.status_code == 200
    assert list(csv.reader(io.StringIO(empty.text))) == [["id", "name", "email"]]


def _http_scope(path: str, spec_version: str) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": spec_version},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"test")],
        "server": ("test", 80),
        "client": ("127.0.0.1", 50000),
    }


async def _wait_until_idle(session: Any) -> None:
    # A page in flight when the stream closed is dropped when the driver finishes it.
    # The session only offers counters, no event to wait on: poll.
    with anyio.fail_after(10):
        while session.requests_registered or session.requests_in_flight:  # noqa: ASYNC110
            await anyio.sleep(0.01)


@pytest.mark.parametrize("spec_version", ["2.0", "2.4"])
async def test_client_disconnect_closes_the_export_stream(
    cassandra_node: Any, cassandra_keyspace: str, spec_version: str
) -> None:
    """A client that goes away mid-export: the stream is closed and paging stops.

    Driven through raw ASGI, since httpx's transport reads whole responses. Servers on
    ASGI spec 2.4 make ``send`` raise OSError after a disconnect; before 2.4 Starlette
    watches for ``http.disconnect`` and cancels the sending task.
    """
    async with running_app(cassandra_node, cassandra_keyspace, export_fetch_size=10) as (
        client,
        app,
    ):
        await create_users(client, team_of("blue", 230))
        session = app.state.db.session
        await _wait_until_idle(session)

        disconnected = anyio.Event()
        request_read = False
        chunks: list[bytes] = []
        registered_while_sending: list[int] = []

        async def receive() -> dict[str, Any]:
            nonlocal request_read
            if not request_read:
                request_read = True
                return {"type": "http.request", "body": b"", "more_body": False}
            await disconnected.wait()
            return {"type": "http.disconnect"}

        async def send(message: MutableMapping[str, Any]) -> None:
            if message["type"] != "http.response.body":
                assert message["status"] == 200
                return
            if chunks:  # the client has gone after the first chunk
                disconnected.set()
                if spec_version == "2.4":
                    raise OSError("connection reset by peer")
                await anyio.sleep_forever()  # cancelled by Starlette's disconnect watch
            chunks.append(message["body"])
            registered_while_sending.append(session.requests_registered)

        scope = _http_scope("/teams/blue/users.csv", spec_version)
        if spec_version == "2.4":
            from starlette.requests import ClientDisconnect

            with pytest.raises(ClientDisconnect):
                await app(scope, receive, send)
        else:
            await app(scope, receive, send)

        # The stream was live (a page being read ahead) while the first chunk went out...
        assert registered_while_sending == [1]
        assert len(chunks) == 1
        assert chunks[0].count(b"\r\n") == 1 + 10  # header and the first page only
        # ...and is closed now: nothing registered, nothing in flight.
        await _wait_until_idle(session)
        assert session.requests_registered == 0


async def test_export_failing_mid_stream_is_not_completed(
    cassandra_node: Any, cassandra_keyspace: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The table dropped while the export runs: the response must not end as if the CSV
    were complete (no final chunk), and the error is logged.

    (Closing the session mid-stream would be the more natural outage, but requests in
    flight then hang until their timeout instead of failing at once: see the report.)
    """
    async with running_app(cassandra_node, cassandra_keyspace, export_fetch_size=10) as (
        client,
        app,
    ):
        await create_users(client, team_of("blue", 100))
        session = app.state.db.session
        messages: list[MutableMapping[str, Any]] = []

        async def receive() -> dict[str, Any]:
            if not messages:
                return {"type": "http.request", "body": b"", "more_body": False}
            await anyio.sleep_forever()  # the client never leaves
            raise AssertionError("unreachable")

        async def send(message: MutableMapping[str, Any]) -> None:
            messages.append(message)
            if message["type"] == "http.response.body" and len(messages) == 2:
                # Pages already requested may still arrive; the next one cannot.
                await session.execute(f"DROP TABLE {cassandra_keyspace}.users_by_team")

        with (
            caplog.at_level(logging.ERROR, logger="fastapi_app"),
            anyio.fail_after(30),
            pytest.raises(RuntimeError, match="response already started") as raised,
        ):
            await app(_http_scope("/teams/blue/users.csv", "2.4"), receive, send)
        await _wait_until_idle(session)

    # The database error is what ended it (Starlette wraps it, as the response had
    # started), and the server log has it.
    chain: list[BaseException] = []
    error: BaseException | None = raised.value
    while error is not None:
        chain.append(error)
        error = error.__cause__ or error.__context__
    assert any(isinstance(e, async_cassandra.QueryError) for e in chain), chain
    logged = [r for r in caplog.records if r.name == "fastapi_app"]
    assert [r.getMessage() for r in logged] == ["export stream failed after the response started"]
    # Some pages went out, not all, and the body was never ended.
    assert messages[0]["type"] == "http.response.start"
    bodies = messages[1:]
    assert all(m["type"] == "http.response.body" and m["more_body"] for m in bodies)
    rows_sent = sum(m["body"].count(b"\r\n") for m in bodies) - 1
    assert 10 <= rows_sent < 100


# -- observability ---------------------------------------------------------------------------


async def test_metrics_stats_health_and_traces(
    cassandra_node: Any, cassandra_keyspace: str
) -> None:
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    registry = prometheus_client.CollectorRegistry()
    async with running_app(
        cassandra_node,
        cassandra_keyspace,
        metrics_registry=registry,
        observers=[OpenTelemetryObserver(tracer_provider)],
        health_interval=0.2,
    ) as (client, app):
        [user_id] = await create_users(client, team_of("ops", 1))
        with tracer_provider.get_tracer("test").start_as_current_span("GET /users") as http:
            assert (await client.get(f"/users/{user_id}")).status_code == 200

        metrics = await client.get("/metrics")
        assert metrics.status_code == 200
        assert metrics.headers["content-type"].startswith("text/plain")
        lines = metrics.text.splitlines()
        prepared_ok = 'cassandra_queries_total{query_type="prepared",success="success"}'
        assert any(line.startswith(prepared_ok) for line in lines)
        assert any(line.startswith("cassandra_query_duration_seconds_bucket") for line in lines)

        stats = (await client.get("/stats")).json()
        assert set(stats) == {
            "query_performance",
            "error_summary",
            "top_queries",
            "connection_health",
        }
        assert stats["query_performance"]["total_queries"] >= 3  # batch, select, schema
        assert stats["query_performance"]["success_rate"] == 1.0

        health = await client.get("/health")
        assert health.status_code == 200
        body = health.json()
        assert body["healthy_hosts"] == 1
        (host,) = body["hosts"]
        assert host["status"] == "up"
        assert host["latency_ms"] > 0
        assert body["summary"]["up_hosts"] == 1
        monitor = app.state.db.monitor
        await wait_until(
            lambda: monitor.metrics["last_health_check"] is not None, "a round of monitoring"
        )

    # The database request's span is a child of the HTTP request's.
    (select,) = [
        s
        for s in exporter.get_finished_spans()
        if s.name == "SELECT users"
        and s.parent is not None
        and s.parent.span_id == http.get_span_context().span_id
    ]
    assert dict(select.attributes or {})["db.namespace"] == cassandra_keyspace
