"""Django's tasks framework on sandboxq: tasks of tests/django_project enqueued
through the framework, run by a real ``sandboxq worker sandboxq.contrib.django``
and read back as the framework's results."""

from __future__ import annotations

import asyncio
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import django
import pytest

from sandboxq import Queue
from sandboxq.worker.parent import EXIT_BOOT_ERROR
from tests.worker_harness import WorkerProcess, assert_counts, wait_for_jobs, wait_until

pytestmark = pytest.mark.integration

StartWorker = Callable[..., WorkerProcess]
SETTINGS = "tests.django_project.settings"
BACKEND = "sandboxq.contrib.django.SandboxqBackend"


@pytest.fixture(scope="session")
def django_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Django set up in this process on the test project, with its table in
    a SQLite file the workers share; the environment a worker needs."""
    env = {
        "DJANGO_SETTINGS_MODULE": SETTINGS,
        "SANDBOXQ_TEST_DJANGO_DB": str(tmp_path_factory.mktemp("django") / "db.sqlite3"),
    }
    os.environ.update(env)
    django.setup()
    from django.db import connection

    from tests.django_project.models import Note

    with connection.schema_editor() as editor:
        editor.create_model(Note)
    return env


def tasks_setting(queue: Queue, redis_url: str, **more: Any) -> dict[str, Any]:
    options = {"url": redis_url, **more.pop("OPTIONS", {})}
    return {
        "default": {
            "BACKEND": BACKEND,
            "QUEUES": ["default", queue.name],
            "OPTIONS": options,
            **more,
        }
    }


@pytest.fixture
def backend(django_env: dict[str, str], queue: Queue, redis_url: str) -> Iterator[Any]:
    """The project's backend, serving this test's queue."""
    from django.test import override_settings

    from sandboxq.contrib.django.compat import task_backends

    with override_settings(TASKS=tasks_setting(queue, redis_url)):
        yield task_backends["default"]
        task_backends["default"].close()


@pytest.fixture
def tasks(backend: Any) -> ModuleType:
    import tests.django_project.tasks as module

    return module


@pytest.fixture
def start_django_worker(
    start_worker: StartWorker, queue: Queue, django_env: dict[str, str]
) -> Callable[..., WorkerProcess]:
    """``sandboxq worker sandboxq.contrib.django tests.django_project.tasks -q QUEUE``."""

    def start(procs: int = 1, env: dict[str, str] | None = None, **options: Any) -> WorkerProcess:
        modules = ("sandboxq.contrib.django", "tests.django_project.tasks")
        env = {**django_env, **(env or {})}
        return start_worker("-q", queue.name, modules=modules, env=env, procs=procs, **options)

    return start


def refreshed_until(result: Any, reached: Callable[[Any], bool], what: str) -> Any:
    """Refresh ``result`` until ``reached(result)`` (20 s at most); return it."""

    def check() -> bool:
        result.refresh()
        return reached(result)

    wait_until(check, 20.0, f"task {result.id} {what}")
    return result


# (statuses compare equal to their names: the framework's are TextChoices)
def finished(result: Any) -> Any:
    return refreshed_until(result, lambda r: bool(r.is_finished), "to finish")


def running(result: Any) -> Any:
    return refreshed_until(result, lambda r: r.status == "RUNNING", "to run")


def near_now(when: datetime | None) -> bool:
    return when is not None and when.tzinfo is not None and abs(time.time() - when.timestamp()) < 60


# -- running tasks -------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_a_task_runs_on_a_worker_and_its_result_reads_back(
    tasks: ModuleType, backend: Any, queue: Queue, start_django_worker: Callable[..., WorkerProcess]
) -> None:
    # Given a task enqueued through the framework
    result = tasks.add.using(queue_name=queue.name).enqueue(2, 3)
    # Then it is READY, and its id is the id of a sandboxq job in the task's queue
    assert result.status == "READY"
    assert result.backend == "default" and near_now(result.enqueued_at)
    job = queue.get_job(result.id)
    assert job is not None and job.name == "django.task" and job.state == "waiting"
    assert job.data == {
        "task": "tests.django_project.tasks.add",
        "args": [2, 3],
        "kwargs": {},
        "backend": "default",
    }
    context = tasks.introspect.using(queue_name=queue.name).enqueue()
    coroutine = tasks.add_async.using(queue_name=queue.name).enqueue(4, 5)

    # When a worker runs it
    worker = start_django_worker()
    finished(result)
    # Then the result says what the task returned, and when
    assert result.status == "SUCCESSFUL"
    assert result.return_value["sum"] == 5
    assert result.return_value["pid"] not in (os.getpid(), worker.pid)
    assert result.errors == [] and result.attempts == 1
    assert near_now(result.started_at) and near_now(result.finished_at)
    # (times of one job come from the worker's and Redis's clocks: a few ms apart)
    slack = timedelta(milliseconds=50)
    assert result.enqueued_at - slack <= result.started_at <= result.finished_at + slack
    assert result.last_attempted_at == result.started_at
    # and the backend reads the same result back by id
    again = backend.get_result(result.id)
    assert (again.status, again.return_value, again.args) == (
        result.status,
        {**result.return_value},
        [2, 3],
    )
    assert again.task.func is tasks.add.func and again.task.queue_name == queue.name
    assert tasks.add.get_result(result.id).id == result.id
    # and a task that takes the context gets its own result and attempt
    assert finished(context).return_value == {"id": context.id, "attempt": 1}
    # and an async def task runs too
    assert finished(coroutine).return_value["sum"] == 9


@pytest.mark.timeout(60)
def test_a_failing_task_fails_with_its_exception_class_and_traceback(
    tasks: ModuleType, queue: Queue, start_django_worker: Callable[..., WorkerProcess]
) -> None:
    on_queue = {
        name: getattr(tasks, name).using(queue_name=queue.name)
        for name in ("explode", "unreturnable")
    }
    mine = on_queue["explode"].enqueue("boom 7")
    builtin = on_queue["explode"].enqueue("plain", builtin=True)
    unreturnable = on_queue["unreturnable"].enqueue()
    start_django_worker()
    for result in (mine, builtin, unreturnable):
        finished(result)
        assert result.status == "FAILED"
        with pytest.raises(ValueError, match="Task failed"):
            _ = result.return_value
        assert result.attempts == 1 and near_now(result.finished_at)

    [error] = mine.errors
    assert error.exception_class_path == "tests.django_project.tasks.TaskBoom"
    assert error.exception_class is tasks.TaskBoom
    assert "raise TaskBoom(message)" in error.traceback
    assert error.traceback.rstrip().endswith("tests.django_project.tasks.TaskBoom: boom 7")
    [error] = builtin.errors
    assert error.exception_class_path == "builtins.ValueError"
    assert error.exception_class is ValueError
    assert error.traceback.rstrip().endswith("ValueError: plain")
    [error] = unreturnable.errors
    assert error.exception_class is TypeError
    assert (
        "task tests.django_project.tasks.unreturnable returned a value JSON cannot hold"
        in error.traceback
    )


@pytest.mark.timeout(60)
def test_a_task_the_worker_stops_fails_with_the_workers_reason(
    django_env: dict[str, str],
    queue: Queue,
    redis_url: str,
    tmp_path: Path,
    start_django_worker: Callable[..., WorkerProcess],
) -> None:
    from django.test import override_settings

    # Given a backend whose OPTIONS give every job a 0.5 s timeout
    with override_settings(TASKS=tasks_setting(queue, redis_url, OPTIONS={"timeout": 0.5})):
        import tests.django_project.tasks as tasks

        result = tasks.wait_for_file.using(queue_name=queue.name).enqueue(str(tmp_path / "never"))
        assert queue.get_job(result.id).timeout == 0.5
        start_django_worker()
        finished(result)
    # Then the task failed without an exception of its own: sandboxq's is named
    assert result.status == "FAILED"
    [error] = result.errors
    assert error.exception_class_path == "sandboxq.errors.JobFailed"
    assert error.traceback == "timed out after 0.5s"


@pytest.mark.timeout(60)
def test_a_running_task_is_running(
    tasks: ModuleType,
    queue: Queue,
    tmp_path: Path,
    start_django_worker: Callable[..., WorkerProcess],
) -> None:
    release = tmp_path / "release"
    result = tasks.wait_for_file.using(queue_name=queue.name).enqueue(str(release))
    start_django_worker()

    running(result)
    assert result.attempts == 1 and result.finished_at is None
    with pytest.raises(ValueError, match="not finished yet"):
        _ = result.return_value
    release.write_text("done")
    assert finished(result).return_value == "done"


@pytest.mark.timeout(60)
def test_the_child_uses_the_database(
    tasks: ModuleType, queue: Queue, start_django_worker: Callable[..., WorkerProcess]
) -> None:
    from tests.django_project.models import Note

    # Given a row this process wrote (autocommit: committed)
    note = Note.objects.create(text="written by the test")
    # When tasks on two children read it
    results = [tasks.read_note.using(queue_name=queue.name).enqueue(note.pk) for _ in range(4)]
    worker = start_django_worker(procs=2)
    children = set(worker.wait_pool_size(2, timeout=10))
    # Then each reads it through a connection of its own child
    for result in results:
        value = finished(result).return_value
        assert value["text"] == "written by the test"
        assert value["pid"] in children


@pytest.mark.timeout(60)
def test_a_child_leaves_the_connection_it_inherited_alone(
    tasks: ModuleType,
    queue: Queue,
    start_django_worker: Callable[..., WorkerProcess],
) -> None:
    # Given a worker whose parent holds a database connection when it forks
    result = tasks.inherited_connection.using(queue_name=queue.name).enqueue()
    start_django_worker(env={"SANDBOXQ_TEST_PARENT_DB": "1"})
    # Then the child queried on a connection of its own, and did not close
    # the inherited one (which would end the parent's session on a server)
    assert finished(result).return_value == {"own": True, "inherited_open": True}


# -- priority and run_after ------------------------------------------------------------
@pytest.mark.timeout(60)
def test_a_higher_django_priority_runs_first(
    tasks: ModuleType,
    queue: Queue,
    tmp_path: Path,
    start_django_worker: Callable[..., WorkerProcess],
) -> None:
    record = tmp_path / "order"
    priorities = {"low": -100, "mid": 0, "high": 10, "urgent": 100, "lower": -5}
    results = [
        tasks.record.using(queue_name=queue.name, priority=p).enqueue(label, str(record))
        for label, p in priorities.items()
    ]
    # Each job's sandboxq priority is the task's, negated (lower runs first there)
    assert [queue.get_job(r.id).priority for r in results] == [-p for p in priorities.values()]
    assert [r.task.priority for r in results] == list(priorities.values())
    # One child runs them one at a time, most urgent first
    start_django_worker(procs=1)
    wait_for_jobs(queue, [r.id for r in results], timeout=20)
    assert record.read_text().split() == ["urgent", "high", "mid", "lower", "low"]
    # and a result read back carries the task's priority
    assert tasks.record.get_result(results[3].id).task.priority == 100


@pytest.mark.timeout(60)
def test_run_after_delays_the_job_until_then(
    tasks: ModuleType, queue: Queue, start_django_worker: Callable[..., WorkerProcess]
) -> None:
    add = tasks.add.using(queue_name=queue.name)
    # A task due in an hour waits in sandboxq's delayed set, due then
    later = add.using(run_after=datetime.now(UTC) + timedelta(hours=1)).enqueue(1, 1)
    assert queue.get_job(later.id).state == "delayed"
    due_ms = queue.client.zscore(queue.keys.delayed, later.id)
    assert abs(due_ms / 1000 - (time.time() + 3600)) < 60
    assert later.status == "READY"
    assert later.refresh() is None and later.status == "READY"
    # A run_after in the past is no delay at all
    past = add.using(run_after=datetime.now(UTC) - timedelta(hours=1)).enqueue(1, 2)
    assert queue.get_job(past.id).state == "waiting"
    # and a task due in a second starts once it is due, not before
    soon_at = datetime.now(UTC) + timedelta(seconds=1)
    soon = add.using(run_after=soon_at).enqueue(1, 3)
    start_django_worker()
    finished(soon)
    assert soon.return_value["sum"] == 4
    assert soon.started_at >= soon_at - timedelta(milliseconds=5)
    assert finished(past).status == "SUCCESSFUL"
    later.refresh()
    assert later.status == "READY" and later.started_at is None


# -- enqueue on commit -------------------------------------------------------------------
def test_enqueue_on_commit_waits_for_the_transaction(
    django_env: dict[str, str], queue: Queue, redis_url: str
) -> None:
    from django.db import transaction
    from django.test import override_settings

    class Rollback(Exception):
        pass

    with override_settings(TASKS=tasks_setting(queue, redis_url, ENQUEUE_ON_COMMIT=True)):
        import tests.django_project.tasks as tasks

        add = tasks.add.using(queue_name=queue.name)
        # Inside a transaction nothing is enqueued until it commits
        with transaction.atomic():
            committed = add.enqueue(1, 2)
            assert queue.get_job(committed.id) is None
            assert committed.enqueued_at is None
        assert queue.get_job(committed.id).name == "django.task"
        assert near_now(committed.enqueued_at)
        # and a transaction rolled back never enqueues its tasks
        with pytest.raises(Rollback), transaction.atomic():
            rolled_back = add.enqueue(3, 4)
            raise Rollback
        assert queue.get_job(rolled_back.id) is None
        assert committed.task.get_backend().enqueue_on_commit
        # Outside a transaction it is enqueued at once
        direct = add.enqueue(5, 6)
        assert queue.get_job(direct.id) is not None
    assert_counts(queue, waiting=2)


def test_without_enqueue_on_commit_a_transaction_does_not_hold_tasks(
    tasks: ModuleType, backend: Any, queue: Queue
) -> None:
    from django.db import transaction

    assert not backend.enqueue_on_commit
    with transaction.atomic():
        result = tasks.add.using(queue_name=queue.name).enqueue(1, 2)
        assert queue.get_job(result.id) is not None


# -- asyncio -------------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_aenqueue_and_aget_result_use_sandboxq_aio(
    tasks: ModuleType, backend: Any, queue: Queue, start_django_worker: Callable[..., WorkerProcess]
) -> None:
    from sandboxq.aio import AsyncQueue
    from sandboxq.contrib.django.compat import TaskResultDoesNotExist

    start_django_worker()

    async def main() -> tuple[Any, Any]:
        result = await tasks.add.using(queue_name=queue.name).aenqueue(20, 22)
        assert result.status == "READY" and near_now(result.enqueued_at)
        async_queue = backend.async_queue(queue.name)
        assert (
            isinstance(async_queue, AsyncQueue) and backend.async_queue(queue.name) is async_queue
        )
        job = await async_queue.get_job(result.id)
        await job.wait(timeout=20)
        await result.arefresh()
        with pytest.raises(TaskResultDoesNotExist):
            await backend.aget_result("no-such-task")
        read_back = await tasks.add.aget_result(result.id)
        await backend.aclose()
        return result, read_back

    result, read_back = asyncio.run(main())
    assert result.status == "SUCCESSFUL" and result.return_value["sum"] == 42
    assert read_back.return_value == result.return_value

    # A second event loop gets clients of its own (a client belongs to its loop)
    async def read_again() -> Any:
        try:
            return await backend.aget_result(result.id)
        finally:
            await backend.aclose()

    assert asyncio.run(read_again()).status == "SUCCESSFUL"


# -- refusals -------------------------------------------------------------------------
def test_arguments_json_cannot_hold_are_refused_naming_the_task(
    tasks: ModuleType, queue: Queue
) -> None:
    add = tasks.add.using(queue_name=queue.name)
    with pytest.raises(TypeError, match=r"arguments of task tests\.django_project\.tasks\.add"):
        add.enqueue(object(), 1)
    with pytest.raises(TypeError, match=r"arguments of task tests\.django_project\.tasks\.add"):
        add.enqueue(1, b=datetime.now(UTC))
    with pytest.raises(
        ValueError, match=r"arguments of task tests\.django_project\.tasks\.add.*nan"
    ):
        add.enqueue(math.nan, 1)
    with pytest.raises(TypeError, match="arguments of task"):
        asyncio.run(add.aenqueue(object(), 1))  # refused before any client is made
    assert_counts(queue)


def test_an_unknown_id_does_not_exist(tasks: ModuleType, backend: Any, queue: Queue) -> None:
    from sandboxq.contrib.django.compat import TaskResultDoesNotExist

    with pytest.raises(TaskResultDoesNotExist):
        backend.get_result("no-such-task")
    with pytest.raises(TaskResultDoesNotExist):
        tasks.add.get_result("no-such-task")
    # nor is a job of the queue that is not a task
    other = queue.add("resize", {"path": "a.png"})
    with pytest.raises(TaskResultDoesNotExist):
        backend.get_result(other.id)


def test_options_become_queue_defaults_and_bad_settings_are_refused(
    django_env: dict[str, str], queue: Queue, redis_url: str
) -> None:
    from django.core.exceptions import ImproperlyConfigured

    from sandboxq.contrib.django import SandboxqBackend

    params = tasks_setting(queue, redis_url, OPTIONS={"attempts": 3, "timeout": 30})["default"]
    backend = SandboxqBackend("sq", params)
    assert backend.url == redis_url
    assert backend.queue(queue.name).defaults == {"attempts": 3, "timeout": 30}
    assert backend.queue(queue.name) is backend.queue(queue.name)
    assert backend.queue(queue.name).url == redis_url

    for bad, message in [
        ({"QUEUES": []}, "QUEUES'] is empty"),
        ({"QUEUES": ["a:b:c"]}, "one ':'"),
        ({"OPTIONS": {"priority": 5}}, "priority comes from the task"),
        ({"OPTIONS": {"colour": "red"}}, "colour"),
        ({"OPTIONS": {"attempts": 0}}, "attempts"),
    ]:
        with pytest.raises(ImproperlyConfigured, match=message):
            SandboxqBackend("sq", {**params, **bad})


@pytest.mark.timeout(60)
def test_a_cancelled_task_is_failed_saying_who_and_why(
    tasks: ModuleType,
    queue: Queue,
    tmp_path: Path,
    start_django_worker: Callable[..., WorkerProcess],
) -> None:
    from sandboxq import JobCancelled

    # A task cancelled before it ran, and one cancelled while it runs
    waiting = tasks.add.using(queue_name=queue.name).enqueue(1, 2)
    assert queue.cancel(waiting.id, reason="duplicate", by="alice") == "cancelled"
    slow = tasks.wait_for_file.using(queue_name=queue.name).enqueue(str(tmp_path / "never"))
    start_django_worker()
    running(slow)
    assert queue.cancel(slow.id, reason="too slow", by="bob") == "cancelling"
    # Both are FAILED, naming sandboxq's JobCancelled, with who asked and why
    for result, message in (
        (waiting, "cancelled by alice: duplicate"),
        (slow, "cancelled by bob: too slow (stopped while running)"),
    ):
        finished(result)
        assert result.status == "FAILED"
        [error] = result.errors
        assert error.exception_class is JobCancelled
        assert error.traceback == message


def test_a_worker_without_django_settings_does_not_start(
    start_worker: StartWorker, django_env: dict[str, str]
) -> None:
    worker = start_worker(
        modules=("sandboxq.contrib.django",),
        env={"DJANGO_SETTINGS_MODULE": ""},
        wait_ready=False,
    )
    assert worker.wait(30) == EXIT_BOOT_ERROR
    assert "set DJANGO_SETTINGS_MODULE" in worker.log


def test_current_job_is_only_for_a_task_a_worker_runs() -> None:
    from sandboxq.contrib.django import current_job

    with pytest.raises(RuntimeError, match="for a Django task that a sandboxq worker runs"):
        current_job()


# -- the worker as Django users start it: the Redis of the settings ---------------------
#: How Django users start a worker. ``python -m django`` runs what manage.py runs.
MANAGE_PY = ("django", "sandboxq_worker")
SANDBOXQ_WORKER = ("sandboxq", "worker", "sandboxq.contrib.django")


def on_db(url: str, db: int) -> str:
    """The session server's URL (a unix socket, ``?db=0``) on another database."""
    assert url.endswith("?db=0"), url
    return f"{url[: -len('0')]}{db}"


