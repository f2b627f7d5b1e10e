"""Stopping the worker parent: the drain, the forced stop, giving up on Redis.

:class:`Shutdown` owns whether the worker is stopping and its deadlines. A
drain (SIGTERM, SIGINT, ``Worker.stop()``) starts no new job and waits up
to ``shutdown_timeout`` for those in flight; past it, or on a forced stop
(SIGQUIT, a second SIGINT), the jobs in flight are handed back and their
children killed, and Redis gets one reply timeout more to take the
hand-backs before the worker gives up on it.
"""

from __future__ import annotations

import logging
import time

from sandboxq import logs
from sandboxq.worker.broker import Broker
from sandboxq.worker.pool import Pool
from sandboxq.worker.settings import WorkerSettings


class Shutdown:
    """Whether and how the worker stops, and when it may exit."""

    def __init__(self, settings: WorkerSettings, pool: Pool, broker: Broker) -> None:
        self._settings = settings
        self._pool = pool
        self._broker = broker
        #: No new jobs: the worker drains (or, ``forced``, hands them back).
        self.stopping = False
        #: When the drain ends and the forced stop begins (monotonic).
        self.stop_deadline = 0.0
        #: The jobs in flight were handed back (exit code EXIT_FORCED).
        self.forced = False
        #: After a forced stop, when the worker stops waiting for Redis.
        self.final_deadline = 0.0

    def begin(self, *, force: bool, why: str) -> None:
        """Stop taking jobs; ``force``: hand the jobs in flight back now."""
        now = time.monotonic()
        if not self.stopping:
            self.stopping = True
            self.stop_deadline = now + self._settings.shutdown_timeout
            self._broker.stop_waiting()  # an idle wait may last a lease
            logs.event(
                "shutting down: no new jobs, finishing those in flight",
                logging.INFO,
                signal=why,
                in_flight=self._pool.running_jobs(),
                timeout_s=self._settings.shutdown_timeout,
            )
        if force:
            self.stop_deadline = now

    def deadlines(self) -> list[float]:
        """When the loop must look at the shutdown again (monotonic)."""
        if not self.stopping:
            return []
        if self.forced:
            return [self.stop_deadline, self.final_deadline]
        return [self.stop_deadline]

    def done(self) -> bool:
        """True once the worker may exit: nothing in flight and nothing left
        to send to Redis, or, after a forced stop, when Redis had its chance
        to take the hand-backs (``final_deadline``)."""
        broker = self._broker
        busy = self._pool.busy()
        if not busy and not broker.has_pending() and not broker.wake_fetch_armed:
            if not self.forced:
                logs.log.info("sandboxq worker stopped cleanly")
            return True
        now = time.monotonic()
        if self.forced:
            if now >= self.final_deadline:
                self._give_up_on_redis()
                return True
            return False
        if now < self.stop_deadline:
            return False
        self.forced = True
        self.final_deadline = now + broker.reply_timeout + 1.0
        for child in busy:
            # The child may have started any of them (a queued one too,
            # since it last said so): each may have run.
            for job in self._pool.take_all_jobs(child):
                broker.hand_back(job.queue, job.job_id, ran=True)
            self._pool.kill(child)
        return False

    def _give_up_on_redis(self) -> None:
        """Stopping while Redis does not answer: what is still pending can
        only come back through the leases."""
        broker = self._broker
        handing_back = (*broker.to_hand_back.values(), *broker.interrupted.values())
        left = [job_id for ids in handing_back for job_id in ids]
        logs.event(
            "could not reach Redis before stopping: jobs not handed back and results "
            "not recorded run again once their leases lapse",
            logging.ERROR,
            job_ids=",".join(left),
            unrecorded=sum(len(entries) for entries in broker.finishes.values()),
        )
