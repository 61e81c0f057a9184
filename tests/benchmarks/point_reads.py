"""Prepared point reads: the raw driver, async-cassandra on asyncio and trio, and peers.

    python tests/benchmarks/point_reads.py [--address 127.0.0.40] [--quick] [--rounds N]
        [--clients driver,asyncio,...] [--profile asyncio|trio]
        [--v001-python PATH] [--acsylla-python PATH]

Starts its own Cassandra 5.0.8 node on ``--address`` (or uses the one named by
``ASYNC_CASSANDRA_CONTACT_POINTS``), loads a small table, and runs
``SELECT * FROM point WHERE id = ?`` (prepared) with 1, 64 and 256 requests in flight;
every client reads the ``name`` value of the row it gets. The clients:

* ``driver``: ``session.execute_async`` + ``add_callbacks``, no event loop; each
  completion callback issues the next request, so exactly N stay in flight; the driver's
  default rows (named tuples);
* ``driver/tuple``: the same loop with ``row_factory=cassandra.query.tuple_factory`` (an
  ExecutionProfile of its Cluster): the driver's cheapest rows;
* ``asyncio`` / ``trio``: this library, ``anyio.run(..., backend=...)``, N worker tasks
  in a task group, each looping ``await session.execute(stmt, [key])``, plus a probe
  task that sleeps 5 ms in a loop and records how late it wakes (event-loop lag). In a
  full run an idle configuration (N=0: the probe alone) gives the machine's noise floor,
  and the driver runs get the same probe as a thread (how late any Python thread wakes);
* ``asyncio+loopio`` / ``trio+loopio``: the same with the opt-in
  ``connection_class=EventLoopConnection``: the driver's socket I/O and timers on the
  event loop's thread instead of the driver's reactor thread;
* ``asyncio+metrics`` / ``asyncio+otel``: asyncio with the in-memory metrics or the
  OpenTelemetry observer installed;
* ``v001``: async-cassandra 0.0.1, the library this one replaces (asyncio; same driver),
  and ``acsylla``: acsylla 1.2.0 (asyncio over the ScyllaDB/DataStax C++ driver, CQL
  protocol v4; the others negotiate v5). Each in its own venv (0.0.1 has our import name
  and needs Python >= 3.12), run by ``_peer_point_reads.py`` in a subprocess with the
  same worker/probe loop and key sequence; ``nox -s bench`` makes the venvs
  (``_peers.py``) and passes their interpreters. A peer that cannot run is reported as
  unavailable, with the reason, in the output and the JSON.

Each configuration gets a warm-up, then a fixed measured duration; every client connects
once per round (connection set-up is not measured). The whole matrix runs ``--rounds``
times (default 4; ``--quick``: 1 round of 0.3 s warm-up + 1 s measured per
configuration, no idle configuration, under a minute), in an order rotated each round;
``--clients`` picks a subset. Summary: the median over rounds of each figure, and
``vs_driver`` as the median of the per-round ratios (a client's ops/s in round r / the
driver's in round r; ``vs_driver_tuple`` likewise against ``driver/tuple``), so a
slowdown that lasts a whole round weighs on both sides of that round's ratio. Reported:
ops/s, client CPU µs per request (``time.process_time()`` of the client process, the
peers' included: every thread, the driver's reactor thread or the C++ I/O thread too;
the server runs on the same machine but is not counted), the loop thread's share of it,
context switches per request, server CPU µs per request (when this script started the
node; for the peers read around their measured phase), and lag p50/p99/max.
``--profile asyncio|trio`` adds a cProfile of the loop thread. Results:
``bench-results/point_reads.json``.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import itertools
import os
import pstats
import random
import sys
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
    ThreadProbe,
    cassandra_node,
    common_args,
    context_switches,
    create_keyspace_cql,
    fmt,
    jvm_cpu_seconds,
    lag_probe,
    lag_summary,
    median,
    metadata,
    print_table,
    write_json,
)
from _peers import PEERS, PeerError, PeerProcess, add_peer_options, check, peer_python
from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile, Session
from cassandra.concurrent import execute_concurrent_with_args
from cassandra.query import PreparedStatement, tuple_factory

from async_cassandra import AsyncCluster, create_metrics_system
from async_cassandra.connection import EventLoopConnection

KEYSPACE = "acs_bench_point"
TABLE_ROWS = 10_000
SEED = 20261125
KEY_COUNT = 1 << 16  # a fixed pseudo-random key sequence, cycled through
CONCURRENCY = (1, 64, 256)
# The library runs also get an idle configuration (full runs only): the lag probe alone,
# no requests, to show the machine's own scheduling noise under the loop-lag figures.
IDLE = 0
# "+metrics": with 0.0.1's in-memory metrics middleware installed as an observer;
# "+otel": with the OpenTelemetry observer (the SDK, spans batched to an exporter that
# drops them): what observing costs, next to the same backend without.
# "+loopio": with the opt-in connection_class=EventLoopConnection (the driver's I/O on
# the event loop's thread).
# "v001" / "acsylla": the peers, each in its own venv and process (see _peers.py).
DRIVERS = ("driver", "driver/tuple")
PEER_CLIENTS = tuple(PEERS)
LOOP_IO = ("asyncio+loopio", "trio+loopio")
CLIENTS = (
    *DRIVERS,
    "asyncio",
    "trio",
    *LOOP_IO,
    "asyncio+metrics",
    "asyncio+otel",
    *PEER_CLIENTS,
)
SELECT = "SELECT * FROM point WHERE id = ?"


@dataclass
class Timing:
    warmup_s: float
    measure_s: float
    server_warmup_s: float
    idle_s: float


FULL = Timing(warmup_s=1.5, measure_s=6.0, server_warmup_s=6.0, idle_s=3.0)
# Quick: the whole run in about a minute; no idle configuration (idle_s=0).
QUICK = Timing(warmup_s=0.3, measure_s=1.0, server_warmup_s=1.0, idle_s=0.0)


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
    session.execute(create_keyspace_cql(KEYSPACE))
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
    tuple_rows: bool = False,
) -> tuple[int, dict[str, Any], list[float], int, str | None]:
    """N requests kept in flight by the completion callbacks; no event loop anywhere.
    ``tuple_rows``: the session's rows are plain tuples (``tuple_factory``), so the
    ``name`` value is read by its index.

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
        future.add_callbacks(on_result, on_error)

    def on_rows(rows: Any) -> None:
        nonlocal ops
        _ = rows[0].name  # the value every client reads
        with lock:  # callbacks run on the reactor thread, or inline on the caller
            ops += 1
        next_or_stop()

    def on_tuple_rows(rows: Any) -> None:
        nonlocal ops
        _ = rows[0][1]  # name: SELECT * gives id, name, score, updated
        with lock:
            ops += 1
        next_or_stop()

    on_result = on_tuple_rows if tuple_rows else on_rows

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

    with ThreadProbe() as probe:
        meter = Meter(jvm_pids)
        deadline = time.perf_counter() + seconds
        for _ in range(concurrency):
            issue()
        if not done.wait(seconds + 120):
            raise RuntimeError(f"driver phase: {in_flight} requests still in flight after 120 s")
        measured = meter.stop()
    return ops, measured, probe.lags, errors, first_error


