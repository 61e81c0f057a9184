"""Fetch the Cassandra server jars and the Simulacron jar from Maven Central.

Everything lands in a per-user cache (see :func:`cache_dir`) so that a demo, a test run
and the CLI share one download. A download goes to a temporary directory beside its
final place and is renamed into place only when complete, under an ``flock`` lock, so a
second process either waits for the first or finds the finished directory, never a
half-filled one.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

CASSANDRA_VERSION = "5.0.8"
SIMULACRON_VERSION = "0.12.0"

# Pinned, so the goals and parameters used below mean the same on every Maven 3.x (the
# version a bare `dependency:` resolves to depends on the Maven release).
_DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.6.1"
# Written last, inside the temporary directory, just before the rename: a directory
# without it is a leftover of a killed download and is thrown away.
_MARKER = ".complete"

_POM = """<?xml version="1.0" encoding="UTF-8"?>
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>async-cassandra.launcher</groupId>
  <artifactId>fetch-{artifact}</artifactId>
  <version>0</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>{group}</groupId>
      <artifactId>{artifact}</artifactId>
      <version>{version}</version>
    </dependency>
  </dependencies>
</project>
"""


# Defined here, in the lowest module of the package, because every other one imports it.
class LauncherError(Exception):
    """Starting or stopping a local Cassandra (or Simulacron) failed.

    The message says what to do about it and, when the server wrote a log, ends with the
    last lines of that log.
    """


_Fetch = Callable[[Path, str], None]


def cache_dir() -> Path:
    """The per-user cache: ``$ASYNC_CASSANDRA_CACHE``, else ``$XDG_CACHE_HOME/async-cassandra``,
    else ``~/.cache/async-cassandra``."""
    explicit = os.environ.get("ASYNC_CASSANDRA_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "async-cassandra"


def cassandra_lib(version: str = CASSANDRA_VERSION) -> Path:
    """Return the directory holding ``cassandra-all`` and its runtime jars, downloading it
    with Maven on first use."""
    root = _ensure(
        f"cassandra-{version}",
        lambda tmp, mvn: _mvn(
            mvn,
            tmp,
            f"{_DEPENDENCY_PLUGIN}:copy-dependencies",
            "-DincludeScope=runtime",
            f"-DoutputDirectory={tmp / 'lib'}",
            pom=("org.apache.cassandra", "cassandra-all", version),
        ),
    )
    return root / "lib"


def simulacron_jar(version: str = SIMULACRON_VERSION) -> Path:
    """Return the path of the runnable Simulacron jar, downloading it on first use."""
    name = f"simulacron-standalone-{version}.jar"
    root = _ensure(
        f"simulacron-{version}",
        lambda tmp, mvn: _mvn(
            mvn,
            tmp,
            f"{_DEPENDENCY_PLUGIN}:copy",
            f"-Dartifact=com.datastax.oss.simulacron:simulacron-standalone:{version}",
            f"-DoutputDirectory={tmp}",
            pom=None,
        ),
    )
    return root / name


def find_mvn() -> str:
    """The Maven executable: ``$ASYNC_CASSANDRA_MVN`` or ``mvn`` on ``PATH``."""
    explicit = os.environ.get("ASYNC_CASSANDRA_MVN")
    found = shutil.which(explicit) if explicit else shutil.which("mvn")
    if found is None:
        if explicit:
            where = f"ASYNC_CASSANDRA_MVN={explicit!r} is not an executable"
        else:
            where = "there is no `mvn` on PATH"
        raise LauncherError(
            f"Maven is needed to download Apache Cassandra {CASSANDRA_VERSION} from Maven "
            f"Central, but {where}. Install Maven 3.x and Java 17 (Debian/Ubuntu: "
            "`apt-get install maven openjdk-17-jdk-headless`), or point "
            "ASYNC_CASSANDRA_MVN at an mvn executable."
        )
    return found


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a") as handle:
        # Blocks while another process downloads the same thing; the lock dies with its
        # holder, so a killed download never leaves the cache locked.
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _ensure(name: str, fetch: _Fetch) -> Path:
    cache = cache_dir()
    final = cache / name
    if (final / _MARKER).is_file():
        return final
    # Look for Maven before touching the cache, so a machine without it gets the clear
    # error and no empty cache directories.
    mvn = find_mvn()
    cache.mkdir(parents=True, exist_ok=True)
    with _locked(cache / f".{name}.lock"):
        if (final / _MARKER).is_file():  # another process finished while we waited
            return final
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.partial-", dir=cache))
        try:
            fetch(tmp, mvn)
            (tmp / _MARKER).write_text("complete\n")
            if final.exists():  # an unfinished directory from an older layout or a crash
                shutil.rmtree(final)
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return final


def _mvn(mvn: str, workdir: Path, *args: str, pom: tuple[str, str, str] | None) -> None:
    # -U: Maven caches a failed download in ~/.m2 and would not retry it for a day, so a
    # network hiccup on the first run would otherwise keep failing every later one.
    cmd = [mvn, "-q", "-B", "-U"]
    if pom is not None:
        group, artifact, version = pom
        pom_path = workdir / "pom.xml"
        pom_path.write_text(_POM.format(group=group, artifact=artifact, version=version))
        cmd += ["-f", str(pom_path)]
    cmd += list(args)
    try:
        done = subprocess.run(
            cmd,
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            check=False,
        )
    except OSError as exc:
        raise LauncherError(f"could not run Maven ({mvn}): {exc}") from exc
    if pom is not None:
        (workdir / "pom.xml").unlink(missing_ok=True)
    if done.returncode != 0:
        # Maven 3.8 writes colour resets even in batch mode; they would garble the message.
        output = re.sub(r"\x1b\[[0-9;]*m", "", done.stdout)
        tail = "\n".join(line for line in output.splitlines()[-30:] if line.strip())
        raise LauncherError(
            f"Maven failed (exit code {done.returncode}) running {' '.join(cmd)}; "
            f"check network access to Maven Central and ~/.m2/settings.xml. "
            f"Last lines of its output:\n{tail}"
        )
