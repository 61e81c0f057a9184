"""Shared fixtures: both backends for every async test, one node and cluster per run."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import anyio
import pytest

from async_cassandra import AsyncCassandraSession, AsyncCluster
from async_cassandra.testing import LocalCassandra

# Every call of the asyncio loop's exception handler during a test: an exception in a
# callback or a task nobody awaited. The library must never cause one.
_loop_handler_calls: list[dict[str, Any]] = []


def _recording_loop() -> asyncio.AbstractEventLoop:
    loop = asyncio.new_event_loop()
    loop.set_exception_handler(lambda _loop, context: _loop_handler_calls.append(context))
    return loop


@pytest.fixture(
    params=[
        pytest.param(("asyncio", {"loop_factory": _recording_loop}), id="asyncio"),
        pytest.param(("trio", {}), id="trio"),
    ]
)
def anyio_backend(request: pytest.FixtureRequest) -> Any:
    """Every async test runs once on asyncio and once on trio."""
    return request.param


@pytest.fixture(autouse=True)
def _fail_on_loop_exception_handler() -> Iterator[None]:
    _loop_handler_calls.clear()
    yield
    if _loop_handler_calls:
        calls = "\n".join(
            f"- {c.get('message')}: {c.get('exception')!r}" for c in _loop_handler_calls
        )
        pytest.fail(f"the asyncio loop's exception handler was called:\n{calls}")


@pytest.fixture(scope="session")
def cluster(cassandra_node: Any) -> Iterator[AsyncCluster]:
    """One AsyncCluster for the whole run, connected under a loop that then closes.

    Every test uses it from its own, newer loop, asyncio or trio: that a session is
    not tied to the loop it was made under is part of what the suite checks.
    """
    async_cluster = AsyncCluster(cassandra_node.contact_points, port=cassandra_node.port)
    yield async_cluster
    anyio.run(async_cluster.shutdown)


@pytest.fixture(scope="session")
def shared_session(cluster: AsyncCluster) -> AsyncCassandraSession:
    return anyio.run(cluster.connect)


@pytest.fixture
def session(shared_session: AsyncCassandraSession) -> Iterator[AsyncCassandraSession]:
    """The run's shared session; each test must leave it with nothing in flight."""
    yield shared_session
    assert shared_session.requests_waiting == 0


@pytest.fixture
def ks(cassandra_keyspace: str) -> str:
    """A fresh keyspace for this test (dropped afterwards)."""
    return cassandra_keyspace


@pytest.fixture(scope="session")
def pausable_node() -> Iterator[LocalCassandra]:
    """A node of the tests' own, which they freeze (SIGSTOP) to make requests hang.

    Separate from the session node, which other tests share, and started only when a
    test asks for it.
    """
    with LocalCassandra(address="127.0.0.50") as node:
        yield node