@pytest.fixture
def start_settings_worker(
    start_command_worker: Callable[..., WorkerProcess], django_env: dict[str, str]
) -> Callable[..., WorkerProcess]:
    """``start(command, *args, env=..., wait_ready=True)``: a worker for the
    test project run as ``command`` (MANAGE_PY or SANDBOXQ_WORKER), with no
    ``$SANDBOXQ_REDIS_URL`` in its environment: only the settings name Redis."""

    def start(
        command: tuple[str, ...],
        *args: str,
        env: dict[str, str] | None = None,
        wait_ready: bool = True,
    ) -> WorkerProcess:
        return start_command_worker(
            "-m",
            *command,
            "--procs",
            "1",
            *args,
            env={**django_env, **(env or {})},
            wait_ready=wait_ready,
        )

    return start


@pytest.fixture
def db2_queue(queue: Queue, redis_url: str) -> Iterator[Queue]:
    """The test's queue on database 2 of the session's server, emptied after."""
    other = Queue(queue.name, url=on_db(redis_url, 2))
    yield other
    other.obliterate(force=True)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("command", [MANAGE_PY, SANDBOXQ_WORKER], ids=["manage.py", "cli"])
def test_the_worker_serves_the_redis_the_settings_name_without_the_environment(
    command: tuple[str, ...],
    django_env: dict[str, str],
    queue: Queue,
    db2_queue: Queue,
    redis_url: str,
    start_settings_worker: Callable[..., WorkerProcess],
) -> None:
    from django.test import override_settings

    # Given TASKS naming Redis database 2 in OPTIONS, and tasks enqueued there
    db2 = on_db(redis_url, 2)
    with override_settings(TASKS=tasks_setting(queue, db2)):
        import tests.django_project.tasks as tasks

        added = tasks.add.using(queue_name=queue.name).enqueue(2, 3)
        reported = tasks.report.using(queue_name=queue.name).enqueue(40)
        assert db2_queue.get_job(added.id) is not None

        # When a worker starts as Django users start it, with no
        # SANDBOXQ_REDIS_URL, and no -q
        worker = start_settings_worker(command, env={"SANDBOXQ_TEST_DJANGO_URL": db2})

        # Then it serves the settings' Redis and queues, and runs the tasks
        assert finished(added).return_value["sum"] == 5
        assert f"serving TASKS 'default' at {db2}" in worker.log
        assert worker.wait_for_line(r"worker ready").string.endswith(
            f"queues=default,{queue.name} procs=1"
        )
        # and a task reported progress and a log line through its context alone
        assert finished(reported).return_value == 1
        job = reported.task.get_backend().get_job(reported.id)
        assert (job.progress, job.logs()) == (40, ["at 40%"])
    assert sum(queue.counts().values()) == 0  # nothing went to database 0


