"""Redis's CPU per job and transition: the add, fetch and finish scripts
called directly (no worker), on a fresh queue of plain jobs (no options, no
groups, no limits), with the server's statistics read before and after each
phase.

A pass adds ``JOBS`` jobs, leases them all with the fetch script, then
completes them all with the finish script, as the worker would. It runs
three times (``PASSES``): one add per job with fetches and finishes of 2
(a worker that takes only as many jobs as it has free children) and of 16
(about what a prefetching ``--procs 2`` worker sends in a no-op drain), then
``add_bulk`` (1,000 per call) and batches of 50.

The figure per transition is INFO commandstats' time in EVALSHA over the jobs
(see ``RedisCpu`` in ``conftest.py``); the server's whole CPU time (INFO cpu,
which adds reading requests and writing replies) is printed beside the
total. Both are the server's own accounts, so the client's speed does not
enter them, but a busy machine still does. Nothing asserts on them.

``test_redis_floor`` runs the least work the same three transitions need as
raw commands; goal 2 divides the ``1 / 16 / 16`` pass by it, transition by
transition, once both tests ran.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import redis

from benchmarks.conftest import RedisCpu
from sandboxq import Queue, fast
from sandboxq.execution import COMPLETED, Outcome, finish_entry
from sandboxq.scripts import now_ms

#: Jobs per pass.
JOBS = 5_000
#: The worker's lease token and length; the lease never runs out here.
TOKEN = "bench-transitions"
LEASE_MS = 600_000
#: A no-op handler's result, as the worker sends it.
NOOP_RESULT = Outcome(COMPLETED, "null")

Phase = Callable[[Queue], Any]


def add_singly(queue: Queue) -> None:
    for _ in range(JOBS):
        queue.add("noop")


def add_in_bulk(queue: Queue) -> None:
    queue.add_bulk([{"name": "noop"}] * JOBS)


def lease_all(queue: Queue, batch: int) -> list[tuple[str, dict[str, Any]]]:
    """Fetch ``batch`` jobs per call, numbering the calls as the worker
    does, until none is left; returns the leased ``(id, fields)``."""
    leased: list[tuple[str, dict[str, Any]]] = []
    for request in range(1, JOBS + 2):
        rows, _next_check, _limited, _has_limits, _problem = queue.scripts.fetch(
            queue.keys, now_ms(), batch, TOKEN, LEASE_MS, request=request
        )
        if not rows:
            break
        leased += fast.decode_fetched(rows)
    return leased


def finish_all(queue: Queue, leased: list[tuple[str, dict[str, Any]]], batch: int) -> None:
    """Complete the leased jobs, ``batch`` per call of the finish script."""
    for start in range(0, len(leased), batch):
        chunk = leased[start : start + batch]
        entries = [finish_entry(job_id, fields, NOOP_RESULT) for job_id, fields in chunk]
        statuses = queue.scripts.finish(queue.keys, now_ms(), TOKEN, entries)
        assert statuses == [b"completed"] * len(entries), statuses


def measure(client: redis.Redis, queue: Queue, phase: Phase) -> tuple[Any, RedisCpu]:
    """Run ``phase`` on ``queue``: its result and what Redis spent on it."""
    before = RedisCpu.read(client)
    result = phase(queue)
    return result, RedisCpu.read(client).since(before)


def one_pass(client: redis.Redis, add: Phase, batch: int) -> dict[str, RedisCpu]:
    """Add, lease and complete ``JOBS`` plain jobs on a fresh queue; what
    Redis spent on each transition."""
    queue = Queue(f"bench-transitions-{batch}", connection=client)
    queue.obliterate(force=True)
    queue.scripts.load_all()  # no NOSCRIPT retry inside a measured phase
    spent: dict[str, RedisCpu] = {}
    _, spent["add"] = measure(client, queue, add)
    leased, spent["fetch"] = measure(client, queue, lambda q: lease_all(q, batch))
    assert len(leased) == JOBS
    _, spent["finish"] = measure(client, queue, lambda q: finish_all(q, leased, batch))
    counts = queue.counts()
    assert counts.pop("completed") == JOBS
    assert not any(counts.values()), counts
    queue.obliterate(force=True)
    return spent


def per_job(cpu: RedisCpu) -> float:
    """Microseconds of script time per job."""
    return cpu.script_usec / JOBS


def process_per_job(cpu: RedisCpu) -> float:
    """Microseconds of the server's CPU time per job."""
    return cpu.process_seconds * 1e6 / JOBS


def total(spent: dict[str, RedisCpu], of: Callable[[RedisCpu], float]) -> float:
    return sum(of(cpu) for cpu in spent.values())


