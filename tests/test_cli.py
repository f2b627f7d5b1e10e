"""The admin CLI against a real Redis: ``sandboxq stats``, ``jobs``, ``job``,
``retry``, ``remove``, ``pause``, ``resume``, ``clean``, ``workers``, ``add``
and ``dev``."""

from __future__ import annotations

import json
import os
import platform
import selectors
import shlex
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

import sandboxq
from sandboxq import Queue
from sandboxq.cli import main, parse_duration
from sandboxq.execution import COMPLETED, Outcome, finish_entry
from sandboxq.fast import decode_fetched
from sandboxq.scripts import now_ms
from sandboxq.testing import run_until_empty
from tests.worker_harness import ROOT, WorkerProcess, wait_until

DAY_MS = 86_400_000


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)

    def row(self, value: str, column: int = 0) -> list[str]:
        """The table row with ``value`` in ``column``, split on spaces."""
        rows = [
            cells
            for cells in (line.split() for line in self.out.splitlines())
            if len(cells) > column and cells[column] == value
        ]
        assert len(rows) == 1, f"no single row with {value!r} in column {column}:\n{self.out}"
        return rows[0]


Cli = Callable[..., Result]


@pytest.fixture
def cli(redis_url: str, capsys: pytest.CaptureFixture[str]) -> Cli:
    """``cli("jobs", "q")`` runs ``sandboxq jobs q --url <test redis>``."""

    def run(*args: str) -> Result:
        code = main([*args, "--url", redis_url])
        captured = capsys.readouterr()
        return Result(code, captured.out, captured.err)

    return run


@pytest.fixture
def kids(queue: Queue, redis_url: str) -> Iterator[Queue]:
    """A second queue in ``queue``'s group (same hash tag), for flows."""
    q = Queue(f"{queue.name}:kids", url=redis_url)
    yield q
    q.obliterate(force=True)
    q.client.close()


def ok(job: Any) -> Any:
    return {"echo": job.data}


def boom(job: Any) -> None:
    raise ValueError("card declined")


def failed_jobs(queue: Queue, count: int, handler: Callable[[Any], Any] = boom) -> list[str]:
    ids = [queue.add("charge", {"n": n}).id for n in range(count)]
    run_until_empty(queue, {"charge": handler})
    return ids


def complete_at(queue: Queue, when_ms: int) -> list[str]:
    """Run the waiting jobs as a worker would have at ``when_ms``."""
    rows, *_ = queue.scripts.fetch(queue.keys, when_ms, 100, "old-worker", 60_000)
    fetched = decode_fetched(rows)
    entries = [finish_entry(i, f, Outcome(COMPLETED, "null")) for i, f in fetched]
    queue.scripts.finish(queue.keys, when_ms, "old-worker", entries)
    return [i for i, _fields in fetched]


def keys_of(queue: Queue) -> list[bytes]:
    return list(queue.client.scan_iter(match=queue.keys.prefix + "*"))


def read_line(process: subprocess.Popen[bytes], timeout: float = 15.0) -> str:
    """The first line the process writes to stdout, waiting at most ``timeout``."""
    assert process.stdout is not None
    data = b""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        while b"\n" not in data:
            left = deadline - time.monotonic()
            if left <= 0 or not selector.select(left):
                raise AssertionError(f"no line from {process.args} in {timeout}s: {data!r}")
            chunk = os.read(process.stdout.fileno(), 4096)
            if not chunk:
                raise AssertionError(f"{process.args} exited with {process.wait()}: {data!r}")
            data += chunk
    return data.split(b"\n", 1)[0].decode()


