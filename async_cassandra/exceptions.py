"""The errors async-cassandra raises, and the one mapping from driver errors to them.

Every error we raise is an :class:`AsyncCassandraError`, in one of five categories that
say what the caller can do about it:

======================  ==================================================================
Category                Meaning, and the driver errors mapped to it
======================  ==================================================================
``QueryError``          The request itself is wrong; retrying it unchanged will fail
                        again. Syntax errors, unknown keyspaces/tables/columns
                        (``InvalidRequest``, ``SyntaxException``), schema conflicts
                        (``AlreadyExists``, ``ConfigurationException``), permissions
                        (``Unauthorized``), a failing UDF (``FunctionFailure``), replica
                        read/write failures (``ReadFailure``, ``WriteFailure``, e.g. too
                        many tombstones), wrong parameter count or type (``TypeError``,
                        ``ValueError`` from binding), an invalid batch.
``ConnectionError``     Retrying later may succeed. No host reachable
                        (``NoHostAvailable``), a lost or busy connection
                        (``ConnectionException``), not enough replicas alive
                        (``Unavailable``), an overloaded, bootstrapping or failing server
                        (``OverloadedErrorMessage``, ``IsBootstrappingErrorMessage``,
                        ``ServerError``), and a session or cluster that is already closed.
``TimeoutError``        A client or server timeout (``OperationTimedOut``,
                        ``ReadTimeout``, ``WriteTimeout``, ``TraceUnavailable``), and every
                        deadline of ours (connect, prepare, a later page, closing). A
                        write that timed out may or may not have been applied. Also a
                        subclass of the built-in :class:`TimeoutError`, which
                        ``anyio.fail_after`` and ``asyncio.wait_for`` raise. The message
                        says what timed out and after how long.
                        :class:`ConnectTimeoutError` (connecting did not finish in time) is
                        both a ``TimeoutError`` and a ``ConnectionError``.
``AuthenticationError`` The server rejected the credentials (``AuthenticationFailed``,
                        or ``NoHostAvailable`` where every host said so).
``ConfigurationError``  The client is configured wrongly: an unknown driver option, a
                        protocol version below 5, a server that only speaks protocol v4 or
                        lower, an unsupported operation (``UnsupportedOperation``).
======================  ==================================================================

A driver exception is re-raised as a class that subclasses *both* the category and the
driver's own class, so ``except QueryError`` and ``except cassandra.InvalidRequest`` both
catch it. The driver exception is kept as ``__cause__`` and its message and attributes
(``errors``, ``consistency``, ...) are kept on the new exception.
"""

from __future__ import annotations

import builtins
import threading
from typing import Any

import cassandra
import cassandra.cluster
import cassandra.connection
import cassandra.protocol
import cassandra.query

__all__ = [
    "AsyncCassandraError",
    "AuthenticationError",
    "ConfigurationError",
    "ConnectTimeoutError",
    "ConnectionError",
    "QueryError",
    "TimeoutError",
    "bad_argument",
    "category_of",
    "is_protocol_version_error",
    "translate_driver_error",
]


class AsyncCassandraError(Exception):
    """The base of every error async-cassandra raises.

    ``AsyncCassandraError(message, cause=None)`` as in async-cassandra 0.0.1: ``cause``
    (also readable as :attr:`cause`) becomes ``__cause__``, the error behind this one.
    """

    def __init__(self, message: str = "", cause: BaseException | None = None) -> None:
        if message:
            super().__init__(message)
        else:
            super().__init__()
        if cause is not None:
            self.__cause__ = cause

    @property
    def cause(self) -> BaseException | None:
        """The error this one was raised from (``__cause__``; 0.0.1's name for it)."""
        return self.__cause__


class QueryError(AsyncCassandraError):
    """The request itself is wrong (syntax, schema, permissions, parameters)."""


class ConnectionError(AsyncCassandraError):  # the name users already know shadows the built-in
    """No usable connection right now; retrying later may succeed."""


