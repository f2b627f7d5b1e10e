"""Reading a round: its replies applied behind each queue's fault barrier.

Replies come in order, so a failure cuts a round after its last reply:
the replies that did arrive are used, and what the other commands carried
goes in the next round (each command's ``undo``, commands.py). A reply
that cannot be used, or a queue's command Redis refused for the queue's
own reason, pauses that queue, not the worker (faults.py); any other
Redis error is the worker's trouble to wait out.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis

from sandboxq.worker.broker.commands import Command, RoundEnd
from sandboxq.worker.broker.faults import BadSetting, QueueFaults
from sandboxq.worker.broker.queue_commands import FetchCommand
from sandboxq.worker.broker.result import StepResult
from sandboxq.worker.link import LinkError
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

    def _refused(self, command: Command, reply: Exception, result: StepResult) -> None:
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

    def _unusable(self, command: Command, exc: Exception, result: StepResult) -> None:
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

    def _fault(self, command: Command, kind: str, reason: str, result: StepResult) -> None:
        queue = command.queue
        self.faults.add(queue, kind, reason, result, holds_work=command.carries)
        self._on_fault(queue)

    def end_faults(self, commands: list[Command], faulted: set[str], result: StepResult) -> None:
        """Queues whose fault lapsed and that this round used without trouble."""
        faulted.update(queue for queue, _kind, _reason in result.faults)
        tried = [(command.queue, command.reads_settings) for command in commands]
        self.faults.end_lapsed(tried, faulted, result)
