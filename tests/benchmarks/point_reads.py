"""Prepared point reads: the raw driver's callback API vs async-cassandra on asyncio and trio.

    python tests/benchmarks/point_reads.py [--address 127.0.0.40] [--quick] [--rounds N]
                                           [--profile asyncio|trio]

Starts its own Cassandra 5.0.8 node on ``--address`` (or uses the one named by
``ASYNC_CASSANDRA_CONTACT_POINTS``), loads a small table, and runs
``SELECT * FROM t WHERE id = ?`` with 1, 64 and 256 requests in flight through:

* ``driver``: ``session.execute_async`` + ``add_callbacks``, no event loop; each
  completion callback issues the next request, so exactly N stay in flight;
* ``asyncio`` / ``trio``: ``anyio.run(..., backend=...)``, N worker tasks in a task
  group, each looping ``await session.execute(stmt, [key])``, plus a probe task that
  sleeps 5 ms in a loop and records how late it wakes (event-loop lag). An idle
  configuration (N=0: the probe alone) gives the machine's noise floor, and the driver
  runs get the same probe as a thread (how late any Python thread wakes there).

Each configuration gets a warm-up, then a fixed measured duration; the whole matrix
runs ``--rounds`` times (default 2) in a rotated order, and the summary is the median.
Reported: ops/s, client CPU µs per request (``time.process_time()`` of this process:
every thread, the driver's reactor thread included; the server runs on the same
machine but is not counted), the loop thread's share of it, context switches per
request, server CPU µs per request (when this script started the node), and lag
p50/p99. ``--profile asyncio|trio`` adds a cProfile of the loop thread. Results:
``bench-results/point_reads.json``.
"""

from __future__ import annotations

import cProfile
import io
import itertools
import os
import pstats
import random
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import anyio
from _bench import (
    MachineCpu,
    Target,
    cassandra_node,
    common_args,
    context_switches,
    fmt,
    jvm_cpu_seconds,
    median,
    metadata,
    percentile,
    print_table,
    write_json,
)
from cassandra.cluster import Cluster, Session
from cassandra.concurrent import execute_concurrent_with_args
from cassandra.query import PreparedStatement

from async_cassandra import AsyncCluster, create_metrics_system

KEYSPACE = "acs_bench_point"
TABLE_ROWS = 10_000
SEED = 20261125
KEY_COUNT = 1 << 16  # a fixed pseudo-random key sequence, cycled through
CONCURRENCY = (1, 64, 256)
# The library runs also get an idle configuration: the lag probe alone, no requests, to
# show the machine's own scheduling noise under the loop-lag figures.
IDLE = 0
# "+metrics": with 0.0.1's in-memory metrics middleware installed as an observer;
# "+otel": with the OpenTelemetry observer (the SDK, spans batched to an exporter that
# drops them): what observing costs, next to the same backend without.
CLIENTS = ("driver", "asyncio", "trio", "asyncio+metrics", "asyncio+otel")
SELECT = "SELECT * FROM point WHERE id = ?"
LAG_PROBE_SECONDS = 0.005


@dataclass
class Timing:
    warmup_s: float
    measure_s: float
    server_warmup_s: float
    idle_s: float


FULL = Timing(warmup_s=1.5, measure_s=6.0, server_warmup_s=6.0, idle_s=3.0)
QUICK = Timing(warmup_s=0.5, measure_s=1.5, server_warmup_s=1.0, idle_s=1.0)


@dataclass
class Result:
    client: str
    concurrency: int
    round: int
    ops: int
    seconds: float
    ops_per_s: float
    cpu_us_per_op: float | None
    loop_thread_cpu_us_per_op: float | None
    context_switches_per_op: float | None
    server_cpu_us_per_op: float | None
    machine_busy_percent: float | None
    machine_steal_percent: float | None
    loop_lag_ms: dict[str, float | int | None] | None
    completions_per_wakeup: float | None
    errors: int
    first_error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Meter:
    """Wall, process CPU, loop-thread CPU, server CPU and machine load over one phase."""

    def __init__(self, jvm_pids: Sequence[int]) -> None:
        self._pids = jvm_pids
        self._machine = MachineCpu()
        self._server = jvm_cpu_seconds(jvm_pids)
        self._switches = context_switches()
        self._thread = time.thread_time()
        self._cpu = time.process_time()
        self._wall = time.perf_counter()

    def stop(self) -> dict[str, Any]:
        wall = time.perf_counter() - self._wall
        cpu = time.process_time() - self._cpu
        thread = time.thread_time() - self._thread
        switches = context_switches() - self._switches
        server_now = jvm_cpu_seconds(self._pids)
        server = (
            server_now - self._server
            if server_now is not None and self._server is not None
            else None
        )
        return {
            "seconds": wall,
            "cpu": cpu,
            "thread_cpu": thread,
            "switches": switches,
            "server_cpu": server,
            "machine_busy": self._machine.busy_percent(),
            "machine_steal": self._machine.steal_percent(),
        }


