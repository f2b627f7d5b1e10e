"""Flow control in the Lua layer, with explicit timestamps: rate limits,
concurrency, groups (fair turns, per-group limits), RateLimited, aging."""

from __future__ import annotations

from typing import Any

import pytest

from sandboxq import Queue
from sandboxq.fast import decode_fetched
from sandboxq.options import JobOptions

NOW = 1_000_000_000
LEASE = 60_000
TOKEN = "tok"


def add(queue: Queue, name: str, now: int = NOW, **options: Any) -> str:
    row = queue._encode(name, None, JobOptions.build(**options))
    [(job_id, _created)] = queue.scripts.add(queue.keys, now, [row])
    return job_id


def fetch(queue: Queue, count: int, now: int = NOW) -> tuple[list[str], int]:
    rows, next_check, *_ = queue.scripts.fetch(queue.keys, now, count, TOKEN, LEASE)
    return [job_id for job_id, _ in decode_fetched(rows)], int(next_check)


def group_of(queue: Queue, job_id: str) -> str:
    job = queue.get_job(job_id)
    assert job is not None
    return str(job.fields.get("group", "-"))


def finish(
    queue: Queue, job_id: str, outcome: str = "completed", delay_ms: int = 0, now: int = NOW
) -> str:
    entry = [job_id, outcome, "1", "", delay_ms, ""]
    [status] = queue.scripts.finish(queue.keys, now, TOKEN, [entry])
    return str(status.decode())


# -- global rate limit ---------------------------------------------------------
def test_a_rate_limit_caps_starts_per_sliding_window(queue: Queue) -> None:
    # Given 3 starts per second and 10 waiting jobs
    queue.set_rate_limit(3, 1.0)
    for _ in range(10):
        add(queue, "j")
    # When a worker asks for 10
    taken, next_check = fetch(queue, 10)
    # Then 3 start, and it learns when the window opens again
    assert len(taken) == 3
    assert next_check == NOW + 1000
    assert fetch(queue, 10, NOW + 999)[0] == []
    assert len(fetch(queue, 10, NOW + 1000)[0]) == 3


def test_clearing_a_rate_limit_lifts_it(queue: Queue) -> None:
    queue.set_rate_limit(1, 60)
    for _ in range(3):
        add(queue, "j")
    assert len(fetch(queue, 3)[0]) == 1
    queue.set_rate_limit(None)
    assert len(fetch(queue, 3)[0]) == 2
    assert queue.limits()["rate_limit"] is None


def test_global_concurrency_counts_active_jobs_of_every_worker(queue: Queue) -> None:
    queue.set_concurrency(2)
    ids = [add(queue, "j") for _ in range(5)]
    assert fetch(queue, 5)[0] == ids[:2]
    assert fetch(queue, 5)[0] == []
    # When one finishes, a blocked worker is woken and one more may start
    queue.client.delete(queue.keys.marker)
    assert finish(queue, ids[0]) == "completed"
    assert queue.client.zcard(queue.keys.marker) == 1
    assert fetch(queue, 5)[0] == [ids[2]]


# -- groups --------------------------------------------------------------------
def test_groups_take_turns_so_a_big_group_cannot_starve_a_small_one(queue: Queue) -> None:
    # Given a group of 50 jobs added before a group of 3 and 2 ungrouped jobs
    for _ in range(50):
        add(queue, "j", group="big")
    small = [add(queue, "j", group="small") for _ in range(3)]
    plain = [add(queue, "j") for _ in range(2)]
    assert queue.counts()["waiting"] == 55
    # When jobs are fetched one at a time
    order = [fetch(queue, 1)[0][0] for _ in range(10)]
    # Then the small group and the ungrouped jobs are all served early
    assert set(small) <= set(order)
    assert set(plain) <= set(order)
    assert queue.counts()["waiting"] == 45


def test_group_rate_limit_applies_to_each_group_separately(queue: Queue) -> None:
    queue.set_group_rate_limit(2, 1.0)
    for group in ("a", "b"):
        for _ in range(5):
            add(queue, "j", group=group)
    plain = [add(queue, "j") for _ in range(4)]
    taken, next_check = fetch(queue, 20)
    groups = [group_of(queue, j) for j in taken]
    assert groups.count("a") == 2 and groups.count("b") == 2
    assert set(plain) <= set(taken)  # ungrouped jobs are not held back
    assert next_check == NOW + 1000
    assert fetch(queue, 20, NOW + 500)[0] == []
    later = [group_of(queue, j) for j in fetch(queue, 20, NOW + 1000)[0]]
    assert sorted(later) == ["a", "a", "b", "b"]


