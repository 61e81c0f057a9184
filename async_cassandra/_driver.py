"""The driver behind one door: every private name of cassandra-driver we rely on.

The rest of the package reads and calls the driver only through its public API and
this module, so a driver upgrade that renames one of these touches this file alone.
Checked against cassandra-driver 3.29 and 3.30.
"""

from __future__ import annotations

import ssl
import time
from typing import Any

from cassandra import DependencyException
from cassandra.auth import _proxy_execute_key
from cassandra.cluster import (
    _NOT_SET,
    EXEC_PROFILE_DEFAULT,
    DefaultConnection,
    ResponseFuture,
    _ConfigMode,
)
from cassandra.cluster import Cluster as DriverCluster
from cassandra.cluster import Session as DriverSession
from cassandra.connection import Connection
from cassandra.protocol import ErrorMessage, ExecuteMessage
from cassandra.query import tuple_factory

from .exceptions import bad_argument

__all__ = [
    "NOT_SET",
    "DirectWriteConnection",
    "KeepsPartialSegmentHeaders",
    "a_new_timer_is_due",
    "batch_size",
    "check_payload",
    "check_sendable",
    "check_text",
    "column_names",
    "column_types",
    "configured_timeout",
    "consistency_level",
    "default_connection_class",
    "drop_timer",
    "paging_state",
    "prepared_table",
    "protocol_error_code",
    "server_warnings",
    "start_request",
    "take_row_factory",
    "use_default_retry_policy",
    "was_traced",
]

# The driver's "argument not given" marker: ``timeout=NOT_SET`` means "use the execution
# profile's request_timeout", where None means "no timeout at all".
NOT_SET: Any = _NOT_SET


def start_request(
    session: DriverSession,
    query: Any,
    parameters: Any,
    trace: bool,
    custom_payload: dict[str, bytes] | None,
    execution_profile: Any,
    paging_state: bytes | None,
    host: Any,
    execute_as: str | None,
    timeout: Any,
) -> tuple[ResponseFuture, Any]:
    """Send a request as ``session.execute_async`` would, and return its future with
    the row factory in effect for it (see :func:`take_row_factory`).

    Built exactly as ``execute_async`` builds it (statement, execution profile, timeout,
    row factory, parameters bound); the driver arms the request's timer as it builds it,
    so ``timeout`` must be final (see :func:`configured_timeout`). Then checked with
    :func:`check_sendable`, and sent: the session's request-init listeners see it first.
    Raises what binding, resolving the execution profile or that check raises; nothing
    has been sent then. The caller's ``custom_payload`` dict is copied, never written to.
    """
    payload = dict(custom_payload) if custom_payload else {}
    if execute_as:
        payload[_proxy_execute_key] = execute_as.encode()
    future: ResponseFuture = session._create_response_future(
        query, parameters, trace, payload, timeout, execution_profile, paging_state, host
    )
    future._protocol_handler = session.client_protocol_handler
    check_sendable(future)
    row_factory = take_row_factory(future)
    session._on_request(future)
    future.send_request()
    return future, row_factory


def configured_timeout(session: DriverSession, timeout: Any, execution_profile: Any) -> Any:
    """The request timeout the driver would use, in seconds (None: none): ``timeout`` if
    given (not :data:`NOT_SET`), else the execution profile's ``request_timeout``, or
    the session's ``default_timeout`` in the driver's legacy configuration mode.

    Worked out before the request is built, because the driver arms the request's timer
    as it builds it: the timeout must be final by then. Raises ValueError for an
    unknown execution profile, as the driver would.
    """
    if timeout is not NOT_SET:
        return timeout
    if session.cluster._config_mode == _ConfigMode.LEGACY:
        return session.default_timeout
    return session._maybe_get_execution_profile(execution_profile).request_timeout


