"""The scheduling duty: every worker fires its queues' due schedules
(fire_schedule.lua makes each occurrence happen once, whoever fires it).

The check takes three rounds, each riding a round that goes anyway: read
the next occurrence times; read the due ones' specs and counts; fire them.
Which schedules are due, which occurrences fire and what a fire's reply
means are sandboxq.schedule's functions, the ones ``schedule.fire_due``
runs on a blocking client; this part only spreads them over rounds.
"""

from __future__ import annotations

import math
import time
from typing import Any

from sandboxq.schedule import Fire, due_schedules, fired, plan_fires
from sandboxq.worker.broker.fetching import Fetching
from sandboxq.worker.broker.result import RoundResult
from sandboxq.worker.clock import ServerClock


class Schedules:
    """When a worker looks at its queues' schedules: when the earliest one
    it read is due, after a wake-up (setting a schedule adds the marker, and
    the worker it wakes looks at once), after a fire or a failed look, and
    with every stalled-job recovery (timers.py), where a worker that was not
    the one woken learns of a new schedule. So an idle worker sends no round
    trip of its own for schedules none of which is due."""

    def __init__(self, clock: ServerClock, fetching: Fetching) -> None:
        self.clock = clock
        self.fetching = fetching
        self.next_check = time.monotonic()
        #: The round being built reads the next times (set by ``start``).
        self.reading_times = False
        #: Due schedules whose specs and counts the next round reads, then
        #: the fires the round after sends (queue -> list).
        self.reads: dict[str, list[tuple[str, int]]] = {}
        self.fires: dict[str, list[Fire]] = {}
        #: Due schedules' specs, until their counts come (the next reply).
        self._specs: dict[str, Any] = {}

    def busy(self) -> bool:
        """A check is half-way: its next round must not wait."""
        return bool(self.reads or self.fires)

    def start(self, clock: float, *, recovering: bool) -> None:
        """At a round built at ``clock``: read the next times if due, or
        with the round's stalled-job recovery (``recovering``)."""
        if clock >= self.next_check or recovering:
            self.next_check = math.inf  # until the times read say when
            self.reading_times = True

    def look_now(self) -> None:
        """A wake-up (a new schedule?) or a fire (a new next time)."""
        self.next_check = time.monotonic()

    def forget(self, queue: str) -> None:
        """The queue is at fault: its schedules are read again from the
        start after the pause."""
        self.reads.pop(queue, None)
        self.fires.pop(queue, None)
        self._specs.pop(queue, None)

    def redo(self, queue: str) -> None:
        """A command of the check failed: read them again from the start,
        in the next round."""
        self.look_now()
        self._specs.pop(queue, None)

    # -- the replies -------------------------------------------------------------
    def on_times(self, queue: str, reply: Any) -> None:
        now = self.clock.now_ms()
        due, upcoming = due_schedules(reply, now)
        if due:
            self.reads[queue] = due
        if upcoming is not None:
            wait = (upcoming - now) / 1000.0
            self.next_check = min(self.next_check, time.monotonic() + wait)

    def on_specs(self, queue: str, reply: Any) -> None:
        self._specs[queue] = reply  # used with the counts, the next reply

    def on_counts(
        self, queue: str, due: list[tuple[str, int]], reply: Any, result: RoundResult
    ) -> None:
        """Work out the due schedules' occurrences, to fire in the next
        round. A broken spec is reported and looked at again later."""
        specs = self._specs.pop(queue, None)
        if specs is None:
            return
        fires, broken = plan_fires(due, specs, reply, self.clock.now_ms())
        self.fires.setdefault(queue, []).extend(fires)
        result.broken_schedules += [(queue, key, why) for key, why in broken]

    def on_fired(self, queue: str, reply: Any, result: RoundResult) -> None:
        if created := fired(reply):
            result.scheduled.append((queue, created))
            self.fetching.look_again()
        self.look_now()  # read the new next time at once