def test_group_concurrency_caps_active_jobs_per_group(queue: Queue) -> None:
    queue.set_group_concurrency(1)
    a = [add(queue, "j", group="a") for _ in range(3)]
    b = [add(queue, "j", group="b") for _ in range(3)]
    taken, _ = fetch(queue, 10)
    assert sorted(taken) == sorted([a[0], b[0]])
    assert finish(queue, a[0]) == "completed"
    assert fetch(queue, 10)[0] == [a[1]]


# -- RateLimited ---------------------------------------------------------------
def test_rate_limited_pauses_only_the_jobs_group_and_spends_no_attempt(queue: Queue) -> None:
    # Given a running job of group "api", more of its group, another group, ungrouped work
    first = add(queue, "j", group="api")
    assert fetch(queue, 1)[0] == [first]
    rest = add(queue, "j", group="api")
    other = add(queue, "j", group="other")
    plain = add(queue, "j")
    # When its handler reports a downstream limit for 5 s
    status = finish(queue, first, "ratelimited", delay_ms=5000)
    # Then no attempt is spent and the job waits again, at the front of its group
    job = queue.get_job(first)
    assert status == "rate-limited"
    assert job is not None and (job.state, job.attempts_made) == ("waiting", 0)
    # And only its group pauses, until then
    others, next_check = fetch(queue, 10, NOW + 10)
    assert sorted(others) == sorted([other, plain])
    assert next_check == NOW + 5000
    assert fetch(queue, 10, NOW + 4999)[0] == []
    assert fetch(queue, 10, NOW + 5000)[0] == [first, rest]


def test_rate_limited_on_an_ungrouped_job_pauses_the_queue(queue: Queue) -> None:
    job = add(queue, "j")
    assert fetch(queue, 1)[0] == [job]
    grouped = add(queue, "j", group="g")
    assert finish(queue, job, "ratelimited", delay_ms=2000) == "rate-limited"
    assert queue.limits()["rate_limited_until"] == (NOW + 2000) / 1000
    assert fetch(queue, 5, NOW + 1) == ([], NOW + 2000)
    assert sorted(fetch(queue, 5, NOW + 2000)[0]) == sorted([job, grouped])


# -- priority aging ------------------------------------------------------------
def test_without_aging_a_low_priority_job_starves_under_high_priority_load(queue: Queue) -> None:
    low = add(queue, "j", priority=10)
    for step in range(100):
        add(queue, "j", now=NOW + step * 10, priority=1)
        assert fetch(queue, 1, NOW + step * 10)[0] != [low]


@pytest.mark.parametrize("aging_ms", [50, 100])
def test_with_aging_a_low_priority_job_starts_within_the_bound(queue: Queue, aging_ms: int) -> None:
    # Given aging of one level per aging_ms, and a priority-10 job
    queue.set_priority_aging(aging_ms / 1000)
    low = add(queue, "j", priority=10)
    # When priority-1 jobs keep arriving and one job starts every 10 ms
    started_at = None
    for step in range(1000):
        now = NOW + step * 10
        add(queue, "j", now=now, priority=1)
        if fetch(queue, 1, now)[0] == [low]:
            started_at = now
            break
    # Then it starts once it waited 9 levels' worth (10 - 1), not later
    assert started_at is not None
    assert started_at - NOW <= 9 * aging_ms + 10


def test_turning_aging_on_rescores_jobs_already_waiting(queue: Queue) -> None:
    low = add(queue, "j", now=NOW, priority=5)
    high = add(queue, "j", now=NOW + 10_000, priority=1)
    assert fetch(queue, 1, NOW + 10_000)[0] == [high]
    add(queue, "j", now=NOW + 10_000, priority=1)
    queue.set_priority_aging(1.0)  # the low job waited 10 s: 10 levels
    assert fetch(queue, 1, NOW + 10_000)[0] == [low]


# -- admin with groups -----------------------------------------------------------
def test_remove_drain_and_obliterate_know_about_groups(queue: Queue) -> None:
    ids = [add(queue, "j", group="g") for _ in range(3)]
    assert queue.remove(ids[0])
    assert queue.counts()["waiting"] == 2
    assert queue.drain() == 2
    assert queue.counts()["waiting"] == 0
    add(queue, "j", group="h")
    queue.set_rate_limit(5, 1)
    queue.obliterate()
    assert queue.client.keys(f"{queue.keys.prefix}*") == []