def use_default_retry_policy(cluster: DriverCluster, policy: Any) -> None:
    """Make ``policy`` the cluster's default retry policy in either configuration mode:
    the default execution profile's, and the legacy default, which the driver uses once
    something switches the cluster to its legacy mode (``session.row_factory = ...``).
    Set directly: the driver's setter for the latter would switch to legacy mode now."""
    cluster.profile_manager.profiles[EXEC_PROFILE_DEFAULT].retry_policy = policy
    cluster._default_retry_policy = policy


def take_row_factory(future: ResponseFuture) -> Any:
    """The row factory in effect for ``future`` (the execution profile's, or the
    session's), replaced on the future by one that hands over the decoder's rows as
    they are: the rows are then made on the event loop, not on the driver's reactor
    thread (see ``_rows``). The driver swaps a future's factory the same way for its
    own internal queries."""
    factory = future.row_factory
    future.row_factory = tuple_factory
    return factory


def drop_timer(future: ResponseFuture) -> None:
    """Break the reference cycle between a finished request's future and its timer.

    The driver's future holds its timer (``_timer``) and the timer holds the future's
    bound ``_on_timeout``; the driver cancels the timer when the answer comes but never
    lets go of it, so every request became garbage only the cycle collector frees.
    Under load those collections grew to tens of thousands of objects each and held
    the event loop 60-140 ms at a time. Call only once no page will be fetched any
    more: a cancelled timer is never re-armed, and a fetch of a next page would arm a
    new one.
    """
    future._timer = None


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


def server_warnings(future: ResponseFuture) -> list[str] | None:
    """The warnings the server sent with the page that just arrived (batch too large,
    tombstones read, ...), or None. The driver keeps only the last page's, and has
    logged them already as it decoded the page."""
    warnings: list[str] | None = getattr(future, "_warnings", None)
    return warnings


def was_traced(future: ResponseFuture) -> bool:
    """Whether the server traced the request (the driver keeps the trace ids)."""
    return bool(getattr(future, "_query_traces", None))


# -- what the driver encodes only when the request already holds a stream id ------------
#
# The driver encodes a request's message after taking one of the connection's stream
# ids for it; if encoding fails there (text that is not valid Unicode, a str where bytes
# belong, a consistency level that is not an int), the id is never given back, and the
# failure comes back as NoHostAvailable: "retrying later may succeed", and after 32,768
# such failures every request on that connection fails. So everything encoded then is
# checked here first, on the message the driver built.

_INT32 = 2**31


def check_sendable(future: ResponseFuture) -> None:
    """Raise QueryError (also TypeError or ValueError) for a part of ``future``'s message
    the driver could not encode, before anything is sent."""
    # On every request: the common case (an EXECUTE of a prepared statement, levels as
    # ints, no payload) costs a few attribute reads.
    message = future.message
    if message.__class__ is not ExecuteMessage:
        query = getattr(message, "query", None)
        if query is not None:  # a QUERY: the CQL text, a plain string's parameters in it
            check_text(query, "the CQL text (with the %s parameters of a plain string in it)")
        for entry in getattr(message, "queries", None) or ():  # a BATCH
            prepared, string_or_id, _values = entry
            if not prepared:
                check_text(string_or_id, "the CQL text of a statement in the batch")
    level = message.consistency_level
    if level.__class__ is not int or not 0 <= level <= 0xFFFF:
        _check_consistency(level, "consistency_level")
    if message.serial_consistency_level is not None:
        _check_consistency(message.serial_consistency_level, "serial_consistency_level")
    fetch_size = getattr(message, "fetch_size", None)
    if fetch_size is not None and (fetch_size.__class__ is not int or abs(fetch_size) >= _INT32):
        raise bad_argument(
            f"the statement's fetch_size must be an int or None, not {fetch_size!r}", TypeError
        )
    state = getattr(message, "paging_state", None)
    if state is not None and not isinstance(state, bytes):
        raise bad_argument(
            f"paging_state must be the bytes a result's paging_state gave, not "
            f"{type(state).__name__}; to hand one to a web client, sign it with "
            "async_cassandra.paging.PagingTokenSigner",
            TypeError,
        )
    if message.keyspace is not None:
        check_text(message.keyspace, "the statement's keyspace")
    payload = message.custom_payload
    if payload:
        check_payload(payload)


