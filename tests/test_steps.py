"""Durable steps (``job.step``): a retried job never repeats a side effect
that already happened. On real worker processes: a child that dies after its
step, a worker SIGKILLed after its step with another taking the job over;
and the step script itself, the inline runner and eager mode."""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sandboxq import Queue, QueueEvents, StepNotRecorded
from sandboxq.caps import MAX_STEP_RESULT_BYTES
from sandboxq.fast import decode_fetched
from sandboxq.scripts import now_ms
from sandboxq.testing import EagerQueue, run_until_empty
from tests.worker_harness import WorkerProcess, wait_for_job, wait_until

StartWorker = Callable[..., WorkerProcess]
MODULES = ("tests.steps_jobs",)


def charged(path: Path, job_id: str) -> int:
    return path.read_text().split().count(job_id) if path.exists() else 0


@pytest.fixture
def charges(tmp_path: Path) -> Path:
    """Where tests/steps_jobs.py records each charge."""
    return tmp_path / "charges"


@pytest.fixture
def charging_worker(start_worker: StartWorker, charges: Path) -> StartWorker:
    """``charging_worker(*args)``: a one-child worker over tests/steps_jobs.py."""

    def start(*args: str) -> WorkerProcess:
        env = {"SANDBOXQ_TEST_CHARGES": str(charges)}
        return start_worker(*args, procs=1, modules=MODULES, env=env)

    return start


# -- the double charge, on real processes -------------------------------------------------
@pytest.mark.timeout(60)
def test_a_child_that_dies_after_its_step_does_not_charge_twice(
    charging_worker: StartWorker, queue: Queue, charges: Path
) -> None:
    charging_worker()

    # A job that charges, then dies on its first attempt, with 3 attempts
    job = queue.add("charge_then_crash", {"amount": 42}, attempts=3)
    done = wait_for_job(queue, job.id, timeout=30)

    # Then it completed on its second attempt, and the card was charged once
    assert done.state == "completed", done.fields
    assert done.attempts_made == 2
    assert done.result == {"receipt": {"charge": f"ch_{job.id}", "amount": 42}, "charged": 1}
    assert charged(charges, job.id) == 1
    assert done.steps == {"charge": {"charge": f"ch_{job.id}", "amount": 42}}


@pytest.mark.timeout(90)
def test_a_worker_killed_after_the_step_leaves_it_recorded_for_the_next(
    charging_worker: StartWorker, queue: Queue, charges: Path
) -> None:
    # Given a worker whose job charged and then hung
    first = charging_worker("--lease", "1")
    job = queue.add("charge_then_hang", {"amount": 7}, attempts=1)
    wait_until(lambda: Path(f"{charges}.hung").exists(), 30, "the first worker's charge")

    # When that worker is SIGKILLed, children and all, and another starts
    first.kill_group(signal.SIGKILL)
    first.wait(10)
    second = charging_worker("--lease", "1")

    # Then the second recovers the stalled job and completes it from the
    # recorded step: one charge in all
    done = wait_for_job(queue, job.id, timeout=60)
    assert done.state == "completed", done.fields
    assert done.stalls == 1
    assert done.result == {"receipt": {"charge": f"ch_{job.id}", "amount": 7}, "charged": 1}
    assert charged(charges, job.id) == 1
    second.wait_for_line(rf"recovered stalled jobs queue={queue.name} requeued={job.id}")


@pytest.mark.timeout(60)
def test_an_async_step_is_recorded_once_too(
    charging_worker: StartWorker, queue: Queue, charges: Path
) -> None:
    charging_worker()
    job = queue.add("async_charge", {"amount": 5}, attempts=2)
    done = wait_for_job(queue, job.id, timeout=30)
    assert done.state == "completed", done.fields
    assert done.result["charged"] == 1
    assert charged(charges, job.id) == 1


# -- the step script ---------------------------------------------------------------------
TOKEN = "worker-a"


def leased(queue: Queue, token: str = TOKEN) -> str:
    [job_id] = [
        i
        for i, _f in decode_fetched(queue.scripts.fetch(queue.keys, now_ms(), 1, token, 60_000)[0])
    ]
    return job_id


