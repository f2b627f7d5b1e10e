"""Dependencies on jobs that exist: ``add(..., depends_on=[...])``.

The dependent waits in ``waiting-deps`` until every dependency finished;
a finishing (or removed) dependency tells it in the same script.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from sandboxq import JobContext, Queue, UnknownDependency
from sandboxq.dependencies import MAX_DEPENDENCIES
from sandboxq.scripts import now_ms
from sandboxq.testing import run_until_empty
from tests.guide_examples import run_guide_examples


@pytest.fixture
def group(redis_url: str) -> Iterator[tuple[Queue, Queue, Queue]]:
    """Two queues of one hash-tag group (``G`` and ``G:exports``), and one
    of another group."""
    name = f"d{uuid.uuid4().hex[:8]}"
    queues = (
        Queue(name, url=redis_url),
        Queue(f"{name}:exports", url=redis_url),
        Queue(f"x{name}", url=redis_url),
    )
    yield queues
    for q in queues:
        q.obliterate(force=True)
        q.client.close()


def keys_of(queue: Queue) -> set[bytes]:
    return set(queue.client.scan_iter(match=queue.keys.prefix + "*"))


def report(ctx: JobContext) -> Any:
    return {"report": ctx.data, "inputs": ctx.dependency_results()}


def export(ctx: JobContext) -> Any:
    return f"rows of {ctx.data}"


def explode(ctx: JobContext) -> Any:
    raise RuntimeError(f"export {ctx.data} broke")


HANDLERS = {"report": report, "export": export, "explode": explode}


def run_one(queue: Queue, job_id: str, handlers: dict[str, Any] | None = None) -> None:
    """Run exactly one job, the one named, by taking the others out of line
    first and putting them back after (the order the test asks for)."""
    handlers = handlers or HANDLERS
    others = [
        i.decode() for i in queue.client.zrange(queue.keys.wait, 0, -1) if i.decode() != job_id
    ]
    if others:
        queue.client.zrem(queue.keys.wait, *others)
    try:
        run_until_empty(queue, handlers, max_jobs=1)
    finally:
        if others:
            queue.client.zadd(queue.keys.wait, {i: n for n, i in enumerate(others)})


# -- adding ------------------------------------------------------------------------
def test_a_dependent_waits_in_waiting_deps_until_its_dependency_completes(
    queue: Queue,
) -> None:
    # Given an export, and a report that depends on it
    first = queue.add("export", "a")
    report_job = queue.add("report", "r", depends_on=[first])
    assert report_job.state == "waiting-deps" and report_job.created
    assert queue.counts()["waiting-deps"] == 1
    assert report_job.pending_dependencies() == [f"{queue.name}:{first.id}"]

    # When the export runs (the report is not ready: only the export runs)
    assert run_until_empty(queue, HANDLERS, max_jobs=1) == {"completed": 1}
    # Then the report waits for a worker, and runs with the export's result
    assert queue.get_job(report_job.id).state == "waiting"  # type: ignore[union-attr]
    assert queue.counts()["waiting-deps"] == 0
    run_until_empty(queue, HANDLERS)
    done = queue.get_job(report_job.id)
    assert done is not None and done.state == "completed"
    assert done.result == {"report": "r", "inputs": {f"{queue.name}:{first.id}": "rows of a"}}
    assert done.dependency_results() == {f"{queue.name}:{first.id}": "rows of a"}
    assert done.dependency_failures() == {}


def test_a_dependency_that_completed_already_counts_at_once(queue: Queue) -> None:
    # Given an export that has completed
    first = queue.add("export", "a")
    run_until_empty(queue, HANDLERS)
    # When a report depending on it (by id) is added
    added = queue.add("report", "r", depends_on=[first.id])
    # Then it waits for a worker at once, with the result recorded
    assert added.state == "waiting"
    assert added.dependency_results() == {f"{queue.name}:{first.id}": "rows of a"}
    run_until_empty(queue, HANDLERS)
    assert queue.get_job(added.id).result["inputs"] == {  # type: ignore[union-attr]
        f"{queue.name}:{first.id}": "rows of a"
    }


@pytest.mark.parametrize("first_done", ["a", "b"])
def test_two_dependencies_finishing_in_either_order(queue: Queue, first_done: str) -> None:
    # Given a report waiting for two exports
    exports = {name: queue.add("export", name) for name in "ab"}
    added = queue.add("report", "r", depends_on=list(exports.values()))
    second_done = "b" if first_done == "a" else "a"
    # When one export completes
    run_one(queue, exports[first_done].id)
    # Then the report still waits, for the other one only
    waiting = queue.get_job(added.id)
    assert waiting is not None and waiting.state == "waiting-deps"
    assert waiting.pending_dependencies() == [f"{queue.name}:{exports[second_done].id}"]
    # When the other completes
    run_one(queue, exports[second_done].id)
    # Then the report runs, reading both results
    assert queue.get_job(added.id).state == "waiting"  # type: ignore[union-attr]
    run_until_empty(queue, HANDLERS)
    done = queue.get_job(added.id)
    assert done is not None and done.state == "completed"
    assert done.result["inputs"] == {
        f"{queue.name}:{exports['a'].id}": "rows of a",
        f"{queue.name}:{exports['b'].id}": "rows of b",
    }


def test_an_unknown_id_refuses_the_whole_add_and_writes_nothing(queue: Queue) -> None:
    # Given one job that exists
    first = queue.add("export", "a")
    before = keys_of(queue)
    counter = queue.client.get(queue.keys.id_counter)
    # When a job depends on it and on an id that does not exist
    with pytest.raises(UnknownDependency, match=rf"unknown dependency {queue.name}:404: no such"):
        queue.add("report", "r", depends_on=[first, "404"])
    # Then nothing was written: no job, no registration, no id spent
    assert keys_of(queue) == before
    assert queue.client.get(queue.keys.id_counter) == counter
    assert queue.client.hget(queue.keys.job(first.id), "awaited_as") is None


def test_a_dependency_in_another_queue_of_the_group(
    group: tuple[Queue, Queue, Queue],
) -> None:
    reports, exports, _ = group
    # Given an export in G:exports, and a report in G waiting for it (by tuple)
    first = exports.add("export", "a")
    added = reports.add("report", "r", depends_on=[(exports.name, first.id)])
    assert added.state == "waiting-deps"
    # When the export runs
    run_until_empty(exports, HANDLERS)
    # Then the report runs with it
    run_until_empty(reports, HANDLERS)
    done = reports.get_job(added.id)
    assert done is not None and done.result["inputs"] == {f"{exports.name}:{first.id}": "rows of a"}


def test_a_dependency_in_another_group_is_refused(group: tuple[Queue, Queue, Queue]) -> None:
    reports, _, elsewhere = group
    other = elsewhere.add("export", "a")
    before = keys_of(reports)
    with pytest.raises(ValueError, match=r"is not in the hash-tag group of"):
        reports.add("report", "r", depends_on=[other])
    with pytest.raises(ValueError, match=r"is not in the hash-tag group of"):
        reports.add("report", "r", depends_on=[(elsewhere.name, other.id)])
    assert keys_of(reports) == before


@pytest.mark.parametrize(
    ("depends_on", "error", "message"),
    [
        pytest.param("1", TypeError, "must be a list", id="a str"),
        pytest.param({"1": 1}, TypeError, "must be a list", id="a dict"),
        pytest.param(7, TypeError, "must be a list", id="an int"),
        pytest.param([1.5], TypeError, r"depends_on\[0\] must be a job", id="a float id"),
        pytest.param(["1", None], TypeError, r"depends_on\[1\] must be a job", id="None"),
        pytest.param([("q",)], TypeError, r"must be a \(queue name, job id\) pair", id="short"),
        pytest.param([""], ValueError, "must not be empty", id="empty id"),
        pytest.param(["a{b}"], ValueError, "hash tag", id="braces"),
        pytest.param(
            [str(i) for i in range(MAX_DEPENDENCIES + 1)], ValueError, "at most", id="too many"
        ),
    ],
)
def test_bad_depends_on_is_refused_naming_it(
    queue: Queue, depends_on: Any, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        queue.add("report", "r", depends_on=depends_on)
    assert queue.client.exists(queue.keys.id_counter) == 0


def test_bad_combinations_are_refused(queue: Queue) -> None:
    first = queue.add("export", "a")
    with pytest.raises(ValueError, match="'fail', 'run' or 'cancel'"):
        queue.add("report", "r", depends_on=[first], on_dependency_failure="ignore")
    with pytest.raises(TypeError, match="needs depends_on"):
        queue.add("report", "r", on_dependency_failure="run")
    with pytest.raises(ValueError, match="takes no delay"):
        queue.add("report", "r", depends_on=[first], delay=5)
    with pytest.raises(ValueError, match="takes no dedupe"):
        queue.add("report", "r", depends_on=[first], dedupe={"id": "x"})
    with pytest.raises(TypeError, match="depends_on is not supported in add_bulk"):
        queue.add_bulk([{"name": "report", "depends_on": [first]}])
    assert queue.counts()["waiting"] == 1


def test_an_empty_depends_on_is_a_plain_add(queue: Queue) -> None:
    added = queue.add("report", "r", depends_on=[], delay=60)
    assert added.state == "delayed"


def test_a_custom_id_that_exists_adds_nothing(queue: Queue) -> None:
    first = queue.add("export", "a")
    added = queue.add("report", "r", job_id="report-1", depends_on=[first])
    again = queue.add("report", "other", job_id="report-1", depends_on=[first])
    assert added.created and not again.created
    assert again.data == "r" and again.state == "waiting-deps"
    members = queue.client.smembers(queue.keys.dependents(first.id))
    assert members == {f"{queue.keys.prefix}|report-1".encode()}


# -- failed dependencies -----------------------------------------------------------
def test_a_failed_dependency_fails_the_dependent_naming_it(queue: Queue) -> None:
    # Given a report waiting for an export that works and one that breaks
    good, bad = queue.add("export", "a"), queue.add("explode", "b")
    added = queue.add("report", "r", depends_on=[good, bad])
    # When the exports run
    run_until_empty(queue, HANDLERS)
    # Then the report failed, saying which dependency failed and why, and never ran
    done = queue.get_job(added.id)
    assert done is not None and done.state == "failed"
    assert done.error == f"dependency {queue.name}:{bad.id} failed: RuntimeError: export b broke"
    assert done.attempts_made == 0
    assert queue.counts()["waiting-deps"] == 0


def test_run_runs_the_dependent_anyway_with_the_failures_readable(queue: Queue) -> None:
    good, bad = queue.add("export", "a"), queue.add("explode", "b")
    added = queue.add("report", "r", depends_on=[good, bad], on_dependency_failure="run")
    run_until_empty(queue, HANDLERS)
    done = queue.get_job(added.id)
    assert done is not None and done.state == "completed"
    assert done.result["inputs"] == {f"{queue.name}:{good.id}": "rows of a"}
    assert done.dependency_failures() == {f"{queue.name}:{bad.id}": "RuntimeError: export b broke"}


def test_cancel_cancels_the_dependent(queue: Queue) -> None:
    bad = queue.add("explode", "b")
    added = queue.add("report", "r", depends_on=[bad], on_dependency_failure="cancel")
    run_until_empty(queue, HANDLERS)
    done = queue.get_job(added.id)
    assert done is not None and done.state == "cancelled"
    assert (
        done.cancel_reason
        == f"dependency {queue.name}:{bad.id} failed: RuntimeError: export b broke"
    )
    assert queue.counts()["cancelled"] == 1


@pytest.mark.parametrize(
    ("policy", "state"), [("fail", "failed"), ("cancel", "cancelled"), ("run", "waiting")]
)
def test_a_dependency_that_failed_already_counts_at_once(
    queue: Queue, policy: str, state: str
) -> None:
    bad = queue.add("explode", "b")
    run_until_empty(queue, HANDLERS)
    added = queue.add("report", "r", depends_on=[bad.id], on_dependency_failure=policy)
    assert added.state == state and added.created
    assert queue.get_job(added.id).state == state  # type: ignore[union-attr]
    if policy == "fail":
        assert (
            added.error == f"dependency {queue.name}:{bad.id} failed: RuntimeError: export b broke"
        )


def test_a_cancelled_dependency_counts_as_failed(queue: Queue) -> None:
    first = queue.add("export", "a")
    added = queue.add("report", "r", depends_on=[first])
    queue.cancel(first.id, reason="not needed", by="ops")
    done = queue.get_job(added.id)
    assert done is not None and done.state == "failed"
    assert done.error == f"dependency {queue.name}:{first.id} cancelled by ops: not needed"


def test_a_removed_dependency_counts_as_failed(queue: Queue) -> None:
    first = queue.add("export", "a")
    added = queue.add("report", "r", depends_on=[first], on_dependency_failure="run")
    queue.remove(first.id)
    done = queue.get_job(added.id)
    assert done is not None and done.state == "waiting"
    assert done.dependency_failures() == {f"{queue.name}:{first.id}": "the job was removed"}


def test_a_drained_dependency_counts_as_failed(queue: Queue) -> None:
    first = queue.add("export", "a")
    added = queue.add("report", "r", depends_on=[first])
    queue.drain()
    done = queue.get_job(added.id)
    assert done is not None and done.error == f"dependency {queue.name}:{first.id} was removed"


def test_a_dependency_failed_by_stall_recovery_tells_its_dependents(queue: Queue) -> None:
    # Given an export leased by a worker that died, and a report waiting for it
    first = queue.add("export", "a")
    added = queue.add("report", "r", depends_on=[first])
    queue.scripts.fetch(queue.keys, now_ms(), 1, "dead-worker", 1000)
    # When stall recovery finds its lease expired, with no stall allowed
    queue.scripts.recover_stalled(queue.keys, now_ms() + 60_000, max_stalls=0)
    # Then the export failed, and so did the report, naming it
    assert queue.get_job(first.id).state == "failed"  # type: ignore[union-attr]
    done = queue.get_job(added.id)
    assert done is not None and done.state == "failed"
    assert done.error == f"dependency {queue.name}:{first.id} failed: stalled 1 times"


def test_a_failure_runs_down_a_chain(queue: Queue) -> None:
    # Given a chain of 300 jobs, each waiting for the one before
    head = queue.add("explode", "b")
    chain = [head]
    for _ in range(300):
        chain.append(queue.add("report", "r", depends_on=[chain[-1]]))
    # When the first fails
    run_until_empty(queue, HANDLERS)
    # Then every job of the chain failed, each naming the one before
    assert queue.counts()["failed"] == 301
    last = queue.get_job(chain[-1].id)
    assert last is not None and last.error is not None
    assert last.error.startswith(
        f"dependency {queue.name}:{chain[-2].id} failed: "
        f"dependency {queue.name}:{chain[-3].id} failed: "
    )


def test_a_retried_dependency_tells_no_one_again(queue: Queue) -> None:
    bad = queue.add("explode", "b")
    added = queue.add("report", "r", depends_on=[bad])
    run_until_empty(queue, HANDLERS)
    queue.retry(bad.id)
    run_until_empty(queue, {**HANDLERS, "explode": export})
    assert queue.get_job(bad.id).state == "completed"  # type: ignore[union-attr]
    assert queue.get_job(added.id).state == "failed"  # type: ignore[union-attr]


# -- the dependent itself ----------------------------------------------------------
def test_a_dependent_removed_while_waiting_is_skipped_harmlessly(queue: Queue) -> None:
    # Given a report (custom id) waiting for an export, removed, then added
    # again with the same id, waiting for another export
    first, second = queue.add("export", "a"), queue.add("export", "b")
    queue.add("report", "r", job_id="report-1", depends_on=[first])
    assert queue.remove("report-1")
    again = queue.add("report", "r2", job_id="report-1", depends_on=[second])
    # When the first export completes (its dependents set still names report-1)
    run_one(queue, first.id)
    # Then the new report-1 still waits for the second export only
    waiting = queue.get_job(again.id)
    assert waiting is not None and waiting.state == "waiting-deps"
    assert waiting.pending_dependencies() == [f"{queue.name}:{second.id}"]
    run_until_empty(queue, HANDLERS)
    assert queue.get_job("report-1").result["inputs"] == {  # type: ignore[union-attr]
        f"{queue.name}:{second.id}": "rows of b"
    }


def test_a_dependent_cancelled_while_waiting(queue: Queue) -> None:
    first = queue.add("export", "a")
    added = queue.add("report", "r", depends_on=[first])
    assert queue.cancel(added.id) == "cancelled"
    assert queue.counts()["waiting-deps"] == 0
    run_until_empty(queue, HANDLERS)
    assert queue.get_job(added.id).state == "cancelled"  # type: ignore[union-attr]


def test_cancelling_a_dependency_cancels_down_to_a_cancel_policy(queue: Queue) -> None:
    first = queue.add("export", "a")
    middle = queue.add("report", "m", depends_on=[first], on_dependency_failure="cancel")
    last = queue.add("report", "l", depends_on=[middle], on_dependency_failure="cancel")
    queue.cancel(first.id)
    assert queue.get_job(middle.id).state == "cancelled"  # type: ignore[union-attr]
    assert queue.get_job(last.id).state == "cancelled"  # type: ignore[union-attr]


def test_junk_in_a_dependents_set_is_skipped(queue: Queue) -> None:
    # Given a report waiting for an export whose dependents set also holds junk
    first = queue.add("export", "a")
    added = queue.add("report", "r", depends_on=[first])
    junk = ["nonsense", "|", "sq:{elsewhere}:|1", f"{queue.keys.prefix}|404", "\xff|x"]
    queue.client.sadd(queue.keys.dependents(first.id), *junk)
    # When the export completes
    run_until_empty(queue, HANDLERS)
    # Then the report ran, and the junk is gone with the set
    assert queue.get_job(added.id).state == "completed"  # type: ignore[union-attr]
    assert queue.client.exists(queue.keys.dependents(first.id)) == 0


def test_a_dependents_key_that_holds_no_set(queue: Queue) -> None:
    # Given an export whose dependents key holds a string
    first = queue.add("export", "a")
    queue.client.set(queue.keys.dependents(first.id), "junk")
    # Then a dependent is refused, naming the key, with nothing written
    with pytest.raises(UnknownDependency, match="holds no set"):
        queue.add("report", "r", depends_on=[first])
    assert queue.counts()["waiting-deps"] == 0
    # And once a job is registered, a set replaced by junk loses nothing else
    queue.client.delete(queue.keys.dependents(first.id))
    added = queue.add("report", "r", depends_on=[first])
    queue.client.delete(queue.keys.dependents(first.id))
    queue.client.set(queue.keys.dependents(first.id), "junk")
    assert run_until_empty(queue, HANDLERS) == {"completed": 1}
    assert queue.get_job(added.id).state == "waiting-deps"  # type: ignore[union-attr]


def test_an_unknown_dependency_whose_key_holds_no_hash(queue: Queue) -> None:
    queue.client.set(queue.keys.job("odd"), "junk")
    with pytest.raises(UnknownDependency, match="its key holds no job"):
        queue.add("report", "r", depends_on=["odd"])


def test_junk_in_an_awaits_hash_or_policy_loses_nothing(queue: Queue) -> None:
    first = queue.add("export", "a")
    added = queue.add("report", "r", depends_on=[first])
    queue.client.hset(queue.keys.job(added.id), "on_dependency_failure", "\xff")
    queue.client.hset(queue.keys.awaits(added.id), "junk", "junk")
    run_until_empty(queue, HANDLERS)
    waiting = queue.get_job(added.id)
    assert waiting is not None and waiting.state == "waiting-deps"
    assert waiting.pending_dependencies() == ["junk"]
    # (a person can cancel or remove it)
    assert queue.cancel(added.id) == "cancelled"


# -- the guide ---------------------------------------------------------------------
def test_the_guides_examples_run(monkeypatch: pytest.MonkeyPatch, redis_url: str) -> None:
    # Given the guide's examples, on a queue of their own on the test Redis
    # When each runs in turn, then none fails (each checks what it shows)
    run_guide_examples("dependencies.md", "reports", "{name}", monkeypatch, redis_url)
