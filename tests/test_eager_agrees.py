"""``EagerQueue`` settles a job as the finish script does, case by case.

EagerQueue keeps its own copy of finish.lua's rules (attempts counted,
retried while some remain, ``manual_retry_only``), so each case here runs
the same handler with the same options twice: on Redis through the real
scripts (``run_until_empty``: fetch.lua, then finish.lua with the backoff
delay :func:`sandboxq.execution.finish_entry` computes), and through an
``EagerQueue``; the finished jobs must agree. Where EagerQueue differs by
design (it waits out no backoff and keeps every job, whatever its
retention), the Redis side is checked against the rule instead.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from sandboxq import Queue, RateLimited, Retry, Unrecoverable
from sandboxq.options import Backoff
from sandboxq.testing import EagerQueue, run_until_empty


def scripted(runs: list[str]) -> Callable[[Any], str]:
    """A handler that does, at its n-th run, what ``runs[n]`` says (the last
    one again once they run out)."""
    calls = iter(range(10_000))

    def handle(job: Any) -> str:
        what = runs[min(next(calls), len(runs) - 1)]
        if what == "fail":
            raise RuntimeError("boom")
        if what == "unrecoverable":
            raise Unrecoverable("card declined")
        if what == "retry":
            raise Retry(delay=30, reason="not ready")
        if what == "rate-limited":
            raise RateLimited(30, reason="slow down")
        if what == "rate-limited, over at once":
            raise RateLimited(0, reason="slow down")
        return "done"

    return handle


def settled(job: Any) -> dict[str, Any]:
    """What a case compares of a finished job."""
    return {
        "state": job.state,
        "attempts_made": job.attempts_made,
        "retries": job.retries,
        "result": job.result,
        "error": job.error,
        "has_traceback": bool(job.traceback),
    }


CASES = {
    "completes at once": (["ok"], {}),
    "fails, no attempt left": (["fail"], {}),
    "fails twice, completes at the third of three": (["fail", "fail", "ok"], {"attempts": 3}),
    "attempts exhausted": (["fail"], {"attempts": 3}),
    "unrecoverable with attempts left": (["unrecoverable"], {"attempts": 5}),
    "retry asks spend no attempt": (["retry", "retry", "ok"], {"attempts": 1}),
    "retry asks then failures": (["retry", "fail", "fail"], {"attempts": 2}),
    "rate limits spend no attempt and are no retry asks": (
        ["rate-limited, over at once", "ok"],
        {"attempts": 1},
    ),
    "manual_retry_only fails at the first failure": (
        ["fail", "ok"],
        {"attempts": 3, "manual_retry_only": True},
    ),
    "manual_retry_only completes": (["ok"], {"attempts": 3, "manual_retry_only": True}),
    "manual_retry_only does not honour a retry ask": (
        ["retry", "ok"],
        {"manual_retry_only": True},
    ),
    "manual_retry_only does not honour a rate limit": (
        ["rate-limited", "ok"],
        {"manual_retry_only": True},
    ),
    "fixed backoff between failures": (["fail", "fail", "ok"], {"attempts": 3, "backoff": 2.5}),
    "exponential backoff until exhausted": (
        ["fail"],
        {"attempts": 4, "backoff": Backoff.exponential(1.0, max_delay=3.0)},
    ),
}


@pytest.mark.parametrize(("runs", "options"), list(CASES.values()), ids=list(CASES))
def test_eager_and_the_scripts_settle_a_job_alike(
    queue: Queue, runs: list[str], options: dict[str, Any]
) -> None:
    # Given the same handler and options on Redis and on an EagerQueue
    eager = EagerQueue(queue.name, {"work": scripted(runs)})

    # When the job runs to its end on each
    added = queue.add("work", **options)
    run_until_empty(queue, {"work": scripted(runs)}, skip_delays=True)
    on_redis = queue.get_job(added.id)
    in_eager = eager.add("work", **options)

    # Then they agree on how it ended
    assert on_redis is not None
    assert settled(in_eager) == settled(on_redis)


def test_the_scripts_wait_the_backoff_that_eager_skips(queue: Queue) -> None:
    # Given a job that fails three times with an exponential backoff
    backoff = Backoff.exponential(1.0, max_delay=3.0)
    added = queue.add("work", attempts=4, backoff=backoff)

    # When it runs on Redis, the clock moved on to each retry
    run_until_empty(queue, {"work": scripted(["fail"])}, skip_delays=True)

    # Then each retry waited the backoff's delay for that failure (EagerQueue
    # retries at once: its docs say so)
    waited = [
        int(fields[b"delay_ms"])
        for _id, fields in queue.client.xrange(queue.keys.events)
        if fields.get(b"event") == b"retrying" and fields.get(b"job_id") == added.id.encode()
    ]
    assert waited == [round(backoff.delay_for(n) * 1000) for n in (1, 2, 3)] == [1000, 2000, 3000]


@pytest.mark.parametrize(
    ("runs", "options", "kept_on_redis"),
    [
        (["ok"], {"keep_completed": 0}, False),
        (["ok"], {"keep_completed": True}, True),
        (["fail"], {"keep_failed": 0}, False),
        (["fail"], {"keep_failed": {"count": 10}}, True),
    ],
    ids=["completed, keep none", "completed, keep all", "failed, keep none", "failed, keep 10"],
)
def test_retention_applies_on_redis_and_eager_keeps_every_job(
    queue: Queue, runs: list[str], options: dict[str, Any], kept_on_redis: bool
) -> None:
    # Given a job with a retention, run on Redis and on an EagerQueue
    eager = EagerQueue(queue.name, {"work": scripted(runs)})
    added = queue.add("work", **options)
    run_until_empty(queue, {"work": scripted(runs)}, skip_delays=True)
    in_eager = eager.add("work", **options)

    # Then Redis keeps it as its retention says, and EagerQueue keeps it for
    # the test to read, in the state Redis filed it under
    assert (queue.get_job(added.id) is not None) == kept_on_redis
    assert eager.get_job(in_eager.id) is in_eager
    assert in_eager.state == ("completed" if runs == ["ok"] else "failed")


DEDUPE_CASES = {
    "no ttl: the window closed when the job completed": (["ok"], {"id": "d"}),
    "no ttl: the window closed when the job failed": (["fail"], {"id": "d"}),
    "a ttl holds after the job completed": (["ok"], {"id": "d", "ttl": 60}),
    "a ttl holds after the job failed": (["fail"], {"id": "d", "ttl": 60}),
    "a replace of a finished job only deduplicates": (
        ["ok"],
        {"id": "d", "ttl": 60, "extend": True, "replace": True},
    ),
}


@pytest.mark.parametrize(("runs", "dedupe"), list(DEDUPE_CASES.values()), ids=list(DEDUPE_CASES))
def test_eager_and_the_scripts_deduplicate_alike(
    queue: Queue, runs: list[str], dedupe: dict[str, Any]
) -> None:
    # Given a job added with a dedupe id on Redis and on an EagerQueue, run
    # to its end on each
    ran: dict[str, list[Any]] = {"redis": [], "eager": []}

    def handler(where: str) -> Callable[[Any], str]:
        script = scripted(runs)
        return lambda job: (ran[where].append(job.data), script(job))[1]

    eager = EagerQueue(queue.name, {"work": handler("eager")})
    first_redis = queue.add("work", 1, dedupe=dedupe)
    run_until_empty(queue, {"work": handler("redis")})
    first_eager = eager.add("work", 1, dedupe=dedupe)

    # When the same dedupe id is added again on each
    again_redis = queue.add("work", 2, dedupe=dedupe)
    run_until_empty(queue, {"work": handler("redis")})
    again_eager = eager.add("work", 2, dedupe=dedupe)

    # Then both held it back, or both made a new job, and ran the same data
    assert again_redis.created == again_eager.created
    assert (again_redis.id == first_redis.id) == (again_eager.id == first_eager.id)
    assert ran["redis"] == ran["eager"]


#: Dependencies: the runs of two dependencies, and the dependent's policy.
DEPENDENCY_CASES = {
    "both completed: it runs with their results": ((["ok"], ["ok"]), "fail"),
    "one failed, fail: it fails naming it": ((["ok"], ["fail"]), "fail"),
    "one failed, cancel: it is cancelled": ((["ok"], ["fail"]), "cancel"),
    "one failed, run: it runs anyway": ((["ok"], ["unrecoverable"]), "run"),
}


@pytest.mark.parametrize(
    ("runs", "policy"), list(DEPENDENCY_CASES.values()), ids=list(DEPENDENCY_CASES)
)
def test_eager_and_the_scripts_settle_dependents_alike(
    queue: Queue, runs: tuple[list[str], list[str]], policy: str
) -> None:
    # Given two dependencies and a job waiting for both, on Redis and on an
    # EagerQueue (where the dependencies have finished by the time it is added)
    def handlers() -> dict[str, Callable[[Any], Any]]:
        return {
            "first": scripted(runs[0]),
            "second": scripted(runs[1]),
            "report": lambda job: sorted(job.dependency_results().values()),
        }

    eager = EagerQueue(queue.name, handlers())
    on_redis = handlers()
    redis_deps = [queue.add("first"), queue.add("second")]
    dependent = queue.add("report", depends_on=redis_deps, on_dependency_failure=policy)
    eager_deps = [eager.add("first"), eager.add("second")]
    eager_dependent = eager.add("report", depends_on=eager_deps, on_dependency_failure=policy)

    # When the Redis side runs to its end
    run_until_empty(queue, on_redis)

    # Then the dependents ended alike, with the same results and failures
    redis_done = queue.get_job(dependent.id)
    assert redis_done is not None
    assert settled(redis_done) == settled(eager_dependent)
    assert redis_done.cancel_reason == eager_dependent.cancel_reason
    assert redis_done.dependency_results() == eager_dependent.dependency_results()
    assert redis_done.dependency_failures() == eager_dependent.dependency_failures()
