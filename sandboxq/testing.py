"""Helpers for testing code that uses sandboxq.

``run_until_empty`` runs a queue's jobs inline, in this process;
``WorkerProcess`` runs a real worker subprocess; ``EagerQueue`` (from
:mod:`sandboxq.eager`) runs jobs with no Redis at all. The pytest plugin
(:mod:`sandboxq.pytest_plugin`) builds its fixtures on both.


``run_until_empty`` goes through the same Lua transitions as a worker
(fetch with a lease, finish, retry, backoff), but calls handlers directly:
there is no sandbox, timeout or memory limit here. It is the helper RQ's
``SimpleWorker`` and Dramatiq's ``StubBroker`` give their users.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Self

from sandboxq import execution, fast
from sandboxq.caps import MAX_STEPS
from sandboxq.eager import (
    MAX_EAGER_RUNS,
    AsyncEagerJob,
    AsyncEagerQueue,
    EagerJob,
    EagerQueue,
    no_handler,
)
from sandboxq.handlers import Handler, handlers_for
from sandboxq.queue import Queue
from sandboxq.scripts import now_ms

__all__ = [
    "MAX_EAGER_RUNS",
    "READY",
    "AsyncEagerJob",
    "AsyncEagerQueue",
    "EagerJob",
    "EagerQueue",
    "WorkerProcess",
    "WorkerTimeout",
    "run_until_empty",
]

#: Lease given to inline jobs; nothing renews it, so make it long.
_LEASE_MS = 3_600_000


def run_until_empty(
    queue: Queue,
    handlers: Mapping[str, Callable[..., Any]] | Iterable[Handler] | None = None,
    *,
    max_jobs: int | None = None,
    batch: int = 100,
    skip_delays: bool = False,
) -> dict[str, int]:
    """Run the queue's jobs until none is ready (due delayed jobs count, and
    so do retries that are due at once); return how many jobs ended in each
    status: ``completed``, ``failed`` and ``retrying``.

    ``handlers``: ``{job name: function}``, a list of handlers, or ``None``
    for those registered with ``@handler`` for this queue. A job with no
    handler fails, without retries, naming the missing handler.

    ``skip_delays``: instead of stopping at delayed jobs (``delay=``, and
    retries waiting out their backoff), move the clock on to when they are
    due and run them too, until nothing is left to run. A job that always
    asks to run again then runs for ever: bound it with ``max_jobs``.

    Raises ``ValueError`` naming the setting when a queue setting cannot be
    used (stored by something other than sandboxq): a worker would pause
    the queue.
    """
    by_name = handlers_for(queue.name, handlers)
    token = f"inline-{uuid.uuid4().hex}"
    totals: Counter[str] = Counter()
    done = 0
    while max_jobs is None or done < max_jobs:
        count = batch if max_jobs is None else min(batch, max_jobs - done)
        rows, _due, _limited, _has_limits, problem = queue.scripts.fetch(
            queue.keys, now_ms(), count, token, _LEASE_MS
        )
        if problem:
            # A worker would pause this queue; a test wants to hear why at once.
            raise ValueError(
                f"queue {queue.name!r} cannot run its jobs: {problem.decode(errors='replace')}"
            )
        if not rows:
            if skip_delays and _promote_delayed(queue):
                continue
            break
        entries = []
        for job_id, fields in fast.decode_fetched(rows):
            outcome = _run_one(queue, token, job_id, fields, by_name)
            entries.append(execution.finish_entry(job_id, fields, outcome))
        for status in queue.scripts.finish(queue.keys, now_ms(), token, entries):
            totals[status.decode()] += 1
        done += len(entries)
    return dict(totals)


def _promote_delayed(queue: Queue) -> int:
    """Promote delayed jobs as if the clock had reached the due time of the
    last of them; how many were promoted."""
    last = queue.client.zrange(queue.keys.delayed, -1, -1, withscores=True)
    if not last:
        return 0
    due: int = max(int(last[0][1]), now_ms())
    return int(queue.scripts.promote(queue.keys, due, "", _PROMOTE_LIMIT))


#: Delayed jobs moved per promote call when skipping delays.
_PROMOTE_LIMIT = 1000


def _run_one(
    queue: Queue, token: str, job_id: str, fields: dict[str, Any], by_name: dict[str, Handler]
) -> execution.Outcome:
    name = fields.get("name", "")
    found = by_name.get(name)
    if found is None:
        return no_handler(queue.name, name)

    def report(jid: str, kind: str, value: str) -> None:
        queue.scripts.report(queue.keys, token, [(jid, kind, value)])

    def record(jid: str, key: str, result: str) -> str:
        [status] = queue.scripts.step(queue.keys, token, [(jid, key, result)], MAX_STEPS)
        return str(status)

    stored = execution.StoredJob.of_record(queue.name, job_id, name, fields)
    return execution.run_stored(found.func, stored, report, record=record)


# -- a real worker, for tests -----------------------------------------------------------
READY = re.compile(r"sandboxq worker ready pid=(\d+) queues=(\S+) procs=(\d+)")


class WorkerTimeout(AssertionError):
    """A worker did not do what a test waited for in time."""


class WorkerProcess:
    """A real ``sandboxq worker`` subprocess, for tests.

    It runs ``python -m sandboxq worker MODULES`` in its own process group
    (so :meth:`kill_group` takes the parent and its children down at once),
    drains its stderr in a thread (a worker whose stderr pipe fills up blocks
    on logging), and waits for log lines instead of sleeping: :meth:`start`
    returns once the worker logged that it is ready. :meth:`stop` drains it
    as a deployment would (SIGTERM: no new jobs, the running ones finish).
    """

    def __init__(
        self,
        modules: Sequence[str],
        *,
        queues: Sequence[str] = (),
        url: str | None = None,
        procs: int | str | None = 1,
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
    ) -> None:
        command = [sys.executable, "-m", "sandboxq", "worker", *modules]
        for queue in queues:
            command += ["-q", queue]
        if procs is not None:
            command += ["--procs", str(procs)]
        self.command = [*command, *args]
        self.env = {
            **os.environ,
            **({"SANDBOXQ_REDIS_URL": url} if url else {}),
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        self.cwd = cwd
        self.process: subprocess.Popen[bytes] | None = None
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._reader: threading.Thread | None = None
        self.started_at = 0.0

    def __repr__(self) -> str:
        pid = self.process.pid if self.process else None
        return f"<{type(self).__name__} pid={pid}>"

    # -- starting --------------------------------------------------------------
    def start(self, *, wait_ready: bool = True, timeout: float = 15.0) -> Self:
        """Start the worker; unless ``wait_ready`` is False, wait (up to
        ``timeout`` seconds) until it logs that it is ready. Returns ``self``."""
        self.started_at = time.monotonic()
        self.process = subprocess.Popen(
            self.command,
            cwd=self.cwd,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        self._reader = threading.Thread(
            target=self._drain, name=f"stderr-{self.process.pid}", daemon=True
        )
        self._reader.start()
        if wait_ready:
            self.wait_for_line(READY, timeout)
        return self

    def _drain(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        for raw in self.process.stderr:
            with self._changed:
                self.lines.append(raw.decode(errors="replace").rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self.lines.append("")  # marks the end of the stream
            self._changed.notify_all()

    @property
    def pid(self) -> int:
        """The worker parent's process id."""
        assert self.process is not None, "worker not started"
        return self.process.pid

    # -- its log ---------------------------------------------------------------
    @property
    def log(self) -> str:
        """Everything the worker logged so far (its stderr)."""
        with self._changed:
            return "\n".join(self.lines)

    def wait_for_line(
        self, pattern: str | re.Pattern[str], timeout: float = 10.0, *, start: int = 0
    ) -> re.Match[str]:
        """Wait until a stderr line (from index ``start``) matches ``pattern``
        (a regex searched anywhere in the line); returns the match."""
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        seen = start
        with self._changed:
            while True:
                for line in self.lines[seen:]:
                    if found := regex.search(line):
                        return found
                seen = max(len(self.lines), seen)
                ended = self._reader is not None and not self._reader.is_alive()
                remaining = deadline - time.monotonic()
                if ended or remaining <= 0:
                    why = "the worker's stderr closed" if ended else f"{timeout}s passed"
                    raise WorkerTimeout(
                        f"no line matching {regex.pattern!r} ({why}); the worker said:\n"
                        + "\n".join(self.lines[-60:])
                    )
                self._changed.wait(remaining)

    def mark(self) -> int:
        """The index of the next log line: ``wait_for_line(start=mark)`` then
        only looks at lines logged after this call."""
        with self._changed:
            return len(self.lines)

    def matching_lines(self, pattern: str) -> list[str]:
        """The log lines so far in which regex ``pattern`` is found."""
        regex = re.compile(pattern)
        with self._changed:
            return [line for line in self.lines if regex.search(line)]

    # -- signals and exit ----------------------------------------------------------
    def send_signal(self, signum: int) -> None:
        """Send ``signum`` to the worker parent only."""
        os.kill(self.pid, signum)

    def wait(self, timeout: float = 10.0) -> int:
        """Wait for the worker to exit; its exit code (a signal is negative)."""
        assert self.process is not None
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise WorkerTimeout(
                f"worker {self.pid} still running after {timeout}s; it said:\n"
                + "\n".join(self.lines[-60:])
            ) from None
        if self._reader is not None:
            # Children of a killed parent may hold stderr open a little longer.
            self._reader.join(5.0)
        return code

    def running(self) -> bool:
        """Whether the worker parent is still running."""
        return self.process is not None and self.process.poll() is None

    def kill_group(self, signum: int = signal.SIGKILL) -> None:
        """Signal the worker's whole process group: the parent and its children
        (and orphans of a parent killed earlier)."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signum)

    def stop(self, timeout: float = 30.0) -> int:
        """Drain the worker (SIGTERM: it takes no new job and lets the
        running ones finish) and wait for it to exit; its exit code. One
        that does not exit within ``timeout`` is killed and reported."""
        if not self.running():
            return self.wait()
        self.send_signal(signal.SIGTERM)
        try:
            return self.wait(timeout)
        except WorkerTimeout:
            self.cleanup()
            raise

    def cleanup(self) -> None:
        """Kill whatever is left of this worker; used by fixtures."""
        if self.process is None:
            return
        self.kill_group(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(10)
        if self.process.stderr is not None:
            if self._reader is not None:
                self._reader.join(5.0)
            self.process.stderr.close()
