"""Supervision: what the children say, and what becomes of them.

:class:`Supervisor` acts on each frame a child sends (checked first: the
handler runs in that process and may have written anything), holds a
child's pipe while its job's log lines wait for Redis (back-pressure), keeps
each run within its log budget, replaces children that die, and gives up
when children keep dying before their first job. A child's state itself
changes only in the :class:`~sandboxq.worker.pool.Pool`.
"""

from __future__ import annotations

import logging
import selectors
from collections.abc import Callable
from typing import Any

from sandboxq import execution, logs
from sandboxq.metrics import WorkerMetrics
from sandboxq.worker import protocol
from sandboxq.worker.broker import Broker
from sandboxq.worker.child_state import Assignment, Child
from sandboxq.worker.dispatch import Dispatch
from sandboxq.worker.exit_codes import BootError
from sandboxq.worker.pool import MIB, Pool, describe_exit
from sandboxq.worker.settings import WorkerSettings
from sandboxq.worker.settling import Settling
from sandboxq.worker.shutdown import Shutdown

#: Children that die before running any job, in a row, before the worker
#: gives up instead of respawning forever.
MAX_BIRTH_FAILURES = 5

#: A run's log budget: lines past it are dropped in the parent (a count of
#: them ends the log), so one job cannot flood Redis. Far above any log a
#: person reads, and the job's log in Redis keeps its newest 1,000 lines.
LOG_BYTES_PER_RUN = 16 * 1024 * 1024

#: The parent stops reading a child's pipe while its job holds this many
#: log bytes not yet in Redis (back-pressure: the child waits on a full
#: pipe), so the parent's memory stays flat whatever a job sends.
HELD_REPORT_BYTES = 1024 * 1024


