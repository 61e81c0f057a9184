"""Telling observers what a request does, without ever letting them break it.

The session calls these only when it has observers (``if observers:``), so a session
without any pays one truth test per request. Each call goes to every observer in turn,
on the loop thread, in the caller's task; an observer that raises is logged and
skipped (see :mod:`async_cassandra.observers`).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterable, Sequence
from typing import Any

from cassandra.query import BatchStatement, BoundStatement, PreparedStatement

from . import _driver
from ._backends import is_cancellation
from .exceptions import ConfigurationError
from .observers import ObservedPage, ObservedPrepare, ObservedRequest

__all__ = [
    "Observers",
    "checked_observers",
    "named_table",
    "notify",
    "observe_prepare",
    "observe_request",
    "page_ended",
    "prepare_ended",
    "request_ended",
]

logger = logging.getLogger("async_cassandra.observers")

# The table a CQL text names (``keyspace.table`` or ``table``, quoted or not).
_TABLE = re.compile(
    r"""\b(?:FROM|INTO|UPDATE|TABLE(?:\s+IF\s+(?:NOT\s+)?EXISTS)?|TRUNCATE)\s+
        (?:("[^"]+"|\w+)\.)?("[^"]+"|\w+)""",
    re.I | re.X,
)


def named_table(text: str | None) -> tuple[str | None, str | None]:
    """(keyspace, table) as the CQL text names them; None where it does not."""
    match = _TABLE.search(text) if text else None
    if match is None:
        return None, None
    keyspace, table = match.groups()
    return (keyspace.strip('"') if keyspace else None), table.strip('"')


Observers = Sequence[Any]


_METHODS = ("request_started", "page_ended", "request_ended", "prepare_started", "prepare_ended")


def checked_observers(observers: Iterable[Any]) -> tuple[Any, ...]:
    """``observers`` as a tuple; ConfigurationError for one with none of the methods."""
    checked = tuple(observers)
    for observer in checked:
        if not any(callable(getattr(observer, method, None)) for method in _METHODS):
            raise ConfigurationError(
                f"{observer!r} is not a request observer: it has none of the methods of "
                "async_cassandra.observers.RequestObserver "
                "(request_started, page_ended, request_ended, prepare_started, prepare_ended)"
            )
    return checked


def notify(observers: Observers, method: str, *args: Any) -> None:
    """Call ``method`` of every observer that has it; log and go on if one raises."""
    for observer in observers:
        call = getattr(observer, method, None)
        if call is None:
            continue
        try:
            call(*args)
        except Exception:
            logger.exception("observer %r raised in %s; the request goes on", observer, method)


def observe_request(
    observers: Observers,
    operation: str,
    query: Any,
    parameters: Any,
    session_keyspace: str | None,
    fetch_size: int | None,
) -> ObservedRequest:
    """A record of a request about to start, already shown to ``observers``."""
    table = table_keyspace = None
    batch_size = None
    if isinstance(query, str):
        kind, text, keyspace, idempotent = "string", query, None, False
    elif isinstance(query, BatchStatement):
        kind, text, keyspace = "batch", None, query.keyspace
        idempotent = bool(query.is_idempotent)
        batch_size = _driver.batch_size(query)
    else:
        prepared = query.prepared_statement if isinstance(query, BoundStatement) else query
        if isinstance(prepared, PreparedStatement):
            kind, text = "prepared", prepared.query_string
            table_keyspace, table = _driver.prepared_table(prepared)
        else:
            kind, text = "simple", getattr(query, "query_string", None)
        keyspace = getattr(query, "keyspace", None)
        idempotent = bool(getattr(query, "is_idempotent", False))
    if fetch_size is None:
        # A statement's own; the driver's "not set" marker is not an int.
        own = getattr(query, "fetch_size", None)
        fetch_size = own if isinstance(own, int) and not isinstance(own, bool) else None
    if table is None:
        table_keyspace, table = named_table(text)
    record = ObservedRequest(
        tuple(observers),
        operation,
        kind,
        text,
        keyspace or table_keyspace or session_keyspace,
        is_idempotent=idempotent,
        fetch_size=fetch_size,
        batch_size=batch_size,
        table=table,
        parameters_count=len(parameters) if isinstance(parameters, (Sequence, dict)) else 0,
    )
    notify(observers, "request_started", record)
    return record


def page_ended(
    record: ObservedRequest,
    future: Any,
    rows: Any,
    start_time_ns: int,
    error: BaseException | None = None,
    end_time_ns: int | None = None,
) -> None:
    """Record a page (its rows, or ``error``) and show it to the request's observers.

    ``future`` is the driver's, or None when the request never reached the driver.
    """
    count = 0 if rows is None else len(rows)
    record.pages += 1
    record.rows += count
    coordinator = None
    if future is not None:
        coordinator = future.coordinator_host
        record.coordinator = coordinator or record.coordinator
        record.attempted_hosts = list(future.attempted_hosts or ())
        if record.consistency_level is None:
            record.consistency_level = _driver.consistency_level(future)
    page = ObservedPage(
        record.pages,
        count,
        start_time_ns,
        time.time_ns() if end_time_ns is None else end_time_ns,
        coordinator,
        error,
    )
    notify(record.observers, "page_ended", record, page)


def request_ended(
    record: ObservedRequest,
    error: BaseException | None,
    warnings: list[str] | None = None,
) -> None:
    """Record how the request ended (``error``: what the caller got, None on success;
    a cancellation counts as cancelled, not as an error) and show it to its observers."""
    if record.end_time_ns is not None:
        return  # already ended (a stream closed twice)
    if warnings:
        record.warnings = list(warnings)
    _mark_ended(record, error)
    notify(record.observers, "request_ended", record)


def observe_prepare(observers: Observers, query: str, keyspace: str | None) -> ObservedPrepare:
    """A record of a prepare about to start, already shown to ``observers``."""
    record = ObservedPrepare(tuple(observers), query, keyspace)
    notify(observers, "prepare_started", record)
    return record


def prepare_ended(record: ObservedPrepare, error: BaseException | None) -> None:
    """Record how the prepare ended and show it to its observers."""
    _mark_ended(record, error)
    notify(record.observers, "prepare_ended", record)


def _mark_ended(record: ObservedRequest | ObservedPrepare, error: BaseException | None) -> None:
    # What the caller got: a cancellation counts as cancelled, not as an error.
    if error is not None and is_cancellation(error):
        record.cancelled = True
    else:
        record.error = error
    record.duration = record.elapsed()
    record.end_time_ns = time.time_ns()
