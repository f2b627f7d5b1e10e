"""The commands about a queue's jobs, one class each (see commands.py):
what the worker owes for the jobs it holds (durable steps, reports,
finishes, hand-backs, reclaims, renewals, cancel checks), recoveries,
fetches, and the reads and fires of rate limits and schedules."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import redis

from sandboxq.scripts import decode_ids
from sandboxq.worker.broker.commands import Command, RawCommand, RoundEnd, ScriptCommand
from sandboxq.worker.broker.faults import BadSetting
from sandboxq.worker.broker.fetching import Fetching
from sandboxq.worker.broker.leases import Leases
from sandboxq.worker.broker.outbox import DurableStep, Outbox, Report
from sandboxq.worker.broker.schedules import Schedules
from sandboxq.worker.broker.timers import Timers
from sandboxq.worker.broker.windows import RateWindows


# -- what the worker owes for the jobs it holds ----------------------------------------
@dataclass(slots=True)
class DurableStepCommand(ScriptCommand):
    """step.lua: durable steps children wait on."""

    kind = "step"
    carries = True
    outbox: Outbox
    sent: list[DurableStep]

    def apply(self, reply: Any, end: RoundEnd) -> None:
        for (job_id, key, _result), status in zip(self.sent, reply, strict=True):
            end.result.stepped.append((self.queue, job_id, key, status.decode()))

    def undo(self, error: Exception) -> None:
        self.outbox.put_back_steps(self.queue, self.sent)


@dataclass(slots=True)
class ReportCommand(ScriptCommand):
    """report.lua: progress and log lines."""

    kind = "report"
    carries = True
    outbox: Outbox
    sent: list[Report]

    def apply(self, reply: Any, end: RoundEnd) -> None:
        self.outbox.reports_taken(self.queue, self.sent)

    def undo(self, error: Exception) -> None:
        self.outbox.put_back_reports(self.queue, self.sent)


@dataclass(slots=True)
class FinishCommand(ScriptCommand):
    """finish.lua: prefetched jobs' starts, then settled jobs."""

    kind = "finish"
    carries = True
    outbox: Outbox
    leases: Leases
    finishes: list[list[Any]]
    starts: list[tuple[str, int]]

    def apply(self, reply: Any, end: RoundEnd) -> None:
        for entry, status in zip(self.finishes, reply, strict=True):
            self.leases.let_go(self.queue, [entry[0]])
            end.result.finished.append((self.queue, entry[0], status.decode()))

    def undo(self, error: Exception) -> None:
        self.outbox.put_back_finishes(self.queue, self.finishes, self.starts)


@dataclass(slots=True)
class HandBackCommand(ScriptCommand):
    """hand_back.lua: leased jobs handed back."""

    kind = "hand_back"
    carries = True
    outbox: Outbox
    leases: Leases
    unstarted: list[str]
    interrupted: list[str]

    def apply(self, reply: Any, end: RoundEnd) -> None:
        self.leases.let_go(self.queue, self.unstarted)
        self.leases.let_go(self.queue, self.interrupted)
        if handed_back := decode_ids(reply):
            end.result.handed_back.append((self.queue, handed_back))

    def undo(self, error: Exception) -> None:
        self.outbox.put_back_hand_backs(self.queue, self.unstarted, self.interrupted)


@dataclass(slots=True)
class ReclaimCommand(ScriptCommand):
    """reclaim.lua: what lost fetch replies may have leased, handed back."""

    kind = "reclaim"
    carries = True
    leases: Leases
    request: int

    def apply(self, reply: Any, end: RoundEnd) -> None:
        self.leases.reclaimed(self.queue, self.request)
        if handed_back := decode_ids(reply):
            end.result.reclaimed.append((self.queue, handed_back))


@dataclass(slots=True)
class RenewCommand(ScriptCommand):
    """renew.lua: every lease held, extended."""

    kind = "renew"
    carries = True
    leases: Leases
    timers: Timers

    def apply(self, reply: Any, end: RoundEnd) -> None:
        self.leases.let_go(self.queue, decode_ids(reply))  # no longer ours

    def undo(self, error: Exception) -> None:
        self.timers.renew_now()


