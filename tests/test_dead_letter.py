"""The failed set as a dead-letter queue: audit entries, manual-only retries."""

from __future__ import annotations

import getpass
from typing import Any

import pytest

from sandboxq import Queue, RateLimited, Retry
from sandboxq.testing import run_until_empty

NOW = 1_000_000_000


def boom(_job: Any) -> None:
    raise ValueError("card declined")


def test_a_manual_retry_is_recorded_on_the_job_with_who_and_when(queue: Queue) -> None:
    job = queue.add("charge")
    run_until_empty(queue, {"charge": boom})
    assert queue.retry(job.id, by="alice")
    [entry] = queue.get_job(job.id).audit()  # type: ignore[union-attr]
    assert (entry["by"], entry["action"]) == ("alice", "retry")
    assert entry["at"] > 0
    assert queue.audit_log()[0] | {"at": 0} == {
        "at": 0,
        "by": "alice",
        "action": "retry",
        "job_id": job.id,
    }


def test_the_default_author_is_the_os_user(queue: Queue) -> None:
    job = queue.add("charge")
    run_until_empty(queue, {"charge": boom})
    assert queue.retry_failed() == 1
    assert queue.get_job(job.id).audit()[0]["by"] == getpass.getuser()  # type: ignore[union-attr]


def test_a_removal_is_kept_in_the_queue_audit_log(queue: Queue) -> None:
    job = queue.add("charge")
    assert queue.remove(job.id, by="bob")
    assert queue.get_job(job.id) is None
    entry = queue.audit_log()[0]
    assert (entry["job_id"], entry["by"], entry["action"]) == (job.id, "bob", "remove")


def test_pause_resume_and_promote_are_audited(queue: Queue) -> None:
    later = queue.add("x", delay=60)
    queue.pause(by="ops")
    queue.resume(by="ops")
    assert queue.promote(later.id, by="carol")
    actions = [(e["action"], e["by"], e["job_id"]) for e in reversed(queue.audit_log())]
    assert actions == [("pause", "ops", ""), ("resume", "ops", ""), ("promote", "carol", later.id)]


@pytest.mark.parametrize(
    ("handler", "reason"),
    [
        (boom, "ValueError: card declined"),
        (lambda job: (_ for _ in ()).throw(Retry(delay=1)), "not retried: manual_retry_only"),
        (lambda job: (_ for _ in ()).throw(RateLimited(1)), "not retried: manual_retry_only"),
    ],
)
def test_manual_retry_only_jobs_are_never_retried_automatically(
    queue: Queue, handler: Any, reason: str
) -> None:
    # Given a charge with 5 attempts that may only be retried by a person
    job = queue.add("charge", attempts=5, backoff=0, manual_retry_only=True)
    # When its run fails (or asks for a retry, or is rate limited)
    run_until_empty(queue, {"charge": handler})
    # Then it is in the failed set at once, attempts unspent
    failed = queue.get_job(job.id)
    assert failed is not None and failed.state == "failed"
    assert reason in (failed.error or "")
    assert queue.counts()["delayed"] == queue.counts()["waiting"] == 0
    # And a person's retry is the way back
    assert queue.retry(job.id, by="alice")
    run_until_empty(queue, {"charge": lambda job: "charged"})
    assert queue.get_job(job.id).result == "charged"  # type: ignore[union-attr]


def test_a_stalled_manual_retry_only_job_fails_instead_of_running_again(queue: Queue) -> None:
    job = queue.add("charge", manual_retry_only=True)
    queue.scripts.fetch(queue.keys, NOW, 1, "dead-worker", 1000)
    requeued, failed, _cancelled = queue.scripts.recover_stalled(
        queue.keys, NOW + 5000, max_stalls=3
    )
    assert (requeued, failed) == ([], [job.id])
    assert "manual_retry_only" in (queue.get_job(job.id).error or "")  # type: ignore[union-attr]


def test_a_released_manual_retry_only_job_fails_instead_of_going_back(queue: Queue) -> None:
    job = queue.add("charge", manual_retry_only=True)
    queue.scripts.fetch(queue.keys, NOW, 1, "w", 60_000)
    assert queue.scripts.hand_back(queue.keys, "w", [], [job.id], now=NOW + 10) == []
    done = queue.get_job(job.id)
    assert done is not None and done.state == "failed"
    assert "forced shutdown" in (done.error or "")


def test_manual_retry_only_must_be_a_bool(queue: Queue) -> None:
    with pytest.raises(TypeError, match="manual_retry_only must be True or False"):
        queue.add("charge", manual_retry_only="yes")  # type: ignore[arg-type]


def test_a_clean_is_kept_in_the_queue_audit_log(queue: Queue) -> None:
    for _ in range(3):
        queue.add("x")
    run_until_empty(queue, {"x": lambda job: 1})
    assert queue.clean("completed", keep=1, by="ops") == 2
    entry = queue.audit_log()[0]
    assert (entry["by"], entry["action"]) == ("ops", "clean completed (2 removed)")
