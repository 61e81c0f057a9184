"""Sending requests without holding up the event loop: a budget of driver work per turn.

Handing a request to the driver (building its message, choosing a host and a
connection, encoding the frame, arming its timer) costs tens of microseconds, on the
loop thread. Many tasks that start requests in the same turn of the loop (a burst of new
tasks, or hundreds of completions resuming their tasks at once) would do that work back
to back while timers, cancellations and I/O wait: 10,000 requests started in one turn
held a loop for over a second, and every cancel scope due meanwhile fired that late.

The :class:`Outbox` (one per loop, owned by its portal) sends at once while the loop's
send budget lasts, so a lone request pays nothing extra; past it, requests queue and
are sent from a callback the loop runs in its later turns, a slice of bounded duration
per turn, between its timers and I/O. A request whose caller was cancelled while it
waited is never sent (see :meth:`DriverRequest.send`).

The budget is a token bucket of loop time: it holds up to :data:`BURST` seconds and
refills at :data:`REFILL` seconds per second, so sends made at once take at most
``BURST / (1 - REFILL)`` seconds of any one turn, and the loop keeps at least the
rest of its time for everything else while requests queue.
"""

from __future__ import annotations

import contextvars
from collections import deque
from time import perf_counter
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._backends import BackendKit
    from ._request import DriverRequest

__all__ = ["BURST", "REFILL", "SLICE", "Outbox"]

BURST = 0.002  # seconds of sending that may happen at once, from a full bucket
REFILL = 0.5  # seconds of budget regained per second
SLICE = 0.002  # seconds of queued sends per turn of the loop, at most (one send more)


class Outbox:
    """Sends requests for one event loop, within its per-turn budget. Loop thread only."""

    __slots__ = ("_credit", "_kit", "_queue", "_refilled_at", "_tick_pending", "deferred")

    def __init__(self, kit: BackendKit) -> None:
        self._kit = kit
        # Each queued request with the context of the task that started it: the
        # driver's request-init listeners then see that task's context variables.
        self._queue: deque[tuple[DriverRequest, contextvars.Context]] = deque()
        self._credit = BURST
        self._refilled_at = perf_counter()
        self._tick_pending = False
        self.deferred = 0  # introspection: requests that waited for a later turn

    @property
    def queued(self) -> int:
        """Requests waiting for their turn to be sent."""
        return len(self._queue)

    def send(self, request: DriverRequest) -> None:
        """Send ``request`` now if the budget allows, else in a later turn, in order.

        Called by the task that made the request, which then awaits its first page.
        """
        began = perf_counter()
        if not self._queue:
            credit = min(BURST, self._credit + (began - self._refilled_at) * REFILL)
            self._refilled_at = began
            if credit > 0.0:
                request.send(self._kit.clock())
                self._credit = credit - (perf_counter() - began)
                return
            self._credit = credit
        self._queue.append((request, contextvars.copy_context()))
        self.deferred += 1
        if not self._tick_pending:
            self._tick_pending = True
            self._kit.schedule(self._tick)

    def _tick(self) -> None:
        # A callback of the loop, in a later turn. Sends in order until the slice is
        # spent; what is left waits for the next turn. DriverRequest.send never raises
        # (a failure goes to the request's caller), so nothing escapes into the loop.
        self._tick_pending = False
        queue = self._queue
        clock = self._kit.clock
        stop = perf_counter() + SLICE
        while queue:
            request, context = queue.popleft()
            context.run(request.send, clock())
            if perf_counter() >= stop:
                break
        if queue:
            self._tick_pending = True
            self._kit.schedule(self._tick)
