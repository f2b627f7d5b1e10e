"""A child that runs several async jobs at once (--async-concurrency N > 1).

The jobs of ``async def`` handlers share the child's event loop: up to N run
at once, each in a task of its own, so an I/O-bound job that awaits (a
webhook, an HTTP call) leaves the child free for others. Any other job runs
alone, as in child.py, once the async jobs before it ended; async jobs after
it wait for it in turn. The parent keeps the same rule (``Pool.fits``), so
it knows which of the jobs it sent a child has started.

Each job keeps what is its own: its reports carry its id (its JobContext
says which), its durable steps wait for their own answer, and the tasks it
starts inherit a context variable naming it, so the tasks it leaves behind
are cancelled when it ends without touching the other jobs' tasks. The
parent stops one job (a timeout, a cancel) with a ``stop`` frame: its task
is cancelled, and its ``done`` follows. A job that will not stop, a crash or
a memory kill costs the whole child: every job it runs fails with the same
reason (the parent says so).

Processes a job started and left running are killed when the child has no
job left: while other jobs run, they cannot be told apart. A task that
ignores its cancellation makes the child leave, as in child.py: it takes no
new job (it answers ``dropped`` to any it is sent), lets the jobs it runs
end, and exits once the parent closed its pipe.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import socket
import sys
import threading
import weakref
from collections.abc import Coroutine
from typing import Any

from setproctitle import setproctitle

from sandboxq import execution
from sandboxq.execution import StoredJob
from sandboxq.handlers import Handler
from sandboxq.worker import child, proctree, protocol

#: The job a task works for: set in each job's task, inherited by the tasks
#: it starts (their context is a copy), read when a task is made.
_JOB: contextvars.ContextVar[str | None] = contextvars.ContextVar("sandboxq_job", default=None)


def serve(
    index: int,
    sock: socket.socket,
    handlers: dict[tuple[str, str], Handler],
    max_result_bytes: int,
    slots: int,
) -> None:
    """The child's main loop with ``slots`` > 1; returns when the parent
    closes the pipe, or after a job that left this child unfit for more."""
    idle_title = f"sandboxq child {index}: idle"
    setproctitle(idle_title)
    pipe = child.ParentPipe(sock)
    inbox = protocol.Inbox(sock)
    record_alone = child.blocking_recorder(pipe, inbox)
    shared = Slots(index, pipe, inbox, handlers, max_result_bytes, slots)
    pipe.send([protocol.READY, ""])
    while (message := inbox.recv()) is not None:
        if message[0] != protocol.RUN:
            continue  # a drop, stop or answer that came too late: its job ended
        job = protocol.decode_run(message)
        if shared.concurrent(job):
            inbox.pending.appendleft(message)
            shared.run_together()
            if shared.leaving:
                shared.refuse_until_closed()
                return
            continue
        if inbox.dropped(job.job_id):
            pipe.send([protocol.DROPPED, job.job_id])
            continue
        setproctitle(f"sandboxq child {index}: {job.name}#{job.job_id}")
        if not child.run_alone(pipe, job, handlers, max_result_bytes, record_alone):
            return  # the parent replaces this child; its loop cannot be cleaned
        setproctitle(idle_title)


class Slots:
    """The async jobs a child runs at once, on its event loop."""

    def __init__(
        self,
        index: int,
        pipe: child.ParentPipe,
        inbox: protocol.Inbox,
        handlers: dict[tuple[str, str], Handler],
        max_result_bytes: int,
        slots: int,
    ) -> None:
        self.index = index
        self.pipe = pipe
        self.inbox = inbox
        self.handlers = handlers
        self.max_result_bytes = max_result_bytes
        self.slots = slots
        #: Whether each handler's jobs share the child (by queue and name).
        self._concurrent = {
            key: execution.runs_concurrently(found.func) for key, found in handlers.items()
        }
        #: The running jobs' handler tasks, by job id, in start order.
        self.running: dict[str, asyncio.Task[execution.Outcome]] = {}
        #: The tasks each running job started (and those they started).
        self._tasks_of: dict[str, weakref.WeakSet[asyncio.Task[Any]]] = {}
        #: The tasks that see a job through (this module's, not the job's).
        self._own: weakref.WeakSet[asyncio.Task[Any]] = weakref.WeakSet()
        #: Answers to steps a task or a thread of a job waits for, by (job
        #: id, key).
        self._answers: dict[
            tuple[str, str], concurrent.futures.Future[str] | asyncio.Future[str]
        ] = {}
        #: The running jobs the parent stopped ("stop": a timeout, a cancel).
        self._stopped: set[str] = set()
        #: A task the child left behind ignored its cancellation.
        self.leaving = False
        self.loop = execution.handler_loop()
        self.loop.set_task_factory(self._new_task)  # type: ignore[arg-type]
        self._thread = threading.get_ident()
        self._wake: asyncio.Event | None = None

    def concurrent(self, job: StoredJob) -> bool:
        """Whether the job shares the child (an ``async def`` handler's)."""
        return self._concurrent[(job.queue, job.name)]

    # -- the loop ---------------------------------------------------------------
    def run_together(self) -> None:
        """Run async jobs until none runs and the next job must run alone
        (or the parent closed the pipe, or the child is leaving)."""
        self.loop.run_until_complete(self._serve())
        setproctitle(f"sandboxq child {self.index}: idle")

    async def _serve(self) -> None:
        wake = self._wake = asyncio.Event()
        fd = self.inbox.fileno()
        self._own.add(asyncio.current_task())  # type: ignore[arg-type]
        self.loop.add_reader(fd, wake.set)
        watching = True
        try:
            while True:
                self.inbox.read_available()
                if self.inbox.closed and watching:
                    self.loop.remove_reader(fd)  # an end of file stays readable
                    watching = False
                    self._no_more_answers()
                self._take_messages()
                if not self.running and self._alone_next():
                    return
                await wake.wait()
                wake.clear()
        finally:
            if watching:
                self.loop.remove_reader(fd)

    def _alone_next(self) -> bool:
        """With no job running: whether to hand the child back to the loop
        that runs jobs alone (or ends it)."""
        if self.leaving or self.inbox.closed:
            return True
        pending = self.inbox.pending
        return bool(pending) and not self.concurrent(protocol.decode_run(pending[0]))

    def _take_messages(self) -> None:
        """Act on what the parent sent: answers and stops wherever they
        wait (they concern jobs that started), then start the jobs that
        fit, in order."""
        pending = self.inbox.pending
        if any(message[0] in (protocol.STEPPED, protocol.STOP) for message in pending):
            for message in [m for m in pending if m[0] in (protocol.STEPPED, protocol.STOP)]:
                pending.remove(message)
                self._control(message)
        while pending:
            message = pending[0]
            if message[0] == protocol.DROP:
                pending.popleft()
                continue  # too late: that job started
            job = protocol.decode_run(message)
            if self.leaving:
                pending.popleft()
                self.pipe.send([protocol.DROPPED, job.job_id])
                continue
            if not self.fits(job):
                break  # it waits for a slot, or for the jobs before it to end
            pending.popleft()
            if self.inbox.dropped(job.job_id):
                self.pipe.send([protocol.DROPPED, job.job_id])
                continue
            self._start(job)

    def fits(self, job: StoredJob) -> bool:
        """The rule ``Pool.fits`` keeps in the parent: an async job starts
        while fewer than ``slots`` run; any other runs alone (here: never,
        it goes back to the loop of child.py once none runs)."""
        return (
            self.concurrent(job)
            and len(self.running) < self.slots
            and job.job_id not in self.running  # its frames name it by id alone
        )

    def _control(self, message: list[Any]) -> None:
        if message[0] == protocol.STOP:
            task = self.running.get(message[1])
            if task is not None:  # else it ended meanwhile: its done is on its way
                self._stopped.add(message[1])
                task.cancel()
            return
        waiting = self._answers.pop((message[1], message[2]), None)
        if waiting is not None and not waiting.done():  # (a cancelled task's is)
            waiting.set_result(str(message[3]))

    # -- one job ------------------------------------------------------------------
    def _start(self, job: StoredJob) -> None:
        context = contextvars.copy_context()
        context.run(_JOB.set, job.job_id)
        self._tasks_of[job.job_id] = weakref.WeakSet()
        ctx = child.job_context(job, self.pipe.report, self.record, self.record_async)
        if isinstance(ctx, execution.Outcome):  # its stored JSON is bad: it ends at once
            work = _ended(ctx)
        else:
            func = self.handlers[(job.queue, job.name)].func
            work = execution.run_async(func, ctx, self.max_result_bytes)
        self.running[job.job_id] = self.loop.create_task(work, context=context)
        self._own.add(self.loop.create_task(self._see_through(job.job_id)))
        self._title()

    async def _see_through(self, job_id: str) -> None:
        """Wait for the job's handler, clean up after it, send its done."""
        handler = self.running[job_id]
        try:
            outcome = await handler
        except asyncio.CancelledError as exc:
            if job_id in self._stopped:  # the parent stopped it, and says how it ends
                outcome = execution.Outcome(execution.FAILED, "stopped by the worker")
            else:  # the handler's own (it raised CancelledError): a failed attempt
                outcome = self._raised(exc)
        except BaseException as exc:  # one the loop does not raise out (SystemExit does)
            outcome = self._raised(exc)
        self._stopped.discard(job_id)
        if not self.pipe.mine:  # a copy the handler forked, back from the handler
            child.forked_copy_returned(job_id)
        stuck = await self._clean_up(job_id)
        if stuck:
            self.leaving = True
            self.pipe.send([protocol.LEAVING, job_id, child.stuck_reason(stuck)])
        child.send_done(self.pipe, job_id, outcome)
        sys.stdout.flush()
        # Only now: the parent counts the slot free once it read the done.
        del self.running[job_id]
        self._title()
        if self._wake is not None:
            self._wake.set()

    @staticmethod
    def _raised(exc: BaseException) -> execution.Outcome:
        """A handler that raised what run_async lets through (not an
        Exception), as child.py reports it: a failed attempt."""
        return execution.Outcome(
            execution.FAILED, execution.describe_error(exc), execution.format_traceback()
        )

    async def _clean_up(self, job_id: str) -> int:
        """Cancel the tasks the job left running, and give them a second to
        end; the last job to end also takes what no job owns, and the
        processes left running. Returns how many tasks ignored it."""
        left = [task for task in self._tasks_of.pop(job_id, ()) if not task.done()]
        last = len(self.running) == 1
        if last:
            left = [
                task
                for task in asyncio.all_tasks(self.loop)
                if not task.done() and task not in self._own
            ]
        for task in left:
            task.cancel()
        if left:
            await asyncio.wait(left, timeout=execution.LEFTOVER_TASKS_SECONDS)
        # Only while no other job runs: one may have started meanwhile.
        if len(self.running) == 1 and (killed := proctree.kill_leftovers()):
            line = f"killed {killed} process(es) the job left running"
            self.pipe.report(job_id, protocol.LOG, line)
        return sum(not task.done() for task in left)

    def _new_task(
        self, loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any], **kwargs: Any
    ) -> asyncio.Task[Any]:
        """Every task made on the loop: one made inside a job (its context
        names the job) is that job's."""
        task = asyncio.Task(coro, loop=loop, **kwargs)
        context = kwargs.get("context")
        owner = context.get(_JOB) if context is not None else _JOB.get()
        if owner is not None and (tasks := self._tasks_of.get(owner)) is not None:
            tasks.add(task)
        return task

    def _title(self) -> None:
        setproctitle(f"sandboxq child {self.index}: {len(self.running)} async job(s)")

    # -- durable steps ----------------------------------------------------------------
    def record(self, job_id: str, key: str, result: str) -> str:
        """A durable step of a plain function (``job.step`` not awaited):
        its answer comes through the loop. On the loop's own thread, it is
        read at once, blocking: the other jobs wait for one round trip to
        Redis; a thread of the job waits for the loop."""
        if threading.get_ident() != self._thread:
            answer: concurrent.futures.Future[str] = concurrent.futures.Future()
            self._answers[(job_id, key)] = answer
            self.pipe.send([protocol.STEP, job_id, key, result])
            return answer.result()
        self.pipe.send([protocol.STEP, job_id, key, result])
        found = self.inbox.wait_for(protocol.STEPPED, job_id, key)
        if found is None:  # the parent is gone: nothing can be recorded
            raise SystemExit(1)
        self._wake_up()  # what came meanwhile waits in the inbox
        return str(found[3])

    def _no_more_answers(self) -> None:
        """The parent closed the pipe: a step waiting for its answer will
        never get it, and nothing more can be recorded (the child exits, as
        child.py's does)."""
        for waiting in self._answers.values():
            if not waiting.done():
                waiting.set_exception(SystemExit(1))
        self._answers.clear()

    async def record_async(self, job_id: str, key: str, result: str) -> str:
        """``await job.step(...)``: the other jobs run while Redis records it."""
        answer: asyncio.Future[str] = self.loop.create_future()
        self._answers[(job_id, key)] = answer
        self.pipe.send([protocol.STEP, job_id, key, result])
        return await answer

    def _wake_up(self) -> None:
        if self._wake is not None:
            self._wake.set()

    # -- leaving ------------------------------------------------------------------------
    def refuse_until_closed(self) -> None:
        """A leaving child takes no job: it answers ``dropped`` to those it
        is sent until the parent closes its pipe (once it knows, and no job
        of this child runs), so no job it was sent is left without answer."""
        while (message := self.inbox.recv()) is not None:
            if message[0] == protocol.RUN:
                self.pipe.send([protocol.DROPPED, message[1]])


async def _ended(outcome: execution.Outcome) -> execution.Outcome:
    """A job's task that has nothing to run: its outcome is known already."""
    return outcome
