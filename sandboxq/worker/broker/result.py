"""What one round brought back to the parent loop (:class:`RoundResult`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sandboxq import fast


@dataclass(slots=True)
class RoundResult:
    """One round's outcome: what its replies (and an answered wait's fetch)
    mean for the parent."""

    #: Leased jobs: (queue, job id, decoded hash fields), or for a record
    #: that cannot be decoded (queue, stored id, its CorruptRecord).
    fetched: list[tuple[str, str, dict[str, Any] | fast.CorruptRecord]] = field(
        default_factory=list
    )
    #: How many of ``fetched`` (the first ones) Redis marked started; the
    #: others were prefetched, and their start is reported later.
    started_now: int = 0
    #: Seconds from sending the round to its last reply.
    round_trip: float = 0.0
    #: Settled jobs: (queue, job id, status) with status completed, failed,
    #: retrying, rate-limited, settled:<status> (sent twice) or lost.
    finished: list[tuple[str, str, str]] = field(default_factory=list)
    #: Jobs recovered from dead workers: (queue, requeued, failed, cancelled ids).
    recovered: list[tuple[str, list[str], list[str], list[str]]] = field(default_factory=list)
    #: Jobs this worker holds whose cancel a person asked for: (queue, job id).
    cancel_requested: list[tuple[str, str]] = field(default_factory=list)
    #: Durable steps sent: (queue, job id, key, step.lua's status).
    stepped: list[tuple[str, str, str, str]] = field(default_factory=list)
    #: Queues where a limit (rate, concurrency, a paused group) held jobs back.
    rate_limited: list[str] = field(default_factory=list)
    #: Schedule occurrences this worker enqueued: (queue, how many).
    scheduled: list[tuple[str, int]] = field(default_factory=list)
    #: Schedules that could not be fired: (queue, key, why).
    broken_schedules: list[tuple[str, str, str]] = field(default_factory=list)
    #: Jobs fetched again while this worker still runs them: (queue, job id).
    still_running: list[tuple[str, str]] = field(default_factory=list)
    #: Jobs a lost fetch reply had leased here, handed back: (queue, ids).
    reclaimed: list[tuple[str, list[str]]] = field(default_factory=list)
    #: Jobs this worker handed back (hand_back.lua): (queue, ids).
    handed_back: list[tuple[str, list[str]]] = field(default_factory=list)
    #: What the server check found worth a warning (at start).
    warnings: list[str] = field(default_factory=list)
    #: The round did the worker's work (not only its setup): at start, the
    #: first such round is when the worker is ready.
    worked: bool = False
    #: Why the server cannot be used (too old), from the server check.
    unsupported: str | None = None
    #: Queues this round found at fault (paused for now): (queue, kind,
    #: reason), kind "bad_setting" or "queue_error".
    faults: list[tuple[str, str, str]] = field(default_factory=list)
    #: Queues whose fault is over: the round used them without trouble.
    recovered_queues: list[str] = field(default_factory=list)
    #: The Redis error this round ran into, if any; what is listed above
    #: happened anyway, and what the failed commands carried is pending again.
    error: Exception | None = None
