"""The pool of forked children: fork, pipes, reap, limits, recycling.

The pool knows processes and pipes, not Redis: the one place a child's state
(:class:`~sandboxq.worker.child_state.Child`) changes. It tells the parent's
parts what happened (frames, deaths with a readable reason) and they decide.

What a child's pipe carries is untrusted: the kernel names the process that
wrote each chunk (SO_PASSCRED), and only the child's own bytes are decoded.
A child gets no job before it said ``ready`` (its ``on_child_start`` hooks
ran), and a child that does not get through its hooks (start or exit)
within ``hook_timeout`` is killed.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import signal
import socket
import struct
import time
from collections.abc import Iterator, Sequence
from typing import Any

from sandboxq.handlers import Handler
from sandboxq.worker import child_start, proctree, protocol
from sandboxq.worker.child_state import Assignment, Child
from sandboxq.worker.settings import WorkerSettings

#: Signals the parent handles; blocked around fork() so a child never runs
#: one of the parent's handlers before it has reset them.
HANDLED_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGCHLD, signal.SIGHUP, signal.SIGQUIT}

MIB = 1024 * 1024

#: The most the parent reads from one child's pipe in one turn of its loop,
#: in READ_SIZE chunks: a child that writes without pause (a log flood) must
#: not keep the parent reading while the other children and Redis wait.
READS_PER_TURN = 16

#: SCM_CREDENTIALS: pid, uid, gid (struct ucred), sent with every chunk.
_UCRED = struct.Struct("iII")
_CREDENTIALS_SPACE = socket.CMSG_SPACE(_UCRED.size)


def _sender(ancillary: list[tuple[int, int, bytes]]) -> int:
    """The pid the kernel says wrote a chunk (0 if it said nothing)."""
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
            return int(_UCRED.unpack_from(data)[0])
    return 0


def describe_exit(status: int, kill_reason: str | None) -> str:
    """A readable reason for a child's death, from its wait status."""
    if kill_reason:
        return kill_reason
    if os.WIFSIGNALED(status):
        signum = os.WTERMSIG(status)
        try:
            name = signal.Signals(signum).name
        except ValueError:
            name = "unknown signal"
        reason = f"child killed by signal {signum} ({name})"
        if signum == signal.SIGKILL:
            reason += ", probably by the out-of-memory killer"
        return reason
    return f"child exited with code {os.waitstatus_to_exitcode(status)}"


