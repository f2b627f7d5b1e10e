"""sandboxq on Redis Cluster and Sentinel (tests/topologies.py: real servers
on loopback).

- ``test_drain_one_node_vs_cluster``: one worker (``--procs 2``) drains
  no-op jobs from 6 queues, first on one Redis, then on a 3-master cluster
  with the queues spread over its shards. Same box, so the figure is the
  ratio, with each master's CPU per job.
- ``test_failover_window``: a producer adds jobs one by one to a master
  watched by Sentinel, which is SIGKILLed; once the replica is promoted,
  the jobs whose add had returned but that the new master lacks are the
  writes the failover lost (replication is asynchronous). Then the same with
  ``WAIT 1`` after every add, and what it costs per add.

Nothing asserts on a timing.
"""

from __future__ import annotations

import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from benchmarks.conftest import READY_LINE, spawn_worker
from sandboxq import Queue
from sandboxq.errors import ConnectionFailed
from sandboxq.local_redis import LocalRedis
from tests.topologies import RedisClusterNodes, SentinelSet

QUEUES = 6
JOBS_PER_QUEUE = 2_000
#: How long the producer adds jobs before, and after, the master is killed.
PRODUCE_BEFORE_KILL = 1.0


def start_worker(url: str, queues: list[Queue]) -> subprocess.Popen[str]:
    """``sandboxq worker benchmarks.bench_jobs`` serving ``queues`` (their
    ``noop`` jobs), once it said it is ready."""
    names = [q.name for q in queues]
    worker = spawn_worker(
        url, {"SANDBOXQ_BENCH_QUEUES": ",".join(names)}, args=tuple(f"-q{n}" for n in names)
    )
    assert worker.stderr is not None
    for line in worker.stderr:
        if READY_LINE in line:
            threading.Thread(target=worker.stderr.read, daemon=True).start()  # keep it drained
            return worker
    pytest.fail(f"the worker exited ({worker.wait()}) before it was ready")


def stop(worker: subprocess.Popen[str]) -> None:
    worker.send_signal(signal.SIGTERM)
    worker.wait(30)


def drain(url: str, masters: list[redis.Redis], queues: list[Queue]) -> tuple[float, list[float]]:
    """Seconds to drain JOBS_PER_QUEUE no-op jobs from each of ``queues`` on
    ``url``, and each master's CPU seconds meanwhile."""
    for queue in queues:
        queue.pause()
        queue.add_bulk([{"name": "noop"}] * JOBS_PER_QUEUE)
    worker = start_worker(url, queues)
    try:
        before = [cpu_seconds(m) for m in masters]
        started = time.monotonic()
        for queue in queues:
            queue.resume()
        total = QUEUES * JOBS_PER_QUEUE
        while sum(q.counts()["completed"] for q in queues) < total:
            time.sleep(0.02)
        seconds = time.monotonic() - started
        return seconds, [cpu_seconds(m) - b for m, b in zip(masters, before, strict=True)]
    finally:
        stop(worker)


def cpu_seconds(client: redis.Redis) -> float:
    cpu: Any = client.info("cpu")
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


@pytest.fixture
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterNodes]:
    with RedisClusterNodes(tmp_path_factory.mktemp("cluster")) as nodes:
        yield nodes


@pytest.mark.benchmark(group="topologies: drain, one node vs cluster")
def test_drain_one_node_vs_cluster(
    benchmark: Any,
    cluster: RedisClusterNodes,
    tmp_path: Path,
    record_summary: Callable[[str, str], None],
) -> None:
    figures: dict[str, tuple[float, list[float]]] = {}

    names = [f"b{uuid.uuid4().hex[:6]}-{i}" for i in range(QUEUES)]
    nodes = cluster.masters()
    spread = [sum(cluster.master_for_key(f"{{{n}}}") is node for n in names) for node in nodes]

    def run() -> None:
        with LocalRedis(tmp_path / "one") as one, redis.Redis.from_url(one.url) as client:
            figures["one node"] = drain(one.url, [client], [Queue(n, url=one.url) for n in names])
        masters = [node.client() for node in nodes]
        try:
            queues = [Queue(n, url=cluster.url) for n in names]
            figures["cluster"] = drain(cluster.url, masters, queues)
        finally:
            for client in masters:
                client.close()

    benchmark.pedantic(run, rounds=1, iterations=1)
    total = QUEUES * JOBS_PER_QUEUE
    rates = {name: total / seconds for name, (seconds, _cpu) in figures.items()}
    per_job = {
        name: [cpu / total * 1e6 for cpu in cpus] for name, (_seconds, cpus) in figures.items()
    }
    benchmark.extra_info.update({"jobs_per_s": rates, "redis_cpu_us_per_job": per_job})
    record_summary(
        f"drain of {QUEUES} queues x {JOBS_PER_QUEUE:,} no-op jobs, 1 worker --procs 2",
        f"one node {rates['one node']:,.0f} jobs/s, 3-master cluster "
        f"{rates['cluster']:,.0f} jobs/s, ratio {rates['cluster'] / rates['one node']:.2f}x",
    )
    record_summary(
        "  Redis CPU per job",
        f"one node {per_job['one node'][0]:.1f} us; cluster masters "
        + " + ".join(f"{us:.1f}" for us in per_job["cluster"])
        + f" = {sum(per_job['cluster']):.1f} us (INFO cpu), serving "
        + " + ".join(map(str, spread))
        + " of the queues",
    )


