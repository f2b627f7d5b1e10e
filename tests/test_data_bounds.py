"""Bounds on what jobs, schedules, flows and workers leave in Redis.

Schedules fire whatever size of data their queue accepted, and a broken
stored spec is reported instead of raising. Deleting a flow child that its
parent still waits for fails the parent (or lets it run, with
ignore_failed_children). Every (queue, kind of key, id) has its own key.
Log lines, progress and errors are clipped to byte caps, and NaN is refused.
Worker heartbeats delete registry entries of dead workers.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest
import redis
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from sandboxq import Queue, caps, registry
from sandboxq.keys import PER_ID_KINDS, QueueKeys
from sandboxq.schedule import fire_due
from sandboxq.testing import run_until_empty
from tests.worker_harness import WorkerProcess, wait_for_job, wait_until

#: The marker clip_text puts where it cut (the number is the original size).
MARKER = re.compile(r" …\[truncated: (\d+) bytes in all\]")

#: How long a broken schedule waits before it is looked at again.
BROKEN_RETRY_MS = 60_000


def memory_usage(client: redis.Redis, key: str) -> int:
    """Bytes Redis uses for ``key`` (every element counted), 0 if missing."""
    used: Any = client.memory_usage(key, samples=0)
    return int(used or 0)


def wait_while_running(worker: WorkerProcess, condition: Callable[[], Any], what: str) -> None:
    """Wait for ``condition``, failing at once (with the worker's log) if the
    worker exits meanwhile."""
    wait_until(lambda: condition() or not worker.running(), timeout=20, what=what)
    assert worker.running(), f"the worker exited ({worker.process.poll()}):\n{worker.log}"  # type: ignore[union-attr]


# -- A. schedules ----------------------------------------------------------------
def test_a_schedule_bigger_than_1_mib_fires_on_a_queue_that_allows_it(
    queue: Queue, redis_url: str, start_worker: Callable[..., WorkerProcess]
) -> None:
    # Given a queue that accepts payloads up to 4 MiB, and an every-second
    # schedule of a job with 2 MB of data (the job returns nothing: a 2 MB
    # result would be over the worker's own result limit)
    roomy = Queue(queue.name, url=redis_url, max_payload_bytes=4 * 1024 * 1024)
    data = "x" * (2 * 1000 * 1000)
    roomy.schedule("big", every=1, name="noop", data=data)

    # When a worker serves the queue until an occurrence has run
    worker = start_worker(procs=1)
    wait_while_running(
        worker, lambda: queue.job_ids("completed"), "an occurrence of the big schedule to complete"
    )

    # Then the occurrence ran with all its data, and the worker is still up
    [job_id] = queue.job_ids("completed")[:1]
    job = queue.get_job(job_id)
    assert job is not None and job.name == "noop" and job.data == data
    assert job_id.startswith("big@")
    assert worker.running()
    assert not worker.matching_lines("cannot start"), worker.log
    roomy.unschedule("big")
    roomy.client.close()


def test_fire_due_reports_a_broken_spec_and_looks_again_a_minute_later(
    queue: Queue, client: redis.Redis
) -> None:
    # Given two due schedules, one of whose stored spec is not JSON any more
    good_next = int(queue.schedule("good", every=1)["next_run"] * 1000)
    bad_next = int(queue.schedule("bad", every=1)["next_run"] * 1000)
    client.hset(queue.keys.schedules, "bad", b"not json")
    now = max(good_next, bad_next)

    # When the due schedules are fired
    created, broken = fire_due(queue.scripts, queue.keys, now)

    # Then the good one fired, the broken one is reported (not raised) ...
    assert created == 1
    assert queue.job_ids("waiting") == [f"good@{good_next}"]
    assert [key for key, _why in broken] == ["bad"]
    assert broken[0][1]  # says why
    # ... and comes due again a minute later, not at every check
    assert client.zscore(queue.keys.schedule_times, "bad") == now + BROKEN_RETRY_MS
    assert fire_due(queue.scripts, queue.keys, now + 1) == (0, [])


# -- B. flows: deleting a child the parent waits for ------------------------------
def delete_waiting(queue: Queue, how: str, job_id: str) -> None:
    """Delete a waiting job the way an operator can."""
    if how == "remove":
        assert queue.remove(job_id)
    elif how == "clean":
        assert queue.clean("waiting", keep=0) >= 1
    else:
        assert queue.drain() >= 1
    assert queue.get_job(job_id) is None


@pytest.mark.parametrize("how", ["remove", "clean", "drain"])
def test_deleting_a_waiting_flow_child_fails_its_parent(queue: Queue, how: str) -> None:
    # Given a flow whose only child waits, and an unrelated waiting job
    flow = queue.add_flow(parent={"name": "p"}, children=[{"name": "c"}])
    child_id = flow.children[0].job.id
    other = queue.add("unrelated")

    # When the child is deleted (removed, cleaned or drained)
    delete_waiting(queue, how, child_id)

    # Then the parent failed, naming the child that was removed
    parent = queue.get_job(flow.job.id)
    assert parent is not None and parent.state == "failed"
    assert parent.error == f"child {queue.name}:{child_id} was removed"
    assert queue.counts()["waiting-children"] == 0
    # And only drain and clean took the unrelated waiting job too
    assert (queue.get_job(other.id) is None) == (how != "remove")


def test_with_ignore_failed_children_the_parent_runs_without_a_removed_child(
    queue: Queue,
) -> None:
    # Given a flow of two children that skips failed children
    flow = queue.add_flow(
        parent={"name": "sum"},
        children=[{"name": "num", "data": 1}, {"name": "num", "data": 2}],
        ignore_failed_children=True,
    )
    removed_id, kept_id = (c.job.id for c in flow.children)

    # When the first child is removed and the rest runs
    assert queue.remove(removed_id)
    run_until_empty(queue, {"num": lambda job: job.data, "sum": lambda job: job.children_results()})

    # Then the parent completed with the remaining child's result only
    parent = queue.get_job(flow.job.id)
    assert parent is not None and parent.state == "completed"
    assert parent.children_results() == {f"{queue.name}:{kept_id}": 2}
    assert parent.result == {f"{queue.name}:{kept_id}": 2}
    assert f"{queue.name}:{removed_id}" in parent.children_failures()


def test_a_failed_child_that_is_removed_fails_a_parent_that_waited_for_a_retry(
    queue: Queue,
) -> None:
    # Given a flow that waits for a failed child to be retried
    flow = queue.add_flow(
        parent={"name": "p"}, children=[{"name": "boom"}], fail_parent_on_failure=False
    )
    child_id = flow.children[0].job.id

    def boom(_job: Any) -> None:
        raise RuntimeError("no")

    run_until_empty(queue, {"boom": boom, "p": lambda job: "ran"})
    assert queue.get_job(child_id).state == "failed"  # type: ignore[union-attr]
    assert queue.get_job(flow.job.id).state == "waiting-children"  # type: ignore[union-attr]

    # When the failed child is removed: it can never be retried now
    assert queue.remove(child_id)

    # Then the parent fails instead of waiting forever
    parent = queue.get_job(flow.job.id)
    assert parent is not None and parent.state == "failed"
    assert parent.error == f"child {queue.name}:{child_id} was removed"


def test_deleting_a_child_the_parent_already_counted_changes_nothing(queue: Queue) -> None:
    # Given a flow whose first child completed and whose second is delayed
    flow = queue.add_flow(
        parent={"name": "p"},
        children=[{"name": "num", "data": 1}, {"name": "num", "data": 2, "delay": 3600}],
    )
    done_id, later_id = (c.job.id for c in flow.children)
    handlers = {"num": lambda job: job.data, "p": lambda job: job.children_results()}
    run_until_empty(queue, handlers)
    assert queue.get_job(done_id).state == "completed"  # type: ignore[union-attr]

    # When the completed child is cleaned away (retention)
    assert queue.clean("completed", keep=0) == 1
    assert queue.get_job(done_id) is None

    # Then the parent still waits, and runs with both results once the other is done
    assert queue.get_job(flow.job.id).state == "waiting-children"  # type: ignore[union-attr]
    assert queue.promote(later_id)
    run_until_empty(queue, handlers)
    parent = queue.get_job(flow.job.id)
    assert parent is not None and parent.state == "completed"
    assert parent.result == {f"{queue.name}:{done_id}": 1, f"{queue.name}:{later_id}": 2}


@pytest.fixture
def group_queues(redis_url: str) -> Iterator[tuple[Queue, Queue]]:
    """Two queues of one group (one hash tag): ``G:parent`` and ``G:kids``."""
    group = f"grp{uuid.uuid4().hex[:8]}"
    parents, kids = Queue(f"{group}:parent", url=redis_url), Queue(f"{group}:kids", url=redis_url)
    yield parents, kids
    for q in (parents, kids):
        q.obliterate(force=True)
        q.client.close()


@pytest.mark.parametrize("how", ["remove", "obliterate"])
def test_deleting_a_child_in_another_queue_of_the_group_fails_the_parent(
    group_queues: tuple[Queue, Queue], how: str
) -> None:
    parents, kids = group_queues
    # Given a parent in one queue waiting for a child in another queue of its group
    flow = parents.add_flow(parent={"name": "p"}, children=[{"queue": kids.name, "name": "c"}])
    child_id = flow.children[0].job.id

    # When the child (or its whole queue) is deleted
    if how == "remove":
        assert kids.remove(child_id)
    else:
        kids.obliterate(force=True)
    assert kids.get_job(child_id) is None

    # Then the parent in the other queue failed, naming the child
    parent = parents.get_job(flow.job.id)
    assert parent is not None and parent.state == "failed"
    assert parent.error == f"child {kids.name}:{child_id} was removed"
    assert parents.counts()["waiting-children"] == 0


# -- C. one key per (queue, kind, id) ------------------------------------------
@pytest.mark.parametrize("suffix", [":b:job", "::b", ":", ""])
def test_queue_names_that_could_share_keys_are_refused_before_any_write(
    client: redis.Redis, redis_url: str, suffix: str
) -> None:
    # Given a name that is not NAME or GROUP:NAME with two non-empty parts
    group = f"k{uuid.uuid4().hex[:8]}"
    name = f"{group}{suffix}" if suffix else f":{group}"

    # When a queue of that name is made, Then it is refused, naming it
    with pytest.raises(ValueError, match=re.escape(repr(name))):
        Queue(name, url=redis_url)
    # And nothing was written
    assert client.keys(f"*{group}*") == []


def test_the_literal_bad_names_are_refused() -> None:
    for name in ("a:b:job", "a::b", "a:", ":a"):
        with pytest.raises(ValueError, match="GROUP:NAME"):
            Queue(name)


ADVERSARIAL_QUEUES = [
    "a",
    "a:b",
    "a:b:job",  # refused: it held Queue("a:b")'s job "wait" as its wait set
    "a/b",
    "b",
    "job",
    "wait",
    "a:job",
    "x:y/z",
    "é",
    "a b",
    "a%3Ab",
    "sq",
    "workers",
    "a:wait",
    "a:b/job",
    "a/b:job",
    "job:wait",
]
ADVERSARIAL_IDS = [
    "wait",
    "job",
    "1",
    "job:1",
    "a:b",
    ":",
    "x/y",
    "wait:1",
    "é",
    "audit",
    "events",
    "job:wait",
    "b:job",
    "",
]

OWN_FIELDS = [f.name for f in dataclasses.fields(QueueKeys) if f.name not in ("name", "prefix")]


def keys_of(queue_keys: QueueKeys, ids: list[str]) -> dict[str, tuple[str, str, str | None]]:
    """Every key of one queue: its own and each kind's for each id, mapped
    to the (queue, kind, id) it belongs to."""
    found: dict[str, tuple[str, str, str | None]] = {}
    for field in OWN_FIELDS:
        key = getattr(queue_keys, field)
        assert isinstance(key, str), field
        found[key] = (queue_keys.name, field, None)
    for kind in PER_ID_KINDS:
        for job_id in ids:
            found[queue_keys.of(kind, job_id)] = (queue_keys.name, kind, job_id)
    assert len(found) == len(OWN_FIELDS) + len(PER_ID_KINDS) * len(ids), "a key repeats"
    return found


def valid_queue_keys(names: list[str]) -> list[QueueKeys]:
    valid = []
    for name in names:
        try:
            valid.append(QueueKeys.for_queue(name))
        except ValueError:
            continue
    return valid


def test_no_two_queue_kind_id_triples_share_a_key() -> None:
    # Given queue names and ids chosen to look like each other's keys
    all_keys = valid_queue_keys(ADVERSARIAL_QUEUES)
    assert "a:b:job" not in {k.name for k in all_keys}
    assert len(all_keys) == len(ADVERSARIAL_QUEUES) - 1

    # When every key of every queue is built
    owner: dict[str, tuple[str, str, str | None]] = {}
    for queue_keys in all_keys:
        for key, triple in keys_of(queue_keys, ADVERSARIAL_IDS).items():
            # Then no key belongs to two (queue, kind, id) triples
            assert owner.setdefault(key, triple) == triple, (key, owner[key], triple)
            # And none is the global worker registry
            assert key != registry.WORKERS

    assert len(owner) == len(all_keys) * (
        len(OWN_FIELDS) + len(PER_ID_KINDS) * len(ADVERSARIAL_IDS)
    )


def test_keys_of_rejects_unknown_kinds() -> None:
    with pytest.raises(ValueError, match="unknown key kind"):
        QueueKeys.for_queue("a").of("nope", "1")


# Pieces that look like parts of keys, so generated names collide if anything can.
PIECES = [*PER_ID_KINDS, *OWN_FIELDS, "a", "b", "/", "sq", "é", " ", "%3A", "1"]


def safe_text(alphabet_without: str, min_size: int) -> st.SearchStrategy[str]:
    return st.text(
        alphabet=st.characters(blacklist_characters=alphabet_without, blacklist_categories=("Cs",)),
        min_size=min_size,
        max_size=8,
    )


part = st.lists(st.sampled_from(PIECES), min_size=1, max_size=3).map("".join) | safe_text("{}:", 1)
#: Queue names: NAME, GROUP:NAME, and some with more or empty parts (which
#: the key layout must refuse: the test keeps only the names it accepts).
candidate_names = (
    part
    | st.tuples(part, part).map(":".join)
    | st.lists(part | st.just(""), min_size=1, max_size=3).map(":".join)
)
job_ids = (
    st.sampled_from(OWN_FIELDS)
    | st.lists(st.sampled_from([*PIECES, ":"]), max_size=4).map("".join)
    | safe_text("{}", 0)
)


def accepted(name: str) -> QueueKeys | None:
    try:
        return QueueKeys.for_queue(name)
    except ValueError:
        return None


@given(st.data())
@settings(max_examples=300, deadline=None)
def test_keys_are_injective_for_generated_names(data: st.DataObject) -> None:
    # Given two queue names the key layout accepts (the second often the
    # first plus ":" and a piece, as "a:b" and "a:b:job" were) and two ids
    q1 = data.draw(candidate_names, label="q1")
    q2 = data.draw(candidate_names | st.sampled_from(PIECES).map(f"{q1}:{{}}".format), label="q2")
    ids = data.draw(st.lists(job_ids, min_size=1, max_size=2, unique=True), label="ids")
    keys1, keys2 = accepted(q1), accepted(q2)
    assume(keys1 is not None and keys2 is not None)
    assert keys1 is not None and keys2 is not None

    # Then each name is NAME or GROUP:NAME, with non-empty parts
    for name in (q1, q2):
        assert name.count(":") <= 1 and all(name.split(":")), name
    # And no key belongs to two (queue, kind, id) triples, nor is the registry's
    owner: dict[str, tuple[str, str, str | None]] = {}
    for queue_keys in {q1: keys1, q2: keys2}.values():
        for key, triple in keys_of(queue_keys, ids).items():
            assert owner.setdefault(key, triple) == triple, (key, owner[key], triple)
            assert key != registry.WORKERS


def test_a_job_id_can_no_longer_collide_with_another_queues_wait_set(redis_url: str) -> None:
    group = f"c{uuid.uuid4().hex[:8]}"
    first = Queue(f"{group}:b", url=redis_url)
    try:
        # Given a job with id "wait" in queue G:b (key sq:{G}/b:job:wait)
        first.add("x", job_id="wait")

        # When a queue G:b:job (whose wait set was that same key) is made
        # Then it is refused, instead of failing later with WRONGTYPE
        with pytest.raises(ValueError, match="GROUP:NAME"):
            Queue(f"{group}:b:job", url=redis_url).add("y")

        # And the first queue's job is intact
        job = first.get_job("wait")
        assert job is not None and (job.name, job.state) == ("x", "waiting")
    finally:
        first.obliterate(force=True)
        first.client.close()


# -- D. byte caps: unit tests of sandboxq.caps --------------------------------------
def test_clip_text_returns_small_text_unchanged() -> None:
    for text in ("", "hello", "é" * 100, "x" * caps.MAX_LOG_LINE_BYTES):
        assert caps.clip_text(text, caps.MAX_LOG_LINE_BYTES) is text


def test_clip_text_cuts_multibyte_text_at_a_character_boundary_with_a_marker() -> None:
    # Given 20,000 bytes of two-byte characters, and an odd limit
    text = "é" * 10_000
    limit = 1001

    # When clipped
    out = caps.clip_text(text, limit)

    # Then it fits, is whole characters, and says how big it was
    raw = out.encode("utf-8")
    assert len(raw) <= limit
    assert raw.decode("utf-8", "strict") == out
    assert out.endswith(" …[truncated: 20000 bytes in all]")
    head = out[: MARKER.search(out).start()]  # type: ignore[union-attr]
    assert head and set(head) == {"é"}
    assert len(raw) >= limit - 4  # cut at most one character short


def test_clip_text_keep_tail_keeps_the_start_and_the_end() -> None:
    # Given a traceback-like text whose last line names the error
    text = "Traceback (most recent call last):\n" + "  frame é\n" * 10_000 + "ValueError: bad"

    # When clipped keeping the tail
    out = caps.clip_text(text, caps.MAX_TRACEBACK_BYTES, keep_tail=True)

    # Then both ends are there, around the marker, within the limit
    assert len(out.encode()) <= caps.MAX_TRACEBACK_BYTES
    assert out.startswith("Traceback (most recent call last):\n")
    assert out.endswith("ValueError: bad")
    found = MARKER.search(out)
    assert found is not None and int(found.group(1)) == len(text.encode())
    assert found.start() > 0 and found.end() < len(out)


def test_clip_text_replaces_lone_surrogates() -> None:
    out = caps.clip_text("a\ud800b", 100)
    assert out.encode("utf-8") == b"a?b"


@given(
    st.text(alphabet=st.characters(), max_size=3000),
    st.integers(min_value=64, max_value=4000),
    st.booleans(),
)
def test_clip_text_always_fits_in_valid_utf8(text: str, limit: int, keep_tail: bool) -> None:
    out = caps.clip_text(text, limit, keep_tail=keep_tail)
    raw = out.encode("utf-8")  # strict: no lone surrogates left
    assert len(raw) <= limit
    if len(text.encode("utf-8", "replace")) <= limit:
        assert MARKER.search(out) is None
    else:
        assert MARKER.search(out) is not None


def test_clip_json_returns_small_json_unchanged_and_clips_big_json_to_a_string() -> None:
    small = orjson.dumps({"step": 3, "of": 10}).decode()
    assert caps.clip_json(small, caps.MAX_PROGRESS_BYTES) is small

    # Given a progress value of ~1 MB of two-byte characters
    big = orjson.dumps({"step": 1, "blob": "é" * 500_000}).decode()

    # When clipped to the progress cap
    out = caps.clip_json(big, caps.MAX_PROGRESS_BYTES)

    # Then it is a JSON string within the cap, holding the start of the text
    assert len(out.encode()) <= caps.MAX_PROGRESS_BYTES
    value = json.loads(out)
    assert isinstance(value, str)
    assert value.startswith('{"step":1,"blob":"éé')
    assert MARKER.search(value) is not None


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(alphabet=st.characters(blacklist_categories=("Cs",))),
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(), inner, max_size=6),
    max_leaves=30,
)


@given(json_values, st.integers(min_value=64, max_value=2000))
def test_clip_json_output_is_valid_json_within_the_limit(value: Any, limit: int) -> None:
    raw = orjson.dumps(value).decode()
    out = caps.clip_json(raw, limit)
    assert len(out.encode()) <= limit
    decoded = json.loads(out)
    if len(raw.encode()) <= limit:
        assert out == raw
    else:
        assert isinstance(decoded, str) and MARKER.search(decoded) is not None


def test_clip_json_fits_json_that_doubles_when_escaped() -> None:
    # Given JSON made of quotes and backslashes (each one escapes to two)
    raw = orjson.dumps(['"\\' * 5000]).decode()
    out = caps.clip_json(raw, 1000)
    assert len(out.encode()) <= 1000
    assert isinstance(json.loads(out), str)


# -- D. byte caps on a real worker ---------------------------------------------------
def test_a_noisy_job_leaves_only_capped_text_in_redis(
    queue: Queue, client: redis.Redis, start_worker: Callable[..., WorkerProcess]
) -> None:
    # Given a worker, and the queue's event stream as it is before the job
    start_worker(procs=1)
    events_before = memory_usage(client, queue.keys.events)

    # When a job logs 20 lines and 20 progress values of ~1 MB, then fails
    # with a 5 MB message
    job_id = queue.add("noisy").id
    job = wait_for_job(queue, job_id, timeout=20)

    # Then it failed, with an error cut to 8 KiB and marked as cut
    assert job.state == "failed"
    assert job.error is not None
    assert len(job.error.encode()) <= caps.MAX_ERROR_BYTES
    assert job.error.startswith("RuntimeError: EEEE")
    found = MARKER.search(job.error)
    assert found is not None and found.end() == len(job.error)
    assert int(found.group(1)) >= 5 * 1024 * 1024
    assert job.traceback is not None
    assert len(job.traceback.encode()) <= caps.MAX_TRACEBACK_BYTES
    # And each log line is at most 8 KiB
    lines = queue.job_logs(job_id)
    assert len(lines) == 20
    assert all(len(line.encode()) <= caps.MAX_LOG_LINE_BYTES for line in lines)
    assert lines[0].startswith("line 0 éé") and MARKER.search(lines[0]) is not None
    # And the progress is at most 4 KiB of valid JSON (a string of the clipped text)
    raw_progress: Any = client.hget(queue.keys.job(job_id), "progress")
    assert raw_progress is not None and len(raw_progress) <= caps.MAX_PROGRESS_BYTES
    progress = orjson.loads(raw_progress)
    assert isinstance(progress, str) and progress.startswith('{"step":19,')
    # And the job left little in Redis: not the ~44 MB it sent
    left = memory_usage(client, queue.keys.job(job_id)) + memory_usage(
        client, queue.keys.logs(job_id)
    )
    assert left < 400_000, left
    grown = memory_usage(client, queue.keys.events) - events_before
    assert grown < 200_000, grown


def test_a_result_over_the_limit_fails_the_job_instead_of_being_cut(
    queue: Queue, start_worker: Callable[..., WorkerProcess]
) -> None:
    # Given a worker with the default result limit (1 MiB)
    start_worker(procs=1)
    limit = caps.DEFAULT_MAX_RESULT_BYTES

    # When one job returns exactly the limit, and another one byte more
    fits = wait_for_job(queue, queue.add("big_result", limit).id, timeout=20)
    over = wait_for_job(queue, queue.add("big_result", limit + 1).id, timeout=20)

    # Then the first completed with its whole result, the second failed saying why
    assert fits.state == "completed" and fits.result == "x" * (limit - 2)
    assert over.state == "failed" and over.result is None
    assert over.error == (
        f"ValueError: result is {limit + 1} bytes as JSON, over the limit of "
        f"{limit} bytes (--max-result-bytes)"
    )


def test_nan_data_is_refused_and_nothing_is_written(queue: Queue, client: redis.Redis) -> None:
    # When a job with NaN in its data is added
    # Then it is refused, saying why (orjson would have stored null)
    with pytest.raises(ValueError, match="NaN"):
        queue.add("x", {"v": float("nan")})
    with pytest.raises(ValueError, match="NaN or Infinity"):
        queue.add("x", [1, {"w": float("-inf")}])
    # And nothing was written
    assert sum(queue.counts().values()) == 0
    assert client.keys(f"{queue.keys.prefix}*") == []


def test_a_nan_result_fails_the_job(
    queue: Queue, start_worker: Callable[..., WorkerProcess]
) -> None:
    # Given a worker
    start_worker(procs=1)
    # When a handler returns NaN in its result
    job = wait_for_job(queue, queue.add("nan_result").id, timeout=20)
    # Then the job failed, saying JSON has no NaN, instead of storing null
    assert job.state == "failed", job.fields
    assert job.error is not None and "JSON has no NaN or Infinity" in job.error
    assert job.result is None


# -- E. the worker registry trims itself -----------------------------------------------
def test_worker_heartbeats_delete_stale_registry_entries(
    client: redis.Redis, start_worker: Callable[..., WorkerProcess]
) -> None:
    # Given three entries of dead workers: two last seen an hour ago, one unreadable
    # (the registry is shared by the session's tests: only these are looked at)
    tag = uuid.uuid4().hex
    hour_ago = time.time() - 3600
    stale = {
        f"dead-{tag}-1": orjson.dumps({"host": "gone", "pid": 1, "last_seen": hour_ago}),
        f"dead-{tag}-2": orjson.dumps({"host": "gone", "pid": 2, "last_seen": hour_ago - 60}),
        f"dead-{tag}-3": b"not json",
    }
    client.hset(registry.WORKERS, mapping=stale)
    try:
        # When a worker runs (it beats at start, then every 0.5 s with a 1 s lease)
        worker = start_worker("--lease", "1", procs=1)

        # Then its heartbeats delete them, though nobody reads the registry
        def stale_left() -> list[str]:
            return [t for t in stale if client.hexists(registry.WORKERS, t)]

        wait_until(lambda: not stale_left(), timeout=20, what="the stale entries to be deleted")
        assert worker.running()

        # And the worker's own entry is there
        def own_entry() -> bool:
            for raw in client.hvals(registry.WORKERS):
                try:
                    entry = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    continue
                if isinstance(entry, dict) and entry.get("pid") == worker.pid:
                    return True
            return False

        assert own_entry()
    finally:
        client.hdel(registry.WORKERS, *stale)
