"""Fetching: which queue a round asks for jobs and how many, what its reply
leased, and whether the queues may hold more work.

The queues take turns, so one busy queue cannot starve the others; a queue
at fault sits out. A fetch that filled its slots means more may wait; once
every queue came back short in a row, the worker waits for a wake-up, or
for the earliest time one of them said to look again (``next_due_ms``).
"""

from __future__ import annotations

import time
from typing import Any

from sandboxq import fast
from sandboxq.worker.broker.faults import BadSetting, QueueFaults
from sandboxq.worker.broker.leases import Leases
from sandboxq.worker.broker.result import RoundResult
from sandboxq.worker.broker.timers import Timers
from sandboxq.worker.broker.windows import RateWindows
from sandboxq.worker.clock import ServerClock


def stored_id(job_id: str) -> str:
    """A fetched id as Redis stores it: the id itself, or for one that is
    not UTF-8 (fast.decode_fetched escapes such bytes as surrogates) its
    bytes, so the commands that settle it name that very job."""
    try:
        job_id.encode()
    except UnicodeEncodeError:
        return job_id.encode("utf-8", "surrogateescape")  # type: ignore[return-value]
    return job_id


class Fetching:
    def __init__(
        self,
        queues: list[str],
        *,
        clock: ServerClock,
        leases: Leases,
        windows: RateWindows,
        faults: QueueFaults,
        timers: Timers,
    ) -> None:
        self.queues = list(queues)
        self.clock = clock
        self.leases = leases
        self.windows = windows
        self.faults = faults
        self.timers = timers
        self.maybe_work = True  # the queues may hold jobs: fetch before waiting
        #: The earliest time (server ms) a queue that came back short said
        #: to look again, once every queue did.
        self.next_due_ms: int | None = None
        #: No fetch before this (monotonic): see ``hold``.
        self.hold_until = 0.0
        #: Queues with a rate or concurrency limit (fetch.lua says): their
        #: limits count leases, so the worker does not prefetch their jobs.
        self.limited_queues: set[str] = set()
        self._rotation = 0
        #: Queues that came back short in a row, and when they said to look again.
        self._short: set[str] = set()
        self._due_seen: list[int] = []

    # -- whether to fetch ---------------------------------------------------------
    def hold(self, seconds: float) -> None:
        """Fetch nothing for ``seconds`` (other rounds go on)."""
        self.hold_until = time.monotonic() + seconds

    def held(self, now: float) -> bool:
        return now < self.hold_until

    def look_again(self) -> None:
        """Work may wait (a schedule fired, a fault lapsed)."""
        self.maybe_work = True
        self._short.clear()

    def woken(self) -> None:
        """The wait answered: look for work again, from every queue."""
        self.look_again()
        self._due_seen.clear()

    def choose(self, free_slots: int, now_ms: int) -> tuple[str, int] | None:
        """The next queue in turn and how many jobs to ask it for (fewer
        than ``free_slots`` if its rate window is fuller); None for no fetch."""
        queue = self._next_queue()
        if queue is None:  # every queue is at fault: nothing to fetch until a retry
            self.maybe_work = False
            return None
        count, opens_at = self.windows.room(queue, free_slots, now_ms)
        if opens_at is not None:
            self._due_seen.append(opens_at)
        if count <= 0:
            self._short.add(queue)
            self._note_short_round()
            return None
        return queue, count

    def _next_queue(self) -> str | None:
        now = time.monotonic()
        for _ in self.queues:
            self._rotation = (self._rotation + 1) % len(self.queues)
            queue = self.queues[self._rotation]
            if not self.faults.paused(queue, now):
                return queue
        return None

    def wake_fetch_queue(self, free_slots: int, *, ready: bool) -> str | None:
        """The queue a wait's fetch asks, or None for a plain wait: with free
        children, a single queue, no limit, and (``ready``) the worker set
        up, its clock measured and not on a Redis Cluster. A limit counts
        leases, and a rate limit's start times are the fetch's `now`; with
        several queues a wake-up does not say which one has work; a
        cluster's wait is one BZPOPMIN per queue (cluster.py), with no room
        for a fetch behind it."""
        if free_slots <= 0 or len(self.queues) != 1 or not ready:
            return None
        queue = self.queues[0]
        if queue in self.limited_queues or self.windows.mirrors(queue):
            return None
        return None if self.faults.paused(queue, time.monotonic()) else queue

    # -- what a fetch brought -------------------------------------------------------
    def take(self, queue: str, reply: Any, result: RoundResult, next_due: list[int]) -> None:
        """fetch.lua's reply: the jobs it leased, whether a limit held some
        back, and when to look again."""
        rows, due, limited, has_limits, problem = reply
        if problem:  # a setting fetch.lua cannot use: it leased nothing
            raise BadSetting(problem.decode(errors="backslashreplace"))
        if has_limits:
            self.limited_queues.add(queue)
        else:
            self.limited_queues.discard(queue)
        if limited:
            result.rate_limited.append(queue)
            self.windows.resync.add(queue)  # Redis saw starts the mirror did not
        fetched = fast.decode_fetched(rows)
        if fetched and not self.leases.holds_jobs():  # see CANCEL_CHECK_SECONDS
            self.timers.first_jobs_held()
        if fetched:
            self.windows.record(queue, self.clock.now_ms(), len(fetched))
        leased = self.leases.leased[queue]
        for job_id, fields in fetched:
            if isinstance(fields, fast.CorruptRecord):
                job_id = stored_id(job_id)  # the parent fails it at once
            if job_id in leased:
                # Our own lease lapsed (the parent was frozen, or Redis slow)
                # and the job came back to us while a child still runs it:
                # keep the fresh lease for that run instead of starting another.
                result.still_running.append((queue, job_id))
                continue
            leased.add(job_id)
            result.fetched.append((queue, job_id, fields))
        if due >= 0:
            next_due.append(int(due))

    def after(self, queue: str, asked: int, result: RoundResult, next_due: list[int]) -> None:
        """A fetch that filled its slots means more may wait: fetch again.
        One that came back short means this queue is empty (or limited) for
        now."""
        self._due_seen += next_due
        if len(result.fetched) + len(result.still_running) >= asked:
            self._short.clear()
            self._due_seen.clear()
            return
        self._short.add(queue)
        self._note_short_round()

    def _note_short_round(self) -> None:
        if len(self._short) >= len(self.queues):
            self.maybe_work = False
            self.next_due_ms = min(self._due_seen, default=None)
