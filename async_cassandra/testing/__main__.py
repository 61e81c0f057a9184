"""``python -m async_cassandra.testing start|stop|status``: a local Cassandra for demos.

``start`` returns once the node accepts CQL connections and leaves it running in the
background; ``stop`` stops it and deletes its data; ``status`` says whether it runs.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from ._detached import detached_status, start_detached, stop_detached
from ._maven import CASSANDRA_VERSION, LauncherError

_PROG = "python -m async_cassandra.testing"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=_PROG,
        description=f"Run Apache Cassandra {CASSANDRA_VERSION} locally on a loopback address.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    default_address = os.environ.get("ASYNC_CASSANDRA_ADDRESS", "127.0.0.1")
    # A string default goes through `type=int` too, so a bad $ASYNC_CASSANDRA_PORT is
    # reported as a usage error rather than a traceback.
    default_port = os.environ.get("ASYNC_CASSANDRA_PORT") or "9042"
    for name, text in (
        ("start", "start nodes in the background and wait until they accept connections"),
        ("stop", "stop nodes started with `start` and delete their data"),
        ("status", "say whether nodes started with `start` are running"),
    ):
        command = commands.add_parser(name, help=text, description=text)
        command.add_argument(
            "--address",
            default=default_address,
            help="loopback address of the (first) node (default %(default)s)",
        )
        command.add_argument(
            "--port", type=int, default=default_port, help="CQL port (default %(default)s)"
        )
        if name == "start":
            command.add_argument(
                "--nodes", type=int, default=1, help="nodes on consecutive addresses"
            )
            command.add_argument(
                "--auth", action="store_true", help="password auth (cassandra/cassandra)"
            )
            command.add_argument("--tls", action="store_true", help="client TLS only")
            command.add_argument(
                "--timeout", type=float, default=180.0, help="start-up timeout in seconds"
            )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the exit status."""
    args = _parser().parse_args(argv)
    where = f"--address {args.address} --port {args.port}"
    address = f"{args.address}:{args.port}"
    try:
        if args.command == "start":
            cluster = start_detached(
                args.nodes,
                address=args.address,
                native_port=args.port,
                auth=args.auth,
                tls=args.tls,
                startup_timeout=args.timeout,
            )
            points = ", ".join(f"{a}:{cluster.native_port}" for a in cluster.addresses)
            print(
                f"Cassandra {CASSANDRA_VERSION} is running on {points} "
                f"(pid {', '.join(map(str, cluster.pids))}, "
                f"ready in {cluster.start_seconds or 0:.1f} s)"
            )
            if cluster.username:
                print(f"  credentials: {cluster.username} / {cluster.password}")
            if cluster.cert_path:
                print(f"  TLS only; trust the certificate {cluster.cert_path}")
            print(f"  data: {cluster.base_dir}")
            print(f"Stop it with: {_PROG} stop {where}")
            return 0
        if args.command == "stop":
            stopped = stop_detached(args.address, args.port)
            print(f"stopped {stopped} node(s)" if stopped else "no node was running")
            return 0
        nodes = detached_status(args.address, args.port)
        running = [node for node in nodes if node.running]
        for node in nodes:
            state = "running" if node.running else "not running (stale pid file)"
            print(f"{node.address}:{node.native_port} pid {node.pid}: {state}")
        if not nodes:
            print(f"not running: no node started by `{_PROG} start` on {address}")
        return 0 if running else 3  # 3 = "not running", as for LSB init scripts
    except LauncherError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
