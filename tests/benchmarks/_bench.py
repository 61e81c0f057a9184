"""What the benchmark scripts share: the node, run metadata, /proc readers, tables.

Not a test module and not part of the package: the scripts next to it import it as a
sibling (``python tests/benchmarks/<script>.py`` puts this folder on ``sys.path``; the peer
runners ``_peer_*.py``, run with ``python -I`` in the peers' venvs, put it there
themselves). So the standard library only at module level: ``async_cassandra`` and
``cassandra`` are imported inside the functions that need them.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import json
import os
import platform
import statistics
import subprocess
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
RESULTS_DIR = REPO / "bench-results"
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
RSS_SAMPLE_SECONDS = 0.010


@dataclass
class Target:
    """The Cassandra the benchmark talks to."""

    contact_points: list[str]
    port: int
    started_here: bool
    # The JVMs' pids when this script started them (their CPU time is then reported).
    jvm_pids: list[int] = field(default_factory=list)


def common_args(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--address",
        default="127.0.0.1",
        help="loopback address of the node this script starts (default 127.0.0.1); "
        "ignored when ASYNC_CASSANDRA_CONTACT_POINTS names a running node",
    )
    parser.add_argument(
        "--quick", action="store_true", help="small sizes and short phases (development)"
    )
    parser.add_argument(
        "--output-dir",
        type=Path,
        default=RESULTS_DIR,
        help=f"where the JSON goes (default {RESULTS_DIR})",
    )
    return parser


@contextlib.contextmanager
def cassandra_node(address: str) -> Iterator[Target]:
    """The node named by ``ASYNC_CASSANDRA_CONTACT_POINTS`` (and ``ASYNC_CASSANDRA_PORT``),
    or else a fresh local Cassandra 5.0.8 node on ``address``, stopped at the end."""
    existing = os.environ.get("ASYNC_CASSANDRA_CONTACT_POINTS")
    if existing:
        points = [point.strip() for point in existing.split(",") if point.strip()]
        port = int(os.environ.get("ASYNC_CASSANDRA_PORT") or "9042")
        print(f"using the running node(s) {', '.join(points)}:{port}", flush=True)
        yield Target(points, port, started_here=False)
        return
    from async_cassandra.testing import LocalCassandra

    print(f"starting a local Cassandra node on {address} ...", flush=True)
    with LocalCassandra(address=address) as node:
        print(f"  ready in {node.start_seconds:.1f} s", flush=True)
        yield Target(node.contact_points, node.native_port, True, node.pids)
    print("node stopped, data deleted", flush=True)


def _package_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def _cpu_model() -> str | None:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return None


def _git(*args: str) -> str | None:
    """What ``git args...`` prints in the repository, or None if it cannot say."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        done = subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, check=False, timeout=10
        )
        if done.returncode == 0:
            return done.stdout
    return None


def _git_commit() -> str | None:
    out = _git("rev-parse", "HEAD")
    return out.strip() if out is not None else None


def _library_state() -> dict[str, Any]:
    """Which library code was measured: uncommitted edits of ``async_cassandra/`` (the
    package is installed editable) and a digest of its sources."""
    digest = hashlib.sha256()
    for path in sorted((REPO / "async_cassandra").rglob("*.py")):
        digest.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes())
    status = _git("status", "--porcelain", "--", "async_cassandra")
    dirty = [line[3:] for line in status.splitlines()] if status is not None else None
    return {"uncommitted_changes": dirty, "sources_sha256": digest.hexdigest()[:16]}


def metadata(target: Target, server_version: str | None, protocol: int | None) -> dict[str, Any]:
    """Who ran what where: the header of every results file."""
    import cassandra
    import cassandra.cluster

    return {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "cassandra_driver": cassandra.__version__,
        # The driver's Cython extensions (compiled cluster/protocol/row parsing) change
        # its speed a lot; a pure-Python install would be several times slower.
        "driver_compiled": not cassandra.cluster.__file__.endswith(".py"),
        "driver_reactor": cassandra.cluster.Cluster.connection_class.__name__,
        "async_cassandra": _package_version("async-cassandra"),
        "anyio": _package_version("anyio"),
        "trio": _package_version("trio"),
        "git_commit": _git_commit(),
        "library_working_tree": _library_state(),
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "cpu_model": _cpu_model(),
        "platform": platform.platform(),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "server": {
            "release_version": server_version,
            "protocol_version": protocol,
            "contact_points": target.contact_points,
            "port": target.port,
            "started_by_this_script": target.started_here,
            "same_machine": target.started_here,
        },
    }


def create_keyspace_cql(name: str) -> str:
    """The CQL that makes a benchmark's keyspace, if missing: one replica, on the one
    node the benchmarks use."""
    return (
        f"CREATE KEYSPACE IF NOT EXISTS {name} WITH replication = "
        "{'class': 'SimpleStrategy', 'replication_factor': 1}"
    )


# ------------------------------------------------------------------- /proc readers


def jvm_cpu_seconds(pids: Sequence[int]) -> float | None:
    """User + system CPU seconds of the server JVMs (None if we did not start them)."""
    if not pids:
        return None
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return total / _CLOCK_TICKS