# -- stats ---------------------------------------------------------------------------
def test_stats_shows_counts_paused_and_throughput_of_a_queue(queue: Queue, cli: Cli) -> None:
    # Given one job in each state, and the queue paused
    queue.add("ok")
    queue.add("boom")
    run_until_empty(queue, {"ok": ok, "boom": boom})
    active = queue.add("slow")
    queue.scripts.fetch(queue.keys, now_ms(), 1, "w", 60_000)
    queue.add_flow(parent={"name": "parent"}, children=[{"name": "child"}])
    queue.add("later", delay=3600)
    queue.add("unwanted").cancel()
    queue.add("after", depends_on=[active])
    queue.pause(by="ops")

    # When the stats are asked for as a table
    table = cli("stats", queue.name)

    # Then its row has every count, the paused flag, per-second rates, no worker
    assert table.code == 0
    assert table.out.splitlines()[0].split() == [
        "QUEUE",
        "WAITING",
        "DELAYED",
        "ACTIVE",
        "COMPLETED",
        "FAILED",
        "WAITING-CHILDREN",
        "WAITING-DEPS",
        "CANCELLED",
        "PAUSED",
        "COMPLETED/S",
        "FAILED/S",
        "WORKERS",
    ]
    assert table.row(queue.name)[1:] == [
        *["1", "1", "1", "1", "1", "1", "1", "1"],
        *["yes", "0.02", "0.02", "0"],
    ]

    # And as JSON, with the exact values
    stats = cli("stats", queue.name, "--json").json()
    assert stats["queue"] == queue.name
    assert stats["counts"] == {
        "waiting": 1,
        "delayed": 1,
        "active": 1,
        "completed": 1,
        "failed": 1,
        "waiting-children": 1,
        "waiting-deps": 1,
        "cancelled": 1,
    }
    assert stats["paused"] is True
    assert stats["throughput"] == {
        "completed": pytest.approx(1 / 60),
        "failed": pytest.approx(1 / 60),
    }
    assert stats["workers"] == []
    assert queue.get_job(active.id).state == "active"  # type: ignore[union-attr]


def test_stats_without_a_queue_lists_every_queue(queue: Queue, kids: Queue, cli: Cli) -> None:
    # Given a queue, a queue of its group (another key layout), and in the
    # latter a job whose id makes its hash's key end in ":events" too
    queue.add("x")
    queue.pause()
    kids.add("y", delay=60)
    kids.add("z", job_id="events")

    # When stats are asked for without a queue
    found = {s["queue"]: s for s in cli("stats", "--json").json()}

    # Then both queues are found, with their own numbers, and nothing else of theirs
    assert found[queue.name]["counts"]["waiting"] == 1
    assert found[queue.name]["paused"] is True
    assert (found[kids.name]["counts"]["delayed"], found[kids.name]["counts"]["waiting"]) == (1, 1)
    assert found[kids.name]["paused"] is False
    assert f"{kids.name}:job" not in found
    table = cli("stats")
    assert table.row(queue.name)[1] == "1"
    assert table.row(kids.name)[2] == "1"


def test_stats_skips_keys_of_queue_names_no_longer_allowed(
    queue: Queue, client: redis.Redis, cli: Cli
) -> None:
    # Given a queue, and the event stream of a queue named with two ':'
    # (allowed by earlier versions, whose keys could collide with others')
    queue.add("x")
    stale = f"sq:{{{queue.name}}}/b:c:events"
    client.xadd(stale, {"event": "added", "job_id": "1"})

    # When every queue's stats are listed
    found = {s["queue"] for s in cli("stats", "--json").json()}

    # Then the listing works, and leaves the old name out
    assert queue.name in found
    assert f"{queue.name}:b:c" not in found
    client.delete(stale)


def test_stats_watch_refreshes_the_given_number_of_times(queue: Queue, cli: Cli) -> None:
    queue.add("x")

    table = cli("stats", queue.name, "--watch", "--iterations", "2", "--interval", "0")
    assert table.code == 0
    assert sum(line.startswith("QUEUE") for line in table.out.splitlines()) == 2
    assert sum(line.startswith("every 0s") for line in table.out.splitlines()) == 2

    lines = cli("stats", queue.name, "--iterations", "3", "--interval", "0", "--json").out
    snapshots = [json.loads(line) for line in lines.splitlines()]
    assert [s["counts"]["waiting"] for s in snapshots] == [1, 1, 1]