class Pool:
    """The children and the jobs they hold: the one place a child's state
    changes."""

    def __init__(
        self,
        settings: WorkerSettings,
        handlers: dict[tuple[str, str], Handler],
        *,
        inherited_fds: list[int] | None = None,
    ) -> None:
        #: How many async jobs a child runs at once (--async-concurrency).
        self.slots = settings.async_concurrency
        self.handlers = handlers
        self.max_jobs_per_child = settings.max_jobs_per_child
        self.max_memory_bytes = settings.max_memory_per_child
        self.kill_grace = settings.kill_grace
        self.hook_timeout = settings.child_hook_timeout
        self.child_nice = settings.child_nice
        self.max_result_bytes = settings.max_result_bytes
        self.inherited_fds = inherited_fds or []  # parent fds a child must close
        self.by_pid: dict[int, Child] = {}
        self._free_indexes = list(range(settings.pool_size, 0, -1))
        #: When enforce_limits next has something to do (monotonic); 0 when
        #: a job started or a kill began since it last looked.
        self._limits_due = 0.0

    # -- lifecycle ---------------------------------------------------------
    def spawn(self, close_fds: list[int] | None = None) -> Child:
        """Fork a child; it closes the other children's pipes, the parent's
        own descriptors (``inherited_fds``) and ``close_fds``."""
        index = self._free_indexes.pop()
        parent_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        # Every chunk the parent reads says which process wrote it.
        parent_sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        close_in_child = [c.sock.fileno() for c in self.by_pid.values()]
        close_in_child += [parent_sock.fileno(), *self.inherited_fds, *(close_fds or [])]
        parent_pid = os.getpid()
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED_SIGNALS)
        try:
            pid = os.fork()
            if pid == 0:  # pragma: no cover - runs in the child, which never returns
                child_start.main(
                    index,
                    child_sock,
                    self.handlers,
                    close_in_child,
                    parent_pid,
                    self.child_nice,
                    self.max_result_bytes,
                    self.slots,
                )
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        # The child makes itself a group leader too; doing it on both sides
        # means the group exists whichever runs first (a kill may come soon).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.setpgid(pid, pid)
        child_sock.close()
        parent_sock.setblocking(False)
        child = Child(index, pid, parent_sock)
        self.by_pid[pid] = child
        self._limits_due = 0.0  # its start hooks' deadline
        return child

    def children(self) -> Iterator[Child]:
        return iter(list(self.by_pid.values()))

    def busy(self) -> list[Child]:
        return [c for c in self.by_pid.values() if c.busy]

    def reap(self) -> list[tuple[Child, int]]:
        """Collect every exited child: ours with their wait status. Unknown
        pids (the parent may be PID 1 in a container) are reaped and ignored.

        Before reaping one of ours, SIGKILL its process group: the job's
        subprocesses outlive a child that crashed or was killed. While the
        child is a zombie its pid cannot be reused, so the group is still
        the job's (waitid with WNOWAIT looks without reaping)."""
        dead = []
        while True:
            try:
                found = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                break
            if found is None:
                break
            if (ours := self.by_pid.get(found.si_pid)) is not None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(found.si_pid, signal.SIGKILL)
                proctree.kill_snapshot(ours.signalled)
            pid, status = os.waitpid(found.si_pid, 0)  # a zombie: returns at once
            child = self.by_pid.pop(pid, None)
            if child is not None:  # the caller drains and closes its pipe
                self._free_indexes.append(child.index)
                dead.append((child, status))
        return dead

    def retire(self, child: Child) -> None:
        """Ask an idle child to exit (end of its pipe); it is reaped later.
        Its on_child_exit hooks get hook_timeout, then it is killed."""
        if not child.retiring:
            child.retiring = True
            child.retire_deadline = time.monotonic() + self.hook_timeout
            self._limits_due = 0.0
        if child.outbox:
            return  # closing now would cut a frame; it cannot be busy anyway
        with contextlib.suppress(OSError):
            child.sock.shutdown(socket.SHUT_WR)

    def kill(self, child: Child, reason: str | None = None, sig: int = signal.SIGKILL) -> None:
        """Signal a child the parent gave up on, with every process its job
        started. It is never given another job, even if it survives the
        signal or its job finishes meanwhile."""
        if reason and child.kill_reason is None:
            child.kill_reason = reason
        if sig == signal.SIGTERM:
            child.term_sent_at = time.monotonic()
            self._limits_due = 0.0
        child.sigkilled = child.sigkilled or sig == signal.SIGKILL
        self.retire(child)
        child.signalled += proctree.signal_tree(child.pid, sig)

    def running_jobs(self) -> int:
        """Jobs running in the children now (not children: with
        --async-concurrency a child runs several)."""
        return sum(len(child.jobs) for child in self.by_pid.values())

    def running_child(self, queue: str, job_id: str) -> Child | None:
        """The child running that job, if one does."""
        for child in self.by_pid.values():
            running = child.jobs.get(job_id)
            if running is not None and running.queue == queue:
                return child
        return None

    # -- what the parent learnt of a child -------------------------------------
    def mark_ready(self, child: Child) -> bool:
        """Its on_child_start hooks ran: it takes jobs from now on. False if
        it said so before."""
        if child.ready:
            return False
        child.ready = True
        return True

    def leaving(self, child: Child, reason: str) -> None:
        """The child exits after its jobs ("leaving"): it gets no more."""
        child.leaving = reason

    def hold(self, child: Child, held: bool) -> None:
        """Stop (or go back to) reading the child's pipe: back-pressure."""
        child.held = held

    def new_foreign_writers(self, child: Child) -> list[tuple[int, int]]:
        """The processes other than the child that wrote to its pipe since
        last asked, with the bytes each wrote (each is told once)."""
        found = [(pid, count) for pid, count in child.foreign.items() if count >= 0]
        for pid, _count in found:
            child.foreign[pid] = -1
        return found

    def job_ended(self, child: Child, job: Assignment) -> None:
        """The child no longer runs ``job`` (it ended, or the child died)."""
        del child.jobs[job.job_id]

    def count_done(self, child: Child) -> bool:
        """The child finished a job; True once it did --max-jobs-per-child."""
        child.jobs_done += 1
        limit = self.max_jobs_per_child
        return limit is not None and limit > 0 and child.jobs_done >= limit

    def dropped(self, child: Child, job: Assignment) -> bool:
        """The child did not start ``job``; True if the parent had asked it
        to drop that job (and handed it back then)."""
        del child.jobs[job.job_id]
        if job.job_id in child.dropping:
            child.dropping.discard(job.job_id)
            return True
        return False

    def unstart(self, child: Child, jobs: Sequence[Assignment]) -> None:
        """Jobs start_queued started in a child being killed: they never run
        there after all."""
        for job in jobs:
            del child.jobs[job.job_id]

    def take_queued(self, child: Child) -> list[Assignment]:
        """The jobs queued on a child that will not run them, in order."""
        jobs = list(child.queued)
        child.queued.clear()
        return jobs

    def take_all_jobs(self, child: Child) -> list[Assignment]:
        """Every job the child runs or has queued but those it was asked to
        drop (a forced stop hands them back); it holds none after."""
        jobs = [*child.jobs.values(), *child.queued]
        child.jobs.clear()
        child.queued.clear()
        return [job for job in jobs if job.job_id not in child.dropping]

    # -- pipes ---------------------------------------------------------------
    def send(self, child: Child, message: list[Any]) -> None:
        """Queue a frame for the child (``flush`` writes it)."""
        child.outbox += protocol.encode(message)

    def fits(self, child: Child, job: Assignment) -> bool:
        """Whether ``child`` starts ``job`` as soon as it reads it (with no
        job queued before it): when it runs nothing, or when both the job
        and those it runs are async and a slot is free. The child keeps the
        same rule (async_child.Slots.fits), so the parent knows what it
        started."""
        running = child.jobs
        if not running:
            return True
        return (
            job.concurrent
            and len(running) < self.slots
            and next(iter(running.values())).concurrent
            and job.job_id not in running  # its frames name it by id alone
        )

    def assign(self, child: Child, job: Assignment) -> bool:
        """Send ``job`` to ``child``: it starts now if it fits (``fits``),
        else it waits on the pipe behind the child's other jobs. A queued
        job's frame is only buffered: ``flush`` sends it, with any others.
        Returns whether it started now."""
        runs_now = not child.queued and (not child.jobs or self.fits(child, job))
        if runs_now:
            job.started = time.monotonic()
            child.jobs[job.job_id] = job
            self._limits_due = 0.0
        else:
            child.queued.append(job)
        child.outbox += protocol.encode_run(job.run)
        if runs_now:
            self.flush(child)
        return runs_now

    def start_queued(self, child: Child) -> list[Assignment]:
        """The child ended a job: the jobs queued behind it that fit now, in
        order, are what it starts."""
        queued = child.queued
        if self.slots == 1:  # the common case, in short
            if not queued or child.jobs:
                return []
            job = queued.popleft()
            job.started = time.monotonic()
            child.jobs[job.job_id] = job
            self._limits_due = 0.0
            return [job]
        started = []
        while queued and self.fits(child, queued[0]):
            job = queued.popleft()
            job.started = time.monotonic()
            child.jobs[job.job_id] = job
            started.append(job)
            self._limits_due = 0.0
        return started

    def stop(self, child: Child, job: Assignment, reason: str, *, cancels: bool) -> bool:
        """Stop one running job: in a child it shares, cancel its task (a
        "stop" frame, which ``flush`` sends: True), and kill the child only
        if it does not stop within the kill grace (enforce_limits). A job
        that runs alone takes its child with it: SIGTERM, then SIGKILL after
        the grace (False)."""
        if self.slots > 1 and job.concurrent:
            if job.stop_reason is None:
                job.stop_reason, job.stop_cancels = reason, cancels
                job.stop_sent = time.monotonic()
                child.outbox += protocol.encode([protocol.STOP, job.job_id])
                self._limits_due = 0.0
            return True
        child.cancelling = child.cancelling or cancels
        self.kill(child, reason, signal.SIGTERM)
        return False

    def drop(self, child: Child, job: Assignment, *, cancelled: bool = False) -> None:
        """Ask the child not to start a queued job (``cancelled``: a person
        cancelled it, and it was settled so). It answers "dropped", or runs
        the job if it had started it already."""
        job.cancelled = job.cancelled or cancelled
        child.dropping.add(job.job_id)
        child.outbox += protocol.encode([protocol.DROP, job.job_id])

    def flush(self, child: Child) -> None:
        """Send what the socket takes now; the rest waits for writability."""
        try:
            sent = child.sock.send(child.outbox)
        except BlockingIOError:
            return
        except OSError as exc:
            if exc.errno in (errno.EPIPE, errno.ECONNRESET):
                child.outbox.clear()  # the child is dying; the reaper reports it
                return
            raise
        del child.outbox[:sent]

    def read(self, child: Child) -> tuple[list[list[Any]], bool]:
        """The whole frames the child has sent (at most READS_PER_TURN
        chunks of them), and whether its end closed. Chunks another process
        wrote (a copy the handler forked) are counted in ``child.foreign``
        and dropped."""
        messages: list[list[Any]] = []
        for _ in range(READS_PER_TURN):
            try:
                data, ancillary, _flags, _address = child.sock.recvmsg(
                    protocol.READ_SIZE, _CREDENTIALS_SPACE
                )
            except BlockingIOError:
                return messages, False
            except OSError:
                child.closed = True
                return messages, True
            if not data:
                child.closed = True
                return messages, True
            sender = _sender(ancillary)
            if sender != child.pid:
                child.foreign[sender] = child.foreign.get(sender, 0) + len(data)
                continue
            try:
                messages += child.reader.feed(data)
            except ValueError as exc:  # a corrupt stream: that child is done for
                self.kill(child, f"child sent a corrupt frame: {exc}")
                child.closed = True
                return messages, True
            if len(data) < protocol.READ_SIZE:  # drained: select says when more comes
                return messages, False
        return messages, False

    # -- limits -------------------------------------------------------------
    def enforce_limits(self, now: float) -> Sequence[Child]:
        """Timeouts (SIGTERM, then SIGKILL after the grace; or a "stop"
        frame for a job that shares its child), memory, and the hooks'
        time, when one is due (the loop calls this every turn). Returns the
        children sent a frame, for the caller to flush."""
        if now < self._limits_due:
            return ()
        self._enforce_hook_time(now)
        stopped: list[Child] = []
        for child in self.busy():
            if child.sigkilled:
                continue  # only the reaper has something left to do
            if child.term_sent_at is not None:
                if now - child.term_sent_at >= self.kill_grace:
                    self.kill(child)
                continue
            for job in list(child.jobs.values()):
                if job.stop_reason is not None:
                    if now - job.stop_sent >= self.kill_grace:
                        self.kill(child, self._would_not_stop(job))
                        break
                elif job.timeout is not None and now - job.started >= job.timeout:
                    reason = f"timed out after {job.timeout}s"
                    if not self.stop(child, job, reason, cancels=False):
                        break  # the child is being killed
                    stopped.append(child)
            if child.term_sent_at is not None or child.sigkilled:
                continue
            if self.max_memory_bytes is not None:
                rss = proctree.tree_rss_bytes(child.pid)
                if rss > self.max_memory_bytes:
                    self.kill(
                        child,
                        f"memory limit exceeded ({rss // MIB} MiB > "
                        f"{self.max_memory_bytes // MIB} MiB)",
                    )
        self._limits_due = self._next_deadline(now)
        return stopped

    def _would_not_stop(self, job: Assignment) -> str:
        """Why a child is killed because one of its jobs did not stop: the
        reason every job it runs fails with."""
        what = "was cancelled" if job.stop_cancels else job.stop_reason
        return (
            f"job {job.job_id} {what} and its task did not stop within the "
            f"{self.kill_grace:g}s kill grace, so its child was killed"
        )

    def _enforce_hook_time(self, now: float) -> None:
        """Kill a child whose on_child_start hooks (before "ready") or
        on_child_exit hooks (retiring, idle) ran out of time: a hook that
        hangs must not cost a slot of the pool for good."""
        for child in self.by_pid.values():
            if child.sigkilled or child.busy:
                continue
            if not child.ready and now - child.born >= self.hook_timeout:
                self.kill(
                    child, f"its on_child_start hooks did not finish in {self.hook_timeout:g}s"
                )
            elif child.retiring and now >= child.retire_deadline:
                self.kill(
                    child, f"its on_child_exit hooks did not finish in {self.hook_timeout:g}s"
                )

    def next_deadline(self) -> float | None:
        """When ``enforce_limits`` next has something to do (monotonic)."""
        return None if self._limits_due == math.inf else self._limits_due

    def _next_deadline(self, now: float) -> float:
        deadlines = []
        for child in self.by_pid.values():
            if child.sigkilled or child.busy:
                continue
            if not child.ready:
                deadlines.append(child.born + self.hook_timeout)
            elif child.retiring:
                deadlines.append(child.retire_deadline)
        for child in self.busy():
            if child.sigkilled:
                continue
            if child.term_sent_at is not None:
                deadlines.append(child.term_sent_at + self.kill_grace)
            else:
                for job in child.jobs.values():
                    if job.stop_reason is not None:
                        deadlines.append(job.stop_sent + self.kill_grace)
                    elif job.timeout is not None:
                        deadlines.append(job.started + job.timeout)
            if self.max_memory_bytes is not None:
                deadlines.append(now + 0.1)  # memory is sampled every 100 ms
        return min(deadlines, default=math.inf)