def make_keys() -> list[int]:
    rng = random.Random(SEED)
    return [rng.randrange(TABLE_ROWS) for _ in range(KEY_COUNT)]


def lag_summary(lags: list[float]) -> dict[str, float | int | None]:
    ordered = sorted(lags)
    as_ms = [x * 1000 for x in ordered]
    return {
        "p50": _round(percentile(as_ms, 0.50), 3),
        "p99": _round(percentile(as_ms, 0.99), 3),
        "max": _round(as_ms[-1] if as_ms else None, 3),
        "samples": len(as_ms),
    }


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def result_from(
    client: str,
    concurrency: int,
    round_: int,
    ops: int,
    measured: dict[str, Any],
    *,
    loop_thread: bool,
    lags: list[float] | None,
    wakeups: int | None,
    errors: int,
    first_error: str | None,
) -> Result:
    server = measured["server_cpu"]

    def per_op(total: float | None, scale: float, digits: int) -> float | None:
        # None for the idle (lag-only) configuration, which does no requests.
        return round(total * scale / ops, digits) if ops and total is not None else None

    return Result(
        client=client,
        concurrency=concurrency,
        round=round_,
        ops=ops,
        seconds=round(measured["seconds"], 3),
        ops_per_s=round(ops / measured["seconds"], 1),
        cpu_us_per_op=per_op(measured["cpu"], 1e6, 2),
        loop_thread_cpu_us_per_op=per_op(measured["thread_cpu"], 1e6, 2) if loop_thread else None,
        context_switches_per_op=per_op(measured["switches"], 1, 2),
        server_cpu_us_per_op=per_op(server, 1e6, 1),
        machine_busy_percent=measured["machine_busy"],
        machine_steal_percent=measured["machine_steal"],
        loop_lag_ms=lag_summary(lags) if lags is not None else None,
        completions_per_wakeup=round(ops / wakeups, 2) if wakeups else None,
        errors=errors,
        first_error=first_error,
    )


# ------------------------------------------------------------------- setup


def setup(session: Session) -> None:
    session.execute(
        f"CREATE KEYSPACE IF NOT EXISTS {KEYSPACE} WITH replication = "
        "{'class': 'SimpleStrategy', 'replication_factor': 1}"
    )
    session.execute(f"DROP TABLE IF EXISTS {KEYSPACE}.point")
    session.execute(
        f"CREATE TABLE {KEYSPACE}.point (id int PRIMARY KEY, name text, score double, "
        "updated bigint)"
    )
    insert = session.prepare(
        f"INSERT INTO {KEYSPACE}.point (id, name, score, updated) VALUES (?, ?, ?, ?)"
    )
    rng = random.Random(SEED + 1)
    rows = [
        (i, f"user-{i:05d}-{rng.randrange(10**6):06d}", rng.random() * 100, 1_700_000_000 + i)
        for i in range(TABLE_ROWS)
    ]
    for ok, outcome in execute_concurrent_with_args(session, insert, rows, concurrency=128):
        if not ok:
            raise outcome


# ------------------------------------------------------------ (a) the raw driver


