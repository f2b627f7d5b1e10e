"""Running one handler and turning what happened into a finish entry.

Shared by the worker child (which runs the handler), the worker parent (which
settles the job in Redis) and the inline test runner (which does both).
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from sandboxq.errors import RateLimited, Retry, Unrecoverable
from sandboxq.handlers import JobContext
from sandboxq.options import Backoff, ms
from sandboxq.payload import load_json

COMPLETED = "completed"
FAILED = "failed"  # an attempt failed; retries may follow
UNRECOVERABLE = "unrecoverable"  # fail now, no retries
RETRY = "retry"  # the handler asked to run again later; no attempt spent
RATE_LIMITED = "ratelimited"  # a downstream limit: pause the job's scope; no attempt spent


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one run of a job ended."""

    kind: str
    value: str  # the result as JSON (completed) or an error message
    traceback: str = ""
    delay: float = 0.0  # seconds, for RETRY

    @classmethod
    def error(cls, message: str, *, unrecoverable: bool = False) -> Outcome:
        return cls(UNRECOVERABLE if unrecoverable else FAILED, message)


def describe_error(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def run(func: Any, ctx: JobContext) -> Outcome:
    """Call the handler and classify the result or exception."""
    try:
        result = func(ctx)
    except Retry as exc:
        return Outcome(RETRY, describe_error(exc), delay=exc.delay)
    except RateLimited as exc:
        return Outcome(RATE_LIMITED, describe_error(exc), delay=exc.retry_after)
    except Unrecoverable as exc:
        return Outcome(UNRECOVERABLE, describe_error(exc), traceback.format_exc())
    except Exception as exc:
        return Outcome(FAILED, describe_error(exc), traceback.format_exc())
    try:
        return Outcome(COMPLETED, orjson.dumps(result).decode())
    except TypeError as exc:
        return Outcome(FAILED, f"TypeError: result is not JSON-serializable: {exc}")


def run_stored(
    func: Any,
    queue: str,
    job_id: str,
    name: str,
    stored: tuple[bytes | None, bytes | None],
    attempts_made: int,
    retries: int,
    report: Callable[[str, str, str], None],
) -> Outcome:
    """Run a job as Redis holds it: ``stored`` is its data and (a flow parent)
    its children's results, still JSON. They are parsed here, in whatever
    process runs the handler, so the worker parent never parses payloads."""
    data_json, children_json = stored
    try:
        data, children = load_json(data_json), load_json(children_json)
    except orjson.JSONDecodeError as exc:
        return Outcome.error(f"the job's stored data is not valid JSON: {exc}", unrecoverable=True)
    ctx = JobContext(queue, job_id, name, data, attempts_made, report, retries, children)
    return run(func, ctx)


def finish_entry(job_id: str, fields: dict[str, Any], outcome: Outcome) -> list[Any]:
    """The finish script's 5 values for this job: the retry delay comes from
    the handler (RETRY) or the job's backoff policy (FAILED)."""
    delay = outcome.delay
    if outcome.kind == FAILED and fields.get("backoff"):
        backoff = Backoff.parse(load_json(fields["backoff"]))
        delay = backoff.delay_for(fields.get("attempts_made", 0) + 1)
    return [job_id, outcome.kind, outcome.value, outcome.traceback, ms(delay)]
