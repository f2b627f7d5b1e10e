"""Job options: validation and normalization of what ``Queue.add`` accepts.

Everything is checked before anything is written, so bad input raises a clear
error and leaves Redis untouched. Units are seconds in the API; the Redis
layer stores milliseconds.
"""

from __future__ import annotations

import dataclasses
import math
import random
from dataclasses import dataclass
from typing import Any

import orjson

from sandboxq.keys import validate_name

#: Priorities live in the high bits of a waiting job's score; see common.lua.
PRIORITY_LIMIT = 2**20

#: The longest duration any option, retry or backoff may ask for: 100 years.
#: Far beyond any real delay, and small enough that every millisecond time
#: built from it stays exact in Lua's doubles (below 2**53).
MAX_SECONDS = 100 * 365 * 24 * 3600.0

#: The shortest job timeout: timeouts are stored in whole milliseconds, and
#: one that rounded to 0 would mean "no timeout".
MIN_TIMEOUT_SECONDS = 0.001

#: The most attempts a job may have. Any count up to it works: backoff stops
#: doubling once it reaches its cap.
MAX_ATTEMPTS = 2**31 - 1

# The bounds below are those of every other number the API stores in Redis.
# Each is read back by the worker (Python, whose limits mirror int64 in
# sandboxq/_fast.pyx) and by the Lua scripts (numbers are doubles there,
# exact below 2**53): a stored number beyond its bound is refused at the
# call, with a ValueError naming it, and nothing is written. fetch.lua
# repeats the bounds of the queue settings (a test checks they agree) and
# reports a stored value beyond them instead of using it.

#: The shortest backoff delay (and backoff max) other than 0 (retry at
#: once): 1 ms. Retry delays are stored in whole milliseconds, and a
#: smaller delay doubled would take thousands of attempts to reach any cap.
MIN_BACKOFF_SECONDS = 0.001

#: The most starts a rate limit (the queue's or each group's) may allow in
#: its window. The limiter logs each start still in the window (in Redis,
#: and mirrored in each worker), so a bigger limit could not bind before
#: that log outgrew Redis's memory; a billion keeps every count exact in
#: Lua and far inside int64.
MAX_RATE_LIMIT_JOBS = 10**9

#: The most jobs a concurrency limit (the queue's or each group's) may let
#: be active at once. Each active job runs in a child process of some
#: worker: no fleet runs a million, and a cap above the fleet is no cap
#: (None clears it).
MAX_CONCURRENCY = 10**6

#: The longest step of priority aging, in seconds per priority level: 30
#: days. A waiting job's score is then priority * aging_ms + the time (ms)
#: it started waiting (lua/include/common.lua); with |priority| below
#: PRIORITY_LIMIT (2**20) and times before the year 2248 (2**43 ms) it
#: stays below 2**53, exact in Lua, so aging never reorders jobs by rounding.
MAX_AGING_SECONDS = 30 * 24 * 3600.0

#: The most finished jobs a retention count (keep_completed, keep_failed)
#: may keep. Redis could not hold more (a billion jobs of a KiB each is a
#: terabyte), so a bigger count is no bound at all (``True`` keeps every
#: job); counts stay exact in Lua and inside int64.
MAX_RETENTION_COUNT = 10**9

#: The most occurrences a schedule's ``limit`` may ask for: one a second
#: for 31 years (None: no limit). The count of occurrences so far stays
#: exact in Lua and inside int64.
MAX_SCHEDULE_LIMIT = 10**9

#: The latest time a schedule may start or end: the last second of the year
#: 9999, the last one Python's datetime (which works out the occurrences)
#: can hold; in milliseconds, far below 2**53.
MAX_EPOCH_SECONDS = 253_402_300_799


