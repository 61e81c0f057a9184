"""Small helpers shared by the test modules."""

from __future__ import annotations

import importlib.util
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

import anyio
import pytest
from cassandra.connection import Connection, DefaultEndPoint

from async_cassandra._loop_reactor import Reactor, bind_to_running_loop
from async_cassandra.connection import EventLoopConnection

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

ConnectionT = TypeVar("ConnectionT", bound=Connection)


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


def pool_connections(session: Any) -> list[Any]:
    """The session's connections to its nodes (the driver's public pool API)."""
    return [
        connection
        for pool in session.driver_session.get_pools()
        for connection in pool.get_connections()
    ]


async def a_large_message_and_those_behind_it_arrive_whole(
    session: Any, ks: str, direct_writes: Callable[[], int] | None = None
) -> None:
    """Insert a 12 MiB blob (more than a socket buffer holds, so it is written in parts)
    and, once its task is blocked, 20 small rows queued behind it; read every one back.
    With ``direct_writes`` (a DirectWriteConnection's count), also check that the blob,
    alone on its connection, was written (in part) by the sending thread."""
    buffers = [
        c._socket.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) for c in pool_connections(session)
    ]
    assert max(buffers) < LARGE_MESSAGE
    await session.execute(f"CREATE TABLE {ks}.blobs (id int PRIMARY KEY, data blob)")
    insert = await session.prepare(f"INSERT INTO {ks}.blobs (id, data) VALUES (?, ?)")
    select = await session.prepare(f"SELECT data FROM {ks}.blobs WHERE id = ?")
    big = bytes(range(256)) * (LARGE_MESSAGE // 256)
    small = {key: key.to_bytes(4, "big") * 100 for key in range(1, 21)}
    with anyio.fail_after(60):  # a message stuck half-written fails here, not by hanging
        before = direct_writes() if direct_writes is not None else 0
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(session.execute, insert, [0, big])
            await anyio.wait_all_tasks_blocked()
            if direct_writes is not None:
                assert direct_writes() == before + 1
            for key, value in small.items():
                tasks.start_soon(session.execute, insert, [key, value])
        row = (await session.execute(select, [0])).one()
    assert row is not None
    assert row.data == big
    for key, value in small.items():
        row = (await session.execute(select, [key])).one()
        assert row is not None
        assert row.data == value


# More than the kernel lets a socket buffer hold (net.core.wmem_max), under the node's
# largest mutation (16 MiB).
LARGE_MESSAGE = 12 * 1024 * 1024


def poll_until(condition: Callable[[], bool], what: str, limit: float = 10.0) -> None:
    """:func:`wait_until` for synchronous tests (the driver's own, Simulacron's)."""
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting until {what} (not within {limit} s)")
        time.sleep(0.05)


def unconnected(connection_class: type[ConnectionT]) -> ConnectionT:
    """A connection of ``connection_class`` with the driver's own state (its buffers,
    its requests) and no socket: its own __init__ would connect to a node."""
    connection = connection_class.__new__(connection_class)
    Connection.__init__(connection, DefaultEndPoint("127.0.0.1", 9042))
    return connection


def socket_pair_connection() -> tuple[EventLoopConnection, socket.socket, Reactor]:
    """An EventLoopConnection over one end of a socket pair, with the state its I/O uses
    (its __init__ would connect to a node), not started; the other end, and the
    reactor. Loop thread."""
    bound = bind_to_running_loop(EventLoopConnection)
    connection = unconnected(bound)
    ours, peer = socket.socketpair()
    ours.setblocking(False)
    reactor = bound._reactor
    assert reactor is not None
    connection._socket = ours
    connection._loop_reactor = reactor
    connection._io = reactor.io_for(connection)
    return connection, peer, reactor
