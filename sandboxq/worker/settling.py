"""Settling: how each job this worker leased ends, and the line it logs.

:class:`Settling` owns the jobs whose finish waits for Redis and the jobs
with no handler here that this worker handed back moments ago. It turns a
child's outcome (or its death) into a finish entry for the broker; stops
and settles jobs a person cancelled; fails a job whose record cannot be
run; hands back, then fails, a job no handler here runs (a typo, or a new
job type reaching an old worker mid-deploy); and logs each job once Redis
confirmed how it ended.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from sandboxq import execution, logs
from sandboxq.execution import record_problem
from sandboxq.fast import CorruptRecord
from sandboxq.handlers import Handler
from sandboxq.metrics import Health, WorkerMetrics, crash_kind
from sandboxq.worker import protocol
from sandboxq.worker.broker import Broker
from sandboxq.worker.child_state import Assignment, Child
from sandboxq.worker.dispatch import Dispatch
from sandboxq.worker.pool import MIB, Pool, describe_exit
from sandboxq.worker.settings import WorkerSettings
from sandboxq.worker.shutdown import Shutdown

#: How long a job no handler here runs goes back to the queue before it is
#: offered again (within --unknown-name-grace).
UNKNOWN_NAME_RETRY_SECONDS = 5.0

#: When a job this worker has no handler for comes back to it while it
#: waits for a worker that has one, this worker hands it back at once and
#: fetches nothing for this long: the other workers, woken by the hand-back,
#: get the first look. (Equal wake-ups would otherwise go to the same worker
#: every time: the one whose wait was armed first.)
STAND_ASIDE_SECONDS = 0.2


@dataclass(slots=True)
class Finishing:
    """A job settled by a child, waiting for Redis to confirm."""

    name: str
    attempt: int
    pid: int
    duration_ms: int


class Settling:
    """Outcomes, cancels, unknown job names, and the finished-job log."""

    def __init__(
        self,
        settings: WorkerSettings,
        handlers: dict[tuple[str, str], Handler],
        pool: Pool,
        broker: Broker,
        dispatch: Dispatch,
        shutdown: Shutdown,
        metrics: WorkerMetrics,
        health: Health,
    ) -> None:
        self._shutdown = shutdown
        self._settings = settings
        self._handlers = handlers
        self._pool = pool
        self._broker = broker
        self._dispatch = dispatch
        self._metrics = metrics
        self._health = health
        #: Jobs settled here whose finish waits for Redis, by (queue, id).
        self._finishing: dict[tuple[str, str], Finishing] = {}
        #: Jobs with no handler here this worker handed back, until when it
        #: stands aside if they come back to it (monotonic).
        self._handed_back_unknown: dict[tuple[str, str], float] = {}

    # -- outcomes -----------------------------------------------------------------
    def settle(self, child: Child, job: Assignment, outcome: execution.Outcome) -> None:
        """A job a child ran ended with ``outcome``: its finish goes to Redis."""
        self._pool.job_ended(child, job)
        duration = time.monotonic() - job.started
        duration_ms = int(duration * 1000)
        self._dispatch.note_job_time(duration)
        if not job.start_reported:  # it started (and ended) before the round
            self._dispatch.report_start(job)
        if job.dropped_lines:  # the end of its log says what the budget dropped
            self._broker.report(
                job.queue,
                job.job_id,
                protocol.LOG,
                f"[sandboxq] dropped {job.dropped_lines} log line(s), "
                f"{job.dropped_bytes / MIB:.1f} MiB, over this run's budget",
            )
        self._broker.finish(job.queue, execution.finish_entry(job.job_id, job.fields, outcome))
        self._finishing[(job.queue, job.job_id)] = Finishing(
            job.name, job.attempt, child.pid, duration_ms
        )
        if outcome.kind not in (execution.COMPLETED, execution.CANCELLED):
            logs.event(
                "job attempt failed",
                logging.WARNING,
                **job.log_fields(child.pid),
                duration_ms=duration_ms,
                error=outcome.value,
            )

    def settle_done(self, child: Child, job: Assignment, outcome: execution.Outcome) -> None:
        """A child's "done" for ``job``: one the parent stopped in a child it
        shares ends cancelled or timed out, unless it completed anyway."""
        if job.stop_reason is not None and outcome.kind != execution.COMPLETED:
            if job.stop_cancels:
                outcome = execution.Outcome(execution.CANCELLED, "stopped while running")
            else:
                outcome = execution.Outcome(execution.FAILED, job.stop_reason)
        self.settle(child, job, outcome)

    def _settle_unstarted(self, job: Assignment) -> None:
        """Settle a job no child started as cancelled."""
        outcome = execution.Outcome(execution.CANCELLED, "never started")
        self._broker.finish(job.queue, execution.finish_entry(job.job_id, job.fields, outcome))
        self._finishing[(job.queue, job.job_id)] = Finishing(job.name, job.attempt, 0, 0)

    def fail_running(self, child: Child, status: int) -> None:
        """A child died: every job it ran ends with the same reason (one
        stopped because a person cancelled it ends cancelled)."""
        reason = describe_exit(status, child.kill_reason)
        jobs = list(child.jobs.values())
        if len(jobs) > 1:  # say what its death cost
            reason += f"; the child was running {len(jobs)} jobs, which all failed with it"
        if not child.cancelling:
            self._metrics.crashes.labels(crash_kind(reason)).inc()
        for job in jobs:
            if child.cancelling:
                how = "stopped while running"
                if child.sigkilled:
                    grace = self._settings.kill_grace
                    how = f"killed while running: SIGTERM did not end it in {grace:g}s"
                self.settle(child, job, execution.Outcome(execution.CANCELLED, how))
            elif job.stop_cancels:
                self.settle(child, job, execution.Outcome(execution.CANCELLED, reason))
            else:
                self.settle(child, job, execution.Outcome(execution.FAILED, reason))

    # -- cancels -------------------------------------------------------------------
    def cancel(self, queue: str, job_id: str) -> None:
        """A person cancelled a job this worker holds (cancel.lua). Running:
        its processes get SIGTERM, then SIGKILL after the kill grace (as on a
        timeout), and it is settled as cancelled once its child is gone.
        Prefetched and not started: settled as cancelled now, never run.
        Otherwise its result is on its way to Redis, where finish.lua lets
        an outcome that ends it for good stand and cancels any other."""
        if (buffered := self._dispatch.take_buffered(queue, job_id)) is not None:
            self._settle_unstarted(buffered)
            return
        if (running := self._pool.running_child(queue, job_id)) is not None:
            if running.kill_reason is None and job_id not in running.dropping:
                self.stop_running(running, running.jobs[job_id])
            return
        for child in self._pool.by_pid.values():
            for job in child.queued:
                if job.queue == queue and job.job_id == job_id and job_id not in child.dropping:
                    self._pool.drop(child, job, cancelled=True)
                    self._dispatch.flush(child)
                    self._settle_unstarted(job)
                    return

    def stop_running(self, child: Child, job: Assignment) -> None:
        """Stop a running job that was cancelled: the timeout's path. Alone
        in its child: SIGTERM to the job's processes, SIGKILL after the kill
        grace; the reaper settles it as cancelled. Sharing its child: its
        task is cancelled ("stop"), and its done settles it as cancelled;
        the child is killed only if the task does not stop within the
        grace."""
        if self._pool.stop(child, job, "cancelled", cancels=True):
            self._dispatch.flush(child)
            how = "cancelling its task (its child is killed if it does not stop within the grace)"
        else:
            how = "SIGTERM, SIGKILL after the kill grace"
        logs.event(
            f"job cancelled while running: stopping it ({how})",
            logging.INFO,
            **job.log_fields(child.pid),
            kill_grace_s=self._settings.kill_grace,
        )

    # -- jobs leased with no handler here, or no usable record -------------------------
    def runnable(
        self, queue: str, job_id: str, fields: dict[str, Any] | CorruptRecord
    ) -> Handler | None:
        """The handler that runs a leased job here, or None once the job is
        taken care of: failed at once if its record cannot be run, handed
        back (stopping, or no handler here within the grace), or failed
        with no handler here past the grace."""
        if isinstance(fields, CorruptRecord):
            self._fail_corrupt(queue, job_id, str(fields))
            return None
        if (problem := record_problem(fields)) is not None:
            self._fail_corrupt(queue, job_id, problem)
            return None
        if self._shutdown.stopping:
            self._broker.hand_back(queue, job_id)
            return None
        name = fields.get("name", "")
        found = self._handlers.get((queue, name))
        if found is not None:
            return found
        if self._stand_aside(queue, job_id):
            return None
        outcome = self._unknown_name(queue, job_id, name, fields)
        if outcome.kind == execution.UNSTARTED:
            # Until a little after it is due again (see _stand_aside).
            self._handed_back_unknown[(queue, job_id)] = time.monotonic() + (
                UNKNOWN_NAME_RETRY_SECONDS + 1.0
            )
        self._broker.finish(queue, execution.finish_entry(job_id, fields, outcome))
        return None

    def _fail_corrupt(self, queue: str, job_id: str, reason: str) -> None:
        """A job whose stored record cannot be run: it fails for good with
        ``reason`` (naming the field), and only it: the rest of its batch
        and its queue go on. Its id is as the broker leased it (the stored
        bytes, when they are not UTF-8)."""
        logs.event(
            "failed a job whose stored record cannot be run",
            logging.ERROR,
            queue=queue,
            job_id=job_id,
            error=reason,
        )
        self._metrics.faults.labels(queue, "corrupt_record").inc()
        outcome = execution.Outcome.error(reason, unrecoverable=True)
        self._broker.finish(queue, execution.finish_entry(job_id, {}, outcome))

    def _stand_aside(self, queue: str, job_id: str) -> bool:
        """A job with no handler here, that this worker handed back moments
        ago, is back: give it back at once (it never ran: nothing is spent,
        whatever its options) and fetch nothing for STAND_ASIDE_SECONDS, so a
        worker that knows it takes it (the hand-back wakes one). False when
        the job is not one of those."""
        now = time.monotonic()
        expired = [key for key, until in self._handed_back_unknown.items() if until <= now]
        for key in expired:
            del self._handed_back_unknown[key]
        if (queue, job_id) not in self._handed_back_unknown:
            return False
        self._broker.hand_back(queue, job_id)
        self._broker.hold_fetches(STAND_ASIDE_SECONDS)
        return True

    def _unknown_name(
        self, queue: str, job_id: str, name: str, fields: dict[str, Any]
    ) -> execution.Outcome:
        """A job no handler here runs: a typo, or a new job type reaching an
        old worker mid-deploy. Within --unknown-name-grace of its creation it
        goes back to the queue for UNKNOWN_NAME_RETRY_SECONDS, never having
        run (no attempt spent, even for manual_retry_only), so a newer worker
        can take it; after that it fails."""
        known = sorted(job for q, job in self._handlers if q == queue)
        problem = f"no handler for job {name!r} in queue {queue!r} (this worker knows: "
        problem += f"{', '.join(known)})"
        self._metrics.unknown_names.labels(queue).inc()
        age = self._broker.now_ms() / 1000 - float(fields.get("created_at") or 0)
        grace = self._settings.unknown_name_grace
        if age < grace:
            logs.event(
                f"{problem}; handed back for {UNKNOWN_NAME_RETRY_SECONDS:g}s, for a worker "
                "that knows it",
                logging.WARNING,
                queue=queue,
                job_id=job_id,
                job_name=name,
            )
            return execution.Outcome(execution.UNSTARTED, problem, delay=UNKNOWN_NAME_RETRY_SECONDS)
        message = f"{problem}; no worker ran it within {grace:g}s"
        logs.event(message, logging.WARNING, queue=queue, job_id=job_id, job_name=name)
        return execution.Outcome.error(message, unrecoverable=True)

    # -- what Redis confirmed -------------------------------------------------------
    def finished(self, queue: str, job_id: str, status: str) -> None:
        """Redis took a job's finish: log it, count it. ``settled:<status>``:
        the finish went twice (its first reply was lost) and the first one
        counted."""
        done = self._finishing.pop((queue, job_id), None)
        if done is None:
            return
        repeated = status.startswith("settled:")
        outcome = status.removeprefix("settled:")
        self._metrics.settled(queue, done.name, outcome, done.duration_ms)
        if not repeated and outcome != "lost":
            minute = self._broker.now_ms() // 60_000
            self._broker.stats.note(queue, minute, done.name, outcome, done.duration_ms)
        self._health.job_finished()
        if outcome == "completed" and not repeated and not logs.log.isEnabledFor(logging.INFO):
            return  # the common case, at WARNING: no line to build
        if repeated:
            message, level = f"job {outcome} (already settled by this worker)", logging.INFO
        elif outcome == "lost":
            message = "job lost: no longer leased by this worker (recovered or removed)"
            level = logging.WARNING
        else:
            message, level = f"job {outcome}", logging.INFO
        logs.event(
            message,
            level,
            job_id=job_id,
            job_name=done.name,
            queue=queue,
            attempt=done.attempt,
            pid=done.pid,
            duration_ms=done.duration_ms,
        )
