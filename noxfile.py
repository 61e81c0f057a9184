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


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks against the raw driver, in one run; writes bench-results/*.json.

    Each script starts (and stops) its own node on 127.0.0.1. Options after `--` go to
    both scripts, so only the ones they share: `--address 127.0.0.40`, `--quick`,
    `--output-dir DIR`.
    """
    _install(session, "bench")
    session.run("python", "tests/benchmarks/point_reads.py", *session.posargs)
    session.run("python", "tests/benchmarks/stream_rows.py", *session.posargs)


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
