"""OpenTelemetry spans and metrics for every request, as a request observer.

``pip install 'async-cassandra[otel]'`` (it needs ``opentelemetry-api`` only; install
and configure an SDK in the application)::

    from async_cassandra.otel import OpenTelemetryObserver

    async with AsyncCluster(["127.0.0.1"], observers=[OpenTelemetryObserver()]) as cluster:
        ...

**Spans.** One CLIENT span per whole request: it starts when ``execute`` is called (so it
covers the wait for an in-flight slot) and ends when the caller has every page, or the
error. Its parent is the caller's current span, on asyncio and trio alike (observers run
in the caller's task). A stream (``execute_stream``) gets a first span that ends when
``execute_stream`` returns with its first page, and one span per later page fetch (from
when the fetch began to when the page arrived, read-ahead included), parented to the
context the stream was opened in; never a span per row. ``prepare`` gets a span too. A
request that fails ends its span with status ERROR, ``error.type`` and, when the server
answered with an error, ``db.response.status_code``; a cancelled one with ERROR and
``error.type`` ``"cancelled"``.

**Attributes** follow the OpenTelemetry semantic conventions v1.44.0 for Cassandra
(:data:`SCHEMA_URL`): ``db.system.name`` (``"cassandra"``), ``db.namespace`` (keyspace),
``db.collection.name`` (table), ``db.operation.name``, ``db.query.summary`` (also the
span name), ``db.query.text``, ``db.operation.batch.size``, ``db.response.status_code``
(the CQL protocol error code, in decimal: Unavailable is ``"4096"``, 0x1000),
``error.type``, ``server.address`` / ``server.port`` and ``network.peer.address`` (the
coordinator that answered), ``db.response.returned_rows``,
``cassandra.consistency.level``, ``cassandra.coordinator.id`` / ``.dc``,
``cassandra.page.size``, ``cassandra.query.idempotent``.

``db.query.text`` is recorded for parameterised text only (a prepared statement, or a
string or ``SimpleStatement`` run with parameters), whose values are never in it; a
plain string without parameters may carry literal values, so it is recorded only with
``capture_query_text=True``.

**Metrics.** The ``db.client.operation.duration`` histogram (seconds), per request,
with the span's low-cardinality attributes.

**Context propagation** into the server (W3C ``traceparent``/``tracestate`` in the
request's custom payload, for server-side tracing plugins) is off by default:
``propagate=True``.
"""

from __future__ import annotations

from typing import Any

from . import _driver
from ._observing import named_table
from .observers import ObservedPage, ObservedPrepare, ObservedRequest, RequestObserver

try:
    from opentelemetry import context as otel_context
    from opentelemetry import metrics, propagate, trace
    from opentelemetry.trace import SpanKind, Status, StatusCode
except ImportError as error:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "async_cassandra.otel needs opentelemetry-api: pip install 'async-cassandra[otel]'"
    ) from error

__all__ = ["SCHEMA_URL", "OpenTelemetryObserver"]

#: The version of the semantic conventions followed.
SCHEMA_URL = "https://opentelemetry.io/schemas/1.44.0"

_NAME = "async_cassandra"
_DURATION_BUCKETS = [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0]


