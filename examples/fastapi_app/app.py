"""A small, production-shaped FastAPI service on async-cassandra.

Run it (see README.md beside this file)::

    python -m async_cassandra.testing start
    uvicorn app:app --app-dir examples/fastapi_app

What it shows, and why:

* **One cluster and session per process, opened and closed by ``lifespan``.** Connecting
  costs seconds and holds connections and threads; a session per request would be slow
  and would leak on every error path. ``async with`` closes both on shutdown, also when
  start-up fails half-way.
* **Statements prepared once at start-up.** Parameters travel separately from the CQL
  (no injection), and the server parses each statement once.
* **Errors mapped in one place.** Exception handlers turn database errors into ``503``
  (retry later) and our own query bugs into ``500``, with fixed, generic bodies: driver
  messages name hosts, keyspaces and tables, which clients have no business seeing. The
  real error goes to the server log.
* **Pagination with signed tokens.** A Cassandra paging state is server-side cursor state;
  handed out raw, a client could edit it to read other partitions. The token is signed
  and bound to the endpoint, team and page size.
* **Streaming export in bounded memory**, closed however the response ends.
* **Observability without wrappers.** Request observers on the cluster: an
  OpenTelemetry span per database request under the HTTP request's span (when
  ``opentelemetry-api`` is installed; configure an SDK and exporter in the process), and
  0.0.1's metrics middleware feeding ``/metrics`` (Prometheus) and ``/stats``. A
  ``ConnectionMonitor`` checks every host every ``health_interval`` seconds in the
  lifespan's own task group, and ``/health`` answers from a fresh check.

Cancellation: the handler's task can be cancelled while a query is in flight (a server
shutting down, a timeout middleware, and for streaming responses a client that goes
away). async-cassandra then returns at once and detaches from the request, but CQL has no
cancel message: the server may still run it, so **a cancelled write may or may not have
been applied**. The same holds for a write that timed out.
"""

import csv
import io
import json
import logging
import os
import re
import secrets
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any

import prometheus_client
from cassandra.query import BatchStatement, BatchType, PreparedStatement
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Path, Query, Request, status
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, Field
from starlette.types import Receive, Scope, Send

from async_cassandra import (
    AsyncCassandraError,
    AsyncCassandraSession,
    AsyncCluster,
    ConnectionMonitor,
    InMemoryMetricsCollector,
    MetricsMiddleware,
    PrometheusMetricsCollector,
    QueryError,
)
from async_cassandra.paging import InvalidPagingToken, PagingTokenSigner
from async_cassandra.streaming import AsyncStreamingResultSet, StreamConfig

__all__ = ["app", "create_app"]

logger = logging.getLogger("fastapi_app")

# Interpolated into DDL and statements (identifiers cannot be bind parameters), so only
# what Cassandra itself allows for an unquoted keyspace name gets through.
_KEYSPACE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,47}$")
MAX_PAGE_SIZE = 500
DEFAULT_PAGE_SIZE = 50
# Rows per page of the CSV export: large pages mean fewer round trips; the stream holds
# at most fetch_size * (1 + read_ahead) rows whatever the team's size.
DEFAULT_EXPORT_FETCH_SIZE = 1000

# Fixed bodies: nothing from the exception reaches the client.
DB_UNAVAILABLE = "database unavailable, retry later"
INTERNAL_ERROR = "internal error"
INVALID_PAGE_TOKEN = "invalid or expired page token; start again from the first page"


# -- models ------------------------------------------------------------------------------


