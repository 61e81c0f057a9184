"""Streaming a 200,000-row table: the raw driver's callback paging vs async-cassandra
and its peers, side by side in one run.

    python tests/benchmarks/stream_rows.py [--address 127.0.0.40] [--quick] [--rounds N]
        [--v001-python PATH] [--acsylla-python PATH]

Starts its own Cassandra 5.0.8 node on ``--address`` (or uses the one named by
``ASYNC_CASSANDRA_CONTACT_POINTS``), loads 20 partitions x 10,000 rows of ``(pk int,
ck int, v int)`` (``--quick``: 10 x 10,000; loading is not measured), scans it
unmeasured for 6 s (``--quick``: 1 s) to warm the server, then reads the
whole table once per phase at fetch size 5000, with the same per-row work
(``total += row.ck + row.v; rows += 1``) in every phase:

* ``driver`` (the baseline): the raw driver's callback paging, default (named tuple)
  rows: ``future = session.execute_async(SimpleStatement(q, fetch_size=N))``,
  ``future.add_callbacks(on_page, on_error)`` once; ``on_page`` (on the driver's
  reactor thread) processes the page's rows, then calls
  ``future.start_fetching_next_page()`` while ``future.has_more_pages``, else sets a
  ``threading.Event`` the main thread waits on;
* ``driver/tuple``: the same with an execution profile whose row factory is
  ``cassandra.query.tuple_factory`` (per-row work by index: ``row[1] + row[2]``);
* ``driver/sync``: ``for row in session.execute(SimpleStatement(q, fetch_size=N))``
  (the driver fetches each next page synchronously when the current one runs out);
* ``asyncio`` / ``trio``: this library, ``async with await session.execute_stream(q,
  stream_config=StreamConfig(fetch_size=N)) as stream: async for row in stream`` (the
  default ``read_ahead=1``); without ``--quick`` also ``read_ahead`` 0 and 2 and
  ``stream.pages()`` on asyncio;
* ``asyncio+loopio`` / ``trio+loopio``: the same with the opt-in
  ``connection_class=EventLoopConnection`` (the driver's I/O on the event loop's thread);
* ``v001`` (async-cassandra 0.0.1) and ``acsylla`` (1.2.0, on the C++ driver), each in
  its own virtualenv (``--v001-python``, ``--acsylla-python``; by default the ones
  ``nox -s bench`` makes in ``.nox/bench-peers/``), run by ``_peer_stream_rows.py``
  (which says how each pages). A peer without an interpreter, or whose interpreter
  fails, is reported as not measured, with the reason.

Every phase runs in a fresh process (this script with ``--child``, or the peer's
runner), so each starts from the same memory state, and its peak RSS is the kernel's
own high-water mark reset at the start of the phase. During the measured stream a probe
sleeps 5 ms in a loop and records how late it wakes: a task on the event loop
(asyncio, trio, the peers), a thread for the driver phases (which have no loop). This
machine's speed drifts by up to 2x within minutes, so every phase runs once per round,
``--rounds`` times (default 7, 1 with ``--quick``), in an order rotated each round, and
each phase's rate is divided by the ``driver`` (and ``driver/tuple``) rate of its own
round; the median of these per-round ratios is reported. A phase lasts well under a
second, so rounds are cheap; with 3 the baseline's own spread within one run (0.43M to
0.85M rows/s) could move the median ratio by 0.2. Reported: rows/s, the ratios,
client CPU µs per row, peak RSS growth, ``max_rows_held`` (this library), loop lag
p50/p99/max. Results: ``bench-results/stream_rows.json``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
from _bench import (
    MachineCpu,
    RssSampler,
    Target,
    ThreadProbe,
    cassandra_node,
    common_args,
    create_keyspace_cql,
    fmt,
    jvm_cpu_seconds,
    lag_probe,
    lag_summary,
    median,
    metadata,
    print_table,
    proc_status_kib,
    reset_peak_rss,
    write_json,
)
from _peers import PEERS, add_peer_options, peer_python
from cassandra.cluster import Cluster, ExecutionProfile, Session
from cassandra.concurrent import execute_concurrent
from cassandra.query import BatchStatement, BatchType, SimpleStatement, tuple_factory

KEYSPACE = "acs_bench_stream"
TABLE = "wide"
QUERY = f"SELECT pk, ck, v FROM {KEYSPACE}.{TABLE}"
# The same query, one partition: every phase's warm-up, with the same client and config.
WARMUP_QUERY = f"SELECT pk, ck, v FROM {KEYSPACE}.{TABLE} WHERE pk = 0"
FETCH_SIZE = 5000
FULL_SHAPE = (20, 10_000)  # partitions, rows per partition: 200,000 rows
QUICK_SHAPE = (10, 10_000)  # 100,000 rows: 20 pages
BATCH_ROWS = 1000  # rows per single-partition UNLOGGED batch while loading (~20 KB)
LOAD_CONCURRENCY = 8
# Seconds of unmeasured full scans before the first phase (point_reads.py's too).
SERVER_WARMUP_S = 6.0
QUICK_SERVER_WARMUP_S = 1.0
PEER_RUNNER = Path(__file__).with_name("_peer_stream_rows.py")
PEER_TIMEOUT_SECONDS = 300
TUPLE_PROFILE = "tuples"

# The targets for this library's default stream (read_ahead 1).
TARGET_SPEEDUP = 1.5
TARGET_LAG_P99_MS = 5.0
TARGET_RSS_GROWTH_MB = 16.0


@dataclass(frozen=True)
class Phase:
    client: str  # the name reported
    kind: str  # "callback" | "sync" | "library" | "peer"
    fetch_size: int = FETCH_SIZE
    read_ahead: int | None = None  # this library's only
    pages: bool = False  # iterate stream.pages() instead of rows
    tuple_rows: bool = False  # the driver with tuple_factory rows
    loop_io: bool = False  # this library with connection_class=EventLoopConnection
    full_only: bool = False  # not with --quick


# One round runs every phase once (in an order rotated each round); each phase is
# compared with the `driver` and `driver/tuple` phases of the same round.
PHASES = (
    Phase("driver", "callback"),
    Phase("driver/tuple", "callback", tuple_rows=True),
    Phase("driver/sync", "sync"),
    Phase("asyncio", "library", read_ahead=1),
    Phase("trio", "library", read_ahead=1),
    Phase("asyncio+loopio", "library", read_ahead=1, loop_io=True),
    Phase("trio+loopio", "library", read_ahead=1, loop_io=True),
    Phase("v001", "peer"),
    Phase("acsylla", "peer"),
    Phase("asyncio ra=0", "library", read_ahead=0, full_only=True),
    Phase("asyncio ra=2", "library", read_ahead=2, full_only=True),
    Phase("asyncio pages()", "library", read_ahead=1, pages=True, full_only=True),
)
BASELINE = "driver"
BASELINE_TUPLE = "driver/tuple"
HEADLINE = ("asyncio", "trio")


def value(pk: int, ck: int) -> int:
    return (pk * 7919 + ck * 104729) % 1_000_003


# ------------------------------------------------------------------- loading


def load(session: Session, partitions: int, rows_per_partition: int) -> tuple[int, float]:
    """Create and fill the table; return (expected checksum, seconds taken)."""
    began = time.perf_counter()
    session.execute(create_keyspace_cql(KEYSPACE))
    session.execute(f"DROP TABLE IF EXISTS {KEYSPACE}.{TABLE}")
    session.execute(
        f"CREATE TABLE {KEYSPACE}.{TABLE} (pk int, ck int, v int, PRIMARY KEY (pk, ck))"
    )
    insert = session.prepare(f"INSERT INTO {KEYSPACE}.{TABLE} (pk, ck, v) VALUES (?, ?, ?)")

    def batches() -> Iterator[tuple[BatchStatement, None]]:
        # Prepared inserts, BATCH_ROWS at a time into one partition (an UNLOGGED batch
        # to one partition is one mutation on the server): several times faster than
        # one request per row, and loading is not what is measured. 1000 rows of three
        # ints stay well under the default batch_size_fail_threshold (50 KiB); the
        # server logs that they pass the warn threshold (5 KiB), which is harmless.
        for pk in range(partitions):
            for start in range(0, rows_per_partition, BATCH_ROWS):
                batch = BatchStatement(batch_type=BatchType.UNLOGGED)
                for ck in range(start, min(start + BATCH_ROWS, rows_per_partition)):
                    batch.add(insert, (pk, ck, value(pk, ck)))
                yield batch, None

    for ok, outcome in execute_concurrent(
        session, batches(), concurrency=LOAD_CONCURRENCY, results_generator=True
    ):
        if not ok:
            raise outcome
    checksum = sum(
        ck + value(pk, ck) for pk in range(partitions) for ck in range(rows_per_partition)
    )
    return checksum, time.perf_counter() - began


# ------------------------------------------------------------- one phase (child)


class Connected:
    """The child's RSS once connected, before its warm-up (the peak is reset here, so
    the warm-up's own peak can be read later)."""

    def __init__(self) -> None:
        gc.collect()
        self.hwm_reset = reset_peak_rss()
        self.rss_kib = proc_status_kib("VmRSS") or 0