def driver_phase(
    session: Session,
    stmt: PreparedStatement,
    keys: list[int],
    concurrency: int,
    seconds: float,
    jvm_pids: Sequence[int],
) -> tuple[int, dict[str, Any], list[float], int, str | None]:
    """N requests kept in flight by the completion callbacks; no event loop anywhere.

    A probe thread sleeps 5 ms in a loop meanwhile: there is no loop to lag, but how
    late a Python thread of this process wakes (GIL, OS scheduling) is the baseline the
    event-loop lag of the library runs compares with.
    """
    mask = len(keys) - 1
    counter = itertools.count()
    lock = threading.Lock()
    done = threading.Event()
    ops = errors = 0
    first_error: str | None = None
    in_flight = concurrency
    deadline = 0.0

    def issue() -> None:
        future = session.execute_async(stmt, [keys[next(counter) & mask]])
        future.add_callbacks(on_rows, on_error)

    def on_rows(rows: Any) -> None:
        nonlocal ops
        _ = rows[0]  # the same touch of the row as the library workers' .one()
        with lock:  # callbacks run on the reactor thread, or inline on the caller
            ops += 1
        next_or_stop()

    def on_error(error: BaseException) -> None:
        nonlocal errors, first_error
        with lock:
            errors += 1
            first_error = first_error or repr(error)
        next_or_stop()

    def next_or_stop() -> None:
        nonlocal in_flight, errors, first_error
        if time.perf_counter() < deadline:
            try:
                issue()
                return
            except Exception as error:  # e.g. NoHostAvailable: this slot ends here
                with lock:
                    errors += 1
                    first_error = first_error or repr(error)
        with lock:
            in_flight -= 1
            last = in_flight == 0
        if last:
            done.set()

    lags: list[float] = []

    def probe() -> None:
        while not done.is_set():
            began = time.perf_counter()
            time.sleep(LAG_PROBE_SECONDS)
            lags.append(time.perf_counter() - began - LAG_PROBE_SECONDS)

    prober = threading.Thread(target=probe, name="lag-probe", daemon=True)
    prober.start()
    meter = Meter(jvm_pids)
    deadline = time.perf_counter() + seconds
    for _ in range(concurrency):
        issue()
    if not done.wait(seconds + 120):
        raise RuntimeError(f"driver phase: {in_flight} requests still in flight after 120 s")
    measured = meter.stop()
    prober.join()
    return ops, measured, lags, errors, first_error


def run_driver(target: Target, keys: list[int], timing: Timing, round_: int) -> list[Result]:
    cluster = Cluster(target.contact_points, port=target.port)
    try:
        session = cluster.connect(KEYSPACE)
        stmt = session.prepare(SELECT)
        results = []
        for concurrency in CONCURRENCY:
            driver_phase(session, stmt, keys, concurrency, timing.warmup_s, target.jvm_pids)
            ops, measured, lags, errors, first_error = driver_phase(
                session, stmt, keys, concurrency, timing.measure_s, target.jvm_pids
            )
            results.append(
                result_from(
                    "driver",
                    concurrency,
                    round_,
                    ops,
                    measured,
                    loop_thread=False,
                    lags=lags,
                    wakeups=None,
                    errors=errors,
                    first_error=first_error,
                )
            )
            report(results[-1])
        return results
    finally:
        cluster.shutdown()


# ------------------------------------------------------- (b), (c) async-cassandra


def _portal_wakeups() -> int | None:
    # The library's own introspection counter (private module; read only): how many
    # times driver threads woke the loop. ops / wakeups = completions per wake-up.
    try:
        from async_cassandra._portal import current_portal

        return current_portal().wakeups
    except Exception:
        return None


async def library_phase(
    session: Any,
    stmt: PreparedStatement,
    keys: list[int],
    concurrency: int,
    seconds: float,
    jvm_pids: Sequence[int],
) -> tuple[int, dict[str, Any], list[float], int | None, int, str | None]:
    mask = len(keys) - 1
    counter = itertools.count()
    ops = errors = 0
    first_error: str | None = None
    lags: list[float] = []
    deadline = 0.0

    async def worker() -> None:
        nonlocal ops, errors, first_error
        done = 0
        while time.perf_counter() < deadline:
            try:
                rows = await session.execute(stmt, [keys[next(counter) & mask]])
            except Exception as error:
                errors += 1
                first_error = first_error or repr(error)
                continue
            rows.one()
            done += 1
        ops += done

    async def probe() -> None:
        while True:
            began = time.perf_counter()
            await anyio.sleep(LAG_PROBE_SECONDS)
            lags.append(time.perf_counter() - began - LAG_PROBE_SECONDS)

    async with anyio.create_task_group() as outer:
        outer.start_soon(probe)
        wakeups0 = _portal_wakeups()
        meter = Meter(jvm_pids)
        deadline = time.perf_counter() + seconds
        if concurrency == IDLE:
            await anyio.sleep(seconds)
        async with anyio.create_task_group() as workers:
            for _ in range(concurrency):
                workers.start_soon(worker)
        measured = meter.stop()
        wakeups1 = _portal_wakeups()
        outer.cancel_scope.cancel()
    wakeups = wakeups1 - wakeups0 if wakeups0 is not None and wakeups1 is not None else None
    return ops, measured, lags, wakeups, errors, first_error


