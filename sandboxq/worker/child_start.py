"""A child's start after the fork: the process set-up every child
needs, then the loop that serves its jobs, one at a time (child.py) or
several async jobs at once (async_child.py). Its own module so that neither
loop imports the other."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
from typing import Any

from sandboxq.caps import DEFAULT_MAX_RESULT_BYTES
from sandboxq.handlers import Handler
from sandboxq.worker import async_child, child
from sandboxq.worker.exit_codes import EXIT_INTERNAL_ERROR


def main(
    index: int,
    sock: socket.socket,
    handlers: dict[tuple[str, str], Handler],
    close_fds: list[int],
    parent_pid: int,
    nice: int = 0,
    max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES,
    slots: int = 1,
) -> Any:
    """Entry point right after fork (signals still blocked). Never returns.

    ``nice``: how much lower than the parent this child runs. The parent
    serves every child (results, the next job, leases) and, on a small host,
    Redis too; when CPU-bound jobs fill every core, a lower priority lets
    both run as soon as they wake instead of waiting for a child's time
    slice, which is where a child's idle time between jobs went.

    ``slots``: how many async jobs it runs at once (--async-concurrency);
    1 runs every job alone, with the loop above."""
    code = 0
    try:
        child.die_with_parent(parent_pid)
        child.prefer_for_oom_kill()
        child.own_the_job_processes()
        if nice:
            os.nice(nice)
        child.reset_signals()
        for fd in close_fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        signal.pthread_sigmask(signal.SIG_SETMASK, set())
        child.start_child(index)
        if slots > 1:
            async_child.serve(index, sock, handlers, max_result_bytes, slots)
        else:
            child.serve(index, sock, handlers, max_result_bytes)
        child.exit_child(index)
    except SystemExit as exc:  # sys.exit() in a handler: exit with its code
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        import traceback

        traceback.print_exc()
        code = EXIT_INTERNAL_ERROR
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        # Skip the atexit handlers inherited from the parent.
        os._exit(code)
