"""What a session owns that must end when it closes, whoever closes it.

A session is closed by its own :meth:`~async_cassandra.AsyncCassandraSession.close`, or
by its cluster's shutdown (the driver's cluster shutdown closes the driver sessions
too). Either way the same things must happen: refuse new requests, fail those in flight
at once (the driver drops them silently when its pools shut down), and wait, bounded,
for the worker threads the session started. :class:`SessionResources` holds that state,
so the cluster closes a session through this small interface rather than through the
session's private attributes, and ``session.py`` needs nothing from ``cluster.py``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING

import anyio

from ._offloop import OffLoopCalls
from .exceptions import ConnectionError, TimeoutError

if TYPE_CHECKING:
    from ._request import DriverRequest

__all__ = ["CLOSE_TIMEOUT", "SessionResources", "close_in_exit", "close_within"]

logger = logging.getLogger("async_cassandra")

# How long closing may take before we stop waiting for the driver (it goes on in a
# worker thread). Closing runs shielded, so it needs a bound of its own.
CLOSE_TIMEOUT = 10.0


class SessionResources:
    """A session's requests in flight and worker threads, and whether it is closed."""

    __slots__ = ("__weakref__", "_closed", "_lock", "offloop", "requests")

    def __init__(self) -> None:
        # Driver requests whose callbacks are still registered (introspection, and the
        # ones to fail at close). Driver threads remove themselves: set ops are atomic.
        self.requests: set[DriverRequest] = set()
        # Blocking driver calls (prepare, traces, shutdown) run in these threads.
        self.offloop = OffLoopCalls()
        self._closed = False
        self._lock = threading.Lock()  # close() may race a cluster shutdown in a thread

    @property
    def closed(self) -> bool:
        return self._closed

    def mark_closed(self) -> bool:
        """Refuse new requests and fail those in flight; False if already closed. Any
        thread."""
        with self._lock:
            if self._closed:
                return False
            self._closed = True
        for request in list(self.requests):
            request.abandon(
                ConnectionError("the session was closed while this request was in flight")
            )
        return True

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no worker thread of the session runs; False after ``timeout``."""
        return await self.offloop.wait_idle(timeout)


async def close_within(
    timeout: float,
    offloop: OffLoopCalls,
    shutdown: Callable[[], object],
    name: str,
    also_wait: Iterable[OffLoopCalls] = (),
) -> bool:
    """Start the blocking ``shutdown`` in a thread of ``offloop`` (it always runs to its
    end), then wait until every thread of ``offloop`` and ``also_wait`` has returned
    (calls abandoned by cancelled callers included: they were started in the closing
    object's scope).

    Shielded from cancellation, so a cancelled ``async with`` still closes; bounded by
    ``timeout`` seconds in all, since shielded work needs a bound of its own. True if
    everything finished in time; otherwise the rest goes on in its threads.
    """
    offloop.start(shutdown, name)
    with anyio.CancelScope(shield=True):
        deadline = anyio.current_time() + timeout
        for calls in (offloop, *also_wait):
            if not await calls.wait_idle(max(deadline - anyio.current_time(), 0.0)):
                return False
    return True


async def close_in_exit(close: Callable[[], Awaitable[None]], exc: BaseException | None) -> None:
    """``await close()`` for an ``__aexit__``: a close that timed out must not hide the
    exception already leaving the block (or a cancellation), so it is logged then."""
    try:
        await close()
    except TimeoutError as error:
        if exc is None:
            raise
        logger.warning("%s (while leaving the block with %r)", error, exc)
