"""Starting, identifying and stopping the local stack's OS processes.

Processes are identified by pid plus their kernel start time, so a recycled pid is never mistaken
for one of ours; ``/proc`` is the source of truth (Linux only, like the rest of the stack).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

_PROC = Path("/proc")


def _stat_fields(pid: int) -> list[str] | None:
    """Fields 3 onwards of /proc/<pid>/stat (state, ppid, pgrp, ...), or None if it is gone."""
    try:
        stat = (_PROC / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) may contain spaces and parentheses; fields after it are plain.
    return stat[stat.rindex(")") + 2 :].split()


def start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot, or None when it does not exist."""
    fields = _stat_fields(pid)
    return None if fields is None else int(fields[19])


def is_running(pid: int, ticks: int | None = None) -> bool:
    """Whether ``pid`` is alive (zombies count as gone) and, if given, started at ``ticks``."""
    fields = _stat_fields(pid)
    if fields is None or fields[0] in {"Z", "X"}:
        return False
    return ticks is None or int(fields[19]) == ticks


def cmdline(pid: int) -> list[str]:
    """The argv of ``pid``; empty when it is gone."""
    try:
        raw = (_PROC / str(pid) / "cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def pids_mentioning(marker: str) -> list[int]:
    """Live processes (other than this one) with ``marker`` as one of their arguments' substrings."""
    found = []
    for entry in _PROC.iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        if pid == os.getpid():
            continue
        if any(marker in arg for arg in cmdline(pid)) and is_running(pid):
            found.append(pid)
    return found


def spawn(
    argv: Sequence[str],
    *,
    log_file: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` in its own session, output appended to ``log_file``.

    Its own session keeps a Ctrl-C in the developer's terminal from reaching the servers, which
    outlive ``python -m devstack up``.
    """
    with log_file.open("ab") as log:
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
        )


def _gone(pid: int, child: subprocess.Popen[bytes] | None) -> bool:
    if child is not None and child.pid == pid:
        return child.poll() is not None
    return not is_running(pid)


def wait_gone(pid: int, timeout: float, child: subprocess.Popen[bytes] | None = None) -> bool:
    """Wait up to ``timeout`` seconds for ``pid`` to exit (reaping it if it is our ``child``)."""
    deadline = time.monotonic() + timeout
    while not _gone(pid, child):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def terminate(
    pid: int,
    *,
    sig: int = signal.SIGTERM,
    timeout: float = 30.0,
    child: subprocess.Popen[bytes] | None = None,
) -> bool:
    """Send ``sig``, then SIGKILL if it has not exited after ``timeout``; True if it exited cleanly."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
    if wait_gone(pid, timeout, child):
        return True
    kill(pid, child=child)
    return False


def group_members(pgid: int) -> list[int]:
    """Live processes in process group ``pgid``."""
    members = []
    for entry in _PROC.iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is not None and fields[0] not in {"Z", "X"} and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


def kill(pid: int, *, child: subprocess.Popen[bytes] | None = None, timeout: float = 10.0) -> None:
    """SIGKILL ``pid`` (and its process group, when it leads one) and wait until all are gone.

    Servers are spawned as session leaders, so their group is exactly the server and the
    workers it forked.
    """
    fields = _stat_fields(pid)
    leads_group = fields is not None and int(fields[2]) == pid
    with contextlib.suppress(ProcessLookupError):
        if leads_group:
            os.killpg(pid, signal.SIGKILL)
        else:
            os.kill(pid, signal.SIGKILL)
    if not wait_gone(pid, timeout, child):
        msg = f"process {pid} survived SIGKILL for {timeout}s"
        raise RuntimeError(msg)
    deadline = time.monotonic() + timeout
    while leads_group and group_members(pid):
        if time.monotonic() >= deadline:
            msg = f"process group {pid} survived SIGKILL for {timeout}s: {group_members(pid)}"
            raise RuntimeError(msg)
        time.sleep(0.05)


def read_pid_file(path: Path) -> int | None:
    """The pid in ``path``, or None when the file is missing or garbled."""
    try:
        return int(path.read_text().split()[0])
    except (FileNotFoundError, IndexError, ValueError):
        return None


def log_tail(path: Path, lines: int = 40) -> str:
    """The end of a log file, for error messages about a server that would not start."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])


def pid_if_ours(pid: int | None, marker: str) -> int | None:
    """``pid`` if that process is alive and has ``marker`` in its command line, else None.

    Pid files outlive their processes; the marker (a path only our server has on its command
    line) keeps a recycled pid from being taken for, and signalled as, one of ours.
    """
    if pid is not None and is_running(pid) and any(marker in arg for arg in cmdline(pid)):
        return pid
    return None