def check_text(text: object, what: str) -> None:
    """Raise QueryError (also TypeError or ValueError) unless ``text`` is a str that UTF-8
    can encode (no lone surrogates)."""
    if not isinstance(text, str):
        raise bad_argument(f"{what} must be a str, not {type(text).__name__}", TypeError)
    if text.isascii():
        return
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        bad = text[error.start : error.end]
        raise bad_argument(  # noqa: B904 - the cause is set by bad_argument
            f"{what} cannot be sent: it holds {bad!r} at position {error.start}, a lone "
            "surrogate, which UTF-8 cannot encode (decoding bytes with "
            "errors='surrogateescape' leaves them); pass valid text, or bytes for a blob",
            ValueError,
            cause=error,
        )  # the cause is set by bad_argument


def _check_consistency(level: object, name: str) -> None:
    if isinstance(level, bool) or not isinstance(level, int) or not 0 <= level <= 0xFFFF:
        raise bad_argument(
            f"{name} must be a cassandra.ConsistencyLevel value (an int, such as "
            f"ConsistencyLevel.QUORUM), not {level!r}",
            TypeError,
        )


def check_payload(payload: object) -> None:
    """Raise QueryError (also TypeError or ValueError) unless ``payload`` maps str keys to
    bytes values, as the protocol's custom payload does."""
    if not isinstance(payload, dict):
        raise bad_argument(
            f"custom_payload must be a dict of str keys to bytes values, not "
            f"{type(payload).__name__}",
            TypeError,
        )
    for key, value in payload.items():
        if not isinstance(key, str):
            raise bad_argument(
                f"custom_payload keys must be str, not {type(key).__name__} ({key!r})", TypeError
            )
        check_text(key, f"the custom_payload key {key!r}")
        if not isinstance(value, bytes):
            raise bad_argument(
                f"custom_payload[{key!r}] must be bytes, not {type(value).__name__}: encode "
                "it (for text, value.encode())",
                TypeError,
            )


# -- what observers are told (see _observing) --------------------------------------------


def batch_size(batch: Any) -> int:
    """How many statements a ``BatchStatement`` holds."""
    return len(batch._statements_and_parameters)


def prepared_table(prepared: Any) -> tuple[str | None, str | None]:
    """(keyspace, table) of a prepared statement's bind markers, else of its result."""
    for columns in (prepared.column_metadata, getattr(prepared, "result_metadata", None)):
        if columns:
            # (keyspace, table, name, type): a ColumnMetadata, or a plain tuple for the
            # result's columns.
            keyspace, table = columns[0][0], columns[0][1]
            return keyspace, table
    return None, None


def consistency_level(future: ResponseFuture) -> int | None:
    """The consistency level the request was sent with (its message's)."""
    message = getattr(future, "message", None)
    level: int | None = getattr(message, "consistency_level", None)
    return level


# The protocol's error codes of the driver's exceptions that do not carry one (the
# server's ErrorMessage instances carry theirs as ``code``).
_ERROR_CODES: dict[str, int] = {
    "Unavailable": 0x1000,
    "WriteTimeout": 0x1100,
    "ReadTimeout": 0x1200,
    "ReadFailure": 0x1300,
    "FunctionFailure": 0x1400,
    "WriteFailure": 0x1500,
    "CDCWriteFailure": 0x1600,
    "AuthenticationFailed": 0x0100,
    "Unauthorized": 0x2100,
    "InvalidRequest": 0x2200,
    "ConfigurationException": 0x2300,
    "AlreadyExists": 0x2400,
}