EMPTY_A_GROUP = {
    "remove": lambda q, ids: [q.remove(i) for i in ids],
    "drain": lambda q, ids: q.drain(),
    "clean": lambda q, ids: q.clean("waiting", keep=0),
}


@pytest.mark.parametrize("how", list(EMPTY_A_GROUP))
def test_a_group_emptied_by_an_admin_takes_no_turn_and_no_slot(queue: Queue, how: str) -> None:
    # Given a group with a cap of one active job, whose waiting jobs an
    # admin removed while it was in the rotation
    queue.set_group_concurrency(1)
    ids = [add(queue, "j", group="g") for _ in range(2)]
    EMPTY_A_GROUP[how](queue, ids)

    # When a worker fetches next to an ungrouped job
    plain = add(queue, "j")
    taken, _ = fetch(queue, 5)

    # Then it gets that job; the empty group counted nothing and holds no slot
    assert taken == [plain]
    assert queue.counts()["waiting"] == 0
    assert queue.client.hgetall(queue.keys.group_active) == {}
    # and the group's next job starts as soon as it is added
    later = add(queue, "j", group="g")
    assert fetch(queue, 5)[0] == [later]


def test_clean_waiting_keeps_the_count_of_each_group_and_of_the_ungrouped(queue: Queue) -> None:
    # Given two waiting jobs without a group and two in each of two groups
    plain = [add(queue, "j") for _ in range(2)]
    g = [add(queue, "j", group="g") for _ in range(2)]
    h = [add(queue, "j", group="h") for _ in range(2)]

    # When waiting jobs beyond one are cleaned
    removed = queue.clean("waiting", keep=1)

    # Then the newest of each set is kept, and the counts agree with the lists
    assert removed == 3
    assert queue.job_ids("waiting") == [plain[1], g[1], h[1]]
    assert queue.counts()["waiting"] == 3
    assert sorted(fetch(queue, 5)[0]) == sorted([plain[1], g[1], h[1]])


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda q: q.set_rate_limit(0, 1), "max_jobs must be an int from 1"),
        (lambda q: q.set_rate_limit(5, 0), "per_seconds > 0"),
        (lambda q: q.set_rate_limit(5), "per_seconds > 0"),
        (lambda q: q.set_concurrency(0), "concurrency must be an int from 1"),
        (lambda q: q.set_group_concurrency(-1), "group concurrency must be an int from 1"),
        (lambda q: q.set_priority_aging(0), "seconds_per_level must be > 0"),
        (lambda q: q.add("j", group=""), "group must not be empty"),
        (lambda q: q.add("j", group="a{b}"), "must not contain"),
    ],
)
def test_bad_flow_control_settings_are_rejected(queue: Queue, call: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call(queue)
    assert queue.limits()["rate_limit"] is None
    assert queue.counts()["waiting"] == 0


def test_a_lowered_rate_limit_opens_when_enough_starts_expired(queue: Queue) -> None:
    # Given 4 starts at 100 ms intervals under a limit of 10 per second
    queue.set_rate_limit(10, 1.0)
    for step in range(4):
        add(queue, "j")
        assert len(fetch(queue, 1, NOW + step * 100)[0]) == 1
    add(queue, "j")
    # When the limit is lowered to 2 per second
    queue.set_rate_limit(2, 1.0)
    # Then room opens once the third-newest start expired, not the oldest
    taken, next_check = fetch(queue, 1, NOW + 300)
    assert taken == []
    assert next_check == NOW + 200 + 1000


def test_start_times_never_go_backwards_so_a_late_caller_cannot_overfill_a_window(
    queue: Queue,
) -> None:
    # Given a limit of 2 per second, and 2 starts by a worker whose clock read NOW + 900
    queue.set_rate_limit(2, 1.0)
    for _ in range(4):
        add(queue, "j")
    assert len(fetch(queue, 2, NOW + 900)[0]) == 2
    # When another worker, which read its clock earlier (NOW), fetches later
    taken, _ = fetch(queue, 2, NOW)
    # Then it is judged at NOW + 900 too: the window is full
    assert taken == []
    # And a job started now is stamped no earlier than the last start
    assert len(fetch(queue, 1, NOW + 1900)[0]) == 1