#: The passes: (label, how jobs are added, jobs per fetch and finish call).
#: 2 per call is a worker that takes only as many jobs as it has free
#: children; 16 about what a prefetching worker sends in a no-op drain
#: (its "calls/job" in the drain's line); 50 with add_bulk, what batching
#: saves at most.
PASSES: tuple[tuple[str, Phase, int], ...] = (
    ("1 / 2 / 2", add_singly, 2),
    ("1 / 16 / 16", add_singly, 16),
    ("1,000 / 50 / 50", add_in_bulk, 50),
)
#: The pass goal 2 reads: single adds, and the batches the worker sends.
GOAL_PASS = "1 / 16 / 16"
#: The transitions, in order.
STEPS = ("add", "fetch", "finish")

#: Microseconds per job and transition that goal 2 divides: the scripts'
#: in ``GOAL_PASS`` ("scripts") and the raw commands' ("floor"), from
#: whichever of the two tests ran first.
_GOAL_US: dict[str, dict[str, float]] = {}


@pytest.mark.benchmark(group="redis: CPU per transition")
def test_redis_cpu_per_transition(
    benchmark: Any, redis_client: redis.Redis, record_summary: Callable[[str, str], None]
) -> None:
    spent: dict[str, dict[str, RedisCpu]] = {}

    def run() -> None:
        for label, add, batch in PASSES:
            spent[label] = one_pass(redis_client, add, batch)

    benchmark.pedantic(run, rounds=1, iterations=1)
    for step in STEPS:
        us = {label: per_job(by_step[step]) for label, by_step in spent.items()}
        benchmark.extra_info[f"{step}_us_per_job"] = {k: round(u, 2) for k, u in us.items()}
        record_summary(
            f"Redis CPU per job: {step}",
            ", ".join(f"{label} per call {u:.1f} us" for label, u in us.items())
            + f" (EVALSHA usec in INFO commandstats / {JOBS:,} plain jobs)",
        )
    record_totals(record_summary, spent)


def record_totals(
    record_summary: Callable[[str, str], None], spent: dict[str, dict[str, RedisCpu]]
) -> None:
    """Add + fetch + finish per job, in scripts and in all, and goal 4."""
    record_summary(
        "Redis CPU per job: add + fetch + finish",
        "; ".join(
            f"{label} per call {total(by_step, per_job):.1f} us in scripts, "
            f"{total(by_step, process_per_job):.1f} us in all (INFO cpu)"
            for label, by_step in spent.items()
        ),
    )
    _GOAL_US["scripts"] = {step: per_job(spent[GOAL_PASS][step]) for step in STEPS}
    record_goal_2(record_summary)


def record_goal_2(record_summary: Callable[[str, str], None]) -> None:
    """Goal 2, once both of its figures are in: the scripts' time per job
    in ``GOAL_PASS`` over the raw floor's, in all and per transition."""
    scripts, floor = _GOAL_US.get("scripts"), _GOAL_US.get("floor")
    if scripts is None or floor is None:
        return
    total_scripts, total_floor = sum(scripts.values()), sum(floor.values())
    record_summary(
        "goal 2 Redis CPU add + fetch + finish / raw floor",
        f"{total_scripts / total_floor:.2f}x (goal <= 2.5x): scripts {total_scripts:.1f} us, "
        f"raw floor {total_floor:.1f} us per job (pass {GOAL_PASS})",
    )
    record_summary(
        "goal 2   by transition, scripts / floor",
        ", ".join(
            f"{step} {scripts[step] / floor[step]:.2f}x "
            f"({scripts[step]:.1f} / {floor[step]:.1f} us)"
            for step in STEPS
        ),
    )


