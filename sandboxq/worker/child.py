"""The child's side: run one job at a time, report everything over the pipe.

(A child that runs several async jobs at once, --async-concurrency, is
served by async_child.py, which runs each job that must run alone here.)

A child never talks to Redis. Once its ``on_child_start`` hooks ran it says
``ready``; then it reads a job frame, runs the handler, and answers with
progress/log frames and one ``done`` frame. Its next jobs may already wait
on the pipe; before starting one, the child looks whether the parent took it
back meanwhile (``drop``), and then says ``dropped`` instead. It exits 0 when
the parent closes the pipe. Any other exit fails the job it was running,
with the reason decoded by the parent from the wait status.

Only the child itself speaks on the pipe: a process the handler forked (a
copy of the child) that uses the job's reporting raises, and one that
returns from the handler exits there, so it never answers for the job or
reads the next one. A child whose event loop still runs a task a job left
behind (one that ignored its cancellation) says ``leaving`` and exits after
that job, so the task cannot run on inside later jobs.

Whatever the handler does, the child answers with a ``done`` frame it can
send: an exception that cannot be described, a result too big for the pipe
or a value JSON cannot hold all become a failed attempt that says so. After
each job it kills what the job started and left running (see proctree.py).
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable
from typing import Any

from setproctitle import setproctitle

from sandboxq import execution, hooks
from sandboxq.caps import DEFAULT_MAX_RESULT_BYTES
from sandboxq.execution import StoredJob
from sandboxq.handlers import AsyncStepRecorder, Handler, JobContext, StepRecorder
from sandboxq.worker import proctree, protocol


def reset_signals() -> None:
    """Undo the parent's signal handling. SIGTERM kills (the parent's timeout
    uses it); SIGINT is ignored, so a Ctrl-C in a terminal, which reaches the
    whole process group, leaves the parent in charge of shutting down."""
    signal.set_wakeup_fd(-1)
    for signum in (signal.SIGTERM, signal.SIGCHLD, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(signum, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


#: A child's (and its job's processes') oom_score_adj: when the machine runs
#: out of memory, the kernel kills a job before the worker parent, whose
#: death would stop every job. Raising it needs no privilege.
CHILD_OOM_SCORE_ADJ = 1000


def prefer_for_oom_kill() -> None:
    # Not Linux, or no /proc: nothing to do.
    with contextlib.suppress(OSError), open("/proc/self/oom_score_adj", "w") as adj:
        adj.write(str(CHILD_OOM_SCORE_ADJ))


class ForkedCopyError(RuntimeError):
    """A process the job's handler forked tried to speak for the job."""


class ParentPipe:
    """The child's end of its pipe: whole frames, one writer at a time (a
    handler's threads may report at once, and a frame cut by another's
    would corrupt the stream), and only from the child itself: a process
    the handler forked shares the socket, and must not answer for the job.
    A fork hook marks such a copy, so telling costs no system call per frame.
    (A copy forked below Python, where no fork hook runs, still cannot answer
    for the job: the parent discards what any process but the child writes.)"""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.pid = os.getpid()
        #: False in a process forked from this one: known without a system
        #: call per frame.
        self.mine = True
        self._lock = threading.Lock()
        os.register_at_fork(after_in_child=self._forked)

    def _forked(self) -> None:
        self.mine = False

    def report(self, job_id: str, kind: str, value: str) -> None:
        """A job's progress or log line (JobContext's reporter)."""
        self.send([kind, job_id, value])

    def send(self, message: list[Any]) -> None:
        if not self.mine:
            raise ForkedCopyError(
                "only the worker child reports for its job: this process was forked by the "
                f"job's handler (pid {os.getpid()}, child {self.pid})"
            )
        with self._lock:
            protocol.send(self.sock, message)


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
    """The child's main loop; returns when the parent closes the pipe, or
    after a job that left this child unfit for more (``leaving``)."""
    show_idle = functools.partial(setproctitle, f"sandboxq child {index}: idle")
    show_idle()
    pipe = ParentPipe(sock)
    inbox = protocol.Inbox(sock)
    record = blocking_recorder(pipe, inbox)
    pipe.send([protocol.READY, ""])
    # The title says idle only while the child waits for a job: a busy
    # child's next job is on the pipe already, and goes straight from one
    # job's title to the next one's (a title costs a few system calls).
    while (message := inbox.next_message(show_idle)) is not None:
        if message[0] == protocol.DROP:
            continue  # too late: that job ran already
        job = protocol.decode_run(message)
        if inbox.dropped(job.job_id):
            pipe.send([protocol.DROPPED, job.job_id])
            continue
        setproctitle(f"sandboxq child {index}: {job.name}#{job.job_id}")
        if not run_alone(pipe, job, handlers, max_result_bytes, record):
            return  # the parent replaces this child; its loop cannot be cleaned


