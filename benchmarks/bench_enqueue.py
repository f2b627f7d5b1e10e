"""Enqueue throughput, end to end against a private redis-server: ``Queue.add``
one tiny job at a time (also with a dedupe window on each add, against the
plain add), and ``Queue.add_bulk`` of 10,000 tiny jobs, against
a bare ``EVALSHA`` of a script that does nothing (the floor under an add);
the same pair for ``AsyncQueue.add`` on a ``redis.asyncio`` client; and, with
``$SANDBOXQ_BENCH_BASELINE`` naming another checkout, ``add_bulk`` of this
tree against that one's.

Each round gets a fresh, empty queue (the previous one is deleted in the
untimed setup), so rounds are comparable. The job specs are built outside the
timed region too. Enqueueing does not touch the native extension (orjson
serializes the payload, the rest is option validation, Job objects and the
Redis round trip), so these run once, not as native and pure.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import uuid
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import pytest
import redis
import redis.asyncio

from benchmarks.add_bulk_rate import BULK_JOBS, tiny_job
from benchmarks.conftest import REPO_ROOT
from sandboxq import Queue
from sandboxq.aio import AsyncQueue
from sandboxq.local_redis import LocalRedis

if TYPE_CHECKING:
    from benchmarks.conftest import QueueFactory

#: ``Queue.add`` calls per timed round (one round trip each).
ADDS_PER_ROUND = 100

#: Median seconds per call (per job for add_bulk) of each test, for the
#: comparisons with a bare EVALSHA.
_PER_CALL: dict[str, float] = {}


def record_jobs_per_second(benchmark: Any, record_summary: Any, label: str, jobs: int) -> None:
    if benchmark.stats is None:  # --benchmark-disable: ran once, nothing measured
        return
    median = benchmark.stats.stats.median
    benchmark.extra_info["jobs_per_s"] = round(jobs / median, 1)
    record_summary(label, f"{jobs / median:,.0f} jobs/s (median round)")


@pytest.mark.benchmark(group="enqueue: add")
def test_add(benchmark: Any, queues: QueueFactory, record_summary: Any) -> None:
    specs = [tiny_job(n) for n in range(ADDS_PER_ROUND)]

    def setup() -> tuple[tuple[Queue], dict[str, Any]]:
        return (queues.new(),), {}

    def add_one_by_one(queue: Queue) -> None:
        for spec in specs:
            queue.add(spec["name"], spec["data"])

    benchmark.pedantic(add_one_by_one, setup=setup, rounds=50, warmup_rounds=3)
    assert queues.current is not None
    assert queues.current.counts()["waiting"] == ADDS_PER_ROUND
    record_jobs_per_second(
        benchmark, record_summary, "enqueue: add (1 job per call)", ADDS_PER_ROUND
    )
    record_per_call(benchmark, record_summary, "add", ADDS_PER_ROUND)


@pytest.mark.benchmark(group="enqueue: add with dedupe")
@pytest.mark.parametrize("kind", ["new windows", "replacing"])
def test_add_dedupe(benchmark: Any, queues: QueueFactory, record_summary: Any, kind: str) -> None:
    """``test_add`` with a dedupe window on each add: ``new windows`` gives
    each add an id of its own (each opens a window: the price of asking),
    ``replacing`` gives all one id with ``replace`` (each add after the
    first replaces the waiting job: a debounce)."""
    specs = [tiny_job(n) for n in range(ADDS_PER_ROUND)]
    if kind == "new windows":
        windows = [{"id": f"doc-{n}"} for n in range(ADDS_PER_ROUND)]
    else:
        windows = [{"id": "doc", "replace": True}] * ADDS_PER_ROUND

    def setup() -> tuple[tuple[Queue], dict[str, Any]]:
        return (queues.new(),), {}

    def add_one_by_one(queue: Queue) -> None:
        for spec, window in zip(specs, windows, strict=True):
            queue.add(spec["name"], spec["data"], dedupe=window)

    benchmark.pedantic(add_one_by_one, setup=setup, rounds=50, warmup_rounds=3)
    assert queues.current is not None
    waiting = queues.current.counts()["waiting"]
    assert waiting == (ADDS_PER_ROUND if kind == "new windows" else 1)
    record_jobs_per_second(
        benchmark, record_summary, f"enqueue: add with dedupe, {kind}", ADDS_PER_ROUND
    )
    record_per_call(benchmark, record_summary, f"add dedupe {kind}", ADDS_PER_ROUND)


@pytest.mark.benchmark(group="enqueue: add_bulk 10k")
def test_add_bulk(benchmark: Any, queues: QueueFactory, record_summary: Any) -> None:
    specs = [tiny_job(n) for n in range(BULK_JOBS)]

    def setup() -> tuple[tuple[Queue], dict[str, Any]]:
        return (queues.new(),), {}

    def add_bulk(queue: Queue) -> None:
        queue.add_bulk(specs)

    benchmark.pedantic(add_bulk, setup=setup, rounds=15, warmup_rounds=2)
    assert queues.current is not None
    assert queues.current.counts()["waiting"] == BULK_JOBS
    record_jobs_per_second(benchmark, record_summary, "enqueue: add_bulk (10,000 jobs)", BULK_JOBS)
    record_per_call(benchmark, record_summary, "add_bulk", BULK_JOBS)


@pytest.mark.benchmark(group="enqueue: bare EVALSHA")
def test_evalsha(benchmark: Any, redis_client: redis.Redis, record_summary: Any) -> None:
    """The floor under ``Queue.add``: one round trip running a script that
    does nothing, on the same client and in the same rounds as ``test_add``."""
    sha = redis_client.script_load("return 1")

    def call_many() -> None:
        for _ in range(ADDS_PER_ROUND):
            redis_client.evalsha(sha, 0)

    benchmark.pedantic(call_many, rounds=50, warmup_rounds=3)
    assert redis_client.evalsha(sha, 0) == 1
    record_per_call(benchmark, record_summary, "evalsha", ADDS_PER_ROUND)


# -- the async producer ------------------------------------------------------------
@dataclass
class AsyncClient:
    """One event loop and one ``redis.asyncio`` client on it, shared by the
    async add and its bare EVALSHA, so both pay the same round trips."""

    loop: asyncio.AbstractEventLoop
    client: Any  # redis.asyncio.Redis

    def run(self, coroutine: Coroutine[Any, Any, Any]) -> Any:
        return self.loop.run_until_complete(coroutine)


@pytest.fixture(scope="module")
def async_client(redis_server: LocalRedis) -> Iterator[AsyncClient]:
    loop = asyncio.new_event_loop()
    shared = AsyncClient(loop, redis.asyncio.Redis.from_url(redis_server.url))
    shared.run(shared.client.ping())  # connected before any timed round
    yield shared
    shared.run(shared.client.aclose())
    loop.close()


@pytest.mark.benchmark(group="enqueue: async add")
def test_async_add(benchmark: Any, async_client: AsyncClient, record_summary: Any) -> None:
    """``AsyncQueue.add`` one job at a time on the shared ``redis.asyncio``
    client, shaped as ``test_add``: 100 calls a round, a fresh queue each
    round (the last one deleted in the untimed setup)."""
    specs = [tiny_job(n) for n in range(ADDS_PER_ROUND)]
    current: list[AsyncQueue] = []

    def setup() -> tuple[tuple[AsyncQueue], dict[str, Any]]:
        if current:
            async_client.run(current.pop().obliterate(force=True))
        queue = AsyncQueue(f"bench-{uuid.uuid4().hex[:10]}", connection=async_client.client)
        current.append(queue)
        return (queue,), {}

    async def add_one_by_one(queue: AsyncQueue) -> None:
        for spec in specs:
            await queue.add(spec["name"], spec["data"])

    benchmark.pedantic(
        lambda queue: async_client.run(add_one_by_one(queue)),
        setup=setup,
        rounds=50,
        warmup_rounds=3,
    )
    counts = async_client.run(current[0].counts())
    async_client.run(current.pop().obliterate(force=True))
    assert counts["waiting"] == ADDS_PER_ROUND
    record_jobs_per_second(
        benchmark, record_summary, "enqueue: async add (1 job per call)", ADDS_PER_ROUND
    )
    record_per_call(benchmark, record_summary, "async add", ADDS_PER_ROUND)


@pytest.mark.benchmark(group="enqueue: async bare EVALSHA")
def test_async_evalsha(benchmark: Any, async_client: AsyncClient, record_summary: Any) -> None:
    """The floor under ``AsyncQueue.add``: ``test_evalsha`` on the shared
    ``redis.asyncio`` client, in the same event loop as ``test_async_add``."""
    sha = async_client.run(async_client.client.script_load("return 1"))

    async def call_many() -> None:
        for _ in range(ADDS_PER_ROUND):
            await async_client.client.evalsha(sha, 0)

    benchmark.pedantic(lambda: async_client.run(call_many()), rounds=50, warmup_rounds=3)
    assert async_client.run(async_client.client.evalsha(sha, 0)) == 1
    record_per_call(benchmark, record_summary, "async evalsha", ADDS_PER_ROUND)


def record_per_call(benchmark: Any, record_summary: Any, name: str, per_round: int) -> None:
    """Keep the median time per call (or job) of ``name``; print goals 1
    and 6 once the figures they compare are in."""
    if benchmark.stats is None:  # --benchmark-disable: nothing measured
        return
    _PER_CALL[name] = benchmark.stats.stats.median / per_round
    for add_name, bare_name, goal in (
        ("add", "evalsha", "goal 1 single add / bare EVALSHA"),
        ("async add", "async evalsha", "goal 1 async add / bare async EVALSHA"),
    ):
        add, bare = _PER_CALL.get(add_name), _PER_CALL.get(bare_name)
        if add is not None and bare is not None:
            record_summary(
                goal,
                f"{add / bare:.2f}x (goal <= 1.5x): {add_name} {add * 1e6:.0f} us, "
                f"EVALSHA of 'return 1' {bare * 1e6:.0f} us (medians per call)",
            )
    for kind in ("new windows", "replacing"):
        windowed, plain = _PER_CALL.get(f"add dedupe {kind}"), _PER_CALL.get("add")
        if windowed is not None and plain is not None:
            record_summary(
                f"add with dedupe ({kind}) / plain add",
                f"{windowed / plain:.2f}x: {windowed * 1e6:.0f} us with dedupe, "
                f"{plain * 1e6:.0f} us plain (medians per call, same run)",
            )
    bulk, bare = _PER_CALL.get("add_bulk"), _PER_CALL.get("evalsha")
    if bulk is not None and bare is not None:
        record_summary(
            "goal 6 add_bulk per job",
            f"{bulk * 1e6:.1f} us = {bulk / bare:.2f} bare EVALSHA calls "
            "(median round of test_add_bulk; the ratio to another tree is the next line)",
        )


# -- add_bulk against another checkout ------------------------------------------------
#: Which checkout to compare ``add_bulk`` with (goal 6).
BASELINE_VARIABLE = "SANDBOXQ_BENCH_BASELINE"
#: Subprocess runs per tree, alternating, and timed rounds in each run.
BASELINE_RUNS = 4
BASELINE_ROUNDS = 5
RATE_SCRIPT = Path(__file__).with_name("add_bulk_rate.py")


def time_tree(tree: Path, url: str) -> list[float]:
    """``add_bulk_rate.py`` with ``tree``'s sandboxq (pure twin: enqueueing
    does not use the extension, and a baseline may not have it built)."""
    env = dict(os.environ, PYTHONPATH=str(tree), SANDBOXQ_NO_EXTENSIONS="1")
    done = subprocess.run(
        [sys.executable, str(RATE_SCRIPT), url, str(BASELINE_ROUNDS)],
        cwd=RATE_SCRIPT.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, f"add_bulk_rate.py on {tree} failed:\n{done.stderr}"
    report = orjson.loads(done.stdout)
    imported = Path(report["sandboxq"]).resolve()
    assert imported.is_relative_to(tree.resolve()), f"{tree} ran the sandboxq in {imported}"
    seconds: list[float] = report["seconds"]
    return seconds


@pytest.mark.benchmark(group="enqueue: add_bulk, this tree / baseline")
def test_add_bulk_against_baseline(
    benchmark: Any, redis_server: LocalRedis, record_summary: Callable[[str, str], None]
) -> None:
    """Goal 6: ``add_bulk`` of this tree against ``$SANDBOXQ_BENCH_BASELINE``'s,
    in subprocesses on the same Redis, alternating which goes first."""
    label = "goal 6 add_bulk jobs/s, this tree / baseline"
    baseline = os.environ.get(BASELINE_VARIABLE)
    if not baseline:
        record_summary(
            label,
            f"not measured: set {BASELINE_VARIABLE} to a checkout of the code to compare "
            "with (e.g. git worktree add /tmp/sandboxq-main main) (goal >= 1.0x)",
        )
        pytest.skip(f"{BASELINE_VARIABLE} is not set")
    trees = {"this tree": REPO_ROOT, "baseline": Path(baseline)}
    assert (trees["baseline"] / "sandboxq" / "__init__.py").is_file(), (
        f"{BASELINE_VARIABLE}={baseline} holds no sandboxq checkout"
    )
    seconds: dict[str, list[float]] = {name: [] for name in trees}

    def alternate() -> None:
        for run in range(BASELINE_RUNS):
            order = list(trees) if run % 2 == 0 else list(reversed(trees))
            for name in order:
                seconds[name] += time_tree(trees[name], redis_server.url)

    benchmark.pedantic(alternate, rounds=1, iterations=1)
    rate = {name: BULK_JOBS / statistics.median(values) for name, values in seconds.items()}
    benchmark.extra_info["jobs_per_s"] = {name: round(r, 1) for name, r in rate.items()}
    rounds = BASELINE_RUNS * BASELINE_ROUNDS
    record_summary(
        label,
        f"{rate['this tree'] / rate['baseline']:.2f}x (goal >= 1.0x): this tree "
        f"{rate['this tree']:,.0f} jobs/s, baseline {rate['baseline']:,.0f} jobs/s "
        f"({baseline}; medians of {rounds} rounds each, {BASELINE_RUNS} alternating "
        "subprocesses per tree, SANDBOXQ_NO_EXTENSIONS=1)",
    )
