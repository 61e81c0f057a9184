"""Peer libraries the point-read benchmark compares with, each in its own virtualenv.

async-cassandra 0.0.1 (the library this project replaces) has our import name and needs
Python >= 3.12; acsylla (the C++ driver's asyncio binding) is not a dependency of ours. So
each gets a venv of its own and runs ``_peer_point_reads.py`` there, in a subprocess.

Standard library only: ``noxfile.py`` loads this file to make the venvs
(:func:`ensure_venv`), ``point_reads.py`` to check and drive them (:func:`check`,
:class:`PeerProcess`). By hand::

    python tests/benchmarks/_peers.py .nox/bench-peers   # make both, print their pythons
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import glob
import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RUNNER = Path(__file__).resolve().with_name("_peer_point_reads.py")
REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Peer:
    name: str
    package: str  # the distribution name on PyPI
    version: str  # pinned
    min_python: tuple[int, int]

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


PEERS = {
    "v001": Peer("v001", "async-cassandra", "0.0.1", (3, 12)),
    "acsylla": Peer("acsylla", "acsylla", "1.2.0", (3, 8)),
}


@dataclass
class PeerVenv:
    name: str
    python: str | None  # the venv's interpreter, when it is usable
    reason: str | None = None  # why not, otherwise


def _tail(text: str, lines: int = 8) -> str:
    return " | ".join(line for line in text.strip().splitlines()[-lines:] if line.strip())


def _run(command: list[str], timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)


def python_version(python: str) -> tuple[int, int] | None:
    """(major, minor) of an interpreter, or None if it does not run (a pyenv shim of a
    version that is not selected, a venv whose base interpreter is gone, ...)."""
    try:
        done = _run([python, "-I", "-c", "import sys; print(*sys.version_info[:2])"], 60)
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode != 0:
        return None
    major, minor = done.stdout.split()
    return int(major), int(minor)


def find_python(minimum: tuple[int, int]) -> str | None:
    """An interpreter >= minimum: the lowest such ``pythonX.Y`` on PATH, else under
    ``~/.pyenv/versions`` (or ``$PYENV_ROOT/versions``)."""
    candidates: list[str] = []
    for minor in range(minimum[1], 20):
        found = shutil.which(f"python{minimum[0]}.{minor}")
        if found:
            candidates.append(found)
    pyenv = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv") / "versions"
    for minor in range(minimum[1], 20):
        candidates += sorted(glob.glob(str(pyenv / f"{minimum[0]}.{minor}.*" / "bin" / "python")))
    for candidate in candidates:
        found_version = python_version(candidate)
        if found_version is not None and found_version >= minimum:
            return candidate
    return None


def installed_version(python: Path, package: str) -> str | None:
    """The version of ``package`` that ``python`` has, or None (not installed or the
    interpreter does not run)."""
    if not python.exists():
        return None
    code = (
        "import importlib.metadata as m, sys\n"
        f"try: print(m.version({package!r}))\n"
        "except m.PackageNotFoundError: sys.exit(1)"
    )
    try:
        done = _run([str(python), "-I", "-c", code], 60)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def ensure_venv(name: str, directory: Path, base_python: str | None = None) -> PeerVenv:
    """``directory`` as a venv with the peer's pinned package; nothing is done when it is
    already there. ``base_python``: the interpreter to make it with (default: one found by
    :func:`find_python`). Never raises for a peer that cannot be installed: the reason
    is returned, for the benchmark to report."""
    peer = PEERS[name]
    python = directory / "bin" / "python"
    if installed_version(python, peer.package) == peer.version:
        print(f"bench peers: {name}: {peer.requirement} already in {directory}", flush=True)
        return PeerVenv(name, str(python))
    try:
        if python_version(str(python)) is None:
            base = base_python or find_python(peer.min_python)
            if base is None:
                wanted = ".".join(map(str, peer.min_python))
                return PeerVenv(
                    name,
                    None,
                    f"no Python >= {wanted} found (python{wanted} on PATH, or under "
                    "~/.pyenv/versions); it is needed for a venv with " + peer.requirement,
                )
            base_version = python_version(base)
            if base_version is None or base_version < peer.min_python:
                return PeerVenv(name, None, f"{base} does not run or is older than needed")
            print(f"bench peers: {name}: making a venv in {directory} with {base}", flush=True)
            done = _run([base, "-m", "venv", "--clear", str(directory)])
            if done.returncode != 0:
                return PeerVenv(
                    name, None, f"`{base} -m venv {directory}` failed: {_tail(done.stderr)}"
                )
        print(f"bench peers: {name}: pip install {peer.requirement}", flush=True)
        pin = [peer.requirement]
        done = _run(
            [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *pin]
        )
        if done.returncode != 0:
            return PeerVenv(
                name,
                None,
                f"`pip install {peer.requirement}` in {directory} failed: "
                + _tail(done.stderr or done.stdout),
            )
    except (OSError, subprocess.SubprocessError) as error:
        return PeerVenv(name, None, f"making the {name} venv in {directory} failed: {error!r}")
    found = installed_version(python, peer.package)
    if found != peer.version:
        return PeerVenv(name, None, f"{directory} has {peer.package} {found}, not {peer.version}")
    return PeerVenv(name, str(python))


def add_peer_options(parser: argparse.ArgumentParser) -> None:
    """``--NAME-python`` and ``--NAME-unavailable`` for every peer: what both benchmark
    scripts take (``nox -s bench`` passes them)."""
    for name, peer in PEERS.items():
        parser.add_argument(
            f"--{name}-python",
            metavar="PATH",
            help=f"the interpreter of a venv with {peer.requirement} (default: "
            f".nox/bench-peers/{name}/bin/python if it exists)",
        )
        parser.add_argument(
            f"--{name}-unavailable",
            metavar="REASON",
            help=f"record {name} as not measured, for this reason (nox -s bench passes it "
            "when it could not make the venv)",
        )


def peer_python(args: argparse.Namespace, name: str) -> tuple[str | None, str | None]:
    """The interpreter to run peer ``name`` with, or None and the reason it will not run:
    ``--NAME-unavailable``, else ``--NAME-python``, else the venv ``nox -s bench`` makes."""
    reason = getattr(args, f"{name}_unavailable")
    if reason:
        return None, reason
    python = getattr(args, f"{name}_python")
    if python:
        return python, None
    default = REPO / ".nox" / "bench-peers" / name / "bin" / "python"
    if default.exists():
        return str(default), None
    return None, (
        f"no interpreter for {name}: pass --{name}-python (a venv with "
        f"{PEERS[name].requirement}; `nox -s bench` makes one)"
    )


def check(name: str, python: str) -> dict[str, Any]:
    """Whether the peer imports in that interpreter, isolated from this repository:
    ``{"available": True, "interpreter": python, "version": ..., "python": "3.12.1", ...}``
    or ``{"available": False, "interpreter": python, "reason": ...}``."""
    peer = PEERS[name]
    if not Path(python).exists():
        return {"available": False, "interpreter": python, "reason": f"{python} does not exist"}
    try:
        done = _run([python, "-I", str(RUNNER), "--client", name, "--check"], 120)
    except (OSError, subprocess.SubprocessError) as error:
        return {"available": False, "interpreter": python, "reason": repr(error)}
    if done.returncode != 0:
        return {
            "available": False,
            "interpreter": python,
            "reason": f"importing {peer.package} failed: {_tail(done.stderr)}",
        }
    info: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    info.pop("event", None)
    if info.get("version") != peer.version:
        return {
            "available": False,
            "interpreter": python,
            "reason": f"{python} has {peer.package} {info.get('version')}, not {peer.version}",
        }
    return {"available": True, "interpreter": python, **info}


class PeerError(RuntimeError):
    """The peer process failed, went silent or answered nonsense."""


class PeerProcess:
    """``_peer_point_reads.py`` in a peer's venv: a line on its stdin starts each phase,
    each phase answers with one JSON line on its stdout."""

    def __init__(self, python: str, arguments: list[str]) -> None:
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._stderr: collections.deque[str] = collections.deque(maxlen=30)
        try:
            self._process = subprocess.Popen(
                # Absolute: the runner starts in another directory (cwd below).
                [os.path.abspath(python), "-I", str(RUNNER), *arguments],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                bufsize=1,
                cwd=tempfile.gettempdir(),
            )
        except OSError as error:
            raise PeerError(f"cannot start {python}: {error!r}") from error
        threading.Thread(target=self._pump_stdout, daemon=True).start()
        threading.Thread(target=self._pump_stderr, daemon=True).start()

    def _pump_stdout(self) -> None:
        assert self._process.stdout is not None
        for line in self._process.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def _pump_stderr(self) -> None:
        assert self._process.stderr is not None
        for line in self._process.stderr:
            self._stderr.append(line.rstrip())

    def stderr_tail(self, lines: int = 8) -> str:
        return " | ".join(list(self._stderr)[-lines:])

    def _failed(self, what: str) -> PeerError:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._process.wait(1)
        code = self._process.poll()
        state = "still running" if code is None else f"exit code {code}"
        return PeerError(f"{what} ({state}); stderr: {self.stderr_tail() or '(empty)'}")

    def expect(self, event: str, timeout: float) -> dict[str, Any]:
        """The next JSON line of that event (other stdout lines are skipped)."""
        while True:
            try:
                line = self._lines.get(timeout=timeout)
            except queue.Empty:
                raise self._failed(f"no {event!r} line within {timeout:.0f} s") from None
            if line is None:
                raise self._failed(f"stdout closed before the {event!r} line")
            with contextlib.suppress(ValueError):
                data = json.loads(line)
                if isinstance(data, dict) and data.get("event") == "error":
                    raise self._failed(f"it reported {data.get('error')}")
                if isinstance(data, dict) and data.get("event") == event:
                    return data

    def go(self) -> None:
        """Start the next phase."""
        assert self._process.stdin is not None
        try:
            self._process.stdin.write("go\n")
            self._process.stdin.flush()
        except OSError:
            raise self._failed("its stdin is closed") from None

    def close(self, timeout: float = 60) -> None:
        """Wait for it to exit; kill it if it does not."""
        with contextlib.suppress(OSError):
            if self._process.stdin is not None:
                self._process.stdin.close()
        try:
            self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()

    def __enter__(self) -> PeerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._process.poll() is None:
            self._process.kill()
            self._process.wait()


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else ".nox/bench-peers")
    for name in PEERS:
        made = ensure_venv(name, root / name, None if name == "v001" else sys.executable)
        print(f"{name}: {made.python or 'UNAVAILABLE: ' + str(made.reason)}")


if __name__ == "__main__":
    main()
