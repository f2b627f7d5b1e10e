"""One class per command a round sends.

Each command knows what it sends (:meth:`Command.build`, one Redis command
with one reply), what its reply does (:meth:`Command.apply`, into the part
of the broker that owns that state and into the round's result), and what
to keep if it failed or its reply was lost (:meth:`Command.undo`: what it
carried goes in a later round). A new Redis command is one new class (here
for the worker's own, in queue_commands.py for a queue's jobs), and the
line of plan.py that sends it.

Script calls are described by ``Scripts(None)`` (each wrapper returns its
:class:`~sandboxq.scripts.ScriptCall`): the worker sends them on its own
non-blocking link.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from sandboxq.redis_checks import ServerCheck, UnsupportedRedis
from sandboxq.scripts import ScriptCall, lua_source
from sandboxq.worker.broker.charts import Charts
from sandboxq.worker.broker.result import RoundResult
from sandboxq.worker.broker.server_setup import ServerSetup
from sandboxq.worker.clock import ServerClock
from sandboxq.worker.trouble import is_transient


@dataclass(slots=True)
class RoundEnd:
    """What replies are applied to: the round's result, when it was sent
    and answered (time.time(), for the clock), and when the fetches said to
    look again."""

    result: RoundResult
    sent_at: float = 0.0
    received_at: float = 0.0
    next_due: list[int] = field(default_factory=list)


@dataclass(slots=True)
class Command:
    #: The command's name in fault reasons ("Redis refused its fetch command").
    kind: ClassVar[str]
    #: It carries what the worker owes Redis for jobs it holds: when it
    #: fails for its queue's own reason, that queue's share of every round
    #: waits until the fault's retry (else each round would fail again).
    carries: ClassVar[bool] = False
    #: It reads what a bad setting spoils: its success ends such a fault.
    reads_settings: ClassVar[bool] = False
    #: A refusal of it never fails the round (the charts' counts).
    optional: ClassVar[bool] = False
    #: Whose command it is: a queue's, or "" for the worker's own.
    queue: str = field(default="", kw_only=True)

    def build(self) -> tuple[Any, ...]:
        raise NotImplementedError

    def apply(self, reply: Any, end: RoundEnd) -> None:
        """Use the reply (raise if it cannot be: the queue pauses)."""

    def undo(self, error: Exception) -> None:
        """It failed or its reply was lost: keep what it carried."""

    def answered_by(self, refusal: Exception) -> bool:
        """Whether Redis refusing it is an answer to apply, not a failure."""
        return False


@dataclass(slots=True)
class RawCommand(Command):
    """A plain Redis command."""

    sent: tuple[Any, ...]

    def build(self) -> tuple[Any, ...]:
        return self.sent


@dataclass(slots=True)
class ScriptCommand(Command):
    """A script call."""

    call: ScriptCall

    def build(self) -> tuple[Any, ...]:
        return self.call.command()


# -- the worker's own --------------------------------------------------------------
@dataclass(slots=True)
class TimeCommand(Command):
    """TIME, first in its round: the server's clock (clock.py)."""

    kind = "time"
    clock: ServerClock

    def build(self) -> tuple[Any, ...]:
        return ("TIME",)

    def apply(self, reply: Any, end: RoundEnd) -> None:
        self.clock.sample(end.sent_at, end.received_at, reply)


@dataclass(slots=True)
class HeartbeatCommand(ScriptCommand):
    """heartbeat.lua: this worker's registry entry."""

    kind = "heartbeat"


@dataclass(slots=True)
class InfoCommand(RawCommand):
    """INFO server, for the server check."""

    kind = "info"
    setup: ServerSetup
    check: ServerCheck

    def apply(self, reply: Any, end: RoundEnd) -> None:
        self.check.note_info(reply)

    def undo(self, error: Exception) -> None:
        self.setup.redo()


@dataclass(slots=True)
class ConfigCommand(InfoCommand):
    """CONFIG GET of one risky setting; after the last, the verdict."""

    kind = "config"

    def answered_by(self, refusal: Exception) -> bool:
        """CONFIG refused for good (disabled or renamed, as on managed
        services; not allowed to this user) gets the check's note, as in
        check_server; trouble that passes is waited out."""
        return not is_transient(refusal)

    def apply(self, reply: Any, end: RoundEnd) -> None:
        self.check.note_config(reply)
        if self.check.complete:
            try:
                end.result.warnings = self.check.verdict()
            except UnsupportedRedis as exc:
                end.result.unsupported = str(exc)


@dataclass(slots=True)
class LoadCommand(Command):
    """SCRIPT LOAD of one script."""

    kind = "load"
    setup: ServerSetup
    name: str

    def build(self) -> tuple[Any, ...]:
        return ("SCRIPT", "LOAD", lua_source(self.name))

    def undo(self, error: Exception) -> None:
        self.setup.redo()


@dataclass(slots=True)
class ConfigureCommand(ScriptCommand):
    """configure.lua: the worker's own flow-control options on a queue."""

    kind = "configure"
    setup: ServerSetup

    def undo(self, error: Exception) -> None:
        self.setup.redo()


@dataclass(slots=True)
class StatsCommand(RawCommand):
    """A write of the charts' counts (HINCRBY, EXPIRE) or of a depth."""

    kind = "stats"
    optional = True
    charts: Charts
    #: The counts a flush's first command took, given back if it fails.
    taken: dict[tuple[str, int, str], int] | None = None

    def undo(self, error: Exception) -> None:
        if self.taken is not None:  # sent again with the next
            self.charts.counts.give_back(self.taken)


@dataclass(slots=True)
class DepthCommand(RawCommand):
    """One of a queue's depth reads (Charts.depth_reads)."""

    kind = "depth"
    optional = True
    charts: Charts
    minute: int

    def apply(self, reply: Any, end: RoundEnd) -> None:
        self.charts.note_depth(self.queue, self.minute, int(reply or 0))

    def undo(self, error: Exception) -> None:
        self.charts.forget_depth(self.queue)


@dataclass(slots=True)
class UnblockCommand(RawCommand):
    """Stopping: CLIENT UNBLOCK of the idle wait, which then answers at once
    (as if it timed out) with its fetch's reply (wait.py)."""

    kind = "unblock"
    #: What to do if Redis refuses it (Wait.unblock_refused).
    refused: Callable[[], None]

    def answered_by(self, refusal: Exception) -> bool:
        return True  # any refusal: give the wait up instead (apply)

    def apply(self, reply: Any, end: RoundEnd) -> None:
        if isinstance(reply, Exception):
            self.refused()
