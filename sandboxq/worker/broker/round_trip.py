"""A round on its way: sent on the link, its replies gathered, then read
behind each queue's fault barrier.

Replies come in order, so a failure cuts a round after its last reply:
the replies that did arrive are used, and what the other commands carried
goes in the next round (each command's ``undo``, commands.py). A reply
that cannot be used, or a queue's command Redis refused for the queue's
own reason, pauses that queue, not the worker (faults.py); any other
Redis error is the worker's trouble to wait out. One round is in flight at
a time; its deadline gives up on replies that never come.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis

from sandboxq.worker.broker.commands import Command, RoundEnd
from sandboxq.worker.broker.faults import BadSetting, QueueFaults
from sandboxq.worker.broker.fetching import Fetching
from sandboxq.worker.broker.plan import Planner
from sandboxq.worker.broker.queue_commands import FetchCommand
from sandboxq.worker.broker.result import RoundResult
from sandboxq.worker.clock import ServerClock
from sandboxq.worker.cluster import ClusterLink
from sandboxq.worker.link import LinkError, RedisLink
from sandboxq.worker.trouble import is_transient


@dataclass(slots=True)
class Round:
    """A round in flight: its commands, one reply each as they come."""

    commands: list[Command]
    sent_at: float  # time.time(), for the clock
    deadline: float  # time.monotonic()
    replies: list[Any] = field(default_factory=list)
    fetch: FetchCommand | None = None
    start_now: int = 0
    #: It does the worker's work (not only its setup).
    worked: bool = False


class RoundReader:
    """Reads an ended round's replies behind each queue's fault barrier: a
    reply that cannot be used, or a queue's command Redis refused for the
    queue's own reason, pauses that queue, not the worker."""

    def __init__(
        self,
        faults: QueueFaults,
        on_fault: Callable[[str], None],
        on_noscript: Callable[[], None],
    ) -> None:
        self.faults = faults
        self._on_fault = on_fault  # (queue): the queue paused
        self._on_noscript = on_noscript  # (): Redis lost its scripts

    def read(
        self, commands: list[Command], replies: list[Any], end: RoundEnd, error: Exception | None
    ) -> set[str]:
        """Use the replies that came, undo what the others carried; returns
        the queues whose commands failed."""
        faulted: set[str] = set()
        for index, command in enumerate(commands):
            if index >= len(replies):
                self.undo(command, error or LinkError("no reply"))
                faulted.add(command.queue)
                continue
            reply = replies[index]
            if isinstance(reply, Exception) and not command.answered_by(reply):
                self.undo(command, reply)
                self._refused(command, reply, end.result)
                faulted.add(command.queue)
            elif not self.use(command, reply, end):
                faulted.add(command.queue)
        return faulted

    def undo(self, command: Command, error: Exception) -> None:
        if isinstance(error, redis.exceptions.NoScriptError):
            self._on_noscript()  # Redis lost its script cache: load them again
        command.undo(error)

    def use(self, command: Command, reply: Any, end: RoundEnd) -> bool:
        """Apply one reply; False if it could not be used (its queue paused)."""
        try:
            command.apply(reply, end)
        except Exception as exc:
            if not command.queue:
                raise  # the worker's own commands: a bug, not a queue's data
            self._unusable(command, exc, end.result)
            return False
        return True

    def _refused(self, command: Command, reply: Exception, result: RoundResult) -> None:
        """Redis refused one command (its work was kept by undo). Trouble
        that passes is the worker's to wait out; any other refusal of a
        queue's command is that queue's fault: it pauses, the rest go on.
        (NOSCRIPT reloads the scripts; the charts' counters never fail a round.)"""
        if isinstance(reply, redis.exceptions.NoScriptError) or command.optional:
            return
        if command.queue and not is_transient(reply):
            reason = f"Redis refused its {command.kind} command: {reply}"
            self._fault(command, "queue_error", reason, result)
            return
        result.error = result.error or reply

    def _unusable(self, command: Command, exc: Exception, result: RoundResult) -> None:
        """A reply for one queue could not be used (a setting out of range,
        a score that is not a number, a shape no script returns...): that
        queue pauses; its command is undone (a fetch's jobs are reclaimed,
        carried work sent again after the pause)."""
        self.undo(command, exc)
        if isinstance(exc, BadSetting):
            kind, reason = "bad_setting", str(exc)
        else:
            what = f"{type(exc).__name__}: {exc}"
            kind = "queue_error"
            reason = f"could not use Redis's reply to its {command.kind}: {what}"
        self._fault(command, kind, reason, result)

    def _fault(self, command: Command, kind: str, reason: str, result: RoundResult) -> None:
        queue = command.queue
        self.faults.add(queue, kind, reason, result, holds_work=command.carries)
        self._on_fault(queue)

    def end_faults(self, commands: list[Command], faulted: set[str], result: RoundResult) -> None:
        """Queues whose fault lapsed and that this round used without trouble."""
        faulted.update(queue for queue, _kind, _reason in result.faults)
        tried = [(command.queue, command.reads_settings) for command in commands]
        self.faults.end_lapsed(tried, faulted, result)


