"""Simulacron: DataStax's fake Cassandra node, for protocol-v4 and fault tests.

It answers the driver's discovery queries by itself and whatever else it is *primed*
with over its REST API: rows, errors (read/write timeouts, unavailable, overloaded...),
delays, closed connections. It speaks protocol v3/v4 only, which is exactly what makes
it useful as "a server that cannot do v5"; never use it as a stand-in for features.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType

from ._java import find_java
from ._maven import LauncherError, simulacron_jar
from ._net import free_port, loopback, port_free, tcp_ready
from ._process import pdeathsig_preexec, tail, terminate

__all__ = ["Simulacron"]


class Simulacron:
    """A running Simulacron with one simulated node on ``ip:native_port``.

    ``with Simulacron() as sim: sim.prime("SELECT ...", rows=[...], column_types={...})``
    then connect a driver to ``sim.contact_points``/``sim.native_port``. The REST API
    listens on ``http_address:http_port`` (a free port by default).
    """

    def __init__(
        self,
        ip: str = "127.0.1.1",
        *,
        native_port: int = 9042,
        http_address: str = "127.0.0.1",
        http_port: int | None = None,
        java: str | os.PathLike[str] | None = None,
        startup_timeout: float = 60.0,
    ) -> None:
        loopback(ip)
        loopback(http_address)
        self._ip = ip
        self._native_port = native_port
        self._http_address = http_address
        self._http_port = http_port
        self._java = java
        self._startup_timeout = startup_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._dir: Path | None = None
        self._cluster_id: int | None = None
        self._lock = threading.Lock()
        self._started = False
        self._stopped = False
        self.start_seconds: float | None = None
        """Seconds from launching the JVM to the simulated node accepting connections."""

    @property
    def contact_points(self) -> list[str]:
        """The simulated node's address, as driver contact points."""
        return [self._ip]

    @property
    def native_port(self) -> int:
        """The simulated node's CQL port."""
        return self._native_port

    @property
    def http_url(self) -> str:
        """Base URL of the REST API, e.g. ``http://127.0.0.1:41234``."""
        return f"http://{self._http_address}:{self._http_port}"

    @property
    def cluster_id(self) -> int:
        """Simulacron's id of the simulated cluster (used in REST paths)."""
        if self._cluster_id is None:
            raise LauncherError("Simulacron is not started")
        return self._cluster_id

    @property
    def pid(self) -> int | None:
        """The JVM's process id while it runs."""
        return self._proc.pid if self._proc is not None else None

    def logtail(self, lines: int = 40) -> str:
        """The last lines of Simulacron's output."""
        if self._dir is None:
            return ""
        return tail(self._dir / "simulacron.log", lines)

    # ---------------------------------------------------------------- REST API

    def api(self, method: str, path: str, body: object = None) -> object:
        """Call the REST API (``path`` like ``/prime/0``) and return the decoded JSON
        answer (None when empty). Raises :class:`LauncherError` on an HTTP error."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.http_url + path, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                text = response.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", "replace")
            raise LauncherError(f"Simulacron {method} {path} failed: {exc}: {detail}") from exc
        except OSError as exc:
            raise LauncherError(
                f"Simulacron {method} {path} failed: {exc}; its log:\n{self.logtail()}"
            ) from exc
        return json.loads(text) if text.strip() else None

    def prime(
        self,
        when_query: str,
        result: str = "success",
        rows: Sequence[Mapping[str, object]] | None = None,
        column_types: Mapping[str, str] | None = None,
        delay_ms: int = 0,
        *,
        when: Mapping[str, object] | None = None,
        **then: object,
    ) -> None:
        """Prime the answer to ``when_query``.

        ``result`` is ``"success"`` (with ``rows`` and ``column_types`` such as
        ``{"id": "int", "name": "text"}``) or a fault: ``"read_timeout"``, ``"write_timeout"``,
        ``"unavailable"``, ``"overloaded"``, ``"server_error"``, ``"no_result"``,
        ``"close_connection"``... Extra keyword arguments go into the ``then`` part as is
        (e.g. ``consistency_level="ONE", received=0, block_for=1`` for timeouts,
        ``close_type="disconnect", scope="connection"`` for closed connections,
        ``message="..."`` for errors, ``ignore_on_prepare=False``); ``when`` adds to the
        ``when`` part (e.g. ``{"consistency_level": ["ONE"], "params": ...}``).
        """
        then_part: dict[str, object] = {"result": result, "delay_in_ms": delay_ms}
        if rows is not None:
            then_part["rows"] = [dict(row) for row in rows]
        if column_types is not None:
            # Simulacron's codec registry knows CQL `text` only by its alias `varchar`
            # (priming a `text` column fails with a bare HTTP 400).
            then_part["column_types"] = {
                name: re.sub(r"\btext\b", "varchar", cql_type)
                for name, cql_type in column_types.items()
            }
        then_part.update(then)
        when_part: dict[str, object] = {"query": when_query, **(when or {})}
        self.api("POST", f"/prime/{self.cluster_id}", {"when": when_part, "then": then_part})

    def clear_primes(self) -> None:
        """Forget every primed query."""
        self.api("DELETE", f"/prime/{self.cluster_id}")

    def activity_log(self) -> object:
        """The queries the simulated node received (Simulacron's ``/log`` JSON)."""
        return self.api("GET", f"/log/{self.cluster_id}")

    def clear_activity_log(self) -> None:
        """Forget the received queries."""
        self.api("DELETE", f"/log/{self.cluster_id}")

    # --------------------------------------------------------------- lifecycle

    def __enter__(self) -> Simulacron:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> Simulacron:
        """Start the JVM, create a one-node cluster and wait until it accepts CQL
        connections. Raises :class:`LauncherError` with the log tail on failure."""
        with self._lock:
            if self._started:
                raise LauncherError("this Simulacron was already started")
            self._started = True
        atexit.register(self.stop)
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        java = find_java(self._java)
        if not port_free(self._ip, self._native_port):
            raise LauncherError(
                f"port {self._native_port} on {self._ip} is already in use by another "
                "process; stop it or pass ip=... / native_port=..."
            )
        if self._http_port is None:
            self._http_port = free_port(self._http_address)
        jar = simulacron_jar()
        self._dir = Path(tempfile.mkdtemp(prefix="async-cassandra-simulacron-"))
        cmd = [java, "-jar", str(jar), "--ip", self._ip]
        cmd += ["--httpintf", self._http_address, "--httpport", str(self._http_port)]
        if self._native_port != 9042:
            cmd += ["--starting-port", str(self._native_port)]
        began = time.monotonic()
        with open(self._dir / "simulacron.log", "wb") as out:
            self._proc = subprocess.Popen(
                cmd,
                cwd=self._dir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=pdeathsig_preexec(),
            )
        deadline = began + self._startup_timeout
        self._wait(deadline, lambda: tcp_ready(self._http_address, self._http_port or 0))
        name = f"acs-simulacron-{os.getpid()}"
        query = urllib.parse.urlencode({"data_centers": "1", "name": name})
        created = self.api("POST", f"/cluster?{query}")
        if not isinstance(created, dict) or "id" not in created:
            raise LauncherError(f"Simulacron answered POST /cluster with {created!r}")
        self._cluster_id = int(created["id"])
        self._wait(deadline, lambda: tcp_ready(self._ip, self._native_port))
        self.start_seconds = time.monotonic() - began

    def _wait(self, deadline: float, ready: Callable[[], bool]) -> None:
        assert self._proc is not None
        while not ready():
            code = self._proc.poll()
            if code is not None:
                raise LauncherError(
                    f"Simulacron exited with code {code} during start-up; last lines of "
                    f"its log:\n{self.logtail()}"
                )
            if time.monotonic() > deadline:
                raise LauncherError(
                    f"Simulacron was not ready within {self._startup_timeout:.0f} s; last "
                    f"lines of its log:\n{self.logtail()}"
                )
            time.sleep(0.1)

    def stop(self, grace: float = 10.0) -> None:
        """Stop the JVM (SIGTERM, SIGKILL after ``grace`` s) and delete its log
        directory. Safe to call more than once."""
        with self._lock:
            if self._stopped or not self._started:
                return
            self._stopped = True
        with contextlib.suppress(Exception):
            atexit.unregister(self.stop)
        if self._proc is not None:
            terminate([self._proc], grace)
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