@dataclass(frozen=True, slots=True)
class Backoff:
    """How long to wait before retrying a failed attempt.

    ``fixed``: always ``delay`` seconds. ``exponential``: ``delay * 2**(n-1)``
    after the n-th failed attempt, capped at ``max_delay``; ``jitter`` (0..1)
    takes up to that fraction off at random, so retries of many jobs that
    failed together spread out. ``delay`` and ``max_delay`` are 0 (retry at
    once) or from 1 ms to 100 years.
    """

    kind: str = "fixed"
    delay: float = 0.0
    jitter: float = 0.0
    max_delay: float | None = None

    @classmethod
    def fixed(cls, delay: float) -> Backoff:
        """Wait ``delay`` seconds before each retry."""
        return cls.parse({"type": "fixed", "delay": delay})

    @classmethod
    def exponential(
        cls, delay: float, *, jitter: float = 0.0, max_delay: float | None = None
    ) -> Backoff:
        """Wait ``delay * 2**(n-1)`` seconds after the n-th failed attempt, at
        most ``max_delay``, less up to ``jitter`` (0..1) of it at random."""
        return cls.parse(
            {"type": "exponential", "delay": delay, "jitter": jitter, "max": max_delay}
        )

    @classmethod
    def parse(cls, spec: Any) -> Backoff:
        """Accept a number of seconds (fixed), a dict ``{"type", "delay",
        "jitter", "max"}``, or a :class:`Backoff`. ``delay`` and ``max`` are
        0 or from MIN_BACKOFF_SECONDS (1 ms) to MAX_SECONDS. Raises
        ``TypeError`` or ``ValueError`` (only those) for anything else,
        e.g. a stored value something other than sandboxq wrote."""
        if isinstance(spec, Backoff):
            return spec
        if isinstance(spec, bool):
            raise ValueError(f"unknown backoff spec {spec!r}")
        if isinstance(spec, (int, float)):
            spec = {"type": "fixed", "delay": spec}
        if not isinstance(spec, dict):
            raise ValueError(f"unknown backoff spec {spec!r}: expected seconds or a dict")
        unknown = set(spec) - {"type", "delay", "jitter", "max"}
        kind = spec.get("type", "fixed")
        if unknown or kind not in ("fixed", "exponential"):
            raise ValueError(
                f"unknown backoff spec {spec!r}: type must be 'fixed' or "
                "'exponential', keys among type, delay, jitter, max"
            )
        delay = _backoff_seconds("backoff delay", spec.get("delay", 0.0))
        raw_jitter = spec.get("jitter") or 0.0
        try:
            jitter = float(raw_jitter)
        except (TypeError, ValueError, OverflowError):
            jitter = math.nan
        if not 0.0 <= jitter <= 1.0:  # NaN fails this too
            raise ValueError(f"backoff jitter must be between 0 and 1, got {raw_jitter!r}")
        cap = spec.get("max")
        max_delay = None if cap is None else _backoff_seconds("backoff max", cap)
        return cls(kind, delay, jitter, max_delay)

    def to_dict(self) -> dict[str, Any]:
        """The dict form :meth:`parse` accepts (as stored on the job)."""
        return {
            "type": self.kind,
            "delay": self.delay,
            "jitter": self.jitter,
            "max": self.max_delay,
        }

    def delay_for(self, failed_attempts: int, rand: float | None = None) -> float:
        """Seconds to wait after the ``failed_attempts``-th failure (1-based):
        a finite number from 0 to MAX_SECONDS, whatever the count (0 or
        negative counts as 1) and ``rand`` (the jitter's draw, clamped to
        0..1; default random)."""
        cap = _clamped_seconds(MAX_SECONDS if self.max_delay is None else self.max_delay)
        delay = min(_clamped_seconds(self.delay), cap)
        if self.kind == "exponential" and 0 < delay < cap:
            # A delay of at least 1 ms reaches a cap of at most MAX_SECONDS
            # within 42 doublings; more would only overflow (ldexp raises
            # past 2**1023).
            doublings = min(max(failed_attempts - 1, 0), _MAX_DOUBLINGS)
            delay = min(math.ldexp(delay, doublings), cap)
        if self.jitter:
            draw = random.random() if rand is None else rand
            jitter = min(max(self.jitter, 0.0), 1.0)
            delay *= 1.0 - jitter * min(max(draw, 0.0), 1.0)
        return _clamped_seconds(delay)


