"""The fault barrier: queues this worker leaves alone for now, and why.

One queue's bad settings or data pause that queue, never the worker: a
command Redis refused for a queue's own reason, or a reply that cannot be
used, pauses its queue (its fetching, limits and schedules; for a command
that carries what the worker owes, that work too) for a while that doubles
each time it fails again. Settings read back from Redis are checked here
(:func:`setting_int`).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

from sandboxq.worker.broker.result import RoundResult

#: A queue whose settings or commands fail is left alone this long, doubling
#: up to the most while it keeps failing; then the worker tries it again.
QUEUE_FAULT_SECONDS = 5.0
QUEUE_FAULT_MAX_SECONDS = 60.0

#: The longest setting text a BadSetting message quotes.
QUOTED_SETTING_CHARS = 40


class BadSetting(ValueError):
    """A queue setting read from Redis that the worker cannot use."""


def setting_int(name: str, raw: Any, low: int, high: int) -> int:
    """A whole-number setting read back from Redis (written as sandboxq
    writes integers, as fetch.lua reads them), or BadSetting naming it."""
    text = raw.decode(errors="backslashreplace") if isinstance(raw, bytes) else str(raw)
    if re.fullmatch(r"-?[0-9]{1,30}", text) is None:
        quoted = text[:QUOTED_SETTING_CHARS]
        raise BadSetting(f"setting '{name}' = '{quoted}' is not a whole number")
    value = int(text)
    if not low <= value <= high:
        raise BadSetting(f"setting '{name}' = {value} is out of range ({low} to {high})")
    return value


@dataclass(slots=True)
class QueueFault:
    """Why this worker does not fetch from a queue for now."""

    reason: str
    #: When to try the queue again (monotonic), and the next wait after that.
    until: float
    backoff: float
    #: Whether the queue's carried work (finishes, reports...) waits too.
    holds_work: bool
    #: The worker looked for work once the fault lapsed.
    retried: bool = False


class QueueFaults:
    """The queues at fault (``by_queue``), and when each is tried again."""

    def __init__(self) -> None:
        self.by_queue: dict[str, QueueFault] = {}

    def paused(self, queue: str, now: float) -> bool:
        """Whether this worker leaves the queue alone for now."""
        fault = self.by_queue.get(queue)
        return fault is not None and now < fault.until

    def holds_work(self, queue: str, now: float) -> bool:
        """Whether what the worker owes the queue waits for its retry."""
        fault = self.by_queue.get(queue)
        return fault is not None and fault.holds_work and now < fault.until

    def next_retry(self) -> float | None:
        return min((fault.until for fault in self.by_queue.values()), default=None)

    def add(
        self, queue: str, kind: str, reason: str, result: RoundResult, *, holds_work: bool
    ) -> None:
        """Leave the queue alone for a while (with ``holds_work``, what the
        worker owes it too), longer each time it fails again."""
        fault = self.by_queue.get(queue)
        backoff = QUEUE_FAULT_SECONDS if fault is None else fault.backoff
        self.by_queue[queue] = QueueFault(
            reason,
            time.monotonic() + backoff,
            min(backoff * 2, QUEUE_FAULT_MAX_SECONDS),
            holds_work or (fault is not None and fault.holds_work),
        )
        result.faults.append((queue, kind, reason))

    def retry_lapsed(self, now: float) -> bool:
        """Mark the faults that lapsed as retried; True if any newly did (the
        worker then looks for work: the next fetch says whether the queue's
        settings are usable now)."""
        lapsed = False
        for fault in self.by_queue.values():
            if now >= fault.until and not fault.retried:
                fault.retried = True
                lapsed = True
        return lapsed

    def end_lapsed(
        self, tried: list[tuple[str, bool]], faulted: set[str], result: RoundResult
    ) -> None:
        """Queues whose fault lapsed and that a round tried again without
        trouble (``tried``: each command's queue, and whether it reads what a
        bad setting would spoil: a fetch, its limits, its schedules) are
        well again; one that held its work is well after any command."""
        if not self.by_queue:
            return
        now = time.monotonic()
        for queue, reads_settings in tried:
            fault = self.by_queue.get(queue)
            if fault is None or now < fault.until or queue in faulted:
                continue
            if fault.holds_work or reads_settings:
                del self.by_queue[queue]
                result.recovered_queues.append(queue)