class OpenTelemetryObserver(RequestObserver):
    """Spans and the operation-duration histogram for every request; see the module.

    ``tracer_provider`` / ``meter_provider``: OpenTelemetry's (default: the global ones).
    ``capture_query_text``: record ``db.query.text`` for unparameterised text too.
    ``propagate``: send the span's trace context to the server in the custom payload.
    """

    def __init__(
        self,
        tracer_provider: Any = None,
        meter_provider: Any = None,
        *,
        capture_query_text: bool = False,
        propagate: bool = False,
    ) -> None:
        from . import __version__

        self._tracer = trace.get_tracer(
            _NAME, __version__, tracer_provider=tracer_provider, schema_url=SCHEMA_URL
        )
        meter = metrics.get_meter(
            _NAME, __version__, meter_provider=meter_provider, schema_url=SCHEMA_URL
        )
        self._duration = meter.create_histogram(
            "db.client.operation.duration",
            unit="s",
            description="Duration of database client operations.",
            explicit_bucket_boundaries_advisory=_DURATION_BUCKETS,
        )
        self._capture_query_text = capture_query_text
        self._propagate = propagate

    # -- requests --------------------------------------------------------------------

    def request_started(self, request: ObservedRequest) -> None:
        attributes = self._request_attributes(request)
        parameterised = request.statement_type == "prepared" or request.parameters_count > 0
        if request.query and (parameterised or self._capture_query_text):
            attributes["db.query.text"] = request.query
        parent = otel_context.get_current()
        span = self._tracer.start_span(
            _span_name(request),
            context=parent,
            kind=SpanKind.CLIENT,
            attributes=attributes,
            start_time=request.start_time_ns,
        )
        request.state[self] = _RequestSpans(span, parent)
        if self._propagate:
            carrier: dict[str, str] = {}
            propagate.inject(carrier, context=trace.set_span_in_context(span, parent))
            for key, value in carrier.items():
                request.outgoing_payload[key] = value.encode()

    def page_ended(self, request: ObservedRequest, page: ObservedPage) -> None:
        spans: _RequestSpans | None = request.state.get(self)
        if spans is None or request.operation != "execute_stream":
            return
        spans.last_end_ns = page.end_time_ns
        if page.number == 1:
            # A stream's first span ends as execute_stream returns its first page.
            if spans.first is not None:
                self._finish(spans.first, request, page.end_time_ns, page.error, rows=page.rows)
                spans.first = None
            return
        span = self._page_span(request, spans, page.number, page.start_time_ns)
        self._finish(span, request, page.end_time_ns, page.error, rows=page.rows, page=page)

    def request_ended(self, request: ObservedRequest) -> None:
        spans: _RequestSpans | None = request.state.pop(self, None)
        end = request.end_time_ns
        if spans is None or end is None:
            return
        error: BaseException | None = request.error
        if spans.first is not None:  # execute; or a stream that failed on its first page
            self._finish(
                spans.first, request, end, error, rows=request.rows, cancelled=request.cancelled
            )
        elif error is not None or request.cancelled:
            # A stream that failed (or was cancelled) waiting for a later page: that
            # fetch's span, from the last page's arrival, with the error.
            start = spans.last_end_ns or request.start_time_ns
            span = self._page_span(request, spans, request.pages + 1, start)
            self._finish(span, request, end, error, rows=0, cancelled=request.cancelled)
        attributes = self._metric_attributes(request)
        self._duration.record(request.duration or 0.0, attributes)

    def _page_span(
        self, request: ObservedRequest, spans: _RequestSpans, number: int, start_time_ns: int
    ) -> Any:
        """The span of a stream's page fetch after the first, under the stream's context."""
        return self._tracer.start_span(
            _span_name(request),
            context=spans.parent,
            kind=SpanKind.CLIENT,
            attributes={**self._request_attributes(request), "cassandra.page.number": number},
            start_time=start_time_ns,
        )

    # -- prepares --------------------------------------------------------------------

    def prepare_started(self, prepare: ObservedPrepare) -> None:
        keyspace, table = named_table(prepare.query)
        attributes: dict[str, Any] = {
            "db.system.name": "cassandra",
            "db.operation.name": "PREPARE",
            "db.query.summary": f"PREPARE {table}" if table else "PREPARE",
            "db.query.text": prepare.query,
        }
        if keyspace or prepare.keyspace:
            attributes["db.namespace"] = keyspace or prepare.keyspace
        if table:
            attributes["db.collection.name"] = table
        prepare.state[self] = self._tracer.start_span(
            attributes["db.query.summary"],
            kind=SpanKind.CLIENT,
            attributes=attributes,
            start_time=prepare.start_time_ns,
        )

    def prepare_ended(self, prepare: ObservedPrepare) -> None:
        span = prepare.state.pop(self, None)
        if span is None:
            return
        _set_error(span, prepare.error, prepare.cancelled)
        span.end(end_time=prepare.end_time_ns)

    # -- mechanism -------------------------------------------------------------------

    def _request_attributes(self, request: ObservedRequest) -> dict[str, Any]:
        attributes: dict[str, Any] = {
            "db.system.name": "cassandra",
            "db.operation.name": request.operation_name,
            "db.query.summary": request.summary,
            "cassandra.query.idempotent": request.is_idempotent,
        }
        if request.keyspace:
            attributes["db.namespace"] = request.keyspace
        if request.table:
            attributes["db.collection.name"] = request.table
        if request.batch_size is not None:
            attributes["db.operation.batch.size"] = request.batch_size
        if request.fetch_size is not None:
            attributes["cassandra.page.size"] = request.fetch_size
        return attributes

    def _finish(
        self,
        span: Any,
        request: ObservedRequest,
        end_time_ns: int,
        error: BaseException | None,
        *,
        rows: int,
        cancelled: bool = False,
        page: ObservedPage | None = None,
    ) -> None:
        coordinator = page.coordinator if page is not None else request.coordinator
        attributes: dict[str, Any] = {"db.response.returned_rows": rows}
        level = request.consistency_name
        if level:
            attributes["cassandra.consistency.level"] = level
        attributes.update(_coordinator_attributes(coordinator))
        span.set_attributes(attributes)
        _set_error(span, error, cancelled)
        span.end(end_time=end_time_ns)

    def _metric_attributes(self, request: ObservedRequest) -> dict[str, Any]:
        attributes: dict[str, Any] = {
            "db.system.name": "cassandra",
            "db.operation.name": request.operation_name,
        }
        if request.keyspace:
            attributes["db.namespace"] = request.keyspace
        if request.table:
            attributes["db.collection.name"] = request.table
        coordinator = _coordinator_attributes(request.coordinator)
        for key in ("server.address", "server.port"):
            if key in coordinator:
                attributes[key] = coordinator[key]
        attributes.update(_error_attributes(request.error, request.cancelled))
        return attributes