def blocking_recorder(pipe: ParentPipe, inbox: protocol.Inbox) -> StepRecorder:
    """Durable steps of a job that has the child to itself: the parent
    writes each to Redis and answers; the handler goes on only once it is
    recorded (or could not be). The answer is read here, blocking: nothing
    else reads the pipe while the job runs."""

    def record(job_id: str, key: str, result: str) -> str:
        pipe.send([protocol.STEP, job_id, key, result])
        answer = inbox.wait_for(protocol.STEPPED, job_id, key)
        if answer is None:  # the parent is gone: nothing can be recorded
            raise SystemExit(1)
        return str(answer[3])

    return record


def job_context(
    job: StoredJob,
    report: Callable[[str, str, str], None],
    record: StepRecorder,
    record_async: AsyncStepRecorder | None = None,
) -> JobContext | execution.Outcome:
    """The handler's context of a RUN frame's job, its stored JSON parsed
    here in the child; or the failure of a job whose JSON is bad. One job
    alone (run_alone) and jobs sharing the child (async_child) alike."""
    return execution.stored_context(job, report, record, record_async)


def run_alone(
    pipe: ParentPipe,
    job: StoredJob,
    handlers: dict[tuple[str, str], Handler],
    max_result_bytes: int,
    record: StepRecorder,
) -> bool:
    """Run one job with the child to itself, clean up after it and send its
    ``done``; False when a task it left behind ignored its cancellation (the
    child said ``leaving``, and must exit)."""
    try:
        ctx = job_context(job, pipe.report, record)
        if isinstance(ctx, execution.Outcome):
            outcome = ctx
        else:
            outcome = execution.run(handlers[(job.queue, job.name)].func, ctx, max_result_bytes)
    except SystemExit:
        raise  # sys.exit() in a handler: the child exits with that code
    except BaseException as exc:  # e.g. KeyboardInterrupt raised by the handler
        outcome = execution.Outcome(
            execution.FAILED, execution.describe_error(exc), execution.format_traceback()
        )
    if not pipe.mine:  # a copy the handler forked, back from the handler
        forked_copy_returned(job.job_id)
    if left := proctree.kill_leftovers():
        pipe.report(job.job_id, protocol.LOG, f"killed {left} process(es) the job left running")
    stuck = execution.stuck_tasks()
    if stuck:
        pipe.send([protocol.LEAVING, job.job_id, stuck_reason(stuck)])
    send_done(pipe, job.job_id, outcome)
    sys.stdout.flush()
    return not stuck


def stuck_reason(stuck: int) -> str:
    """Why a child leaves: ``stuck`` tasks ignored their cancellation."""
    return (
        f"{stuck} asyncio task(s) the job left behind ignored their cancellation for "
        f"{execution.LEFTOVER_TASKS_SECONDS:g}s"
    )


def forked_copy_returned(job_id: str) -> None:
    """This process is a copy the handler forked, come back from the
    handler: exit here, before it says anything for the job or reads the
    next one (the child it was forked from answers for the job)."""
    print(
        f"sandboxq: process {os.getpid()}, forked by the handler of job {job_id}, returned "
        "from the handler; it exits here (a forked process should end with os._exit)",
        file=sys.stderr,
    )
    sys.stderr.flush()
    os._exit(0)


def send_done(pipe: ParentPipe, job_id: str, outcome: execution.Outcome) -> None:
    """Send the job's done frame; one the pipe cannot carry (protocol.send
    refuses it before writing anything) becomes a failed attempt saying why.
    execution caps results well below the frame limit: a last line of defence."""
    try:
        pipe.send(
            [protocol.DONE, job_id, outcome.kind, outcome.value, outcome.traceback, outcome.delay],
        )
    except (TypeError, ValueError, OverflowError) as exc:
        message = f"could not send the job's outcome to the worker: {exc}"
        pipe.send([protocol.DONE, job_id, execution.FAILED, message, "", 0.0])


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