class TimeoutError(AsyncCassandraError, builtins.TimeoutError):
    """A client or server timeout. A timed-out write may or may not have been applied."""


class AuthenticationError(AsyncCassandraError):
    """The server rejected the credentials."""


class ConfigurationError(AsyncCassandraError):
    """The client is configured wrongly (options, protocol version)."""


class ConnectTimeoutError(TimeoutError, ConnectionError):
    """Connecting did not finish in time: nothing answered, or too slowly.

    Both a :class:`TimeoutError` and a :class:`ConnectionError` (retrying later may
    succeed), so ``except ConnectionError`` around ``connect()`` keeps working, and
    so does ``except asyncio.TimeoutError``, which async-cassandra 0.0.1 raised here.
    """


# Checked in order; the first driver class the error is an instance of decides the
# category. Subclasses come before their bases where the category differs.
_CATEGORIES: tuple[tuple[type[BaseException], type[AsyncCassandraError]], ...] = (
    (cassandra.AuthenticationFailed, AuthenticationError),
    (cassandra.protocol.BadCredentials, AuthenticationError),
    (cassandra.OperationTimedOut, TimeoutError),
    (cassandra.Timeout, TimeoutError),
    (cassandra.query.TraceUnavailable, TimeoutError),
    (cassandra.Unavailable, ConnectionError),
    (cassandra.cluster.NoHostAvailable, ConnectionError),
    (cassandra.connection.ConnectionException, ConnectionError),
    (cassandra.protocol.OverloadedErrorMessage, ConnectionError),
    (cassandra.protocol.IsBootstrappingErrorMessage, ConnectionError),
    (cassandra.protocol.ServerError, ConnectionError),
    (cassandra.protocol.ProtocolException, ConnectionError),
    (cassandra.UnsupportedOperation, ConfigurationError),
    (cassandra.UnresolvableContactPoints, ConfigurationError),
    (cassandra.RequestValidationException, QueryError),
    (cassandra.protocol.RequestValidationException, QueryError),
    (cassandra.RequestExecutionException, QueryError),
    (builtins.TypeError, QueryError),
    (builtins.ValueError, QueryError),
    # Before OSError, its base: a timeout is a timeout, not a lost connection.
    (builtins.TimeoutError, TimeoutError),
    (builtins.OSError, ConnectionError),
)

# (category, driver class) -> the class subclassing both. Errors are translated on the
# event-loop thread of whichever loop awaits, and several loops may run in threads.
_combined_classes: dict[tuple[type[AsyncCassandraError], type[BaseException]], type[Any]] = {}
_combined_classes_lock = threading.Lock()


def _combined_class(
    category: type[AsyncCassandraError], driver_class: type[BaseException]
) -> type[AsyncCassandraError]:
    key = (category, driver_class)
    with _combined_classes_lock:
        combined = _combined_classes.get(key)
        if combined is None:
            combined = _quiet_metaclass(type(driver_class))(
                driver_class.__name__,
                (category, driver_class),
                {
                    "__module__": __name__,
                    "__doc__": f"{driver_class.__module__}.{driver_class.__qualname__}"
                    f" raised as an async_cassandra.{category.__name__}.",
                    # The driver classes define __init__ with their own required
                    # arguments; instances are made in translate_driver_error by
                    # copying state, so construction must not call those.
                    "__init__": BaseException.__init__,
                    "__str__": _str_with_hint,
                    "__reduce__": _reduce_to_driver_error,
                },
            )
            _combined_classes[key] = combined
        return combined


def _quiet_metaclass(metaclass: type) -> type:
    """``metaclass`` without its class-creation side effects.

    The driver's protocol error classes register themselves by error code and opcode
    when created (their metaclass does it). A subclass of ours registered that way
    would replace the driver's class in its decoding table, and the reactor would then
    build *our* class from server responses. Creating ours through a metaclass whose
    ``__init__`` is plain ``type.__init__`` keeps the driver's tables untouched.
    """
    if metaclass is type:
        return type
    return type(f"_Quiet{metaclass.__name__}", (metaclass,), {"__init__": type.__init__})


