"""Fuzzing the fault barriers: random junk written into job records and
queue settings while a real worker runs. The worker never exits, every
sound job completes, every damaged job ends (completed, or failed with a
reason), and a queue whose settings are junk pauses alone until they are
mended.

The cases come from a seeded generator; the seed is in the test's output
(``-s``) and in every assertion message, so a failure can be replayed with
``SANDBOXQ_FUZZ_SEED``."""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Iterator

import pytest
import redis

from sandboxq import Queue
from sandboxq._fast_py import FIELD_KINDS
from sandboxq.testing import WorkerTimeout
from tests.worker_harness import WorkerProcess, wait_for_jobs, wait_until

StartWorker = Callable[..., WorkerProcess]
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

#: Damaged job records per run, sound jobs beside them, and queues whose
#: settings are junk.
DAMAGED_JOBS = 240
SOUND_JOBS = 240
JUNK_SETTINGS = 8

#: Values that are not what a field holds: empty, huge, not numbers, not
#: UTF-8, JSON of the wrong type or not JSON.
JUNK: list[bytes] = [
    b"",
    b"nan",
    b"NaN",
    b"inf",
    b"-inf",
    b"-1",
    b"1.5",
    b"1e400",
    b"9" * 40,
    b"-" + b"9" * 40,
    b"0x10",
    b" 7 ",
    b"\xff\xfe\xfd",
    b"caf\xc3",
    b"\x00",
    b"x" * 100_000,
    b"null",
    b"[]",
    b"{}",
    b'{"type": "exponential", "delay": 1e-300}',
    b'{"type": "fixed"',
    b'"a string"',
    b"[1, 2",
    b"true",
    b"12:abc",
]
#: Fields a record may hold: every known one, a durable step's, and others'.
FIELDS = [f.decode() for f in FIELD_KINDS] + ["step_count", "step:k", "note", "\udcff"]
#: Meta fields the worker and fetch.lua read, with a sound value to mend them.
SETTINGS = ["rl_max", "rl_window_ms", "concurrency", "rl_until", "aging_ms", "clock"]


def fuzz_seed() -> int:
    return int(os.environ.get("SANDBOXQ_FUZZ_SEED") or time.time_ns() % 2**32)


def damage(client: redis.Redis, queue: Queue, job_id: str, rng: random.Random) -> str:
    """Junk in one to three fields of a job's record (or a field removed);
    returns what was done, for the failure message."""
    done = []
    for _ in range(rng.randint(1, 3)):
        field = rng.choice(FIELDS).encode("utf-8", "surrogateescape")
        if rng.random() < 0.15:
            client.hdel(queue.keys.job(job_id), field)
            done.append(f"-{field!r}")
        else:
            value = rng.choice(JUNK)
            client.hset(queue.keys.job(job_id), field, value)
            done.append(f"{field!r}={value[:20]!r}")
    return " ".join(done)


@pytest.fixture
def queues(redis_url: str) -> Iterator[list[Queue]]:
    made = [Queue(f"fuzz-{os.urandom(5).hex()}-{i}", url=redis_url) for i in range(JUNK_SETTINGS)]
    yield made
    for queue in made:
        queue.obliterate(force=True)
        queue.client.close()


def test_junk_in_records_and_settings_fails_only_what_it_touched(
    queue: Queue, queues: list[Queue], client: redis.Redis, redis_url: str
) -> None:
    rng = random.Random(seed := fuzz_seed())
    print(f"fuzz seed {seed}")
    # Given a worker serving a queue of ours and queues whose settings will be junk
    names = [queue.name, *(q.name for q in queues)]
    args = [item for name in names for item in ("-q", name)]
    # (A short lease: a running job whose token was overwritten is lost to
    # its worker, and comes back through the stalled recovery. A short
    # grace: a junk name is a name no worker knows, which waits that long
    # for a worker that does.)
    worker = WorkerProcess(
        queue.name,
        redis_url,
        [*args, "--lease", "5", "--unknown-name-grace", "1"],
        modules=("tests.barrier_jobs",),
        env={"SANDBOXQ_TEST_QUEUES": ",".join(names)},
        procs=2,
    )
    worker.start()
    began = time.monotonic()
    try:
        # When jobs arrive, due a little later, and junk is written into
        # some of their records before they are fetched, and into others
        # while they run
        sound = [queue.add("ok", i, delay=rng.uniform(0.2, 1.0)).id for i in range(SOUND_JOBS)]
        damaged: dict[str, str] = {}
        for i in range(DAMAGED_JOBS):
            if i % 4 == 0:  # running when it is damaged
                job_id = queue.add("sleep", 0.3).id
                wait_until(
                    lambda job_id=job_id: queue.client.zscore(queue.keys.active, job_id),
                    30,
                    f"job {job_id} running",
                )
            else:
                job_id = queue.add("ok", i, delay=rng.uniform(0.2, 1.0)).id
            damaged[job_id] = damage(client, queue, job_id, rng)
        # ... and the settings of the other queues are junk, with jobs waiting
        junk_settings, stuck = {}, {}
        for other in queues:
            field, value = rng.choice(SETTINGS), rng.choice(JUNK)
            client.hset(other.keys.meta, field, value)
            junk_settings[other.name] = (field, value)
            stuck[other.name] = other.add("ok", "stuck").id

        print(f"fuzz: damage written at {time.monotonic() - began:.1f}s")
        # Then every sound job completes, with no stall
        context = f"(seed {seed})"
        for job in wait_for_jobs(queue, sound, ("completed",), timeout=120).values():
            assert job.stalls == 0, context
        print(f"fuzz: sound jobs done at {time.monotonic() - began:.1f}s")
        # And every damaged job ends: completed, or failed saying why
        ended = wait_for_jobs(queue, damaged, ("completed", "failed"), timeout=120)
        for job_id, job in ended.items():
            if job.state == "failed":
                assert job.error or job.corrupt, f"{job_id} {damaged[job_id]} {context}"
        assert worker.running(), f"the worker exited {context}:\n{worker.log[-3000:]}"

        # And once the settings are mended, their queues' jobs run too
        # (those a junk setting did not stop at all ran already)
        for other in queues:
            client.delete(other.keys.meta)
        for other in queues:
            wait_for_jobs(other, [stuck[other.name]], ("completed",), timeout=120)
        assert worker.stop() == 0, context
        failed = sum(job.state == "failed" for job in ended.values())
        print(
            f"fuzz: {len(damaged)} damaged records ({failed} failed, "
            f"{len(damaged) - failed} completed), {len(sound)} sound jobs, "
            f"{len(junk_settings)} junk settings, seed {seed}"
        )
    except WorkerTimeout as exc:
        raise WorkerTimeout(
            f"{exc} (seed {seed}); the worker said:\n{worker.log[-4000:]}"
        ) from None
    finally:
        worker.cleanup()
