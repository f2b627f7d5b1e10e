"""Running one handler and turning what happened into a finish entry.

Shared by the worker child (which runs the handler), the worker parent (which
settles the job in Redis) and the inline test runner (which does both).
"""

from __future__ import annotations

import asyncio
import inspect
import os
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import orjson

from sandboxq import hooks
from sandboxq.caps import DEFAULT_MAX_RESULT_BYTES, MAX_ERROR_BYTES, MAX_TRACEBACK_BYTES, clip_text
from sandboxq.errors import RateLimited, Retry, Unrecoverable
from sandboxq.handlers import AsyncStepRecorder, JobContext, StepRecorder
from sandboxq.options import Backoff, ms, seconds
from sandboxq.payload import load_json, to_json
from sandboxq.steps import steps_json

COMPLETED = "completed"
FAILED = "failed"  # an attempt failed; retries may follow
UNRECOVERABLE = "unrecoverable"  # fail now, no retries
RETRY = "retry"  # the handler asked to run again later; no attempt spent
RATE_LIMITED = "ratelimited"  # a downstream limit: pause the job's scope; no attempt spent

#: Every way a run can end that a child may report.
OUTCOMES = frozenset({COMPLETED, FAILED, UNRECOVERABLE, RETRY, RATE_LIMITED})
#: A person cancelled the job and the worker parent stopped it (or never
#: started it): finish.lua settles it as cancelled. Only the parent sends it;
#: a child's done frame cannot (it is not in OUTCOMES).
CANCELLED = "cancelled"
#: The worker parent never started the job (no handler for its name there,
#: say) and puts it back, after the entry's delay, with no attempt spent
#: whatever its options (finish.lua). Only the parent sends it, as CANCELLED.
UNSTARTED = "unstarted"

#: How long the tasks an async handler left running get to end once cancelled.
LEFTOVER_TASKS_SECONDS = 1.0


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
    """``Type: message``, capped. The exception is the handler's object: its
    ``__str__`` may raise, and that must not take the child down with it."""
    name = type(exc).__name__
    try:
        text = str(exc)
    except BaseException as failed:  # any failure is reported, never raised
        text = f"<str() of the exception raised {type(failed).__name__}>"
    return clip_text(f"{name}: {text}" if text else name, MAX_ERROR_BYTES)


def format_traceback() -> str:
    """The traceback of the exception being handled, capped (start and end)."""
    try:
        text = traceback.format_exc()
    except BaseException:  # as in describe_error
        text = "<the traceback could not be formatted>"
    return clip_text(text, MAX_TRACEBACK_BYTES, keep_tail=True)


def run(func: Any, ctx: JobContext, max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES) -> Outcome:
    """Call the handler and classify the result or exception."""
    try:
        result = call_handler(func, ctx)
    except Exception as exc:
        outcome = raised(exc)
    else:
        outcome = completed(result, max_result_bytes)
    if ctx._unrecorded_step is None:
        return outcome  # the common case: every step's result was kept
    return _not_again_after_unrecorded_step(ctx, outcome)


async def run_async(
    func: Any, ctx: JobContext, max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES
) -> Outcome:
    """:func:`run` for a caller already on an event loop, awaited on that
    loop: a child sharing its loop with other jobs (--async-concurrency),
    each job in a task of its own (cancelling that task raises
    CancelledError out of here, and the child reports the stop), or
    ``AsyncEagerQueue``, whose handlers may use what the caller's loop owns."""
    try:
        result = hooks.with_middleware(func)(ctx)
        if inspect.isawaitable(result):
            result = await result
    except Exception as exc:
        outcome = raised(exc)
    else:
        outcome = completed(result, max_result_bytes)
    if ctx._unrecorded_step is None:
        return outcome
    return _not_again_after_unrecorded_step(ctx, outcome)


def raised(exc: Exception) -> Outcome:
    """How an attempt that raised ``exc`` ends (call it while handling it:
    the traceback is the one being handled)."""
    if isinstance(exc, Retry):
        return _run_later(RETRY, exc, "delay")
    if isinstance(exc, RateLimited):
        return _run_later(RATE_LIMITED, exc, "retry_after")
    kind = UNRECOVERABLE if isinstance(exc, Unrecoverable) else FAILED
    return Outcome(kind, describe_error(exc), format_traceback())


