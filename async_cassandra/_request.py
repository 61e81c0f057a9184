"""One driver request, awaited page by page through the portal.

The driver's ``ResponseFuture`` keeps its callbacks across pages: register them once,
or page N fires N callbacks. So a :class:`DriverRequest` registers once and points the
callbacks at whichever waiter is current; the loop thread sets that waiter *before* it
asks the driver for the page, so the driver thread always sees the right one.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from typing import Any

import anyio
import anyio.lowlevel
from cassandra import InvalidRequest, OperationTimedOut
from cassandra.cluster import NoHostAvailable, ResponseFuture
from cassandra.connection import ConnectionException

from . import _driver
from ._backends import Waiter
from ._loop_reactor import loop_gone_hint
from ._portal import InFlightLimiter, Portal
from .exceptions import TimeoutError, translate_driver_error

__all__ = [
    "DriverRequest",
    "OnArrival",
    "caller_deadline",
    "driver_timeout",
    "page_rows",
    "surface_deadline",
]

# Called on the driver's thread with (portal, rows, error) when a page arrives, instead
# of delivering it to its waiter through the portal: the hook delivers it itself.
OnArrival = Callable[[Portal, Any, BaseException | None], None]

# A deadline that has already passed still becomes a positive driver timeout: the driver
# treats 0 as "fire the timer now", which is right, but some policies divide by it.
_MIN_DRIVER_TIMEOUT = 0.001
_CLOCK_MARGIN = 0.05


async def caller_deadline() -> float:
    """The caller's effective anyio deadline (``inf``: none), once it is sure the caller's
    scope is neither cancelled nor past its deadline: a call made in such a scope must
    do nothing, so the cancellation is raised here instead.

    One look at the enclosing scopes, which the deadline needs anyway (anyio gives
    ``-inf`` for a cancelled scope): cheaper than a checkpoint on every request.
    """
    deadline = anyio.current_effective_deadline()
    if deadline == math.inf:
        return deadline
    if deadline == -math.inf or deadline <= anyio.current_time():
        # Raises: the scope is cancelled, or its deadline's timer is due.
        await anyio.lowlevel.checkpoint()
        deadline = anyio.current_effective_deadline()
    return deadline


def driver_timeout(
    explicit: float | None, deadline: float, now: float
) -> tuple[float | None, float | None]:
    """The driver request timeout for a request sent at ``now`` (the loop's clock), and
    the deadline behind it.

    The timeout is the smaller of ``explicit`` and the time left before ``deadline``,
    the caller's effective anyio deadline, so ``with anyio.fail_after(0.3)`` around a
    call makes the driver give up within 0.3 s too; None means no timeout. The second
    value is that anyio deadline when it is what set the timeout, else None.
    """
    if deadline == math.inf:
        return explicit, None
    remaining = max(deadline - now, _MIN_DRIVER_TIMEOUT)
    if explicit is not None and explicit <= remaining:
        return explicit, None
    return remaining, deadline


async def surface_deadline(error: BaseException, deadline: float | None) -> None:
    """Let the caller's cancel scope, not the driver, report a deadline it set.

    When the driver's timer (armed from the caller's deadline) fires a hair before the
    cancel scope does, the caller would see a driver ``OperationTimedOut`` escape a
    ``move_on_after`` that should have swallowed it. Waiting until the deadline lets the
    scope cancel us, so ``move_on_after`` and ``fail_after`` behave as they promise.
    """
    if deadline is not None and isinstance(error, OperationTimedOut):
        # The driver's clock (time.time) and anyio's differ slightly: allow a margin.
        # A plain sleep, not a cancel scope of ours: on a loaded machine both deadlines
        # may have passed when the loop looks, and an inner scope would then swallow
        # the cancellation meant for the caller's.
        await anyio.sleep(_CLOCK_MARGIN + max(deadline - anyio.current_time(), 0.0))


def _describe(statement: Any) -> str:
    """A statement, as a message names it: its CQL text, shortened."""
    text = getattr(statement, "query_string", None)
    if text is None:  # a BoundStatement: its prepared statement's text
        text = getattr(getattr(statement, "prepared_statement", None), "query_string", None)
    if not isinstance(text, str):
        return "the request" if statement is None else f"the {type(statement).__name__}"
    text = " ".join(text.split())
    return repr(text if len(text) <= 80 else text[:77] + "...")


def page_rows(page: Any) -> Any:
    """A page's rows: the driver hands callbacks None for results without rows
    (INSERT, DDL, USE)."""
    return () if page is None else page


# Builds the driver request for a first-page timeout in seconds (None: none), sends it,
# and returns its future with the row factory in effect for it (see _driver).
Build = Callable[[float | None], tuple[ResponseFuture, Any]]


class DriverRequest:
    """Bridges one ``ResponseFuture`` into the awaiting loop, one page at a time.

    Made unsent, holding one in-flight slot of ``limiter``; :meth:`send` (through the
    loop's outbox, see _outbox) calls ``build`` to make and send the driver request,
    unless the caller was cancelled meanwhile. A slot is held per page being fetched
    and released on the driver's thread the moment the driver finishes that page,
    whether or not anyone still waits for it (a cancelled caller detaches; CQL has no
    cancel message).

    From the start the request is a member of ``registry`` (the session's
    introspection of live requests, and the ones a closing session fails); it leaves
    when it is done: after its last page, or, once detached, when the driver finishes
    the page nobody waits for any more (or at once, if it was never sent).
    """

    __slots__ = (
        "_awaited",
        "_build",
        "_deadline",
        "_detached",
        "_future",
        "_limiter",
        "_lock",
        "_on_arrival",
        "_portal",
        "_registry",
        "_waiter",
        "page_timeout",
        "pages_requested",
        "row_factory",
        "timing_deadline",
        "warnings",
    )

    def __init__(
        self,
        limiter: InFlightLimiter,
        portal: Portal,
        registry: set[DriverRequest],
        build: Build,
        *,
        page_timeout: float | None = None,
        deadline: float = math.inf,
    ) -> None:
        self._future: ResponseFuture | None = None
        self._build: Build | None = build
        # The caller's anyio deadline (inf: none), which cuts the first page's timeout.
        self._deadline = deadline
        # The deadline that set the driver's timeout for the first page, if it did: see
        # surface_deadline. Set when the request is sent.
        self.timing_deadline: float | None = None
        # The row factory in effect for the request; pages arrive as raw tuples and the
        # rows are made on the loop (see _rows). None: pages are used as they arrive.
        self.row_factory: Any = None
        # How long each page may take (None: no limit): the request's timeout, which
        # the caller's deadline may shorten for the first page only.
        self.page_timeout = page_timeout
        # The server's warnings, every page's in order: appended on the driver's thread
        # before the page is handed over, so whoever got the page sees its warnings.
        self.warnings: list[str] = []
        self._limiter = limiter
        self._portal = portal
        self._registry = registry
        # Orders the driver thread finishing a page against the loop thread detaching.
        self._lock = threading.Lock()
        self._detached = False
        # _waiter is the driver side's: taken (set to None) by the callback that
        # finishes the page. _awaited is the loop side's copy of the same waiter, since
        # the callback may have run before page() is awaited.
        self._waiter: Waiter | None = portal.new_waiter()
        self._awaited = self._waiter
        self._on_arrival: OnArrival | None = None
        self.pages_requested = 1
        registry.add(self)  # set.add is atomic; a closing session may abandon it at once

    @property
    def future(self) -> ResponseFuture:
        """The driver's future: there once the request was sent, which it was for a
        request whose first page arrived."""
        future = self._future
        assert future is not None, "the request has not been sent"
        return future

    @property
    def sent_future(self) -> ResponseFuture | None:
        """The driver's future, or None if the request was not sent (yet, or at all)."""
        return self._future

    def send(self, now: float) -> None:
        """Make and send the driver request; ``now`` is the loop's clock. Loop thread.

        Sends nothing if the caller was cancelled since the request was made (the slot
        goes back), or if the caller's deadline has passed (the caller's scope is about
        to cancel it). Never raises: a failure, such as a value the driver cannot
        encode, finishes the first page with it.
        """
        with self._lock:
            # A closing session may have failed the page already (from any thread).
            awaited = self._waiter is not None
            cancelled = awaited and self._detached
            if cancelled:
                self._waiter = None
        build, self._build = self._build, None
        if cancelled:
            self._limiter.release()
            self._registry.discard(self)
            return
        if not awaited or build is None:
            return
        deadline = self._deadline
        if deadline <= now:
            # Not sent; the caller's scope cancels it in this turn or the next (page()
            # waits for that, see surface_deadline). Should its deadline have been
            # moved since, it gets the driver's timeout error.
            self.timing_deadline = deadline
            self.abandon(
                OperationTimedOut("not sent: the caller's deadline passed before its turn")
            )
            return
        timeout, self.timing_deadline = driver_timeout(self.page_timeout, deadline, now)
        try:
            future, self.row_factory = build(timeout)
        except BaseException as error:
            self.abandon(translate_driver_error(error))
            return
        self._future = future
        # Added after the request went out, as with execute_async: if the answer is
        # already there, the driver calls back inline, here on the loop thread.
        future.add_callbacks(self._on_page, self._on_error)

    # -- driver side: any thread -------------------------------------------------

    def _on_page(self, rows: Any) -> None:
        self._finish(rows, None)

    def _on_error(self, error: BaseException) -> None:
        self._finish(None, error)

    def _finish(self, rows: Any, error: BaseException | None) -> None:
        # Runs on the reactor thread, an executor thread or inline.
        taken = self._take_page(detach=False)
        if taken is None:
            return  # abandon() already finished this page for us
        waiter, portal, on_arrival, detached = taken
        self._limiter.release()
        if error is None:
            warnings = _driver.server_warnings(self.future)
            if warnings:
                self.warnings.extend(warnings)
        if detached:
            self._retire(finished=True)  # nobody waits: drop the result and our callbacks
        else:
            _hand_over(waiter, portal, on_arrival, rows, error)

    def abandon(self, error: BaseException) -> None:
        """Finish the outstanding page now with ``error``, as if the driver had.

        For a session that is closing: the driver does not fail requests in flight when
        its pools shut down (their retry is dropped silently), so without this they
        would wait for their timeout. Any thread; a later driver callback is ignored.
        """
        taken = self._take_page(detach=True)
        if taken is None:
            return
        waiter, portal, on_arrival, _ = taken
        self._limiter.release()
        # The driver may still answer (or time out) the page: its timer stays armed.
        self._retire(finished=False)
        _hand_over(waiter, portal, on_arrival, None, error)

    def _take_page(self, *, detach: bool) -> tuple[Waiter, Portal, OnArrival | None, bool] | None:
        """Claim the outstanding page's waiter, once: the driver's callback and
        :meth:`abandon` may race for it. Returns it with its portal, its on_arrival
        hook and whether the request is detached, or None if the page was already
        claimed."""
        # Reads what the thread that asked for this page set before asking (under this
        # lock); nothing sets them again until the next page is asked for, which needs
        # this one finished.
        with self._lock:
            waiter = self._waiter
            if waiter is None:
                return None
            self._waiter = None
            self._detached = self._detached or detach
            return waiter, self._portal, self._on_arrival, self._detached

    def _retire(self, *, finished: bool) -> None:
        # Any thread. Breaks the future -> callback -> request cycle, and once the
        # driver has finished with the request the future -> timer -> future one, now:
        # left to the cycle collector, they cost loop stalls under load (see
        # _driver.drop_timer).
        future = self._future
        if future is not None:
            future.clear_callbacks()
            if finished:
                _driver.drop_timer(future)
        self._registry.discard(self)

    # -- loop side ------------------------------------------------------------------

    async def page(self) -> Any:
        """Wait for the page last asked for. Cancellation detaches from the request."""
        try:
            return await self._awaited.wait()
        except anyio.get_cancelled_exc_class():
            self.detach()
            raise
        except Exception as error:
            # Read now: the request may have been sent after this wait began.
            await surface_deadline(error, self.timing_deadline)
            hint = self._hint(error)
            # The driver's future (and the waiter) keep ``error``, whose traceback (this
            # wait, nothing of the caller's) holds this frame, which holds this request
            # and its future: a cycle per failed request for the cycle collector.
            error.__traceback__ = None
            raise translate_driver_error(error, hint=hint)  # noqa: B904

    def _hint(self, error: BaseException) -> str | None:
        """What the caller can do about ``error``, where the driver's message omits it."""
        if isinstance(error, InvalidRequest) and "disable paging" in str(error):
            return "execute(..., fetch_size=0) runs the statement unpaged"
        future = self._future
        if future is None:
            return None
        if isinstance(error, (NoHostAvailable, ConnectionException)):
            return loop_gone_hint(future.session.cluster)
        if not isinstance(error, OperationTimedOut):
            return None
        # The driver's OperationTimedOut says only "errors={...}, last_host=...".
        timeout = future.timeout
        within = f" within {timeout:g} s" if isinstance(timeout, (int, float)) else ""
        return (
            f"No response to {_describe(future.query)}{within} (its timeout: timeout= "
            "where the call takes one, else the execution profile's request_timeout, cut "
            "to the caller's deadline); the server or the connection is stalled, or the "
            "query is too slow. The request may still run there"
        )

    async def next_page(self, portal: Portal) -> Any:
        """Ask for the next page and wait at most :attr:`page_timeout` seconds for it.

        The driver stops timing a request after its first page, so this deadline is
        ours: a stuck later page raises :class:`~async_cassandra.TimeoutError` instead
        of waiting for the connection's heartbeat to fail (30 s or more).
        """
        await self._limiter.acquire(portal)
        started = self.start_next_page(portal)
        assert started, "only this task detaches the request, and it is here"
        timeout = self.page_timeout
        if timeout is None:
            return await self.page()
        with anyio.move_on_after(timeout) as scope:
            return await self.page()
        assert scope.cancelled_caught
        raise TimeoutError(
            f"page {self.pages_requested} did not arrive within {timeout:g} s (the "
            "request's timeout: timeout=, else the execution profile's request_timeout); "
            "the server or the connection is stalled (the request may still be running "
            "there)"
        )

    def start_next_page(
        self,
        portal: Portal,
        waiter: Waiter | None = None,
        on_arrival: OnArrival | None = None,
    ) -> bool:
        """Ask the driver for the next page; an in-flight slot must be held.

        The page goes to ``waiter`` (default: a new one, for :meth:`page`) on
        ``portal``'s loop, or to ``on_arrival``, called on the driver's thread as the
        page arrives (it delivers the page itself, and may ask for the next one). Any
        thread, for a waiter made beforehand. Returns False, with the slot released,
        if the request was detached meanwhile.
        """
        with self._lock:
            # Under the lock: a detach() on the loop thread must see this page as
            # outstanding (and leave the callbacks to its finish), or come first.
            detached = self._detached
            if not detached:
                self._portal = portal
                self._waiter = waiter if waiter is not None else portal.new_waiter()
                self._awaited = self._waiter
                self._on_arrival = on_arrival
                self.pages_requested += 1
                self.timing_deadline = None  # later pages are timed by us alone
        if detached:
            self._limiter.release()
            return False
        try:
            self.future.start_fetching_next_page()
        except BaseException as error:
            # Take the page back, unless a callback the driver ran before raising
            # already finished it (and released the slot).
            with self._lock:
                unfinished, self._waiter = self._waiter is not None, None
            if unfinished:
                self._limiter.release()
            self.detach()
            raise translate_driver_error(error)  # noqa: B904 - the cause is set inside
        return True

    def detach(self) -> None:
        """Stop waiting for this request. Loop thread; idempotent.

        If no page is outstanding the callbacks go now; otherwise the driver thread
        drops them when it finishes the page.
        """
        with self._lock:
            self._detached = True
            finished = self._waiter is None
        if finished:
            self._retire(finished=True)


def _hand_over(
    waiter: Waiter,
    portal: Portal,
    on_arrival: OnArrival | None,
    rows: Any,
    error: BaseException | None,
) -> None:
    """Give a finished page to whoever asked for it. Any thread."""
    if on_arrival is None:
        portal.deliver(waiter, rows, error)
    else:
        on_arrival(portal, rows, error)
