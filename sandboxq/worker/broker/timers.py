"""The timers: when a round renews the leases, recovers stalled jobs, asks
which held jobs a person cancelled, and sends the charts' counts.

Each is due at a monotonic time; :meth:`Timers.due` says which are when a
round is built and re-arms them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from sandboxq import stats

#: Leases are renewed this many times per lease, so one lost renewal (or
#: two) does not let them lapse.
RENEWALS_PER_LEASE = 3
#: Stalled jobs (a dead worker's) are looked for twice per lease, but at
#: least this often and at most this often (seconds).
RECOVER_MAX_SECONDS = 15.0
RECOVER_MIN_SECONDS = 0.25

#: How often, while the worker holds jobs of a queue, a round asks which of
#: them a person cancelled (one ZMSCORE on the queue's cancel_requests per
#: queue): a cancelled job is stopped within about this long plus a round
#: trip. A worker that starts holding jobs first asks this long after, so a
#: short job never costs a round trip of its own.
CANCEL_CHECK_SECONDS = 0.5


@dataclass(frozen=True, slots=True)
class Due:
    """The timers due in the round being built."""

    renew: bool
    recover: bool
    cancels: bool


class Timers:
    def __init__(self, lease: float) -> None:
        self.renew_every = lease / RENEWALS_PER_LEASE
        self.recover_every = max(min(lease / 2, RECOVER_MAX_SECONDS), RECOVER_MIN_SECONDS)
        now = time.monotonic()
        self.next_renew = now + self.renew_every
        self.next_recover = now  # recover what dead workers left, at once
        self.next_cancel_check = now + CANCEL_CHECK_SECONDS
        #: The charts' counts, at most every stats.FLUSH_SECONDS, and a
        #: reading of each queue's depth every stats.DEPTH_SECONDS.
        self.next_stats_flush = now + stats.FLUSH_SECONDS
        self.next_depth = now

    def due(self, clock: float) -> Due:
        """Which timers the round built at ``clock`` carries; re-armed."""
        due = Due(
            renew=clock >= self.next_renew,
            recover=clock >= self.next_recover,
            cancels=clock >= self.next_cancel_check,
        )
        if due.renew:
            self.next_renew = clock + self.renew_every
        if due.recover:
            self.next_recover = clock + self.recover_every
        if due.cancels:
            self.next_cancel_check = clock + CANCEL_CHECK_SECONDS
        return due

    def next(self, holds_jobs: bool) -> float:
        """The earliest timer (the cancel check counts while jobs are held)."""
        due = min(self.next_renew, self.next_recover)
        return min(due, self.next_cancel_check) if holds_jobs else due

    def renew_now(self) -> None:
        """A renewal failed: the leases still need it."""
        self.next_renew = time.monotonic()

    def first_jobs_held(self) -> None:
        """The worker starts holding jobs: the first cancel check is a full
        CANCEL_CHECK_SECONDS away."""
        self.next_cancel_check = time.monotonic() + CANCEL_CHECK_SECONDS

    def stats_flush_due(self, clock: float) -> bool:
        if clock < self.next_stats_flush:
            return False
        self.next_stats_flush = clock + stats.FLUSH_SECONDS
        return True

    def depth_due(self, clock: float) -> bool:
        if clock < self.next_depth:
            return False
        self.next_depth = clock + stats.DEPTH_SECONDS
        return True
