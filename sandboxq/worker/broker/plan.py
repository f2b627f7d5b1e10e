"""Building a round: which commands it sends, in which order.

A round carries, per queue: durable steps (children wait on them), reports
and finishes, hand-backs, the reclaim of what lost fetches leased, the due
timers' renewals, cancel checks and recoveries; then the heartbeat, the
schedules' check and the rate limits' reads; then a fetch; then the
charts' counts, which ride along and never make a round of their own. The
first round sets the worker up on the server (server_setup.py) and nothing that
depends on the time goes before the server's clock is known.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sandboxq import registry, stats
from sandboxq.caps import MAX_STEPS
from sandboxq.keys import QueueKeys
from sandboxq.schedule import next_times_command, spec_commands
from sandboxq.scripts import Scripts
from sandboxq.worker.broker.charts import Charts
from sandboxq.worker.broker.commands import (
    Command,
    ConfigCommand,
    ConfigureCommand,
    DepthCommand,
    HeartbeatCommand,
    InfoCommand,
    LoadCommand,
    StatsCommand,
    TimeCommand,
    UnblockCommand,
)
from sandboxq.worker.broker.faults import QueueFaults
from sandboxq.worker.broker.fetching import Fetching
from sandboxq.worker.broker.leases import Leases
from sandboxq.worker.broker.outbox import Outbox
from sandboxq.worker.broker.queue_commands import (
    CancelsCommand,
    DurableStepCommand,
    FetchCommand,
    FinishCommand,
    FireCommand,
    HandBackCommand,
    LimiterCommand,
    LimitsCommand,
    ReclaimCommand,
    RecoverCommand,
    RenewCommand,
    ReportCommand,
    ScheduleCountsCommand,
    ScheduleSpecsCommand,
    ScheduleTimesCommand,
)
from sandboxq.worker.broker.schedules import Schedules
from sandboxq.worker.broker.server_setup import ServerSetup
from sandboxq.worker.broker.timers import Due, Timers
from sandboxq.worker.broker.wait import Wait
from sandboxq.worker.broker.windows import RateWindows
from sandboxq.worker.clock import ServerClock

#: The scripts, described: each wrapper returns the ScriptCall a round sends.
DESCRIBE = Scripts(None)


class Planner:
    """Builds rounds from the broker's parts (which it shares with them)."""

    def __init__(
        self,
        keys: Mapping[str, QueueKeys],
        *,
        token: str,
        lease_ms: int,
        max_stalls: int,
        settings: dict[str, Any],
        description: dict[str, Any],
        clock: ServerClock,
        parts: tuple[Outbox, Leases, Timers, QueueFaults, Fetching],
        reads: tuple[Schedules, RateWindows, Charts, ServerSetup],
        wait: Wait,
    ) -> None:
        self.keys = keys
        self.token = token
        self.lease_ms = lease_ms
        self.max_stalls = max_stalls
        self.settings = settings
        self.description = description
        self.clock = clock
        self.outbox, self.leases, self.timers, self.faults, self.fetching = parts
        self.schedules, self.windows, self.charts, self.setup = reads
        self.wait = wait

    def build(self, clock: float, free_slots: int, start_now: int) -> list[Command]:
        """A round's commands (none: nothing is due); what they carry left
        the parts. A fetch, if any, is the round's last FetchCommand."""
        commands: list[Command] = []
        if (unblock := self.wait.unblock_command()) is not None:  # the worker stops
            commands.append(UnblockCommand(unblock, refused=self.wait.unblock_refused))
        if not self.setup.done:
            commands += self._setup()
        if not self.clock.measured:
            # Nothing that depends on the time goes before the server's clock
            # is known: a worker whose clock is off must not judge leases.
            commands.append(TimeCommand(self.clock))
        else:
            commands += self._work(clock, free_slots, start_now)
        return commands

    def _setup(self) -> list[Command]:
        """Check the server, load the scripts, apply the worker's own
        flow-control options."""
        check = self.setup.start()
        info, *configs = check.commands()
        commands: list[Command] = [InfoCommand(info, self.setup, check)]
        commands += [ConfigCommand(config, self.setup, check) for config in configs]
        commands += [LoadCommand(self.setup, name) for name in Scripts.NAMES]
        if self.settings:
            for queue, k in self.keys.items():
                call = DESCRIBE.configure(k, self.settings)
                commands.append(ConfigureCommand(call, self.setup, queue=queue))
        return commands

    def _work(self, clock: float, free_slots: int, start_now: int) -> list[Command]:
        """Everything due: what children sent, timers, schedules, a fetch."""
        now = self.clock.now_ms()
        due = self.timers.due(clock)
        self.schedules.start(clock, recovering=due.recover)
        commands: list[Command] = []
        if due.recover:  # first: the server reads its clock as soon as it can
            commands.append(TimeCommand(self.clock))
        for queue, k in self.keys.items():
            if not self.faults.holds_work(queue, clock):  # else it waits for the retry
                commands += self._owed(queue, k, now, due)
        if due.recover and self.description:  # the same cadence: at start, then <= 15 s
            commands.append(self._heartbeat(now))
        paused = {queue for queue in self.keys if self.faults.paused(queue, clock)}
        for queue, k in self.keys.items():
            if queue not in paused:  # its schedules and limits are read after the pause
                commands += self._reads(queue, k, now, due)
        self.schedules.reading_times = False
        self.windows.resynced(paused)
        self.outbox.all_taken()
        # Hand back what lost replies leased before asking for more (a queue
        # at fault waits with its reclaim); and while a wait carries a
        # fetch, that fetch is the one to ask (the broker passes no slots).
        reclaiming = any(not self.faults.paused(queue, clock) for queue in self.leases.unsure)
        wanted = free_slots > 0 and self.fetching.maybe_work and not reclaiming
        if wanted and (chosen := self.fetching.choose(free_slots, now)) is not None:
            queue, count = chosen
            commands.append(self.fetch(queue, count, now, self.lease_ms, start_now))
        if commands:  # the charts' counts ride along
            commands += self._charts(clock, now)
        return commands

    def _owed(self, queue: str, k: QueueKeys, now: int, due: Due) -> list[Command]:
        """What the worker owes one queue, and its due timers' commands.
        Steps first (a child waits on each). Starts before reports (a job's
        events say it started before its progress); reports before finishes:
        a job's last progress and log lines usually travel in the same round
        as its result, and finishing drops the lease token report.lua
        checks."""
        commands: list[Command] = []
        outbox, token, leased = self.outbox, self.token, self.leases.leased[queue]
        if steps := outbox.take_steps(queue):
            call = DESCRIBE.step(k, token, steps, MAX_STEPS)
            commands.append(DurableStepCommand(call, outbox, steps, queue=queue))
        reports = outbox.take_reports(queue)
        if reports and outbox.starts[queue]:
            commands.append(self._finish(queue, now, settle=False))
        if reports:
            call = DESCRIBE.report(k, token, reports)
            commands.append(ReportCommand(call, outbox, reports, queue=queue))
        if outbox.finishes[queue] or outbox.starts[queue]:
            commands.append(self._finish(queue, now, settle=True))
        unstarted, interrupted = outbox.take_hand_backs(queue)
        if unstarted or interrupted:
            call = DESCRIBE.hand_back(k, token, unstarted, interrupted, now)
            commands.append(
                HandBackCommand(call, outbox, self.leases, unstarted, interrupted, queue=queue)
            )
        if (request := self.leases.unsure.get(queue)) is not None:
            call = DESCRIBE.reclaim(k, now, token, request, list(leased))
            commands.append(ReclaimCommand(call, self.leases, request, queue=queue))
        if due.renew and leased:
            call = DESCRIBE.renew(k, now, token, self.lease_ms, list(leased))
            commands.append(RenewCommand(call, self.leases, self.timers, queue=queue))
        if due.cancels and leased:  # after the finishes: settled jobs say nil
            held = list(leased)
            commands.append(CancelsCommand(self.leases, k.cancel_requests, held, queue=queue))
        if due.recover:
            call = DESCRIBE.recover_stalled(k, now, self.max_stalls)
            commands.append(RecoverCommand(call, queue=queue))
        return commands

    def _finish(self, queue: str, now: int, *, settle: bool) -> Command:
        """One finish.lua call: mark the pending starts, and with ``settle``
        settle the pending finishes too."""
        starts = self.outbox.take_starts(queue)
        finishes = self.outbox.take_finishes(queue) if settle else []
        call = DESCRIBE.finish(self.keys[queue], now, self.token, finishes, starts)
        return FinishCommand(call, self.outbox, self.leases, finishes, starts, queue=queue)

    def _heartbeat(self, now: int) -> Command:
        """This worker's registry entry."""
        return HeartbeatCommand(registry.heartbeat(DESCRIBE, self.token, self.description, now))

    def _reads(self, queue: str, k: QueueKeys, now: int, due: Due) -> list[Command]:
        """A queue's schedules check (the next times, the due ones' specs
        and counts, their fires) and its rate limit's reads."""
        commands: list[Command] = []
        schedules = self.schedules
        if schedules.reading_times:
            commands.append(ScheduleTimesCommand(next_times_command(k), schedules, queue=queue))
        if read := schedules.reads.pop(queue, []):
            specs, counts = spec_commands(k, read)
            commands.append(ScheduleSpecsCommand(specs, schedules, queue=queue))
            commands.append(ScheduleCountsCommand(counts, schedules, read, queue=queue))
        for fire in schedules.fires.pop(queue, []):
            call = DESCRIBE.fire_schedule(k, now, *fire)
            commands.append(FireCommand(call, schedules, queue=queue))
        if due.recover or queue in self.windows.resync:
            limits = ("HMGET", k.meta, "rl_max", "rl_window_ms")
            commands.append(LimitsCommand(limits, self.windows, queue=queue))
            limiter = ("ZRANGE", k.limiter, 0, -1, "WITHSCORES")
            commands.append(LimiterCommand(limiter, self.windows, queue=queue))
        return commands

    def fetch(
        self, queue: str, count: int, now: int, lease_ms: int, start_now: int
    ) -> FetchCommand:
        """A fetch of up to ``count`` jobs leased for ``lease_ms``, the first
        ``start_now`` started at once; numbered, so its jobs can be
        reclaimed if its reply is lost."""
        request = self.leases.next_request()
        start_now = min(start_now, count)
        call = DESCRIBE.fetch(
            self.keys[queue], now, count, self.token, lease_ms, request, start_now
        )
        return FetchCommand(call, self.fetching, request, count, queue=queue)

    def _charts(self, clock: float, now: int) -> list[Command]:
        """The counted jobs (HINCRBY, EXPIRE), the depth read last time, and,
        once a minute, a new depth reading (sandboxq.stats)."""
        commands: list[Command] = []
        charts = self.charts
        if charts.counts and self.timers.stats_flush_due(clock):
            taken = charts.counts.take()
            for index, sent in enumerate(stats.flush_commands(self.keys, taken)):
                commands.append(StatsCommand(sent, charts, taken if index == 0 else None))
        commands += [StatsCommand(sent, charts) for sent in charts.take_depth_writes()]
        if self.timers.depth_due(clock):
            minute = stats.minute_of(now)
            for queue, k in self.keys.items():
                for sent in charts.depth_reads(k):
                    commands.append(DepthCommand(sent, charts, minute, queue=queue))
        return commands
