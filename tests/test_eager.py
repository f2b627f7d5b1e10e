"""``sandboxq.testing.EagerQueue``: jobs run at once, in this process, with
no Redis at all; validation and outcomes as a real queue gives them."""

from __future__ import annotations

from typing import Any

import pytest

from sandboxq import JobFailed, Retry, Unrecoverable, handler
from sandboxq.testing import EagerQueue

# An address where nothing listens: eager mode must never connect.
NO_REDIS = "redis://127.0.0.1:1/0"


@pytest.fixture(autouse=True)
def no_redis(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SANDBOXQ_REDIS_URL", NO_REDIS)


def test_a_job_runs_when_added_and_comes_back_finished() -> None:
    def resize(job: Any) -> dict[str, int]:
        job.update_progress(50)
        job.log("resizing")
        return {"width": job.data["width"] // 2}

    q = EagerQueue("images", {"resize": resize})
    job = q.add("resize", {"width": 640})

    assert (job.state, job.result, job.progress) == ("completed", {"width": 320}, 50)
    assert job.wait() == {"width": 320}
    assert job.logs() == ["resizing"]
    assert job.created is True
    assert q.get_job(job.id) is job
    assert q.counts()["completed"] == 1


def test_failed_attempts_are_retried_at_once_until_attempts_run_out() -> None:
    runs: list[int] = []

    def flaky(job: Any) -> str:
        runs.append(job.attempts_made)
        if job.attempts_made < 2:
            raise RuntimeError("not yet")
        return "done"

    def broken(job: Any) -> None:
        raise ValueError("bad input")

    q = EagerQueue("q", {"flaky": flaky, "broken": broken})
    assert q.add("flaky", attempts=3, backoff=600).wait() == "done"
    assert runs == [0, 1, 2]

    failed = q.add("broken", attempts=2)
    assert (failed.state, failed.attempts_made) == ("failed", 2)
    assert failed.error == "ValueError: bad input"
    assert "ValueError" in (failed.traceback or "")
    with pytest.raises(JobFailed, match="bad input"):
        failed.wait()


def test_retry_asks_unrecoverable_and_unknown_names_end_as_a_worker_ends_them() -> None:
    asked: list[int] = []

    def again(job: Any) -> str:
        asked.append(job.retries)
        if job.retries < 2:
            raise Retry(delay=60)
        return "ok"

    def give_up(job: Any) -> None:
        raise Unrecoverable("card declined")

    q = EagerQueue("q", {"again": again, "give_up": give_up})
    assert q.add("again").result == "ok"
    assert asked == [0, 1, 2]
    declined = q.add("give_up", attempts=5)
    assert (declined.state, declined.attempts_made) == ("failed", 1)
    unknown = q.add("typo")
    assert unknown.error == "no handler for job 'typo' in queue 'q'"


def test_input_is_checked_as_a_real_queue_checks_it() -> None:
    q = EagerQueue("q", {"x": lambda job: None}, defaults={"attempts": 2})
    with pytest.raises(TypeError, match="not JSON-serializable"):
        q.add("x", {"when": object()})
    with pytest.raises(ValueError, match="attempts must be >= 1"):
        q.add("x", attempts=0)
    assert q.add("x").attempts == 2
    first = q.add("x", job_id="only-once")
    again = q.add("x", job_id="only-once")
    assert (first.created, again.created, len(q.jobs)) == (True, False, 2)


def test_handlers_registered_for_the_queue_are_found() -> None:
    @handler("eager-registered")
    def shout(job: Any) -> str:
        return str(job.data).upper()

    assert EagerQueue("eager-registered").add("shout", "hi").result == "HI"


def test_calls_that_need_redis_say_so() -> None:
    q = EagerQueue("q", {})
    with pytest.raises(RuntimeError, match="no Redis: in eager mode only add"):
        q.pause()
