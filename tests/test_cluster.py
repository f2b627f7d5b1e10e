"""sandboxq on a real Redis Cluster (tests/topologies.py: 3 masters, each
with a replica): queues spread over shards, workers that serve all of them,
and a master that dies mid-drain."""

from __future__ import annotations

import collections
import uuid
from pathlib import Path

import pytest

from sandboxq import Queue
from sandboxq.dashboard import app
from tests.asgi_client import Client
from tests.topologies import RedisClusterNodes, RedisNode
from tests.worker_harness import (
    WorkerProcess,
    run_sandboxq,
    runs_recorded,
    wait_for_job,
    wait_until,
)

pytestmark = [pytest.mark.timeout(240), pytest.mark.integration]

#: Queues per test, and how many distinct masters they must land on.
QUEUES = 6
MIN_MASTERS = 2


def spread_queues(cluster: RedisClusterNodes) -> list[Queue]:
    """QUEUES fresh queues on the cluster, on at least MIN_MASTERS masters."""
    run = uuid.uuid4().hex[:6]
    names = [f"c{run}-{i}" for i in range(QUEUES)]
    queues = [Queue(name, url=cluster.url) for name in names]
    masters = {cluster.master_for_key(q.keys.wait).port for q in queues}
    assert len(masters) >= MIN_MASTERS, f"all {QUEUES} queues on one master: {masters}"
    return queues


def start_workers(
    cluster: RedisClusterNodes, queues: list[Queue], runs: Path, count: int, *args: str
) -> list[WorkerProcess]:
    names = ",".join(q.name for q in queues)
    env = {"SANDBOXQ_TEST_QUEUES": names, "SANDBOXQ_TEST_RUNS": str(runs)}
    workers = []
    for _ in range(count):
        worker = WorkerProcess(
            names, cluster.url, args, modules=("tests.cluster_jobs",), env=env, procs=2
        )
        workers.append(worker.start())
    return workers


def total_completed(queues: list[Queue]) -> int:
    return sum(q.counts()["completed"] for q in queues)


def test_two_workers_drain_six_queues_spread_over_shards_once_each(
    cluster: RedisClusterNodes, tmp_path: Path
) -> None:
    queues = spread_queues(cluster)
    jobs_per_queue = 200
    for queue in queues:
        queue.add_bulk([{"name": "record"}] * jobs_per_queue)
    runs = tmp_path / "runs"
    workers = start_workers(cluster, queues, runs, 2)
    try:
        total = QUEUES * jobs_per_queue
        wait_until(lambda: total_completed(queues) == total, 120, "every job done")
        ran = collections.Counter(runs_recorded(runs))
        assert len(ran) == total
        assert max(ran.values()) == 1, [job for job, n in ran.items() if n > 1][:10]
        assert all(q.counts()["failed"] == 0 for q in queues)
        for worker in workers:
            assert worker.running, worker.log
            assert "CROSSSLOT" not in worker.log and "Traceback" not in worker.log
    finally:
        for worker in workers:
            worker.cleanup()


def test_an_idle_worker_wakes_for_a_job_on_any_shard(
    cluster: RedisClusterNodes, tmp_path: Path
) -> None:
    """The wait is one BZPOPMIN per queue: a job added to any of them, on
    any master, wakes the worker."""
    queues = spread_queues(cluster)
    runs = tmp_path / "runs"
    (worker,) = start_workers(cluster, queues, runs, 1)
    try:
        for queue in queues:
            job = queue.add("record")
            wait_for_job(queue, job.id, ["completed"], timeout=20)
        assert len(runs_recorded(runs)) == QUEUES
    finally:
        worker.cleanup()


