"""The JVM processes the launchers start: a death signal tied to ours, whether a process
(and each of its threads) runs, stopping and killing it, and the tail of its log.

Linux answers the questions from /proc; elsewhere the answers fall back to what
``kill(pid, 0)`` can tell.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = [
    "all_threads_running",
    "all_threads_stopped",
    "kill_group",
    "kill_pid",
    "pdeathsig_preexec",
    "proc_alive",
    "reap",
    "start_time",
    "tail",
    "terminate",
]


def pdeathsig_preexec() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child get SIGTERM when this process dies.

    PR_SET_PDEATHSIG fires when the *thread* that forked the child exits, not the
    process, so it is only used from the main thread (whose end is the process's end).
    """
    if not sys.platform.startswith("linux"):
        return None
    if threading.current_thread() is not threading.main_thread():
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()
    pr_set_pdeathsig = 1

    def preexec() -> None:
        prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)
        # The parent may have died between fork and prctl; then no signal would come.
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


def _state(stat: str) -> str:
    # The state follows the parenthesised command name, which may itself hold spaces.
    return stat.rsplit(")", 1)[-1].split()[0]


def proc_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie (a killed child we have not reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return _state(stat) not in ("Z", "X")


def start_time(pid: int) -> int | None:
    """The kernel's start time of ``pid`` (clock ticks since boot), None if it is gone.

    A pid plus its start time names one process for good: a recycled pid has another
    start time.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])  # field 22 of stat(5), counted from after the command name


def _thread_states(pid: int) -> list[str] | None:
    """The scheduler state of each thread of ``pid`` (empty once it is gone); None
    without /proc (not Linux), where there is nothing to look at."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return [] if Path("/proc/self").exists() else None
    states = []
    for tid in tids:
        try:
            states.append(_state(Path(f"/proc/{pid}/task/{tid}/stat").read_text()))
        except OSError:
            continue  # the thread has just ended
    return states


def all_threads_stopped(pid: int) -> bool:
    """True once every thread of ``pid`` is stopped (state T): a SIGSTOP has taken hold.

    Without /proc (not Linux) there is nothing to look at: True.
    """
    states = _thread_states(pid)
    if states is None:
        return True
    return bool(states) and all(state in ("T", "t") for state in states)


def all_threads_running(pid: int) -> bool:
    """True once no thread of ``pid`` is stopped any more: a SIGCONT has taken hold.

    Without /proc (not Linux) there is nothing to look at: True.
    """
    states = _thread_states(pid)
    if states is None:
        return True
    return bool(states) and not any(state in ("T", "t") for state in states)


def reap(pid: int) -> None:
    """Collect ``pid`` if it is an exited child of ours, so it does not linger as a
    zombie (a detached node started earlier in this process, say)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def kill_pid(pid: int, grace: float, *, group: bool) -> None:
    """SIGTERM ``pid`` (or its process group), wait up to ``grace`` s, then SIGKILL."""

    def send(sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if group:
                os.killpg(pid, sig)
            else:
                os.kill(pid, sig)

    send(signal.SIGTERM)
    # A paused (SIGSTOPped) JVM would sit on the SIGTERM forever.
    send(signal.SIGCONT)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        reap(pid)
        if not proc_alive(pid):
            return
        time.sleep(0.05)
    send(signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        reap(pid)
        if not proc_alive(pid):
            return
        time.sleep(0.05)


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def terminate(procs: Sequence[subprocess.Popen[bytes]], grace: float) -> None:
    """Stop child processes that lead their own process groups, all at once: SIGTERM
    (and SIGCONT, which a paused one needs to act on it) to each group still running,
    up to ``grace`` s for all of them to exit, then SIGKILL for the rest. Returns once
    every one is reaped; one that exited before is left as it is."""
    for proc in procs:
        if proc.poll() is None:
            _signal_group(proc, signal.SIGTERM)
            _signal_group(proc, signal.SIGCONT)
    deadline = time.monotonic() + grace
    for proc in procs:
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _signal_group(proc, signal.SIGKILL)
            proc.wait()


def kill_group(proc: subprocess.Popen[bytes], timeout: float) -> bool:
    """SIGKILL the process group ``proc`` leads; True once ``proc`` is reaped, False if it
    is still there after ``timeout`` s (a process stuck in the kernel)."""
    _signal_group(proc, signal.SIGKILL)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return False
    return True


_STACK_FRAME = re.compile(r"^\s+(at |\.\.\. \d+ (more|common frames omitted))")


def tail(path: Path, lines: int) -> str:
    """The last ``lines`` lines of a log, without Java stack frames: a start-up error is
    a few lines of message drowned in a hundred ``at ...`` lines."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 256 * 1024))
            data = handle.read().decode("utf-8", "replace")
    except OSError:
        return ""
    kept = [line for line in data.splitlines() if not _STACK_FRAME.match(line)]
    return "\n".join(kept[-lines:])