class RoundTrip:
    """The round in flight on the link: built (plan.py), sent, its replies
    gathered, and ended into a RoundResult."""

    def __init__(
        self,
        link: RedisLink | ClusterLink,
        planner: Planner,
        reader: RoundReader,
        fetching: Fetching,
        *,
        clock: ServerClock,
        reply_timeout: float,
    ) -> None:
        self.link = link
        self.planner = planner
        self.reader = reader
        self.fetching = fetching
        self.clock = clock
        self.reply_timeout = reply_timeout
        self.current: Round | None = None
        #: An answered wait's fetch and reply, held while a round is in
        #: flight: the round's replies go first (Broker.on_wait_io).
        self.wake_held: tuple[FetchCommand, Any] | None = None

    @property
    def in_flight(self) -> bool:
        return self.current is not None

    @property
    def deadline(self) -> float | None:
        return self.current.deadline if self.current is not None else None

    def start(self, clock: float, free_slots: int, start_now: int) -> RoundResult | None:
        """Build and send a round (see Broker.start_round)."""
        assert self.current is None, "a round is in flight"
        worked = self.clock.measured
        commands = self.planner.build(clock, free_slots, start_now)
        if not commands:
            return None
        fetch = next((c for c in commands if isinstance(c, FetchCommand)), None)
        asked = fetch.count if fetch is not None else 0
        self.current = Round(commands, time.time(), clock + self.reply_timeout, fetch=fetch)
        self.current.start_now = min(start_now, asked)
        self.current.worked = worked
        try:
            if not self.link.is_open:
                self.link.open()
            self.link.send([command.build() for command in commands])
        except LinkError as exc:
            return self._end(exc)
        return None

    def on_io(self, readable: bool, writable: bool, fd: int | None) -> RoundResult | None:
        current = self.current
        try:
            if writable:
                self.link.on_writable(fd)
            if readable:
                replies = self.link.read(fd)
                if current is None:
                    return None  # e.g. the replies to what Broker.close sent
                current.replies += replies
        except LinkError as exc:
            if current is None:
                return None
            current.replies += exc.replies
            return self._end(exc)
        if current is not None and len(current.replies) >= len(current.commands):
            return self._end(None)
        return None

    def check_deadline(self, now: float) -> RoundResult | None:
        if self.current is None or now < self.current.deadline:
            return None
        self.link.close()
        return self._end(redis.TimeoutError(f"no reply from Redis in {self.reply_timeout}s"))

    def _end(self, error: Exception | None) -> RoundResult:
        """Use the replies that came, undo what the others carried."""
        ended = self.current
        assert ended is not None
        self.current = None
        received_at = time.time()
        result = RoundResult(worked=ended.worked, round_trip=received_at - ended.sent_at)
        result.started_now = ended.start_now
        end = RoundEnd(result, ended.sent_at, received_at)
        faulted = self.reader.read(ended.commands, ended.replies, end, error)
        if self.wake_held is not None:  # the wait's jobs, after the round's replies
            (fetch, reply), self.wake_held = self.wake_held, None
            result.started_now = min(result.started_now, len(result.fetched))
            self.reader.use(fetch, reply, RoundEnd(result, ended.sent_at, received_at))
        if error is not None:
            result.error = error
        elif ended.fetch is not None and result.error is None:
            fetch = ended.fetch
            self.fetching.after(fetch.queue, fetch.count, result, end.next_due)
        self.reader.end_faults(ended.commands, faulted, result)
        return result