@dataclass(frozen=True, slots=True)
class Retention:
    """How many finished jobs to keep: at most ``count`` (up to
    MAX_RETENTION_COUNT, a billion) and none older than ``age`` seconds (up
    to 100 years). ``None`` means no bound; ``Retention(count=0)`` removes a
    job as soon as it finishes."""

    count: int | None = None
    age: float | None = None

    @classmethod
    def parse(cls, what: str, spec: Any) -> Retention | None:
        """Accept ``None`` (the default), ``True`` (keep every job),
        ``False`` (keep none), a count, a dict ``{"count", "age"}``, or a
        :class:`Retention`."""
        if spec is None or isinstance(spec, Retention):
            return spec
        if spec is True:
            return cls()
        if spec is False:
            return cls(count=0)
        if isinstance(spec, int) and not isinstance(spec, bool):
            spec = {"count": spec}
        if not isinstance(spec, dict) or set(spec) - {"count", "age"}:
            raise ValueError(
                f"{what} must be a count, {{'count': n, 'age': seconds}} or Retention, got {spec!r}"
            )
        count, age = spec.get("count"), spec.get("age")
        if count is not None and (
            not isinstance(count, int)
            or isinstance(count, bool)
            or not 0 <= count <= MAX_RETENTION_COUNT
        ):
            raise ValueError(
                f"{what} count must be an int from 0 to {MAX_RETENTION_COUNT} "
                f"(True keeps every job), got {count!r}"
            )
        return cls(count, None if age is None else seconds(f"{what} age", age))


#: The longest dedupe id, in bytes of UTF-8: it is part of a Redis key.
MAX_DEDUPE_ID_BYTES = 1024

#: The shortest dedupe window: windows are kept in whole milliseconds.
MIN_DEDUPE_TTL_SECONDS = 0.001


@dataclass(frozen=True, slots=True)
class Dedupe:
    """A deduplication window (``Queue.add(..., dedupe=...)``): while it is
    open, another add with the same ``id`` adds nothing and returns the job
    that holds the window, with ``created`` False.

    Without ``ttl`` the window lasts while that job is unfinished (not
    completed, failed or cancelled). With ``ttl`` it lasts ``ttl`` seconds
    from the add that opened it, whatever becomes of the job (a throttle);
    ``extend`` starts those seconds again at each deduplicated add (a
    leading-edge debounce). ``replace``: a deduplicated add whose job is
    still waiting or delayed gives that job its own data and options, and
    its delay starts again (with ``delay``: a trailing-edge debounce).
    """

    id: str
    ttl: float | None = None
    extend: bool = False
    replace: bool = False

    @classmethod
    def parse(cls, spec: Any) -> Dedupe:
        """Accept a :class:`Dedupe` or a dict ``{"id", "ttl", "extend",
        "replace"}`` (only ``id`` is required; an int id becomes its text).
        Raises ``TypeError`` or ``ValueError`` naming the bad value."""
        if isinstance(spec, Dedupe):
            spec = {"id": spec.id, "ttl": spec.ttl, "extend": spec.extend, "replace": spec.replace}
        if not isinstance(spec, dict):
            raise TypeError(
                "dedupe must be a dict {'id', 'ttl', 'extend', 'replace'} or a Dedupe, "
                f"got {spec!r}"
            )
        unknown = set(spec) - {"id", "ttl", "extend", "replace"}
        if unknown:
            raise ValueError(
                f"dedupe has unknown keys {', '.join(sorted(map(repr, unknown)))}: "
                "expected id, ttl, extend, replace"
            )
        if "id" not in spec:
            raise ValueError(f"dedupe needs an 'id', got {spec!r}")
        dedupe_id = spec["id"]
        if isinstance(dedupe_id, int) and not isinstance(dedupe_id, bool):
            dedupe_id = str(dedupe_id)
        validate_name("dedupe id", dedupe_id)
        size = len(dedupe_id.encode("utf-8", "surrogatepass"))
        if size > MAX_DEDUPE_ID_BYTES:
            raise ValueError(
                f"dedupe id must be at most {MAX_DEDUPE_ID_BYTES} bytes, got {size}: "
                f"{dedupe_id[:40]!r}..."
            )
        ttl = spec.get("ttl")
        if ttl is not None:
            ttl = seconds("dedupe ttl", ttl)
            if ttl < MIN_DEDUPE_TTL_SECONDS:
                raise ValueError(
                    f"dedupe ttl must be at least {MIN_DEDUPE_TTL_SECONDS} seconds "
                    f"(None: while the job is unfinished), got {spec['ttl']!r}"
                )
        extend = _flag("dedupe extend", spec.get("extend", False))
        if extend and ttl is None:
            raise ValueError(
                "dedupe extend restarts the ttl: it needs a ttl "
                f"(without one the window lasts while the job is unfinished), got {spec!r}"
            )
        return cls(dedupe_id, ttl, extend, _flag("dedupe replace", spec.get("replace", False)))

    def script_args(self) -> list[Any]:
        """The window as add_jobs.lua reads it: id, ttl_ms (0: none),
        extend and replace ("1" or "0")."""
        return [
            self.id,
            0 if self.ttl is None else max(ms(self.ttl), 1),
            "1" if self.extend else "0",
            "1" if self.replace else "0",
        ]