class MachineCpu:
    """How busy all cores were between two points, and how much time the hypervisor
    took away (steal), to judge how noisy a phase was."""

    def __init__(self) -> None:
        self._start = self._read()

    @staticmethod
    def _read() -> list[int]:
        try:
            return [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        except (OSError, ValueError):
            return []

    def _delta(self) -> tuple[list[int], int]:
        now = self._read()
        delta = [b - a for a, b in zip(self._start, now, strict=False)]
        return delta, sum(delta)

    def busy_percent(self) -> float | None:
        """Share of all cores' time not idle (user, system, irq, steal, ...)."""
        delta, total = self._delta()
        if total <= 0 or len(delta) < 5:
            return None
        idle = delta[3] + delta[4]  # idle + iowait
        return round(100.0 * (total - idle) / total, 1)

    def steal_percent(self) -> float | None:
        """Share of all cores' time the hypervisor ran something else."""
        delta, total = self._delta()
        if total <= 0 or len(delta) < 8:
            return None
        return round(100.0 * delta[7] / total, 1)


def proc_status_kib(name: str) -> int | None:
    """A ``VmRSS``/``VmHWM``-style line of ``/proc/self/status``, in KiB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(name + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _each_thread(name: str) -> Iterator[str]:
    """The text of ``/proc/self/task/<tid>/<name>`` for every thread of this process now
    (threads that already ended are gone, and one that ends while read is skipped)."""
    with contextlib.suppress(OSError):
        for task in Path("/proc/self/task").iterdir():
            with contextlib.suppress(OSError):
                yield (task / name).read_text()


def context_switches() -> int:
    """Voluntary + involuntary context switches of every thread of this process so far
    (threads that already ended are not counted)."""
    return sum(
        int(line.split()[1])
        for status in _each_thread("status")
        for line in status.splitlines()
        if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches"))
    )


def scheduler_seconds() -> tuple[float, float]:
    """(running, waiting in the run queue) so far, in seconds, summed over every thread
    of this process, from the kernel's ``/proc/self/task/*/schedstat`` (threads that
    already ended are not counted). Waiting means runnable but not given a core:
    divided by a wall time, how many cores' worth the process wanted and did not get."""
    running = waiting = 0
    for schedstat in _each_thread("schedstat"):
        with contextlib.suppress(ValueError):
            run_ns, wait_ns, _ = (int(x) for x in schedstat.split())
            running += run_ns
            waiting += wait_ns
    return running / 1e9, waiting / 1e9


def reset_peak_rss() -> bool:
    """Reset this process's VmHWM to its current RSS (Linux >= 4.0:
    ``echo 5 > /proc/self/clear_refs``). False if the kernel refused."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        return False
    return True


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


# ------------------------------------------------------------------- lag probes

LAG_PROBE_SECONDS = 0.005  # how long the probes sleep, each time


async def lag_probe(
    lags: list[float], sleep: Callable[[float], Awaitable[Any]] | None = None
) -> None:
    """The event-loop lag probe, run as a task until cancelled: sleep
    :data:`LAG_PROBE_SECONDS` in a loop and append to ``lags`` how late each wake-up
    was, in seconds. ``sleep``: ``anyio.sleep`` unless given (the peers' runners pass
    ``asyncio.sleep``: their venvs have no anyio)."""
    if sleep is None:
        import anyio  # here: this module stays standard-library-only at import

        sleep = anyio.sleep
    while True:
        began = time.perf_counter()
        await sleep(LAG_PROBE_SECONDS)
        lags.append(time.perf_counter() - began - LAG_PROBE_SECONDS)


async def read_points_until(session: Any, select: Any, keys: int, stop: float) -> int:
    """One worker of a point-read phase: ``select`` (a prepared statement of one
    parameter) for keys 0, 1, 2, ... modulo ``keys``, reading each row, until
    ``time.perf_counter()`` passes ``stop``; returns how many it made."""
    made = 0
    while time.perf_counter() < stop:
        (await session.execute(select, [made % keys])).one()
        made += 1
    return made


class ThreadProbe:
    """The lag probe of the raw driver's phases, which have no event loop: a thread
    sleeping :data:`LAG_PROBE_SECONDS` in a loop, recording in ``lags`` how late it
    wakes (GIL, OS scheduling), from ``with`` to its end."""

    def __init__(self) -> None:
        self.lags: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lag-probe", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            began = time.perf_counter()
            time.sleep(LAG_PROBE_SECONDS)
            self.lags.append(time.perf_counter() - began - LAG_PROBE_SECONDS)

    def __enter__(self) -> ThreadProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def lag_summary(lags: Sequence[float]) -> dict[str, float | int | None]:
    """A probe's lags (seconds) as p50, p99 (nearest rank) and max in ms, and the count."""
    as_ms = sorted(lag * 1000 for lag in lags)

    def ms(value: float | None) -> float | None:
        return None if value is None else round(value, 3)

    return {
        "p50": ms(percentile(as_ms, 0.50)),
        "p99": ms(percentile(as_ms, 0.99)),
        "max": ms(as_ms[-1] if as_ms else None),
        "samples": len(as_ms),
    }


# ------------------------------------------------------------------------ output


def median(values: Iterable[float | None]) -> float | None:
    """The median of the values given (None ones left out); None if there are none."""
    present = [value for value in values if value is not None]
    return statistics.median(present) if present else None


def percentile(sorted_values: Sequence[float], fraction: float) -> float | None:
    """Nearest-rank percentile of an already sorted sequence."""
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, max(0, round(fraction * len(sorted_values)) - 1))
    return sorted_values[index]


def fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    # Text columns left, figures right.
    left = [
        all(not c[:1].isdigit() and c != "-" for c in (r[i] for r in rows))
        for i in range(len(headers))
    ]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            cell.ljust(width) if is_left else cell.rjust(width)
            for cell, width, is_left in zip(cells, widths, left, strict=True)
        )

    print(line(headers))
    print("  ".join("-" * width for width in widths))
    for row in rows:
        print(line(row))


def write_json(directory: Path, name: str, data: dict[str, Any]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)
    return path
