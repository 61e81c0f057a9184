"""Blocking driver calls, run in worker threads that closing waits for.

Connecting, preparing, fetching a trace, refreshing metadata and shutting down block
the calling thread inside the driver, so they run in anyio worker threads. Cancelling
the awaiting task returns at once (the thread is abandoned: a blocking call cannot be
interrupted), but the thread is still ours: the cluster or session that started it
waits for it, bounded, when it closes, so nothing we started outlives the `async with`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import anyio

__all__ = ["OffLoopCalls"]

T = TypeVar("T")

logger = logging.getLogger("async_cassandra")


class OffLoopCalls:
    """Runs blocking calls off the loop and knows how many are still running."""

    __slots__ = ("_idle", "_lock", "_running")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running = 0
        self._idle = threading.Event()
        self._idle.set()

    @property
    def running(self) -> int:
        """Calls whose worker thread has not returned yet (abandoned ones included)."""
        return self._running

    async def run(self, function: Callable[..., T], *args: Any) -> T:
        """``function(*args)`` in a worker thread; cancellation abandons the thread."""
        with self._lock:
            self._running += 1
            self._idle.clear()
        # [started, given up]: whichever of the worker and a cancelled caller takes the
        # lock first decides whether the call runs; the other side then knows.
        state = [False, False]

        def call() -> T | None:
            with self._lock:
                if state[1]:
                    return None  # the caller gave up before the thread started
                state[0] = True
            try:
                return function(*args)
            finally:
                self._done()

        try:
            result = await anyio.to_thread.run_sync(call, abandon_on_cancel=True)
        except BaseException:
            with self._lock:
                never_started = not state[0]
                state[1] = True
            if never_started:
                self._done()
            raise
        return result  # type: ignore[return-value]  # None only when given up

    def start(self, function: Callable[[], object], name: str) -> None:
        """Start ``function()`` in a thread of its own and return at once; it runs to
        its end whatever happens to the caller (:meth:`wait_idle` waits for it).

        For closing: a shutdown must run even when the closing caller stops waiting
        at once (a worker thread of :meth:`run` may never start if its caller is
        cancelled first). An exception it raises is logged: nobody awaits it.
        """
        with self._lock:
            self._running += 1
            self._idle.clear()

        def call() -> None:
            try:
                function()
            except Exception:
                logger.exception("%s failed", name)
            finally:
                self._done()

        # A daemon, as anyio's worker threads are: it must not keep the process alive.
        threading.Thread(target=call, name=f"async-cassandra {name}", daemon=True).start()

    def _done(self) -> None:
        # In a worker thread or on the loop: the count is shared, hence the lock.
        with self._lock:
            self._running -= 1
            if self._running == 0:
                self._idle.set()

    async def wait_idle(self, timeout: float) -> bool:
        """Wait (in a worker thread) until no call is running; False on timeout."""
        if self._idle.is_set():
            return True
        return await anyio.to_thread.run_sync(self._idle.wait, timeout, abandon_on_cancel=True)
