"""Rounds: when the parent goes to Redis, and what it does with the answer.

A round is one Redis round trip of the parent (``Broker.start_round``): it
carries whatever is pending (finishes, reports, hand-backs, renewals) and,
when there is room, a fetch. :class:`Rounds` owns when the next round is
due (at once when a child is free, else batched a little while every child
is busy), the backoff while Redis is unreachable, and the idle wait for
work; it hands each part what a round brought back.
"""

from __future__ import annotations

import logging
import os
import time

import redis

from sandboxq import logs
from sandboxq.metrics import WorkerMetrics
from sandboxq.worker.broker import Broker, RoundResult
from sandboxq.worker.dispatch import Dispatch, Room
from sandboxq.worker.exit_codes import BootError
from sandboxq.worker.settling import Settling
from sandboxq.worker.shutdown import Shutdown
from sandboxq.worker.supervision import Supervisor
from sandboxq.worker.trouble import is_transient

#: Redis reconnect backoff, seconds.
RECONNECT_MIN, RECONNECT_MAX = 0.1, 5.0

#: While every child is busy, what children sent waits at most this long,
#: or until this many entries, to share a round with more.
BATCH_SECONDS = 0.002
BATCH_ENTRIES = 64


class Rounds:
    """Starting rounds, and acting on what they did."""

    def __init__(
        self,
        queues: list[str],
        procs: int,
        url_shown: str,
        broker: Broker,
        dispatch: Dispatch,
        settling: Settling,
        supervisor: Supervisor,
        shutdown: Shutdown,
        metrics: WorkerMetrics,
    ) -> None:
        self._queues = queues
        self._procs = procs
        self._url_shown = url_shown  # for logs: no password
        self._broker = broker
        self._dispatch = dispatch
        self._settling = settling
        self._supervisor = supervisor
        self._shutdown = shutdown
        self._metrics = metrics
        #: After a failed round, no round before this (monotonic).
        self.retry_at = 0.0
        self._backoff = RECONNECT_MIN
        #: A round worked once: the worker said it is ready.
        self._ready = False

    # -- when ---------------------------------------------------------------------
    def start(self, room: Room) -> None:
        """Start a round when one is due and none is in flight; its result
        comes back through the loop (``done``)."""
        now = time.monotonic()
        if self._broker.in_flight or now < self.retry_at:
            return
        if self.next_at(now, room) > now:
            return
        fetch = room.fetch > 0 and self._broker.maybe_work
        if result := self._broker.start_round(
            room.fetch if fetch else 0, room.start_now if fetch else 0
        ):
            self.done(result)

    def next_at(self, now: float, room: Room) -> float:
        """When the next round is due (monotonic; ``now`` if it is). At once
        when a child is free (for a job, or with nothing to do but report),
        when the buffer runs low, or when something cannot wait; at the next
        timer otherwise. While every child is busy, results wait a little
        (BATCH_SECONDS, or BATCH_ENTRIES of them) to share a round with
        more: fewer, bigger rounds cost the parent and Redis less per job."""
        broker = self._broker
        if self._shutdown.stopping:
            return now if broker.has_pending() else broker.next_timer()
        fetch = room.fetch > 0 and broker.maybe_work and not broker.fetches_held(now)
        refill = fetch and room.fetch >= room.refill_at
        if refill and broker.pending_since is not None and room.queued_cover >= BATCH_SECONDS:
            # Every child has its next job: the refill rides with the results
            # batched below. A round at once would land on the CPU of the
            # child that just sent one, between its two jobs.
            refill = False
        if broker.has_urgent() or (fetch and room.start_now > 0) or refill:
            return now
        due = broker.next_timer()
        if broker.fetches_held(now):
            due = min(due, broker.fetch_hold_until)
        if (since := broker.pending_since) is not None:
            if room.free > 0 or broker.pending_entries >= BATCH_ENTRIES:
                return now
            due = min(due, since + BATCH_SECONDS)
        return due

    def due(self, now: float, room: Room) -> float:
        """When the loop must look at Redis next (monotonic): the round in
        flight's deadline, else the next round's time, never before the
        retry time after a failed one."""
        if (deadline := self._broker.round_deadline) is not None:
            redis_due = deadline
        else:
            redis_due = self.next_at(now, room)
        return max(redis_due, self.retry_at)

    # -- the idle wait ------------------------------------------------------------
    def arm_wait(self, room: Room) -> None:
        """Nothing to fetch: wait for a wake-up, which brings jobs for the
        free children with it (Broker.arm_wait)."""
        broker = self._broker
        if (
            self._shutdown.stopping
            or broker.maybe_work
            or broker.armed
            or time.monotonic() < self.retry_at
            or not room.fetch
            # Standing aside: a wait could take the wake-up meant for others.
            or broker.fetches_held(time.monotonic())
        ):
            return
        try:
            broker.arm_wait(room.start_now)
        except redis.RedisError as exc:
            self._trouble(exc)

    # -- what a round did ------------------------------------------------------------
    def done(self, result: RoundResult) -> None:
        """A round ended: act on what it did, then on its error if any."""
        if result.unsupported is not None:
            raise BootError(result.unsupported)
        for warning in result.warnings:
            logs.event(warning, logging.WARNING, url=self._url_shown)
        # What the round did before any error happened anyway: act on it first.
        self.after(result)
        if result.error is not None:
            self._trouble(result.error)
            return
        if self._backoff > RECONNECT_MIN:  # it had trouble: say that it is over
            logs.event("Redis reachable again", logging.INFO, url=self._url_shown)
        self._backoff = RECONNECT_MIN
        if result.worked:
            self._dispatch.note_round_trip(result.round_trip)
        if not self._ready and result.worked:
            self._ready = True
            # Supervisors and tests wait for this line: print it at any level.
            logs.always(
                f"sandboxq worker ready pid={os.getpid()} queues={','.join(self._queues)} "
                f"procs={self._procs}"
            )

    def _trouble(self, exc: Exception) -> None:
        """Wait Redis trouble out: back off (0.1 s doubling to 5 s), keep
        what is pending, and let the children run on meanwhile."""
        if is_transient(exc):
            message, level = "Redis unreachable or refusing writes", logging.WARNING
        else:
            message, level = "Redis refused a command", logging.ERROR
        logs.event(
            f"{message}, retrying in {self._backoff:.1f}s",
            level,
            url=self._url_shown,
            error=f"{type(exc).__name__}: {exc}",
        )
        self.retry_at = time.monotonic() + self._backoff
        self._backoff = min(self._backoff * 2, RECONNECT_MAX)
        self._broker.cancel_wait()

    def after(self, result: RoundResult) -> None:
        """Hand each part what a round (or the idle wait) brought back."""
        self._note_queue_faults(result)
        for queue, job_id, status in result.finished:
            self._settling.finished(queue, job_id, status)
        self._log_hand_backs(result)
        for queue, key, why in result.broken_schedules:
            logs.event(
                "cannot fire a schedule; looking again in a minute",
                logging.ERROR,
                queue=queue,
                schedule=key,
                error=why,
            )
        for queue in result.rate_limited:
            self._metrics.rate_limit_waits.labels(queue).inc()
        self._note_recovered(result)
        for queue, job_id in result.cancel_requested:
            self._settling.cancel(queue, job_id)
        for queue, job_id, key, status in result.stepped:
            self._supervisor.stepped(queue, job_id, key, status)
        for queue, created in result.scheduled:
            logs.event("enqueued scheduled jobs", logging.INFO, queue=queue, count=created)
        for queue, job_id in result.still_running:
            logs.event(
                "lease lapsed while the job ran here; kept this run",
                logging.WARNING,
                queue=queue,
                job_id=job_id,
            )
        for index, (queue, job_id, fields) in enumerate(result.fetched):
            if (found := self._settling.runnable(queue, job_id, fields)) is not None:
                assert isinstance(fields, dict)  # runnable said so
                started = index < result.started_now
                self._dispatch.add_leased(queue, job_id, found, fields, started)
        self._supervisor.resume_reading()
        self._dispatch.feed_children()

    def _log_hand_backs(self, result: RoundResult) -> None:
        for queue, returned in result.reclaimed:
            logs.event(
                "handed back jobs a lost fetch reply had leased here; they never started",
                logging.WARNING,
                queue=queue,
                job_ids=",".join(returned),
            )
        for queue, handed_back in result.handed_back:
            if self._shutdown.forced:
                message = "stopped before jobs finished; handed them back to the queue"
                level = logging.WARNING
            else:  # stopping, or they waited too long behind slow jobs
                message, level = "handed prefetched jobs back to the queue", logging.INFO
            logs.event(message, level, queue=queue, released=",".join(handed_back))

    def _note_recovered(self, result: RoundResult) -> None:
        for queue, requeued, failed, cancelled in result.recovered:
            self._metrics.stalled.labels(queue, "requeued").inc(len(requeued))
            self._metrics.stalled.labels(queue, "failed").inc(len(failed))
            self._metrics.stalled.labels(queue, "cancelled").inc(len(cancelled))
            logs.event(
                "recovered stalled jobs",
                logging.WARNING,
                queue=queue,
                requeued=",".join(requeued),
                failed=",".join(failed),
                cancelled=",".join(cancelled),
            )

    def _note_queue_faults(self, result: RoundResult) -> None:
        """Log and count the queues a round found at fault (this worker
        leaves them alone for a while, serving the rest), and those usable
        again."""
        for queue, kind, reason in result.faults:
            retry_in = self._broker.faults[queue].until - time.monotonic()
            logs.event(
                "queue paused on this worker: its settings or data in Redis cannot be used; "
                f"the other queues go on, and it is tried again in {retry_in:.0f}s",
                logging.ERROR,
                queue=queue,
                error=reason,
            )
            self._metrics.faults.labels(queue, kind).inc()
            self._metrics.paused_queues.labels(queue).set(1)
        for queue in result.recovered_queues:
            logs.event("queue usable again on this worker", logging.INFO, queue=queue)
            self._metrics.paused_queues.labels(queue).set(0)
