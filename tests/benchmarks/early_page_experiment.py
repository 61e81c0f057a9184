"""Would asking for page N+1 before the driver decodes page N make streams faster?

    python tests/benchmarks/early_page_experiment.py [--address 127.0.0.40] [--rounds 11]
        [--no-write-now] [--quick]

An experiment on the raw driver (tuple rows, no library), behind a README claim; not
part of ``nox -s bench``. Today a stream asks for the next page as soon as a page
arrives, after the driver has decoded it (``start_fetching_next_page`` from the page's
callback), and the server idles while the client decodes. Here the paging state is read
from the raw frame before the decoding (``process_msg`` of a connection subclass, for
requests that carry a hook on their message), and the next page's request is sent at
once from there, through a fresh ``ResponseFuture`` with that paging state, written to
the socket at once (``--no-write-now``: queued for the reactor, which writes it only
after the decoding, as the driver's own connection would).

Reads a 200,000-row table (``--quick``: 50,000) of three ints at fetch size 5000 both
ways, alternated in one process (``--rounds`` each, default 11), with the same per-row
work; reports rows/s per round, the medians and their ratio, and how many pages were
asked for early. Results: ``bench-results/early_page_experiment.json``. Measured for
the README: 1.00x in 11 rounds (0.84x without writing at once), so not done.
"""

from __future__ import annotations

import os
import statistics
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

from _bench import cassandra_node, common_args, create_keyspace_cql, metadata, write_json
from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile, Session
from cassandra.io.libevreactor import LibevConnection
from cassandra.policies import RoundRobinPolicy
from cassandra.query import BatchStatement, BatchType, SimpleStatement, tuple_factory

KEYSPACE = "acs_bench_early_page"
FETCH_SIZE = 5000
RESULT_OPCODE = 0x08
ROWS_KIND = 2
HAS_MORE_PAGES = 0x0002
COMPRESSED, TRACING, CUSTOM_PAYLOAD, WARNING = 0x01, 0x02, 0x04, 0x08
WRITE_NOW = True  # set from --no-write-now before connecting


def paging_state_of(flags: int, body: bytes) -> bytes | None:
    """The paging state of a ROWS result's raw body (protocol v4/v5 layout), or None."""
    if flags & COMPRESSED:
        return None  # v4 compression: decompressed only by the decoder
    pos = 16 if flags & TRACING else 0
    if flags & WARNING:
        (count,) = struct.unpack_from(">H", body, pos)
        pos += 2
        for _ in range(count):
            (length,) = struct.unpack_from(">H", body, pos)
            pos += 2 + length
    if flags & CUSTOM_PAYLOAD:
        (count,) = struct.unpack_from(">H", body, pos)
        pos += 2
        for _ in range(count):
            (length,) = struct.unpack_from(">H", body, pos)
            pos += 2 + length
            (length,) = struct.unpack_from(">i", body, pos)
            pos += 4 + max(length, 0)
    kind, result_flags, _columns = struct.unpack_from(">iii", body, pos)
    if kind != ROWS_KIND or not result_flags & HAS_MORE_PAGES:
        return None
    (length,) = struct.unpack_from(">i", body, pos + 12)
    return bytes(body[pos + 16 : pos + 16 + length])


