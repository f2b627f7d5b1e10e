"""The child's side: run one job at a time, report everything over the pipe.

A child never talks to Redis. It reads a job frame, runs the handler, and
answers with progress/log frames and one ``done`` frame. It exits 0 when the
parent closes the pipe. Any other exit fails the job it was running, with
the reason decoded by the parent from the wait status.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import sys
from typing import Any

from setproctitle import setproctitle

from sandboxq import execution
from sandboxq.handlers import Handler
from sandboxq.worker import protocol


def reset_signals() -> None:
    """Undo the parent's signal handling. SIGTERM kills (the parent's timeout
    uses it); SIGINT is ignored, so a Ctrl-C in a terminal, which reaches the
    whole process group, leaves the parent in charge of shutting down."""
    signal.set_wakeup_fd(-1)
    for signum in (signal.SIGTERM, signal.SIGCHLD, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(signum, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


#: prctl(2) option: the signal this process gets when its parent dies.
PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int) -> None:
    """Have the kernel SIGKILL this child when the parent dies (Linux). An
    orphan would run its job with no timeout or memory limit, while the job
    runs again elsewhere once its lease lapses. If the parent died before
    this call, exit now."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        pass
    if os.getppid() != parent_pid:
        os._exit(1)


def serve(index: int, sock: socket.socket, handlers: dict[tuple[str, str], Handler]) -> None:
    """The child's main loop; returns when the parent closes the pipe."""
    idle_title = f"sandboxq child {index}: idle"
    setproctitle(idle_title)

    def report(job_id: str, kind: str, value: str) -> None:
        protocol.send(sock, [kind, job_id, value])

    inbox = protocol.Inbox(sock)
    while (message := inbox.recv()) is not None:
        _kind, job_id, name, data_json, queue, attempts_made, retries, children_json = message
        setproctitle(f"sandboxq child {index}: {name}#{job_id}")
        outcome = execution.run_stored(
            handlers[(queue, name)].func,
            queue,
            job_id,
            name,
            (data_json, children_json),
            attempts_made,
            retries,
            report,
        )
        protocol.send(
            sock,
            [protocol.DONE, job_id, outcome.kind, outcome.value, outcome.traceback, outcome.delay],
        )
        sys.stdout.flush()
        setproctitle(idle_title)


def main(
    index: int,
    sock: socket.socket,
    handlers: dict[tuple[str, str], Handler],
    close_fds: list[int],
    parent_pid: int,
    nice: int = 0,
) -> Any:
    """Entry point right after fork (signals still blocked). Never returns.

    ``nice``: how much lower than the parent this child runs. The parent
    serves every child (results, the next job, leases) and, on a small host,
    Redis too; when CPU-bound jobs fill every core, a lower priority lets
    both run as soon as they wake instead of waiting for a child's time
    slice, which is where a child's idle time between jobs went."""
    code = 0
    try:
        die_with_parent(parent_pid)
        if nice:
            os.nice(nice)
        reset_signals()
        for fd in close_fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        signal.pthread_sigmask(signal.SIG_SETMASK, set())
        serve(index, sock, handlers)
    except SystemExit as exc:  # sys.exit() in a handler: exit with its code
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 70  # EX_SOFTWARE
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        # Skip the atexit handlers inherited from the parent.
        os._exit(code)
