"""Schedules (repeatable jobs): cron or fixed-interval occurrences.

A schedule lives in Redis (``schedules`` hash: key → spec JSON, and
``schedule_times`` zset: key → next occurrence). Any worker parent may do
the scheduling duty: it reads which schedules are due, works out the
occurrences in Python (croniter, zoneinfo), and fires them with
``fire_schedule.lua``, which succeeds for exactly one caller per "next time"
and gives each occurrence a job id derived from its time. So each
occurrence is enqueued once, however many workers run, restart or deploy.

Cron parsing uses croniter: a well-kept library that handles the details
(ranges, steps, names, DST transitions together with zoneinfo) that a
hand-written parser would get wrong.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, NamedTuple
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson
from croniter import croniter

from sandboxq import payload
from sandboxq.keys import validate_name
from sandboxq.options import (
    MAX_EPOCH_SECONDS,
    MAX_SCHEDULE_LIMIT,
    MAX_SECONDS,
    SCHEDULE_OPTION_NAMES,
    JobOptions,
    ms,
    seconds,
)
from sandboxq.rows import JobRow

if TYPE_CHECKING:
    from sandboxq.keys import QueueKeys
    from sandboxq.scripts import Scripts

MISFIRE_POLICIES = ("skip", "once", "all")

#: An occurrence fired at most this late still counts as on time ("skip"
#: keeps it); older ones were missed.
MISFIRE_GRACE_MS = 2000

#: "all" enqueues at most this many missed occurrences, the most recent.
MAX_CATCH_UP = 100

#: Schedules fired per due check, per queue.
DUE_BATCH = 100

#: A schedule that cannot be fired (its stored spec is broken) is looked at
#: again this much later, not at every check.
BROKEN_RETRY_MS = 60_000


@dataclass(frozen=True, slots=True)
class Schedule:
    """One schedule's spec, as stored in Redis. Times are epoch milliseconds."""

    key: str
    name: str
    data: Any = None
    cron: str | None = None
    every_ms: int | None = None
    tz: str = "UTC"
    anchor_ms: int = 0  # "every" occurrences fall on anchor + k * every
    start_ms: int | None = None
    end_ms: int | None = None
    limit: int | None = None
    misfire: str = "once"
    options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def build(
        cls,
        key: str,
        *,
        now_ms: int,
        cron: str | None,
        every: float | None,
        tz: str,
        name: str | None,
        data: Any,
        start_at: Any,
        end_at: Any,
        limit: int | None,
        misfire: str,
        options: dict[str, Any],
    ) -> Schedule:
        """Validate everything ``Queue.schedule`` accepts; clear errors, no writes."""
        validate_name("schedule key", key)
        if (cron is None) == (every is None):
            raise ValueError("a schedule needs exactly one of cron= or every=")
        if cron is not None and (not isinstance(cron, str) or not croniter.is_valid(cron)):
            raise ValueError(f"bad cron expression {cron!r}")
        every_ms = None if every is None else _every_ms(every)
        try:
            ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError, TypeError):
            raise ValueError(f"unknown time zone {tz!r}") from None
        if misfire not in MISFIRE_POLICIES:
            raise ValueError(
                f"misfire must be one of {', '.join(MISFIRE_POLICIES)}, got {misfire!r}"
            )
        _check_limit(limit)
        start_ms, end_ms = _epoch_ms("start_at", start_at), _epoch_ms("end_at", end_at)
        if start_ms is not None and end_ms is not None and end_ms <= start_ms:
            raise ValueError("end_at must be after start_at")
        unknown = set(options) - SCHEDULE_OPTION_NAMES
        if unknown:
            raise TypeError(f"unknown schedule options: {', '.join(sorted(unknown))}")
        JobOptions.build(**options)  # validate now, rebuilt at each occurrence
        job_name = validate_name("job name", name if name is not None else key)
        return cls(
            key=key,
            name=job_name,
            data=data,
            cron=cron,
            every_ms=every_ms,
            tz=tz,
            anchor_ms=start_ms if start_ms is not None else now_ms,
            start_ms=start_ms,
            end_ms=end_ms,
            limit=limit,
            misfire=misfire,
            options=dict(options),
        )

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self))

    @classmethod
    def from_json(cls, raw: bytes | str) -> Schedule:
        return cls(**orjson.loads(raw))

    def next_after(self, t_ms: int) -> int | None:
        """The first occurrence strictly after ``t_ms``, or None past end_at."""
        if self.start_ms is not None and t_ms < self.start_ms:
            t_ms = self.start_ms - 1
        if self.every_ms is not None:
            steps = max((t_ms - self.anchor_ms) // self.every_ms + 1, 0)
            occurrence = self.anchor_ms + steps * self.every_ms
        else:
            assert self.cron is not None
            start = datetime.fromtimestamp(t_ms / 1000.0, ZoneInfo(self.tz))
            nxt = croniter(self.cron, start).get_next(datetime)
            occurrence = int(nxt.timestamp() * 1000)
        if self.end_ms is not None and occurrence > self.end_ms:
            return None
        return occurrence

    def describe(self) -> str:
        return f"cron {self.cron!r} ({self.tz})" if self.cron else f"every {self.every_ms} ms"


def _every_ms(every: Any) -> int:
    """A fixed interval in ms: more than 0 (at least 1 ms) and at most
    MAX_SECONDS."""
    if isinstance(every, bool) or not isinstance(every, (int, float)):
        raise ValueError(f"every must be a positive number of seconds, got {every!r}")
    try:
        interval = seconds("every", every)
    except ValueError:
        interval = 0.0
    if interval <= 0:
        raise ValueError(
            f"every must be a positive number of seconds, at most {MAX_SECONDS:.0f} "
            f"(100 years), got {every!r}"
        )
    return max(ms(interval), 1)


def _check_limit(limit: Any) -> None:
    """A schedule's ``limit``: None, or an int from 1 to MAX_SCHEDULE_LIMIT."""
    if limit is not None and (
        isinstance(limit, bool)
        or not isinstance(limit, int)
        or not 1 <= limit <= MAX_SCHEDULE_LIMIT
    ):
        raise ValueError(
            f"limit must be an int from 1 to {MAX_SCHEDULE_LIMIT} (None: no limit), got {limit!r}"
        )


def _epoch_ms(what: str, value: Any) -> int | None:
    """A time as epoch ms: from 1970 to the end of the year 9999."""
    if value is None:
        return None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError(f"{what} must be timezone-aware")
        epoch = value.timestamp()
    elif isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{what} must be a datetime or epoch seconds, got {value!r}")
    else:
        epoch = value
    if not 0 <= epoch <= MAX_EPOCH_SECONDS:  # NaN fails this too
        raise ValueError(
            f"{what} must be from 0 to {MAX_EPOCH_SECONDS} epoch seconds "
            f"(1970 to the end of 9999), got {value!r}"
        )
    return int(epoch * 1000)


def plan_occurrences(
    schedule: Schedule, next_ms: int, count: int, now_ms: int
) -> tuple[list[int], int]:
    """Which due occurrences to enqueue, and the next time to store (-1: done).

    ``next_ms`` is the stored next occurrence (due: ``<= now_ms``). Missed
    occurrences (older than the grace) follow the misfire policy.
    """
    due = [next_ms]
    upcoming = schedule.next_after(next_ms)
    while upcoming is not None and upcoming <= now_ms and len(due) < 100_000:
        due.append(upcoming)
        upcoming = schedule.next_after(upcoming)
    if upcoming is not None and upcoming <= now_ms:  # absurd backlog: jump ahead
        upcoming = schedule.next_after(now_ms)
    on_time = [o for o in due if now_ms - o <= MISFIRE_GRACE_MS]
    if schedule.misfire == "all":
        fire = due[-MAX_CATCH_UP:]
    elif schedule.misfire == "once":
        fire = due[-1:]
    else:
        fire = on_time[-1:]
    if schedule.limit is not None:
        fire = fire[: max(schedule.limit - count, 0)]
        if count + len(fire) >= schedule.limit:
            upcoming = None
    return fire, -1 if upcoming is None else upcoming


def occurrence_job_id(key: str, occurrence_ms: int) -> str:
    """The job id of one occurrence: the same whoever fires it."""
    return f"{key}@{occurrence_ms}"


class Fire(NamedTuple):
    """One due schedule's fire_schedule.lua call: its occurrences' jobs, if
    its next time is still ``expected_next`` (see Scripts.fire_schedule)."""

    key: str
    expected_next: int
    new_next: int
    counted: int
    jobs: list[JobRow]


# The due check, one round trip at a time: the worker's broker sends these
# commands in its rounds (worker/broker/schedules.py), fire_due on a
# blocking client; both read the replies with the functions below.
def next_times_command(keys: QueueKeys) -> tuple[Any, ...]:
    """The queue's next occurrence times, the due ones first."""
    return ("ZRANGE", keys.schedule_times, 0, DUE_BATCH - 1, "WITHSCORES")


def due_schedules(reply: Any, now_ms: int) -> tuple[list[tuple[str, int]], int | None]:
    """From next_times_command's reply: the due schedules (key, next time),
    and the earliest time one not due yet is (None: none). The reply is raw
    (key, score, key, score...) or, from redis-py, (key, score) pairs."""
    paired = bool(reply) and isinstance(reply[0], list | tuple)
    pairs = reply if paired else zip(reply[::2], reply[1::2], strict=True)
    times = [(key.decode(), int(float(score))) for key, score in pairs]
    due = [(key, score) for key, score in times if score <= now_ms]
    upcoming = min((score for _key, score in times if score > now_ms), default=None)
    return due, upcoming


def spec_commands(keys: QueueKeys, due: list[tuple[str, int]]) -> list[tuple[Any, ...]]:
    """The due schedules' specs, then their counts (one HMGET each)."""
    names = [key for key, _score in due]
    return [("HMGET", keys.schedules, *names), ("HMGET", keys.schedule_counts, *names)]


def plan_fires(
    due: list[tuple[str, int]], specs: list[Any], counts: list[Any], now_ms: int
) -> tuple[list[Fire], list[tuple[str, str]]]:
    """The fire_schedule.lua calls for the due schedules whose specs and
    counts spec_commands read, and the schedules that cannot be fired with
    why (a spec something else wrote, or one from an incompatible version):
    those are fired with no jobs and looked at again in BROKEN_RETRY_MS. A
    schedule deleted meanwhile (no spec) is left out."""
    fires: list[Fire] = []
    broken: list[tuple[str, str]] = []
    for (key, score), spec, count in zip(due, specs, counts, strict=True):
        if spec is None:
            continue
        try:
            fire, new_next, jobs = occurrence_jobs(key, spec, score, count, now_ms)
        except (TypeError, ValueError, KeyError, ArithmeticError) as exc:  # a spec gone bad
            broken.append((key, f"{type(exc).__name__}: {exc}"))
            fires.append(Fire(key, score, now_ms + BROKEN_RETRY_MS, 0, []))
            continue
        fires.append(Fire(key, score, new_next, len(fire), jobs))
    return fires, broken


def fired(reply: Any) -> int:
    """How many jobs a fire_schedule.lua call created (-1, it moved on: 0)."""
    return max(int(reply), 0)


def fire_due(scripts: Scripts, keys: QueueKeys, now_ms: int) -> tuple[int, list[tuple[str, str]]]:
    """Enqueue every due occurrence of the queue's schedules. Returns how
    many jobs were created, and the schedules that could not be fired with
    why (see :func:`plan_fires`); they never stop the caller. Safe to call
    from any number of processes.

    This is the blocking form, for callers that may wait (tests, tools). The
    worker runs the same check over three of its non-blocking rounds, with
    the same functions above.

    The data's size is not checked here: ``Queue.schedule`` checked it
    against the queue's ``max_payload_bytes`` when the schedule was made."""
    client = scripts.client
    due, _upcoming = due_schedules(client.execute_command(*next_times_command(keys)), now_ms)
    if not due:
        return 0, []
    pipe = client.pipeline(transaction=False)
    for command in spec_commands(keys, due):
        pipe.execute_command(*command)
    specs, counts = pipe.execute()
    fires, broken = plan_fires(due, specs, counts, now_ms)
    created = sum(fired(scripts.fire_schedule(keys, now_ms, *fire)) for fire in fires)
    return created, broken


def occurrence_jobs(
    key: str, spec_raw: bytes, next_ms: int, count_raw: bytes | None, now_ms: int
) -> tuple[list[int], int, list[JobRow]]:
    """The occurrences to fire, the next time to store, and their jobs as
    fire_schedule.lua takes them; raises on a broken spec."""
    schedule = Schedule.from_json(spec_raw)
    fire, new_next = plan_occurrences(schedule, next_ms, int(count_raw or 0), now_ms)
    options = JobOptions.build(**schedule.options)
    raw = payload.to_json(schedule.data, f"data of schedule {key!r}")
    jobs = [
        # An occurrence is due now: a delay in a stored spec is not used.
        JobRow.of(
            schedule.name,
            raw,
            options,
            job_id=occurrence_job_id(key, o),
            delay_ms=0,
            schedule=key,
        )
        for o in fire
    ]
    return fire, new_next, jobs