class Measure:
    """Wall, CPU, loop-thread CPU, server CPU and RSS over the measured stream; the raw
    readings (:func:`figures` turns them into the reported ones, for the peers' too).

    Made before the lag probe starts, entered after: making it collects garbage and
    resets the peak RSS, pauses of the benchmark's own that a running probe would
    record as the client's lag (they were its first sample: 7-42 ms on asyncio).
    """

    def __init__(self, jvm_pids: list[int], connected: Connected) -> None:
        self._pids = jvm_pids
        self._connected = connected
        # The peak of the warm-up, before the reset below forgets it.
        self.warmup_hwm_kib = proc_status_kib("VmHWM") if connected.hwm_reset else None
        gc.collect()
        self.hwm_reset = reset_peak_rss()
        self.rss_start_kib = proc_status_kib("VmRSS") or 0

    def __enter__(self) -> Measure:
        self._sampler = RssSampler().__enter__()
        self._machine = MachineCpu()
        self._server = jvm_cpu_seconds(self._pids)
        self._thread = time.thread_time()
        self._cpu = time.process_time()
        self._wall = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self._wall
        self.cpu = time.process_time() - self._cpu
        self.thread_cpu = time.thread_time() - self._thread
        server = jvm_cpu_seconds(self._pids)
        self.server_cpu = (
            server - self._server if server is not None and self._server is not None else None
        )
        self.machine_busy = self._machine.busy_percent()
        self.machine_steal = self._machine.steal_percent()
        self._sampler.__exit__()
        self.hwm_kib = proc_status_kib("VmHWM") if self.hwm_reset else None
        self.sampled_max_kib = self._sampler.max_kib

    def raw(self) -> dict[str, Any]:
        return {
            "seconds": self.seconds,
            "cpu": self.cpu,
            "thread_cpu": self.thread_cpu,
            "server_cpu": self.server_cpu,
            "machine_busy": self.machine_busy,
            "machine_steal": self.machine_steal,
            "rss_start_kib": self.rss_start_kib,
            "hwm_kib": self.hwm_kib,
            "sampled_max_kib": self.sampled_max_kib,
            "warmup_hwm_kib": self.warmup_hwm_kib,
            "connected_kib": self._connected.rss_kib,
        }


