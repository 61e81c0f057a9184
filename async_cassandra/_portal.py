"""Carrying driver completions into the event loop that awaits them.

The driver completes requests by calling callbacks on its reactor thread, on its
executor threads, or inline on the caller when the result is already there. A
:class:`Portal` belongs to one running event loop. Any thread hands it ``(waiter,
value)`` pairs with :meth:`Portal.deliver`; the portal queues them and makes sure at
most one wake-up of its loop is pending, so a burst of completions costs one
``call_soon_threadsafe`` (or ``run_sync_soon``), not one each, and a completion on the
loop's own thread (``EventLoopConnection`` reads answers there) costs none: the loop is
awake. The drain then resolves the waiters on the loop thread, :data:`DRAIN_BATCH` per
turn of the loop.

The portal never blocks the calling thread (a lock held for a few bytecodes is all),
never raises into it, and drops results whose waiter was cancelled.

Portals are looked up for the loop that is awaiting (:func:`current_portal`), never
fixed when a session is made: a session made under one loop works under another.
"""

from __future__ import annotations

import threading
import weakref
from collections import deque
from typing import Any

from anyio.lowlevel import current_token

from ._backends import BackendKit, Waiter, kit_for
from ._outbox import Outbox

__all__ = ["DRAIN_BATCH", "InFlightLimiter", "Portal", "current_portal"]

# Waiters resolved per turn of the loop, at most. Each resumes its task in the loop's
# next turn, before the loop looks at its timers again; with hundreds of requests in
# flight, resolving every queued completion at once held timers (cancel scopes'
# deadlines, other tasks' sleeps) for a whole burst of task steps: loop lag p50 7-9 ms
# and p99 20-40 ms at 256 in flight, against 1-2 ms and about 9 ms in batches of 16,
# at the same throughput (see the point-reads benchmark).
DRAIN_BATCH = 16


class Portal:
    """The hand-off from any thread into one event loop.

    Also the loop's :class:`~async_cassandra._outbox.Outbox`, for the other direction.
    """

    __slots__ = (
        "__weakref__",
        "_gone",
        "_kit",
        "_lock",
        "_queue",
        "_wake_pending",
        "outbox",
        "wakeups",
    )

    def __init__(self, kit: BackendKit) -> None:
        self._kit = kit
        self.outbox = Outbox(kit)
        # deque.append and popleft are atomic in CPython, so producers on driver threads
        # and the drain on the loop thread never need the lock for the queue itself.
        self._queue: deque[tuple[Waiter, Any, BaseException | None]] = deque()
        # Guards only the "a wake-up is already on its way" flag.
        self._lock = threading.Lock()
        self._wake_pending = False
        # The loop was found gone: every later delivery is refused at once. Set once,
        # read without the lock (a delivery that misses it finds the loop gone itself).
        self._gone = False
        self.wakeups = 0  # introspection: how many times the loop was woken

    def new_waiter(self) -> Waiter:
        """A waiter of this loop's backend. Call on the loop thread."""
        return self._kit.new_waiter()

    def deliver(self, waiter: Waiter, value: Any, error: BaseException | None = None) -> bool:
        """Resolve ``waiter`` on its loop with ``value`` (or ``error``). Any thread.

        Returns False if the loop was found gone, so the value was dropped (then, and
        from then on: the in-flight limiter hands a freed slot to the next waiter when
        one is refused, see InFlightLimiter.release).
        """
        if self._gone:
            return False
        self._queue.append((waiter, value, error))
        with self._lock:
            wake = not self._wake_pending
            self._wake_pending = True
        if not wake:
            # The pending drain has not started yet, or has started but will see this
            # item: it clears the flag *before* it empties the queue. Unless the loop
            # was closed with that drain still queued, which asyncio allows.
            if not self._kit.closed():
                return True
        elif self._kit.in_loop():
            # The loop's own thread (EventLoopConnection's reader, or a completion
            # inline on the caller): the loop is awake, a wake-up would only cost a
            # write to its self-pipe and a turn to read it back.
            if self._kit.schedule(self._drain_batch):
                return True
        elif self._kit.schedule_threadsafe(self._drain):
            return True
        # The loop is gone; so are its waiters. Forget what was queued, and what comes.
        self._gone = True
        self._queue.clear()
        return False

    @property
    def pending(self) -> int:
        """Completions queued but not yet handed to their waiters."""
        return len(self._queue)

    def _drain(self) -> None:
        # On the loop thread, woken by deliver(): counted, then drained like any turn.
        self.wakeups += 1
        self._drain_batch()

    def _drain_batch(self) -> None:
        # On the loop thread. Clear the flag first: a producer that appends after this
        # point schedules a new drain, so nothing is ever stranded in the queue.
        with self._lock:
            self._wake_pending = False
        queue = self._queue
        for _ in range(DRAIN_BATCH):
            if not queue:
                return
            waiter, value, error = queue.popleft()
            # Waiters ignore results after cancellation and never raise.
            if error is None:
                waiter.set_result(value)
            else:
                waiter.set_exception(error)
        if queue:
            # The rest in the next turn, after the tasks just resumed and the timers.
            # Marked pending so producers meanwhile need no cross-thread wake-up.
            with self._lock:
                if self._wake_pending:
                    return  # a producer already woke us: its drain takes the rest
                self._wake_pending = True
            self._kit.schedule(self._drain_batch)


