"""The streaming read of ``stream_rows.py`` for a peer library, in that library's venv.

    <venv>/bin/python -I _peer_stream_rows.py --client v001|acsylla --host H --port P
        --query Q --warmup-query W --fetch-size N

Peers that cannot share a process with this project (async-cassandra 0.0.1 has our import
name; acsylla has its own venv) run here, one process per measured phase, driven by
``stream_rows.py``. Self-contained on purpose: the standard library and the peer's
client library only (``-I`` keeps the repository off ``sys.path``), no ``_bench``, no
``async_cassandra`` of this repository.

Protocol, one JSON object per line on stdout: ``{"event": "ready", ...}`` (the versions)
once connected and warmed up (the warm-up query streamed once with the same client and
page size); then, on a line on stdin (so the parent can bracket the measured stream with
its own readings of the server's and the machine's CPU), the measured stream of
``--query`` and ``{"event": "result", ...}``: rows, checksum, pages, seconds (wall, from
the first request to the last row consumed), cpu (``time.process_time``: every thread of
this process), thread_cpu (``time.thread_time`` of the loop thread), the RSS readings
``stream_rows.Measure`` takes (VmHWM reset at the start, VmRSS sampled every 10 ms), lags
(the probe's lateness per 5 ms sleep, in seconds). Then ``{"event": "closed"}``. On an
error: ``{"event": "error", "error": ...}`` and exit code 1. ``--check`` only imports
the library and prints its versions.

Per-row work as in every phase of ``stream_rows.py``: ``total += row.ck + row.v; rows +=
1``, plus an asyncio probe task sleeping 5 ms in a loop (event-loop lag). The clients:

* ``v001``: ``async with await session.execute_stream(q,
  stream_config=StreamConfig(fetch_size=N)) as result: async for row in result`` (its
  documented use; 0.0.1 fetches each next page when the current one runs out);
* ``acsylla``: ``acsylla.create_statement(q, page_size=N)``, then ``result = await
  session.execute(statement)``, ``for row in result``, and while
  ``result.has_more_pages()``: ``statement.set_page_state(result.page_state())`` and
  execute again (its documented paging loop; the next page is requested once the current
  one is consumed, like the raw driver's callback paging). Protocol v4.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import platform
import sys
import threading
import time
import traceback
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

LAG_PROBE_SECONDS = 0.005
RSS_SAMPLE_SECONDS = 0.010
# What each client's package is called on PyPI (for its version).
PACKAGES = {"v001": "async-cassandra", "acsylla": "acsylla"}


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def _version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def versions(client: str) -> dict[str, Any]:
    if client == "v001":
        import cassandra
        import cassandra.cluster

        import async_cassandra

        module = async_cassandra.__file__
        extra = {
            "cassandra_driver": cassandra.__version__,
            "driver_compiled": not cassandra.cluster.__file__.endswith(".py"),
            "driver_reactor": cassandra.cluster.Cluster.connection_class.__name__,
        }
    else:
        import acsylla

        module = acsylla.__file__
        extra = {}
    return {
        "client": client,
        "package": PACKAGES[client],
        "version": _version(PACKAGES[client]),
        "module": module,
        "python": platform.python_version(),
        "executable": sys.executable,
        **extra,
    }


# ------------------------------------------------------------ /proc (as _bench)


def proc_status_kib(name: str) -> int | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(name + ":"):
                return int(line.split()[1])
    return None


def reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        return False
    return True


class RssSampler:
    """VmRSS every 10 ms on a background thread (as ``stream_rows.RssSampler``)."""

    def __init__(self) -> None:
        self.max_kib = proc_status_kib("VmRSS") or 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(RSS_SAMPLE_SECONDS):
            rss = proc_status_kib("VmRSS")
            if rss is not None and rss > self.max_kib:
                self.max_kib = rss

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        rss = proc_status_kib("VmRSS")
        if rss is not None and rss > self.max_kib:
            self.max_kib = rss
        return self.max_kib


# --------------------------------------------------------------------- streaming


class Client:
    """One peer's connect / stream / close."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.cluster: Any = None
        self.session: Any = None

    async def connect(self) -> int:
        args = self.args
        if args.client == "v001":
            from async_cassandra import AsyncCluster

            self.cluster = AsyncCluster(contact_points=[args.host], port=args.port)
            self.session = await self.cluster.connect()
            return int(self.cluster._cluster.protocol_version)
        import acsylla

        self.cluster = acsylla.create_cluster([args.host], port=args.port, protocol_version=4)
        self.session = await self.cluster.create_session()
        return 4

    async def stream(self, query: str) -> tuple[int, int, int]:
        """Every row of ``query``: (rows, checksum, pages)."""
        rows = total = pages = 0
        if self.args.client == "v001":
            from async_cassandra.streaming import StreamConfig

            config = StreamConfig(fetch_size=self.args.fetch_size)
            async with await self.session.execute_stream(query, stream_config=config) as result:
                async for row in result:
                    total += row.ck + row.v
                    rows += 1
                pages = result.page_number
            return rows, total, pages
        import acsylla

        statement = acsylla.create_statement(query, page_size=self.args.fetch_size)
        while True:
            result = await self.session.execute(statement)
            pages += 1
            for row in result:
                total += row.ck + row.v
                rows += 1
            if not result.has_more_pages():
                return rows, total, pages
            statement.set_page_state(result.page_state())

    async def close(self) -> None:
        if self.args.client == "v001":
            # 0.0.1's session.close() and cluster.shutdown() each sleep 5 s after the
            # driver's shutdown; call the driver's shutdowns they wrap instead (after the
            # measurement: only the run's length changes).
            loop = asyncio.get_running_loop()
            try:
                await loop.run_in_executor(None, self.session._session.shutdown)
                await loop.run_in_executor(None, self.cluster._cluster.shutdown)
            except AttributeError:
                await self.session.close()
                await self.cluster.shutdown()
        else:
            await self.session.close()