def runs_concurrently(func: Any) -> bool:
    """Whether jobs of this handler may share a worker child with other
    such jobs (--async-concurrency): an ``async def`` handler, which awaits
    instead of blocking. Any other handler (one that merely returns an
    awaitable too) runs alone in its child. The worker parent and its
    children decide with this one function, so they agree on which jobs
    share a child."""
    return inspect.iscoroutinefunction(func)


def _not_again_after_unrecorded_step(ctx: JobContext, outcome: Outcome) -> Outcome:
    """A step's function ran and its result could not be recorded
    (UnrecordableStep): running the job again would repeat its side effect.
    A handler that caught that error and then raised something else, or
    asked to run again, fails for good all the same, saying why."""
    key = ctx._unrecorded_step
    if key is None or outcome.kind not in (FAILED, RETRY, RATE_LIMITED):
        return outcome
    message = (
        f"{outcome.value} (not retried: step {key!r} ran earlier in this attempt and its "
        "result could not be recorded, so its side effect must not be repeated)"
    )
    return Outcome(UNRECOVERABLE, clip_text(message, MAX_ERROR_BYTES), outcome.traceback)


# -- async handlers ---------------------------------------------------------------
#: The event loop async handlers run on, and the process it belongs to: it
#: lives as long as the worker child (a handler's connection pool or client
#: session stays usable from one job to the next), and a forked process
#: makes its own.
_loop: asyncio.AbstractEventLoop | None = None
_loop_pid = 0


def call_handler(func: Any, ctx: JobContext) -> Any:
    """The handler's return value, through the job middleware (hooks.py).
    An ``async def`` handler (or any that returns an awaitable) runs to
    completion on this process's event loop; tasks it started and left
    running are cancelled when it returns, so one job's work does not run on
    during the next. Timeouts need nothing here: the worker parent stops the
    whole child, whatever it runs."""
    result = hooks.with_middleware(func)(ctx)
    if not inspect.isawaitable(result):
        return result
    loop = handler_loop()
    try:
        return loop.run_until_complete(result)
    finally:
        _cancel_leftovers(loop)


def handler_loop() -> asyncio.AbstractEventLoop:
    global _loop, _loop_pid
    if _loop is None or _loop_pid != os.getpid() or _loop.is_closed():
        _loop, _loop_pid = asyncio.new_event_loop(), os.getpid()
        asyncio.set_event_loop(_loop)
    return _loop


def _cancel_leftovers(loop: asyncio.AbstractEventLoop) -> None:
    leftovers = [task for task in asyncio.all_tasks(loop) if not task.done()]
    for task in leftovers:
        task.cancel()
    if leftovers:  # let them see the cancellation; one that ignores it runs on
        loop.run_until_complete(asyncio.wait(leftovers, timeout=LEFTOVER_TASKS_SECONDS))


def stuck_tasks() -> int:
    """How many tasks on this process's handler loop still run after the
    job that left them was cleaned up: they ignored their cancellation, and
    would run on inside every later job (the worker child then leaves)."""
    if _loop is None or _loop_pid != os.getpid() or _loop.is_closed():
        return 0
    return sum(not task.done() for task in asyncio.all_tasks(_loop))


def _run_later(kind: str, exc: Retry | RateLimited, attribute: str) -> Outcome:
    """A Retry or RateLimited, its delay checked again: the constructor
    checks it, but a handler may set the attribute afterwards."""
    what = f"{type(exc).__name__}.{attribute}"
    try:
        delay = seconds(what, getattr(exc, attribute, None))
    except (TypeError, ValueError) as bad:
        return Outcome(FAILED, describe_error(bad))
    return Outcome(kind, describe_error(exc), delay=delay)


def completed(result: Any, max_result_bytes: int) -> Outcome:
    """A handler's return value as the job's result: JSON (no NaN, which JSON
    cannot hold) of at most ``max_result_bytes``, or a failed attempt
    saying why not. A result is never cut: half a result is wrong data."""
    try:
        raw = to_json(result, "result")
    except (TypeError, ValueError) as exc:
        return Outcome(FAILED, describe_error(exc))
    if len(raw) > max_result_bytes:
        return Outcome(
            FAILED,
            f"ValueError: result is {len(raw)} bytes as JSON, over the limit of "
            f"{max_result_bytes} bytes (--max-result-bytes)",
        )
    return Outcome(COMPLETED, raw.decode())


