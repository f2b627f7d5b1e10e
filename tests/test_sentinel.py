"""sandboxq on a master watched by Sentinel (tests/topologies.py: one master,
one replica, three sentinels, all real): producers, the admin CLI and a
worker find the master through the sentinels, and follow it when the
sentinels promote the replica."""

from __future__ import annotations

import uuid

import pytest
import redis
from redis.sentinel import Sentinel

from sandboxq import Queue
from tests.topologies import SentinelSet
from tests.worker_harness import WorkerProcess, run_sandboxq, wait_for_counts

pytestmark = [pytest.mark.timeout(180), pytest.mark.integration]


def test_producers_and_the_admin_cli_reach_the_master_through_a_sentinel_url(
    sentinel_set: SentinelSet,
) -> None:
    name = f"s-{uuid.uuid4().hex[:8]}"
    queue = Queue(name, url=sentinel_set.url)
    job = queue.add("ok", {"n": 1})
    assert queue.get_job(job.id) is not None
    assert queue.counts()["waiting"] == 1
    assert repr(queue).startswith(f"<Queue {name!r} at redis+sentinel://")
    # What the queue wrote is on the master the sentinels name.
    with redis.Redis(*sentinel_set.master_address()) as master:
        assert master.zcard(queue.keys.wait) == 1
    stats = run_sandboxq("stats", "--url", sentinel_set.url)
    assert stats.returncode == 0, stats.stderr
    assert name in stats.stdout


def test_a_queue_takes_a_ready_sentinel_managed_client(sentinel_set: SentinelSet) -> None:
    sentinels = Sentinel(sentinel_set.sentinel_addresses)  # type: ignore[no-untyped-call]
    client = sentinels.master_for(sentinel_set.service)  # type: ignore[no-untyped-call]
    queue = Queue(f"s-{uuid.uuid4().hex[:8]}", connection=client)
    queue.add_bulk([{"name": "ok"}] * 3)
    assert queue.counts()["waiting"] == 3
    assert f"/{sentinel_set.service}/0" in queue.url


def test_a_worker_follows_the_master_through_a_failover_mid_drain(
    sentinel_set: SentinelSet,
) -> None:
    """The master dies with jobs waiting and running: the sentinels promote
    the replica, the worker finds it and finishes every job, without
    exiting. Jobs that were running are recovered through their leases
    (hence a short lease); writes the replica had not received when the
    master died are what asynchronous replication can lose."""
    name = f"s-{uuid.uuid4().hex[:8]}"
    queue = Queue(name, url=sentinel_set.url)
    jobs = 300
    queue.add_bulk([{"name": "sleep", "data": 0.01}] * jobs)
    queue.client.execute_command("WAIT", 1, 5000)  # the replica has every job
    worker = WorkerProcess(name, sentinel_set.url, ["--lease", "2"], procs=2).start()
    try:
        wait_for_counts(queue, lambda c: c["completed"] >= 30, 60, "the drain to be under way")
        old = sentinel_set.kill_master()
        sentinel_set.wait_for_new_master(old)
        counts = wait_for_counts(
            queue, lambda c: c["completed"] == jobs, 90, "every job to complete"
        )
        assert counts["failed"] == 0, counts
        assert worker.running, worker.log
        assert "Traceback" not in worker.log
    finally:
        worker.cleanup()