# -- the floor under goal 2 ------------------------------------------------------
#: The least Redis work a plain job's three transitions can do and still keep
#: what sandboxq keeps: a job hash, the waiting set, the lease set, the
#: completed set and one lifecycle event per transition. Raw commands, no
#: Lua, on keys of their own (``floor:*``).
FLOOR_ADD = (
    ("HSET", "floor:job:{i}", "name", "noop", "data", "null", "state", "waiting",
     "created_at", "1700000000000", "attempts_made", "0"),
    ("ZADD", "floor:wait", "{i}", "{i}"),
    ("XADD", "floor:events", "MAXLEN", "~", "10000", "*", "event", "added", "job_id", "{i}"),
)  # fmt: skip
FLOOR_FETCH = (
    ("ZPOPMIN", "floor:wait"),
    ("HSET", "floor:job:{i}", "state", "active", "token", TOKEN, "started_at", "1700000000001"),
    ("ZADD", "floor:active", "1700000600000", "{i}"),
    ("XADD", "floor:events", "MAXLEN", "~", "10000", "*", "event", "active", "job_id", "{i}"),
)
FLOOR_FINISH = (
    ("ZREM", "floor:active", "{i}"),
    ("HSET", "floor:job:{i}", "state", "completed", "result", "null", "finished_at", "1"),
    ("ZADD", "floor:completed", "1700000000002", "{i}"),
    ("XADD", "floor:events", "MAXLEN", "~", "10000", "*", "event", "completed", "job_id", "{i}"),
)
#: The least an add script can do (the same writes as FLOOR_ADD, plus the
#: id counter and the wake-up marker every add needs), run as one EVALSHA.
LEAST_ADD_SCRIPT = """
local id = redis.call('INCR', KEYS[1])
redis.call('HSET', 'floor:job:' .. id, 'name', ARGV[1], 'data', ARGV[2], 'state', 'waiting',
  'created_at', ARGV[3], 'attempts_made', 0)
redis.call('ZADD', KEYS[2], id, id)
redis.call('XADD', KEYS[3], 'MAXLEN', '~', 10000, '*', 'event', 'added', 'job_id', id)
redis.call('ZADD', KEYS[4], 0, '0')
return id
"""


def commands_usec(client: redis.Redis, run: Callable[..., None], *args: Any) -> float:
    """What Redis's commands took during ``run(client, *args)`` (INFO
    commandstats, all of them: with no script running, nothing is counted
    twice)."""
    client.config_resetstat()
    run(client, *args)
    stats: Any = client.info("commandstats")
    return float(sum(int(s["usec"]) for name, s in stats.items() if "config" not in name))


def raw_pass(client: redis.Redis, commands: tuple[tuple[str, ...], ...]) -> None:
    """Every job's ``commands``, pipelined 16 jobs to a round trip (what a
    prefetching worker batches), so nothing but the commands costs Redis."""
    pipe = client.pipeline(transaction=False)
    for i in range(1, JOBS + 1):
        for command in commands:
            pipe.execute_command(*(part.replace("{i}", str(i)) for part in command))
        if i % 16 == 0:
            pipe.execute()
    pipe.execute()


def scripts_singly(client: redis.Redis, script: str, keys: list[str], args: list[Any]) -> None:
    """``JOBS`` runs of ``script``, one round trip each, as ``Queue.add`` calls it."""
    sha = client.script_load(script)
    for _ in range(JOBS):
        client.evalsha(sha, len(keys), *keys, *args)


@pytest.mark.benchmark(group="redis: the floor under goal 2")
def test_redis_floor(
    benchmark: Any, redis_client: redis.Redis, record_summary: Callable[[str, str], None]
) -> None:
    """How far the scripts are from the least work a job needs: no assertion
    on the figures, only that the floor's keys are gone afterwards."""
    spent: dict[str, float] = {}
    floor_keys = ["floor:id", "floor:wait", "floor:events", "floor:marker"]

    def run() -> None:
        for step, commands in (
            ("add", FLOOR_ADD),
            ("fetch", FLOOR_FETCH),
            ("finish", FLOOR_FINISH),
        ):
            spent[step] = commands_usec(redis_client, raw_pass, commands)
        spent["empty"] = commands_usec(redis_client, scripts_singly, "return 1", [], [])
        spent["least add"] = commands_usec(
            redis_client, scripts_singly, LEAST_ADD_SCRIPT, floor_keys, ["noop", "null", "1"]
        )

    benchmark.pedantic(run, rounds=1, iterations=1)
    for key in redis_client.scan_iter(match="floor:*", count=1000):
        redis_client.delete(key)
    assert not list(redis_client.scan_iter(match="floor:*"))
    per_job = {step: usec / JOBS for step, usec in spent.items()}
    benchmark.extra_info.update({k: round(v, 2) for k, v in per_job.items()})
    raw_total = per_job["add"] + per_job["fetch"] + per_job["finish"]
    record_summary(
        "Redis floor per plain job, raw commands",
        f"add {per_job['add']:.1f} + fetch {per_job['fetch']:.1f} + finish "
        f"{per_job['finish']:.1f} = {raw_total:.1f} us (no Lua, pipelined 16 jobs per round "
        "trip: the writes a job needs, one event per transition)",
    )
    record_summary(
        "Redis floor of one add, called singly",
        f"least add script {per_job['least add']:.1f} us, empty script "
        f"{per_job['empty']:.1f} us (EVALSHA usec per call, one round trip each)",
    )
    _GOAL_US["floor"] = {step: per_job[step] for step in STEPS}
    record_goal_2(record_summary)