class StoredJob(NamedTuple):
    """One job as a handler runs it, its JSON still as Redis holds it: what
    the worker parent sends a child (the RUN frame: ``protocol.encode_run``),
    and what ``run_until_empty`` and ``EagerQueue`` run. The JSON is parsed
    where the handler runs (:func:`stored_context`), so the worker parent
    never parses a payload."""

    job_id: str
    name: str
    data_json: bytes | None
    queue: str
    attempts_made: int
    retries: int
    #: A flow parent's children's results.
    children_json: bytes | None
    #: The durable steps earlier attempts recorded (``{key: result}``).
    steps_json: bytes | None

    @classmethod
    def of_record(cls, queue: str, job_id: str, name: str, fields: dict[str, Any]) -> StoredJob:
        """The job from its decoded hash (``fast.decode_job_*``), its JSON
        fields still the bytes Redis returned."""
        return cls(
            job_id,
            name,
            fields.get("data"),
            queue,
            fields.get("attempts_made", 0),
            fields.get("retries", 0),
            fields.get("children"),
            steps_json(fields),
        )


def run_stored(
    func: Any,
    job: StoredJob,
    report: Callable[[str, str, str], None],
    max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES,
    record: StepRecorder | None = None,
) -> Outcome:
    """Run a job as Redis holds it. ``record`` takes the steps this attempt
    records (``job.step``)."""
    ctx = stored_context(job, report, record)
    if isinstance(ctx, Outcome):
        return ctx
    return run(func, ctx, max_result_bytes)


def stored_context(
    job: StoredJob,
    report: Callable[[str, str, str], None],
    record: StepRecorder | None = None,
    record_async: AsyncStepRecorder | None = None,
) -> JobContext | Outcome:
    """The handler's JobContext for a job as Redis holds it, or the
    unrecoverable outcome of one whose stored JSON cannot be parsed."""
    try:
        data, children = load_json(job.data_json), load_json(job.children_json)
        steps = load_json(job.steps_json)
    except orjson.JSONDecodeError as exc:
        return Outcome.error(f"the job's stored data is not valid JSON: {exc}", unrecoverable=True)
    return JobContext(
        job.queue,
        job.job_id,
        job.name,
        data,
        job.attempts_made,
        report,
        job.retries,
        children,
        steps,
        record,
        record_async,
    )


def record_problem(fields: dict[str, Any]) -> str | None:
    """Why a fetched job's record cannot be run as it is stored (something
    other than sandboxq wrote it: its fields decoded, but say nothing that
    runs), or None. The worker fails such a job with this reason."""
    if fields.get("name") and "data" in fields and (fields.get("timeout") or 0) >= 0:
        return None  # the common case, in one test
    for name in ("name", "data"):
        if name not in fields:
            return f"corrupt record: field '{name}' is missing"
    if not fields["name"]:
        return "corrupt record: field 'name' is empty"
    return f"corrupt record: field 'timeout' = '{ms(fields['timeout'])}' is negative"


def finish_entry(job_id: str, fields: dict[str, Any], outcome: Outcome) -> list[Any]:
    """The finish script's 6 values for this job: the retry delay comes from
    the handler (RETRY) or the job's backoff policy (FAILED); the lease
    number (fetch.lua) lets finish.lua recognize a finish sent twice.
    Whatever the job's stored fields hold, this returns an entry: a stored
    backoff that cannot be used fails the job for good, saying why."""
    lease = fields.get("leases", "")
    delay = outcome.delay
    if outcome.kind == FAILED and fields.get("backoff"):
        try:
            backoff = Backoff.parse(load_json(fields["backoff"]))
        except (TypeError, ValueError) as exc:  # written by something other than sandboxq
            message = clip_text(
                f"{outcome.value} (not retried: its stored backoff is invalid: {exc})",
                MAX_ERROR_BYTES,
            )
            return [job_id, UNRECOVERABLE, message, outcome.traceback, 0, lease]
        made = fields.get("attempts_made")
        made = made if isinstance(made, int) and not isinstance(made, bool) else 0
        delay = backoff.delay_for(made + 1)
    return [job_id, outcome.kind, outcome.value, outcome.traceback, ms(delay), lease]
