"""Job options: validation and normalization of what ``Queue.add`` accepts.

Everything is checked before anything is written, so bad input raises a clear
error and leaves Redis untouched. Units are seconds in the API; the Redis
layer stores milliseconds.
"""

from __future__ import annotations

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

#: Options ``Queue.add`` and ``add_bulk`` accept, besides name and data.
JOB_OPTION_NAMES = frozenset(
    {
        "job_id",
        "delay",
        "priority",
        "attempts",
        "backoff",
        "timeout",
        "keep_completed",
        "keep_failed",
        "group",
        "manual_retry_only",
    }
)


@dataclass(frozen=True, slots=True)
class Backoff:
    """How long to wait before retrying a failed attempt.

    ``fixed``: always ``delay`` seconds. ``exponential``: ``delay * 2**(n-1)``
    after the n-th failed attempt, capped at ``max_delay``; ``jitter`` (0..1)
    takes up to that fraction off at random, so retries of many jobs that
    failed together spread out.
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
        "jitter", "max"}``, or a :class:`Backoff`."""
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
        delay = seconds("backoff delay", spec.get("delay", 0.0))
        jitter = float(spec.get("jitter") or 0.0)
        if not 0.0 <= jitter <= 1.0:
            raise ValueError(f"backoff jitter must be between 0 and 1, got {jitter}")
        cap = spec.get("max")
        max_delay = None if cap is None else seconds("backoff max", cap)
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
        """Seconds to wait after the ``failed_attempts``-th failure (1-based)."""
        cap = MAX_SECONDS if self.max_delay is None else self.max_delay
        delay = min(self.delay, cap)
        doublings = max(failed_attempts - 1, 0)
        if self.kind == "exponential" and 0 < delay < cap:
            # Compare exponents before computing the power: 2.0 ** n overflows
            # past n = 1023, and the cap is reached long before that.
            over = doublings >= math.log2(cap / delay)
            delay = cap if over else min(math.ldexp(delay, doublings), cap)
        if self.jitter:
            delay *= 1.0 - self.jitter * (random.random() if rand is None else rand)
        return delay


@dataclass(frozen=True, slots=True)
class Retention:
    """How many finished jobs to keep: at most ``count`` and none older than
    ``age`` seconds. ``None`` means no bound; ``Retention(count=0)`` removes a
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
            not isinstance(count, int) or isinstance(count, bool) or count < 0
        ):
            raise ValueError(f"{what} count must be an int >= 0, got {count!r}")
        return cls(count, None if age is None else seconds(f"{what} age", age))


def seconds(what: str, value: Any) -> float:
    """A duration option: a real number of seconds from 0 to MAX_SECONDS."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{what} must be a number of seconds, not {type(value).__name__}")
    if math.isnan(value):
        raise ValueError(f"{what} must be a number of seconds, got nan")
    if value < 0:
        raise ValueError(f"{what} must be >= 0 seconds, got {value}")
    if math.isinf(value):
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
        return fields


def _flag(what: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{what} must be True or False, not {type(value).__name__}")
    return value


def positive_int(what: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{what} must be an int >= 1 (None to clear), got {value!r}")
    return value


def rate_limit_fields(
    prefix: str, max_jobs: int | None, per_seconds: float | None
) -> dict[str, Any]:
    """Meta fields of a rate limit: ``max_jobs`` per ``per_seconds`` (or clear)."""
    if max_jobs is None:
        return {f"{prefix}_max": None, f"{prefix}_window_ms": None}
    if per_seconds is None or seconds("per_seconds", per_seconds) == 0:
        raise ValueError(f"a rate limit needs per_seconds > 0, got {per_seconds!r}")
    return {
        f"{prefix}_max": positive_int("max_jobs", max_jobs),
        f"{prefix}_window_ms": max(ms(per_seconds), 1),
    }
