"""A job's processes: the child that runs it and whatever the handler started.

A handler may start subprocesses (ffmpeg, ImageMagick, a shell pipeline).
They are part of the job: their memory counts against the child's limit,
and a timeout, a memory kill or a forced stop ends them with the child.
Two Linux mechanisms make that hold:

- each child leads its own process group (``setpgid`` right after fork), so
  a signal to the group reaches every subprocess that stayed in it, even
  after the child itself died;
- each child is a *subreaper* (``PR_SET_CHILD_SUBREAPER``), so a subprocess
  whose own parent exits is re-parented to the child, not to init, and the
  tree below the child stays whole. Walking it through
  ``/proc/<pid>/task/<tid>/children`` also finds what left the group
  (``setsid``, daemonizing).

Memory is the sum of the tree's resident sets, as ``ps`` shows them (pages
a process shares with its parent after fork count in both).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import time

_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")

#: prctl(2) options.
PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36

#: How long a child waits for the leftovers of a job to die and be reaped
#: (SIGKILL is immediate, except for a process stuck in the kernel).
LEFTOVER_WAIT_SECONDS = 5.0


def prctl(option: int, value: int) -> bool:
    """Call prctl(2); False where it is not available (not Linux)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(option, value, 0, 0, 0)) == 0
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        return False


def children_of(pid: int) -> list[int]:
    """The direct children of ``pid``, forked by any of its threads."""
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as listing:
                found += [int(child) for child in listing.read().split()]
        except (OSError, ValueError):
            continue
    return found


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``, parents before their children."""
    found: list[int] = []
    seen = {pid}
    todo = [pid]
    while todo:
        for child in children_of(todo.pop()):
            if child not in seen:
                seen.add(child)
                found.append(child)
                todo.append(child)
    return found


def rss_bytes(pid: int) -> int:
    """Resident memory of ``pid`` (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE_SIZE
    except (OSError, IndexError, ValueError):
        return 0


def tree_rss_bytes(pid: int) -> int:
    """Resident memory of ``pid`` and every process below it."""
    return rss_bytes(pid) + sum(rss_bytes(p) for p in descendants(pid))


def start_time(pid: int) -> int | None:
    """When ``pid`` started (clock ticks since boot), to tell it from a later
    process that reused its pid; None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return int(stat.read().rsplit(b")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


#: Processes as seen at one moment: pid and start time.
Snapshot = list[tuple[int, int]]


def signal_tree(leader: int, signum: int) -> Snapshot:
    """Send ``signum`` to the process group ``leader`` leads and to every
    process below it (some may have left the group). Returns the processes
    below it, so they can be found again once the leader has died and they
    were re-parented away (see :func:`kill_snapshot`)."""
    below = [(pid, started) for pid in descendants(leader) if (started := start_time(pid))]
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(leader, signum)
    for pid in (leader, *(pid for pid, _started in below)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signum)
    return below


def kill_snapshot(snapshot: Snapshot) -> None:
    """SIGKILL the processes of ``snapshot`` that are still the same ones."""
    for pid, started in snapshot:
        if start_time(pid) == started:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


def is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except (OSError, IndexError):
        return False


def kill_leftovers() -> int:
    """In a child, after a job: SIGKILL whatever the job started and left
    running, and reap it (and any zombie it left). Returns how many were
    still running. Costs one ``waitpid`` when the job started nothing."""
    try:
        os.waitpid(-1, os.WNOHANG)
    except ChildProcessError:
        return 0  # no child process at all: the common case
    me = os.getpid()
    running = [pid for pid in descendants(me) if not is_zombie(pid)]
    deadline = time.monotonic() + LEFTOVER_WAIT_SECONDS
    while below := descendants(me):  # zombies are listed until reaped
        for pid in below:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        # Reap what died; grandchildren re-parent to this subreaper as their
        # parents die, and the next round reaps them.
        while True:
            try:
                pid, _status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return len(running)
            if pid == 0:
                break
        if time.monotonic() >= deadline:
            break  # stuck in the kernel: reaped after a later job
        time.sleep(0.001)
    return len(running)
