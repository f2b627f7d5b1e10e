"""Schedules and flows run by real worker processes."""

from __future__ import annotations

import itertools
import signal
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from sandboxq import Queue
from tests.worker_harness import WorkerProcess, runs_recorded, wait_for_job, wait_until


def test_a_three_level_flow_runs_on_a_worker(
    queue: Queue, start_worker: Callable[..., WorkerProcess]
) -> None:
    # Given a worker and a flow root(1) <- [mid(10) <- [leaf(100), leaf(1000)], leaf(5)]
    start_worker(procs=2)
    flow = queue.add_flow(
        parent={"name": "sum_tree", "data": 1},
        children=[
            {
                "name": "sum_tree",
                "data": 10,
                "children": [
                    {"name": "sum_tree", "data": 100},
                    {"name": "sum_tree", "data": 1000},
                ],
            },
            {"name": "sum_tree", "data": 5},
        ],
    )
    # When the worker runs it, the root completes with the whole tree's sum
    root = wait_for_job(queue, flow.job.id, "completed", timeout=15)
    assert root.result == 1116
    mid = queue.get_job(flow.children[0].job.id)
    assert mid is not None and mid.result == 1110
    assert mid.finished_at is not None and root.started_at is not None
    assert root.started_at >= mid.finished_at


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_an_every_second_schedule_fires_once_per_occurrence_across_deploys(
    queue: Queue, start_worker: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    runs = tmp_path / "runs"
    # Given 3 workers and an every-second schedule whose jobs record each run
    workers = [start_worker("--lease", "1", procs=1) for _ in range(3)]
    queue.schedule("tick", every=1, name="chaos", data={"runs": str(runs), "action": "ok"})

    def ticks_done(n: int) -> Callable[[], bool]:
        return lambda: queue.counts()["completed"] >= n

    # When one worker is SIGKILLed and another restarted (a deploy) during ~10 s
    wait_until(ticks_done(3), timeout=15, what="3 occurrences")
    workers[0].kill_group(signal.SIGKILL)
    wait_until(ticks_done(6), timeout=15, what="6 occurrences")
    workers[1].send_signal(signal.SIGTERM)
    assert workers[1].wait(15) == 0
    start_worker("--lease", "1", procs=1)
    wait_until(ticks_done(10), timeout=15, what="10 occurrences")
    queue.unschedule("tick")
    wait_until(
        lambda: queue.counts()["waiting"] + queue.counts()["active"] == 0,
        timeout=15,
        what="the last occurrences to run",
    )

    # Then every occurrence in the window exists exactly once, none missed
    ids = queue.job_ids("completed", limit=1000)
    occurrences = sorted(int(job_id.split("@")[1]) for job_id in ids)
    assert len(occurrences) >= 10
    assert [b - a for a, b in itertools.pairwise(occurrences)] == [1000] * (len(occurrences) - 1)
    # And each ran once, unless the killed worker was running it
    ran = Counter(runs_recorded(runs))
    for job_id in ids:
        job = queue.get_job(job_id)
        assert job is not None
        assert ran[job_id] == 1 or job.stalls > 0, (job_id, ran[job_id])
    assert time.time() * 1000 - occurrences[0] >= 9000


@pytest.mark.parametrize("first", [0, 1], ids=["first export first", "second export first"])
def test_a_job_with_two_dependencies_runs_on_a_worker_once_both_finished(
    queue: Queue, start_worker: Callable[..., WorkerProcess], tmp_path: Path, first: int
) -> None:
    # Given a worker, two exports held at their gates, and a report that
    # depends on both, added after them
    start_worker(procs=2)
    gates = [tmp_path / "gate-0", tmp_path / "gate-1"]
    exports = [
        queue.add("gated_value", {"gate": str(gate), "value": f"rows {n}"})
        for n, gate in enumerate(gates)
    ]
    report = queue.add("join_dependencies", depends_on=exports)
    assert report.state == "waiting-deps"

    # When one export finishes
    gates[first].touch()
    wait_for_job(queue, exports[first].id, "completed", timeout=15)
    # Then the report still waits for the other
    waiting = queue.get_job(report.id)
    assert waiting is not None and waiting.state == "waiting-deps"
    assert waiting.pending_dependencies() == [f"{queue.name}:{exports[1 - first].id}"]

    # When the other finishes too
    gates[1 - first].touch()
    # Then the report runs, reading both results
    done = wait_for_job(queue, report.id, "completed", timeout=15)
    assert done.result == {
        f"{queue.name}:{exports[0].id}": "rows 0",
        f"{queue.name}:{exports[1].id}": "rows 1",
    }