def protocol_error_code(error: BaseException) -> int | None:
    """The CQL protocol error code of the server's answer behind ``error`` (our error,
    its driver cause, or a NoHostAvailable whose hosts all answered with the same
    code); None for a failure of the client's (a timeout, a lost connection)."""
    seen: BaseException | None = error
    while seen is not None:
        code = getattr(seen, "code", None)
        if isinstance(code, int) and isinstance(seen, ErrorMessage):
            return code
        for klass in type(seen).__mro__:
            if klass.__module__ == "cassandra" and klass.__name__ in _ERROR_CODES:
                return _ERROR_CODES[klass.__name__]
        errors = getattr(seen, "errors", None)
        if isinstance(errors, dict) and errors:
            codes = {
                protocol_error_code(e) for e in errors.values() if isinstance(e, BaseException)
            }
            if len(codes) == 1:
                return codes.pop()
        seen = seen.__cause__
    return None


class KeepsPartialSegmentHeaders(Connection):  # type: ignore[misc]
    """A driver connection whose protocol v5 reader keeps a segment header that arrives
    split over two reads. The base of both of the library's connection classes.

    From protocol v5 on, the driver reads its socket's bytes as segments (a 6-byte
    header, 8 when compressed, then the payload). Its decoder
    (``Connection._process_segment_buffer``, cassandra-driver 3.29 and 3.30) looks for
    a whole header in what was read so far; when fewer bytes than a header are there it
    leaves its buffer's read position at the end, and the reset that follows
    (``reset_io_buffer``, which keeps what lies after that position) throws those bytes
    away. The next read then starts inside a header, and the connection fails with
    "CRC mismatch on header", every request on it with it. Where a read ends is TCP's
    choice: on loopback usually where the server's write ended (a segment boundary),
    on a real network anywhere. Here those bytes stay for the next read, as the driver's
    decoder already keeps a whole header whose payload has not all arrived.
    """

    def _process_segment_buffer(self) -> None:
        buffer = self._io_buffer
        if buffer.readable_io_bytes() < self._segment_codec.header_length_with_crc:
            buffer._segment_consumed = False
            buffer.io_buffer.seek(0)  # the reset keeps what follows: all of it
            return
        super()._process_segment_buffer()


try:
    from cassandra.io import libevreactor
except DependencyException:  # the driver was built without its libev extension
    libevreactor = None


def a_new_timer_is_due(timers: Any, now: float) -> bool:
    """Whether a timer added to a reactor's ``timers`` (the driver's ``TimerManager``)
    since the reactor last serviced them ends by ``now`` (``time.time()``, the driver's
    clock for timers). A copy is read: the reactor thread takes them out meanwhile,
    and then services them itself."""
    return any(end <= now for end, _ in list(timers._new_timers))


