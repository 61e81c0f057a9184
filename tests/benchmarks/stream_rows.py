"""Streaming a million small rows: the driver's synchronous paging vs async-cassandra.

    python tests/benchmarks/stream_rows.py [--address 127.0.0.40] [--quick] [--rounds 3]

Starts its own Cassandra 5.0.8 node on ``--address`` (or uses the one named by
``ASYNC_CASSANDRA_CONTACT_POINTS``), loads 100 partitions x 10,000 rows of
``(pk int, ck int, v int)`` (loading is not measured), then reads the whole table once
per phase with the same per-row work (``total += row.ck + row.v``):

* ``driver``: ``for row in session.execute(SimpleStatement(q, fetch_size=N))``
  (the driver fetches each next page synchronously when the current one runs out);
* ``asyncio`` / ``trio``: ``async for row in await session.execute_stream(q,
  stream_config=StreamConfig(fetch_size=N, read_ahead=1))``;
* for N = 1000 (the default) and 5000; on asyncio also read_ahead 0 and 2, and
  ``stream.pages()``.

Every phase runs in a fresh child process (the same script with ``--child``), so each
starts from the same memory state, and its peak RSS is the kernel's own high-water
mark reset at the start of the phase. This machine's speed drifts by up to 2x within
minutes, so every phase runs once per round, ``--rounds`` times, and each library phase
is compared with the driver phase of its own round; medians are reported. Reported:
rows/s, client CPU µs per row, peak RSS growth, ``max_rows_held``. Results:
``bench-results/stream_rows.json``.
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
from typing import Any

import anyio
from _bench import (
    MachineCpu,
    Target,
    cassandra_node,
    common_args,
    fmt,
    jvm_cpu_seconds,
    median,
    metadata,
    print_table,
    proc_status_kib,
    reset_peak_rss,
    write_json,
)
from cassandra.cluster import Cluster, Session
from cassandra.concurrent import execute_concurrent
from cassandra.query import BatchStatement, BatchType, SimpleStatement

KEYSPACE = "acs_bench_stream"
TABLE = "wide"
QUERY = f"SELECT pk, ck, v FROM {KEYSPACE}.{TABLE}"
# The same query, one partition: every phase's warm-up, with the same client and config.
WARMUP_QUERY = f"SELECT pk, ck, v FROM {KEYSPACE}.{TABLE} WHERE pk = 0"
BATCH_ROWS = 1000  # rows per single-partition UNLOGGED batch while loading (~20 KB)
LOAD_CONCURRENCY = 8
RSS_SAMPLE_SECONDS = 0.010
TARGET_RSS_GROWTH_MB = 16.0
TARGET_SPEEDUP = 1.3


@dataclass(frozen=True)
class Phase:
    name: str
    client: str  # "driver" | "asyncio" | "trio"
    fetch_size: int
    read_ahead: int | None = None  # None for the driver (it has no read-ahead)
    pages: bool = False  # iterate stream.pages() instead of rows
    headline: bool = False


# One round runs every phase once, in this order; each library phase is compared with
# the driver phase of the same round and fetch size, run just before it.
PHASES = (
    Phase("driver sync paging", "driver", 1000, headline=True),
    Phase("asyncio stream", "asyncio", 1000, 1, headline=True),
    Phase("trio stream", "trio", 1000, 1, headline=True),
    Phase("asyncio stream", "asyncio", 1000, 0),
    Phase("asyncio stream", "asyncio", 1000, 2),
    Phase("driver sync paging", "driver", 5000, headline=True),
    Phase("asyncio stream", "asyncio", 5000, 1, headline=True),
    Phase("trio stream", "trio", 5000, 1, headline=True),
    Phase("asyncio stream", "asyncio", 5000, 0),
    Phase("asyncio stream.pages()", "asyncio", 5000, 1, pages=True),
)
DEFAULT_ROUNDS = 3


def value(pk: int, ck: int) -> int:
    return (pk * 7919 + ck * 104729) % 1_000_003


# ------------------------------------------------------------------- loading


def load(session: Session, partitions: int, rows_per_partition: int) -> tuple[int, float]:
    """Create and fill the table; return (expected checksum, seconds taken)."""
    began = time.perf_counter()
    session.execute(
        f"CREATE KEYSPACE IF NOT EXISTS {KEYSPACE} WITH replication = "
        "{'class': 'SimpleStrategy', 'replication_factor': 1}"
    )
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


class RssSampler:
    """VmRSS every 10 ms on a background thread; the maximum seen."""

    def __init__(self) -> None:
        self.max_kib = proc_status_kib("VmRSS") or 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(RSS_SAMPLE_SECONDS):
            rss = proc_status_kib("VmRSS")
            if rss is not None and rss > self.max_kib:
                self.max_kib = rss

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        rss = proc_status_kib("VmRSS")
        if rss is not None and rss > self.max_kib:
            self.max_kib = rss


class Connected:
    """The child's RSS once connected, before its warm-up (the peak is reset here, so
    the warm-up's own peak can be read later)."""

    def __init__(self) -> None:
        gc.collect()
        self.hwm_reset = reset_peak_rss()
        self.rss_kib = proc_status_kib("VmRSS") or 0