def observers_for(client: str) -> list[Any]:
    """The request observers a client name asks for (see CLIENTS)."""
    kind = client.partition("+")[2]
    if kind == "metrics":
        return [create_metrics_system(backend="memory")]
    if kind == "otel":
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            SpanExporter,
            SpanExportResult,
        )

        from async_cassandra.otel import OpenTelemetryObserver

        class Discard(SpanExporter):
            def export(self, spans: Any) -> SpanExportResult:
                return SpanExportResult.SUCCESS

        tracer_provider = TracerProvider()
        tracer_provider.add_span_processor(BatchSpanProcessor(Discard()))
        return [OpenTelemetryObserver(tracer_provider, MeterProvider())]
    return []


async def run_library(
    client: str,
    target: Target,
    keys: list[int],
    timing: Timing,
    round_: int,
    profile_to: cProfile.Profile | None = None,
) -> list[Result]:
    results = []
    async with (
        AsyncCluster(
            target.contact_points, port=target.port, observers=observers_for(client)
        ) as cluster,
        await cluster.connect(KEYSPACE) as session,
    ):
        stmt = await session.prepare(SELECT)
        concurrencies = (IDLE, *CONCURRENCY) if profile_to is None else (max(CONCURRENCY),)
        for concurrency in concurrencies:
            if concurrency != IDLE:
                await library_phase(
                    session, stmt, keys, concurrency, timing.warmup_s, target.jvm_pids
                )
            if profile_to is not None:
                profile_to.enable()
            ops, measured, lags, wakeups, errors, first_error = await library_phase(
                session,
                stmt,
                keys,
                concurrency,
                timing.idle_s if concurrency == IDLE else timing.measure_s,
                target.jvm_pids,
            )
            if profile_to is not None:
                profile_to.disable()
            results.append(
                result_from(
                    client,
                    concurrency,
                    round_,
                    ops,
                    measured,
                    loop_thread=True,
                    lags=lags,
                    wakeups=wakeups,
                    errors=errors,
                    first_error=first_error,
                )
            )
            if profile_to is None:
                report(results[-1])
    return results


# ------------------------------------------------------------------------ report


def report(result: Result) -> None:
    lag = result.loop_lag_ms or {}
    cpu = f"{result.cpu_us_per_op:>7.1f} µs CPU/op" if result.cpu_us_per_op is not None else ""
    print(
        f"  {result.client:<8} N={result.concurrency:<4} {result.ops_per_s:>10,.0f} ops/s  "
        f"{cpu}"
        + (f"  lag p50 {lag['p50']:.2f} ms p99 {lag['p99']:.2f} ms" if lag else "")
        + (f"  ({result.errors} errors: {result.first_error})" if result.errors else ""),
        flush=True,
    )


def summarize(results: list[Result]) -> list[dict[str, Any]]:
    """One row per (client, concurrency): the median over rounds of each figure."""
    rows = []
    driver_ops: dict[int, float] = {}
    for client in CLIENTS:
        for concurrency in (IDLE, *CONCURRENCY):
            runs = [r for r in results if r.client == client and r.concurrency == concurrency]
            if not runs:
                continue

            ops_per_s = median(r.ops_per_s for r in runs)
            assert ops_per_s is not None
            if client == "driver":
                driver_ops[concurrency] = ops_per_s
            rows.append(
                {
                    "client": client,
                    "concurrency": concurrency,
                    "rounds": len(runs),
                    "ops_per_s": round(ops_per_s, 1),
                    "vs_driver": round(ops_per_s / driver_ops[concurrency], 3)
                    if concurrency in driver_ops
                    else None,
                    "cpu_us_per_op": median(r.cpu_us_per_op for r in runs),
                    "loop_thread_cpu_us_per_op": median(r.loop_thread_cpu_us_per_op for r in runs),
                    "context_switches_per_op": median(r.context_switches_per_op for r in runs),
                    "server_cpu_us_per_op": median(r.server_cpu_us_per_op for r in runs),
                    "mean_latency_ms": round(1000 * concurrency / ops_per_s, 3)
                    if ops_per_s
                    else None,
                    "loop_lag_p50_ms": median(
                        r.loop_lag_ms["p50"] if r.loop_lag_ms else None for r in runs
                    ),
                    "loop_lag_p99_ms": median(
                        r.loop_lag_ms["p99"] if r.loop_lag_ms else None for r in runs
                    ),
                    "completions_per_wakeup": median(r.completions_per_wakeup for r in runs),
                    "machine_busy_percent": median(r.machine_busy_percent for r in runs),
                    "machine_steal_percent": median(r.machine_steal_percent for r in runs),
                    "errors": sum(r.errors for r in runs),
                }
            )
    return rows