def callback_stream(session: Session, query: str, phase: dict[str, Any]) -> tuple[int, int, int]:
    """The raw driver's callback paging: (rows, checksum, pages)."""
    done = threading.Event()
    rows = total = pages = 0
    failure: BaseException | None = None
    profile = TUPLE_PROFILE if phase["tuple_rows"] else None
    statement = SimpleStatement(query, fetch_size=phase["fetch_size"])
    future = (
        session.execute_async(statement, execution_profile=profile)
        if profile
        else session.execute_async(statement)
    )

    # The callbacks stay registered across pages: on_page runs for every page, on the
    # reactor thread (or inline here if the first page is already there).
    def on_page(page: Any) -> None:
        nonlocal rows, total, pages, failure
        try:
            pages += 1
            if profile:
                for row in page:
                    total += row[1] + row[2]
                    rows += 1
            else:
                for row in page:
                    total += row.ck + row.v
                    rows += 1
            if future.has_more_pages:
                future.start_fetching_next_page()
                return
        except BaseException as error:
            failure = error
        done.set()

    def on_error(error: BaseException) -> None:
        nonlocal failure
        failure = error
        done.set()

    future.add_callbacks(on_page, on_error)
    if not done.wait(600):
        raise RuntimeError(f"callback paging: no end after 600 s ({rows} rows)")
    if failure is not None:
        raise failure
    return rows, total, pages


def sync_stream(session: Session, query: str, phase: dict[str, Any]) -> tuple[int, int, int]:
    """The driver's synchronous paging: (rows, checksum, pages)."""
    rows = total = 0
    result = session.execute(SimpleStatement(query, fetch_size=phase["fetch_size"]))
    for row in result:
        total += row.ck + row.v
        rows += 1
    return rows, total, (rows + phase["fetch_size"] - 1) // phase["fetch_size"]


def child_driver(spec: dict[str, Any]) -> dict[str, Any]:
    phase = spec["phase"]
    profiles = (
        {TUPLE_PROFILE: ExecutionProfile(row_factory=tuple_factory)} if phase["tuple_rows"] else {}
    )
    cluster = Cluster(spec["contact_points"], port=spec["port"], execution_profiles=profiles)
    stream = callback_stream if phase["kind"] == "callback" else sync_stream
    try:
        session = cluster.connect()
        connected = Connected()
        stream(session, WARMUP_QUERY, phase)
        measure = Measure(spec["jvm_pids"], connected)
        with ThreadProbe() as probe, measure:
            rows, total, pages = stream(session, QUERY, phase)
        return {
            **measure.raw(),
            "rows": rows,
            "checksum": total,
            "pages": pages,
            "max_rows_held": None,
            "lags": probe.lags,
        }
    finally:
        cluster.shutdown()