class Supervisor:
    """The children's frames and deaths, acted on."""

    def __init__(
        self,
        settings: WorkerSettings,
        pool: Pool,
        broker: Broker,
        dispatch: Dispatch,
        settling: Settling,
        shutdown: Shutdown,
        metrics: WorkerMetrics,
        watch_child: Callable[[Child], None],
        spawn: Callable[[], None],
    ) -> None:
        self._max_result_bytes = settings.max_result_bytes
        self._max_jobs_per_child = settings.max_jobs_per_child
        self._pool = pool
        self._broker = broker
        self._dispatch = dispatch
        self._settling = settling
        self._shutdown = shutdown
        self._metrics = metrics
        self._watch_child = watch_child
        self._spawn = spawn
        self._birth_failures = 0

    # -- what a child sends ------------------------------------------------------
    def on_io(self, child: Child, mask: int) -> None:
        """The child's pipe has room (``mask``: writable) or frames (readable)."""
        if mask & selectors.EVENT_WRITE:
            self._pool.flush(child)
            if not child.outbox:
                self._watch_child(child)
        if mask & selectors.EVENT_READ:
            messages, eof = self._pool.read(child)
            for message in messages:
                self._on_message(child, message)
            if child.foreign:
                self._note_foreign(child)
            if eof:  # it is exiting; the reaper reports why
                self._watch_child(child)
            elif self._broker.report_bytes:  # log lines wait for Redis
                self._hold_if_behind(child)

    def _on_message(self, child: Child, message: list[Any]) -> None:
        """Act on one frame from a child. Every value is checked first: the
        handler runs in that process and may have written anything. A frame
        the protocol does not allow kills that child, which fails its job
        with the reason; nothing a child sends can stop the parent."""
        try:
            kind, job_id = protocol.check_header(message)
            if kind == protocol.READY:
                if self._pool.mark_ready(child):  # its on_child_start hooks ran
                    self._dispatch.feed_children()
                return
            job = child.jobs.get(job_id)
            if job is None:
                return  # a late frame of a job already settled (killed on timeout)
            if kind == protocol.DROPPED:
                self._dropped(child, job)
                return
            if kind == protocol.DONE:
                outcome = protocol.check_done(message, self._max_result_bytes)
            elif kind == protocol.STEP:
                key, result = protocol.check_step(message)
            elif kind == protocol.LEAVING:
                reason = protocol.check_leaving(message)
            else:
                value = protocol.check_report(message)
        except protocol.ProtocolError as exc:
            self._pool.kill(child, f"child sent an invalid frame: {exc}")
            return
        if kind == protocol.DONE:
            self._done(child, job, outcome)
        elif kind == protocol.STEP:
            self._broker.step(job.queue, job_id, key, result)
        elif kind == protocol.LEAVING:
            self._pool.leaving(child, reason)
            logs.event(
                "child leaves after this job, to be replaced: " + reason,
                logging.WARNING,
                **job.log_fields(child.pid),
            )
        elif kind == protocol.LOG:
            self._on_log(job, value)
        else:
            self._broker.report(job.queue, job_id, kind, value)

    def _done(self, child: Child, job: Assignment, outcome: execution.Outcome) -> None:
        self._settling.settle_done(child, job, outcome)
        self._birth_failures = 0
        if self._pool.count_done(child):  # --max-jobs-per-child reached
            self._pool.retire(child)
        self._next_queued(child)

    def _on_log(self, job: Assignment, line: str) -> None:
        """A log line, within the run's budget: past LOG_BYTES_PER_RUN
        lines are dropped (counted; settling says how many), after one line
        that says so."""
        job.log_bytes += len(line)
        if job.log_bytes <= LOG_BYTES_PER_RUN:
            self._broker.report(job.queue, job.job_id, protocol.LOG, line)
            return
        if not job.dropped_lines:
            self._broker.report(
                job.queue,
                job.job_id,
                protocol.LOG,
                f"[sandboxq] this run reached its log budget of {LOG_BYTES_PER_RUN // MIB} MiB: "
                "later lines are dropped (counted at the end)",
            )
            self._metrics.faults.labels(job.queue, "log_budget").inc()
        job.dropped_lines += 1
        job.dropped_bytes += len(line)

    def _next_queued(self, child: Child) -> None:
        """The child ended a job and goes on with the ones queued behind
        it that fit now, if any: those start now."""
        dispatch = self._dispatch
        if child.leaving is not None:  # it exits: what it was sent never starts
            dispatch.queued_back_in_line(child)
            if not child.jobs:  # a child that ran several jobs waits for this
                self._pool.retire(child)
            dispatch.feed_children()
            return
        started = self._pool.start_queued(child)
        if not started:
            dispatch.feed_children()  # it is free, or has a free slot
            return
        if child.kill_reason is not None:
            # Killed, yet its job ended (its handler caught SIGTERM): it is
            # about to start the next one. Make sure it does not run long.
            self._pool.unstart(child, started)
            self._pool.kill(child)
            dispatch.queued_back_in_line(child, started)
            dispatch.feed_children()
            return
        for job in started:
            if job.job_id not in child.dropping:  # else handed back already
                dispatch.job_started(child, job)
            elif job.cancelled:
                # Settled as cancelled when the drop was sent, but the child
                # had started it already: stop it.
                self._settling.stop_running(child, job)
        dispatch.feed_children()  # its next jobs, behind these

    def _dropped(self, child: Child, job: Assignment) -> None:
        """The child did not start a job: one it was asked to drop (handed
        back when the drop was sent), or one a leaving child refused (back
        in line now)."""
        if not self._pool.dropped(child, job):
            self._dispatch.back_in_line(job)
        self._next_queued(child)  # it goes on with the next one, if any

    def stepped(self, queue: str, job_id: str, key: str, status: str) -> None:
        """Tell the child that runs ``job_id`` what became of its step: it
        waits for this before its handler goes on."""
        child = self._pool.running_child(queue, job_id)
        if child is not None:  # else the job ended meanwhile (killed, say)
            self._pool.send(child, [protocol.STEPPED, job_id, key, status])
            self._dispatch.flush(child)

    # -- back-pressure ----------------------------------------------------------
    def _hold_if_behind(self, child: Child) -> None:
        """Back-pressure: while the child's job holds HELD_REPORT_BYTES of
        log lines Redis has not taken yet, stop reading its pipe; the child
        waits on the full pipe (its limits still apply). resume_reading reads
        it again once a round took them."""
        if child.held:
            return
        held = self._broker.held_report_bytes
        if any(held(job.queue, job.job_id) >= HELD_REPORT_BYTES for job in child.jobs.values()):
            self._pool.hold(child, True)
            self._watch_child(child)

    def resume_reading(self) -> None:
        """Read the held pipes again whose jobs' log lines Redis took (down
        to half the hold)."""
        held = self._broker.held_report_bytes
        for child in self._pool.by_pid.values():
            if not child.held or child.closed:
                continue
            if all(
                held(job.queue, job.job_id) < HELD_REPORT_BYTES // 2 for job in child.jobs.values()
            ):
                self._pool.hold(child, False)
                self._watch_child(child)

    def _note_foreign(self, child: Child) -> None:
        """Say once per process which process other than the child wrote to
        its pipe (a copy its handler forked): its bytes were discarded."""
        for pid, count in self._pool.new_foreign_writers(child):
            job = next(iter(child.jobs.values()), None)
            logs.event(
                "ignored what a process other than the worker child wrote to its pipe (a copy "
                "its job's handler forked?): only the child's own frames count",
                logging.WARNING,
                pid=child.pid,
                writer_pid=pid,
                ignored_bytes=count,
                job_id=job.job_id if job else None,
                queue=job.queue if job else None,
            )
            self._metrics.faults.labels(job.queue if job else "", "foreign_writer").inc()

    # -- deaths -------------------------------------------------------------------
    def reap(self, forget: Callable[[Child], None]) -> None:
        """Settle what the children that exited leave behind, and replace
        them (unless stopping)."""
        for child, status in self._pool.reap():
            messages, _eof = self._pool.read(child)  # frames sent just before it died
            for message in messages:
                self._on_message(child, message)
            forget(child)
            self._dispatch.queued_back_in_line(child)  # they never started: another child may
            if child.jobs:
                self._settling.fail_running(child, status)
            elif not child.ready or (not child.retiring and child.jobs_done == 0 and status != 0):
                self._birth_failure(child, status)
            elif child.kill_reason is not None:  # idle, and killed: its exit hooks hung
                logs.event(
                    "killed an idle child: " + child.kill_reason,
                    logging.WARNING,
                    pid=child.pid,
                )
            if not self._shutdown.stopping:
                self._spawn()
        self._dispatch.feed_children()

    def _birth_failure(self, child: Child, status: int) -> None:
        """A child died before its first job: its on_child_start hooks
        failed, hung, or it exited. Give up after MAX_BIRTH_FAILURES in a
        row rather than respawn forever."""
        self._birth_failures += 1
        why = describe_exit(status, child.kill_reason)
        logs.event("a child died before its first job", logging.WARNING, pid=child.pid, why=why)
        if self._birth_failures >= MAX_BIRTH_FAILURES:
            raise BootError(
                f"{self._birth_failures} children in a row died before running a job ({why})"
            )
