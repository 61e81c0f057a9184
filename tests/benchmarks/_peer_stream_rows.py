"""The streaming read of ``stream_rows.py`` for a peer library, in that library's venv.

    <venv>/bin/python -I _peer_stream_rows.py --client v001|acsylla --host H --port P
        --query Q --warmup-query W --fetch-size N

Peers that cannot share a process with this project (async-cassandra 0.0.1 has our import
name; acsylla has its own venv) run here, one process per measured phase, driven by
``stream_rows.py``. The standard library, the peer's client library and two siblings
only: ``_peer_common`` (what the peer runners share) and ``_bench``'s /proc readers and
``RssSampler`` (standard library only at module level). ``-I`` keeps the repository root
off ``sys.path`` (its ``async_cassandra`` would shadow 0.0.1's); this script puts its own
folder there, which holds none: never the ``async_cassandra`` of this repository.

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
import gc
import sys
import time
import traceback
from pathlib import Path
from typing import Any

# ``python -I`` leaves the script's folder off sys.path: put this folder (and only it)
# first, for the siblings below. It holds no ``async_cassandra``, unlike the repository
# root, which stays off (its package would shadow 0.0.1's).
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _bench import RssSampler, proc_status_kib, reset_peak_rss
from _peer_common import LagProbe, argument_parser, close, connect, emit, parse_args, versions


class Client:
    """One peer's connect / stream / close."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.cluster: Any = None
        self.session: Any = None

    async def connect(self) -> int:
        self.cluster, self.session, protocol = await connect(
            self.args.client, self.args.host, self.args.port
        )
        return protocol

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
        await close(self.args.client, self.cluster, self.session)


async def measured_stream(client: Client, query: str) -> dict[str, Any]:
    """``stream_rows.Measure`` around the stream, plus the lag probe."""
    # Before the probe starts, as stream_rows.Measure does: the probe would record these
    # pauses of the benchmark's own as the client's lag.
    gc.collect()
    hwm_reset = reset_peak_rss()
    rss_start_kib = proc_status_kib("VmRSS") or 0
    async with LagProbe() as probe:  # running before the clock starts
        with RssSampler() as sampler:
            thread0 = time.thread_time()
            cpu0 = time.process_time()
            wall0 = time.perf_counter()
            rows, checksum, pages = await client.stream(query)
            seconds = time.perf_counter() - wall0
            cpu = time.process_time() - cpu0
            thread_cpu = time.thread_time() - thread0
        hwm_kib = proc_status_kib("VmHWM") if hwm_reset else None
    return {
        "rows": rows,
        "checksum": checksum,
        "pages": pages,
        "seconds": seconds,
        "cpu": cpu,
        "thread_cpu": thread_cpu,
        "rss_start_kib": rss_start_kib,
        "hwm_kib": hwm_kib,
        "sampled_max_kib": sampler.max_kib,
        "lags": probe.lags,
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
    parser = argument_parser(__doc__.split("\n", 1)[0])
    parser.add_argument("--query", default="SELECT pk, ck, v FROM acs_bench_stream.wide")
    parser.add_argument(
        "--warmup-query", default="SELECT pk, ck, v FROM acs_bench_stream.wide WHERE pk = 0"
    )
    parser.add_argument("--fetch-size", type=int, default=5000)
    args = parse_args(parser)
    try:
        asyncio.run(run(args))
    except Exception as error:
        emit("error", error=repr(error), traceback=traceback.format_exc()[-2000:])
        sys.exit(1)


if __name__ == "__main__":
    main()
