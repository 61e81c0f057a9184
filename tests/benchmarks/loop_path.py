"""What one ``await session.execute(...)`` costs on the event loop, without the driver.

    python tests/benchmarks/loop_path.py [--address 127.0.0.40] [--requests 100000]

Connects to a node (started here, or the one named by ``ASYNC_CASSANDRA_CONTACT_POINTS``)
only to prepare ``SELECT * FROM point WHERE id = ?``; then, on asyncio and on trio, 64
tasks run prepared point reads through the library with the driver's request replaced
by a stand-in whose answer is already there (so it calls back at once, on the loop
thread, as the driver does when a response beats ``add_callbacks``). What is left is
the library's own path: binding, the in-flight limiter, the deadline lookup, the request
object, the outbox, the portal's hand-off and wake-up, the task switch, the rows and the
result object. Reported: CPU µs per request of the loop thread (``time.thread_time``),
median of three runs, and, from a separate cProfile run, each part's share. The
driver's own work (building, encoding, sending, decoding) is not in it: compare with the
point-reads benchmark's ``driver/tuple`` CPU per request for that.

Results: ``bench-results/loop_path.json``.
"""

from __future__ import annotations

import cProfile
import pstats
import time
from collections.abc import Callable
from typing import Any

import anyio
from _bench import cassandra_node, common_args, create_keyspace_cql, metadata, write_json
from cassandra.query import named_tuple_factory

from async_cassandra import AsyncCluster, _driver

KEYSPACE = "acs_bench_loop_path"
TASKS = 64
# Where the cProfile time of a function goes in the breakdown, as "file:function"
# ("file:*": every function of that file); the rest is "other".
PARTS: dict[str, tuple[str, ...]] = {
    "binding (bind_prepared)": ("_binding.py:*",),
    "in-flight limiter": ("_portal.py:acquire", "_portal.py:release", "_portal.py:_take_locked"),
    "deadline lookup": (
        "_request.py:caller_deadline",
        "_request.py:driver_timeout",
        "_driver.py:configured_timeout",
        "_tasks.py:current_effective_deadline",
        "_asyncio.py:current_effective_deadline",
        "_trio.py:current_effective_deadline",
    ),
    "portal lookup": ("_portal.py:current_portal", "lowlevel.py:current_token"),
    "request object, outbox": ("_request.py:__init__", "_outbox.py:*", "_request.py:send"),
    "completion hand-off (callback, deliver, drain, waiter)": (
        "_portal.py:deliver",
        "_portal.py:_drain",
        "_portal.py:_drain_batch",
        "_request.py:_on_page",
        "_request.py:_finish",
        "_request.py:_take_page",
        "_request.py:_hand_over",
        "_request.py:page",
        "_backends.py:*",
    ),
    "request end (detach, retire)": ("_request.py:detach", "_request.py:_retire"),
    "rows and result": ("_rows.py:*", "result.py:*", "session.py:_rows_of"),
    "execute / _start_request bodies": ("session.py:execute", "session.py:_start_request"),
}


def _part_of(filename: str, function: str) -> str:
    for part, places in PARTS.items():
        for place in places:
            file, _, name = place.partition(":")
            if filename.endswith(file) and name in ("*", function):
                return part
    return OTHER


OTHER = "other (event loop, task switches, anyio, the benchmark's worker)"


class AnsweredFuture:
    """Stands in for the driver's ``ResponseFuture`` of a request already answered."""

    has_more_pages = False
    _paging_state = None
    _warnings = None
    _query_traces = None
    _timer = None
    _col_names = ("id", "name", "score", "updated")
    _col_types = ()
    timeout = None
    coordinator_host = None

    def __init__(self, rows: list[Any]) -> None:
        self._rows = rows

    def add_callbacks(self, callback: Callable[[Any], None], errback: Any) -> None:
        callback(self._rows)

    def clear_callbacks(self) -> None:
        pass


def answered(*_args: Any) -> tuple[Any, Any]:
    return AnsweredFuture([(1, "user-00001-123456", 1.5, 1_700_000_001)]), named_tuple_factory


async def run(contact_points: list[str], port: int, requests: int, profile: bool) -> dict[str, Any]:
    async with (
        AsyncCluster(contact_points, port=port) as cluster,
        await cluster.connect() as session,
    ):
        await session.execute(create_keyspace_cql(KEYSPACE))
        await session.execute(
            f"CREATE TABLE IF NOT EXISTS {KEYSPACE}.point (id int PRIMARY KEY, name text, "
            "score double, updated bigint)"
        )
        statement = await session.prepare(f"SELECT * FROM {KEYSPACE}.point WHERE id = ?")
        real = _driver.start_request
        _driver.start_request = answered  # the stand-in, for this measurement only
        try:

            async def worker(count: int) -> None:
                for key in range(count):
                    (await session.execute(statement, [key])).one()

            async def phase(count: int) -> None:
                async with anyio.create_task_group() as group:
                    for _ in range(TASKS):
                        group.start_soon(worker, count // TASKS)

            await phase(requests // 10)  # warm-up
            profiler = cProfile.Profile(time.thread_time) if profile else None
            began = time.thread_time()
            if profiler is not None:
                profiler.enable()
            await phase(requests)
            if profiler is not None:
                profiler.disable()
            cpu = time.thread_time() - began
        finally:
            _driver.start_request = real
    done = requests // TASKS * TASKS
    return {"cpu_us_per_request": round(cpu * 1e6 / done, 2), "profile": profiler}


def shares(profiler: cProfile.Profile) -> dict[str, float]:
    """Each part's share of the profiled time, by own time (tottime) of its functions."""
    stats = pstats.Stats(profiler)
    totals: dict[str, float] = dict.fromkeys([*PARTS, OTHER], 0.0)
    for (filename, _line, name), row in stats.stats.items():  # type: ignore[attr-defined]
        totals[_part_of(filename, name)] += row[2]
    whole = sum(totals.values()) or 1.0
    return {part: round(100 * value / whole, 1) for part, value in totals.items()}


def main() -> None:
    parser = common_args("The library's own CPU per request on the loop, without the driver.")
    parser.add_argument("--requests", type=int, default=100_000)
    args = parser.parse_args()
    requests = 20_000 if args.quick else args.requests
    results: dict[str, Any] = {}
    with cassandra_node(args.address) as target:
        for backend in ("asyncio", "trio"):
            plain = [
                anyio.run(run, target.contact_points, target.port, requests, False, backend=backend)
                for _ in range(3)
            ]
            profiled = anyio.run(
                run, target.contact_points, target.port, requests // 4, True, backend=backend
            )
            figures = sorted(r["cpu_us_per_request"] for r in plain)
            results[backend] = {
                "cpu_us_per_request_runs": figures,
                "cpu_us_per_request": figures[1],
                "profile_share_percent": shares(profiled["profile"]),
            }
            print(f"{backend}: {figures[1]} µs of loop-thread CPU per request (runs {figures})")
            for part, share in results[backend]["profile_share_percent"].items():
                print(f"    {share:5.1f} %  {part}")
        meta = metadata(target, None, None)
    path = write_json(
        args.output_dir,
        "loop_path.json",
        {
            "benchmark": "loop_path",
            "metadata": meta,
            "setup": {"tasks": TASKS, "requests": requests, "runs": 3},
            "method": "the library's execute() path with the driver request replaced by a "
            "stand-in already answered (calls back inline on the loop thread); "
            "time.thread_time of the loop thread per request, median of 3 runs; shares "
            "from a separate cProfile run (own time of each function, grouped by part; "
            "profiling inflates small functions)",
            "results": results,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