#: Doublings that take the shortest backoff delay past the longest cap
#: (MIN_BACKOFF_SECONDS * 2**42 > MAX_SECONDS), with room to spare.
_MAX_DOUBLINGS = 64


def _clamped_seconds(value: float) -> float:
    """``value`` within 0..MAX_SECONDS; NaN as 0."""
    return min(max(value, 0.0), MAX_SECONDS) if value == value else 0.0


def _backoff_seconds(what: str, value: Any) -> float:
    """A backoff delay: 0 (at once) or from MIN_BACKOFF_SECONDS to MAX_SECONDS."""
    delay = seconds(what, value)
    if 0 < delay < MIN_BACKOFF_SECONDS:
        raise ValueError(
            f"{what} must be 0 or at least {MIN_BACKOFF_SECONDS} seconds (1 ms), got {value!r}"
        )
    return delay


def seconds(what: str, value: Any) -> float:
    """A duration option: a real number of seconds from 0 to MAX_SECONDS."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{what} must be a number of seconds, not {type(value).__name__}")
    # The checks compare before converting: an int may be too big for a float.
    if value != value:
        raise ValueError(f"{what} must be a number of seconds, got nan")
    if value < 0:
        raise ValueError(f"{what} must be >= 0 seconds, got {value}")
    if value == math.inf:
        raise ValueError(f"{what} must be a finite number of seconds, got {value}")
    if value > MAX_SECONDS:
        raise ValueError(
            f"{what} must be at most {MAX_SECONDS:.0f} seconds (100 years), got {value}"
        )
    return float(value)


def timeout_seconds(what: str, value: Any) -> float | None:
    """A timeout: None (no timeout) or at least MIN_TIMEOUT_SECONDS."""
    if value is None:
        return None
    timeout = seconds(what, value)
    if timeout < MIN_TIMEOUT_SECONDS:
        raise ValueError(
            f"{what} must be at least {MIN_TIMEOUT_SECONDS} seconds (None for no timeout), "
            f"got {timeout}"
        )
    return timeout


def ms(seconds: float) -> int:
    return round(seconds * 1000)


#: How long a completed job is kept unless its ``keep_completed`` says
#: otherwise: long enough for any waiter to read its result, and bounded, so
#: a busy queue does not fill Redis with finished jobs. ``keep_completed=True``
#: keeps them all.
DEFAULT_KEEP_COMPLETED = Retention(age=24 * 3600.0)


@dataclass(frozen=True, slots=True)
class JobOptions:
    """The validated options of one job, ready to be written."""

    job_id: str | None = None
    delay: float = 0.0
    priority: int = 0
    attempts: int = 1
    backoff: Backoff | None = None
    timeout: float | None = None
    keep_completed: Retention | None = None
    keep_failed: Retention | None = None
    group: str | None = None
    manual_retry_only: bool = False
    dedupe: Dedupe | None = None

    @classmethod
    def build(
        cls,
        *,
        job_id: Any = None,
        delay: Any = 0.0,
        priority: Any = 0,
        attempts: Any = 1,
        backoff: Any = None,
        timeout: Any = None,
        keep_completed: Any = None,
        keep_failed: Any = None,
        group: Any = None,
        manual_retry_only: Any = False,
        dedupe: Any = None,
    ) -> JobOptions:
        """Check and normalize the options of one job, as ``Queue.add``
        takes them; raises ``TypeError`` or ``ValueError`` naming the bad one."""
        if job_id is not None:
            if isinstance(job_id, int) and not isinstance(job_id, bool):
                job_id = str(job_id)
            validate_name("job_id", job_id)
            if job_id.isdigit():
                raise ValueError(
                    f"job_id {job_id!r} must not be a plain integer: those are the "
                    "ids sandboxq generates; use a prefix such as 'order-42'"
                )
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise TypeError(f"priority must be an int, not {type(priority).__name__}")
        if not -PRIORITY_LIMIT < priority < PRIORITY_LIMIT:
            raise ValueError(
                f"priority must be between {-PRIORITY_LIMIT + 1} and "
                f"{PRIORITY_LIMIT - 1}, got {priority}"
            )
        if isinstance(attempts, bool) or not isinstance(attempts, int):
            raise TypeError(f"attempts must be an int, not {type(attempts).__name__}")
        if attempts < 1:
            raise ValueError(f"attempts must be >= 1, got {attempts}")
        if attempts > MAX_ATTEMPTS:
            raise ValueError(f"attempts must be at most {MAX_ATTEMPTS}, got {attempts}")
        return cls(
            job_id=job_id,
            delay=seconds("delay", delay),
            priority=priority,
            attempts=attempts,
            backoff=None if backoff is None else Backoff.parse(backoff),
            timeout=timeout_seconds("timeout", timeout),
            keep_completed=Retention.parse("keep_completed", keep_completed)
            or DEFAULT_KEEP_COMPLETED,
            keep_failed=Retention.parse("keep_failed", keep_failed),
            group=None if group is None else validate_name("group", group),
            manual_retry_only=_flag("manual_retry_only", manual_retry_only),
            dedupe=None if dedupe is None else Dedupe.parse(dedupe),
        )

    def hash_fields(self) -> list[Any]:
        """The job-hash fields these options set, as a flat field/value list."""
        fields: list[Any] = ["attempts", self.attempts]
        if self.group is not None:
            fields += ["group", self.group]
        if self.manual_retry_only:
            fields += ["manual_retry_only", "1"]
        if self.backoff is not None:
            fields += ["backoff", orjson.dumps(self.backoff.to_dict())]
        if self.timeout is not None:
            fields += ["timeout", ms(self.timeout)]
        for prefix, keep in (("kc", self.keep_completed), ("kf", self.keep_failed)):
            if keep is not None and keep.count is not None:
                fields += [f"{prefix}_count", keep.count]
            if keep is not None and keep.age is not None:
                fields += [f"{prefix}_age", ms(keep.age)]
        if self.dedupe is not None:
            fields += ["dedupe_id", self.dedupe.id]
        return fields


#: Options ``Queue.add`` and ``add_bulk`` accept, besides name and data:
#: the fields of :class:`JobOptions`, so a new option is named once.
JOB_OPTION_NAMES = frozenset(option.name for option in dataclasses.fields(JobOptions))

#: Options a schedule takes: those of ``add`` but ``job_id`` (each
#: occurrence's id is derived from its time), ``delay`` (the schedule
#: says when it runs) and ``dedupe`` (an occurrence is one job already).
SCHEDULE_OPTION_NAMES = JOB_OPTION_NAMES - {"job_id", "delay", "dedupe"}

#: Options that name one job, so a queue's ``defaults`` cannot hold them.
PER_JOB_OPTION_NAMES = frozenset({"job_id", "dedupe"})


def _flag(what: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{what} must be True or False, not {type(value).__name__}")
    return value


def positive_int(what: str, value: Any, maximum: int) -> int | None:
    """A count setting: None (clear it) or an int from 1 to ``maximum``."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= maximum:
        raise ValueError(
            f"{what} must be an int from 1 to {maximum} (None to clear), got {value!r}"
        )
    return value


