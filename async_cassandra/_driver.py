"""The driver behind one door: every private name of cassandra-driver we rely on.

The rest of the package reads and calls the driver only through its public API and
this module, so a driver upgrade that renames one of these touches this file alone.
Checked against cassandra-driver 3.29 and 3.30.
"""

from __future__ import annotations

from typing import Any

from cassandra.auth import _proxy_execute_key
from cassandra.cluster import _NOT_SET, ResponseFuture
from cassandra.cluster import Session as DriverSession
from cassandra.query import tuple_factory

__all__ = [
    "NOT_SET",
    "column_names",
    "column_types",
    "new_request",
    "paging_state",
    "send",
    "take_row_factory",
    "was_traced",
]

# The driver's "argument not given" marker: ``timeout=NOT_SET`` means "use the execution
# profile's request_timeout", where None means "no timeout at all".
NOT_SET: Any = _NOT_SET


def new_request(
    session: DriverSession,
    query: Any,
    parameters: Any,
    trace: bool,
    custom_payload: dict[str, bytes] | None,
    timeout: Any,
    execution_profile: Any,
    paging_state: bytes | None,
    host: Any,
    execute_as: str | None,
) -> ResponseFuture:
    """The ``ResponseFuture`` that ``session.execute_async`` would send, not sent yet.

    Built exactly as ``execute_async`` builds it (statement, execution profile, timeout,
    row factory, parameters bound), so the caller can adjust it before :func:`send`.
    Raises what binding or resolving the execution profile raises; nothing has been
    sent then. The caller's ``custom_payload`` dict is copied, never written to.
    """
    payload = dict(custom_payload) if custom_payload else {}
    if execute_as:
        payload[_proxy_execute_key] = execute_as.encode()
    future: ResponseFuture = session._create_response_future(
        query, parameters, trace, payload, timeout, execution_profile, paging_state, host
    )
    future._protocol_handler = session.client_protocol_handler
    return future


def send(session: DriverSession, future: ResponseFuture) -> None:
    """Send a request made by :func:`new_request`, as ``execute_async`` does: the
    session's request-init listeners see it first."""
    session._on_request(future)
    future.send_request()


def take_row_factory(future: ResponseFuture) -> Any:
    """The row factory in effect for ``future`` (the execution profile's, or the
    session's), replaced on the future by one that hands over the decoder's rows as
    they are: the rows are then made on the event loop, not on the driver's reactor
    thread (see ``_rows``). The driver swaps a future's factory the same way for its
    own internal queries."""
    factory = future.row_factory
    future.row_factory = tuple_factory
    return factory


def paging_state(future: ResponseFuture) -> bytes | None:
    """Where the next page starts, after the last page that arrived; None at the end."""
    state: bytes | None = future._paging_state
    return state


def column_names(future: ResponseFuture) -> list[str] | None:
    """The result's column names (None before the first page, or without rows)."""
    names: list[str] | None = getattr(future, "_col_names", None)
    return names


def column_types(future: ResponseFuture) -> list[Any] | None:
    """The result's column types (the driver's cqltypes classes)."""
    types: list[Any] | None = getattr(future, "_col_types", None)
    return types


def was_traced(future: ResponseFuture) -> bool:
    """Whether the server traced the request (the driver keeps the trace ids)."""
    return bool(getattr(future, "_query_traces", None))