@dataclass(slots=True)
class CancelsCommand(Command):
    """ZMSCORE on cancel_requests: which held jobs a person cancelled."""

    kind = "cancels"
    carries = True
    leases: Leases
    cancel_requests: str
    held: list[str]

    def build(self) -> tuple[Any, ...]:
        return ("ZMSCORE", self.cancel_requests, *self.held)

    def apply(self, reply: Any, end: RoundEnd) -> None:
        leased = self.leases.leased[self.queue]
        for job_id, asked in zip(self.held, reply, strict=True):
            if asked is not None and job_id in leased:
                end.result.cancel_requested.append((self.queue, job_id))


@dataclass(slots=True)
class RecoverCommand(ScriptCommand):
    """recover_stalled.lua: what dead workers left."""

    kind = "recover"

    def apply(self, reply: Any, end: RoundEnd) -> None:
        requeued, failed, cancelled = (decode_ids(ids) for ids in reply)
        if requeued or failed or cancelled:
            end.result.recovered.append((self.queue, requeued, failed, cancelled))


# -- fetching, limits and schedules --------------------------------------------------
@dataclass(slots=True)
class FetchCommand(ScriptCommand):
    """fetch.lua: jobs leased."""

    kind = "fetch"
    reads_settings = True
    fetching: Fetching
    request: int
    #: How many jobs it asks for.
    count: int

    def apply(self, reply: Any, end: RoundEnd) -> None:
        self.fetching.take(self.queue, reply, end.result, end.next_due)

    def undo(self, error: Exception) -> None:
        """A fetch may have run anyway: what it may have leased is
        reclaimed. Only NOSCRIPT says it did not run, and a bad setting
        that it leased nothing."""
        if not isinstance(error, redis.exceptions.NoScriptError | BadSetting):
            self.fetching.leases.lost_fetch(self.queue, self.request)


@dataclass(slots=True)
class LimitsCommand(RawCommand):
    """HMGET of the queue's rate limit, for its mirror."""

    kind = "limits"
    reads_settings = True
    windows: RateWindows

    def apply(self, reply: Any, end: RoundEnd) -> None:
        self.windows.mirror(self.queue, reply)

    def undo(self, error: Exception) -> None:
        self.windows.resync.add(self.queue)


@dataclass(slots=True)
class LimiterCommand(LimitsCommand):
    """ZRANGE of the queue's limiter log, to fill its mirror."""

    kind = "limiter"

    def apply(self, reply: Any, end: RoundEnd) -> None:
        self.windows.sync(self.queue, reply)


@dataclass(slots=True)
class ScheduleTimesCommand(RawCommand):
    """The queue's next occurrence times (schedule.next_times_command)."""

    kind = "schedules"
    reads_settings = True
    schedules: Schedules

    def apply(self, reply: Any, end: RoundEnd) -> None:
        self.schedules.on_times(self.queue, reply)

    def undo(self, error: Exception) -> None:
        self.schedules.redo(self.queue)


@dataclass(slots=True)
class ScheduleSpecsCommand(ScheduleTimesCommand):
    """The due schedules' specs (schedule.spec_commands)."""

    kind = "specs"
    reads_settings = False

    def apply(self, reply: Any, end: RoundEnd) -> None:
        self.schedules.on_specs(self.queue, reply)


@dataclass(slots=True)
class ScheduleCountsCommand(ScheduleTimesCommand):
    """The due schedules' counts, read right after their specs."""

    kind = "counts"
    reads_settings = False
    due: list[tuple[str, int]] = field(default_factory=list)

    def apply(self, reply: Any, end: RoundEnd) -> None:
        self.schedules.on_counts(self.queue, self.due, reply, end.result)


@dataclass(slots=True)
class FireCommand(ScriptCommand):
    """fire_schedule.lua: one due schedule's occurrences."""

    kind = "fire"
    schedules: Schedules

    def apply(self, reply: Any, end: RoundEnd) -> None:
        self.schedules.on_fired(self.queue, reply, end.result)

    def undo(self, error: Exception) -> None:
        self.schedules.redo(self.queue)