async def child_library(spec: dict[str, Any]) -> dict[str, Any]:
    from async_cassandra import AsyncCluster
    from async_cassandra.connection import EventLoopConnection
    from async_cassandra.streaming import StreamConfig

    phase = spec["phase"]
    config = StreamConfig(fetch_size=phase["fetch_size"], read_ahead=phase["read_ahead"])
    lags: list[float] = []
    options = {"connection_class": EventLoopConnection} if phase["loop_io"] else {}

    async with (
        AsyncCluster(spec["contact_points"], port=spec["port"], **options) as cluster,
        await cluster.connect() as session,
    ):
        connected = Connected()
        async with await session.execute_stream(WARMUP_QUERY, stream_config=config) as stream:
            async for row in stream:
                _ = row.ck + row.v
        rows = total = 0
        measure = Measure(spec["jvm_pids"], connected)
        async with anyio.create_task_group() as probing:
            probing.start_soon(lag_probe, lags)
            await anyio.lowlevel.checkpoint()  # the probe runs before the clock starts
            with measure:
                async with await session.execute_stream(QUERY, stream_config=config) as stream:
                    if phase["pages"]:
                        async for page in stream.pages():
                            for row in page:
                                total += row.ck + row.v
                                rows += 1
                    else:
                        async for row in stream:
                            total += row.ck + row.v
                            rows += 1
            probing.cancel_scope.cancel()
        return {
            **measure.raw(),
            "rows": rows,
            "checksum": total,
            "pages": stream.page_number,
            "max_rows_held": stream.max_rows_held,
            "lags": lags,
        }


def run_child(spec: dict[str, Any]) -> None:
    phase = spec["phase"]
    if phase["kind"] == "library":
        raw = anyio.run(child_library, spec, backend=phase["client"].split()[0].partition("+")[0])
    else:
        raw = child_driver(spec)
    print("RESULT " + json.dumps(raw), flush=True)


# ----------------------------------------------------------------- the parent


class PeerFailed(Exception):
    """A peer's phase did not complete (its process failed or timed out)."""


def figures(raw: dict[str, Any]) -> dict[str, Any]:
    """The reported figures of one phase from its raw readings (ours or a peer's)."""
    mb = 1 / 1024
    rows = raw["rows"]
    seconds = raw["seconds"]
    start = raw["rss_start_kib"]
    peak = raw["hwm_kib"] if raw["hwm_kib"] is not None else raw["sampled_max_kib"]
    lag = lag_summary(raw["lags"])

    def per_row(total: float | None) -> float | None:
        return round(1e6 * total / rows, 3) if rows and total is not None else None

    return {
        "rows": rows,
        "checksum": raw["checksum"],
        "pages": raw["pages"],
        "seconds": round(seconds, 3),
        "rows_per_s": round(rows / seconds, 1),
        "cpu_us_per_row": per_row(raw["cpu"]),
        "main_thread_cpu_us_per_row": per_row(raw["thread_cpu"]),
        "server_cpu_us_per_row": per_row(raw["server_cpu"]),
        "machine_busy_percent": raw["machine_busy"],
        "machine_steal_percent": raw["machine_steal"],
        "rss_start_mb": round(start * mb, 2),
        "rss_growth_mb": round((peak - start) * mb, 2),
        "rss_growth_method": "VmHWM after reset" if raw["hwm_kib"] is not None else "sampled",
        "rss_growth_sampled_mb": round((raw["sampled_max_kib"] - start) * mb, 2),
        "rss_connected_mb": round(raw["connected_kib"] * mb, 2),
        "rss_growth_from_connected_mb": round(
            (max(peak, raw["warmup_hwm_kib"] or 0) - raw["connected_kib"]) * mb, 2
        ),
        "max_rows_held": raw.get("max_rows_held"),
        "lag_p50_ms": lag["p50"],
        "lag_p99_ms": lag["p99"],
        "lag_max_ms": lag["max"],
        "lag_samples": lag["samples"],
    }


def run_own_phase(phase: Phase, target: Target) -> dict[str, Any]:
    spec = {
        "contact_points": target.contact_points,
        "port": target.port,
        "jvm_pids": target.jvm_pids,
        "phase": asdict(phase),
    }
    done = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(
            f"phase {phase.client} failed (exit code {done.returncode}):\n{done.stdout}\n"
            f"{done.stderr}"
        )
    if done.stderr.strip():
        print(f"    (stderr of the phase: {done.stderr.strip()[-500:]})")
    raw: dict[str, Any] = json.loads(lines[-1][len("RESULT ") :])
    return raw


def peer_command(python: str, client: str, *args: str) -> list[str]:
    return [python, "-I", str(PEER_RUNNER), "--client", client, *args]


