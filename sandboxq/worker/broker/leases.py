"""The leases: which jobs this worker holds, per queue, and which fetches
may have leased jobs it does not know of.

A fetch whose reply never came may still have leased jobs: its queue is
*unsure* until a reclaim.lua call hands back what the worker holds but does
not know, and makes that fetch (and any earlier one) lease nothing if it
reaches Redis late. Fetches are numbered for this (``next_request``).
"""

from __future__ import annotations


class Leases:
    def __init__(self, queues: list[str]) -> None:
        self.leased: dict[str, set[str]] = {q: set() for q in queues}
        #: Per queue, the highest fetch request whose reply never came.
        self.unsure: dict[str, int] = {}
        self._requests = 0

    def holds_jobs(self) -> bool:
        return any(self.leased.values())

    def next_request(self) -> int:
        self._requests += 1
        return self._requests

    def lost_fetch(self, queue: str, request: int) -> None:
        """A fetch's reply never came: reclaim what it may have leased."""
        self.unsure[queue] = max(request, self.unsure.get(queue, 0))

    def reclaimed(self, queue: str, request: int) -> None:
        """A reclaim up to ``request`` ran: a later lost fetch still counts."""
        if self.unsure.get(queue) == request:
            del self.unsure[queue]

    def let_go(self, queue: str, job_ids: list[str]) -> None:
        """These jobs are no longer this worker's (settled, handed back, or
        their lease lapsed)."""
        self.leased[queue].difference_update(job_ids)