if libevreactor is not None:

    class DirectWriteConnection(KeepsPartialSegmentHeaders, libevreactor.LibevConnection):  # type: ignore[misc]
        """The driver's libev connection, except that a request alone on its connection
        is written by the thread that sends it, not by the reactor thread (and a
        protocol v5 segment header split over two reads is kept: see
        :class:`KeepsPartialSegmentHeaders`).

        The libev connection queues every message and wakes its reactor thread to write
        it. With nothing else in flight that thread is asleep, and waking it (a thread
        switch and a GIL hand-off) lies on the request's path: without it, point reads
        at one request in flight went from 2,130 to 2,590 per second on asyncio and from
        2,200 to 2,400 on trio (medians of 4 alternated rounds,
        ``tests/benchmarks/loop_io_experiment.py``). With other requests in flight the
        reactor is awake for their responses anyway and writes what queued in a batch,
        which keeps the responses batched too: writing every message at once instead
        cost 15-35% more CPU and twice to three times the context switches per request
        at 64 and 256 in flight, and up to a fifth of the throughput (a limit of 4 in
        flight instead of 1 changed nothing measurable at 4 and 16 in flight). So a
        message is written at once only when the connection has nothing else in flight
        and nothing queued, and the reactor is not writing (the order of the bytes on
        the wire must hold); what the socket does not take at once, and everything
        else, goes to the reactor's queue as before.

        Nor while a timer given to the reactor is already due and the reactor has not
        looked at it yet (a request with a timeout shorter than the time to send it):
        through the queue the reactor fires such a timer before it writes, so the
        request times out as the driver would have it; written at once, its answer could
        be read first when the reactor thread is slow to run, and the request succeed.

        Never over TLS: OpenSSL forbids using one connection from two threads at once,
        and the reactor thread reads from it.

        And it never refuses a request as "overloaded". The driver's connection raises
        ``ConnectionBusy`` from ``send_msg`` while its reactor's last send found the
        socket full (a large message still going out), and the driver's
        ``ResponseFuture._query`` then keeps the in-flight slot and the stream id it
        took for the request: each refusal leaked one for the connection's life (5
        refusals: ``in_flight`` 5 at rest, 5 stream ids fewer), until the connection
        had no stream ids left, and with one node the request failed with
        ``NoHostAvailable``. Here such a message waits in the queue behind what is being
        written, as every message does while the reactor writes; the session's limit on
        requests in flight bounds the queue, and a node that stops reading is met by
        the requests' timeouts.
        """

        # Set once the socket is known to be plain TCP; the OPTIONS message the driver
        # sends from ``__init__`` goes through the queue.
        _direct_writes_allowed = False
        # The reactor is inside handle_write: it may hold a message it took from the
        # queue and has not sent yet. Read and written under ``_deque_lock``.
        _reactor_writing = False

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            # Counted for tests and introspection: messages written (at least in part)
            # by the sending thread. Changed under ``_deque_lock``.
            self.direct_writes = 0
            super().__init__(*args, **kwargs)
            self._direct_writes_allowed = not isinstance(self._socket, ssl.SSLSocket)

        @property
        def _socket_writable(self) -> bool:
            # Read by the driver's send_msg, which refuses a request when it is False.
            return True

        @_socket_writable.setter
        def _socket_writable(self, writable: bool) -> None:
            # Set by the driver's reactor when a send finds the socket full (False) and
            # when its queue is written out (True): the queue waits for the socket
            # either way, so nothing needs the flag.
            pass

        def handle_write(self, watcher: Any, revents: int, errno: int | None = None) -> None:
            # The reactor thread. Between taking the last message from the queue and
            # sending it the queue looks empty: the flag keeps a direct write out of that
            # window, which would put its bytes before (or inside) that message's.
            with self._deque_lock:
                self._reactor_writing = True
            try:
                super().handle_write(watcher, revents, errno)
            finally:
                with self._deque_lock:
                    self._reactor_writing = False

        def push(self, data: bytes) -> None:
            # Any thread: the event loops' (requests, pages), the reactor's (retries,
            # next pages), the driver's executor. ``in_flight`` is read without the
            # connection's lock: it only chooses the faster path, both are correct.
            if not self._direct_writes_allowed or self.in_flight > 1:
                super().push(data)
                return
            with self._deque_lock:
                if (
                    not self.deque
                    and not self._reactor_writing
                    and not a_new_timer_is_due(libevreactor._global_loop._timers, time.time())
                ):
                    try:
                        sent = self._socket.send(data)
                    except (BlockingIOError, InterruptedError):
                        sent = 0
                    except OSError:
                        # Closed or broken: queued as the driver would, its reactor
                        # meets the error and fails the connection's requests.
                        sent = 0
                    else:
                        self.direct_writes += 1
                    if sent == len(data):
                        return
                    data = data[sent:]
                # Still under the lock: nothing may be written between the part sent
                # and the rest.
                self.deque.append(data)
                libevreactor._global_loop.notify()

else:  # pragma: no cover - the wheels on PyPI carry the libev extension
    DirectWriteConnection = None  # type: ignore[assignment,misc]


def default_connection_class() -> Any:
    """The connection class for a cluster whose caller chose none:
    :class:`DirectWriteConnection` when the driver's own default is its libev
    connection, else None (keep the driver's choice: gevent, eventlet, asyncore)."""
    if libevreactor is not None and DefaultConnection is libevreactor.LibevConnection:
        return DirectWriteConnection
    return None