def test_a_master_dies_mid_drain_and_every_job_completes(
    doomed_cluster: RedisClusterNodes, tmp_path: Path
) -> None:
    """The master of a busy queue is killed: its replica takes over, the
    worker reads the slot map again and goes on; jobs that were running are
    recovered through their leases. None fails, and the worker never exits."""
    cluster = doomed_cluster
    queues = spread_queues(cluster)
    jobs_per_queue = 100
    for queue in queues:
        queue.add_bulk([{"name": "record", "data": 0.005}] * jobs_per_queue)
    busy = queues[0]
    master: RedisNode = cluster.master_for_key(busy.keys.wait)
    with master.client() as direct:
        assert direct.execute_command("WAIT", 1, 5000) == 1  # its replica has the jobs
    runs = tmp_path / "runs"
    (worker,) = start_workers(cluster, queues, runs, 1, "--lease", "2")
    try:
        wait_until(lambda: busy.counts()["completed"] >= 20, 60, "the drain under way")
        cluster.kill(master)
        cluster.wait_for_failover(master)
        total = QUEUES * jobs_per_queue
        wait_until(lambda: total_completed(queues) == total, 120, "every job done")
        assert all(q.counts()["failed"] == 0 for q in queues)
        assert worker.running, worker.log
        assert "Redis reachable again" in worker.log
    finally:
        worker.cleanup()


def test_cancelling_a_flow_parent_cancels_its_children_across_the_group_on_a_cluster(
    cluster: RedisClusterNodes,
) -> None:
    # Given a flow over two queues of one group (one slot), nested, on a cluster
    group = f"f{uuid.uuid4().hex[:6]}"
    parents, kids = (
        Queue(f"{group}:parents", url=cluster.url),
        Queue(f"{group}:kids", url=cluster.url),
    )
    try:
        flow = parents.add_flow(
            parent={"name": "root"},
            children=[
                {"queue": kids.name, "name": "mid", "children": [{"name": "leaf", "delay": 60}]},
                {"queue": kids.name, "name": "child", "group": "g"},
            ],
        )
        mid, child = (c.job for c in flow.children)
        leaf = flow.children[0].children[0].job

        # When the parent is cancelled
        assert parents.cancel(flow.job.id, reason="stop") == "cancelled"

        # Then every job of the flow is cancelled (no CROSSSLOT: one slot)
        states = [
            (q.get_job(j.id).state)  # type: ignore[union-attr]
            for q, j in ((parents, flow.job), (kids, mid), (kids, child), (parents, leaf))
        ]
        assert states == ["cancelled"] * 4
    finally:
        for q in (parents, kids):
            q.obliterate(force=True)


def test_dedupe_windows_work_on_queues_spread_over_shards(cluster: RedisClusterNodes) -> None:
    # Given queues on several masters
    queues = spread_queues(cluster)
    try:
        # When each adds one dedupe id three times, replacing: twice in one
        # batch, then alone
        for queue in queues:
            queue.add_bulk(
                [
                    {"name": "record", "data": n, "dedupe": {"id": "doc", "replace": True}}
                    for n in (0, 1)
                ]
            )
            again = queue.add("record", 2, dedupe={"id": "doc", "ttl": 60, "replace": True})

            # Then each queue holds one job, with the last data (no CROSSSLOT:
            # the window's key is in the queue's slot)
            assert not again.created
            assert queue.counts()["waiting"] == 1
            assert queue.get_job(again.id).data == 2  # type: ignore[union-attr]
            assert int(queue.client.get(queue.keys.deduplicated)) == 2
    finally:
        for queue in queues:
            queue.obliterate(force=True)


def test_the_admin_cli_lists_queues_on_every_shard(cluster: RedisClusterNodes) -> None:
    queues = spread_queues(cluster)
    for queue in queues:
        queue.add("record")
    stats = run_sandboxq("stats", "--url", cluster.url)
    assert stats.returncode == 0, stats.stderr
    assert all(q.name in stats.stdout for q in queues)


def test_the_dashboard_and_a_ready_cluster_client_see_every_shard(
    cluster: RedisClusterNodes,
) -> None:
    queues = spread_queues(cluster)
    client = cluster.cluster_client()
    try:
        for queue in queues:  # through a RedisCluster the application built itself
            Queue(queue.name, connection=client).add("record", {"via": "connection="})
    finally:
        client.close()
    token = "t" * 20
    dashboard = Client(app(cluster.url, token=token), headers={"authorization": f"Bearer {token}"})
    listed = dashboard.get("/api/queues")
    assert listed.status == 200, listed.text
    counts = {row["queue"]: row["counts"]["waiting"] for row in listed.json()["queues"]}
    assert all(counts.get(q.name) == 1 for q in queues), counts
    job = dashboard.get(f"/api/queues/{queues[-1].name}/jobs/1")
    assert job.status == 200 and job.json()["data"] == {"via": "connection="}