def _str_with_hint(self: BaseException) -> str:
    # The combined class's bases are (category, driver class): the driver's own __str__
    # (ErrorMessage has one) renders the message from the copied attributes.
    driver_str: Any = type(self).__bases__[1].__str__
    message: str = driver_str(self)
    hint = getattr(self, "hint", None)
    return f"{message}. {hint}" if hint else message


def _reduce_to_driver_error(self: BaseException) -> tuple[Any, ...]:
    # Pickling (multiprocessing, logging handlers) falls back to the original driver
    # error: the combined classes are made at run time and cannot be imported by name.
    cause = self.__cause__
    if cause is not None:
        reduced: tuple[Any, ...] = cause.__reduce__()  # type: ignore[assignment]
        return reduced
    return (Exception, self.args)


def category_of(error: BaseException) -> type[AsyncCassandraError]:
    """The category a driver (or binding) error belongs to."""
    if isinstance(error, cassandra.cluster.NoHostAvailable):
        if "using keyspace" in str(error):
            return QueryError  # connect(keyspace) to a keyspace that does not exist
        errors = getattr(error, "errors", None)
        # Usually {host: error}; a list of hosts when connect(keyspace) failed.
        host_errors = list(errors.values()) if isinstance(errors, dict) else []
        if host_errors and all(
            isinstance(e, (cassandra.AuthenticationFailed, cassandra.protocol.BadCredentials))
            for e in host_errors
        ):
            return AuthenticationError
        if host_errors and all(is_protocol_version_error(e) for e in host_errors):
            return ConfigurationError
        if host_errors and all(
            isinstance(e, (cassandra.OperationTimedOut, builtins.TimeoutError)) for e in host_errors
        ):
            return ConnectTimeoutError  # e.g. "Timed out creating connection (10 seconds)"
    for driver_class, category in _CATEGORIES:
        if isinstance(error, driver_class):
            return category
    return QueryError


def is_protocol_version_error(error: object) -> bool:
    """Whether a host refused the protocol version the client insisted on."""
    return isinstance(error, cassandra.DriverException) and "ProtocolError" in str(error)


def translate_driver_error(error: BaseException, *, hint: str | None = None) -> BaseException:
    """Return ``error`` re-typed as one of ours, with ``error`` as ``__cause__``.

    Our own errors and control-flow exceptions (cancellation, KeyboardInterrupt) are
    returned unchanged, so ``raise translate_driver_error(error)`` is always right.
    ``hint``, if given, is appended to the message: say what the user can do.
    """
    if isinstance(error, AsyncCassandraError) or not isinstance(error, Exception):
        return error
    category = category_of(error)
    combined = _combined_class(category, type(error))
    translated: BaseException = combined.__new__(combined)
    translated.args = error.args
    # The driver keeps details as attributes (errors, consistency, required_replicas,
    # ...); keep them reachable on the new exception too.
    translated.__dict__.update(getattr(error, "__dict__", {}))
    if hint is not None:
        translated.hint = hint  # type: ignore[attr-defined]
    translated.__cause__ = error
    translated.__suppress_context__ = True
    translated.__traceback__ = error.__traceback__
    return translated


def bad_argument(
    message: str,
    base: type[Exception] = ValueError,
    *,
    category: type[AsyncCassandraError] = QueryError,
    cause: BaseException | None = None,
) -> AsyncCassandraError:
    """A :class:`QueryError` (or ``category``) for an argument the caller got wrong,
    that is also a ``base`` (``ValueError``, ``TypeError``), so code that catches the
    built-in class, as the driver and async-cassandra 0.0.1 raised it, keeps working."""
    error = _combined_class(category, base)(message)
    if cause is not None:
        error.__cause__ = cause
        error.__suppress_context__ = True
    return error