def print_summary(rows: list[dict[str, Any]]) -> None:
    headers = [
        "client",
        "in flight",
        "ops/s",
        "vs driver",
        "CPU µs/op",
        "loop thr µs/op",
        "ctx sw/op",
        "server µs/op",
        "lag p50 ms",
        "lag p99 ms",
        "per wakeup",
        "machine busy %",
        "steal %",
        "errors",
    ]
    table = [
        [
            row["client"],
            fmt(row["concurrency"]),
            fmt(row["ops_per_s"], 0),
            fmt(row["vs_driver"], 2),
            fmt(row["cpu_us_per_op"]),
            fmt(row["loop_thread_cpu_us_per_op"]),
            fmt(row["context_switches_per_op"], 2),
            fmt(row["server_cpu_us_per_op"], 0),
            fmt(row["loop_lag_p50_ms"], 2),
            fmt(row["loop_lag_p99_ms"], 2),
            fmt(row["completions_per_wakeup"], 1),
            fmt(row["machine_busy_percent"], 0),
            fmt(row["machine_steal_percent"], 0),
            fmt(row["errors"]),
        ]
        for row in rows
    ]
    print()
    print_table(headers, table)


def profile_library(
    backend: str, target: Target, keys: list[int], timing: Timing, output_dir: Path
) -> str:
    """cProfile of the loop thread at the highest concurrency, in CPU time of that thread
    (time.thread_time, so waits for the GIL or in epoll do not count; the driver's
    Cython code is not profiled, its time counts as the calling function's own). Not
    part of the figures: profiling slows everything down. The full profile is saved as
    ``point_reads_<backend>.pstats``."""
    profiler = cProfile.Profile(time.thread_time)
    anyio.run(run_library, backend, target, keys, timing, 0, profiler, backend=backend)
    output_dir.mkdir(parents=True, exist_ok=True)
    profiler.dump_stats(output_dir / f"point_reads_{backend}.pstats")
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(30)
    return out.getvalue()