@contextmanager
def ctrl_c_reaches_children() -> Iterator[None]:
    """Processes started inside get SIGINT's default action (Python's
    KeyboardInterrupt) even where this one ignores SIGINT, as it does when
    the suite was started in the background or under nohup: an ignored
    signal stays ignored across exec, a handler does not."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def test_stats_watch_runs_until_ctrl_c(queue: Queue, redis_url: str) -> None:
    queue.add("x")
    command = ["stats", queue.name, "--watch", "--interval", "0.05", "--json", "--url", redis_url]
    with ctrl_c_reaches_children():
        process = subprocess.Popen(
            [sys.executable, "-m", "sandboxq", *command],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
    try:
        assert json.loads(read_line(process))["counts"]["waiting"] == 1
        process.send_signal(signal.SIGINT)
        _out, err = process.communicate(timeout=15)
        assert process.returncode == 0
        assert err == b""
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


def test_stats_and_workers_show_a_live_worker(
    queue: Queue,
    redis_url: str,
    cli: Cli,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    # Given a real worker serving the queue, and another queue it does not serve
    worker = start_worker(procs=1)
    other = Queue(f"other-{uuid.uuid4().hex[:8]}", url=redis_url)
    other.add("x")
    wait_until(
        lambda: any(w["pid"] == worker.pid for w in queue.workers()), 10, "the worker's heartbeat"
    )
    try:
        # When the workers are listed
        listed = cli("workers", "--json").json()

        # Then it is there with its host, queues, procs and uptime
        [mine] = [w for w in listed if w["pid"] == worker.pid]
        assert (mine["host"], mine["queues"], mine["procs"]) == (
            socket.gethostname(),
            [queue.name],
            1,
        )
        assert 0 <= mine["uptime"] < 60
        row = cli("workers").row(str(worker.pid), column=1)
        assert row[0] == socket.gethostname()
        assert row[2:4] == [queue.name, "1"]
        assert row[4].endswith("s")  # uptime in seconds: it just started

        # And the stats of its queue count it, those of the other queue do not
        assert [w["pid"] for w in cli("stats", queue.name, "--json").json()["workers"]] == [
            worker.pid
        ]
        assert cli("stats", other.name, "--json").json()["workers"] == []
        table = cli("stats", queue.name)
        assert table.row(queue.name)[-1] == "1"
        assert table.row(str(worker.pid), column=1)[2] == queue.name  # the workers table
    finally:
        other.obliterate(force=True)


# -- jobs ------------------------------------------------------------------------------
def test_jobs_lists_failed_jobs_with_attempts_and_errors(queue: Queue, cli: Cli) -> None:
    # Given a job that failed both its attempts with a long, two-line error
    long_error = "x" * 100 + "\nsecond line"

    def fail(job: Any) -> None:
        raise ValueError(long_error)

    job = queue.add("charge", attempts=2, backoff=0)
    run_until_empty(queue, {"charge": fail})

    # When the failed jobs are listed
    table = cli("jobs", queue.name, "--state", "failed")

    # Then the table shows attempts made/allowed and the error's first line, cut
    assert table.code == 0
    assert table.out.splitlines()[0].split() == ["ID", "NAME", "ATTEMPTS", "ERROR"]
    row = table.row(job.id)
    assert row[1:3] == ["charge", "2/2"]
    assert row[3].startswith("ValueError:") and row[4].endswith("…") and len(row[4]) < 60
    assert "second line" not in table.out

    # And the JSON has the whole error
    [listed] = cli("jobs", queue.name, "--json").json()  # failed is the default
    assert listed["id"] == job.id
    assert (listed["attempts_made"], listed["attempts"]) == (2, 2)
    assert listed["error"] == f"ValueError: {long_error}"


def test_jobs_lists_other_states_up_to_the_limit(queue: Queue, cli: Cli) -> None:
    ids = [queue.add("x").id for _ in range(3)]

    listed = cli("jobs", queue.name, "--state", "waiting", "--limit", "2", "--json").json()
    assert [j["id"] for j in listed] == ids[:2]
    assert {j["state"] for j in listed} == {"waiting"}

    empty = cli("jobs", queue.name, "--state", "completed")
    assert empty.code == 0 and "(no completed jobs" in empty.out


def test_jobs_lists_waiting_jobs_of_groups_too(queue: Queue, cli: Cli) -> None:
    plain = queue.add("x").id
    grouped = queue.add("x", group="customer-42").id

    listed = cli("jobs", queue.name, "--state", "waiting", "--json").json()
    assert [j["id"] for j in listed] == [plain, grouped]


# -- job -------------------------------------------------------------------------------
def test_job_shows_everything_about_a_failed_job(queue: Queue, cli: Cli) -> None:
    # Given a job with options that logged, reported progress and failed,
    # was retried by alice and failed again
    def fail(job: Any) -> None:
        job.update_progress(40)
        job.log("step 1")
        raise ValueError("card declined")

    job = queue.add(
        "charge",
        {"amount": 42, "items": ["a", "b"]},
        priority=3,
        timeout=30,
        backoff=2,
        keep_failed={"count": 5, "age": 3600},
    )
    run_until_empty(queue, {"charge": fail})
    assert queue.retry(job.id, by="alice")
    run_until_empty(queue, {"charge": fail})

    # When it is shown as JSON
    report = cli("job", queue.name, job.id, "--json").json()

    # Then everything is there
    assert (report["id"], report["name"], report["state"]) == (job.id, "charge", "failed")
    assert report["data"] == {"amount": 42, "items": ["a", "b"]}
    assert report["options"] == {
        "priority": 3,
        "attempts": 1,
        "timeout": 30.0,
        "backoff": {"type": "fixed", "delay": 2.0, "jitter": 0.0, "max": None},
        "group": None,
        "manual_retry_only": False,
        "keep_completed": {"count": None, "age": 86400.0},  # the default
        "keep_failed": {"count": 5, "age": 3600.0},
    }
    assert report["progress"] == 40
    assert (report["attempts_made"], report["attempts"]) == (1, 1)
    assert report["error"] == "ValueError: card declined"
    assert "ValueError: card declined" in report["traceback"]
    assert report["logs"] == ["step 1", "step 1"]
    assert [(e["by"], e["action"]) for e in report["audit"]] == [("alice", "retry")]
    assert report["created_at"] <= report["started_at"] <= report["finished_at"]
    assert report["result"] is None and report["parent"] is None
    assert report["children_results"] == {}

    # And the text shows it in sections
    text = cli("job", queue.name, job.id).out
    assert text.splitlines()[0] == f"job {job.id} (charge) in queue {queue.name!r}"
    assert "  state     failed" in text
    assert '    "amount": 42,' in text  # data, as indented JSON
    for section in ("data", "options", "error", "traceback", "logs (2)", "audit (1)"):
        assert f"\n{section}\n" in text
    assert "alice  retry" in text
    assert "  keep_failed        " in text


def test_job_shows_a_flow_parents_children_results(queue: Queue, kids: Queue, cli: Cli) -> None:
    # Given a flow whose two children (in another queue of the group) completed
    flow = queue.add_flow(
        parent={"name": "zip", "data": {"album": 7}},
        children=[{"queue": kids.name, "name": "thumb", "data": n} for n in range(2)],
    )
    run_until_empty(kids, {"thumb": ok})
    parent_id = flow.job.id
    child_ids = [child.job.id for child in flow.children]

    # When the parent is shown
    report = cli("job", queue.name, parent_id, "--json").json()

    # Then its children's results are there, and it waits to run
    assert report["state"] == "waiting"
    assert report["children_results"] == {
        f"{kids.name}:{child_ids[0]}": {"echo": 0},
        f"{kids.name}:{child_ids[1]}": {"echo": 1},
    }
    assert "children results (2)" in cli("job", queue.name, parent_id).out

    # And a child names its parent
    child = cli("job", kids.name, child_ids[0], "--json").json()
    assert child["parent"] == {"queue": queue.name, "id": parent_id}
    assert f"parent    {queue.name} {parent_id}" in cli("job", kids.name, child_ids[0]).out


def test_job_that_does_not_exist_is_exit_code_1(queue: Queue, cli: Cli) -> None:
    missing = cli("job", queue.name, "404")
    assert missing.code == 1
    assert missing.out == ""
    assert missing.err.strip() == f"sandboxq: no job 404 in queue {queue.name!r}"


# -- retry, remove, pause, resume ----------------------------------------------------
def test_retry_one_job_and_all_failed_jobs_with_an_author(queue: Queue, cli: Cli) -> None:
    first, second = failed_jobs(queue, 2)

    # When one failed job is retried by alice
    done = cli("retry", queue.name, first, "--by", "alice")

    # Then it waits again, and the audit says alice did it
    assert done.code == 0 and "retried job" in done.out
    job = queue.get_job(first)
    assert job is not None and job.state == "waiting"
    assert [(e["by"], e["action"]) for e in job.audit()] == [("alice", "retry")]

    # When it is retried again (it is not failed now), or a missing job is
    not_failed, missing = cli("retry", queue.name, first), cli("retry", queue.name, "999")

    # Then each is refused with exit code 1 and says why
    assert (not_failed.code, missing.code) == (1, 1)
    assert "is waiting, not failed" in not_failed.err
    assert "no job 999" in missing.err

    # When every failed job is retried by bob
    everything = cli("retry", queue.name, "--all-failed", "--by", "bob", "--json")

    # Then the other one waits too, by bob
    assert everything.json() == {"queue": queue.name, "retried": 1}
    assert queue.counts()["failed"] == 0
    assert queue.get_job(second).audit()[0]["by"] == "bob"  # type: ignore[union-attr]


@pytest.mark.parametrize("args", [[], ["1", "--all-failed"]])
def test_retry_needs_an_id_or_all_failed_not_both(queue: Queue, cli: Cli, args: list[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli("retry", queue.name, *args)
    assert exited.value.code == 2


def test_remove_deletes_a_job_and_audits_who(queue: Queue, cli: Cli) -> None:
    job = queue.add("x")

    removed = cli("remove", queue.name, job.id, "--by", "bob", "--json")

    assert removed.json() == {"queue": queue.name, "removed": 1, "id": job.id}
    assert queue.get_job(job.id) is None
    entry = queue.audit_log()[0]
    assert (entry["action"], entry["by"], entry["job_id"]) == ("remove", "bob", job.id)

    again = cli("remove", queue.name, job.id)
    assert again.code == 1 and f"no job {job.id}" in again.err


def test_remove_refuses_an_active_job(queue: Queue, cli: Cli) -> None:
    job = queue.add("x")
    queue.scripts.fetch(queue.keys, now_ms(), 1, "w", 60_000)

    refused = cli("remove", queue.name, job.id)

    assert refused.code == 1
    assert refused.err.strip() == f"sandboxq: job {job.id} is active; remove it after it finishes"
    assert queue.get_job(job.id).state == "active"  # type: ignore[union-attr]


def test_pause_and_resume_with_an_author(queue: Queue, cli: Cli) -> None:
    paused = cli("pause", queue.name, "--by", "ops")
    assert paused.code == 0 and paused.out.strip() == f"paused queue {queue.name!r}"
    assert queue.is_paused()

    again = cli("pause", queue.name, "--json")
    assert again.json() == {"queue": queue.name, "paused": True, "changed": False}

    resumed = cli("resume", queue.name, "--by", "ops", "--json")
    assert resumed.json() == {"queue": queue.name, "paused": False, "changed": True}
    assert not queue.is_paused()
    actions = [(e["action"], e["by"]) for e in reversed(queue.audit_log())]
    assert actions == [("pause", "ops"), ("resume", "ops")]
    assert "was not paused" in cli("resume", queue.name).out


# -- clean -------------------------------------------------------------------------------
def test_clean_removes_completed_jobs_older_than_a_day(queue: Queue, cli: Cli) -> None:
    # Given two jobs completed two days ago and one just now, all kept
    queue.add_bulk([{"name": "x", "keep_completed": True}] * 2)
    old = complete_at(queue, now_ms() - 2 * DAY_MS)
    fresh = queue.add("x", keep_completed=True)
    run_until_empty(queue, {"x": ok})

    # When completed jobs older than a day are cleaned
    cleaned = cli("clean", queue.name, "--state", "completed", "--older-than", "1d")

    # Then the old ones are gone, the fresh one stays
    assert cleaned.code == 0
    assert cleaned.out.strip() == f"removed 2 completed job(s) from queue {queue.name!r}"
    assert all(queue.get_job(i) is None for i in old)
    assert queue.job_ids("completed") == [fresh.id]

    # And --keep 0 removes the rest
    kept = cli("clean", queue.name, "--state", "completed", "--keep", "0", "--json")
    assert kept.json() == {"queue": queue.name, "state": "completed", "removed": 1}
    assert queue.counts()["completed"] == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--state", "completed"], "needs --older-than and/or --keep"),
        (["--state", "waiting", "--older-than", "1h"], "completed, failed and cancelled jobs only"),
    ],
)
def test_clean_refuses_what_it_cannot_do(
    queue: Queue, cli: Cli, args: list[str], message: str
) -> None:
    queue.add("x")
    refused = cli("clean", queue.name, *args)
    assert refused.code == 2 and message in refused.err
    assert queue.counts()["waiting"] == 1


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("15m", 900), ("2h", 7200), ("1d", 86400), ("1w", 604800), ("1.5", 1.5)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["", "1y", "-1d", "d"])
def test_a_bad_duration_is_a_usage_error(cli: Cli, bad: str) -> None:
    with pytest.raises(SystemExit) as exited:
        cli("clean", "q", "--state", "completed", "--older-than", bad)
    assert exited.value.code == 2


# -- add ---------------------------------------------------------------------------------
def test_add_a_job_with_options(queue: Queue, cli: Cli) -> None:
    added = cli(
        "add",
        queue.name,
        "resize",
        "--data",
        '{"path": "/uploads/cat.png", "width": 256}',
        "--delay",
        "1h",
        "--priority",
        "5",
        "--attempts",
        "3",
        "--job-id",
        "upload-42",
        "--json",
    )

    assert added.json() == {
        "queue": queue.name,
        "id": "upload-42",
        "name": "resize",
        "state": "delayed",
        "added": True,
    }
    job = queue.get_job("upload-42")
    assert job is not None
    assert job.data == {"path": "/uploads/cat.png", "width": 256}
    assert (job.priority, job.attempts, job.state) == (5, 3, "delayed")

    # An existing id adds nothing, and says so
    again = cli("add", queue.name, "resize", "--job-id", "upload-42")
    assert again.code == 0 and "exists already (delayed): nothing added" in again.out
    assert queue.get_job("upload-42").data == job.data  # type: ignore[union-attr]

    plain = cli("add", queue.name, "thumb")
    assert plain.out.strip().endswith("(thumb) to queue " + repr(queue.name) + ": waiting")
    assert queue.counts()["waiting"] == 1


def test_add_with_bad_json_is_a_usage_error_and_writes_nothing(
    queue: Queue, cli: Cli, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        cli("add", queue.name, "resize", "--data", "{path: 1}")
    assert exited.value.code == 2
    assert "argument --data: not JSON" in capsys.readouterr().err
    assert keys_of(queue) == []


def test_add_with_bad_options_is_a_usage_error_and_writes_nothing(queue: Queue, cli: Cli) -> None:
    refused = cli("add", queue.name, "resize", "--attempts", "0")
    assert refused.code == 2
    assert refused.err.strip() == "sandboxq: attempts must be >= 1, got 0"
    assert keys_of(queue) == []


# -- Redis down --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "args",
    [
        ["stats"],
        ["stats", "q", "--json"],
        ["stats", "q", "--watch", "--iterations", "2"],
        ["jobs", "q"],
        ["job", "q", "1"],
        ["retry", "q", "1"],
        ["retry", "q", "--all-failed"],
        ["remove", "q", "1"],
        ["pause", "q"],
        ["resume", "q", "--by", "ops"],
        ["clean", "q", "--state", "completed", "--keep", "0"],
        ["workers", "--json"],
        ["add", "q", "x", "--job-id", "a-1"],
        ["schedules", "q"],
    ],
)
@pytest.mark.parametrize(
    "url", ["redis://127.0.0.1:1/0", "unix:///nonexistent/sandboxq-test.sock?db=0"]
)
def test_every_command_names_the_url_when_redis_is_down(
    args: list[str], url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*args, "--url", url]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    [line] = captured.err.splitlines()
    if "--json" in args:  # the error as JSON, for the script that asked for JSON
        line = "sandboxq: " + json.loads(line)["error"]
    assert line.startswith("sandboxq: cannot reach Redis at ")
    assert url.split("?")[0] in line


def test_the_url_comes_from_the_environment(
    queue: Queue,
    redis_url: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SANDBOXQ_REDIS_URL", redis_url)
    queue.add("x")
    assert main(["stats", queue.name, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["counts"]["waiting"] == 1


# -- dev -----------------------------------------------------------------------------------
@pytest.fixture
def run_dev() -> Iterator[Callable[..., tuple[subprocess.Popen[bytes], str]]]:
    """Start ``sandboxq dev ...``; returns the process and the exported URL.
    Whatever still runs after the test gets SIGTERM (it stops its Redis)."""
    started: list[subprocess.Popen[bytes]] = []

    def start(*args: str) -> tuple[subprocess.Popen[bytes], str]:
        process = subprocess.Popen(
            [sys.executable, "-m", "sandboxq", "dev", *args],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        started.append(process)
        export, assignment = shlex.split(read_line(process))
        name, url = assignment.split("=", 1)
        assert (export, name) == ("export", "SANDBOXQ_REDIS_URL")
        return process, url

    yield start
    for process in started:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


def test_dev_runs_a_persistent_redis_until_sigterm(
    tmp_path_factory: pytest.TempPathFactory,
    run_dev: Callable[..., tuple[subprocess.Popen[bytes], str]],
) -> None:
    base = tmp_path_factory.mktemp("dev")
    # Given a dev Redis, with a job added through its URL
    process, url = run_dev("--dir", str(base))
    assert url == f"unix://{base / 'dev-redis' / 'redis.sock'}?db=0"
    queue = Queue("dev-test", url=url)
    queue.add("x", {"keep": "me"}, job_id="persisted-1")
    queue.client.close()

    # When a second one is started on the same directory
    second = subprocess.run(
        [sys.executable, "-m", "sandboxq", "dev", "--dir", str(base)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    # Then it refuses, naming the directory
    assert second.returncode == 1
    assert "running in" in second.stderr and str(base) in second.stderr

    # When the first gets SIGTERM
    process.send_signal(signal.SIGTERM)

    # Then it stops Redis cleanly and exits 0, leaving an append-only file
    assert process.wait(15) == 0
    assert "ready to exit" in (base / "dev-redis" / "redis.log").read_text()  # a shutdown
    assert list((base / "dev-redis").rglob("appendonly*"))
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(url).ping()

    # And a restart finds the job again
    process, url = run_dev("--dir", str(base))
    job = Queue("dev-test", url=url).get_job("persisted-1")
    assert job is not None and job.data == {"keep": "me"}
    process.send_signal(signal.SIGINT)
    assert process.wait(15) == 0


def test_dev_listens_on_a_tcp_port(
    tmp_path_factory: pytest.TempPathFactory,
    run_dev: Callable[..., tuple[subprocess.Popen[bytes], str]],
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    process, url = run_dev("--dir", str(tmp_path_factory.mktemp("dev")), "--port", str(port))

    assert url == f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    assert client.ping()
    client.close()
    process.send_signal(signal.SIGINT)
    assert process.wait(15) == 0


def test_dev_that_cannot_start_redis_says_why_and_exits_1(tmp_path: Path) -> None:
    # Given a --dir that is a file, so no Redis directory can be made in it
    blocker = tmp_path / "file"
    blocker.write_text("")

    failed = subprocess.run(
        [sys.executable, "-m", "sandboxq", "dev", "--dir", str(blocker)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )

    assert failed.returncode == 1
    assert failed.stdout == ""
    [line] = failed.stderr.splitlines()
    assert line.startswith("sandboxq: cannot start Redis: ") and str(blocker) in line


def test_an_unexpected_error_in_the_worker_exits_70_not_1(
    queue: Queue,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Exit code 1 says "stopped with jobs handed back"; a bug in the worker
    must not look like that to a supervisor. The bug is planted in the
    worker's run loop: nothing a handler does can reach it."""
    from sandboxq.worker import parent

    def broken_run(self: parent.Worker) -> int:
        raise RuntimeError("planted bug")

    monkeypatch.setattr(parent.Worker, "run", broken_run)
    monkeypatch.setenv("SANDBOXQ_TEST_QUEUE", queue.name)
    code = main(["worker", "tests.jobs", "--url", redis_url, "--procs", "1", "-q", queue.name])
    assert code == parent.EXIT_INTERNAL_ERROR == 70
    logged = capsys.readouterr().err
    assert "the worker stopped on an unexpected error" in logged
    assert "planted bug" in logged


