"""The examples run as users run them, against the suite's node, on both backends."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from _helpers import EXAMPLES


def run_example(node: Any, *args: str, cwd: Path | None = None) -> str:
    env = dict(os.environ)
    env["ASYNC_CASSANDRA_CONTACT_POINTS"] = ",".join(node.contact_points)
    env["ASYNC_CASSANDRA_PORT"] = str(node.port)
    completed = subprocess.run(
        [sys.executable, *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    return completed.stdout


def test_demo_prints_the_version_and_rows_on_both_backends(cassandra_node: Any) -> None:
    out = run_example(cassandra_node, str(EXAMPLES / "demo.py"))
    for backend in ("asyncio", "trio"):
        section = out.split(f"== {backend} ==")[1].split("total")[0]
        assert "server: Cassandra 5.0.8, protocol v5" in section
        for name in ("Ada", "Grace", "Barbara"):
            assert name in section
        assert " ms" in section


def test_trio_app(cassandra_node: Any) -> None:
    out = run_example(cassandra_node, str(EXAMPLES / "trio_app.py"))
    assert "created 50 users" in out
    assert "missing user -> None" in out
    assert "200 concurrent reads" in out
    assert "cancelled=True; session still open: True" in out
    assert "invalid CQL -> SyntaxException (a QueryError)" in out
    assert "and the session still serves queries: user1" in out


def test_event_loop_io_reads_on_the_loop_thread_only_when_asked(cassandra_node: Any) -> None:
    out = run_example(cassandra_node, str(EXAMPLES / "event_loop_io.py"), "0.5")
    for backend in ("asyncio", "trio"):
        section = out.split(f"== {backend} ==")[1].split("==")[0]
        lines = section.strip().splitlines()
        assert len(lines) == 2, section
        default, loop_io = lines
        assert "default connection" in default
        assert "reads/s; answers read on another thread" in default
        assert "EventLoopConnection" in loop_io
        assert "reads/s; answers read on the event loop's thread" in loop_io


@pytest.fixture
def no_export_keyspace(cassandra_driver_session: Any) -> Any:
    """The examples' keyspace is absent before and dropped after each test."""
    cassandra_driver_session.execute("DROP KEYSPACE IF EXISTS export_demo")
    yield
    cassandra_driver_session.execute("DROP KEYSPACE IF EXISTS export_demo")


@pytest.mark.usefixtures("no_export_keyspace")
@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_csv_export_and_parallel_export(cassandra_node: Any, tmp_path: Path, backend: str) -> None:
    output = tmp_path / "users.csv"
    out = run_example(
        cassandra_node,
        str(EXAMPLES / "export_csv.py"),
        "--backend",
        backend,
        "--seed",
        "3000",
        "--output",
        str(output),
    )
    assert "page 1:" in out
    with output.open(newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["id", "name", "email", "created_at"]
    exported = rows[1:]
    assert len(exported) == 3000
    assert f"Total users: {len(exported):,}" in out
    tricky = [row for row in exported if row[1].startswith("Smith, ")]
    assert tricky
    assert all(row[1].startswith('Smith, "J') and row[1].endswith('"') for row in tricky)

    parts = tmp_path / "parts"
    out = run_example(
        cassandra_node,
        str(EXAMPLES / "parallel_export.py"),
        "--backend",
        backend,
        "--workers",
        "4",
        "--output-dir",
        str(parts),
    )
    assert out.count("  worker ") == 4
    assert f"rows in the part files: {len(exported):,}" in out
    ids = set()
    for part in parts.glob("part-*.csv"):
        with part.open(newline="") as handle:
            ids.update(row[0] for row in csv.reader(handle))
    assert ids == {row[0] for row in exported}
