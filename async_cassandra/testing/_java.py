"""Finding the Java that runs Cassandra and Simulacron, and the flags Java 17 needs.

Shared by the node launcher and Simulacron: both run on the machine's Java 11 or 17,
found the same way (argument, ``ASYNC_CASSANDRA_JAVA``, ``JAVA_HOME``, ``PATH``) and
checked once per process.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from ._maven import LauncherError

__all__ = ["SUPPORTED_JAVA", "find_java", "find_keytool", "module_flags"]

SUPPORTED_JAVA = (11, 17)

# Java 17 closes the JDK internals Cassandra reaches into; these are the exports and
# opens its own launch scripts pass (jvm17-server.options).
_EXPORTS = (
    "java.base/jdk.internal.misc",
    "java.management.rmi/com.sun.jmx.remote.internal.rmi",
    "java.management/com.sun.jmx.remote.security",
    "java.rmi/sun.rmi.registry",
    "java.rmi/sun.rmi.server",
    "java.sql/java.sql",
    "java.base/java.lang.ref",
    "jdk.unsupported/sun.misc",
)
_OPENS = (
    "java.base/java.lang.module",
    "java.base/jdk.internal.loader",
    "java.base/jdk.internal.ref",
    "java.base/jdk.internal.reflect",
    "java.base/jdk.internal.math",
    "java.base/jdk.internal.module",
    "java.base/jdk.internal.util.jar",
    "java.base/sun.nio.ch",
    "java.base/java.io",
    "java.base/java.lang.reflect",
    "java.base/java.lang",
    "java.base/java.util",
    "java.base/java.nio",
    "jdk.management/com.sun.management.internal",
)

_HINT = "Cassandra 5.0 needs Java 17 (or 11); set ASYNC_CASSANDRA_JAVA or JAVA_HOME"


def find_java(java: str | os.PathLike[str] | None = None) -> str:
    """Resolve and check the ``java`` executable; raise :class:`LauncherError` if it is
    missing or not a supported version (11 or 17)."""
    if java is None:
        java = os.environ.get("ASYNC_CASSANDRA_JAVA")
    if java is None:
        home = os.environ.get("JAVA_HOME")
        java = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    if java is None:
        raise LauncherError(
            "no `java` on PATH: Cassandra 5.0 needs Java 17 (or 11). Install it "
            "(Debian/Ubuntu: `apt-get install openjdk-17-jre-headless`), or set "
            "ASYNC_CASSANDRA_JAVA / JAVA_HOME."
        )
    java = str(java)
    return _check_java(java)


_java_checked: dict[str, str] = {}


def _check_java(java: str) -> str:
    if java in _java_checked:
        return _java_checked[java]
    try:
        done = subprocess.run(
            [java, "-version"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise LauncherError(f"cannot run Java at {java!r} ({exc}); {_HINT}") from exc
    # `java -version` prints to stderr: `openjdk version "17.0.15" ...` or `"1.8.0_392"`.
    match = re.search(r'version "(\d+)(?:\.(\d+))?', done.stderr + done.stdout)
    if done.returncode != 0 or match is None:
        raise LauncherError(
            f"{java!r} -version failed (exit code {done.returncode}): "
            f"{done.stderr.strip()[-500:]}; {_HINT}"
        )
    major = int(match.group(1))
    if major == 1 and match.group(2):
        major = int(match.group(2))
    if major not in SUPPORTED_JAVA:
        raise LauncherError(f"{java!r} is Java {major}; {_HINT}")
    _java_checked[java] = java
    return java


def module_flags() -> list[str]:
    """The ``--add-exports`` / ``--add-opens`` flags Cassandra needs on Java 17."""
    flags = [f"--add-exports={module}=ALL-UNNAMED" for module in _EXPORTS]
    flags += [f"--add-opens={module}=ALL-UNNAMED" for module in _OPENS]
    return flags


def find_keytool(java: str) -> str:
    """The ``keytool`` of the JDK that ``java`` belongs to (else the one on PATH)."""
    keytool = Path(java).resolve().parent / "keytool"
    tool = str(keytool) if keytool.exists() else shutil.which("keytool")
    if tool is None:
        raise LauncherError("tls=True needs `keytool` (it comes with the JDK)")
    return tool