def run_driver(
    client: str, target: Target, keys: list[int], timing: Timing, round_: int
) -> list[Result]:
    tuple_rows = client == "driver/tuple"
    profiles = (
        {EXEC_PROFILE_DEFAULT: ExecutionProfile(row_factory=tuple_factory)} if tuple_rows else {}
    )
    cluster = Cluster(target.contact_points, port=target.port, execution_profiles=profiles)
    try:
        session = cluster.connect(KEYSPACE)
        stmt = session.prepare(SELECT)
        results = []
        for concurrency in CONCURRENCY:
            driver_phase(
                session, stmt, keys, concurrency, timing.warmup_s, target.jvm_pids, tuple_rows
            )
            ops, measured, lags, errors, first_error = driver_phase(
                session, stmt, keys, concurrency, timing.measure_s, target.jvm_pids, tuple_rows
            )
            results.append(
                result_from(
                    client,
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
            _ = rows.one().name
            done += 1
        ops += done

    async with anyio.create_task_group() as outer:
        outer.start_soon(lag_probe, lags)
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
    options = {"connection_class": EventLoopConnection} if client in LOOP_IO else {}
    async with (
        AsyncCluster(
            target.contact_points, port=target.port, observers=observers_for(client), **options
        ) as cluster,
        await cluster.connect(KEYSPACE) as session,
    ):
        stmt = await session.prepare(SELECT)
        if profile_to is not None:
            concurrencies: tuple[int, ...] = (max(CONCURRENCY),)
        elif timing.idle_s > 0:
            concurrencies = (IDLE, *CONCURRENCY)
        else:
            concurrencies = CONCURRENCY
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


# ------------------------------------------------------------------ (d) the peers


def run_peer(
    client: str, python: str, target: Target, timing: Timing, round_: int
) -> tuple[list[Result], dict[str, Any]]:
    """One process of ``_peer_point_reads.py`` in the peer's venv: it connects and
    prepares once, then runs each concurrency's warm-up and measured phase when told to.
    This process reads the server's and the machine's CPU around each measured phase;
    the client's own figures (wall, CPU, loop thread, switches, lags) come from the peer
    process. Raises PeerError if the peer fails. Returns the results and its "ready"
    line (versions, protocol)."""
    arguments = [
        "--client",
        client,
        "--host",
        target.contact_points[0],
        "--port",
        str(target.port),
        "--keyspace",
        KEYSPACE,
        "--table",
        "point",
        "--concurrency",
        ",".join(map(str, CONCURRENCY)),
        "--warmup",
        str(timing.warmup_s),
        "--measure",
        str(timing.measure_s),
        "--seed",
        str(SEED),
        "--table-rows",
        str(TABLE_ROWS),
        "--key-count",
        str(KEY_COUNT),
    ]
    results = []
    grace = 120.0  # beyond a phase's own length: requests in flight finish or time out
    with PeerProcess(python, arguments) as peer:
        ready = peer.expect("ready", timeout=grace)
        sample = ready.get("sample") or {}
        if not str(sample.get("name")).startswith(f"user-{sample.get('id', -1):05d}-"):
            raise PeerError(f"it read a wrong row: {sample}")
        for concurrency in CONCURRENCY:
            peer.go()
            peer.expect("phase", timeout=timing.warmup_s + grace)
            meter = Meter(target.jvm_pids)
            peer.go()
            line = peer.expect("phase", timeout=timing.measure_s + grace)
            measured = meter.stop()  # server and machine CPU; the rest is the peer's own
            measured.update(
                seconds=line["seconds"],
                cpu=line["cpu"],
                thread_cpu=line["thread_cpu"],
                switches=line["switches"],
            )
            results.append(
                result_from(
                    client,
                    concurrency,
                    round_,
                    line["ops"],
                    measured,
                    loop_thread=True,
                    lags=line["lags"],
                    wakeups=None,
                    errors=line["errors"],
                    first_error=line["first_error"],
                )
            )
            report(results[-1])
        peer.expect("closed", timeout=grace)
        peer.close()
    ready.pop("event", None)
    return results, ready


# ------------------------------------------------------------------------ report


def report(result: Result) -> None:
    lag = result.loop_lag_ms or {}
    cpu = f"{result.cpu_us_per_op:>7.1f} µs CPU/op" if result.cpu_us_per_op is not None else ""
    print(
        f"  {result.client:<15} N={result.concurrency:<4} {result.ops_per_s:>10,.0f} ops/s  "
        f"{cpu}"
        + (
            f"  lag p50 {lag['p50']:.2f} ms p99 {lag['p99']:.2f} ms max {lag['max']:.2f} ms"
            if lag.get("max") is not None
            else ""
        )
        + (f"  ({result.errors} errors: {result.first_error})" if result.errors else ""),
        flush=True,
    )


def per_round_ratios(runs: list[Result], baseline: list[Result]) -> list[float]:
    """ops/s of each round over the baseline client's ops/s in the same round (rounds
    where either is missing or the baseline did nothing are left out)."""
    base = {r.round: r.ops_per_s for r in baseline}
    return [
        round(r.ops_per_s / base[r.round], 3)
        for r in sorted(runs, key=lambda r: r.round)
        if base.get(r.round)
    ]


def summarize(results: list[Result], clients: Sequence[str]) -> list[dict[str, Any]]:
    """One row per (client, concurrency): the median over rounds of each figure, and
    vs_driver / vs_driver_tuple as the median of the per-round ratios."""
    rows = []
    for client in clients:
        for concurrency in (IDLE, *CONCURRENCY):
            runs = [r for r in results if r.client == client and r.concurrency == concurrency]
            if not runs:
                continue

            ops_per_s = median(r.ops_per_s for r in runs)
            assert ops_per_s is not None
            ratios = {
                name: per_round_ratios(
                    runs,
                    [r for r in results if r.client == name and r.concurrency == concurrency],
                )
                for name in DRIVERS
            }

            def lag(key: str, runs: list[Result] = runs) -> float | None:
                return median(r.loop_lag_ms[key] if r.loop_lag_ms else None for r in runs)

            rows.append(
                {
                    "client": client,
                    "concurrency": concurrency,
                    "rounds": len(runs),
                    "ops_per_s": round(ops_per_s, 1),
                    "vs_driver": median(ratios["driver"]),
                    "vs_driver_rounds": ratios["driver"],
                    "vs_driver_tuple": median(ratios["driver/tuple"]),
                    "vs_driver_tuple_rounds": ratios["driver/tuple"],
                    "cpu_us_per_op": median(r.cpu_us_per_op for r in runs),
                    "loop_thread_cpu_us_per_op": median(r.loop_thread_cpu_us_per_op for r in runs),
                    "context_switches_per_op": median(r.context_switches_per_op for r in runs),
                    "server_cpu_us_per_op": median(r.server_cpu_us_per_op for r in runs),
                    "mean_latency_ms": round(1000 * concurrency / ops_per_s, 3)
                    if ops_per_s
                    else None,
                    "loop_lag_p50_ms": lag("p50"),
                    "loop_lag_p99_ms": lag("p99"),
                    "loop_lag_max_ms": lag("max"),
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
        "vs drv/tuple",
        "CPU µs/op",
        "loop thr µs/op",
        "ctx sw/op",
        "server µs/op",
        "lag p50 ms",
        "lag p99 ms",
        "lag max ms",
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
            fmt(row["vs_driver_tuple"], 2),
            fmt(row["cpu_us_per_op"]),
            fmt(row["loop_thread_cpu_us_per_op"]),
            fmt(row["context_switches_per_op"], 2),
            fmt(row["server_cpu_us_per_op"], 0),
            fmt(row["loop_lag_p50_ms"], 2),
            fmt(row["loop_lag_p99_ms"], 2),
            fmt(row["loop_lag_max_ms"], 1),
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


def parse_clients(text: str) -> tuple[str, ...]:
    wanted = [name.strip() for name in text.split(",") if name.strip()]
    unknown = sorted(set(wanted) - set(CLIENTS))
    if unknown or not wanted:
        raise argparse.ArgumentTypeError(
            f"unknown client(s) {', '.join(unknown) or '(none given)'}; "
            f"choose among {','.join(CLIENTS)}"
        )
    return tuple(name for name in CLIENTS if name in wanted)  # in the usual order


def shout(message: str) -> None:
    """A line nobody should miss, on stdout (with the figures) and stderr."""
    line = f"!!! {message}"
    print(line, flush=True)
    print(line, file=sys.stderr, flush=True)


def check_peers(args: argparse.Namespace, clients: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Which of the requested peers can run, and with what (``"available"``, ``"reason"``
    when not, versions when so)."""
    peers: dict[str, dict[str, Any]] = {}
    for name in clients:
        if name not in PEER_CLIENTS:
            continue
        python, reason = peer_python(args, name)
        info: dict[str, Any] = (
            check(name, python) if python else {"available": False, "reason": reason}
        )
        if info["available"]:
            print(
                f"peer {name}: {info['package']} {info['version']} on Python {info['python']} "
                f"({info['executable']})",
                flush=True,
            )
        else:
            shout(f"peer {name} UNAVAILABLE, not measured: {info['reason']}")
        peers[name] = info
    return peers


def main() -> None:
    parser = common_args(
        "Prepared point reads: raw driver vs async-cassandra (asyncio, trio) vs peers."
    )
    parser.add_argument(
        "--rounds",
        type=int,
        help="how many times to run the whole matrix, in a rotated order each time; the "
        "summary is the median (default: 4, or 1 with --quick)",
    )
    parser.add_argument(
        "--clients",
        type=parse_clients,
        default=CLIENTS,
        help=f"comma-separated subset of {','.join(CLIENTS)} (default: all)",
    )
    add_peer_options(parser)
    parser.add_argument(
        "--profile",
        choices=("asyncio", "trio"),
        help="after the figures, cProfile the loop thread of one extra run at the highest "
        "concurrency on this backend and save it next to the JSON",
    )
    args = parser.parse_args()
    timing = QUICK if args.quick else FULL
    if args.rounds is None:
        args.rounds = 1 if args.quick else 4
    clients: tuple[str, ...] = args.clients
    keys = make_keys()
    began = time.perf_counter()
    peers = check_peers(args, clients)
    runnable = [c for c in clients if c not in peers or peers[c]["available"]]
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
            shift = round_ % len(runnable) if runnable else 0
            order = runnable[shift:] + runnable[:shift]
            for client in order:
                print(f"round {round_ + 1}/{args.rounds}: {client}", flush=True)
                if client in DRIVERS:
                    results += run_driver(client, target, keys, timing, round_)
                elif client in PEER_CLIENTS:
                    try:
                        peer_results, ready = run_peer(
                            client, peers[client]["interpreter"], target, timing, round_
                        )
                    except Exception as error:  # PeerError, or a malformed answer
                        reason = str(error) if isinstance(error, PeerError) else repr(error)
                        shout(f"peer {client} FAILED in round {round_ + 1}: {reason}")
                        peers[client].setdefault("failed_rounds", []).append(
                            {"round": round_, "reason": reason}
                        )
                        continue
                    results += peer_results
                    peers[client]["protocol_version"] = ready.get("protocol_version")
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
        for name, info in peers.items():
            if info["available"] and not any(r.client == name for r in results):
                info["available"] = False
                info["reason"] = "every round failed; first: " + info["failed_rounds"][0]["reason"]
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

    summary = summarize(results, clients)
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
            "clients": list(clients),
            "concurrency": list(CONCURRENCY),
            "idle_probe_seconds": timing.idle_s or None,
            "warmup_seconds_per_configuration": timing.warmup_s,
            "measured_seconds_per_configuration": timing.measure_s,
            "server_warmup_seconds": timing.server_warmup_s,
            "rounds": args.rounds,
            "quick": args.quick,
            "total_seconds": round(time.perf_counter() - began, 1),
        },
        "method": {
            "read": "every client reads the `name` value of the row it gets (by attribute "
            "on named-tuple rows and acsylla's Row, by index 1 on driver/tuple's tuples)",
            "driver": "cassandra.cluster.Session.execute_async + add_callbacks; each callback "
            "issues the next request until the deadline, so N stay in flight; the main "
            "thread waits on a threading.Event; no event loop; default rows (named tuples)",
            "driver/tuple": "the same loop, the Cluster's default ExecutionProfile with "
            "row_factory=cassandra.query.tuple_factory (otherwise the default profile)",
            "asyncio/trio": "anyio.run(backend=...); N worker tasks in a task group, each "
            "looping `await session.execute(stmt, [key])` then `.one().name` until the "
            "deadline; +metrics / +otel: with the in-memory metrics or the OpenTelemetry "
            "observer (SDK, spans batched to an exporter that drops them) installed",
            "v001": "async-cassandra 0.0.1 (the library this one replaces) in its own venv "
            "(Python >= 3.12), driven by _peer_point_reads.py in a subprocess: asyncio.run, "
            "AsyncCluster(contact_points=[host], port=...), connect(keyspace), prepare, N "
            "worker tasks looping `await session.execute(stmt, [key])` then `.one().name`, "
            "plus the same 5 ms lag probe task. It closes through the driver's shutdown "
            "calls that its close()/shutdown() wrap, skipping their 5 s sleeps (after the "
            "measurements)",
            "acsylla": "acsylla 1.2.0 (asyncio over the ScyllaDB fork of the DataStax C++ "
            "driver; defaults: 1 I/O thread, 1 connection per host, token-aware) in its own "
            "venv, the same subprocess loop: create_cluster([host], port=..., "
            "protocol_version=4), create_session(keyspace=...), create_prepared, workers "
            "looping `await session.execute(prepared.bind([key]))` then "
            "`.first().name`. It speaks CQL protocol v4 (v5 is beta there); the others "
            "negotiate v5 with Cassandra 5",
            "peers": "a peer process connects and prepares once per round (not measured), "
            "then runs each concurrency's warm-up and measured phase when this script "
            "tells it to (one line on its stdin); the client figures (wall, process CPU, "
            "loop-thread CPU, context switches, lags) are its own; server and machine CPU "
            "are read by this script just before and after the measured phase (a pipe "
            "round trip wider). Same key sequence (random.Random(key_seed)), same order "
            "of phases. Unavailable peers are listed under `peers` with the reason",
            "ops_per_s": "completed requests / wall time from the first issue to the last "
            "completion (requests issued before the deadline all complete and count)",
            "cpu_us_per_op": "time.process_time() delta / ops: CPU of the whole client "
            "process (all threads, the driver's reactor thread or acsylla's C++ I/O thread "
            "included; for the peers, their own process); the server JVM runs on the same "
            "machine and is not included",
            "loop_thread_cpu_us_per_op": "time.thread_time() of the event-loop thread / ops",
            "context_switches_per_op": "voluntary + involuntary context switches of all "
            "threads of the client process (/proc/self/task/*/status) / ops: how often "
            "threads block and wake (hand-offs between the loop and the I/O thread)",
            "server_cpu_us_per_op": "utime+stime of the Cassandra JVM (from /proc) / ops; "
            "only when this script started the node",
            "loop_lag": "a probe task sleeps 5 ms in a loop during the measured phase and "
            "records (actual sleep - 5 ms); p50/p99/max in ms. For the drivers, which have "
            "no loop, the same probe is a thread (time.sleep): how late any Python thread "
            "of the process wakes, from the GIL and OS scheduling, for comparison. "
            "Concurrency 0 (asyncio/trio family, full runs only): the probe alone on an "
            "otherwise idle loop, the noise floor of the machine's scheduling",
            "completions_per_wakeup": "ops / wake-ups of the loop by the library's portal "
            "(its own counter, async_cassandra._portal.Portal.wakeups); this library only",
            "mean_latency_ms": "Little's law: in flight / ops_per_s",
            "machine_busy_percent": "all cores, from /proc/stat, during the phase: the "
            "client + the server + anything else running (noise indicator); "
            "machine_steal_percent: time the hypervisor gave the vCPUs to others",
            "summary": "median over rounds of each figure independently; vs_driver is the "
            "median of the per-round ratios (the client's ops/s in round r / driver's "
            "ops/s in round r, listed in vs_driver_rounds), vs_driver_tuple likewise "
            "against driver/tuple (vs_driver_tuple_rounds); the clients of a round run "
            "one after the other, so a slowdown lasting the whole round weighs on both "
            "sides of its ratio (one shorter than a round does not cancel out)",
        },
        "peers": peers,
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
    for name, info in peers.items():
        if not info["available"]:
            shout(f"peer {name} not measured: {info['reason']}")
        for failure in info.get("failed_rounds", []):
            shout(f"peer {name} failed in round {failure['round'] + 1}: {failure['reason']}")
    if profile_text is not None:
        print(f"\ncProfile of the {args.profile} loop thread ({max(CONCURRENCY)} in flight):")
        print(profile_text)
    print(f"\nwrote {path} ({data['setup']['total_seconds']} s)")


if __name__ == "__main__":
    main()