def main() -> None:
    parser = common_args("Prepared point reads: raw driver vs async-cassandra (asyncio, trio).")
    parser.add_argument(
        "--rounds",
        type=int,
        help="how many times to run the whole matrix, in a rotated order each time; the "
        "summary is the median (default: 2, or 1 with --quick)",
    )
    parser.add_argument(
        "--profile",
        choices=("asyncio", "trio"),
        help="after the figures, cProfile the loop thread of one extra run at the highest "
        "concurrency on this backend and save it next to the JSON",
    )
    args = parser.parse_args()
    timing = QUICK if args.quick else FULL
    if args.rounds is None:
        args.rounds = 1 if args.quick else 2
    keys = make_keys()
    began = time.perf_counter()
    with cassandra_node(args.address) as target:
        cluster = Cluster(target.contact_points, port=target.port)
        try:
            session = cluster.connect()
            release = session.execute("SELECT release_version FROM system.local").one()[0]
            protocol = cluster.protocol_version
            print(f"server Cassandra {release}, protocol v{protocol}; loading {TABLE_ROWS} rows")
            setup(session)
            session.set_keyspace(KEYSPACE)
            # Warm the server's JIT and caches once before anything is measured, so the
            # first client measured does not pay for it.
            stmt = session.prepare(SELECT)
            driver_phase(session, stmt, keys, 64, timing.server_warmup_s, target.jvm_pids)
        finally:
            cluster.shutdown()
        meta = metadata(target, release, protocol)

        results: list[Result] = []
        for round_ in range(args.rounds):
            # Rotate the order between rounds so no client always runs first or last.
            shift = round_ % len(CLIENTS)
            order = CLIENTS[shift:] + CLIENTS[:shift]
            for client in order:
                print(f"round {round_ + 1}/{args.rounds}: {client}", flush=True)
                if client == "driver":
                    results += run_driver(target, keys, timing, round_)
                else:
                    results += anyio.run(
                        run_library,
                        client,
                        target,
                        keys,
                        timing,
                        round_,
                        backend=client.partition("+")[0],
                    )
        profile_text = None
        if args.profile:
            print(f"profiling {args.profile} at {max(CONCURRENCY)} in flight ...", flush=True)
            profile_text = profile_library(args.profile, target, keys, timing, args.output_dir)

        if not target.started_here:
            cleanup = Cluster(target.contact_points, port=target.port)
            try:
                cleanup.connect().execute(f"DROP KEYSPACE IF EXISTS {KEYSPACE}")
            finally:
                cleanup.shutdown()

    summary = summarize(results)
    data: dict[str, Any] = {
        "benchmark": "point_reads",
        "metadata": meta,
        "setup": {
            "query": SELECT,
            "table": "point (id int PRIMARY KEY, name text, score double, updated bigint)",
            "table_rows": TABLE_ROWS,
            "key_seed": SEED,
            "keys": f"{KEY_COUNT} keys drawn uniformly from 0..{TABLE_ROWS - 1} "
            "(random.Random(seed)), cycled through",
            "concurrency": list(CONCURRENCY),
            "idle_probe_seconds": timing.idle_s,
            "warmup_seconds_per_configuration": timing.warmup_s,
            "measured_seconds_per_configuration": timing.measure_s,
            "server_warmup_seconds": timing.server_warmup_s,
            "rounds": args.rounds,
            "quick": args.quick,
            "total_seconds": round(time.perf_counter() - began, 1),
        },
        "method": {
            "driver": "cassandra.cluster.Session.execute_async + add_callbacks; each callback "
            "issues the next request until the deadline, so N stay in flight; the main "
            "thread waits on a threading.Event; no event loop",
            "asyncio/trio": "anyio.run(backend=...); N worker tasks in a task group, each "
            "looping `await session.execute(stmt, [key])` then `.one()` until the deadline",
            "ops_per_s": "completed requests / wall time from the first issue to the last "
            "completion (requests issued before the deadline all complete and count)",
            "cpu_us_per_op": "time.process_time() delta / ops: CPU of this whole client "
            "process (all threads, the driver's reactor thread included); the server JVM "
            "runs on the same machine and is not included",
            "loop_thread_cpu_us_per_op": "time.thread_time() of the event-loop thread / ops",
            "context_switches_per_op": "voluntary + involuntary context switches of all "
            "threads of this process (/proc/self/task/*/status) / ops: how often threads "
            "block and wake (hand-offs between the loop and the driver's reactor thread)",
            "server_cpu_us_per_op": "utime+stime of the Cassandra JVM (from /proc) / ops; "
            "only when this script started the node",
            "loop_lag": "a probe task sleeps 5 ms in a loop during the measured phase and "
            "records (actual sleep - 5 ms); p50/p99/max in ms. For the driver, which has no "
            "loop, the same probe is a thread (time.sleep): how late any Python thread of "
            "the process wakes, from the GIL and OS scheduling, for comparison. "
            "Concurrency 0 (asyncio/trio only): the probe alone on an otherwise idle loop, "
            "the noise floor of the machine's scheduling",
            "completions_per_wakeup": "ops / wake-ups of the loop by the library's portal "
            "(its own counter, async_cassandra._portal.Portal.wakeups)",
            "mean_latency_ms": "Little's law: in flight / ops_per_s",
            "machine_busy_percent": "all cores, from /proc/stat, during the phase: this "
            "client + the server + anything else running (noise indicator); "
            "machine_steal_percent: time the hypervisor gave the vCPUs to others",
            "summary": "median over rounds of each figure independently",
        },
        "summary": summary,
        "runs": [asdict(r) for r in results],
    }
    if profile_text is not None:
        data["profile"] = {
            "backend": args.profile,
            "concurrency": max(CONCURRENCY),
            "top_by_tottime": profile_text,
        }
    data["metadata"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    path = write_json(args.output_dir, "point_reads.json", data)
    print_summary(summary)
    if profile_text is not None:
        print(f"\ncProfile of the {args.profile} loop thread ({max(CONCURRENCY)} in flight):")
        print(profile_text)
    print(f"\nwrote {path} ({data['setup']['total_seconds']} s)")


if __name__ == "__main__":
    main()