class UserIn(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    email: str = Field(min_length=3, max_length=320, pattern=r"^[^@\s]+@[^@\s]+$")
    team: str = Field(min_length=1, max_length=100)


class User(BaseModel):
    id: uuid.UUID
    name: str
    email: str
    team: str


class UserPage(BaseModel):
    users: list[User]
    # None on the last page. A page may be empty with next=None: Cassandra can only tell
    # that a partition has no more rows by asking for them.
    next: str | None


# -- the database handle the lifespan opens -----------------------------------------------


@dataclass(frozen=True)
class Statements:
    get_user: PreparedStatement
    insert_user: PreparedStatement
    insert_user_by_team: PreparedStatement
    list_team: PreparedStatement


@dataclass(frozen=True)
class Database:
    """What the endpoints need, made once per process by the lifespan."""

    session: AsyncCassandraSession
    statements: Statements
    signer: PagingTokenSigner
    export_fetch_size: int
    monitor: ConnectionMonitor


@dataclass(frozen=True)
class Observability:
    """Made with the app: the observers every request goes through, and where the
    metrics are read."""

    observers: list[Any]
    stats: InMemoryMetricsCollector
    registry: Any  # the prometheus_client registry /metrics exposes


def _observability(registry: Any, extra: list[Any]) -> Observability:
    stats = InMemoryMetricsCollector()
    metrics = MetricsMiddleware([stats, PrometheusMetricsCollector(registry=registry)])
    observers: list[Any] = [metrics]
    try:
        from async_cassandra.otel import OpenTelemetryObserver
    except ImportError:  # opentelemetry-api not installed: no spans
        pass
    else:
        # The global tracer and meter providers: no-ops until the process installs an
        # SDK (opentelemetry-instrument, or the SDK's own set-up code).
        observers.append(OpenTelemetryObserver())
    return Observability([*observers, *extra], stats, registry)


@dataclass(frozen=True)
class Settings:
    contact_points: list[str]
    port: int
    keyspace: str
    paging_key: bytes | str
    export_fetch_size: int
    health_interval: float


def _settings(
    contact_points: list[str] | None,
    port: int | None,
    keyspace: str | None,
    paging_key: bytes | str | None,
    export_fetch_size: int,
    health_interval: float,
) -> Settings:
    if contact_points is None:
        raw = os.environ.get("CASSANDRA_CONTACT_POINTS", "127.0.0.1")
        contact_points = [host.strip() for host in raw.split(",") if host.strip()]
    if port is None:
        port = int(os.environ.get("CASSANDRA_PORT", "9042"))
    if keyspace is None:
        keyspace = os.environ.get("CASSANDRA_KEYSPACE", "fastapi_demo")
    if not _KEYSPACE_NAME.match(keyspace):
        raise ValueError(f"invalid keyspace name {keyspace!r}: use letters, digits and _")
    if paging_key is None:
        paging_key = os.environ.get("PAGING_KEY") or ""
    if not paging_key:
        # Works for one process, but tokens then die with it and are refused by the
        # other replicas behind a load balancer: set PAGING_KEY in production.
        logger.warning("PAGING_KEY is not set: using a random key for this process only")
        paging_key = secrets.token_bytes(32)
    if export_fetch_size < 1:
        raise ValueError("export_fetch_size must be at least 1")
    if health_interval <= 0:
        raise ValueError("health_interval must be more than 0 seconds")
    return Settings(contact_points, port, keyspace, paging_key, export_fetch_size, health_interval)


async def _create_schema(session: AsyncCassandraSession, keyspace: str) -> None:
    # Convenient for a demo; a production service runs migrations instead, with a
    # replication strategy chosen for its data centres.
    await session.execute(
        f"CREATE KEYSPACE IF NOT EXISTS {keyspace} WITH replication = "
        "{'class': 'SimpleStrategy', 'replication_factor': 1}"
    )
    await session.execute(
        f"CREATE TABLE IF NOT EXISTS {keyspace}.users "
        "(id uuid PRIMARY KEY, name text, email text, team text)"
    )
    # Cassandra reads efficiently only by partition key: listing a team's users needs a
    # table partitioned by team (a query table), written alongside `users`.
    await session.execute(
        f"CREATE TABLE IF NOT EXISTS {keyspace}.users_by_team "
        "(team text, id uuid, name text, email text, PRIMARY KEY (team, id))"
    )


async def _prepare(session: AsyncCassandraSession, keyspace: str) -> Statements:
    return Statements(
        get_user=await session.prepare(
            f"SELECT id, name, email, team FROM {keyspace}.users WHERE id = ?"
        ),
        insert_user=await session.prepare(
            f"INSERT INTO {keyspace}.users (id, name, email, team) VALUES (?, ?, ?, ?)"
        ),
        insert_user_by_team=await session.prepare(
            f"INSERT INTO {keyspace}.users_by_team (team, id, name, email) VALUES (?, ?, ?, ?)"
        ),
        list_team=await session.prepare(
            f"SELECT id, name, email FROM {keyspace}.users_by_team WHERE team = ?"
        ),
    )


def _lifespan(
    settings: Settings, observability: Observability
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # One `async with` for all three: whatever fails (connecting, the schema, a
        # prepare) or however the server stops, the monitoring stops, then the session
        # and the cluster are closed.
        async with (
            AsyncCluster(
                settings.contact_points,
                port=settings.port,
                observers=observability.observers,
            ) as cluster,
            await cluster.connect() as session,
            ConnectionMonitor(session) as monitor,
        ):
            await _create_schema(session, settings.keyspace)
            app.state.db = Database(
                session=session,
                statements=await _prepare(session, settings.keyspace),
                signer=PagingTokenSigner(settings.paging_key),
                export_fetch_size=settings.export_fetch_size,
                monitor=monitor,
            )
            # In the monitor's task group, which the `async with` above owns.
            await monitor.start_monitoring(interval=settings.health_interval)
            try:
                yield
            finally:
                # A request arriving after shutdown finds no handle (500), rather
                # than a closed session it would report as a database outage.
                del app.state.db

    return lifespan


async def get_db(request: Request) -> Database:
    # async def: a plain def dependency would be run in a worker thread for nothing.
    db: Database = request.app.state.db
    return db


DB = Annotated[Database, Depends(get_db)]
Team = Annotated[str, Path(min_length=1, max_length=100)]


# -- error handlers ------------------------------------------------------------------------


async def _database_error(request: Request, exc: Exception) -> JSONResponse:
    # ConnectionError, TimeoutError and the rest: the database is unreachable, overloaded
    # or slow right now. Retrying later may succeed. A write that timed out may or may
    # not have been applied, so clients should retry writes only if they are idempotent.
    logger.error("database error on %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse(
        status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
        content={"detail": DB_UNAVAILABLE},
        headers={"Retry-After": "1"},
    )


async def _query_error(request: Request, exc: Exception) -> JSONResponse:
    # Bad CQL, a missing table, wrong parameter types: a bug or a broken deployment on
    # our side; retrying will not help, and the details are ours to read, not the client's.
    logger.error("query error on %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse(
        status_code=status.HTTP_500_INTERNAL_SERVER_ERROR,
        content={"detail": INTERNAL_ERROR},
    )


async def _invalid_page_token(request: Request, exc: Exception) -> JSONResponse:
    # The client's fault (tampered, for another team or page size, or not a token). Its
    # own message says which, but one fixed text tells an attacker nothing.
    logger.info("refused page token on %s: %s", request.url.path, exc)
    return JSONResponse(
        status_code=status.HTTP_400_BAD_REQUEST, content={"detail": INVALID_PAGE_TOKEN}
    )


# -- endpoints -----------------------------------------------------------------------------

router = APIRouter()


def _user(row: Any, team: str | None = None) -> User:
    return User(id=row.id, name=row.name, email=row.email, team=row.team if team is None else team)


@router.get("/users/{user_id}", response_model=User)
async def get_user(user_id: str, db: DB) -> User:
    """One user by id: 400 for an id that is not a UUID, 404 if there is none."""
    try:
        # Parsed here rather than typed as UUID in the signature: FastAPI would answer
        # 422 with its validation dump, and a malformed id is a plain bad request.
        uid = uuid.UUID(user_id)
    except ValueError:
        raise HTTPException(
            status_code=status.HTTP_400_BAD_REQUEST,
            detail="user_id must be a UUID, like 123e4567-e89b-12d3-a456-426614174000",
        ) from None
    row = (await db.session.execute(db.statements.get_user, [uid])).one()
    if row is None:
        raise HTTPException(status_code=status.HTTP_404_NOT_FOUND, detail="user not found")
    return _user(row)


@router.post("/users", response_model=User, status_code=status.HTTP_201_CREATED)
async def create_user(body: UserIn, db: DB) -> User:
    """Create a user in both tables.

    A logged batch: once Cassandra accepts it, both rows are eventually written, so the
    query table cannot miss a user that exists (or the reverse). If the handler is
    cancelled or the write times out, the user may or may not have been created; with a
    server-made id a blind retry creates a second user, so a real API would take a
    client-made id (or an idempotency key) to make retries safe.
    """
    user = User(id=uuid.uuid4(), **body.model_dump())
    batch = BatchStatement(batch_type=BatchType.LOGGED)
    batch.add(db.statements.insert_user, (user.id, user.name, user.email, user.team))
    batch.add(db.statements.insert_user_by_team, (user.team, user.id, user.name, user.email))
    await db.session.execute(batch)
    return user


def _page_scope(team: str, page_size: int) -> str:
    # JSON, not string joining: team names may contain any separator we could pick, and
    # ("a:1", 5) must never share a scope with ("a", ...).
    return json.dumps(["GET /teams/{team}/users", team, page_size])


@router.get("/teams/{team}/users", response_model=UserPage)
async def list_team_users(
    team: Team,
    db: DB,
    page_size: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = DEFAULT_PAGE_SIZE,
    page: Annotated[str | None, Query(min_length=1, max_length=2048)] = None,
) -> UserPage:
    """One page of a team's users; pass the response's ``next`` as ``page`` to go on.

    Each call is one round trip for at most ``page_size`` rows: the server keeps no
    cursor, the token carries the position. A token only works for the team and page
    size it was made for (400 otherwise).
    """
    scope = _page_scope(team, page_size)
    # Raises InvalidPagingToken (a 400, by its handler) for any token we did not make.
    state = db.signer.loads(page, scope=scope) if page is not None else None
    result = await db.session.execute(
        db.statements.list_team, [team], fetch_size=page_size, paging_state=state
    )
    return UserPage(
        users=[_user(row, team) for row in result],
        next=db.signer.dumps(result.paging_state, scope=scope),
    )


class ClosingStreamingResponse(StreamingResponse):
    """A ``StreamingResponse`` that closes its body and database stream when it ends.

    Starlette never closes the body iterator: when the client goes away it cancels the
    sending task (or the server's ``send`` raises), leaving an async generator suspended
    mid-``yield`` until the garbage collector finds it, and a generator that never
    started (the client left before the first byte) runs none of its code at all. Here
    both are closed as soon as the response is over, whatever ended it.
    """

    def __init__(
        self,
        content: AsyncIterator[str],
        rows: AsyncStreamingResultSet,
        *,
        media_type: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(content, media_type=media_type, headers=headers)
        self._content = content
        self._rows = rows

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            # Both are idempotent and never block; closing the stream detaches from any
            # page still in flight and frees the read-ahead buffer.
            try:
                await aclose_iterator(self._content)
            finally:
                await self._rows.close()


async def aclose_iterator(iterator: AsyncIterator[Any]) -> None:
    aclose = getattr(iterator, "aclose", None)
    if aclose is not None:
        await aclose()


async def _csv_chunks(rows: AsyncStreamingResultSet) -> AsyncIterator[str]:
    """The CSV text, one chunk per page of rows (one ``send`` per page, not per row)."""
    buffer = io.StringIO()
    # The csv module quotes fields holding commas, quotes or newlines: names are free text.
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(["id", "name", "email"])
    async with rows:
        try:
            async for page in rows.pages():
                for row in page:
                    writer.writerow([row.id, row.name, row.email])
                chunk = buffer.getvalue()
                buffer.seek(0)
                buffer.truncate()
                yield chunk
        except AsyncCassandraError:
            # The status line (200) is already sent, so no handler can answer 503 now.
            # Re-raising ends the response without its last chunk: the server drops the
            # connection, and the client sees a truncated transfer instead of a CSV that
            # looks complete but is not.
            logger.exception("export stream failed after the response started")
            raise
    if buffer.tell():  # only the header: the team has no users
        yield buffer.getvalue()


@router.get("/teams/{team}/users.csv", response_class=StreamingResponse)
async def export_team_users(team: Team, db: DB) -> StreamingResponse:
    """Every user of a team as CSV, streamed page by page in bounded memory.

    The first page is fetched here, before the response starts, so a database that is
    down still gets a proper 503 from the handlers. If the client disconnects, the
    sending is cancelled and the stream is closed at once (no more pages are fetched).
    """
    rows = await db.session.execute_stream(
        db.statements.list_team,
        [team],
        stream_config=StreamConfig(fetch_size=db.export_fetch_size),
    )
    return ClosingStreamingResponse(
        _csv_chunks(rows),
        rows,
        media_type="text/csv",
        headers={"Content-Disposition": 'attachment; filename="users.csv"'},
    )


# -- the app ---------------------------------------------------------------------------------


# -- operations: metrics and health -----------------------------------------------------

operations = APIRouter()


@operations.get("/metrics")
async def prometheus_metrics(request: Request) -> Response:
    """Prometheus exposition: query counts and latency histograms by statement kind and
    outcome, errors by type, host health (0.0.1's metric names)."""
    observability: Observability = request.app.state.observability
    return Response(
        prometheus_client.generate_latest(observability.registry),
        media_type=prometheus_client.CONTENT_TYPE_LATEST,
    )


@operations.get("/stats")
async def query_stats(request: Request) -> dict[str, Any]:
    """The in-memory collector's statistics (0.0.1's ``get_stats()`` keys)."""
    observability: Observability = request.app.state.observability
    return await observability.stats.get_stats()


@operations.get("/health")
async def health(db: DB) -> JSONResponse:
    """Each host, checked now with a query sent to it: 200 when every host answers,
    503 otherwise (a load balancer's readiness check)."""
    metrics = await db.monitor.get_cluster_metrics()
    body = {
        "healthy_hosts": metrics.healthy_hosts,
        "unhealthy_hosts": metrics.unhealthy_hosts,
        "summary": db.monitor.get_connection_summary(),
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
            for h in metrics.hosts
        ],
    }
    healthy = not metrics.unhealthy_hosts
    code = status.HTTP_200_OK if healthy else status.HTTP_503_SERVICE_UNAVAILABLE
    return JSONResponse(status_code=code, content=body)


def create_app(
    contact_points: list[str] | None = None,
    port: int | None = None,
    keyspace: str | None = None,
    paging_key: bytes | str | None = None,
    *,
    export_fetch_size: int = DEFAULT_EXPORT_FETCH_SIZE,
    health_interval: float = 30.0,
    metrics_registry: Any = None,
    observers: list[Any] | None = None,
) -> FastAPI:
    """The service, connected to ``contact_points:port`` (defaults from the environment:
    ``CASSANDRA_CONTACT_POINTS``, ``CASSANDRA_PORT``, ``CASSANDRA_KEYSPACE``,
    ``PAGING_KEY``). Nothing connects until the lifespan starts.

    ``metrics_registry``: the ``prometheus_client`` registry ``/metrics`` exposes
    (default: the process's global one). ``observers``: more request observers.
    """
    settings = _settings(
        contact_points, port, keyspace, paging_key, export_fetch_size, health_interval
    )
    registry = prometheus_client.REGISTRY if metrics_registry is None else metrics_registry
    observability = _observability(registry, list(observers or ()))
    app = FastAPI(
        title="async-cassandra FastAPI example", lifespan=_lifespan(settings, observability)
    )
    app.state.observability = observability
    # Starlette picks the handler of the closest class in the exception's MRO:
    # InvalidPagingToken is a QueryError, and every QueryError an AsyncCassandraError.
    app.add_exception_handler(InvalidPagingToken, _invalid_page_token)
    app.add_exception_handler(QueryError, _query_error)
    app.add_exception_handler(AsyncCassandraError, _database_error)
    app.include_router(router)
    app.include_router(operations)
    return app


app = create_app()
