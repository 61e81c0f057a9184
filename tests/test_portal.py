"""The portal and the request bridge, pinned with a fake driver thread (both backends).

Unit tests: every feature also has real-server tests; these pin races a real server
cannot be made to produce on demand.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from typing import Any

import anyio
import pytest
from _helpers import wait_until
from anyio.lowlevel import current_token

from async_cassandra._backends import kit_for
from async_cassandra._portal import DRAIN_BATCH, InFlightLimiter, Portal, current_portal
from async_cassandra._request import DriverRequest
from async_cassandra.streaming import AsyncStreamingResultSet, StreamConfig

pytestmark = pytest.mark.anyio


def in_thread(function: Any, *args: Any) -> None:
    """Run ``function`` in a fresh thread and wait for it: a stand-in driver thread.

    Joining blocks the loop on purpose: whatever the thread delivers meanwhile is
    queued, so what the loop sees afterwards is deterministic.
    """
    thread = threading.Thread(target=function, args=args)
    thread.start()
    thread.join()


async def test_a_burst_of_completions_costs_one_wake_up() -> None:
    portal = current_portal()
    waiters = [portal.new_waiter() for _ in range(1000)]
    before = portal.wakeups

    def deliver_all() -> None:
        for index, waiter in enumerate(waiters):
            portal.deliver(waiter, index)

    in_thread(deliver_all)
    assert portal.pending == 1000
    assert [await waiter.wait() for waiter in waiters] == list(range(1000))
    assert portal.wakeups - before == 1
    assert portal.pending == 0


class CountingKit:
    """The running loop's kit, counting the callbacks the portal has it run."""

    def __init__(self) -> None:
        self.inner = kit_for(current_token())
        self.callbacks_run = 0
        self.wake_ups = 0

    def _counted(self, fn: Any) -> Any:
        def run() -> None:
            self.callbacks_run += 1
            fn()

        return run

    def schedule_threadsafe(self, fn: Any) -> bool:
        self.wake_ups += 1
        return self.inner.schedule_threadsafe(self._counted(fn))

    def schedule(self, fn: Any) -> None:
        self.inner.schedule(self._counted(fn))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


