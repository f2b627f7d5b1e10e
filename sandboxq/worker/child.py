"""The child's side: run one job at a time, report everything over the pipe.

A child never talks to Redis. It reads a job frame, runs the handler, and
answers with progress/log frames and one ``done`` frame. Its next jobs may
already wait on the pipe; before starting one, the child looks whether the
parent took it back meanwhile (``drop``), and then says ``dropped`` instead.
It exits 0 when the parent closes the pipe. Any other exit fails the job it
was running, with the reason decoded by the parent from the wait status.

Whatever the handler does, the child answers with a ``done`` frame it can
send: an exception that cannot be described, a result too big for the pipe
or a value JSON cannot hold all become a failed attempt that says so. After
each job it kills what the job started and left running (see proctree.py).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
from typing import Any

from setproctitle import setproctitle

from sandboxq import execution, hooks
from sandboxq.caps import DEFAULT_MAX_RESULT_BYTES
from sandboxq.handlers import Handler
from sandboxq.worker import proctree, protocol


def reset_signals() -> None:
    """Undo the parent's signal handling. SIGTERM kills (the parent's timeout
    uses it); SIGINT is ignored, so a Ctrl-C in a terminal, which reaches the
    whole process group, leaves the parent in charge of shutting down."""
    signal.set_wakeup_fd(-1)
    for signum in (signal.SIGTERM, signal.SIGCHLD, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(signum, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def die_with_parent(parent_pid: int) -> None:
    """Have the kernel SIGKILL this child when the parent dies (Linux). An
    orphan would run its job with no timeout or memory limit, while the job
    runs again elsewhere once its lease lapses. If the parent died before
    this call, exit now."""
    proctree.prctl(proctree.PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent_pid:
        os._exit(1)


def own_the_job_processes() -> None:
    """Lead a process group of its own and adopt orphaned descendants, so
    the parent's signals reach everything a job starts (proctree.py). Its
    stdin is /dev/null: outside the terminal's foreground group, a read from
    the terminal would stop the child (SIGTTIN)."""
    os.setpgid(0, 0)
    proctree.prctl(proctree.PR_SET_CHILD_SUBREAPER, 1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)


def serve(
    index: int,
    sock: socket.socket,
    handlers: dict[tuple[str, str], Handler],
    max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES,
) -> None:
    """The child's main loop; returns when the parent closes the pipe."""
    idle_title = f"sandboxq child {index}: idle"
    setproctitle(idle_title)

    def report(job_id: str, kind: str, value: str) -> None:
        protocol.send(sock, [kind, job_id, value])

    def record(job_id: str, key: str, result: str) -> str:
        """A durable step: the parent writes it to Redis and answers; the
        handler goes on only once it is recorded (or could not be)."""
        protocol.send(sock, [protocol.STEP, job_id, key, result])
        answer = inbox.wait_for(protocol.STEPPED, job_id, key)
        if answer is None:  # the parent is gone: nothing can be recorded
            raise SystemExit(1)
        return str(answer[3])

    inbox = protocol.Inbox(sock)
    while (message := inbox.recv()) is not None:
        if message[0] == protocol.DROP:
            continue  # too late: that job ran already
        _kind, job_id, name, data_json, queue, attempts_made, retries, children_json, steps_json = (
            message
        )
        if inbox.dropped(job_id):
            protocol.send(sock, [protocol.DROPPED, job_id])
            continue
        setproctitle(f"sandboxq child {index}: {name}#{job_id}")
        try:
            outcome = execution.run_stored(
                handlers[(queue, name)].func,
                queue,
                job_id,
                name,
                (data_json, children_json, steps_json),
                attempts_made,
                retries,
                report,
                max_result_bytes,
                record,
            )
        except SystemExit:
            raise  # sys.exit() in a handler: the child exits with that code
        except BaseException as exc:  # e.g. KeyboardInterrupt raised by the handler
            outcome = execution.Outcome(
                execution.FAILED, execution.describe_error(exc), execution.format_traceback()
            )
        if left := proctree.kill_leftovers():
            report(job_id, protocol.LOG, f"killed {left} process(es) the job left running")
        send_done(sock, job_id, outcome)
        sys.stdout.flush()
        setproctitle(idle_title)


def send_done(sock: socket.socket, job_id: str, outcome: execution.Outcome) -> None:
    """Send the job's done frame; one the pipe cannot carry (protocol.send
    refuses it before writing anything) becomes a failed attempt saying why.
    execution caps results well below the frame limit: a last line of defence."""
    try:
        protocol.send(
            sock,
            [protocol.DONE, job_id, outcome.kind, outcome.value, outcome.traceback, outcome.delay],
        )
    except (TypeError, ValueError, OverflowError) as exc:
        message = f"could not send the job's outcome to the worker: {exc}"
        protocol.send(sock, [protocol.DONE, job_id, execution.FAILED, message, "", 0.0])


def start_child(index: int) -> None:
    """Run the on_child_start hooks; one that raises kills this child before
    its first job, which the parent counts as a death at birth."""
    try:
        hooks.run(hooks.CHILD_START)
    except BaseException:
        print(f"sandboxq child {index}: an on_child_start hook failed:", file=sys.stderr)
        raise


def exit_child(index: int) -> None:
    """Run the on_child_exit hooks of a child leaving cleanly; a failure is
    printed, and the child exits 0 all the same (its jobs are done)."""
    try:
        hooks.run(hooks.CHILD_EXIT)
    except Exception:
        import traceback

        print(f"sandboxq child {index}: an on_child_exit hook failed:", file=sys.stderr)
        traceback.print_exc()


def main(
    index: int,
    sock: socket.socket,
    handlers: dict[tuple[str, str], Handler],
    close_fds: list[int],
    parent_pid: int,
    nice: int = 0,
    max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES,
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
        own_the_job_processes()
        if nice:
            os.nice(nice)
        reset_signals()
        for fd in close_fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        signal.pthread_sigmask(signal.SIG_SETMASK, set())
        start_child(index)
        serve(index, sock, handlers, max_result_bytes)
        exit_child(index)
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