# One portal per running loop, keyed weakly by the loop's native token (the asyncio
# loop, or trio's TrioToken) so a finished loop takes its portal with it.
_portals: weakref.WeakKeyDictionary[object, Portal] = weakref.WeakKeyDictionary()
_portals_lock = threading.Lock()  # loops in several threads may look up at once


def current_portal() -> Portal:
    """The portal of the running event loop, made on first use."""
    token = current_token()
    native = token.native_token
    portal = _portals.get(native)
    if portal is None:
        with _portals_lock:
            portal = _portals.get(native)
            if portal is None:
                portal = _portals[native] = Portal(kit_for(token))
    return portal


class InFlightLimiter:
    """Bounds requests in flight for a session, shared by every loop that uses it.

    ``anyio.CapacityLimiter`` belongs to one event loop; a session may be used from
    several (one per test, or loops in threads), and slots are released by the driver's
    threads when a request finishes. So the count lives under a thread lock, and a task
    that has to wait parks a native waiter that the releasing thread resolves through
    the waiter's own portal.
    """

    __slots__ = ("_in_use", "_limit", "_lock", "_waiting")

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("the in-flight limit must be at least 1")
        self._limit = limit
        self._in_use = 0
        self._waiting: deque[tuple[Portal, Waiter]] = deque()
        self._lock = threading.Lock()

    @property
    def limit(self) -> int:
        return self._limit

    @property
    def in_use(self) -> int:
        """Slots held by requests the driver has not finished yet."""
        return self._in_use

    @property
    def waiting(self) -> int:
        """Tasks waiting for a slot."""
        return len(self._waiting)

    def try_acquire(self) -> bool:
        """Take a slot if one is free right now, without waiting. Any thread."""
        with self._lock:
            return self._take_locked()

    def _take_locked(self) -> bool:
        # Waiters come first: a newcomer never overtakes a task already waiting.
        if self._in_use < self._limit and not self._waiting:
            self._in_use += 1
            return True
        return False

    async def acquire(self, portal: Portal) -> None:
        """Take a slot, waiting (as an ``await``) while all are in use."""
        with self._lock:
            # Checking and queueing under one hold of the lock: a release between the
            # two would otherwise free a slot that nobody is told about.
            if self._take_locked():
                return
            entry = (portal, portal.new_waiter())
            self._waiting.append(entry)
        try:
            await entry[1].wait()
        except BaseException:
            with self._lock:
                try:
                    self._waiting.remove(entry)
                    handed_over = False
                except ValueError:
                    # release() already gave us the slot before the cancellation won.
                    handed_over = True
            if handed_over:
                self.release()
            raise

    def set_limit(self, limit: int) -> None:
        """Change the bound. Raised, it lets waiters in at once; lowered, requests in
        flight go on and new ones wait until the count is under the new bound. Any
        thread."""
        if limit < 1:
            raise ValueError("the in-flight limit must be at least 1")
        admitted: list[tuple[Portal, Waiter]] = []
        with self._lock:
            self._limit = limit
            while self._waiting and self._in_use < limit:
                self._in_use += 1
                admitted.append(self._waiting.popleft())
        for portal, waiter in admitted:
            if not portal.deliver(waiter, None):
                self.release()  # its loop is gone: pass the slot on

    def release(self) -> None:
        """Give a slot back. Any thread (the driver's, when a request finishes)."""
        with self._lock:
            if self._waiting and self._in_use <= self._limit:
                # Hand the slot straight to the next waiter: the count stays the same,
                # so no newcomer can overtake it.
                portal, waiter = self._waiting.popleft()
            else:
                self._in_use -= 1
                return
        if not portal.deliver(waiter, None):
            # The waiter's loop is gone, and with it the task that would have used and
            # released this slot: pass it on.
            self.release()
