"""examples/django_export, run as its README says: ``manage.py migrate``,
``manage.py runserver`` and ``manage.py sandboxq_worker``, all real
processes, talking over HTTP, SQLite and Redis: database 2, named by the
settings alone (no ``SANDBOXQ_REDIS_URL`` in any of their environments)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sandboxq import Queue
from tests.web_servers import call, serving
from tests.worker_harness import ROOT, WorkerProcess, wait_for_counts

pytestmark = pytest.mark.integration

EXAMPLE = ROOT / "examples" / "django_export"
StartWorker = Callable[..., WorkerProcess]


def on_db_2(url: str) -> str:
    """The session server's URL (a unix socket, ``?db=0``) on database 2."""
    assert url.endswith("?db=0"), url
    return url.removesuffix("0") + "2"


@pytest.fixture
def site_env(redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.delenv("SANDBOXQ_REDIS_URL", raising=False)  # the settings name Redis
    env = {
        # (manage.py's default, set here for a test session that set another)
        "DJANGO_SETTINGS_MODULE": "exportsite.settings",
        "PYTHONPATH": str(EXAMPLE),
        "EXPORT_DIR": str(tmp_path),
        "EXPORT_REDIS_URL": on_db_2(redis_url),
    }
    migrate = subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput"],
        cwd=EXAMPLE,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert migrate.returncode == 0, migrate.stdout + migrate.stderr
    return env


@pytest.fixture
def exports(redis_url: str) -> Iterator[Queue]:
    queue = Queue("exports", url=on_db_2(redis_url))
    yield queue
    queue.obliterate(force=True)


@pytest.fixture
def web(site_env: dict[str, str]) -> Iterator[str]:
    """``manage.py runserver``; its base URL once it serves."""
    with serving(
        lambda port: [sys.executable, "manage.py", "runserver", f"127.0.0.1:{port}", "--noreload"],
        cwd=EXAMPLE,
        env=site_env,
        ready="development server at",  # Django 6.1 says "Starting WSGI development server"
    ) as url:
        yield url


@pytest.mark.timeout(180)
def test_exports_run_on_the_worker_and_a_rolled_back_request_enqueues_nothing(
    start_command_worker: StartWorker, exports: Queue, web: str, site_env: dict[str, str]
) -> None:
    # Given the queue paused, so exports pile up
    exports.pause()

    # When four exports are asked for, and the view allows three pending
    replies = [call(f"{web}/exports", form={"rows": 20_000}) for _ in range(4)]

    # Then three are accepted, the fourth refused, and its job never added
    assert [status for status, _h, _b in replies] == [202, 202, 202, 429]
    assert exports.counts()["waiting"] == 3

    # When `manage.py sandboxq_worker` serves the settings' queues
    worker = start_command_worker(
        "manage.py", "sandboxq_worker", "--procs", "2", env=site_env, cwd=EXAMPLE
    )
    assert worker.wait_for_line("worker ready").string.endswith("queues=exports procs=2")
    exports.resume()

    # Then each export's CSV is built, with its progress reported
    wait_for_counts(exports, lambda c: c["completed"] == 3, 90, "the three exports")
    for _status, headers, _body in replies[:3]:
        status = call(web + headers["Location"])[2]
        assert (status["status"], status["progress"], status["errors"]) == ("SUCCESSFUL", 100, [])
        lines = Path(status["path"]).read_text().splitlines()
        assert lines[0] == "order,customer,amount,currency"
        assert len(lines) == 20_001