def check_peer(client: str, python: str | None) -> dict[str, Any]:
    """Whether a peer's interpreter can run its runner: its versions, or the reason not."""
    option = f"--{client}-python"
    if not python:
        return {"available": False, "reason": f"{option} not given"}
    try:
        done = subprocess.run(
            peer_command(python, client, "--check"),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as error:
        return {"available": False, "reason": f"{option} {python}: {error!r}"}
    events = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not events or events[-1].get("event") != "check":
        tail = (done.stderr.strip() or done.stdout.strip())[-500:]
        return {
            "available": False,
            "reason": f"{option} {python}: exit code {done.returncode}: {tail}",
        }
    info = {key: val for key, val in events[-1].items() if key != "event"}
    return {"available": True, **info}


def run_peer_phase(phase: Phase, python: str, target: Target) -> dict[str, Any]:
    """One measured stream by a peer, in its own venv; server and machine CPU read here
    around it (the runner waits for a line on stdin before the measured stream)."""
    command = peer_command(
        python,
        phase.client,
        "--host",
        target.contact_points[0],
        "--port",
        str(target.port),
        "--query",
        QUERY,
        "--warmup-query",
        WARMUP_QUERY,
        "--fetch-size",
        str(phase.fetch_size),
    )
    process = subprocess.Popen(
        command,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    watchdog = threading.Timer(PEER_TIMEOUT_SECONDS, process.kill)
    watchdog.start()
    stderr: list[str] = []
    drain = threading.Thread(target=lambda: stderr.extend(process.stderr or ()), daemon=True)
    drain.start()
    assert process.stdin is not None
    assert process.stdout is not None

    def next_event() -> dict[str, Any]:
        for line in process.stdout or ():
            if line.startswith("{"):
                event: dict[str, Any] = json.loads(line)
                if event.get("event") == "error":
                    raise PeerFailed(f"{event.get('error')}\n{event.get('traceback', '')}")
                return event
        process.wait()
        drain.join(5)
        raise PeerFailed(
            f"exit code {process.returncode} before the result: {''.join(stderr)[-1500:]}"
        )

    try:
        ready = next_event()
        if ready.get("event") != "ready":
            raise PeerFailed(f"unexpected {ready}")
        machine = MachineCpu()
        server0 = jvm_cpu_seconds(target.jvm_pids)
        process.stdin.write("go\n")
        process.stdin.flush()
        result = next_event()
        server1 = jvm_cpu_seconds(target.jvm_pids)
        if result.get("event") != "result":
            raise PeerFailed(f"unexpected {result}")
        result["server_cpu"] = (
            server1 - server0 if server0 is not None and server1 is not None else None
        )
        result["machine_busy"] = machine.busy_percent()
        result["machine_steal"] = machine.steal_percent()
        result["max_rows_held"] = None
        result["protocol_version"] = ready.get("protocol_version")
        process.stdin.close()
        process.wait(60)
        return result
    except subprocess.TimeoutExpired as error:
        raise PeerFailed(f"{phase.client}: no exit after its result: {error}") from error
    finally:
        watchdog.cancel()
        if process.poll() is None:
            process.kill()
            process.wait()


def summarize(phase: Phase, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One phase over its rounds: medians of rates, costs, lags and per-round ratios;
    the worst of memory and of the lag maxima."""

    def median_of(key: str, digits: int = 3) -> float | None:
        value = median(run[key] for run in runs)
        return round(value, digits) if value is not None else None

    def most(key: str) -> Any:
        values = [run[key] for run in runs if run[key] is not None]
        return max(values) if values else None

    def ratios(key: str) -> list[float | None]:
        return [round(run[key], 3) if run[key] is not None else None for run in runs]

    rates = [run["rows_per_s"] for run in runs]
    return {
        "client": phase.client,
        **asdict(phase),
        "rounds": len(runs),
        "rows_per_s": median_of("rows_per_s", 1),
        "rows_per_s_min": min(rates),
        "rows_per_s_max": max(rates),
        "vs_driver": median_of("vs_driver"),
        "vs_driver_rounds": ratios("vs_driver"),
        "vs_driver_tuple": median_of("vs_driver_tuple"),
        "vs_driver_tuple_rounds": ratios("vs_driver_tuple"),
        "cpu_us_per_row": median_of("cpu_us_per_row"),
        "main_thread_cpu_us_per_row": median_of("main_thread_cpu_us_per_row"),
        "server_cpu_us_per_row": median_of("server_cpu_us_per_row"),
        "machine_busy_percent": median_of("machine_busy_percent", 1),
        "machine_steal_percent": median_of("machine_steal_percent", 1),
        "rss_growth_mb": most("rss_growth_mb"),
        "rss_growth_sampled_mb": most("rss_growth_sampled_mb"),
        "rss_growth_from_connected_mb": most("rss_growth_from_connected_mb"),
        "max_rows_held": most("max_rows_held"),
        "rows_held_bound": (
            phase.fetch_size * (1 + phase.read_ahead) if phase.read_ahead is not None else None
        ),
        "lag_p50_ms": median_of("lag_p50_ms"),
        "lag_p99_ms": median_of("lag_p99_ms"),
        "lag_max_ms": most("lag_max_ms"),
        "lag_probe": "event-loop task"
        if phase.kind in ("library", "peer")
        else "thread (no event loop)",
        "runs": runs,
    }


def report(client: str, run: dict[str, Any]) -> None:
    print(
        f"  {client:<16} {run['rows_per_s']:>11,.0f} rows/s  "
        f"{run['cpu_us_per_row']:.2f} µs CPU/row  RSS +{run['rss_growth_mb']:.1f} MB  "
        f"max held {fmt(run['max_rows_held'])}  lag p99 {fmt(run['lag_p99_ms'], 2)} ms "
        f"max {fmt(run['lag_max_ms'], 1)} ms",
        flush=True,
    )


def main() -> None:
    parser = common_args(
        "Stream a 200,000-row table at fetch size 5000: the raw driver's callback paging "
        "vs async-cassandra (asyncio, trio) vs async-cassandra 0.0.1 and acsylla."
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)  # internal: one phase, as JSON
    parser.add_argument(
        "--rounds",
        type=int,
        help="times every phase runs, interleaved, in an order rotated each round "
        "(default 7, 1 with --quick); medians are reported",
    )
    add_peer_options(parser)
    args = parser.parse_args()
    if args.child:
        run_child(json.loads(args.child))
        return
    if args.rounds is None:
        args.rounds = 1 if args.quick else 7
    partitions, per_partition = QUICK_SHAPE if args.quick else FULL_SHAPE
    server_warmup_s = QUICK_SERVER_WARMUP_S if args.quick else SERVER_WARMUP_S
    expected_rows = partitions * per_partition
    began = time.perf_counter()

    pythons = {name: peer_python(args, name) for name in PEERS}
    peers = {
        name: check_peer(name, python) if python else {"available": False, "reason": reason}
        for name, (python, reason) in pythons.items()
        if any(p.client == name for p in PHASES)
    }
    for name, status in peers.items():
        if status["available"]:
            print(f"peer {name}: {status.get('package')} {status.get('version')}", flush=True)
        else:
            print(f"!!! peer {name} NOT MEASURED: {status['reason']}", flush=True)
    phases = [
        phase
        for phase in PHASES
        if not (phase.full_only and args.quick)
        and (phase.kind != "peer" or peers[phase.client]["available"])
    ]
    runs: dict[str, list[dict[str, Any]]] = {phase.client: [] for phase in phases}

    with cassandra_node(args.address) as target:
        cluster = Cluster(target.contact_points, port=target.port)
        try:
            session = cluster.connect()
            release = session.execute("SELECT release_version FROM system.local").one()[0]
            protocol = cluster.protocol_version
            print(
                f"server Cassandra {release}, protocol v{protocol}; loading {partitions} "
                f"partitions x {per_partition:,} rows ...",
                flush=True,
            )
            checksum, load_seconds = load(session, partitions, per_partition)
            print(f"  loaded {expected_rows:,} rows in {load_seconds:.1f} s", flush=True)
            # Unmeasured full scans warm the server (JIT, caches) for every phase, for as
            # long as point_reads.py warms it: after one scan the node still ran the
            # next phases' streams at about a third of its warm speed.
            warm_began = time.perf_counter()
            warm_scans = 0
            while warm_scans == 0 or time.perf_counter() - warm_began < server_warmup_s:
                warm_rows = sum(
                    1 for _ in session.execute(SimpleStatement(QUERY, fetch_size=FETCH_SIZE))
                )
                if warm_rows != expected_rows:
                    raise RuntimeError(f"the table holds {warm_rows} rows, not {expected_rows}")
                warm_scans += 1
            print(
                f"  server warm-up: {warm_scans} scans in {time.perf_counter() - warm_began:.1f} s",
                flush=True,
            )
        finally:
            cluster.shutdown()
        meta = metadata(target, release, protocol)

        for round_index in range(args.rounds):
            shift = round_index % len(phases)
            order = phases[shift:] + phases[:shift]
            print(f"round {round_index + 1} of {args.rounds}", flush=True)
            this_round: dict[str, dict[str, Any]] = {}
            for phase in order:
                if phase.kind == "peer" and not peers[phase.client]["available"]:
                    continue
                try:
                    if phase.kind == "peer":
                        raw = run_peer_phase(phase, pythons[phase.client][0], target)
                    else:
                        raw = run_own_phase(phase, target)
                    if raw["rows"] != expected_rows or raw["checksum"] != checksum:
                        raise PeerFailed(
                            f"{phase.client} read {raw['rows']} rows (checksum "
                            f"{raw['checksum']}), expected {expected_rows} ({checksum})"
                        )
                except PeerFailed as error:
                    if phase.kind != "peer":
                        raise RuntimeError(str(error)) from error
                    reason = f"failed in round {round_index + 1}: {error}"
                    print(f"!!! peer {phase.client} NOT MEASURED: {reason}", flush=True)
                    peers[phase.client] = {
                        **peers[phase.client],
                        "available": False,
                        "reason": reason,
                        "runs_before_failure": runs.pop(phase.client, []),
                    }
                    continue
                if phase.kind == "peer":
                    peers[phase.client]["protocol_version"] = raw.get("protocol_version")
                this_round[phase.client] = {"round": round_index + 1, **figures(raw)}
                report(phase.client, this_round[phase.client])
            base = this_round[BASELINE]["rows_per_s"]
            base_tuple = this_round[BASELINE_TUPLE]["rows_per_s"]
            for client, run in this_round.items():
                run["vs_driver"] = round(run["rows_per_s"] / base, 4)
                run["vs_driver_tuple"] = round(run["rows_per_s"] / base_tuple, 4)
                if client in runs:
                    runs[client].append(run)
            print(
                "  vs driver (this round): "
                + ", ".join(
                    f"{phase.client} {this_round[phase.client]['vs_driver']:.2f}x"
                    for phase in phases
                    if phase.client in this_round and phase.client in runs
                ),
                flush=True,
            )

        if not target.started_here:
            cleanup = Cluster(target.contact_points, port=target.port)
            try:
                cleanup.connect().execute(f"DROP KEYSPACE IF EXISTS {KEYSPACE}")
            finally:
                cleanup.shutdown()

    summary = [summarize(phase, runs[phase.client]) for phase in phases if runs.get(phase.client)]
    targets: dict[str, Any] = {}
    for row in summary:
        if row["client"] in HEADLINE:
            targets[row["client"]] = {
                "vs_driver": row["vs_driver"],
                "speedup_at_least_1_5": row["vs_driver"] >= TARGET_SPEEDUP,
                "lag_p99_ms": row["lag_p99_ms"],
                "lag_p99_under_5_ms": row["lag_p99_ms"] is not None
                and row["lag_p99_ms"] < TARGET_LAG_P99_MS,
                "max_rows_held": row["max_rows_held"],
                "rows_held_within_bound": row["max_rows_held"] is not None
                and row["max_rows_held"] <= row["rows_held_bound"],
                "rss_growth_mb_max": row["rss_growth_mb"],
                "rss_growth_under_16_mb": row["rss_growth_mb"] < TARGET_RSS_GROWTH_MB,
            }
    data: dict[str, Any] = {
        "benchmark": "stream_rows",
        "metadata": meta,
        "setup": {
            "table": f"{KEYSPACE}.{TABLE} (pk int, ck int, v int, PRIMARY KEY (pk, ck))",
            "partitions": partitions,
            "rows_per_partition": per_partition,
            "rows": expected_rows,
            "fetch_size": FETCH_SIZE,
            "query": QUERY,
            "per_row_work": "total += row.ck + row.v; rows += 1 (identical in every phase; "
            "driver/tuple: row[1] + row[2])",
            "load": f"prepared INSERTs, {BATCH_ROWS} per single-partition UNLOGGED batch, "
            f"through the driver's execute_concurrent ({LOAD_CONCURRENCY} in flight); not "
            "measured",
            "load_seconds": round(load_seconds, 1),
            "warmup": f"unmeasured full scans by the driver for {server_warmup_s:g} s "
            f"({warm_scans} scans) before the phases; each phase first streams "
            f"`{WARMUP_QUERY}` with its own client and config",
            "phases": [phase.client for phase in phases],
            "rounds": args.rounds,
            "quick": args.quick,
            "total_seconds": round(time.perf_counter() - began, 1),
        },
        "peers": peers,
        "method": {
            "driver": "the baseline: the raw driver's callback paging with its default "
            "(named tuple) rows: session.execute_async(SimpleStatement(q, fetch_size=N)), "
            "future.add_callbacks(on_page, on_error) once (they stay registered across "
            "pages); on_page, on the driver's reactor thread, processes the page's rows "
            "then calls future.start_fetching_next_page() while future.has_more_pages, "
            "else sets a threading.Event the main thread waits on. No read-ahead: the "
            "next page is asked for once the current one is processed",
            "driver/tuple": "the same with an ExecutionProfile(row_factory=tuple_factory); "
            "per-row work by index",
            "driver/sync": "for row in session.execute(SimpleStatement(q, fetch_size=N)): "
            "the driver fetches each next page synchronously when the current one runs out",
            "asyncio/trio": "this library under anyio.run(backend=...): async with await "
            "session.execute_stream(q, stream_config=StreamConfig(fetch_size=N, "
            "read_ahead=R)) as stream: async for row in stream (R=1, the default, unless "
            "the name says otherwise; 'pages()' iterates stream.pages())",
            "v001/acsylla": "peers, each in its own virtualenv, run by "
            "tests/benchmarks/_peer_stream_rows.py on plain asyncio (its docstring says "
            "how each pages); server and machine CPU are read by this script around the "
            "peer's measured stream. peers[name].available false: not measured, with "
            "the reason",
            "isolation": "each phase runs in a fresh process (this script with --child, "
            "or the peer's runner): same starting memory state for every phase, no "
            "allocator reuse from an earlier phase",
            "rows_per_s": "rows / wall time from the execute/execute_stream call to the "
            "last row consumed",
            "vs_driver": "median over the rounds of (rows_per_s / rows_per_s of the "
            "driver phase of the same round); vs_driver_rounds lists each round's ratio. "
            "vs_driver_tuple likewise against driver/tuple. The machine's speed drifts "
            "over minutes; each ratio compares runs seconds apart",
            "cpu_us_per_row": "time.process_time() delta / rows: the whole client process "
            "(all threads: the driver's reactor thread decodes the pages); the server "
            "JVM is not included",
            "main_thread_cpu_us_per_row": "time.thread_time() of the consuming thread (the "
            "event-loop thread for asyncio/trio and the peers; for driver the main "
            "thread only waits, the rows are processed on the reactor thread)",
            "server_cpu_us_per_row": "utime+stime of the Cassandra JVM / rows; only when "
            "this script started the node",
            "lag": "a probe sleeps 5 ms in a loop during the measured stream and records "
            "(actual sleep - 5 ms); p50/p99/max in ms. asyncio/trio/peers: a task on the "
            "event loop (how long the loop is kept from other tasks); driver phases, "
            "which have no loop: a thread (time.sleep), how late any Python thread of "
            "the process wakes (GIL, OS scheduling). Per-round percentiles; the summary "
            "has their medians and the largest max",
            "rss_growth_mb": "peak RSS during the stream minus RSS at its start. Peak: the "
            "kernel's VmHWM after resetting it at the start (echo 5 > "
            "/proc/self/clear_refs), so no short spike between samples is missed; "
            "rss_growth_sampled_mb is the same from VmRSS sampled every 10 ms by a "
            "background thread, as a cross-check. gc.collect() before the start. The "
            "largest of the rounds",
            "rss_growth_from_connected_mb": "peak RSS over the warm-up and the stream "
            "minus RSS right after connecting: also counts what the first stream of the "
            "process allocates for good (code paths, caches, allocator arenas kept)",
            "max_rows_held": "this library's AsyncStreamingResultSet.max_rows_held (rows "
            "buffered by the stream at its fullest); the bound is fetch_size * (1 + "
            "read_ahead)",
            "rounds": f"{args.rounds} rounds, each running every phase once, the order "
            "rotated by one each round; rates, CPU costs, lag percentiles and ratios are "
            "medians over the rounds, memory figures, max_rows_held and lag max the "
            "largest of any round; each round's figures are under summary[].runs",
        },
        "targets": {
            "speedup_vs_driver_at_least": TARGET_SPEEDUP,
            "lag_p99_ms_below": TARGET_LAG_P99_MS,
            "rss_growth_mb_below": TARGET_RSS_GROWTH_MB,
            "rows_held": "max_rows_held <= fetch_size * (1 + read_ahead)",
            "headline_phases": "asyncio and trio, read_ahead=1 (the default), fetch_size "
            f"{FETCH_SIZE}",
            **targets,
        },
        "summary": summary,
    }
    data["metadata"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    path = write_json(args.output_dir, "stream_rows.json", data)
    print()
    print_table(
        [
            "client",
            "rows/s",
            "min-max",
            "vs driver",
            "per round",
            "vs drv/tuple",
            "CPU µs/row",
            "main thr µs/row",
            "server µs/row",
            "RSS +MB",
            "RSS +MB from connect",
            "max held",
            "bound",
            "lag p50 ms",
            "lag p99 ms",
            "lag max ms",
            "busy %",
            "steal %",
        ],
        [
            [
                r["client"],
                fmt(r["rows_per_s"], 0),
                f"{r['rows_per_s_min'] / 1000:.0f}k-{r['rows_per_s_max'] / 1000:.0f}k",
                fmt(r["vs_driver"], 2),
                "/".join(fmt(x, 2) for x in r["vs_driver_rounds"]),
                fmt(r["vs_driver_tuple"], 2),
                fmt(r["cpu_us_per_row"], 2),
                fmt(r["main_thread_cpu_us_per_row"], 2),
                fmt(r["server_cpu_us_per_row"], 2),
                fmt(r["rss_growth_mb"], 1),
                fmt(r["rss_growth_from_connected_mb"], 1),
                fmt(r["max_rows_held"]),
                fmt(r["rows_held_bound"]),
                fmt(r["lag_p50_ms"], 2),
                fmt(r["lag_p99_ms"], 2),
                fmt(r["lag_max_ms"], 1),
                fmt(r["machine_busy_percent"], 0),
                fmt(r["machine_steal_percent"], 0),
            ]
            for r in summary
        ],
    )
    print()
    for name, status in peers.items():
        if not status["available"]:
            print(f"!!! peer {name} NOT MEASURED: {status['reason']}")
    if args.quick and targets:
        print("(--quick: one short round against a cold server; the verdicts below mean nothing)")
    for name, verdict in targets.items():
        print(
            f"target {name}: {verdict['vs_driver']:.2f}x the driver's callback paging "
            f"({'meets' if verdict['speedup_at_least_1_5'] else 'misses'} 1.5x), lag p99 "
            f"{fmt(verdict['lag_p99_ms'], 2)} ms "
            f"({'meets' if verdict['lag_p99_under_5_ms'] else 'misses'} < 5 ms), max rows "
            f"held {fmt(verdict['max_rows_held'])} "
            f"({'within' if verdict['rows_held_within_bound'] else 'OVER'} the bound), RSS "
            f"growth {verdict['rss_growth_mb_max']:.1f} MB "
            f"({'<' if verdict['rss_growth_under_16_mb'] else '>='} 16 MB)"
        )
    print(f"\nwrote {path} ({data['setup']['total_seconds']} s)")


if __name__ == "__main__":
    main()