class _RequestSpans:
    """A request's span (``first``: the whole request, or a stream's first page) and
    the context it was opened in (a stream's later pages are its children)."""

    __slots__ = ("first", "last_end_ns", "parent")

    def __init__(self, first: Any, parent: Any) -> None:
        self.first: Any = first
        self.parent = parent
        self.last_end_ns = 0  # when the last page arrived


def _span_name(request: ObservedRequest) -> str:
    return request.summary or "cassandra"


def _coordinator_attributes(host: Any) -> dict[str, Any]:
    if host is None:
        return {}
    attributes: dict[str, Any] = {}
    endpoint = getattr(host, "endpoint", None)
    address = getattr(endpoint, "address", None) or getattr(host, "address", None)
    port = getattr(endpoint, "port", None)
    if address:
        attributes["server.address"] = str(address)
        attributes["network.peer.address"] = str(address)
    if isinstance(port, int):
        attributes["server.port"] = port
    if getattr(host, "host_id", None):
        attributes["cassandra.coordinator.id"] = str(host.host_id)
    if getattr(host, "datacenter", None):
        attributes["cassandra.coordinator.dc"] = host.datacenter
    return attributes


def _error_attributes(error: BaseException | None, cancelled: bool) -> dict[str, str]:
    """``error.type`` and, when the server answered with an error,
    ``db.response.status_code``; nothing for a success."""
    if cancelled:
        return {"error.type": "cancelled"}
    if error is None:
        return {}
    code = _driver.protocol_error_code(error)
    attributes = {"error.type": _error_type(error, code)}
    if code is not None:
        attributes["db.response.status_code"] = str(code)
    return attributes


def _error_type(error: BaseException, code: int | None) -> str:
    """The driver's exception class behind ``error``, qualified
    (``cassandra.WriteTimeout``: the server's answer, ``code``), else ``timeout`` for a
    client-side timeout (no answer in time), else the error's own class."""
    if isinstance(error, TimeoutError) and code is None:
        return "timeout"
    klass = type(error)
    for base in klass.__mro__:  # our combined classes name the driver's inside
        if base.__module__.startswith("cassandra"):
            return f"{base.__module__}.{base.__qualname__}"
    return f"{klass.__module__}.{klass.__qualname__}"


def _set_error(span: Any, error: BaseException | None, cancelled: bool) -> None:
    span.set_attributes(_error_attributes(error, cancelled))
    if cancelled:
        span.set_status(Status(StatusCode.ERROR, "cancelled by the caller"))
    elif error is not None:
        span.record_exception(error)
        span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"[:500]))
