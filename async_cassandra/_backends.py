"""The only backend-specific code: how to wake a loop from another thread, and waiters.

Everything else in async-cassandra is plain anyio. Two things cannot be:

* **The wake-up.** A driver thread must ask the loop to run a function soon without
  blocking and without touching loop state itself. asyncio has
  ``loop.call_soon_threadsafe``, trio has ``TrioToken.run_sync_soon``; both only append
  to a queue and poke the loop's self-pipe, so they are safe from any thread.
  (``anyio.from_thread.run_sync`` blocks the calling thread until the loop ran the
  function, and ``anyio.Event.set()`` from a foreign thread loses wake-ups on asyncio
  and raises on trio, so neither may be used from a driver callback.)
* **The waiter.** One request waits for one result. A native waiter (an asyncio future;
  trio's ``wait_task_rescheduled``) costs a fraction of an ``anyio.Event`` and cancels
  the way each backend cancels, which anyio's cancel scopes drive on both.

Waiters are resolved only on their own loop's thread (the portal's drain runs there),
so they need no locks.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from anyio.lowlevel import EventLoopToken

try:  # trio is an optional extra; its kit is only built when a trio loop is running.
    import outcome
    import trio
except ImportError:  # pragma: no cover - exercised only without the extra
    trio = None  # type: ignore[assignment]

__all__ = ["BackendKit", "Waiter", "backend_of", "is_cancellation", "kit_for"]


class Waiter(Protocol):
    """Waits, in one task, for one value or error delivered on the loop thread."""

    def set_result(self, value: Any) -> None: ...
    def set_exception(self, error: BaseException) -> None: ...
    async def wait(self) -> Any: ...


class BackendKit(Protocol):
    """What the portal needs from one running event loop."""

    def schedule_threadsafe(self, fn: Callable[[], None]) -> bool:
        """Ask the loop to call ``fn`` soon; from any thread, never blocking.

        Returns False when the loop is gone (closed or its run finished).
        """
        ...

    def schedule(self, fn: Callable[[], None]) -> None:
        """Ask the loop to call ``fn`` in a later turn, after it has looked at its timers
        and I/O. On the loop thread only."""
        ...

    def clock(self) -> float:
        """The loop's clock (``anyio.current_time()``), readable from a callback of the
        loop, where anyio cannot tell which backend runs it."""
        ...

    def new_waiter(self) -> Waiter: ...

    def spawn_detached(self, fn: Callable[[], Awaitable[None]]) -> object:
        """Run ``fn()`` as a task of the loop outside any task group; returns what keeps
        it alive. Only for 0.0.1's start/stop APIs: ``fn`` must catch its own errors
        and end when its own cancel scope is cancelled (see monitoring)."""
        ...


class _AsyncioWaiter:
    __slots__ = ("_future",)

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._future: asyncio.Future[Any] = loop.create_future()

    def set_result(self, value: Any) -> None:
        # A cancelled waiter's future is already done: the late result is dropped.
        if not self._future.done():
            self._future.set_result(value)

    def set_exception(self, error: BaseException) -> None:
        if not self._future.done():
            self._future.set_exception(error)

    async def wait(self) -> Any:
        # Cancelling the task (anyio's cancel scopes do that) cancels this future too.
        return await self._future


class _AsyncioKit:
    __slots__ = ("_loop_ref",)

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        # Weak: the portal registry is keyed weakly by the loop, and a strong reference
        # from the value would keep every loop ever used alive.
        self._loop_ref = weakref.ref(loop)

    def schedule_threadsafe(self, fn: Callable[[], None]) -> bool:
        loop = self._loop_ref()
        if loop is None:
            return False
        try:
            # Thread-safe by contract: appends to the loop's ready queue under its own
            # lock-free discipline and writes one byte to the self-pipe.
            loop.call_soon_threadsafe(fn)
        except RuntimeError:  # "Event loop is closed": nobody is left to wake.
            return False
        return True

    def schedule(self, fn: Callable[[], None]) -> None:
        loop = self._loop_ref()
        assert loop is not None  # called on the running loop, which is alive
        # On the loop thread: no self-pipe write needed. A callback added now runs in
        # the next turn, after the turn's timers (cancel scopes' deadlines) are seen.
        loop.call_soon(fn)

    def clock(self) -> float:
        loop = self._loop_ref()
        assert loop is not None
        return loop.time()

    def new_waiter(self) -> Waiter:
        loop = self._loop_ref()
        assert loop is not None  # called on the running loop, which is alive
        return _AsyncioWaiter(loop)

    def spawn_detached(self, fn: Callable[[], Awaitable[None]]) -> object:
        loop = self._loop_ref()
        assert loop is not None

        async def run() -> None:
            await fn()

        # The loop keeps only a weak reference to its tasks: the caller holds this one.
        return loop.create_task(run())


class _TrioWaiter:
    __slots__ = ("_aborted", "_early", "_task")

    def __init__(self) -> None:
        self._task: Any = None
        self._aborted = False
        # A result that arrived before wait() started (not possible through the portal,
        # which resolves in a later loop tick, but cheap to make impossible to lose).
        self._early: Any = None

    def set_result(self, value: Any) -> None:
        self._deliver(outcome.Value(value))

    def set_exception(self, error: BaseException) -> None:
        self._deliver(outcome.Error(error))

    def _deliver(self, result: Any) -> None:
        if self._aborted:
            return  # the waiting task was cancelled: drop the late result
        task, self._task = self._task, None
        if task is None:
            if self._early is None:
                self._early = result
            return
        trio.lowlevel.reschedule(task, result)

    async def wait(self) -> Any:
        if self._early is not None:
            await trio.lowlevel.checkpoint()
            return self._early.unwrap()
        self._task = trio.lowlevel.current_task()

        def abort(_raise_cancel: Any) -> Any:
            # Runs on the loop thread when the task is cancelled while waiting; the
            # result, if it ever comes, is then discarded by _deliver.
            self._aborted = True
            self._task = None
            return trio.lowlevel.Abort.SUCCEEDED

        return await trio.lowlevel.wait_task_rescheduled(abort)


class _TrioKit:
    __slots__ = ("_token_ref",)

    def __init__(self, token: Any) -> None:
        self._token_ref = weakref.ref(token)

    def schedule_threadsafe(self, fn: Callable[[], None]) -> bool:
        token = self._token_ref()
        if token is None:
            return False
        try:
            # Documented as safe from any thread and non-blocking; idempotent=False
            # keeps every call, but the portal asks at most once per batch anyway.
            token.run_sync_soon(fn)
        except trio.RunFinishedError:
            return False
        return True

    def schedule(self, fn: Callable[[], None]) -> None:
        token = self._token_ref()
        assert token is not None  # called on the running loop, which is alive
        # trio has no cheaper loop-thread variant. Its entry-queue task runs the
        # callbacks queued before each of its passes and checkpoints between passes, so
        # one queued from a callback waits for the next scheduler batch (and deadlines).
        token.run_sync_soon(fn)

    def clock(self) -> float:
        return trio.current_time()

    def new_waiter(self) -> Waiter:
        return _TrioWaiter()

    def spawn_detached(self, fn: Callable[[], Awaitable[None]]) -> object:
        # A system task: trio's only task outside a nursery. It must not raise (that
        # would end the whole run), which spawn_detached's contract asks of fn.
        return trio.lowlevel.spawn_system_task(fn)


def is_cancellation(error: BaseException) -> bool:
    """Whether ``error`` is a backend's cancellation (asyncio's ``CancelledError``,
    trio's ``Cancelled``); usable outside a running loop, as in a finalizer."""
    if isinstance(error, asyncio.CancelledError):
        return True
    return trio is not None and isinstance(error, trio.Cancelled)


def backend_of(native: object) -> str:
    """``"asyncio"`` or ``"trio"``: the backend of a loop's native token (the asyncio
    loop, or trio's ``TrioToken``); RuntimeError for any other."""
    if isinstance(native, asyncio.AbstractEventLoop):
        return "asyncio"
    module = type(native).__module__
    if module.startswith("trio"):
        return "trio"
    raise RuntimeError(f"async-cassandra supports asyncio and trio, not {module}")


def kit_for(token: EventLoopToken) -> BackendKit:
    """The backend kit for the loop ``token`` belongs to."""
    native = token.native_token
    if backend_of(native) == "asyncio":
        return _AsyncioKit(native)  # type: ignore[arg-type]
    return _TrioKit(native)