class Measure:
    """Wall, CPU, loop-thread CPU, server CPU and RSS over the measured stream."""

    def __init__(self, jvm_pids: list[int], connected: Connected) -> None:
        self._pids = jvm_pids
        self._connected = connected

    def __enter__(self) -> Measure:
        # The peak of the warm-up, before the reset below forgets it.
        self.warmup_hwm_kib = proc_status_kib("VmHWM") if self._connected.hwm_reset else None
        gc.collect()
        self.hwm_reset = reset_peak_rss()
        self.rss_start_kib = proc_status_kib("VmRSS") or 0
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

    def figures(self, rows: int, checksum: int) -> dict[str, Any]:
        mb = 1 / 1024
        peak = self.hwm_kib if self.hwm_kib is not None else self.sampled_max_kib
        return {
            "rows": rows,
            "checksum": checksum,
            "seconds": round(self.seconds, 3),
            "rows_per_s": round(rows / self.seconds, 1),
            "cpu_us_per_row": round(1e6 * self.cpu / rows, 3) if rows else None,
            "main_thread_cpu_us_per_row": round(1e6 * self.thread_cpu / rows, 3) if rows else None,
            "server_cpu_us_per_row": round(1e6 * self.server_cpu / rows, 3)
            if rows and self.server_cpu is not None
            else None,
            "machine_busy_percent": self.machine_busy,
            "machine_steal_percent": self.machine_steal,
            "rss_start_mb": round(self.rss_start_kib * mb, 2),
            "rss_growth_mb": round((peak - self.rss_start_kib) * mb, 2),
            "rss_growth_method": "VmHWM after reset" if self.hwm_kib is not None else "sampled",
            "rss_growth_sampled_mb": round((self.sampled_max_kib - self.rss_start_kib) * mb, 2),
            "rss_connected_mb": round(self._connected.rss_kib * mb, 2),
            "rss_growth_from_connected_mb": round(
                (max(peak, self.warmup_hwm_kib or 0) - self._connected.rss_kib) * mb, 2
            ),
        }


def child_driver(spec: dict[str, Any]) -> dict[str, Any]:
    cluster = Cluster(spec["contact_points"], port=spec["port"])
    try:
        session = cluster.connect()
        fetch_size = spec["phase"]["fetch_size"]
        connected = Connected()
        for row in session.execute(SimpleStatement(WARMUP_QUERY, fetch_size=fetch_size)):
            _ = row.ck + row.v
        rows = total = 0
        with Measure(spec["jvm_pids"], connected) as measure:
            for row in session.execute(SimpleStatement(QUERY, fetch_size=fetch_size)):
                total += row.ck + row.v
                rows += 1
        return {**measure.figures(rows, total), "max_rows_held": None, "pages": None}
    finally:
        cluster.shutdown()


async def child_library(spec: dict[str, Any]) -> dict[str, Any]:
    from async_cassandra import AsyncCluster
    from async_cassandra.streaming import StreamConfig

    phase = spec["phase"]
    config = StreamConfig(fetch_size=phase["fetch_size"], read_ahead=phase["read_ahead"])
    async with (
        AsyncCluster(spec["contact_points"], port=spec["port"]) as cluster,
        await cluster.connect() as session,
    ):
        connected = Connected()
        async with await session.execute_stream(WARMUP_QUERY, stream_config=config) as stream:
            async for row in stream:
                _ = row.ck + row.v
        rows = total = 0
        with Measure(spec["jvm_pids"], connected) as measure:
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
        return {
            **measure.figures(rows, total),
            "max_rows_held": stream.max_rows_held,
            "pages": stream.page_number,
        }


def run_child(spec: dict[str, Any]) -> None:
    phase = spec["phase"]
    if phase["client"] == "driver":
        figures = child_driver(spec)
    else:
        figures = anyio.run(child_library, spec, backend=phase["client"])
    print("RESULT " + json.dumps(figures), flush=True)


# ----------------------------------------------------------------- the parent


def run_phase(phase: Phase, target: Target) -> dict[str, Any]:
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
            f"phase {phase} failed (exit code {done.returncode}):\n{done.stdout}\n{done.stderr}"
        )
    if done.stderr.strip():
        print(f"    (stderr of the phase: {done.stderr.strip()[-500:]})")
    figures: dict[str, Any] = json.loads(lines[-1][len("RESULT ") :])
    return figures