def test_the_worker_refuses_to_start_off_linux_and_says_what_to_do(
    redis_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a platform other than Linux (a developer's Mac, say)
    from sandboxq.worker import parent

    monkeypatch.setattr(sys, "platform", "darwin")
    # When a worker is started there
    code = main(["worker", "tests.jobs", "--url", redis_url, "--procs", "1"])
    # Then it stops at once with the boot error's exit code, saying why and what to do
    assert code == parent.EXIT_BOOT_ERROR
    logged = capsys.readouterr().err
    assert "the worker runs on Linux only" in logged
    assert "this is darwin: run it in a Linux container or VM" in logged


# -- polish: version, pipes, JSON errors, escapes, promote/drain/obliterate ---------------
def test_version_says_which_implementation_runs(capsys: pytest.CaptureFixture[str]) -> None:
    # Given this run's environment (the suite runs once on each implementation)
    pure = os.environ.get("SANDBOXQ_NO_EXTENSIONS", "") not in ("", "0")
    # When asked for the version
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    # Then it names the release, the implementation in use (and why the twin) and the Python
    assert exited.value.code == 0
    running = "pure-Python twin (SANDBOXQ_NO_EXTENSIONS is set)" if pure else "native extension"
    expected = f"sandboxq {sandboxq.__version__}, {running}, Python {platform.python_version()}"
    assert capsys.readouterr().out.strip() == expected


BROKEN_EXTENSION = """
import importlib.abc, sys

class Broken(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "sandboxq._fast":
            raise ImportError("_fast.so: undefined symbol: PyFoo_Bar")

sys.meta_path.insert(0, Broken())
from sandboxq.cli import main
main(["--version"])
"""


def test_version_says_why_the_native_extension_did_not_load() -> None:
    # Given a native extension that fails to import (built for another Python, say)
    env = {k: v for k, v in os.environ.items() if k != "SANDBOXQ_NO_EXTENSIONS"}
    # When asked for the version
    shown = subprocess.run(
        [sys.executable, "-c", BROKEN_EXTENSION], env=env, capture_output=True, text=True
    )
    # Then the twin runs, and the line says why
    assert shown.returncode == 0, shown.stderr
    assert (
        "pure-Python twin (the native extension failed to import: "
        "_fast.so: undefined symbol: PyFoo_Bar)"
    ) in shown.stdout


def test_a_reader_that_goes_away_ends_the_output_quietly(queue: Queue, redis_url: str) -> None:
    failed_jobs(queue, 300)
    pipeline = subprocess.run(
        f"{shlex.quote(sys.executable)} -m sandboxq jobs {queue.name} --limit 300 "
        f"--url {shlex.quote(redis_url)} | head -1; echo status=${{PIPESTATUS[0]}} >&2",
        shell=True,
        executable="/bin/bash",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert pipeline.stdout.split() == ["ID", "NAME", "ATTEMPTS", "ERROR"]
    assert pipeline.stderr.strip() == "status=0"  # no BrokenPipeError traceback


def test_with_json_errors_are_json_on_stderr(
    queue: Queue, cli: Cli, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = cli("job", queue.name, "nope", "--json")
    assert missing.code == 1
    assert missing.out == ""
    assert json.loads(missing.err) == {"error": f"no job nope in queue {queue.name!r}", "code": 1}
    with pytest.raises(SystemExit) as exited:
        cli("jobs", queue.name, "--state", "sleeping", "--json")
    assert exited.value.code == 2
    assert "invalid choice: 'sleeping'" in json.loads(capsys.readouterr().err)["error"]


def test_stats_on_an_unknown_queue_says_so(cli: Cli) -> None:
    result = cli("stats", "no-such-queue")
    assert result.code == 1
    assert result.err.strip() == "sandboxq: no queue 'no-such-queue' on this Redis"


def test_a_redis_error_is_one_line(queue: Queue, redis_url: str) -> None:
    bad_db = redis_url.replace("db=0", "db=99")
    assert bad_db != redis_url
    run = subprocess.run(
        [sys.executable, "-m", "sandboxq", "stats", "--url", bad_db],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2
    assert run.stderr.count("\n") == 1, run.stderr
    assert "DB index is out of range" in run.stderr
    assert "Traceback" not in run.stderr


def test_control_characters_from_jobs_are_escaped_on_the_terminal(queue: Queue, cli: Cli) -> None:
    def paint(job: Any) -> None:
        raise ValueError("\x1b[2J\x1b[31mgone\u202e")

    job = queue.add("charge")
    run_until_empty(queue, {"charge": paint})
    for result in (cli("jobs", queue.name), cli("job", queue.name, job.id)):
        assert "\x1b" not in result.out and "\u202e" not in result.out
        assert "\\x1b[2J\\x1b[31mgone\\u202e" in result.out
    # JSON keeps the text as it is (escaped by JSON itself)
    assert cli("job", queue.name, job.id, "--json").json()["error"] == (
        "ValueError: \x1b[2J\x1b[31mgone\u202e"
    )


def test_promote_drain_and_obliterate(queue: Queue, cli: Cli) -> None:
    later = queue.add("x", delay=3600)
    assert cli("promote", queue.name, later.id, "--by", "ops").code == 0
    assert queue.get_job(later.id).state == "waiting"  # type: ignore[union-attr]
    again = cli("promote", queue.name, later.id)
    assert (again.code, again.err.strip()) == (
        1,
        f"sandboxq: job {later.id} is waiting, not delayed: nothing to promote",
    )

    queue.add("x", delay=60)
    refused = cli("drain", queue.name)  # stdin is no terminal here: --yes is needed
    assert refused.code == 1 and "refusing without --yes" in refused.err
    assert sum(queue.counts().values()) == 2
    drained = cli("drain", queue.name, "--yes", "--by", "ops", "--json")
    assert drained.json() == {"queue": queue.name, "removed": 2}
    assert queue.audit_log()[0]["action"] == "drain (2 removed)"
    assert queue.audit_log()[0]["by"] == "ops"

    queue.add("x")
    assert cli("obliterate", queue.name).code == 1
    assert cli("obliterate", queue.name, "--yes").code == 0
    assert queue.client.exists(queue.keys.events, queue.keys.wait) == 0


def test_add_takes_backoff_timeout_and_group(
    queue: Queue, cli: Cli, capsys: pytest.CaptureFixture[str]
) -> None:
    added = cli(
        "add",
        queue.name,
        "charge",
        "--backoff",
        "exponential:2s",
        "--timeout",
        "30",
        "--group",
        "acme",
        "--attempts",
        "3",
        "--json",
    ).json()
    job = queue.get_job(added["id"])
    assert job is not None
    assert (job.timeout, job.fields["group"], job.attempts) == (30.0, "acme", 3)
    assert job.fields["backoff"] == {
        "type": "exponential",
        "delay": 2.0,
        "jitter": 0.0,
        "max": None,
    }
    with pytest.raises(SystemExit):
        cli("add", queue.name, "charge", "--backoff", "sometimes")
    assert "not a backoff: 'sometimes' (try 5s" in capsys.readouterr().err
