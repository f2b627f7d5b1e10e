"""Schedules: upsert by key, exactly-once occurrences, misfire policies.

Time is controlled by passing ``now_ms`` to ``fire_due`` (the scripts take
the time from ARGV), so no test sleeps through a schedule.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from sandboxq import Queue
from sandboxq.options import MAX_EPOCH_SECONDS, MAX_SCHEDULE_LIMIT, MAX_SECONDS
from sandboxq.schedule import MISFIRE_GRACE_MS, Schedule, fire_due, plan_occurrences

T0 = 1_800_000_000_000  # a fixed "now", in ms


def every_schedule(**overrides: object) -> Schedule:
    options = dict(
        key="tick",
        now_ms=T0,
        cron=None,
        every=1.0,
        tz="UTC",
        name=None,
        data=None,
        start_at=None,
        end_at=None,
        limit=None,
        misfire="once",
        options={},
    )
    options.update(overrides)
    return Schedule.build(**options)  # type: ignore[arg-type]


def job_ids(queue: Queue) -> list[str]:
    return sorted(queue.job_ids("waiting", limit=10_000))


def test_schedule_upserts_by_key_and_never_duplicates(queue: Queue) -> None:
    # Given a schedule
    queue.schedule("report", every=60, data={"v": 1})
    # When the same key is scheduled again with other settings
    queue.schedule("report", every=30, data={"v": 2})
    # Then there is one schedule, with the new settings
    [only] = queue.schedules()
    assert only["key"] == "report"
    assert only["every"] == 30.0
    assert only["data"] == {"v": 2}


def test_each_occurrence_is_enqueued_once_however_often_fired(queue: Queue) -> None:
    # Given an every-second schedule
    first = int(queue.schedule("tick", every=1, misfire="all")["next_run"] * 1000)
    # When three "workers" fire it at the same moments
    for step in range(3):
        for _worker in range(3):
            fire_due(queue.scripts, queue.keys, first + step * 1000)
    # Then each occurrence became exactly one job, named by its time
    assert job_ids(queue) == sorted(f"tick@{first + s * 1000}" for s in range(3))
    assert queue.schedules()[0]["count"] == 3


def test_nothing_fires_before_the_due_time(queue: Queue) -> None:
    first = int(queue.schedule("tick", every=10)["next_run"] * 1000)
    assert fire_due(queue.scripts, queue.keys, first - 1) == (0, [])
    assert queue.counts()["waiting"] == 0


@pytest.mark.parametrize(
    ("misfire", "expected_offsets"),
    [
        ("skip", []),  # every run was missed by more than the grace: none runs
        ("once", [40_000]),  # one catch-up: the latest missed occurrence
        ("all", [0, 10_000, 20_000, 30_000, 40_000]),  # every missed occurrence
    ],
)
def test_misfire_policy_when_no_worker_was_alive(
    queue: Queue, misfire: str, expected_offsets: list[int]
) -> None:
    # Given an every-10s schedule whose due times passed with no worker alive,
    # the latest of them longer ago than the grace
    first = int(queue.schedule("tick", every=10, misfire=misfire)["next_run"] * 1000)
    late = first + 40_000 + MISFIRE_GRACE_MS + 1000
    # When a worker comes back and fires what is due
    fire_due(queue.scripts, queue.keys, late)
    # Then the policy decided which occurrences ran
    assert job_ids(queue) == sorted(f"tick@{first + o}" for o in expected_offsets)
    # And the schedule moved on to the first occurrence after now
    assert queue.schedules()[0]["next_run"] * 1000 == first + 50_000


def test_skip_still_runs_an_occurrence_that_is_only_slightly_late(queue: Queue) -> None:
    first = int(queue.schedule("tick", every=10, misfire="skip")["next_run"] * 1000)
    fire_due(queue.scripts, queue.keys, first + MISFIRE_GRACE_MS // 2)
    assert job_ids(queue) == [f"tick@{first}"]


def test_cron_in_a_time_zone_follows_the_wall_clock() -> None:
    # Given a 02:30 daily cron in Berlin, the night clocks jump from 02:00 to 03:00
    spec = every_schedule(cron="30 2 * * *", every=None, tz="Europe/Berlin")
    before = int(datetime(2026, 3, 28, 12, 0, tzinfo=UTC).timestamp() * 1000)
    # When its next occurrences are computed
    first = spec.next_after(before)
    assert first is not None
    second = spec.next_after(first)
    assert second is not None
    # Then they are real instants: 02:30 CET (01:30 UTC) does not exist on
    # 2026-03-29, so croniter moves it to 03:00 CEST (01:00 UTC); then 00:30 UTC
    assert datetime.fromtimestamp(first / 1000, UTC) == datetime(2026, 3, 29, 1, 0, tzinfo=UTC)
    assert datetime.fromtimestamp(second / 1000, UTC) == datetime(2026, 3, 30, 0, 30, tzinfo=UTC)


def test_limit_and_end_at_finish_a_schedule(queue: Queue) -> None:
    # Given a schedule limited to 2 runs
    first = int(queue.schedule("twice", every=1, limit=2, misfire="all")["next_run"] * 1000)
    # When it is fired well past three occurrences
    fire_due(queue.scripts, queue.keys, first + 2500)
    # Then it ran twice and has no next run
    assert job_ids(queue) == [f"twice@{first}", f"twice@{first + 1000}"]
    [spec] = queue.schedules()
    assert spec["next_run"] is None
    assert spec["count"] == 2
    # And an end_at before the next occurrence means no next occurrence either
    ended = every_schedule(end_at=(T0 + 1500) / 1000)
    assert ended.next_after(T0 + 1000) is None


def test_start_at_delays_the_first_occurrence(queue: Queue) -> None:
    start = datetime(2030, 1, 1, tzinfo=UTC)
    described = queue.schedule("later", every=3600, start_at=start)
    assert described["next_run"] == start.timestamp()


def test_occurrences_carry_the_schedule_name_data_and_options(queue: Queue) -> None:
    first = int(
        queue.schedule("tick", every=1, name="send-digest", data={"to": "ops"}, attempts=3)[
            "next_run"
        ]
        * 1000
    )
    fire_due(queue.scripts, queue.keys, first)
    job = queue.get_job(f"tick@{first}")
    assert job is not None
    assert (job.name, job.data, job.attempts) == ("send-digest", {"to": "ops"}, 3)


def test_a_schedule_takes_every_option_of_add_but_job_id_and_delay(queue: Queue) -> None:
    # Given a queue whose defaults put jobs in a group, and a schedule that
    # also asks for manual retries only
    grouped = Queue(queue.name, connection=queue.client, defaults={"group": "reports"})
    first = int(grouped.schedule("tick", every=60, manual_retry_only=True)["next_run"] * 1000)

    # When the occurrence fires
    fire_due(grouped.scripts, grouped.keys, first)

    # Then its job carries both options
    job = grouped.get_job(f"tick@{first}")
    assert job is not None
    assert (job.fields.get("group"), job.fields.get("manual_retry_only")) == ("reports", "1")


@pytest.mark.parametrize("option", ["job_id", "delay"])
def test_a_schedule_refuses_job_id_and_delay(queue: Queue, option: str) -> None:
    with pytest.raises(TypeError, match=f"unknown schedule options: {option}"):
        queue.schedule("bad", every=5, **{option: "x" if option == "job_id" else 1.0})
    assert queue.schedules() == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cron": "61 * * * *"}, "bad cron expression"),
        ({"cron": "* * *"}, "bad cron expression"),
        ({"cron": "* * * * *", "tz": "Mars/Olympus"}, "unknown time zone"),
        ({"every": 0}, "positive number of seconds"),
        ({"every": -5}, "positive number of seconds"),
        ({}, "exactly one of cron= or every="),
        ({"cron": "* * * * *", "every": 5}, "exactly one of cron= or every="),
        ({"every": 5, "misfire": "sometimes"}, "misfire must be one of"),
        ({"every": 5, "limit": 0}, "limit must be an int from 1"),
        ({"every": 5, "start_at": 100, "end_at": 50}, "end_at must be after start_at"),
        ({"every": 5, "attempts": 0}, "attempts must be >= 1"),
        # One past each bound
        ({"every": MAX_SECONDS * 2}, f"at most {MAX_SECONDS:.0f}"),
        ({"every": 10**400}, f"at most {MAX_SECONDS:.0f}"),
        ({"every": float("inf")}, "positive number of seconds"),
        ({"every": float("nan")}, "positive number of seconds"),
        ({"every": 5, "limit": MAX_SCHEDULE_LIMIT + 1}, f"from 1 to {MAX_SCHEDULE_LIMIT}"),
        ({"every": 5, "start_at": MAX_EPOCH_SECONDS + 1}, f"from 0 to {MAX_EPOCH_SECONDS}"),
        ({"every": 5, "end_at": MAX_EPOCH_SECONDS + 1}, f"from 0 to {MAX_EPOCH_SECONDS}"),
        ({"every": 5, "start_at": -1}, f"from 0 to {MAX_EPOCH_SECONDS}"),
        ({"every": 5, "end_at": float("nan")}, f"from 0 to {MAX_EPOCH_SECONDS}"),
    ],
)
def test_bad_schedules_are_rejected_and_write_nothing(
    queue: Queue, kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises((ValueError, TypeError), match=message):
        queue.schedule("bad", **kwargs)  # type: ignore[arg-type]
    assert queue.schedules() == []


def test_the_largest_schedule_numbers_are_accepted_and_stored(queue: Queue) -> None:
    # Given a schedule at every bound: the longest interval, the highest
    # limit, the first and the last epoch second accepted
    stored = queue.schedule(
        "far", every=MAX_SECONDS, limit=MAX_SCHEDULE_LIMIT, start_at=0, end_at=MAX_EPOCH_SECONDS
    )

    # Then it is stored as given
    assert (stored["every"], stored["limit"]) == (MAX_SECONDS, MAX_SCHEDULE_LIMIT)
    [listed] = queue.schedules()
    assert listed["key"] == "far"


def test_the_smallest_schedule_interval_is_one_millisecond(queue: Queue) -> None:
    assert every_schedule(every=0.001).every_ms == 1
    assert every_schedule(every=1e-9).every_ms == 1  # rounded up, as before


def test_unschedule_removes_it_and_keeps_jobs_already_enqueued(queue: Queue) -> None:
    first = int(queue.schedule("tick", every=1)["next_run"] * 1000)
    fire_due(queue.scripts, queue.keys, first)
    assert queue.unschedule("tick") is True
    assert queue.unschedule("tick") is False
    assert queue.schedules() == []
    fire_due(queue.scripts, queue.keys, first + 10_000)
    assert job_ids(queue) == [f"tick@{first}"]


def test_a_schedule_updated_while_due_is_not_fired_with_the_old_time(queue: Queue) -> None:
    # Given a due schedule whose next time a slow worker read
    first = int(queue.schedule("tick", every=1)["next_run"] * 1000)
    # When someone else moved it on first (an update), the stale fire is refused
    queue.schedule("tick", every=100)
    assert queue.scripts.fire_schedule(queue.keys, first, "tick", first, first + 1000, 1, []) == -1


def test_plan_caps_catch_up_at_the_most_recent_occurrences() -> None:
    spec = every_schedule(misfire="all")
    fire, upcoming = plan_occurrences(spec, T0 + 1000, 0, T0 + 1000 + 500_000)
    assert len(fire) == 100
    assert fire[-1] == T0 + 1000 + 500_000
    assert upcoming == T0 + 1000 + 501_000


def test_cli_lists_schedules_as_a_table_and_as_json(
    queue: Queue, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from sandboxq.cli import main

    queue.schedule("nightly", cron="30 2 * * *", tz="Europe/Berlin", name="report")
    queue.schedule("tick", every=5, limit=3)

    assert main(["schedules", queue.name, "--url", redis_url]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["KEY", "JOB", "WHEN", "NEXT", "RUN", "RUNS", "MISFIRE"]
    assert table[1].split()[:5] == ["nightly", "report", "cron", "30", "2"]
    assert "every 5s" in table[2] and "0/3" in table[2]

    assert main(["schedules", queue.name, "--url", redis_url, "--json"]) == 0
    parsed = json.loads(capsys.readouterr().out)
    assert [s["key"] for s in parsed] == ["nightly", "tick"]


def test_cli_names_the_url_when_redis_is_down(capsys: pytest.CaptureFixture[str]) -> None:
    from sandboxq.cli import main

    assert main(["schedules", "q", "--url", "redis://127.0.0.1:1/0"]) == 2
    assert "redis://127.0.0.1:1/0" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("misfire", "expected_minutes"),
    [("skip", []), ("once", [4]), ("all", [0, 1, 2, 3, 4])],
)
def test_a_cron_schedule_missed_while_no_worker_ran_follows_misfire(
    queue: Queue, misfire: str, expected_minutes: list[int]
) -> None:
    # Given an every-minute cron whose next five due times pass with no worker
    first = int(queue.schedule("minutely", cron="* * * * *", misfire=misfire)["next_run"] * 1000)
    # When a worker fires what is due 4 minutes and 5 seconds after the first
    fire_due(queue.scripts, queue.keys, first + 4 * 60_000 + 5000)
    # Then the policy decided which minutes ran, and the next run is minute 5
    assert job_ids(queue) == sorted(f"minutely@{first + m * 60_000}" for m in expected_minutes)
    assert queue.schedules()[0]["next_run"] * 1000 == first + 5 * 60_000