def test_step_lua_records_once_only_for_the_lease_holder_and_up_to_the_limit(
    queue: Queue,
) -> None:
    queue.add("x")
    job_id = leased(queue)

    def step(key: str, result: str, token: str = TOKEN, max_steps: int = 2) -> list[str]:
        return queue.scripts.step(queue.keys, token, [(job_id, key, result)], max_steps)

    assert step("a", '{"n": 1}') == ["recorded"]
    assert step("a", '{"n": 2}') == ["known"]  # sent again: the first result stays
    assert step("b", "2", token="worker-b") == ["lost"]  # not this worker's job
    assert step("b", "2") == ["recorded"]
    assert step("c", "3") == ["full"]
    job = queue.get_job(job_id)
    assert job is not None
    assert job.steps == {"a": {"n": 1}, "b": 2}
    events = [
        (event, payload)
        for event, jid, payload in QueueEvents(queue).listen(since="0", stop_after=0.1)
        if jid == job_id and event == "step"
    ]
    assert events == [("step", {"key": "a"}), ("step", {"key": "b"})]


# -- the inline runner, retries and limits -------------------------------------------------
def test_inline_steps_survive_a_failed_attempt_and_a_retry_can_reset_them(queue: Queue) -> None:
    calls: list[str] = []

    def charge(job: Any) -> Any:
        receipt = job.step("charge", lambda: calls.append(job.id) or {"charge": len(calls)})
        if len(calls) < 2 and job.attempts_made == 0:
            raise RuntimeError("the shipping service is down")
        return receipt

    job = queue.add("charge", attempts=2)
    run_until_empty(queue, {"charge": charge})
    assert job.wait(timeout=1) == {"charge": 1}
    assert calls == [job.id]  # the second attempt did not charge again

    # A job that failed for good: a plain retry keeps its steps...
    def fail_after(job: Any) -> None:
        job.step("charge", lambda: calls.append(job.id) or "charged")
        raise ValueError("no")

    broken = queue.add("fail_after")
    run_until_empty(queue, {"fail_after": fail_after})
    assert queue.retry(broken.id)
    run_until_empty(queue, {"fail_after": fail_after})
    assert calls.count(broken.id) == 1
    # ...and reset_steps redoes them
    assert queue.retry(broken.id, reset_steps=True)
    assert queue.get_job(broken.id).steps == {}  # type: ignore[union-attr]
    run_until_empty(queue, {"fail_after": fail_after})
    assert calls.count(broken.id) == 2
    assert queue.audit_log()[0]["action"] == "retry (steps reset)"


def test_a_step_that_raises_records_nothing_and_is_called_again(queue: Queue) -> None:
    tries: list[int] = []

    def flaky_step() -> str:
        tries.append(1)
        if len(tries) == 1:
            raise ConnectionError("provider timeout")
        return "ok"

    def handler(job: Any) -> Any:
        return job.step("call", flaky_step)

    job = queue.add("x", attempts=2)
    run_until_empty(queue, {"x": handler})
    done = job.wait(timeout=1)
    assert (done, len(tries)) == ("ok", 2)


def test_bad_steps_are_refused_before_anything_is_recorded(queue: Queue) -> None:
    def handler(job: Any) -> Any:
        kind = job.data
        if kind == "big":
            return job.step("big", lambda: "x" * MAX_STEP_RESULT_BYTES)
        if kind == "not-json":
            return job.step("obj", lambda: object())
        return job.step("", lambda: 1)

    jobs = {kind: queue.add("x", kind) for kind in ("big", "not-json", "no-key")}
    run_until_empty(queue, {"x": handler})
    errors = {kind: queue.get_job(job.id) for kind, job in jobs.items()}
    assert "over the limit of 65536" in errors["big"].error  # type: ignore[union-attr,operator]
    assert "not JSON-serializable" in errors["not-json"].error  # type: ignore[union-attr,operator]
    assert "non-empty str" in errors["no-key"].error  # type: ignore[union-attr,operator]
    assert all(job.steps == {} for job in errors.values() if job is not None)


def test_a_step_a_worker_cannot_record_stops_the_handler() -> None:
    from sandboxq.handlers import JobContext

    ctx = JobContext("q", "1", "x", None, 0, lambda *a: None, record=lambda *a: "lost")
    with pytest.raises(StepNotRecorded, match="no longer holds the job"):
        ctx.step("charge", lambda: 1)


def test_eager_mode_replays_steps_across_attempts() -> None:
    calls: list[int] = []

    def charge(job: Any) -> Any:
        receipt = job.step("charge", lambda: calls.append(1) or "ch_1")
        if job.attempts_made == 0:
            raise RuntimeError("down")
        return receipt

    job = EagerQueue("q", {"charge": charge}).add("charge", attempts=2)
    assert (job.result, len(calls), job.steps) == ("ch_1", 1, {"charge": "ch_1"})