def rate_limit_fields(
    prefix: str, max_jobs: int | None, per_seconds: float | None
) -> dict[str, Any]:
    """Meta fields of a rate limit: ``max_jobs`` (at most MAX_RATE_LIMIT_JOBS)
    per ``per_seconds`` (more than 0, at most MAX_SECONDS), or clear it."""
    if max_jobs is None:
        return {f"{prefix}_max": None, f"{prefix}_window_ms": None}
    jobs = positive_int("max_jobs", max_jobs, MAX_RATE_LIMIT_JOBS)
    if per_seconds is None or seconds("per_seconds", per_seconds) == 0:
        raise ValueError(f"a rate limit needs per_seconds > 0, got {per_seconds!r}")
    return {f"{prefix}_max": jobs, f"{prefix}_window_ms": max(ms(per_seconds), 1)}


def aging_ms(seconds_per_level: Any) -> int | None:
    """The meta field of priority aging: None (strict priority), or more than
    0 and at most MAX_AGING_SECONDS seconds per level, in ms (at least 1)."""
    if seconds_per_level is None:
        return None
    step = seconds("seconds_per_level", seconds_per_level)
    if step == 0:
        raise ValueError("seconds_per_level must be > 0 (None for strict priority)")
    if step > MAX_AGING_SECONDS:
        raise ValueError(
            f"seconds_per_level must be at most {MAX_AGING_SECONDS:.0f} (30 days), "
            f"got {seconds_per_level!r}"
        )
    return max(ms(step), 1)