async def measured_stream(client: Client, query: str) -> dict[str, Any]:
    """``stream_rows.Measure`` around the stream, plus the lag probe."""
    lags: list[float] = []

    async def probe() -> None:
        while True:
            began = time.perf_counter()
            await asyncio.sleep(LAG_PROBE_SECONDS)
            lags.append(time.perf_counter() - began - LAG_PROBE_SECONDS)

    prober = asyncio.create_task(probe())
    await asyncio.sleep(0)  # the probe is running before the clock starts
    gc.collect()
    hwm_reset = reset_peak_rss()
    rss_start_kib = proc_status_kib("VmRSS") or 0
    sampler = RssSampler()
    sampler.start()
    thread0 = time.thread_time()
    cpu0 = time.process_time()
    wall0 = time.perf_counter()
    rows, checksum, pages = await client.stream(query)
    seconds = time.perf_counter() - wall0
    cpu = time.process_time() - cpu0
    thread_cpu = time.thread_time() - thread0
    sampled_max_kib = sampler.stop()
    hwm_kib = proc_status_kib("VmHWM") if hwm_reset else None
    prober.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await prober
    return {
        "rows": rows,
        "checksum": checksum,
        "pages": pages,
        "seconds": seconds,
        "cpu": cpu,
        "thread_cpu": thread_cpu,
        "rss_start_kib": rss_start_kib,
        "hwm_kib": hwm_kib,
        "sampled_max_kib": sampled_max_kib,
        "lags": lags,
    }


async def run(args: argparse.Namespace) -> None:
    client = Client(args)
    protocol = await client.connect()
    try:
        gc.collect()
        connected_reset = reset_peak_rss()
        connected_kib = proc_status_kib("VmRSS") or 0
        await client.stream(args.warmup_query)
        # The warm-up's peak, read before the measured stream resets it.
        warmup_hwm_kib = proc_status_kib("VmHWM") if connected_reset else None
        emit("ready", protocol_version=protocol, **versions(args.client))
        if not sys.stdin.readline():  # the parent went away
            return
        figures = await measured_stream(client, args.query)
        figures["warmup_hwm_kib"] = warmup_hwm_kib
        figures["connected_kib"] = connected_kib
        emit("result", **figures)
    finally:
        await client.close()
    emit("closed")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--client", choices=sorted(PACKAGES), required=True)
    parser.add_argument("--check", action="store_true", help="print the versions and exit")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9042)
    parser.add_argument("--query", default="SELECT pk, ck, v FROM acs_bench_stream.wide")
    parser.add_argument(
        "--warmup-query", default="SELECT pk, ck, v FROM acs_bench_stream.wide WHERE pk = 0"
    )
    parser.add_argument("--fetch-size", type=int, default=5000)
    args = parser.parse_args()
    if args.check:
        emit("check", **versions(args.client))
        return
    try:
        asyncio.run(run(args))
    except Exception as error:
        emit("error", error=repr(error), traceback=traceback.format_exc()[-2000:])
        sys.exit(1)


if __name__ == "__main__":
    main()
