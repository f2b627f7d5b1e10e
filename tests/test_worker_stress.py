"""Many jobs, several workers, random crashes, and one worker killed mid-run.

The ``chaos`` handler appends its job id to a file at the start of every run
(one O_APPEND write), then returns, raises or exits as its data says. The
test counts the runs: a job runs more than once only if the worker holding
it was killed, and every job ends completed or failed with the right reason.
"""

from __future__ import annotations

import random
import re
import signal
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from sandboxq import Queue
from sandboxq.worker.dispatch import BUFFER_PER_CHILD, MAX_QUEUED_PER_CHILD
from tests.worker_harness import (
    WorkerProcess,
    job_field,
    parse_fields,
    runs_recorded,
    wait_for_counts,
    wait_until,
)

StartWorker = Callable[..., WorkerProcess]

JOBS = 500
WORKERS = 3
PROCS = 2
#: When to kill a worker: after this many jobs have settled.
KILL_AFTER = 150
WORKER_ARGS = ("--lease", "2", "--max-stalls", "1")


def plan_jobs(runs: Path, seed: int) -> list[dict[str, object]]:
    """500 chaos jobs: mostly ok, some raise, some exit with a code."""
    rng = random.Random(seed)
    specs: list[dict[str, object]] = []
    for _ in range(JOBS):
        action = rng.choices(["ok", "raise", "exit"], weights=[70, 15, 15])[0]
        data = {"runs": str(runs), "action": action, "sleep": rng.uniform(0.0, 0.02)}
        if action == "exit":
            data["code"] = rng.choice([1, 2, 7])
        specs.append({"name": "chaos", "data": data})
    return specs


def in_flight_on(queue: Queue, worker: WorkerProcess) -> set[str]:
    """Jobs leased by ``worker`` right now (the lease token names its pid)."""
    active = {i.decode() for i in queue.client.zrange(queue.keys.active, 0, -1)}
    marker = f":{worker.pid}:"
    return {job_id for job_id in active if marker in (job_field(queue, job_id, "token") or "")}


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_many_jobs_with_crashes_and_a_killed_worker(
    start_worker: StartWorker, queue: Queue, tmp_path: Path
) -> None:
    seed = random.randrange(1 << 30)
    runs = tmp_path / "runs.log"
    specs = plan_jobs(runs, seed)

    # Given three workers of two children each, and 500 jobs that return,
    # raise or exit at random
    workers = [start_worker(*WORKER_ARGS, procs=PROCS) for _ in range(WORKERS)]
    added = queue.add_bulk(specs)
    actions = {job.id: spec["data"] for job, spec in zip(added, specs, strict=True)}

    # When a third of them have settled, one whole worker (parent and
    # children) is SIGKILLed and a replacement starts
    wait_for_counts(
        queue,
        lambda c: c["completed"] + c["failed"] >= KILL_AFTER,
        60.0,
        f"{KILL_AFTER} settled jobs",
    )
    victim = workers[0]
    victim.kill_group(signal.SIGSTOP)  # freeze it to see what it holds
    wait_until_stopped(victim)
    held = in_flight_on(queue, victim)
    victim.kill_group(signal.SIGKILL)
    assert victim.wait(10.0) == -signal.SIGKILL
    killed_at = time.monotonic()
    workers.append(start_worker(*WORKER_ARGS, procs=PROCS))

    # Then every job ends completed or failed
    counts = wait_for_counts(
        queue,
        lambda c: c["completed"] + c["failed"] == JOBS,
        90.0,
        f"all {JOBS} jobs to settle (seed {seed})",
    )
    assert counts["waiting"] == counts["delayed"] == counts["active"] == 0, counts
    settled_in = time.monotonic() - killed_at

    ran = Counter(runs_recorded(runs))
    stalled = set()
    problems = []
    for job in added:
        current = queue.get_job(job.id)
        assert current is not None
        data = actions[job.id]
        assert isinstance(data, dict)
        if current.stalls:
            stalled.add(job.id)
        # A job ran once, or once more if its worker was killed mid-job
        # (then its lease lapsed and a survivor recovered it, counting a stall).
        if not 1 <= ran[job.id] <= 1 + min(current.stalls, 1) or current.stalls > 1:
            problems.append(f"{job.id} ran {ran[job.id]} times, stalled {current.stalls}")
        expected = {
            "ok": ("completed", None),
            "raise": ("failed", rf"ValueError: chaos raised in job {job.id}"),
            "exit": ("failed", rf"child exited with code {data.get('code')}"),
        }[data["action"]]
        if current.state != expected[0]:
            problems.append(f"{job.id} ({data['action']}) ended {current.state}: {current.error}")
        elif expected[1] and not re.fullmatch(expected[1], current.error or ""):
            problems.append(f"{job.id} failed with {current.error!r}, expected {expected[1]!r}")
        if current.state == "completed" and current.result != job.id:
            problems.append(f"{job.id} completed with result {current.result!r}")
    assert not problems, f"seed {seed}:\n" + "\n".join(problems[:40])

    # Only jobs of the killed worker stalled: every job it held when it was
    # frozen, and what the survivors say they recovered
    assert held <= stalled, (held, stalled)
    recovered = set()
    for worker in workers[1:]:
        for line in worker.matching_lines(r"recovered stalled jobs"):
            recovered |= set(filter(None, parse_fields(line)["requeued"].split(",")))
    assert recovered == stalled
    # It held a job per child, those queued behind each, and its buffer.
    most = PROCS * (1 + MAX_QUEUED_PER_CHILD + BUFFER_PER_CHILD)
    assert len(stalled) <= most, f"more stalls than the victim could hold: {stalled}"
    print(f"seed {seed}: held {sorted(held)}, stalled {sorted(stalled)}, runs {sum(ran.values())}")

    # And the surviving workers never lost a lease, and stop cleanly
    for worker in workers[1:]:
        assert not worker.matching_lines(r"WARNING job lost"), worker.log
        worker.send_signal(signal.SIGTERM)
    for worker in workers[1:]:
        assert worker.wait(15.0) == 0, worker.log
    assert settled_in < 60.0


def wait_until_stopped(worker: WorkerProcess, timeout: float = 5.0) -> None:
    """Wait until the worker's parent is in state T (stopped) in /proc."""

    def stopped() -> bool:
        stat = Path(f"/proc/{worker.pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] in ("T", "t")

    wait_until(stopped, timeout, f"worker {worker.pid} to stop")