async def test_a_burst_is_resolved_a_batch_per_turn_of_the_loop() -> None:
    # With hundreds of completions queued, resolving them all in one callback would
    # resume every task before the loop looks at its timers again.
    kit = CountingKit()
    portal = Portal(kit)
    resolved_in: list[int] = []  # for each waiter in turn, the callback that resolved it

    class Recording:
        def __init__(self) -> None:
            self.inner = kit.new_waiter()

        def set_result(self, value: Any) -> None:
            resolved_in.append(kit.callbacks_run)
            self.inner.set_result(value)

        def set_exception(self, error: BaseException) -> None:
            raise AssertionError("no errors here")

        async def wait(self) -> Any:
            return await self.inner.wait()

    waiters = [Recording() for _ in range(100)]

    def deliver_all() -> None:
        for index, waiter in enumerate(waiters):
            portal.deliver(waiter, index)

    in_thread(deliver_all)
    assert [await waiter.wait() for waiter in waiters] == list(range(100))
    per_callback = [resolved_in.count(run) for run in sorted(set(resolved_in))]
    assert per_callback == [DRAIN_BATCH] * (100 // DRAIN_BATCH) + [100 % DRAIN_BATCH]
    assert kit.wake_ups == 1  # the rest were resumed from the loop thread itself
    assert portal.pending == 0


async def test_errors_are_delivered_as_raised_exceptions() -> None:
    portal = current_portal()
    waiter = portal.new_waiter()
    in_thread(portal.deliver, waiter, None, KeyError("boom"))
    with pytest.raises(KeyError, match="boom"):
        await waiter.wait()


async def test_a_cancelled_waiter_drops_its_late_result() -> None:
    portal = current_portal()
    waiter = portal.new_waiter()
    with anyio.move_on_after(0.01) as scope:
        await waiter.wait()
    assert scope.cancelled_caught
    in_thread(portal.deliver, waiter, "late")
    in_thread(portal.deliver, waiter, None, RuntimeError("late too"))
    # Let the drain run: nothing may raise into the loop (the fixture checks asyncio's
    # exception handler) and the queue empties.
    await anyio.sleep(0.01)
    assert portal.pending == 0


async def test_one_portal_per_loop() -> None:
    assert current_portal() is current_portal()

    def portal_of_another_loop() -> Portal:
        async def get() -> Portal:
            return current_portal()

        return anyio.run(get)

    other = await anyio.to_thread.run_sync(portal_of_another_loop)
    assert other is not current_portal()


async def portal_and_waiter() -> tuple[Portal, Any]:
    """The running loop's portal and a waiter of it (for a run that then ends)."""
    portal = current_portal()
    return portal, portal.new_waiter()


def test_delivering_to_a_finished_loop_is_harmless() -> None:
    for backend in ("asyncio", "trio"):
        portal, waiter = anyio.run(portal_and_waiter, backend=backend)
        outcome: list[bool] = []
        for _ in range(3):  # each is refused, not only the first
            in_thread(lambda: outcome.append(portal.deliver(waiter, 1)))  # noqa: B023
        assert outcome == [False, False, False]
        assert portal.pending == 0


def test_a_loop_closed_with_a_drain_still_queued_refuses_deliveries() -> None:
    # asyncio lets a loop be closed with callbacks queued (run_until_complete, then
    # close): a drain asked for then never runs, and deliveries meanwhile saw "a drain
    # is on its way" and reported success for good.
    loop = asyncio.new_event_loop()
    portal, waiter = loop.run_until_complete(portal_and_waiter())
    outcome: list[bool] = []
    in_thread(lambda: outcome.append(portal.deliver(waiter, 1)))  # the drain is queued
    loop.close()
    for _ in range(2):
        in_thread(lambda: outcome.append(portal.deliver(waiter, 2)))
    assert outcome == [True, False, False]
    assert portal.pending == 0


def test_a_slot_freed_for_waiters_of_a_closed_loop_is_not_lost() -> None:
    # The in-flight limiter hands a freed slot to the next waiter; each waiter whose
    # loop is gone must refuse it, not only the first, or the slot is lost for good.
    limiter = InFlightLimiter(1)
    assert limiter.try_acquire()
    loop = asyncio.new_event_loop()

    tasks: list[asyncio.Future[None]] = []

    async def wait_for_the_slot() -> None:
        portal = current_portal()
        tasks.extend(asyncio.ensure_future(limiter.acquire(portal)) for _ in range(3))
        await asyncio.sleep(0)  # three tasks wait for the one slot

    loop.run_until_complete(wait_for_the_slot())
    assert limiter.waiting == 3
    loop.close()  # with its tasks still waiting (run_until_complete, then close)
    in_thread(limiter.release)  # refused by all three
    assert (limiter.in_use, limiter.waiting) == (0, 0)
    assert limiter.try_acquire()
    assert not any(task.done() for task in tasks)


async def test_completions_on_the_loops_own_thread_need_no_wake_up() -> None:
    # EventLoopConnection reads answers on the loop's thread, and a driver callback can
    # run inline on the caller: the loop is awake then, so no self-pipe write (or
    # trio wake-up socket write) and no turn spent reading it back.
    portal = current_portal()
    waiters = [portal.new_waiter() for _ in range(100)]
    before = portal.wakeups
    for index, waiter in enumerate(waiters[:50]):
        assert portal.deliver(waiter, index)
    await anyio.lowlevel.checkpoint()
    for index, waiter in enumerate(waiters[50:], 50):
        assert portal.deliver(waiter, index)
    assert [await waiter.wait() for waiter in waiters] == list(range(100))
    assert portal.wakeups == before
    assert portal.pending == 0


def test_a_finished_loop_is_not_served_by_a_later_one_on_its_thread() -> None:
    # The thread alone does not say which loop is running on it.
    for backend in ("asyncio", "trio"):
        portal, waiter = anyio.run(portal_and_waiter, backend=backend)

        async def later() -> bool:
            return portal.deliver(waiter, 1)  # noqa: B023

        assert anyio.run(later, backend=backend) is False
        assert portal.pending == 0


async def test_callbacks_scheduled_on_the_loop_run_in_order_in_later_turns() -> None:
    kit = kit_for(current_token())
    ran: list[str] = []

    def first() -> None:
        ran.append("first")
        kit.schedule(lambda: ran.append("third"))  # from a callback: a later turn

    kit.schedule(first)
    kit.schedule(lambda: ran.append("second"))
    assert ran == []  # never at once
    await wait_until(lambda: len(ran) == 3, "the three callbacks ran")
    assert ran == ["first", "second", "third"]


def test_callbacks_still_owed_when_a_trio_run_ends_are_run() -> None:
    # The trio kit's callbacks are run by a system task of the run, which the end of
    # the run cancels: what it still owes goes to the run's entry queue.
    ran: list[str] = []

    async def main() -> None:
        kit = kit_for(current_token())

        def first() -> None:
            ran.append("first")
            kit.schedule(lambda: ran.append("second"))

        kit.schedule(first)

    anyio.run(main, backend="trio")
    assert ran == ["first", "second"]


async def test_limiter_hands_a_released_slot_to_the_next_waiter() -> None:
    limiter = InFlightLimiter(2)
    portal = current_portal()
    await limiter.acquire(portal)
    await limiter.acquire(portal)
    assert limiter.in_use == 2
    assert not limiter.try_acquire()
    acquired = anyio.Event()

    async def third() -> None:
        await limiter.acquire(portal)
        acquired.set()

    async with anyio.create_task_group() as group:
        group.start_soon(third)
        await anyio.wait_all_tasks_blocked()
        assert limiter.waiting == 1
        in_thread(limiter.release)  # as the driver thread does when a request ends
        await acquired.wait()
    assert limiter.in_use == 2
    assert limiter.waiting == 0
    limiter.release()
    limiter.release()
    assert limiter.in_use == 0


async def test_a_cancelled_acquirer_never_leaks_a_slot() -> None:
    limiter = InFlightLimiter(1)
    portal = current_portal()
    await limiter.acquire(portal)
    with anyio.CancelScope() as scope:
        scope.cancel()
        await limiter.acquire(portal)
    assert limiter.waiting == 0

    # The slot is handed over and the waiter cancelled before it runs: it gives the
    # slot back rather than keeping it.
    async with anyio.create_task_group() as group:
        group.start_soon(limiter.acquire, portal)
        await anyio.wait_all_tasks_blocked()
        in_thread(limiter.release)
        group.cancel_scope.cancel()
    assert limiter.in_use in (0, 1)
    if limiter.in_use == 1:  # the acquirer won the race and kept the slot legitimately
        limiter.release()
    assert limiter.try_acquire()
    limiter.release()
    assert limiter.in_use == 0


class FakeResponseFuture:
    """The slice of ``ResponseFuture`` a ``DriverRequest`` uses, driven by a test."""

    def __init__(self, pages: list[list[int]], *, done_at_once: bool = False) -> None:
        self._pages = pages
        self._served = 0
        self._callbacks: list[tuple[Any, Any]] = []
        self._paging_state: bytes | None = None
        self._col_names = ["n"]
        self.row_factory = lambda names, rows: rows
        self.done_at_once = done_at_once
        self.fetched_on: list[threading.Thread] = []  # the thread of each next-page ask

    @property
    def has_more_pages(self) -> bool:
        return self._paging_state is not None

    def add_callbacks(self, callback: Any, errback: Any) -> None:
        self._callbacks.append((callback, errback))
        if self.done_at_once:  # like the driver when the result is already there
            self.complete()

    def clear_callbacks(self) -> None:
        self._callbacks = []

    def start_fetching_next_page(self) -> None:
        # The test calls complete() from its "driver thread".
        self.fetched_on.append(threading.current_thread())

    def complete(self) -> None:
        page = self.row_factory(self._col_names, self._pages[self._served])
        self._served += 1
        self._paging_state = b"more" if self._served < len(self._pages) else None
        for callback, _ in list(self._callbacks):
            callback(page)


def sent_request(
    future: FakeResponseFuture,
    limiter: InFlightLimiter,
    portal: Portal,
    registry: set[DriverRequest],
    page_timeout: float | None = None,
) -> DriverRequest:
    """A request over ``future``, sent (an in-flight slot of ``limiter`` must be held)."""
    request = DriverRequest(
        limiter, portal, registry, lambda _timeout: (future, None), page_timeout=page_timeout
    )
    request.send(anyio.current_time())
    return request


@dataclass
class FakeStream:
    stream: AsyncStreamingResultSet
    request: DriverRequest
    future: FakeResponseFuture
    limiter: InFlightLimiter
    registry: set[DriverRequest]


async def fake_stream(pages: list[list[int]], config: StreamConfig) -> FakeStream:
    """A stream over a fake future whose first page has arrived."""
    limiter = InFlightLimiter(4)
    registry: set[DriverRequest] = set()
    portal = current_portal()
    future = FakeResponseFuture(pages)
    await limiter.acquire(portal)
    request = sent_request(future, limiter, portal, registry, page_timeout=5)
    in_thread(future.complete)
    first = await request.page()
    stream = AsyncStreamingResultSet(request, first, config, limiter=limiter)
    return FakeStream(stream, request, future, limiter, registry)


async def test_request_completed_before_its_callback_is_attached_does_not_hang() -> None:
    limiter = InFlightLimiter(4)
    registry: set[DriverRequest] = set()
    portal = current_portal()
    await limiter.acquire(portal)
    future = FakeResponseFuture([[1, 2]], done_at_once=True)
    request = sent_request(future, limiter, portal, registry)
    with anyio.fail_after(5):
        assert await request.page() == [1, 2]
    request.detach()
    assert limiter.in_use == 0
    assert registry == set()
    assert future._callbacks == []


async def test_callbacks_are_registered_once_across_pages() -> None:
    limiter = InFlightLimiter(4)
    registry: set[DriverRequest] = set()
    portal = current_portal()
    future = FakeResponseFuture([[1], [2], [3]])
    await limiter.acquire(portal)
    request = sent_request(future, limiter, portal, registry)
    in_thread(future.complete)
    pages = [await request.page()]
    while future.has_more_pages:
        await limiter.acquire(portal)
        request.start_next_page(portal)
        assert len(future._callbacks) == 1  # page N does not fire N callbacks
        in_thread(future.complete)
        pages.append(await request.page())
    assert pages == [[1], [2], [3]]
    assert request.pages_requested == 3
    request.detach()
    assert limiter.in_use == 0
    assert registry == set()


async def test_a_detached_request_drops_its_callbacks_when_the_driver_finishes() -> None:
    limiter = InFlightLimiter(4)
    registry: set[DriverRequest] = set()
    portal = current_portal()
    future = FakeResponseFuture([[1]])
    await limiter.acquire(portal)
    request = sent_request(future, limiter, portal, registry)
    with anyio.move_on_after(0.01):
        await request.page()
    assert registry == {request}  # still in flight: the slot stays taken
    assert limiter.in_use == 1
    in_thread(future.complete)
    assert registry == set()
    assert limiter.in_use == 0
    assert future._callbacks == []


async def test_empty_pages_in_the_middle_of_a_stream_are_skipped() -> None:
    fake = await fake_stream([[1, 2], [], [], [3], []], StreamConfig(fetch_size=2))
    stream, request, future = fake.stream, fake.request, fake.future
    limiter, registry = fake.limiter, fake.registry
    rows: list[int] = []

    async def driver_thread() -> None:
        # Answer each page request as the reactor would, from another thread.
        while future.has_more_pages or registry:
            if request._waiter is not None and future._served < len(future._pages):
                in_thread(future.complete)
            await anyio.sleep(0.001)

    async with anyio.create_task_group() as group:
        group.start_soon(driver_thread)
        async with stream:
            rows = [row async for row in stream]
    assert rows == [1, 2, 3]
    assert stream.empty_pages == 3
    assert stream.pages_requested == 5
    assert registry == set()
    assert limiter.in_use == 0


async def test_off_loop_calls_are_counted_until_their_thread_returns() -> None:
    import threading as _threading

    from async_cassandra._offloop import OffLoopCalls

    calls = OffLoopCalls()
    release = _threading.Event()
    with anyio.CancelScope() as scope:
        scope.cancel()
        await calls.run(release.wait, 5)  # cancelled before (or as) the thread starts
    with anyio.move_on_after(0.05):
        await calls.run(release.wait, 5)  # abandoned while the thread blocks
    assert calls.running >= 1
    assert not await calls.wait_idle(0.05)
    release.set()
    assert await calls.wait_idle(5)
    assert calls.running == 0
    assert await calls.run(sum, [1, 2]) == 3


async def test_a_waiting_stream_asks_for_the_next_page_from_the_driver_thread() -> None:
    # The next page goes out as soon as one arrives, from the driver's thread, when
    # there is room for it; the loop need not see the page first.
    fake = await fake_stream([[1], [2], [3], [4]], StreamConfig(fetch_size=1, read_ahead=1))
    stream, future = fake.stream, fake.future
    loop_thread = threading.current_thread()
    assert future.fetched_on == [loop_thread]  # page 2, read ahead of page 1 at once
    # Page 2 arrives while page 1 is unread: no room for page 3 (2 pages held).
    in_thread(future.complete)
    assert future.fetched_on == [loop_thread]
    rows: list[int] = []

    async def consume() -> None:
        async with stream:
            rows.extend([row async for row in stream])

    async with anyio.create_task_group() as group:
        group.start_soon(consume)
        await _driver_side_of_the_stream(stream, future, loop_thread)
    assert rows == [1, 2, 3, 4]
    assert stream.max_rows_held <= 2
    assert fake.registry == set()
    assert fake.limiter.in_use == 0


async def _driver_side_of_the_stream(
    stream: Any, future: FakeResponseFuture, loop_thread: threading.Thread
) -> None:
    await wait_until(lambda: len(future.fetched_on) == 2, "page 3 is asked for")
    assert future.fetched_on[1] is loop_thread  # as the consumer took page 2
    await wait_until(lambda: stream._consumer_waiting, "pages 1-2 are read")
    # Page 3 arrives while the consumer waits: page 4 is asked for on the driver
    # thread, before the loop has seen page 3 (in_thread blocks the loop meanwhile).
    in_thread(future.complete)
    assert len(future.fetched_on) == 3
    assert future.fetched_on[2] is not loop_thread
    assert stream.pages_requested == 4
    in_thread(future.complete)  # page 4, the last


async def test_without_read_ahead_the_next_page_waits_until_the_current_is_read() -> None:
    fake = await fake_stream([[1, 2], [3]], StreamConfig(fetch_size=2, read_ahead=0))
    stream, future = fake.stream, fake.future
    async with stream:
        assert [await stream.__anext__(), await stream.__anext__()] == [1, 2]
        assert future.fetched_on == []  # page 1 is held: no room for page 2 yet
        assert stream.rows_held == 0
        async with anyio.create_task_group() as group:
            group.start_soon(in_thread_when, lambda: len(future.fetched_on) == 1, future.complete)
            assert await stream.__anext__() == 3
        assert stream.max_rows_held == 2
    assert fake.limiter.in_use == 0


async def in_thread_when(condition: Any, function: Any) -> None:
    await wait_until(condition, "the stream asks the driver")
    in_thread(function)


async def test_a_last_empty_page_still_on_its_way_is_waited_for_and_counted() -> None:
    # The empty last page reaches the driver thread while the consumer is inside the
    # page before it (rows of one page are handed out without a checkpoint): the
    # stream must not end before the loop has taken that page in.
    fake = await fake_stream([[1, 2], [3, 4], []], StreamConfig(fetch_size=2, read_ahead=1))
    stream, future = fake.stream, fake.future
    in_thread(future.complete)  # page 2, read ahead
    async with stream:
        assert [await stream.__anext__() for _ in range(3)] == [1, 2, 3]
        assert stream.pages_requested == 3
        in_thread(future.complete)  # the empty page 3, not yet seen by the loop
        assert await stream.__anext__() == 4
        with pytest.raises(StopAsyncIteration):
            await stream.__anext__()
    # Every page counts, the empty one too (as in async-cassandra 0.0.1).
    assert (stream.page_number, stream.empty_pages, stream.pages_requested) == (3, 1, 3)
    assert fake.registry == set()
    assert fake.limiter.in_use == 0


async def test_a_page_error_still_on_its_way_is_raised_without_asking_again() -> None:
    fake = await fake_stream([[1, 2], [3, 4], [5, 6]], StreamConfig(fetch_size=2, read_ahead=1))
    stream, future = fake.stream, fake.future
    in_thread(future.complete)  # page 2, read ahead

    def fail_page() -> None:  # the driver's errback; its paging state is unchanged
        for _, errback in list(future._callbacks):
            errback(RuntimeError("page 3 failed"))

    async with stream:
        assert [await stream.__anext__() for _ in range(3)] == [1, 2, 3]
        in_thread(fail_page)
        assert await stream.__anext__() == 4
        with pytest.raises(RuntimeError, match="page 3 failed"):
            await stream.__anext__()
    assert stream.pages_requested == 3  # the failed page was not asked for again
    assert fake.registry == set()
    assert fake.limiter.in_use == 0


async def test_raising_the_limit_lets_waiters_in_and_lowering_it_holds_newcomers() -> None:
    limiter = InFlightLimiter(1)
    portal = current_portal()
    await limiter.acquire(portal)
    admitted: list[int] = []

    async def wait_for_a_slot(n: int) -> None:
        await limiter.acquire(portal)
        admitted.append(n)

    async with anyio.create_task_group() as group:
        for n in range(3):
            group.start_soon(wait_for_a_slot, n)
        await wait_until(lambda: limiter.waiting == 3, "three waiting")
        limiter.set_limit(3)  # two more slots: two of the waiters
        await wait_until(lambda: len(admitted) == 2, "two admitted")
        assert (limiter.in_use, limiter.waiting) == (3, 1)
        limiter.set_limit(1)  # lowered below what is in use: releases shrink the count
        limiter.release()
        limiter.release()
        assert (limiter.in_use, limiter.waiting) == (1, 1)  # still full: 2 waits
        limiter.release()  # now under the bound: handed to the last waiter
        await wait_until(lambda: sorted(admitted) == [0, 1, 2], "the last admitted")
    assert limiter.in_use == 1
    limiter.release()
    assert limiter.in_use == 0
    with pytest.raises(ValueError, match="at least 1"):
        limiter.set_limit(0)