def summarize(phase: Phase, phase_runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One phase over its rounds: medians of rates and costs, the worst of memory."""

    def median_of(key: str, digits: int = 3) -> float | None:
        value = median(run[key] for run in phase_runs)
        return round(value, digits) if value is not None else None

    def most(key: str) -> Any:
        values = [run[key] for run in phase_runs if run[key] is not None]
        return max(values) if values else None

    rates = [run["rows_per_s"] for run in phase_runs]
    return {
        **asdict(phase),
        "label": label(phase),
        "rounds": len(phase_runs),
        "rows_per_s": median_of("rows_per_s", 1),
        "rows_per_s_min": min(rates),
        "rows_per_s_max": max(rates),
        "vs_driver_same_fetch_size": median_of("vs_driver"),
        "vs_driver_each_round": [round(run["vs_driver"], 3) for run in phase_runs],
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
        "runs": phase_runs,
    }


def label(phase: Phase) -> str:
    if phase.read_ahead is None:
        return f"{phase.name} fetch={phase.fetch_size}"
    return f"{phase.name} fetch={phase.fetch_size} ra={phase.read_ahead}"


def main() -> None:
    parser = common_args("Stream 1,000,000 rows: driver sync paging vs async-cassandra.")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # internal: one phase, as JSON
    parser.add_argument(
        "--rounds",
        type=int,
        default=DEFAULT_ROUNDS,
        help=f"times every phase runs, interleaved (default {DEFAULT_ROUNDS}); medians "
        "are reported",
    )
    args = parser.parse_args()
    if args.child:
        run_child(json.loads(args.child))
        return
    partitions, per_partition = (20, 5_000) if args.quick else (100, 10_000)
    expected_rows = partitions * per_partition
    began = time.perf_counter()
    runs: dict[Phase, list[dict[str, Any]]] = {phase: [] for phase in PHASES}
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
            # One unmeasured full scan warms the server (JIT, caches) for every phase.
            warm_began = time.perf_counter()
            warm_rows = sum(1 for _ in session.execute(SimpleStatement(QUERY, fetch_size=5000)))
            if warm_rows != expected_rows:
                raise RuntimeError(f"the table holds {warm_rows} rows, not {expected_rows}")
            print(f"  server warm-up scan: {time.perf_counter() - warm_began:.1f} s", flush=True)
        finally:
            cluster.shutdown()
        meta = metadata(target, release, protocol)

        for round_number in range(1, args.rounds + 1):
            print(f"round {round_number} of {args.rounds}", flush=True)
            driver_rate: dict[int, float] = {}
            for phase in PHASES:
                figures = run_phase(phase, target)
                if figures["rows"] != expected_rows or figures["checksum"] != checksum:
                    raise RuntimeError(
                        f"{label(phase)} read {figures['rows']} rows (checksum "
                        f"{figures['checksum']}), expected {expected_rows} ({checksum})"
                    )
                if phase.client == "driver":
                    driver_rate[phase.fetch_size] = figures["rows_per_s"]
                ratio = figures["rows_per_s"] / driver_rate[phase.fetch_size]
                runs[phase].append({"round": round_number, **figures, "vs_driver": ratio})
                print(
                    f"  {label(phase):<42} {figures['rows_per_s']:>11,.0f} rows/s  "
                    f"{ratio:.2f}x  {figures['cpu_us_per_row']:.2f} µs CPU/row  "
                    f"RSS +{figures['rss_growth_mb']:.1f} MB  "
                    f"max held {fmt(figures['max_rows_held'])}",
                    flush=True,
                )

        if not target.started_here:
            cleanup = Cluster(target.contact_points, port=target.port)
            try:
                cleanup.connect().execute(f"DROP KEYSPACE IF EXISTS {KEYSPACE}")
            finally:
                cleanup.shutdown()

    results = [summarize(phase, phase_runs) for phase, phase_runs in runs.items()]
    targets = {}
    for result in results:
        if result["headline"] and result["client"] != "driver":
            targets[result["label"]] = {
                "rss_growth_mb_max": result["rss_growth_mb"],
                "rss_growth_under_16_mb": result["rss_growth_mb"] < TARGET_RSS_GROWTH_MB,
                "speedup_vs_driver_sync_median": result["vs_driver_same_fetch_size"],
                "speedup_at_least_1_3": result["vs_driver_same_fetch_size"] >= TARGET_SPEEDUP,
            }
    data: dict[str, Any] = {
        "benchmark": "stream_rows",
        "metadata": meta,
        "setup": {
            "table": f"{KEYSPACE}.{TABLE} (pk int, ck int, v int, PRIMARY KEY (pk, ck))",
            "partitions": partitions,
            "rows_per_partition": per_partition,
            "rows": expected_rows,
            "query": QUERY,
            "per_row_work": "total += row.ck + row.v; rows += 1 (identical in every phase)",
            "load": f"prepared INSERTs, {BATCH_ROWS} per single-partition UNLOGGED batch, "
            f"through the driver's execute_concurrent ({LOAD_CONCURRENCY} in flight); not "
            "measured",
            "load_seconds": round(load_seconds, 1),
            "warmup": f"one unmeasured full scan by the driver before the phases; each "
            f"phase first streams `{WARMUP_QUERY}` with its own client and config",
            "quick": args.quick,
            "total_seconds": round(time.perf_counter() - began, 1),
        },
        "method": {
            "isolation": "each phase runs in a fresh child process (this script with "
            "--child): same starting memory state for every phase, no allocator reuse "
            "from an earlier phase",
            "rows_per_s": "rows / wall time from the execute/execute_stream call to the "
            "last row consumed",
            "cpu_us_per_row": "time.process_time() delta / rows: the whole child process "
            "(all threads: the driver's reactor thread decodes the pages); the server "
            "JVM runs on the same machine and is not included",
            "main_thread_cpu_us_per_row": "time.thread_time() of the consuming thread (the "
            "event-loop thread for asyncio/trio)",
            "rss_growth_mb": "peak RSS during the phase minus RSS at its start. Peak: the "
            "kernel's VmHWM after resetting it at phase start (echo 5 > "
            "/proc/self/clear_refs), so no short spike between samples is missed; "
            "rss_growth_sampled_mb is the same from VmRSS sampled every 10 ms by a "
            "background thread, as a cross-check. gc.collect() before the start",
            "rss_growth_from_connected_mb": "peak RSS over the warm-up and the phase minus "
            "RSS right after connecting: also counts what the first stream of the process "
            "allocates for good (code paths, caches, allocator arenas kept for reuse)",
            "max_rows_held": "AsyncStreamingResultSet.max_rows_held (rows buffered by the "
            "stream at its fullest); the bound is fetch_size * (1 + read_ahead)",
            "vs_driver_same_fetch_size": "median over the rounds of rows_per_s / that of "
            "the driver sync paging phase with the same fetch_size in the same round (run "
            "minutes apart, the machine's speed drifts; each ratio compares runs seconds "
            "apart)",
            "rounds": f"{args.rounds} rounds, each running every phase once in the listed "
            "order; rates and CPU costs are medians over the rounds, memory figures and "
            "max_rows_held the largest of any round; each round's figures are under runs",
        },
        "targets": {
            "rss_growth_mb_below": TARGET_RSS_GROWTH_MB,
            "speedup_vs_driver_sync_at_least": TARGET_SPEEDUP,
            "headline_phases": "read_ahead=1 (the default) at fetch_size 1000 (the "
            "default) and 5000",
            **targets,
        },
        "results": results,
    }
    data["metadata"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    path = write_json(args.output_dir, "stream_rows.json", data)
    print()
    print_table(
        [
            "phase",
            "rows/s",
            "min-max",
            "vs driver",
            "CPU µs/row",
            "main thr µs/row",
            "server µs/row",
            "RSS +MB",
            "RSS +MB sampled",
            "RSS +MB from connect",
            "max held",
            "bound",
            "machine busy %",
            "steal %",
        ],
        [
            [
                r["label"],
                fmt(r["rows_per_s"], 0),
                f"{r['rows_per_s_min'] / 1000:.0f}k-{r['rows_per_s_max'] / 1000:.0f}k",
                fmt(r["vs_driver_same_fetch_size"], 2),
                fmt(r["cpu_us_per_row"], 2),
                fmt(r["main_thread_cpu_us_per_row"], 2),
                fmt(r["server_cpu_us_per_row"], 2),
                fmt(r["rss_growth_mb"], 1),
                fmt(r["rss_growth_sampled_mb"], 1),
                fmt(r["rss_growth_from_connected_mb"], 1),
                fmt(r["max_rows_held"]),
                fmt(r["rows_held_bound"]),
                fmt(r["machine_busy_percent"], 0),
                fmt(r["machine_steal_percent"], 0),
            ]
            for r in results
        ],
    )
    print()
    for name, verdict in targets.items():
        print(
            f"target {name}: RSS growth {verdict['rss_growth_mb_max']:.1f} MB "
            f"({'<' if verdict['rss_growth_under_16_mb'] else '>='} 16 MB), "
            f"{verdict['speedup_vs_driver_sync_median']:.2f}x the driver's sync paging "
            f"({'meets' if verdict['speedup_at_least_1_3'] else 'misses'} 1.3x)"
        )
    print(f"\nwrote {path} ({data['setup']['total_seconds']} s)")


if __name__ == "__main__":
    main()
