"""The dashboard in a real browser (Debian's Chromium driven by Playwright),
against a real Redis, a real worker and uvicorn on a free port: log in, watch
the overview refresh, open a failed job, read its traceback, click Retry and
see the job complete without reloading the page.

Needs ``/usr/bin/chromium`` (``apt-get install chromium``; ``.ci/run`` installs
it). Without it these tests FAIL, saying so; set ``SANDBOXQ_BROWSER_TESTS=0``
to skip them on a machine without a browser. ``playwright install`` is never
needed: the system Chromium is launched.
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sandboxq import Queue
from sandboxq.dashboard import app
from sandboxq.stats import bucket, flush_commands, minute_of
from tests.worker_harness import WorkerProcess, wait_for_job, wait_for_jobs

pytestmark = pytest.mark.integration

CHROMIUM = os.environ.get("SANDBOXQ_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
TOKEN = "browser-test-token"
#: Where the screenshots go: the README's pictures when asked for
#: (SANDBOXQ_SCREENSHOTS=docs/img), else the test's temp dir, so a test run
#: leaves the checkout unchanged.
SCREENSHOTS = os.environ.get("SANDBOXQ_SCREENSHOTS")
HOW_TO_INSTALL = (
    "install Debian's Chromium (as root: apt-get update && apt-get install -y chromium) "
    "and the test extra (pip install -e '.[test]'), or set SANDBOXQ_BROWSER_TESTS=0 to skip "
    "the browser tests"
)


def _browser_missing() -> str | None:
    if not Path(CHROMIUM).exists():
        return f"no Chromium at {CHROMIUM}"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright Python package is not installed"
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    missing = _browser_missing()
    if missing is not None:
        if os.environ.get("SANDBOXQ_BROWSER_TESTS") == "0":
            pytest.skip(f"{missing} (SANDBOXQ_BROWSER_TESTS=0)")
        pytest.fail(f"browser tests cannot run: {missing}; {HOW_TO_INSTALL}", pytrace=False)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        launched = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def server(redis_url: str, queue: Queue) -> Iterator[str]:
    """uvicorn serving the dashboard (token auth) in a thread; its base URL."""
    with _serving(redis_url, [queue.name]) as base:
        yield base


@contextlib.contextmanager
def _serving(redis_url: str, queues: list[str]) -> Iterator[str]:
    import uvicorn

    application = app(redis_url, token=TOKEN, queues=queues)
    port = _free_port()
    config = uvicorn.Config(application, host="127.0.0.1", port=port, log_level="warning")
    uv = uvicorn.Server(config)
    thread = threading.Thread(target=uv.run, name="dashboard", daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not uv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    uv.should_exit = True
    thread.join(10)
    application.client.close()


def _status(url: str, data: bytes | None = None) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=10) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def _log_in(page: Any) -> None:
    """Fill in and send the login form the page shows, as user e2e."""
    page.fill("input[name=username]", "e2e")
    page.fill("input[name=password]", TOKEN)
    page.click("button[type=submit]")


def test_unauthenticated_requests_get_401_and_posts_need_csrf(
    browser: Any, server: str, queue: Queue
) -> None:
    queue.add("ok")
    assert _status(f"{server}/") == 401
    assert _status(f"{server}/api/queues") == 401
    assert _status(f"{server}/queues/{queue.name}/pause", data=b"") == 401
    context = browser.new_context()
    try:
        page = context.new_page()
        first = page.goto(f"{server}/")
        assert first is not None and first.status == 401
        assert page.locator("input[type=password]").is_visible()
        _log_in(page)
        page.wait_for_selector("#queues")
        # Logged in (cookie), but a POST without the CSRF token is refused.
        refused = context.request.post(f"{server}/queues/{queue.name}/pause", form={})
        assert refused.status == 403
        assert not queue.is_paused()
    finally:
        context.close()


def test_log_out_ends_the_session_for_good(browser: Any, server: str, queue: Queue) -> None:
    queue.add("ok")
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(f"{server}/login")
        _log_in(page)
        page.wait_for_selector("#queues")
        assert "e2e (unverified)" in page.locator("header .who").inner_text()
        cookies = {c["name"]: c["value"] for c in context.cookies()}
        page.get_by_role("button", name="Log out").click()
        page.wait_for_selector("input[type=password]")
        # The cookie, replayed from elsewhere after the logout, is refused.
        replay = browser.new_context()
        try:
            replay.add_cookies([{"name": k, "value": v, "url": server} for k, v in cookies.items()])
            assert replay.request.get(f"{server}/api/queues").status == 401
        finally:
            replay.close()
    finally:
        context.close()


def test_failed_job_traceback_retry_and_live_refresh(
    browser: Any,
    server: str,
    queue: Queue,
    start_worker: Callable[..., WorkerProcess],
    tmp_path: Path,
) -> None:
    from playwright.sync_api import expect

    start_worker(procs=1)
    for i in range(3):
        wait_for_job(queue, queue.add("ok", {"n": i}).id)
    wait_for_job(queue, queue.add("raise_error", {"n": "x"}).id)
    marker = tmp_path / "fixed"
    job = queue.add("fail_until_marker", {"marker": str(marker), "password": "hunter2"})
    assert wait_for_job(queue, job.id).state == "failed"

    context = browser.new_context(viewport={"width": 1280, "height": 800})
    try:
        page = context.new_page()
        page.goto(f"{server}/login")
        _log_in(page)
        row = page.locator(f'#queues tr[data-queue="{queue.name}"]')
        row.wait_for()
        assert row.locator('[data-count="failed"]').inner_text() == "2"
        assert row.locator('[data-count="completed"]').inner_text() == "3"
        page.screenshot(path=str(tmp_path / "overview.png"), full_page=True)

        # Live refresh: a job completes and the count changes without a reload.
        page.evaluate("window.__notReloaded = true")
        wait_for_job(queue, queue.add("ok").id)
        expect(row.locator('[data-count="completed"]')).to_have_text("4", timeout=10_000)
        assert page.evaluate("window.__notReloaded") is True

        # The failed jobs list, then the job page with its traceback.
        row.locator('[data-count="failed"] a').click()
        page.locator(f'#jobs tr[data-job="{job.id}"] a').click()
        page.wait_for_selector('[data-field="state"]')
        assert page.locator('[data-field="state"]').inner_text() == "failed"
        traceback = page.locator('[data-field="traceback"]').inner_text()
        assert "Traceback" in traceback and "marker file" in traceback
        assert "hunter2" not in page.content()
        page.screenshot(path=str(tmp_path / "job.png"), full_page=True)
        assert (tmp_path / "overview.png").stat().st_size > 0

        # Fix the cause, click Retry, watch the job complete in place.
        marker.touch()
        page.evaluate("window.__notReloaded = true")
        page.get_by_role("button", name="Retry").click()
        expect(page.locator('[data-field="state"]')).to_have_text("completed", timeout=15_000)
        assert page.evaluate("window.__notReloaded") is True
        assert '"fixed": true' in page.locator('[data-field="result"]').inner_text()
        assert not page.get_by_role("button", name="Retry").is_visible()
        audit = queue.get_job(job.id).audit()  # type: ignore[union-attr]
        assert audit[-1]["by"] == "dashboard:e2e (unverified)" and audit[-1]["action"] == "retry"
    finally:
        context.close()


def _fail(job: Any) -> None:
    raise ValueError(f"cannot reach {job.data['host']}")


def test_select_two_failed_jobs_and_retry_them(browser: Any, server: str, queue: Queue) -> None:
    from playwright.sync_api import expect

    from sandboxq.testing import run_until_empty

    ids = [queue.add("sync_account", {"host": f"db-{i}"}).id for i in range(3)]
    run_until_empty(queue, {"sync_account": _fail})
    assert all(queue.get_job(i).state == "failed" for i in ids)  # type: ignore[union-attr]
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    try:
        page = context.new_page()
        page.goto(f"{server}/login")
        _log_in(page)
        page.wait_for_selector("#queues")
        page.goto(f"{server}/queues/{queue.name}?state=failed")
        rows = page.locator("#jobs tr[data-job]")
        expect(rows).to_have_count(3)
        page.evaluate("window.__notReloaded = true")
        for job_id in ids[:2]:
            page.locator(f'#jobs tr[data-job="{job_id}"] input[name="ids"]').check()
        page.get_by_role("button", name="Retry selected").click()
        expect(page.locator("#flash")).to_have_text("retry: 2 of 2 job(s)", timeout=10_000)
        expect(rows).to_have_count(1, timeout=10_000)  # the list refreshed in place
        assert page.locator("#jobs tr[data-job]").get_attribute("data-job") == ids[2]
        assert page.evaluate("window.__notReloaded") is True
        states = [queue.get_job(i).state for i in ids]  # type: ignore[union-attr]
        assert states == ["waiting", "waiting", "failed"]
        for job_id in ids[:2]:
            audit = queue.get_job(job_id).audit()  # type: ignore[union-attr]
            assert audit[-1]["by"] == "dashboard:e2e (unverified)"
            assert audit[-1]["action"] == "retry"
        # "Retry all failed" asks first: dismissed, nothing happens; accepted, it runs.
        asked: list[str] = []
        page.once("dialog", lambda dialog: (asked.append(dialog.message), dialog.dismiss()))
        page.get_by_role("button", name="Retry all failed").click()
        assert asked == [f"Retry all 1 failed jobs of queue {queue.name}?"]
        assert queue.get_job(ids[2]).state == "failed"  # type: ignore[union-attr]
        page.once("dialog", lambda dialog: dialog.accept())
        page.get_by_role("button", name="Retry all failed").click()
        expect(page.locator("#flash")).to_have_text("retried 1 failed job(s)", timeout=10_000)
        assert queue.get_job(ids[2]).state == "waiting"  # type: ignore[union-attr]
    finally:
        context.close()


def _demo_history(queue: Queue) -> None:
    """The hour before: what the demo's workers would have counted (the
    charts' hashes, written as a worker's step writes them)."""
    now = minute_of(int(time.time() * 1000))
    counts: dict[tuple[str, int, str], int] = {}
    pipe = queue.client.pipeline(transaction=False)
    for back in range(1, 60):
        minute, wave = now - back, 1 + math.sin(back / 7)
        thumbs, failed = int(40 * wave) + back % 5, (back % 11 == 0) + (back % 17 == 0)
        counts[(queue.name, minute, "completed")] = thumbs + (back % 15 == 0)
        counts[(queue.name, minute, "failed")] = failed
        counts[(queue.name, minute, f"rt:{bucket(150)}:thumbnail")] = int(thumbs * 0.8)
        counts[(queue.name, minute, f"rt:{bucket(400)}:thumbnail")] = thumbs - int(thumbs * 0.8)
        if back % 15 == 0:
            counts[(queue.name, minute, f"rt:{bucket(1800)}:export-csv")] = 1
        waiting, active = int(120 * wave * (back % 30) / 30), 2 if back % 30 else 0
        pipe.hset(queue.keys.stats(minute), mapping={"waiting": waiting, "active": active})
    for command in flush_commands({queue.name: queue.keys}, counts):
        pipe.execute_command(*command)
    pipe.execute()


@pytest.mark.timeout(120)
def test_readme_screenshots_of_the_demo_queue(browser: Any, redis_url: str, tmp_path: Path) -> None:
    """The README's pictures (``make screenshots`` writes them to docs/img):
    the demo's queue (``sandboxq demo``'s handlers, run by a real worker
    from a scratch directory, so every path shown is relative), an hour of
    its counts, a failed thumbnail and the charts."""
    from playwright.sync_api import expect

    from sandboxq import demo
    from sandboxq.testing import WorkerProcess as Worker

    queue = Queue(demo.QUEUE, url=redis_url)
    queue.obliterate(force=True)
    (tmp_path / "demo-output" / "thumbnails").mkdir(parents=True)
    worker = Worker(("sandboxq.demo",), url=redis_url, procs=2, cwd=tmp_path)
    try:
        _demo_history(queue)
        worker.start()
        out = {"out_dir": "demo-output"}
        ids = [queue.add("thumbnail", {"seed": seed, **out}).id for seed in range(24)]
        ids.append(queue.add("export-csv", {"rows": 20_000, **out}).id)
        broken = queue.add("thumbnail", {"seed": 7, "out_dir": "demo-output/archive"}).id
        wait_for_jobs(queue, [*ids, broken], timeout=60)
        queue.add("thumbnail", {"seed": 99, **out}, delay=3600)
        shots = Path(SCREENSHOTS) if SCREENSHOTS else tmp_path
        shots.mkdir(parents=True, exist_ok=True)
        with _serving(redis_url, [demo.QUEUE]) as base:
            context = browser.new_context(viewport={"width": 1280, "height": 720})
            try:
                page = context.new_page()
                page.goto(f"{base}/login")
                page.fill("input[name=username]", "alice")
                page.fill("input[name=password]", TOKEN)
                page.click("button[type=submit]")
                row = page.locator(f'#queues tr[data-queue="{demo.QUEUE}"]')
                expect(row.locator('[data-count="completed"]')).to_have_text("25")
                page.screenshot(path=str(shots / "dashboard-overview.png"), full_page=True)

                page.goto(f"{base}/queues/{demo.QUEUE}/jobs/{broken}")
                expect(page.locator('[data-field="state"]')).to_have_text("failed")
                # Down to the error: the traceback below it shows the checkout's paths.
                bottom = page.locator("#traceback").bounding_box()
                assert bottom is not None
                page.screenshot(
                    path=str(shots / "dashboard-job.png"),
                    clip={"x": 0, "y": 0, "width": 1280, "height": bottom["y"]},
                    full_page=True,
                )

                page.goto(f"{base}/queues/{demo.QUEUE}/charts")
                expect(page.locator('[data-chart="throughput"] g.bar')).to_have_count(60)
                page.screenshot(path=str(shots / "dashboard-charts.png"), full_page=True)
                for name in ("overview", "job", "charts"):
                    assert (shots / f"dashboard-{name}.png").stat().st_size > 0
            finally:
                context.close()
    finally:
        worker.cleanup()
        queue.obliterate(force=True)
        for key in queue.client.scan_iter(match=queue.keys.stats(0)[:-1] + "*"):
            queue.client.delete(key)
        queue.client.close()