class PeekingConnection(LibevConnection):  # type: ignore[misc]
    """The driver's libev connection, calling a request's ``early_page_hook`` with the
    paging state of its answer before the driver decodes it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._hooks: dict[int, Callable[[bytes], None]] = {}
        self._write_now = False
        super().__init__(*args, **kwargs)

    def send_msg(self, msg: Any, request_id: int, cb: Any, *args: Any, **kwargs: Any) -> Any:
        hook = getattr(msg, "early_page_hook", None)
        if hook is not None:
            self._hooks[request_id] = hook
        return super().send_msg(msg, request_id, cb, *args, **kwargs)

    def push(self, data: bytes) -> None:
        # The reactor thread, inside process_msg: written now, not after the decoding.
        if self._write_now:
            with self._deque_lock:
                idle = not self.deque
            if idle:
                try:
                    sent = self._socket.send(data)
                except OSError:
                    sent = 0
                if sent == len(data):
                    return
                data = data[sent:]
        super().push(data)

    def process_msg(self, header: Any, body: bytes) -> Any:
        hook = self._hooks.pop(header.stream, None) if header.stream >= 0 else None
        if hook is not None and header.opcode == RESULT_OPCODE:
            state = paging_state_of(header.flags, body)
            if state is not None:
                self._write_now = WRITE_NOW
                try:
                    hook(state)
                finally:
                    self._write_now = False
        return super().process_msg(header, body)


def load(session: Session, partitions: int) -> None:
    session.execute(create_keyspace_cql(KEYSPACE))
    session.execute(
        f"CREATE TABLE IF NOT EXISTS {KEYSPACE}.rows (pk int, ck int, v int, PRIMARY KEY (pk, ck))"
    )
    insert = session.prepare(f"INSERT INTO {KEYSPACE}.rows (pk, ck, v) VALUES (?, ?, ?)")
    pending = []
    for pk in range(partitions):
        for start in range(0, 10_000, 100):
            batch = BatchStatement(batch_type=BatchType.UNLOGGED)
            for ck in range(start, start + 100):
                batch.add(insert, (pk, ck, ck * 7))
            pending.append(session.execute_async(batch))
            if len(pending) >= 32:
                for future in pending:
                    future.result()
                pending = []
    for future in pending:
        future.result()


def after_decoding(session: Session, query: str) -> int:
    """Callback paging as a stream does it now: the next page from the page callback."""
    done = threading.Event()
    counted = {"rows": 0, "total": 0}
    future = session.execute_async(SimpleStatement(query, fetch_size=FETCH_SIZE))

    def on_page(rows: list[Any]) -> None:
        more = future.has_more_pages
        if more:
            future.start_fetching_next_page()
        total = 0
        for row in rows:
            total += row[1] + row[2]
        counted["total"] += total
        counted["rows"] += len(rows)
        if not more:
            done.set()

    future.add_callbacks(on_page, lambda error: done.set())
    done.wait()
    return counted["rows"]


def before_decoding(session: Session, query: str) -> tuple[int, int]:
    """The next page asked for from the raw frame; returns rows and pages asked early."""
    done = threading.Event()
    counted = {"rows": 0, "total": 0, "early": 0}
    statement = SimpleStatement(query, fetch_size=FETCH_SIZE)

    def send(paging_state: bytes | None) -> None:
        # The driver's execute_async, split so the hook is on the message before it goes.
        future = session._create_response_future(
            statement, None, False, None, None, EXEC_PROFILE_DEFAULT, paging_state=paging_state
        )
        future._protocol_handler = session.client_protocol_handler
        asked = [False]

        def early(state: bytes) -> None:
            asked[0] = True
            counted["early"] += 1
            send(state)

        def on_page(rows: list[Any]) -> None:
            total = 0
            for row in rows:
                total += row[1] + row[2]
            counted["total"] += total
            counted["rows"] += len(rows)
            if not asked[0]:
                if future.has_more_pages:  # the hook did not see it: ask as usual
                    asked[0] = True
                    send(future._paging_state)
                else:
                    done.set()

        future.message.early_page_hook = early
        future.send_request()
        future.add_callbacks(on_page, lambda error: done.set())

    send(None)
    done.wait()
    return counted["rows"], counted["early"]


def main() -> None:
    global WRITE_NOW
    parser = common_args(__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--no-write-now", action="store_true")
    args = parser.parse_args()
    WRITE_NOW = not args.no_write_now
    partitions = 5 if args.quick else 20
    expected = partitions * 10_000
    with cassandra_node(args.address) as target:
        profile = ExecutionProfile(
            row_factory=tuple_factory, request_timeout=60, load_balancing_policy=RoundRobinPolicy()
        )
        cluster = Cluster(
            target.contact_points,
            port=target.port,
            connection_class=PeekingConnection,
            execution_profiles={EXEC_PROFILE_DEFAULT: profile},
        )
        try:
            session = cluster.connect()
            load(session, partitions)
            query = f"SELECT pk, ck, v FROM {KEYSPACE}.rows"
            for _ in range(2):  # warm the server
                after_decoding(session, query)
            rates: dict[str, list[float]] = {"after decoding": [], "before decoding": []}
            early_pages = 0
            for index in range(args.rounds):
                order = list(rates) if index % 2 == 0 else list(reversed(rates))
                for way in order:
                    started = time.perf_counter()
                    if way == "after decoding":
                        rows = after_decoding(session, query)
                    else:
                        rows, early_pages = before_decoding(session, query)
                    rate = rows / (time.perf_counter() - started)
                    assert rows == expected, (way, rows)
                    rates[way].append(round(rate))
                    print(f"round {index + 1} {way:16s} {rate:12,.0f} rows/s", flush=True)
            medians = {way: statistics.median(values) for way, values in rates.items()}
            ratio = medians["before decoding"] / medians["after decoding"]
            print(f"medians {medians}; before/after {ratio:.2f}; early pages {early_pages}")
            data = {
                "benchmark": "early_page_experiment",
                "metadata": metadata(target, None, cluster.protocol_version),
                "setup": {
                    "rows": expected,
                    "fetch_size": FETCH_SIZE,
                    "rounds": args.rounds,
                    "write_now": WRITE_NOW,
                },
                "rows_per_s": rates,
                "medians": medians,
                "before_over_after": round(ratio, 3),
                "pages_asked_early_last_round": early_pages,
            }
            print(f"wrote {write_json(args.output_dir, 'early_page_experiment.json', data)}")
        finally:
            cluster.shutdown()


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
