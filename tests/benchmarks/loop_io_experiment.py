"""Experiment (not part of the library): where the driver's connection does its socket
I/O, under this library, compared in one run.

    python tests/benchmarks/loop_io_experiment.py [--address 127.0.0.40] [--quick]
        [--backend asyncio|trio] [--classes queue,direct,loop]

Three connection classes, alternated round by round in fresh processes:

- ``queue``: the driver's libev connection as it is: every message is queued for the
  driver's reactor thread, which is woken to write it; responses are read and decoded
  there and every completion crosses to the event loop's thread.
- ``direct``: the library's default, ``_driver.DirectWriteConnection``: the same, except
  that a request alone on its connection is written by the sending thread.
- ``loop`` (asyncio only): :class:`LoopConnection`, a minimal prototype whose socket is a
  reader/writer of the running asyncio loop, whose writes of one turn of the loop go
  out in one ``send``, and whose timers are the loop's ``call_later``: no reactor
  thread, no hand-off (one loop per process, the loop must outlive the cluster).

Prepared point reads at 1, 64 and 256 in flight; reported: ops/s, CPU µs per request
(the whole process), context switches per request (all its threads), loop lag p50/p99
(a task sleeping 5 ms in a loop), and the cores' worth of time its threads ran and
spent runnable in the run queue (``_bench.scheduler_seconds``). Results:
``bench-results/loop_io_experiment.json`` (``loop_io_experiment_trio.json`` on trio).

One thing the prototype had to learn from the driver's own reactors: read until a
short read. The driver's protocol v5 segment decoder drops a partial segment header
left at the end of its buffer (``_process_segment_buffer`` resets the buffer from its
current position), which a single ``recv`` per readable event leaves behind under load;
the stream then fails with "CRC mismatch on header".
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import subprocess
import sys
import threading
import time
from typing import Any

from _bench import (
    cassandra_node,
    common_args,
    context_switches,
    create_keyspace_cql,
    lag_probe,
    lag_summary,
    metadata,
    read_points_until,
    scheduler_seconds,
    write_json,
)
from cassandra.connection import Connection, ConnectionShutdown, Timer
from cassandra.io.libevreactor import LibevConnection

KEYSPACE = "acs_bench_loop_io"
CONCURRENCY = (1, 64, 256)
CLASSES = ("queue", "direct", "loop")


class LoopTimer(Timer):
    """The driver's ``Timer``, fired by the loop's ``call_later``."""

    def __init__(self, timeout: float, callback: Any) -> None:
        super().__init__(timeout, callback)
        self._handle: asyncio.TimerHandle | None = None
        loop = LoopConnection.loop
        assert loop is not None
        if threading.get_ident() == LoopConnection.loop_thread:
            self._handle = loop.call_later(timeout, self._fire)
        else:  # armed by a driver thread (control connection, pool setup)
            loop.call_soon_threadsafe(self._arm, timeout)

    def _arm(self, timeout: float) -> None:
        assert LoopConnection.loop is not None
        if not self.canceled:
            self._handle = LoopConnection.loop.call_later(timeout, self._fire)

    def _fire(self) -> None:
        self._handle = None
        if not self.canceled:
            self.callback()

    def cancel(self) -> None:
        self.canceled = True
        handle, self._handle = self._handle, None
        if handle is None:
            return
        if threading.get_ident() == LoopConnection.loop_thread:
            handle.cancel()
        else:
            assert LoopConnection.loop is not None
            LoopConnection.loop.call_soon_threadsafe(handle.cancel)


class LoopConnection(Connection):  # type: ignore[misc]
    """A driver connection served by the running asyncio loop (set ``loop`` and
    ``loop_thread`` before the cluster connects)."""

    loop: asyncio.AbstractEventLoop | None = None
    loop_thread: int | None = None

    @classmethod
    def initialize_reactor(cls) -> None:
        pass  # the application's loop is the reactor

    @classmethod
    def create_timer(cls, timeout: float, callback: Any) -> LoopTimer:
        return LoopTimer(timeout, callback)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        Connection.__init__(self, *args, **kwargs)
        self._out: list[Any] = []
        self._flushing = False
        self._connect_socket()
        self._socket.setblocking(False)
        self._fd = self._socket.fileno()
        assert self.loop is not None
        self.loop.call_soon_threadsafe(self.loop.add_reader, self._fd, self._on_readable)
        self._send_options_message()

    def push(self, data: bytes) -> None:
        assert self.loop is not None
        if threading.get_ident() == self.loop_thread:
            self._queue(data)
        else:
            self.loop.call_soon_threadsafe(self._queue, data)

    def _queue(self, data: bytes) -> None:
        # Every message of this turn goes out in one send, in the turn's last callback.
        if self.is_closed:
            return
        self._out.append(data)
        if not self._flushing:
            self._flushing = True
            assert self.loop is not None
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        out = self._out
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        try:
            sent = self._socket.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as error:
            self._flushing = False
            self.defunct(error)
            return
        if sent < len(data):
            out.append(memoryview(data)[sent:])
            assert self.loop is not None
            self.loop.add_writer(self._fd, self._on_writable)
        else:
            self._flushing = False

    def _on_writable(self) -> None:
        assert self.loop is not None
        data = b"".join(self._out)
        self._out.clear()
        try:
            sent = self._socket.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError as error:
            self.loop.remove_writer(self._fd)
            self.defunct(error)
            return
        if sent < len(data):
            self._out.append(memoryview(data)[sent:])
            return
        self.loop.remove_writer(self._fd)
        self._flushing = False

    def _on_readable(self) -> None:
        # Until a short read: see the module's docstring.
        assert self.loop is not None
        size = self.in_buffer_size
        got = 0
        while True:
            try:
                chunk = self._socket.recv(size)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as error:
                self.loop.remove_reader(self._fd)
                self.defunct(error)
                return
            if not chunk:
                self.loop.remove_reader(self._fd)
                self.close()
                return
            self._iobuf.write(chunk)
            got += len(chunk)
            if len(chunk) < size:
                break
        if got:
            self.process_io_buffer()

    def close(self) -> None:
        with self.lock:
            if self.is_closed:
                return
            self.is_closed = True
        assert self.loop is not None
        with contextlib.suppress(RuntimeError):  # the loop is closed already
            self.loop.call_soon_threadsafe(self._close)

    def _close(self) -> None:
        assert self.loop is not None
        self.loop.remove_reader(self._fd)
        self.loop.remove_writer(self._fd)
        self._socket.close()
        if not self.is_defunct:
            self.error_all_requests(ConnectionShutdown(f"Connection to {self.endpoint} was closed"))
            self.connected_event.set()


def child(spec: dict[str, Any]) -> dict[str, Any]:
    """One measurement in this process: a fresh cluster with one connection class."""
    import anyio

    from async_cassandra import AsyncCluster

    async def main() -> dict[str, Any]:
        options: dict[str, Any] = {}
        if spec["connection"] == "queue":
            options["connection_class"] = LibevConnection
        if spec["connection"] == "loop":
            LoopConnection.loop = asyncio.get_running_loop()
            LoopConnection.loop_thread = threading.get_ident()
            options["connection_class"] = LoopConnection
        async with (
            AsyncCluster(spec["contact_points"], port=spec["port"], **options) as cluster,
            await cluster.connect() as session,
        ):
            select = await session.prepare(f"SELECT * FROM {KEYSPACE}.point WHERE id = ?")
            figures = {}
            for concurrency in CONCURRENCY:
                for measured in (False, True):
                    seconds = spec["seconds"] if measured else spec["seconds"] / 3
                    ops = 0
                    lags: list[float] = []
                    stop = time.perf_counter() + seconds

                    async def worker(stop: float = stop) -> None:
                        nonlocal ops
                        # Not `ops += await ...`: that reads ops before the await, and the
                        # workers would overwrite each other's counts.
                        made = await read_points_until(session, select, 1000, stop)
                        ops += made

                    switches = context_switches()
                    running, waiting = scheduler_seconds()
                    cpu, wall = time.process_time(), time.perf_counter()
                    async with anyio.create_task_group() as outer:
                        outer.start_soon(lag_probe, lags)
                        async with anyio.create_task_group() as workers:
                            for _ in range(concurrency):
                                workers.start_soon(worker)
                        outer.cancel_scope.cancel()
                    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
                    ran, waited = scheduler_seconds()
                    if measured:
                        lag = lag_summary(lags)
                        figures[str(concurrency)] = {
                            "ops_per_s": round(ops / wall, 1),
                            "cpu_us_per_op": round(cpu * 1e6 / ops, 1),
                            "lag_p50_ms": lag["p50"],
                            "lag_p99_ms": lag["p99"],
                            "switches_per_op": round((context_switches() - switches) / ops, 2),
                            "cores_running": round((ran - running) / wall, 3),
                            "cores_waiting": round((waited - waiting) / wall, 3),
                        }
            return figures

    return anyio.run(main, backend=spec["backend"])


def main() -> None:
    parser = common_args("Driver I/O on the loop's thread vs the libev reactor thread.")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--backend", choices=("asyncio", "trio"), default="asyncio")
    parser.add_argument(
        "--classes",
        default=None,
        help="comma-separated, of queue, direct, loop (default: all the backend can run)",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    classes = tuple(args.classes.split(",")) if args.classes else CLASSES
    if args.backend == "trio":
        classes = tuple(name for name in classes if name != "loop")  # asyncio only
    if not classes or set(classes) - set(CLASSES):
        parser.error(f"--classes: choose from {', '.join(CLASSES)}")
    rounds = args.rounds or (1 if args.quick else 4)
    seconds = 1.5 if args.quick else 5.0
    runs: list[dict[str, Any]] = []
    with cassandra_node(args.address) as target:
        from cassandra.cluster import Cluster

        cluster = Cluster(target.contact_points, port=target.port)
        try:
            session = cluster.connect()
            session.execute(create_keyspace_cql(KEYSPACE))
            session.execute(
                f"CREATE TABLE IF NOT EXISTS {KEYSPACE}.point (id int PRIMARY KEY, v text)"
            )
            insert = session.prepare(f"INSERT INTO {KEYSPACE}.point (id, v) VALUES (?, ?)")
            for key in range(1000):
                session.execute(insert, [key, "x" * 100])
        finally:
            cluster.shutdown()
        for round_ in range(rounds):
            order = classes if round_ % 2 == 0 else classes[::-1]
            for connection in order:
                spec = {
                    "connection": connection,
                    "backend": args.backend,
                    "contact_points": target.contact_points,
                    "port": target.port,
                    "seconds": seconds,
                }
                done = subprocess.run(
                    [sys.executable, __file__, "--child", json.dumps(spec)],
                    capture_output=True,
                    text=True,
                    check=False,
                )
                if done.returncode != 0:
                    raise RuntimeError(f"{connection} failed:\n{done.stderr[-3000:]}")
                figures = json.loads(done.stdout.strip().splitlines()[-1])
                runs.append({"round": round_, "connection": connection, "figures": figures})
                print(f"round {round_ + 1} {connection:6} {figures}", flush=True)
        meta = metadata(target, None, None)
    summary = {
        connection: {
            str(n): {
                key: statistics.median(
                    r["figures"][str(n)][key] for r in runs if r["connection"] == connection
                )
                for key in (
                    "ops_per_s",
                    "cpu_us_per_op",
                    "switches_per_op",
                    "lag_p50_ms",
                    "lag_p99_ms",
                    "cores_running",
                    "cores_waiting",
                )
            }
            for n in CONCURRENCY
        }
        for connection in classes
    }
    for connection, by_n in summary.items():
        for n, figures in by_n.items():
            print(f"{connection:6} N={n:>3}: {figures}")
    path = write_json(
        args.output_dir,
        "loop_io_experiment.json" if args.backend == "asyncio" else "loop_io_experiment_trio.json",
        {
            "benchmark": "loop_io_experiment",
            "backend": args.backend,
            "metadata": meta,
            "summary": summary,
            "runs": runs,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
