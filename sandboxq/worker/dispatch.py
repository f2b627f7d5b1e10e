"""Dispatch: which leased jobs go to which child, and when, and prefetching.

:class:`Dispatch` owns the local buffer of leased jobs no child has yet
and the moving averages that decide how far ahead the parent leases. It
feeds the free children (with --async-concurrency, their free slots),
queues a few jobs behind each busy child's when prefetching, puts back in
line the jobs a child will not run, and hands back to the queue the
prefetched jobs that waited too long for a child of this worker.

Prefetching: when jobs are short next to a round trip to Redis, the parent
leases more jobs than it has free children. Each busy child gets its next
jobs queued on its pipe, and a local buffer holds about as many more as the
children get through in a few rounds, so no child waits for Redis.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from sandboxq import execution, logs
from sandboxq.execution import StoredJob
from sandboxq.handlers import Handler
from sandboxq.worker.broker import Broker
from sandboxq.worker.child_state import Assignment, Child
from sandboxq.worker.pool import Pool
from sandboxq.worker.settings import WorkerSettings
from sandboxq.worker.shutdown import Shutdown

#: Prefetch only while this worker's jobs take at most this long on average:
#: for longer jobs a round is a small share of their time.
PREFETCH_MAX_JOB_SECONDS = 0.1
#: The longest a prefetched job waits for a child of this worker (behind a
#: job that turned out slow, say) before it goes back to the queue, where
#: any worker may take it.
PREFETCH_MAX_WAIT_SECONDS = 0.5
#: The local buffer holds what the children get through in this many rounds
#: (a fetch refills half of it: the bigger the batch, the less each job
#: costs the parent and Redis), and at most this many jobs per child.
BUFFER_ROUND_TRIPS = 4
BUFFER_PER_CHILD = 16
#: Jobs queued behind a busy child's job: enough to keep it busy this long
#: (so the parent answers its results in batches, not one by one), and at
#: most this many.
QUEUE_COVER_SECONDS = 0.008
MAX_QUEUED_PER_CHILD = 16
#: How often the parent looks for prefetched jobs that waited too long.
STALE_CHECK_SECONDS = 0.05
#: Weight of the newest sample in the moving averages of job time and of
#: the round's time.
AVERAGE_WEIGHT = 0.2


class Room(NamedTuple):
    """How many jobs the worker has room for (``Dispatch.room``)."""

    #: Jobs to lease now.
    fetch: int = 0
    #: Of those, how many a free child takes at once.
    start_now: int = 0
    #: Children with no job.
    free: int = 0
    #: The room at which a fetch is worth a round of its own.
    refill_at: int = 1
    #: Seconds of work every child has queued behind the job it runs (about:
    #: jobs times the average job), so a refill may wait that long; 0 when
    #: a child has none, or the worker is not prefetching.
    queued_cover: float = 0.0


class Dispatch:
    """The buffer of leased jobs, and feeding them to the children."""

    def __init__(
        self,
        settings: WorkerSettings,
        handlers: dict[tuple[str, str], Handler],
        pool: Pool,
        broker: Broker,
        shutdown: Shutdown,
        watch_child: Callable[[Child], None],
    ) -> None:
        self._pool = pool
        self._broker = broker
        self._shutdown = shutdown
        self._watch_child = watch_child
        self._slots = settings.async_concurrency
        self._max_jobs_per_child = settings.max_jobs_per_child
        self._default_timeout = settings.default_timeout
        #: The handlers whose jobs share a child (async def), by (queue, name).
        self._concurrent = {
            key: execution.runs_concurrently(found.func) for key, found in handlers.items()
        }
        #: Prefetched jobs no child has yet, oldest lease first.
        self.buffer: deque[Assignment] = deque()
        #: Moving averages (seconds): a job's run, a round's time.
        self._avg_job: float | None = None
        self._avg_round_trip = 0.001
        self._stale_checked = 0.0

    def add_leased(
        self,
        queue: str,
        job_id: str,
        found: Handler,
        fields: dict[str, Any],
        started: bool,
    ) -> None:
        """A job leased for this worker joins the buffer; ``started``: Redis
        marked it started already (a free child takes it at once)."""
        timeout = fields.get("timeout") or found.timeout or self._default_timeout
        run = StoredJob.of_record(queue, job_id, found.name, fields)
        # With --async-concurrency 1 no job shares a child.
        concurrent = self._slots > 1 and self._concurrent[(queue, found.name)]
        job = Assignment(
            queue, job_id, found.name, fields, timeout, run, started, concurrent=concurrent
        )
        self.buffer.append(job)

    # -- what the averages say ------------------------------------------------
    def note_job_time(self, seconds: float) -> None:
        self._avg_job = _average(self._avg_job, seconds)

    def note_round_trip(self, seconds: float) -> None:
        self._avg_round_trip = _average(self._avg_round_trip, seconds)

    def prefetching(self) -> bool:
        """Lease ahead of the children: only while jobs are short, and never
        on a queue with a rate or concurrency limit, which counts leases: a
        job leased early would start later than the limit saw it start."""
        return (
            not self._shutdown.stopping
            and self._avg_job is not None
            and self._avg_job <= PREFETCH_MAX_JOB_SECONDS
            and not self._broker.limited_queues
        )

    # -- room -----------------------------------------------------------------
    def _queue_room(self, child: Child) -> int:
        """How many more jobs may wait behind a busy child's job: none while
        it is going away (killed, or due to retire) or giving jobs back."""
        if not child.takes_jobs or child.kill_reason is not None or child.dropping:
            return 0
        room = self._queue_depth() - len(child.queued)
        if self._max_jobs_per_child:
            left = self._max_jobs_per_child - child.jobs_done - len(child.jobs) - len(child.queued)
            room = min(room, left)
        return max(room, 0)

    def _takes_more(self, child: Child) -> bool:
        """Whether the child will take a job after those it runs (or, if
        free, the one it is about to get) and those queued on it: it takes
        jobs, and is not due to retire before (--max-jobs-per-child)."""
        if not child.takes_jobs:
            return False
        if not self._max_jobs_per_child:
            return True
        taken = child.jobs_done + (len(child.jobs) or 1) + len(child.queued)
        return taken < self._max_jobs_per_child

    def _free_slots(self, child: Child) -> int:
        """How many more jobs the child starts at once: 1 when it runs
        nothing; with --async-concurrency, the slots its async jobs leave
        (none while it runs a job that runs alone, or has jobs queued);
        none when it takes no jobs, or is due to retire first."""
        if not child.takes_jobs:
            return 0
        running = child.jobs
        if not running:
            free = self._slots
        elif child.queued or not next(iter(running.values())).concurrent:
            return 0
        else:
            free = self._slots - len(running)
        if self._max_jobs_per_child:
            free = min(free, self._max_jobs_per_child - child.jobs_done - len(running))
        return max(free, 0)

    def _queue_depth(self) -> int:
        """How many jobs may wait behind a busy child's job: enough for
        QUEUE_COVER_SECONDS of work when prefetching, else none."""
        if not self.prefetching():
            return 0
        assert self._avg_job is not None
        cover = math.ceil(QUEUE_COVER_SECONDS / max(self._avg_job, 1e-6))
        return min(cover, MAX_QUEUED_PER_CHILD)

    def room(self) -> Room:
        """How many jobs to lease now, and how many of them a free child
        takes at once: the free children (with --async-concurrency, their
        free slots), and when prefetching a few queued behind each busy
        child's jobs plus a buffer of what the children get through in a
        few rounds; less what the buffer holds."""
        if self._shutdown.stopping:
            return Room()
        free = queue_slots = takers = 0
        least_queued = MAX_QUEUED_PER_CHILD
        alone = self._slots == 1  # the common case: no slot to count
        for child in self._pool.by_pid.values():
            takers += self._takes_more(child)
            if child.takes_jobs:
                least_queued = min(least_queued, len(child.queued) if child.jobs else 0)
            if alone:
                if not child.jobs:
                    free += child.takes_jobs
                    continue
            else:
                free += self._free_slots(child)
            if child.jobs:
                queue_slots += self._queue_room(child)
        room, refill_at, cover = free, 1, 0.0
        # No buffer for children that cannot take jobs (starting, retiring):
        # its jobs would only wait, then go back.
        if self.prefetching() and takers:
            assert self._avg_job is not None
            per_round = (
                BUFFER_ROUND_TRIPS * takers * self._avg_round_trip / max(self._avg_job, 1e-6)
            )
            room += queue_slots + min(math.ceil(per_round), BUFFER_PER_CHILD * takers)
            refill_at = max(room // 2, 1)  # fetch in batches of half or more
            cover = least_queued * self._avg_job
        held = len(self.buffer)
        return Room(max(room - held, 0), max(free - held, 0), free, refill_at, cover)

    # -- feeding the children ---------------------------------------------------
    def feed_children(self) -> None:
        """Buffered jobs to the free children, then (when prefetching) a few
        queued behind each busy child's job. A job that may not run twice
        (manual_retry_only) never waits behind another: taking a queued job
        back can race with the child starting it."""
        buffer = self.buffer
        if not buffer:
            return
        children = list(self._pool.by_pid.values())
        if self._slots == 1:
            for child in children:
                if not buffer:
                    return
                if not child.jobs and child.takes_jobs:
                    self._send(child, buffer.popleft())
        else:
            self._fill_slots(children)
        if not self.prefetching():
            return
        # A child's queue is topped up once half of it ran: its frames go in
        # one write, and the child reads them in one.
        depth = self._queue_depth()
        refill_at = depth - depth // 2
        for child in children:
            if not child.jobs or (room := self._queue_room(child)) < refill_at:
                continue
            while room and buffer:
                if buffer[0].fields.get("manual_retry_only") == "1":
                    break
                self._send(child, buffer.popleft())
                room -= 1
            self.flush(child)

    def _fill_slots(self, children: list[Child]) -> None:
        """--async-concurrency: buffered jobs, in the order they were leased,
        each to the child with the most free slots it fits in (so a crash
        costs fewer jobs, and the children share the CPU). A job that fits
        no child (one that runs alone, while every child runs async jobs)
        holds back those behind it: the children drain, and the first free
        one takes it (or, after PREFETCH_MAX_WAIT_SECONDS, it goes back to
        the queue)."""
        buffer = self.buffer
        while buffer:
            job, best, most = buffer[0], None, 0
            for child in children:
                free = self._free_slots(child)
                if free > most and self._pool.fits(child, job):
                    best, most = child, free
            if best is None:
                return
            self._send(best, buffer.popleft())

    def _send(self, child: Child, job: Assignment) -> None:
        """Give ``job`` to ``child`` (a queued job's frame waits for flush)."""
        if self._pool.assign(child, job):  # it runs now
            self.flush(child)
            self.job_started(child, job)

    def flush(self, child: Child) -> None:
        """Write what waits for the child; watch its pipe for room if the
        pipe is full."""
        if child.outbox:
            self._pool.flush(child)
        if child.outbox:
            self._watch_child(child)

    def job_started(self, child: Child, job: Assignment) -> None:
        if not job.start_reported:
            self.report_start(job)
        if logs.log.isEnabledFor(logging.DEBUG):  # skip building the fields per job
            logs.event("job started", logging.DEBUG, **job.log_fields(child.pid))

    def report_start(self, job: Assignment) -> None:
        self._broker.started(job.queue, job.job_id)
        job.start_reported = True

    # -- jobs that go back in line, or back to the queue --------------------------
    def queued_back_in_line(self, child: Child, first: Sequence[Assignment] = ()) -> None:
        """The jobs queued on a child that will not run them (dead, or
        killed) go back in line, in order, ``first`` first; those being
        dropped were handed back already."""
        for job in reversed([*first, *self._pool.take_queued(child)]):
            if job.job_id not in child.dropping:
                self.back_in_line(job)

    def back_in_line(self, job: Assignment) -> None:
        """A job that never started (its child died first, or it was
        dropped): first in line for the next free child, or back to the
        queue when stopping."""
        if self._shutdown.stopping:
            self._broker.hand_back(job.queue, job.job_id)
        else:
            self.buffer.appendleft(job)

    def take_buffered(self, queue: str, job_id: str) -> Assignment | None:
        """Take ``job_id`` out of the buffer, if it waits there."""
        for job in self.buffer:
            if job.queue == queue and job.job_id == job_id:
                self.buffer.remove(job)
                return job
        return None

    def next_stale_check(self) -> float | None:
        """When a prefetched job next waited too long (monotonic), if any
        waits."""
        children = self._pool.by_pid.values()
        oldest = [c.queued[0].leased for c in children if c.queued and not c.dropping]
        if self.buffer:
            oldest.append(self.buffer[0].leased)
        if not oldest:
            return None
        due = min(oldest) + PREFETCH_MAX_WAIT_SECONDS
        return max(due, self._stale_checked + STALE_CHECK_SECONDS)

    def hand_back_stale(self, now: float) -> None:
        """Prefetched jobs that waited too long for a child of this worker go
        back to the queue for any worker; all of them once jobs got long, or
        when stopping (at once)."""
        prefetching = self.prefetching()
        # Without prefetching, a buffered job found no child in this turn
        # and goes back now; with slots, it may wait for one a little.
        at_once = not prefetching and self._slots == 1
        if not at_once and now < self._stale_checked + STALE_CHECK_SECONDS:
            return
        self._stale_checked = now
        too_old = now - PREFETCH_MAX_WAIT_SECONDS
        while self.buffer and (at_once or self.buffer[0].leased <= too_old):
            job = self.buffer.popleft()
            self._broker.hand_back(job.queue, job.job_id)
        for child in self._pool.by_pid.values():
            queued = child.queued
            if queued and not child.dropping and (not prefetching or queued[0].leased <= too_old):
                self._hand_back_queued(child)

    def _hand_back_queued(self, child: Child) -> None:
        """Take back the jobs queued on ``child``: they go back to the queue
        at once; the child skips each (says "dropped") unless it started it
        in the meantime, in which case that run ends as usual (its finish is
        then "lost": the job was handed back)."""
        for job in child.queued:
            self._broker.hand_back(job.queue, job.job_id)
            self._pool.drop(child, job)
        self.flush(child)


def _average(average: float | None, sample: float) -> float:
    """An exponential moving average: recent samples count most."""
    if average is None:
        return sample
    return average + AVERAGE_WEIGHT * (sample - average)
