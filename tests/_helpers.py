"""Small helpers shared by the test modules."""

from __future__ import annotations

import importlib.util
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import anyio
import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load_example(relative_path: str, module_name: str) -> ModuleType:
    """The example file ``examples/<relative_path>``, imported as ``module_name``
    (examples/ is not a package)."""
    spec = importlib.util.spec_from_file_location(module_name, EXAMPLES / relative_path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


async def wait_until(condition: Callable[[], bool], what: str, limit: float = 30.0) -> None:
    """Poll ``condition``, which driver threads change (there is no event to wait on).

    The limit only turns a hang into a clear failure; it is not a performance bound.
    """
    with anyio.move_on_after(limit):
        while not condition():  # noqa: ASYNC110
            await anyio.sleep(0.01)
        return
    pytest.fail(f"timed out waiting until {what}")


def poll_until(condition: Callable[[], bool], what: str, limit: float = 10.0) -> None:
    """:func:`wait_until` for synchronous tests (the driver's own, Simulacron's)."""
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting until {what} (not within {limit} s)")
        time.sleep(0.05)
