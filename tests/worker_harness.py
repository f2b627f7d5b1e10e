"""Run a real ``sandboxq worker`` subprocess and watch it from a test.

``WorkerProcess`` starts ``python -m sandboxq worker tests.jobs ...`` in its
own process group, drains its stderr in a thread (a worker whose stderr pipe
fills up blocks on logging), waits for log lines, sends signals and finds
its children through ``/proc``. ``wait_for_job`` and ``wait_until`` poll
Redis with a deadline: polling a condition is fine, a fixed sleep standing
in for readiness is not.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from sandboxq import Job, Queue, testing
from sandboxq.testing import READY as READY  # for the tests, with the rest
from sandboxq.testing import WorkerTimeout

ROOT = Path(__file__).resolve().parent.parent

CHILD_TITLE = "sandboxq child"
FINISHED = ("completed", "failed")

#: How often the helpers look again while waiting for a condition.
POLL_SECONDS = 0.01

T = TypeVar("T")


def wait_until(
    condition: Callable[[], T], timeout: float, what: str, poll: float = POLL_SECONDS
) -> T:
    """Call ``condition`` until it returns something truthy; return that.
    Raises WorkerTimeout naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise WorkerTimeout(f"timed out after {timeout}s waiting for {what}")
        time.sleep(poll)


def wait_for_job(
    queue: Queue, job_id: str, states: Sequence[str] = FINISHED, timeout: float = 10.0
) -> Job:
    """Poll until the job is in one of ``states``; return it."""

    def reached() -> Job | None:
        job = queue.get_job(job_id)
        return job if job is not None and job.state in states else None

    try:
        return wait_until(reached, timeout, f"job {job_id} to be {'/'.join(states)}")
    except WorkerTimeout:
        job = queue.get_job(job_id)
        raise WorkerTimeout(
            f"job {job_id} still {job.state if job else 'missing'} after {timeout}s "
            f"(wanted {'/'.join(states)}); fields: {job.fields if job else None}"
        ) from None


def wait_for_jobs(
    queue: Queue, job_ids: Iterable[str], states: Sequence[str] = FINISHED, timeout: float = 10.0
) -> dict[str, Job]:
    """Poll until every job is in one of ``states``; return them by id."""
    deadline = time.monotonic() + timeout
    return {
        job_id: wait_for_job(queue, job_id, states, max(deadline - time.monotonic(), 0.0))
        for job_id in job_ids
    }


def wait_for_counts(
    queue: Queue, predicate: Callable[[dict[str, int]], bool], timeout: float, what: str
) -> dict[str, int]:
    """Poll ``queue.counts()`` until ``predicate`` accepts it; return it."""
    last: dict[str, int] = {}

    def check() -> dict[str, int] | None:
        nonlocal last
        last = queue.counts()
        return last if predicate(last) else None

    try:
        return wait_until(check, timeout, what)
    except WorkerTimeout:
        raise WorkerTimeout(
            f"timed out after {timeout}s waiting for {what}; counts {last}"
        ) from None


def assert_counts(queue: Queue, **expected: int) -> None:
    """The queue holds exactly ``expected`` jobs per state; every state not
    named (whatever states the queue knows) is empty."""
    counts = queue.counts()
    assert counts == {state: 0 for state in counts} | expected, counts


# -- /proc ------------------------------------------------------------------------
def process_title(pid: int) -> str | None:
    """The title a process set with setproctitle (its cmdline), or None if it
    is gone or a zombie."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    # setproctitle writes the title over argv and pads with NULs.
    title = raw.split(b"\0", 1)[0].decode(errors="replace").strip()
    return title or None


def child_pids(parent: int) -> list[int]:
    """The live children of ``parent`` (scans /proc; zombies are left out)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Fields after the "(comm)" part: state, ppid, ...; comm may hold spaces.
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        if int(ppid) == parent and state != "Z":
            found.append(int(entry.name))
    return sorted(found)


def pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


# -- the worker subprocess ------------------------------------------------------------
class WorkerProcess(testing.WorkerProcess):
    """A worker serving ``queue_name`` with the suite's handler modules
    (``tests.jobs`` by default, which registers its handlers for the queue
    named in ``$SANDBOXQ_TEST_QUEUE``), run from the repository root, plus
    what tests look at in its children.

    ``args`` are extra command-line flags.
    """

    def __init__(
        self,
        queue_name: str,
        redis_url: str,
        args: Sequence[str] = (),
        *,
        modules: Sequence[str] = ("tests.jobs",),
        env: dict[str, str] | None = None,
        procs: int | str | None = 2,
    ) -> None:
        super().__init__(
            modules,
            url=redis_url,
            procs=procs,
            args=args,
            env={"SANDBOXQ_TEST_QUEUE": queue_name, **(env or {})},
            cwd=ROOT,
        )
        self.queue_name = queue_name
        self.redis_url = redis_url

    # -- children ----------------------------------------------------------------
    def children(self) -> list[int]:
        """Pids of the pool's live children (title ``sandboxq child ...``)."""
        return [
            pid
            for pid in child_pids(self.pid)
            if (process_title(pid) or "").startswith(CHILD_TITLE)
        ]

    def child_titles(self) -> dict[int, str]:
        titles = {pid: process_title(pid) for pid in child_pids(self.pid)}
        return {pid: t for pid, t in titles.items() if t}

    def wait_pool_size(self, size: int, timeout: float = 1.0) -> list[int]:
        """Wait until exactly ``size`` children are up; return their pids."""
        try:
            return wait_until(
                lambda: (pids := self.children()) and len(pids) == size and pids,
                timeout,
                f"{size} children",
            )
        except WorkerTimeout:
            raise WorkerTimeout(
                f"pool of {self.pid} not back to {size} children within {timeout}s: "
                f"{self.child_titles()}"
            ) from None

    def child_running(self, job_name: str, job_id: str, timeout: float = 5.0) -> int:
        """The pid of the child whose title says it runs ``job_name#job_id``."""
        suffix = f": {job_name}#{job_id}"

        def find() -> int | None:
            for pid, title in self.child_titles().items():
                if title.startswith(CHILD_TITLE) and title.endswith(suffix):
                    return pid
            return None

        return wait_until(find, timeout, f"a child running {job_name}#{job_id}")


def parse_fields(line: str) -> dict[str, str]:
    """``key=value`` pairs of a text log line (values without spaces)."""
    return dict(re.findall(r"(\w+)=(\S*)", line))


def runs_recorded(path: Path) -> list[str]:
    """Job ids appended to ``path`` by handlers, one line per run."""
    if not path.exists():
        return []
    return path.read_text().split()


def job_field(queue: Queue, job_id: str, name: str) -> Any:
    value = queue.client.hget(queue.keys.job(job_id), name)
    return value.decode() if isinstance(value, bytes) else value


def run_sandboxq(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``python -m sandboxq ARGS`` from the repository root, its output captured."""
    return subprocess.run(
        [sys.executable, "-m", "sandboxq", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )
