"""The outbox: requests started in one turn of the loop are sent within a bounded budget
of loop time per turn, in order, and a request whose caller left before its turn is
never sent (both backends).

Unit tests with a stand-in for the driver: what a real server cannot be made to show on
demand (the turn each request was sent in). Every request of the real-server suites
goes through the outbox too.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Callable
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from async_cassandra._outbox import BURST, REFILL, SLICE
from async_cassandra._portal import InFlightLimiter, current_portal
from async_cassandra._request import DriverRequest

pytestmark = pytest.mark.anyio

# A driver send that costs this much loop time (a real one costs tens of µs; this makes
# the bound per turn a small, exact number).
SEND_COST = 0.001
MOST_SENT_IN_ONE_TURN = int(BURST / (1 - REFILL) / SEND_COST) + 1
MOST_SENT_IN_ONE_SLICE = int(SLICE / SEND_COST) + 1


class AnsweredFuture:
    """The slice of ``ResponseFuture`` a request uses, answered as soon as it is sent."""

    def __init__(self, rows: list[int]) -> None:
        self.rows = rows
        self.callbacks: list[tuple[Any, Any]] = []

    def add_callbacks(self, callback: Any, errback: Any) -> None:
        self.callbacks.append((callback, errback))
        callback(self.rows)  # the driver calls back inline when the answer is there

    def clear_callbacks(self) -> None:
        self.callbacks = []


class Driver:
    """Records each send: which request, in which turn of the loop, with what timeout."""

    def __init__(self, cost: float = 0.0) -> None:
        self.cost = cost
        self.sent: list[tuple[int, int]] = []  # (request number, turn)
        self.timeouts: list[float | None] = []
        self.turn = 0

    def build(self, number: int, fail: BaseException | None = None) -> Any:
        def send(timeout: float | None) -> tuple[AnsweredFuture, None]:
            if self.cost:
                time.sleep(self.cost)  # the loop-thread work of a driver send
            if fail is not None:
                raise fail
            self.sent.append((number, self.turn))
            self.timeouts.append(timeout)
            return AnsweredFuture([number]), None

        return send

    async def count_turns(self) -> None:
        """Count the loop's turns (a checkpoint per turn), until cancelled."""
        while True:
            await anyio.lowlevel.checkpoint()
            self.turn += 1


async def request_through_outbox(
    limiter: InFlightLimiter,
    registry: set[DriverRequest],
    build: Callable[[float | None], Any],
    on_made: Callable[[DriverRequest], None] | None = None,
) -> Any:
    """What session.execute does around the outbox: a slot, a request, its first page.
    ``on_made`` is called with the request once it was handed to the outbox."""
    portal = current_portal()
    await limiter.acquire(portal)
    deadline = anyio.current_effective_deadline()
    request = DriverRequest(limiter, portal, registry, build, page_timeout=10.0, deadline=deadline)
    portal.outbox.send(request)
    if on_made is not None:
        on_made(request)
    try:
        return await request.page()
    finally:
        request.detach()


async def test_a_burst_is_sent_in_order_a_bounded_share_per_turn() -> None:
    limiter, registry, driver = InFlightLimiter(1000), set[DriverRequest](), Driver(SEND_COST)
    answers: dict[int, Any] = {}
    order: list[int] = []  # the order the tasks made their requests in (trio shuffles)

    async def one(number: int) -> None:
        order.append(number)
        answers[number] = await request_through_outbox(limiter, registry, driver.build(number))

    async with anyio.create_task_group() as turns:
        turns.start_soon(driver.count_turns)
        await anyio.sleep(0.01)  # a full budget to begin with
        async with anyio.create_task_group() as group:
            for number in range(100):
                group.start_soon(one, number)
        turns.cancel_scope.cancel()
    assert answers == {number: [number] for number in range(100)}
    assert [number for number, _ in driver.sent] == order  # in order
    per_turn: dict[int, int] = {}
    for _, turn in driver.sent:
        per_turn[turn] = per_turn.get(turn, 0) + 1
    # Without the outbox all 100 go out in the turn that made them. The turn counter
    # steps somewhere within each turn, so one count may hold the end of one turn and
    # the start of the next: at most one burst and one slice.
    bound = MOST_SENT_IN_ONE_TURN + MOST_SENT_IN_ONE_SLICE
    assert max(per_turn.values()) <= bound, per_turn
    assert len(per_turn) >= 100 // bound
    assert current_portal().outbox.queued == 0
    assert (limiter.in_use, registry) == (0, set())


async def test_a_lone_request_is_sent_at_once() -> None:
    limiter, registry, driver = InFlightLimiter(4), set[DriverRequest](), Driver()
    await anyio.sleep(0.01)  # whatever ran before has given the budget back
    deferred = current_portal().outbox.deferred
    assert await request_through_outbox(limiter, registry, driver.build(7)) == [7]
    assert current_portal().outbox.deferred == deferred  # no wait for a later turn


async def test_a_request_cancelled_before_its_turn_is_never_sent() -> None:
    limiter, registry, driver = InFlightLimiter(1000), set[DriverRequest](), Driver(SEND_COST)
    await anyio.sleep(0.01)  # a full budget to begin with
    scopes: dict[int, anyio.CancelScope] = {}
    cancelled: list[int] = []

    async def one(number: int) -> None:
        with anyio.CancelScope() as scope:
            scopes[number] = scope
            if len(scopes) == 60:
                # The last task to start: every other request is made by now, in this
                # same turn; the budget sent the first few, the rest wait for later
                # turns. Cancel the odd ones (this one's, if odd, before it is made).
                for other, its_scope in scopes.items():
                    if other % 2:
                        its_scope.cancel()
            await request_through_outbox(limiter, registry, driver.build(number))
        if scope.cancelled_caught:
            cancelled.append(number)

    async with anyio.create_task_group() as group:
        for number in range(60):
            group.start_soon(one, number)
    sent = [number for number, _ in driver.sent]
    assert sorted(cancelled) == list(range(1, 60, 2))
    assert sorted(number for number in sent if number % 2 == 0) == list(range(0, 60, 2))
    # Sent anyway: those the budget sent at once, and at most the first slice of a later
    # turn that ran before their callers saw the cancellation. None of the others.
    odd_sent = [number for number in sent if number % 2]
    assert len(odd_sent) <= MOST_SENT_IN_ONE_TURN + MOST_SENT_IN_ONE_SLICE, odd_sent
    assert current_portal().outbox.queued == 0
    assert (limiter.in_use, registry) == (0, set())


async def test_a_deadline_that_passes_in_the_queue_sends_nothing() -> None:
    limiter, registry, driver = InFlightLimiter(1000), set[DriverRequest](), Driver(SEND_COST)
    timed_out = 0

    async def one(number: int) -> None:
        nonlocal timed_out
        with anyio.move_on_after(0.002) as scope:
            await request_through_outbox(limiter, registry, driver.build(number))
        timed_out += scope.cancelled_caught

    async with anyio.create_task_group() as group:
        for number in range(50):
            group.start_soon(one, number)
    # 50 sends would take 50 ms; callers gave up after 2 ms, so most were never sent.
    assert len(driver.sent) < 25
    assert timed_out >= 50 - len(driver.sent)
    # Those that were sent had their timeout cut to what was left of the deadline.
    assert all(timeout is not None and timeout <= 0.002 for timeout in driver.timeouts)
    assert (limiter.in_use, registry) == (0, set())


async def test_a_send_that_fails_in_a_later_turn_fails_its_caller_only() -> None:
    limiter, registry, driver = InFlightLimiter(1000), set[DriverRequest](), Driver(SEND_COST)
    outcomes: dict[int, Any] = {}

    async def one(number: int) -> None:
        fail = ValueError(f"cannot encode request {number}") if number == 20 else None
        try:
            outcomes[number] = await request_through_outbox(
                limiter, registry, driver.build(number, fail)
            )
        except ValueError as error:
            outcomes[number] = str(error)

    async with anyio.create_task_group() as group:
        for number in range(30):
            group.start_soon(one, number)
    assert current_portal().outbox.deferred > 0
    assert outcomes.pop(20) == "cannot encode request 20"
    assert outcomes == {number: [number] for number in range(30) if number != 20}
    assert (limiter.in_use, registry) == (0, set())


async def test_a_request_sent_in_a_later_turn_sees_its_callers_context() -> None:
    limiter, registry, driver = InFlightLimiter(1000), set[DriverRequest](), Driver(SEND_COST)
    caller = contextvars.ContextVar[int]("caller")
    seen: dict[int, int] = {}

    def build(number: int) -> Callable[[float | None], Any]:
        send = driver.build(number)

        def in_context(timeout: float | None) -> Any:
            # The driver's request-init listeners run here, in the sending context.
            seen[number] = caller.get(-1)
            return send(timeout)

        return in_context

    async def one(number: int) -> None:
        caller.set(number)
        await request_through_outbox(limiter, registry, build(number))

    async with anyio.create_task_group() as group:
        for number in range(30):
            group.start_soon(one, number)
    assert current_portal().outbox.deferred > 0
    assert seen == {number: number for number in range(30)}


async def test_a_closing_session_fails_queued_requests_without_sending_them() -> None:
    limiter, registry, driver = InFlightLimiter(1000), set[DriverRequest](), Driver(SEND_COST)
    outcomes: list[str] = []
    made: list[DriverRequest] = []
    all_made = anyio.Event()

    def note(request: DriverRequest) -> None:
        made.append(request)
        if len(made) == 40:
            all_made.set()

    async def one(number: int) -> None:
        try:
            await request_through_outbox(limiter, registry, driver.build(number), note)
            outcomes.append("answered")
        except ConnectionError:
            outcomes.append("ConnectionError")

    async with anyio.create_task_group() as group:
        for number in range(40):
            group.start_soon(one, number)
        await all_made.wait()  # the budget sent a few, maybe a slice a few more
        for request in list(registry):  # what SessionResources.mark_closed does
            request.abandon(ConnectionError("the session was closed"))
    answered = outcomes.count("answered")
    assert len(driver.sent) == answered < 40
    assert outcomes.count("ConnectionError") == 40 - answered
    assert (limiter.in_use, registry) == (0, set())
