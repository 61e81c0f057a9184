"""Loopback addresses and ports: what the launchers check before they start a JVM, and
the probes that tell when it listens."""

from __future__ import annotations

import ipaddress
import os
import socket

from ._maven import LauncherError

__all__ = ["env_port", "free_port", "loopback", "port_free", "tcp_ready"]


def loopback(address: str) -> ipaddress.IPv4Address:
    """``address`` as an IPv4 address; :class:`LauncherError` unless it is in 127.0.0.0/8."""
    try:
        ip = ipaddress.IPv4Address(address)
    except ValueError as exc:
        raise LauncherError(f"{address!r} is not an IPv4 address") from exc
    if not ip.is_loopback:
        # Never bind a test database to a real interface.
        raise LauncherError(f"{address} is not a loopback address (use 127.0.0.0/8)")
    return ip


def free_port(address: str = "127.0.0.1") -> int:
    """A TCP port that nothing listens on at ``address`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((address, 0))
        port: int = sock.getsockname()[1]
        return port


def port_free(address: str, port: int) -> bool:
    """True if a server could bind ``address:port`` now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # SO_REUSEADDR, as the JVM uses: a port left in TIME_WAIT by a node we just stopped
        # is free for the next one; only a socket that is really bound conflicts.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((address, port))
        except OSError:
            return False
        return True


def tcp_ready(address: str, port: int) -> bool:
    """True if something accepts TCP connections on ``address:port``."""
    try:
        with socket.create_connection((address, port), timeout=1.0):
            return True
    except OSError:
        return False


def env_port(name: str, default: int) -> int:
    """The port number in ``$name`` (``default`` when unset or empty)."""
    value = os.environ.get(name)
    if not value:
        return default
    try:
        return int(value)
    except ValueError as exc:
        raise LauncherError(f"${name}={value!r} is not a port number") from exc
