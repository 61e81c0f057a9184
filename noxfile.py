"""Project tasks. `python3 -m pip install nox` once, then `python3 -m nox -s <name>`.

- lint:  ruff check, ruff format --check, mypy --strict.
- tests: the whole suite, both backends, against a Cassandra 5.0.8 node it starts.
  `nox -s lint tests` (also plain `nox`) is the README's test command, which CI runs.
- demo:  the main job: start a local node, write and read rows on asyncio and trio.
- bench: the benchmarks (figures to bench-results/).
- reliability: every node-failure scenario on a 3-node cluster and Simulacron
  (figures to bench-results/reliability.json); about 20 minutes.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import nox

nox.options.sessions = ["lint", "tests"]
nox.options.default_venv_backend = "venv"

PYPROJECT = nox.project.load_toml("pyproject.toml")


def _install(session: nox.Session, *groups: str) -> None:
    requirements = [
        requirement
        for group in groups
        for requirement in nox.project.dependency_groups(PYPROJECT, group)
    ]
    session.install("-e", ".[trio]", *requirements)


@nox.session
def tests(session: nox.Session) -> None:
    """The whole test suite; provisions and stops its own Cassandra node."""
    _install(session, "test")
    session.run("pytest", *session.posargs)


@nox.session
def demo(session: nox.Session) -> None:
    """Start a local node, create a table, write and read rows on asyncio and trio."""
    _install(session)
    session.run("python", "examples/demo.py", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check, ruff format --check, mypy --strict on the package."""
    _install(session, "lint")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("mypy", "--strict", "async_cassandra")


def _bench_peers(session: nox.Session) -> dict[str, tuple[str | None, str | None]]:
    """Venvs for the peer libraries of the benchmarks, next to the session's own
    (.nox/bench-peers/): async-cassandra 0.0.1 on Python >= 3.12 (python3.12 on PATH or
    under ~/.pyenv), acsylla on the session's Python; pip runs only when the pinned
    version is not there yet. Returns, per peer, (its interpreter, None) or (None, why
    it cannot run); the benchmarks report an unavailable peer loudly."""
    path = Path(__file__).parent / "tests" / "benchmarks" / "_peers.py"
    spec = importlib.util.spec_from_file_location("_peers", path)
    assert spec is not None
    assert spec.loader is not None
    peers = importlib.util.module_from_spec(spec)
    sys.modules["_peers"] = peers  # dataclasses look their module up there
    spec.loader.exec_module(peers)
    root = Path(session.virtualenv.location).parent / "bench-peers"
    made = {}
    for name in peers.PEERS:
        base = str(Path(session.bin) / "python") if name == "acsylla" else None
        venv = peers.ensure_venv(name, root / name, base)
        if venv.python is None:
            session.warn(f"bench: {name} will not be measured: {venv.reason}")
        made[name] = (venv.python, venv.reason)
    return made


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks against the raw driver, in one run; writes bench-results/*.json.

    Each script starts (and stops) its own node on 127.0.0.1. Options after `--` go to
    both scripts, so only the ones they share: `--address 127.0.0.40`, `--quick`,
    `--output-dir DIR`. Both also measure two peers, each in a venv of its own made here
    (see _bench_peers): async-cassandra 0.0.1 and acsylla. Then the charts: PNGs next to
    the JSON (tests/benchmarks/plot.py).
    """
    _install(session, "bench")
    peers = _bench_peers(session)
    pythons = [
        arg for name, (python, _) in peers.items() if python for arg in (f"--{name}-python", python)
    ]
    for name, (python, reason) in peers.items():
        if python is None:
            pythons += [f"--{name}-unavailable", str(reason)]
    session.run("python", "tests/benchmarks/point_reads.py", *pythons, *session.posargs)
    session.run("python", "tests/benchmarks/stream_rows.py", *pythons, *session.posargs)
    results = ["--results-dir", _option(session.posargs, "--output-dir") or "bench-results"]
    session.run("python", "tests/benchmarks/plot.py", *results)


def _option(args: list[str], name: str) -> str | None:
    """The value of ``name`` in ``args`` (``--name VALUE`` or ``--name=VALUE``), if given."""
    for index, arg in enumerate(args):
        if arg == name and index + 1 < len(args):
            return args[index + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


@nox.session
def reliability(session: nox.Session) -> None:
    """Every node-failure scenario (tests/test_reliability.py, the long ones included,
    the retry policy on three Simulacron nodes, the connection monitor seeing a killed
    node, a server-side write timeout as a span), on asyncio and trio; provisions and
    stops its own nodes. Figures go to bench-results/reliability.json."""
    _install(session, "test")
    session.run(
        "pytest",
        "-m",
        "",
        "tests/test_reliability.py",
        "tests/test_retry_policy_simulacron.py",
        "tests/test_monitoring.py",
        "tests/test_otel.py",
        *session.posargs,
    )