def produce(queue: Queue, stop_at: threading.Event, wait_replicas: bool) -> list[str]:
    """Add jobs one by one until ``stop_at`` is set; the ids whose add
    returned (with ``wait_replicas``, only once WAIT said a replica has it)."""
    acknowledged: list[str] = []
    while not stop_at.is_set():
        try:
            job = queue.add("noop")
            if wait_replicas and queue.client.execute_command("WAIT", 1, 1000) < 1:
                continue  # no replica confirmed it: not counted as acknowledged
            acknowledged.append(job.id)
        except (redis.RedisError, ConnectionFailed):
            time.sleep(0.01)  # the master is gone: wait for the new one
    return acknowledged


def repl_offset(server: redis.Redis) -> int:
    """How far into the replication stream a server is: on the master, what
    it has written; on a replica, what it has received and applied."""
    info: Any = server.info("replication")
    return int(info["master_repl_offset"])


def failover(sentinels: SentinelSet, wait_replicas: bool) -> dict[str, float]:
    """Acknowledged adds, how many of them the promoted master lacks, the
    time per add before the kill, and how far behind (in adds) the replica
    was when sampled meanwhile: the window a failover can lose."""
    queue = Queue(f"f-{uuid.uuid4().hex[:6]}", url=sentinels.url)
    stop_at = threading.Event()
    result: list[list[str]] = []
    thread = threading.Thread(target=lambda: result.append(produce(queue, stop_at, wait_replicas)))
    lags: list[int] = []
    master_node, replica_node = sentinels.servers
    with master_node.client() as master, replica_node.client() as replica:
        start_offset = repl_offset(master)
        thread.start()
        sampling_until = time.monotonic() + PRODUCE_BEFORE_KILL  # a timed window of adds
        while time.monotonic() < sampling_until:
            # The master first: the replica, read a moment later, is if anything ahead.
            lags.append(max(repl_offset(master) - repl_offset(replica), 0))
            time.sleep(0.005)
        offset = repl_offset(master)
        added = int(master.zcard(queue.keys.wait))
    old = sentinels.kill_master()
    sentinels.wait_for_new_master(old)
    stop_at.set()
    thread.join(30)
    acknowledged = result[0]
    kept = {i.decode() for i in queue.client.execute_command("ZRANGE", queue.keys.wait, 0, -1)}
    bytes_per_add = (offset - start_offset) / max(added, 1)
    return {
        "acknowledged": len(acknowledged),
        "lost": sum(1 for job_id in acknowledged if job_id not in kept),
        "seconds_per_add": PRODUCE_BEFORE_KILL / max(added, 1),
        "max_lag_adds": max(lags) / bytes_per_add,
        "mean_lag_adds": sum(lags) / len(lags) / bytes_per_add,
    }


@pytest.mark.benchmark(group="topologies: failover window")
def test_failover_window(
    benchmark: Any,
    tmp_path_factory: pytest.TempPathFactory,
    record_summary: Callable[[str, str], None],
) -> None:
    figures: dict[str, dict[str, float]] = {}

    def run() -> None:
        for label, wait_replicas in (("plain add", False), ("add + WAIT 1", True)):
            with SentinelSet(tmp_path_factory.mktemp("sentinel")) as sentinels:
                figures[label] = failover(sentinels, wait_replicas)

    benchmark.pedantic(run, rounds=1, iterations=1)
    benchmark.extra_info.update(figures)
    for label, f in figures.items():
        record_summary(
            f"failover under a producer, {label}",
            f"{f['lost']:.0f} of {f['acknowledged']:,.0f} acknowledged adds lost; replica "
            f"behind by {f['mean_lag_adds']:.2f} adds on average, {f['max_lag_adds']:.1f} at "
            f"most; {f['seconds_per_add'] * 1e6:.0f} us per add",
        )
    plain, waited = figures["plain add"], figures["add + WAIT 1"]
    record_summary(
        "  WAIT 1 after every add costs",
        f"{waited['seconds_per_add'] / plain['seconds_per_add']:.2f}x the time of a plain add",
    )