@pytest.mark.timeout(60)
def test_backends_on_two_redis_servers_take_one_worker_each(
    django_env: dict[str, str],
    queue: Queue,
    redis_url: str,
    start_settings_worker: Callable[..., WorkerProcess],
) -> None:
    # Given two backends on two Redis databases
    urls = {"SANDBOXQ_TEST_DJANGO_URL": on_db(redis_url, 2)}
    urls["SANDBOXQ_TEST_DJANGO_OTHER_URL"] = on_db(redis_url, 3)

    # When one worker is asked to serve both, it refuses, naming them
    for command in (MANAGE_PY, SANDBOXQ_WORKER):
        both = start_settings_worker(command, env=urls, wait_ready=False)
        assert both.wait(30) == EXIT_BOOT_ERROR
        assert "TASKS backends served are on different Redis servers" in both.log
        assert f"'other' at {on_db(redis_url, 3)}" in both.log

    # And a --url that is not the backend's is refused, not served
    elsewhere = start_settings_worker(
        MANAGE_PY, "--backend", "other", "--url", redis_url, env=urls, wait_ready=False
    )
    assert elsewhere.wait(30) == EXIT_BOOT_ERROR
    assert f"--url {redis_url} is not the Redis TASKS['other'] enqueues to" in elsewhere.log

    # Then one worker per backend serves each (by --backend, or by its queues)
    other = start_settings_worker(MANAGE_PY, "--backend", "other", env=urls)
    assert other.wait_for_line(r"worker ready").string.endswith("queues=other procs=1")
    assert f"serving TASKS 'other' at {on_db(redis_url, 3)}" in other.log
    default = start_settings_worker(SANDBOXQ_WORKER, "-q", queue.name, env=urls)
    assert f"serving TASKS 'default' at {on_db(redis_url, 2)}" in default.log


def test_manage_py_sandboxq_worker_help_lists_every_worker_option(
    django_env: dict[str, str],
) -> None:
    from sandboxq.cli import build_parser

    # When a Django user asks manage.py for the command's help
    shown = subprocess.run(
        [sys.executable, "-m", "django", "sandboxq_worker", "--help"],
        env={**os.environ, **django_env},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout

    # Then it lists every option of `sandboxq worker`, and --backend
    commands = next(a for a in build_parser()._actions if a.dest == "command")
    worker = commands.choices["worker"]  # type: ignore[index]
    options = {option for action in worker._actions for option in action.option_strings}
    assert "--max-memory-per-child" in options
    missing = sorted(option for option in options if option not in shown)
    assert missing == []
    assert "--backend NAME" in shown
