"""Small helpers shared by the test modules."""

from __future__ import annotations

from collections.abc import Callable

import anyio
import pytest


async def wait_until(condition: Callable[[], bool], what: str, limit: float = 30.0) -> None:
    """Poll ``condition``, which driver threads change (there is no event to wait on).

    The limit only turns a hang into a clear failure; it is not a performance bound.
    """
    with anyio.move_on_after(limit):
        while not condition():  # noqa: ASYNC110
            await anyio.sleep(0.01)
        return
    pytest.fail(f"timed out waiting until {what}")
