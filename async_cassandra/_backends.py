"""The only backend-specific code: how to wake a loop from another thread, and waiters.

Everything else in async-cassandra is plain anyio. Two things cannot be:

* **The wake-up.** A driver thread must ask the loop to run a function soon without
  blocking and without touching loop state itself. asyncio has
  ``loop.call_soon_threadsafe``, trio has ``TrioToken.run_sync_soon``; both only append
  to a queue and poke the loop's self-pipe, so they are safe from any thread. On the
  loop's own thread the poke is wasted: there asyncio's ``call_soon`` serves, and for
  trio a system task of ours, parked until a callback is queued for it.
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
import contextlib
import threading
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from anyio.lowlevel import EventLoopToken

try:  # trio is an optional extra; its kit is only built when a trio loop is running.
    import outcome
    import trio
except ImportError:  # pragma: no cover - exercised only without the extra
    trio = None  # type: ignore[assignment]

__all__ = ["BackendKit", "ParkedTask", "Waiter", "backend_of", "is_cancellation", "kit_for"]


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

    def in_loop(self) -> bool:
        """Whether the caller is this loop, running (a task or callback of it), where
        :meth:`schedule` serves and a wake-up would be wasted. Any thread."""
        ...

    def schedule(self, fn: Callable[[], None]) -> bool:
        """Ask the loop to call ``fn`` in a later turn, after it has looked at its timers
        and I/O. On the loop thread only. False (and ``fn`` never called) only in the
        last moments of a trio run, once it takes no more callbacks."""
        ...

    def closed(self) -> bool:
        """Whether the loop is known to run no more of what was scheduled: an asyncio
        loop that was closed (maybe with callbacks still queued), a trio run that
        refused one. Any thread; cheap."""
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

    def in_loop(self) -> bool:
        loop = self._loop_ref()
        return loop is not None and asyncio._get_running_loop() is loop

    def schedule(self, fn: Callable[[], None]) -> bool:
        loop = self._loop_ref()
        assert loop is not None  # called on the running loop, which is alive
        # On the loop thread: no self-pipe write needed. A callback added now runs in
        # the next turn, after the turn's timers (cancel scopes' deadlines) are seen.
        loop.call_soon(fn)
        return True

    def closed(self) -> bool:
        loop = self._loop_ref()
        return loop is None or loop.is_closed()

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


class ParkedTask:
    """A trio task of the library that waits, parked, until code of the same run has
    work for it: cheaper than an event, with no wake-up of the loop (trio only)."""

    __slots__ = ("_task",)

    def __init__(self) -> None:
        self._task: Any = None

    @property
    def parked(self) -> bool:
        return self._task is not None

    async def park(self) -> None:
        """Wait until :meth:`wake`. Cancellation (the end of the run, or the task's own
        scope) raises ``Cancelled`` here and leaves it unparked."""
        self._task = trio.lowlevel.current_task()
        await trio.lowlevel.wait_task_rescheduled(self._abort)

    def wake(self) -> None:
        """Resume the task in the next scheduler batch, if it is parked. Its run only."""
        task, self._task = self._task, None
        if task is not None:
            trio.lowlevel.reschedule(task)

    def _abort(self, _raise_cancel: Any) -> Any:
        self._task = None
        return trio.lowlevel.Abort.SUCCEEDED


class _TrioKit:
    __slots__ = (
        "_ended",
        "_finished",
        "_runner",
        "_serving",
        "_soon",
        "_thread_id",
        "_token_ref",
    )

    def __init__(self, token: Any) -> None:
        self._token_ref = weakref.ref(token)
        # Made on the run's thread (for the running loop); the cheap path below is
        # taken only there, and only inside this run.
        self._thread_id = threading.get_ident()
        # Callbacks for the runner task (see _serve), run in the next scheduler batch.
        self._soon: list[Callable[[], None]] = []
        self._runner = ParkedTask()  # runs them (see _serve)
        self._serving = False  # the runner task was started and has not ended
        self._ended = False  # it has ended: the run is ending, use run_sync_soon
        # The run refused a callback (RunFinishedError): it runs nothing more. Until
        # then trio runs every callback it took, even as the run ends.
        self._finished = False

    def schedule_threadsafe(self, fn: Callable[[], None]) -> bool:
        token = self._token_ref()
        if token is None:
            return False
        try:
            # Documented as safe from any thread and non-blocking; idempotent=False
            # keeps every call, but the portal asks at most once per batch anyway.
            token.run_sync_soon(fn)
        except trio.RunFinishedError:
            self._finished = True
            return False
        return True

    def closed(self) -> bool:
        return self._finished

    def in_loop(self) -> bool:
        # The thread first: driver threads call this for every wake-up they send.
        return threading.get_ident() == self._thread_id and self._in_this_run()

    def schedule(self, fn: Callable[[], None]) -> bool:
        if self._schedule_here(fn):
            return True
        # The run is ending (the runner was cancelled): its entry queue still runs,
        # until trio closes it in the run's last moments.
        return self.schedule_threadsafe(fn)

    def _schedule_here(self, fn: Callable[[], None]) -> bool:
        # Inside this run. run_sync_soon from there would write to trio's wake-up
        # socket and have the entry-queue task read it back in a batch of its own:
        # rescheduling a parked task of ours costs neither. False (and nothing done)
        # once the runner has ended (the run is ending).
        if not self._serving:
            if self._ended:
                return False
            try:
                trio.lowlevel.spawn_system_task(self._serve, name="async-cassandra portal")
            except RuntimeError:  # the run's system nursery is closed: it is ending
                self._ended = True
                return False
            self._serving = True
        self._soon.append(fn)
        self._runner.wake()
        return True

    def _in_this_run(self) -> bool:
        # Another run may have this thread now, or none; or (guest mode) the host loop
        # may be calling us between trio's batches.
        try:
            return trio.lowlevel.current_trio_token() is self._token_ref()
        except RuntimeError:
            return False

    async def _serve(self) -> None:
        # A system task: never raises but Cancelled (at the end of the run). Callbacks
        # never raise (the schedule contract).
        soon = self._soon
        try:
            while True:
                if not soon:
                    await self._runner.park()
                batch = soon[:]
                soon.clear()
                for fn in batch:
                    fn()
                if soon:
                    # Queued by this pass's callbacks: for the next batch, after the
                    # tasks they resumed and the deadlines, as run_sync_soon's are.
                    await trio.lowlevel.checkpoint()
        finally:
            self._serving = False
            self._ended = True
            token = self._token_ref()
            if soon and token is not None:
                # Still owed a call: the ending run's entry queue makes it.
                with contextlib.suppress(trio.RunFinishedError):
                    for fn in soon:
                        token.run_sync_soon(fn)
            soon.clear()

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
