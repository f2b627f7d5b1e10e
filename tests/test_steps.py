"""Durable steps (``job.step``): a retried job never repeats a side effect
that already happened. On real worker processes: a child that dies after its
step, a worker SIGKILLed after its step with another taking the job over;
and the step script itself, the inline runner and eager mode."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from sandboxq import Queue, QueueEvents, StepNotRecorded, UnrecordableStep, Unrecoverable
from sandboxq.caps import MAX_STEP_RESULT_BYTES, MAX_STEPS
from sandboxq.fast import decode_fetched
from sandboxq.handlers import JobContext
from sandboxq.scripts import now_ms
from sandboxq.testing import EagerQueue, run_until_empty
from tests import steps_jobs
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
def charges_env(charges: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """For handlers of tests/steps_jobs.py run in this process (inline, eager)."""
    monkeypatch.setenv("SANDBOXQ_TEST_CHARGES", str(charges))
    return charges


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


# -- a step whose result cannot be recorded fails the job for good ----------------------------
STEP_RAN = "UnrecordableStep: step 'charge' ran but its result could not be recorded ({why})"
SIDE_EFFECT_KEPT = ": its side effect happened and will not be repeated; not retried"
WHY = {
    "big": "the result is {size} bytes as JSON, over the limit of 65536: record an id or a path, "
    "not the data",
    "decimal": "the result is not JSON-serializable: Type is not JSON serializable: "
    "decimal.Decimal",
}
WRAPPED = (
    "{first} (not retried: step 'charge' ran earlier in this attempt and its result could not "
    "be recorded, so its side effect must not be repeated)"
)


def big_receipt_size(job_id: str) -> int:
    """The size as JSON of the 70 KiB receipt tests/steps_jobs.py returns."""
    return len(orjson.dumps({"charge": f"ch_{job_id}", "amount": 5, "pdf": "x" * (70 * 1024)}))


def expected_error(job_id: str, result: str, then: str) -> str:
    step = STEP_RAN.format(why=WHY[result].format(size=big_receipt_size(job_id))) + SIDE_EFFECT_KEPT
    if then == "raise":
        return step
    first = (
        "RuntimeError: the payment step failed"
        if then == "wrap"
        else "Retry: try the payment again"
    )
    return WRAPPED.format(first=first)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("result", "then"), [("big", "raise"), ("decimal", "wrap")])
def test_a_step_whose_result_cannot_be_recorded_charges_once_and_is_not_retried(
    charging_worker: StartWorker, queue: Queue, charges: Path, result: str, then: str
) -> None:
    charging_worker()

    # Given a job with 3 attempts whose step charges, then returns a receipt
    # that cannot be recorded (70 KiB, or a Decimal)
    job = queue.add("charge_unrecordable", {"result": result, "then": then}, attempts=3)

    # When a worker runs it
    done = wait_for_job(queue, job.id, timeout=30)

    # Then the card was charged once, and the job failed for good on its
    # first attempt, saying the step ran and its result was not kept
    assert charged(charges, job.id) == 1
    assert done.state == "failed", done.fields
    assert done.attempts_made == 1
    assert done.error == expected_error(job.id, result, then)
    assert done.steps == {}


# -- one key runs once per job, even called concurrently ---------------------------------------
def assert_charged_once_and_both_got_the_record(done: Any, charges: Path) -> None:
    assert done.state == "completed", done.fields
    receipt = {"charge": f"ch_{done.id}_1"}
    assert done.result == {"receipts": [receipt, receipt], "charged": 1}
    assert done.steps == {"charge": receipt}
    assert charged(charges, done.id) == 1


@pytest.mark.timeout(60)
def test_one_step_key_called_at_once_by_two_tasks_or_threads_runs_once(
    charging_worker: StartWorker, queue: Queue, charges: Path
) -> None:
    charging_worker()

    # Given a job whose handler takes the same step twice at once, in two
    # asyncio tasks (gather), and one that does in two threads
    in_tasks = queue.add("charge_concurrently")
    in_threads = queue.add("charge_from_threads")

    # When a worker runs them
    done = [wait_for_job(queue, job.id, timeout=30) for job in (in_tasks, in_threads)]

    # Then each charged once, and both callers got the recorded receipt
    for job in done:
        assert_charged_once_and_both_got_the_record(job, charges)


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


# -- unrecordable results and concurrent calls, inline and eager ----------------------------
@pytest.mark.parametrize("then", ["raise", "wrap", "retry"])
@pytest.mark.parametrize("result", ["big", "decimal"])
def test_inline_and_eager_fail_an_unrecordable_step_for_good_as_a_worker_does(
    queue: Queue, charges_env: Path, result: str, then: str
) -> None:
    handlers = {"charge_unrecordable": steps_jobs.charge_unrecordable}
    data = {"result": result, "then": then}

    # Given the job of the worker test, with 3 attempts, inline and eager
    job = queue.add("charge_unrecordable", data, attempts=3)
    run_until_empty(queue, handlers, skip_delays=True)
    eager = EagerQueue("q", handlers).add(
        "charge_unrecordable",
        data,
        attempts=3,
        job_id="eager",  # charges apart from inline's
    )

    # Then both failed for good on their first attempt, after one charge
    inline = queue.get_job(job.id)
    assert inline is not None
    for done in (inline, eager):
        assert (done.state, done.attempts_made, done.steps) == ("failed", 1, {})
        assert done.error == expected_error(done.id, result, then)
        assert charged(charges_env, done.id) == 1


@pytest.mark.parametrize("name", ["charge_concurrently", "charge_from_threads"])
def test_inline_and_eager_run_one_key_once_when_called_at_once(
    queue: Queue, charges_env: Path, name: str
) -> None:
    handlers = {name: getattr(steps_jobs, name)}
    job = queue.add(name)
    run_until_empty(queue, handlers)
    assert_charged_once_and_both_got_the_record(queue.get_job(job.id), charges_env)
    eager = EagerQueue("q", handlers).add(name, job_id="eager")  # charges apart from inline's
    assert_charged_once_and_both_got_the_record(eager, charges_env)


# -- JobContext on its own: what is checked before the function runs --------------------------
def context(record: Any = None, steps: dict[str, Any] | None = None) -> JobContext:
    """A job context as a unit test builds it: no worker unless ``record``."""
    return JobContext("q", "1", "x", None, 0, lambda *a: None, steps=steps, record=record)


def test_a_step_outside_a_worker_raises_before_running_its_function() -> None:
    # Given a job context built outside any worker (no recorder)
    ctx, calls = context(), []

    # When a step is taken, plain or async
    with pytest.raises(RuntimeError, match=r"needs a worker .*step 'charge' was not run"):
        ctx.step("charge", calls.append, "charged")

    async def charge_async() -> None:
        calls.append("charged")

    with pytest.raises(RuntimeError, match="needs a worker"):
        asyncio.run(ctx.step("charge", charge_async))

    # Then its function never ran
    assert calls == []
    # and a result the context was given is returned without running anything
    assert context(steps={"charge": "ch_1"}).step("charge", calls.append, 1) == "ch_1"
    assert calls == []


def test_a_job_with_all_its_steps_recorded_runs_no_further_step() -> None:
    # Given a job that recorded as many steps as a job may
    recorded = {f"step-{n}": n for n in range(MAX_STEPS)}
    ctx, calls = context(record=lambda *a: "recorded", steps=recorded), []

    # When it takes another, its function is not run, and the job fails for good
    with pytest.raises(UnrecordableStep, match=r"step 'one more' was not run: .* at most 1000"):
        ctx.step("one more", calls.append, 1)
    assert calls == []
    # while a recorded one is still returned
    assert ctx.step("step-7", calls.append, 1) == 7


@pytest.mark.parametrize(
    ("answer", "error", "why"),
    [
        ("full", UnrecordableStep, "the job has recorded the most steps it may"),
        ("nonsense", UnrecordableStep, "the worker answered 'nonsense'"),
        ("lost", StepNotRecorded, "this worker no longer holds the job"),
    ],
)
def test_a_step_that_ran_but_was_not_recorded_is_not_run_again_in_the_attempt(
    answer: str, error: type[Exception], why: str
) -> None:
    # Given a worker that answers a step with something else than "recorded"
    ctx, calls = context(record=lambda *a: answer), []

    # When the step is taken, then taken again after its error was caught
    for _ in range(2):
        with pytest.raises(error, match=f"step 'charge' .*ran but .*{why}") as raised:
            ctx.step("charge", calls.append, "charged")

    # Then its function ran once; only a lost job may be retried (by
    # whichever worker holds it now)
    assert calls == ["charged"]
    assert isinstance(raised.value, Unrecoverable) is (answer != "lost")


def test_a_waiting_caller_runs_the_step_itself_when_the_first_raised() -> None:
    # Given two tasks taking the same step, the first of which raises
    ctx, calls = context(record=lambda *a: "recorded"), []

    async def flaky() -> str:
        calls.append("called")
        await asyncio.sleep(0)  # the second task reaches the step meanwhile
        if len(calls) == 1:
            raise ConnectionError("provider timeout")
        return "ok"

    async def both() -> list[Any]:
        return await asyncio.gather(
            ctx.step("call", flaky), ctx.step("call", flaky), return_exceptions=True
        )

    # When they run
    first, second = asyncio.run(both())

    # Then the first's error propagates, and the second ran the step itself
    assert isinstance(first, ConnectionError)
    assert (second, calls) == ("ok", ["called", "called"])


def test_a_step_that_calls_itself_raises_instead_of_waiting_for_ever() -> None:
    ctx = context(record=lambda *a: "recorded")

    def again() -> Any:
        return ctx.step("loop", again)

    with pytest.raises(RuntimeError, match="would wait for itself"):
        ctx.step("loop", again)

    async def again_async() -> Any:
        return await ctx.step("loop-async", again_async)

    with pytest.raises(RuntimeError, match="would wait for itself"):
        asyncio.run(ctx.step("loop-async", again_async))


def test_a_plain_function_returning_an_awaitable_is_refused_before_it_runs() -> None:
    ctx, calls = context(record=lambda *a: "recorded"), []

    async def charge() -> None:
        calls.append("charged")

    with pytest.raises(TypeError, match="returned an awaitable"):
        ctx.step("charge", lambda: charge())
    assert calls == []
