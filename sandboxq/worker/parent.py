"""The worker parent: one loop that owns Redis and watches the children.

The loop waits in one ``select`` on: the children's pipes, a wake-up pipe
(signals and ``stop()`` write to it), the Redis connection a step is on, and
the connection blocked in BZPOPMIN. Signal handlers only record the signal;
the loop acts on it. The parent never blocks, on a child or on Redis: pipes
and Redis connections are non-blocking, so a child that hangs, crashes or
grows too big is killed and replaced on time while the rest run, however
slow Redis is.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import selectors
import signal
import socket
import threading
import time
import traceback
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import redis
from setproctitle import setproctitle

from sandboxq import execution, hooks, logs
from sandboxq.addresses import redact
from sandboxq.connection import connect
from sandboxq.execution import record_problem
from sandboxq.fast import CorruptRecord
from sandboxq.handlers import Handler, handler_table
from sandboxq.keys import validate_name
from sandboxq.metrics import Health, WorkerMetrics, crash_kind, serve
from sandboxq.queue import Queue
from sandboxq.worker import protocol
from sandboxq.worker.broker import Broker, StepResult
from sandboxq.worker.exit_codes import (
    EXIT_BOOT_ERROR,
    EXIT_FORCED,
    EXIT_INTERNAL_ERROR,
    EXIT_OK,
    EXIT_STOP_HOOK_FAILED,
    BootError,
)
from sandboxq.worker.pool import HANDLED_SIGNALS, MIB, Assignment, Child, Pool, describe_exit
from sandboxq.worker.settings import (
    MAX_ASYNC_CONCURRENCY,
    MAX_CHILD_NICE,
    MAX_RESULT_BYTES,
    WorkerSettings,
    check_async_concurrency,
)
from sandboxq.worker.trouble import is_transient

__all__ = [
    "EXIT_BOOT_ERROR",
    "EXIT_FORCED",
    "EXIT_INTERNAL_ERROR",
    "EXIT_OK",
    "EXIT_STOP_HOOK_FAILED",
    "MAX_ASYNC_CONCURRENCY",
    "MAX_CHILD_NICE",
    "MAX_RESULT_BYTES",
    "BootError",
    "Worker",
    "WorkerSettings",
    "check_async_concurrency",
    "resolve_handlers",
]

#: How long a job no handler here runs goes back to the queue before it is
#: offered again (within --unknown-name-grace).
UNKNOWN_NAME_RETRY_SECONDS = 5.0

#: When a job this worker has no handler for comes back to it while it
#: waits for a worker that has one, this worker hands it back at once and
#: fetches nothing for this long: the other workers, woken by the hand-back,
#: get the first look. (Equal wake-ups would otherwise go to the same worker
#: every time: the one whose wait was armed first.)
STEP_ASIDE_SECONDS = 0.2

#: Children that die before running any job, in a row, before the worker
#: gives up instead of respawning forever.
MAX_BIRTH_FAILURES = 5

#: A run's log budget: lines past it are dropped in the parent (a count of
#: them ends the log), so one job cannot flood Redis. Far above any log a
#: person reads, and the job's log in Redis keeps its newest 1,000 lines.
LOG_BYTES_PER_RUN = 16 * 1024 * 1024

#: The parent stops reading a child's pipe while its job holds this many
#: log bytes not yet in Redis (back-pressure: the child waits on a full
#: pipe), so the parent's memory stays flat whatever a job sends.
HELD_REPORT_BYTES = 1024 * 1024

#: Redis reconnect backoff, seconds.
RECONNECT_MIN, RECONNECT_MAX = 0.1, 5.0

_WAKE, _WAITER, _LINK = "wake", "waiter", "link"


# Prefetching: when jobs are short next to a round trip to Redis, the parent
# leases more jobs than it has free children. Each busy child gets its next
# jobs queued on its pipe, and a local buffer holds about as many more as the
# children get through in a few round trips, so no child waits for Redis.
#: Prefetch only while this worker's jobs take at most this long on average:
#: for longer jobs a round trip is a small share of their time.
PREFETCH_MAX_JOB_SECONDS = 0.1
#: The longest a prefetched job waits for a child of this worker (behind a
#: job that turned out slow, say) before it goes back to the queue, where
#: any worker may take it.
PREFETCH_MAX_WAIT_SECONDS = 0.5
#: The local buffer holds what the children get through in this many round
#: trips (a fetch refills half of it: the bigger the batch, the less each
#: job costs the parent and Redis), and at most this many jobs per child.
BUFFER_ROUND_TRIPS = 4
BUFFER_PER_CHILD = 16
#: Jobs queued behind a busy child's job: enough to keep it busy this long
#: (so the parent answers its results in batches, not one by one), and at
#: most this many.
QUEUE_COVER_SECONDS = 0.008
MAX_QUEUED_PER_CHILD = 16
#: How often the parent looks for prefetched jobs that waited too long.
STALE_CHECK_SECONDS = 0.05
#: Weight of the newest sample in the moving averages of job time and of
#: the round trip.
AVERAGE_WEIGHT = 0.2

#: While every child is busy, what children sent waits at most this long,
#: or until this many entries, to share a step with more.
BATCH_SECONDS = 0.002
BATCH_ENTRIES = 64


class _Room(NamedTuple):
    """How many jobs the worker has room for (``_fetch_room``)."""

    #: Jobs to lease now.
    fetch: int = 0
    #: Of those, how many a free child takes at once.
    start_now: int = 0
    #: Children with no job.
    free: int = 0
    #: The room at which a fetch is worth a step of its own.
    refill_at: int = 1


@dataclass(slots=True)
class _Finishing:
    """A job settled by a child, waiting for Redis to confirm."""

    name: str
    attempt: int
    pid: int
    duration_ms: int


def resolve_handlers(
    queues: Iterable[str] | None,
    handlers: Mapping[str, Callable[..., Any]] | Iterable[Handler] | None,
) -> tuple[list[str], dict[tuple[str, str], Handler]]:
    """The queues to serve and their handlers by (queue, job name).

    ``handlers`` is ``None`` (everything registered with ``@handler``), a list
    of :class:`Handler`, or ``{job name: function}`` served on every queue.
    Queues default to those the handlers belong to.
    """
    wanted = None if queues is None else [validate_name("queue name", q) for q in queues]
    if isinstance(handlers, Mapping) and not wanted:
        raise BootError("a {name: function} handler map needs the queues to serve")
    table = handler_table(wanted, handlers)
    queue_list = wanted or sorted({q for q, _ in table})
    if not queue_list:
        raise BootError(
            "no handlers registered: import a module that uses @handler, or pass handlers"
        )
    served = {q for q, _ in table}
    empty = [q for q in queue_list if q not in served]
    if empty:
        raise BootError(f"no handler registered for queue(s): {', '.join(empty)}")
    return queue_list, table


class Worker:
    """Serve ``queues`` with a pool of forked children.

    ``procs`` is a number or ``"auto"`` (the CPUs this process may use).
    Sizes are bytes, times are seconds. ``run()`` blocks until the worker
    stops and returns its exit code; ``stop()`` asks it to drain, from any
    thread.

    ``async_concurrency`` (``--async-concurrency``, 1 to 1000, default 1):
    how many jobs of ``async def`` handlers each child runs at once on its
    event loop; other jobs still run alone in a child. A crash or memory
    kill of a child fails every job it was running.
    """

    def __init__(
        self,
        queues: Iterable[str] | None = None,
        handlers: Mapping[str, Callable[..., Any]] | Iterable[Handler] | None = None,
        *,
        settings: WorkerSettings | None = None,
        **knobs: Any,
    ) -> None:
        self.queues, self.handlers = resolve_handlers(queues, handlers)
        if settings is None:
            settings = WorkerSettings(**knobs)
        elif knobs:
            raise TypeError(f"pass settings or keyword arguments, not both: {sorted(knobs)}")
        self.settings = settings
        #: The handlers whose jobs share a child (async def), by (queue, name).
        self._concurrent = {
            key: execution.runs_concurrently(found.func) for key, found in self.handlers.items()
        }
        #: Jobs with no handler here this worker handed back, until when it
        #: steps aside if they come back to it (monotonic).
        self._handed_back_unknown: dict[tuple[str, str], float] = {}
        self.procs = settings.pool_size
        self.url = settings.redis_url
        self.url_shown = redact(self.url)  # for logs: no password
        self.async_concurrency = settings.async_concurrency
        self.max_jobs_per_child = settings.max_jobs_per_child
        self.token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        self._signals: list[int] = []
        self._wake_w = -1
        self._stopping = False
        self._stop_deadline = 0.0
        self._forced = False
        self._ready = False
        self._birth_failures = 0
        self._redis_retry_at = 0.0
        self._redis_backoff = RECONNECT_MIN
        self._finishing: dict[tuple[str, str], _Finishing] = {}
        #: The Redis sockets the selector watches: fd -> (events, _LINK or _WAITER).
        self._watching: dict[int, tuple[int, str]] = {}
        #: What each tag's connections said on the turn they were last watched.
        self._watched_as: dict[str, list[tuple[int, bool]]] = {}
        self._final_deadline = 0.0
        #: Prefetched jobs no child has yet, oldest lease first.
        self._buffer: deque[Assignment] = deque()
        #: Moving averages (seconds): a job's run, a step's round trip.
        self._avg_job: float | None = None
        self._avg_round_trip = 0.001
        self._stale_checked = 0.0

    # -- public ------------------------------------------------------------
    def stop(self, force: bool = False) -> None:
        """Drain and stop (``force``: stop now, handing jobs back)."""
        self._signals.append(signal.SIGQUIT if force else signal.SIGTERM)
        self._wake()

    def run(self) -> int:
        """Run until stopped; returns the exit code (EXIT_OK after a clean drain)."""
        self._open()
        started = stop_hooks_ok = False
        try:
            self._start_hooks()
            started = True
            self._loop()
        finally:
            self._close()
            if started:
                stop_hooks_ok = self._stop_hooks()
        if self._forced:
            return EXIT_FORCED
        return EXIT_OK if stop_hooks_ok else EXIT_STOP_HOOK_FAILED

    def _start_hooks(self) -> None:
        """on_worker_start, once the first children are forked (so they do
        not inherit what the hooks open). A failure, SystemExit included, is
        a boot error."""
        try:
            hooks.run(hooks.WORKER_START)
        except (Exception, SystemExit) as exc:
            raise BootError(
                f"an on_worker_start hook failed: {type(exc).__name__}: {exc}\n"
                + traceback.format_exc()
            ) from exc

    def _stop_hooks(self) -> bool:
        """on_worker_stop; False if one failed (logged). A hook's SystemExit
        does not decide the worker's exit code: the worker's own does."""
        try:
            hooks.run(hooks.WORKER_STOP)
        except (Exception, SystemExit):
            logs.log.error(
                "an on_worker_stop hook failed (exit code %d):\n%s",
                EXIT_STOP_HOOK_FAILED,
                traceback.format_exc(),
            )
            return False
        return True

    # -- setup and teardown ---------------------------------------------------
    def _open(self) -> None:
        self.broker = Broker(
            self.url,
            self.queues,
            self.token,
            lease=self.settings.lease,
            max_stalls=self.settings.max_stalls,
            settings=self.settings.rate_limit_fields,
            description={
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "queues": self.queues,
                "procs": self.procs,
                "started_at": time.time(),
            },
        )
        self.broker.link.on_close = self._unwatch
        self.broker.waiter.on_close = self._unwatch
        wake_r, self._wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._wake_r = wake_r
        self.selector = selectors.DefaultSelector()
        self.selector.register(wake_r, selectors.EVENT_READ, _WAKE)
        if threading.current_thread() is threading.main_thread():
            signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
            for signum in HANDLED_SIGNALS:
                signal.signal(signum, self._on_signal)
        self.pool = Pool(
            self.settings,
            self.handlers,
            inherited_fds=[wake_r, self._wake_w, self.selector.fileno()],
        )
        setproctitle(f"sandboxq parent: {','.join(self.queues)} [{self.procs} procs]")
        for _ in range(self.procs):
            self._spawn()
        self._open_metrics()

    def _open_metrics(self) -> None:
        """Metrics are always counted; the HTTP endpoint only with a port.
        Scrapes and probes use their own short-timeout Redis client, so a
        slow scrape never holds up the loop."""
        probe = connect(self.url, socket_timeout=1.0)
        queues = [Queue(name, connection=probe) for name in self.queues]
        self.metrics = WorkerMetrics(
            self.procs,
            active=self._running_jobs,
            slots=self.procs * self.async_concurrency,
            counts=lambda: {q.name: q.counts() for q in queues},
        )
        self.health = Health(
            tick_timeout=self.settings.liveness_tick_timeout,
            idle_timeout=self.settings.liveness_idle_timeout,
            redis_ok=lambda: bool(probe.ping()),
            pool_up=lambda: len(self.pool.by_pid) == self.procs and not self._stopping,
            # A paused queue's waiting jobs are not work this worker may do.
            queues_empty=lambda: all(q.counts()["waiting"] == 0 or q.is_paused() for q in queues),
        )
        self._probe = probe
        self._http = None
        if self.settings.metrics_port is not None:
            self._http = serve(
                self.metrics, self.health, self.settings.metrics_host, self.settings.metrics_port
            )
            self.pool.inherited_fds.append(self._http.fileno())

    def _running_jobs(self) -> int:
        """Jobs running in the children now (not children: with
        --async-concurrency a child runs several)."""
        return sum(len(child.jobs) for child in self.pool.by_pid.values())

    def _close(self) -> None:
        """Stop the children and leave Redis. Runs after any exit from the
        loop, so nothing here may raise, whatever state Redis is in."""
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
        with contextlib.suppress(redis.RedisError, OSError):
            self._probe.close()
        for child in self.pool.children():
            self.pool.retire(child)
        # Idle children exit within milliseconds of EOF, unless their
        # on_child_exit hooks take time: those get the hooks' timeout.
        wait = self.settings.child_hook_timeout if hooks.HOOKS[hooks.CHILD_EXIT] else 1.0
        deadline = time.monotonic() + max(self.settings.kill_grace, wait)
        while self.pool.by_pid and time.monotonic() < deadline:
            for child, _status in self.pool.reap():
                self._forget(child)
            time.sleep(0.005)  # children exit within milliseconds of EOF
        for child in self.pool.children():
            self.pool.kill(child)
        while self.pool.by_pid:
            for child, _status in self.pool.reap():
                self._forget(child)
        if threading.current_thread() is threading.main_thread():
            signal.set_wakeup_fd(-1)
            for signum in HANDLED_SIGNALS:
                signal.signal(signum, signal.SIG_DFL)
        self.broker.close()
        self.selector.close()
        os.close(self._wake_r)
        os.close(self._wake_w)

    def _on_signal(self, signum: int, _frame: object) -> None:
        self._signals.append(signum)  # the loop acts on it

    def _wake(self) -> None:
        if self._wake_w >= 0:
            with contextlib.suppress(OSError):
                os.write(self._wake_w, b"\0")

    # -- the loop -------------------------------------------------------------
    def _loop(self) -> None:
        room = self._fetch_room()
        while True:
            self.health.tick()
            self._watch_redis()
            # ``room`` is from the end of the last turn: nothing changed since.
            for key, mask in self.selector.select(self._select_timeout(room)):
                if key.data == _WAKE:
                    self._drain_wake_pipe()
                elif key.data == _LINK:
                    readable, writable = mask & selectors.EVENT_READ, mask & selectors.EVENT_WRITE
                    if result := self.broker.on_step_io(bool(readable), bool(writable), key.fd):
                        self._step_done(result)
                elif key.data == _WAITER:
                    writable = bool(mask & selectors.EVENT_WRITE)
                    if woke_with := self.broker.on_wait_io(writable, key.fd):
                        self._after_step(woke_with)
                else:
                    self._on_child_io(key.data, mask)
            if self._handle_signals():
                self._reap()
            now = time.monotonic()
            for child in self.pool.enforce_limits(now):
                self._flush(child)  # "stop" frames
            self._return_stale_prefetch(now)
            self.broker.retry_lapsed_faults(now)
            if result := self.broker.check_step_deadline(now):
                self._step_done(result)
            if self.broker.wait_overdue(now):
                self._unarm_wait()  # its reply was lost: look for work instead
            room = self._fetch_room()
            self._redis_step(room)
            if self._stopping and self._shutdown_step():
                return
            self._arm_wait(room)

    def _watch_redis(self) -> None:
        """Keep the selector watching the Redis connections as they are:
        reading while open, writing while commands wait to be written. A
        connection that was replaced is watched under its new descriptor.
        (On a Redis Cluster, the step link and the wait have one connection
        per node or queue: each is watched under the same tag.)"""
        link, waiter = self.broker.link, self.broker.waiter
        self._watch(_LINK, link.sockets())
        self._watch(_WAITER, waiter.sockets() if self.broker.armed else [])

    def _unwatch(self, fd: int) -> None:
        """A Redis connection is closing: stop watching its descriptor now,
        before the number can be reused (by a child's pipe, say)."""
        if (current := self._watching.pop(fd, None)) is not None:
            self._watched_as.pop(current[1], None)  # the tag's sockets changed
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(fd)

    def _watch(self, tag: str, sockets: list[tuple[int, bool]]) -> None:
        if self._watched_as.get(tag) == sockets:
            return  # as on the last turn: the common case, every turn of the loop
        wanted = {
            fd: selectors.EVENT_READ | (selectors.EVENT_WRITE if write else 0)
            for fd, write in sockets
        }
        for fd, (_events, owner) in list(self._watching.items()):
            if owner == tag and fd not in wanted:
                self._unwatch(fd)
        for fd, events in wanted.items():
            if (current := self._watching.get(fd)) != (events, tag):
                if current is not None:
                    self._unwatch(fd)
                self.selector.register(fd, events, tag)
                self._watching[fd] = (events, tag)
        self._watched_as[tag] = sockets

    def _select_timeout(self, room: _Room) -> float:
        now = time.monotonic()
        # Redis is due when the step in flight is overdue, else when the next
        # step is (_next_step_at). After a failed step nothing is due before
        # the retry time.
        if (deadline := self.broker.step_deadline) is not None:
            redis_due = deadline
        else:
            redis_due = self._next_step_at(now, room)
        # The children's limits and the shutdown deadline are kept meanwhile.
        candidates = [max(redis_due, self._redis_retry_at), now + 1.0]
        if (limit := self.pool.next_deadline()) is not None:
            candidates.append(limit)
        if (oldest := self._oldest_prefetched()) is not None:
            due = max(oldest + PREFETCH_MAX_WAIT_SECONDS, self._stale_checked + STALE_CHECK_SECONDS)
            candidates.append(due)
        if (wait_deadline := self.broker.wait_deadline) is not None:
            candidates.append(wait_deadline)
        if self._stopping:
            candidates.append(self._stop_deadline)
            if self._forced:
                candidates.append(self._final_deadline)
        return max(min(candidates) - now, 0.0)

    def _drain_wake_pipe(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass

    def _handle_signals(self) -> bool:
        """Act on recorded signals; returns True if a child may have exited."""
        reap = False
        while self._signals:
            signum = self._signals.pop(0)
            if signum == signal.SIGCHLD:
                reap = True
            elif signum == signal.SIGINT and self._stopping:
                self._begin_stop(force=True, why="second SIGINT")
            elif signum in (signal.SIGTERM, signal.SIGINT):
                self._begin_stop(force=False, why=signal.Signals(signum).name)
            elif signum == signal.SIGQUIT:
                self._begin_stop(force=True, why="SIGQUIT")
        return reap

    # -- children -------------------------------------------------------------
    def _spawn(self) -> None:
        # A child replacing one that died is forked while the Redis
        # connections are open: it closes its copies, or a connection the
        # parent closes (to abort a blocked wait, say) would stay open in
        # the child, and Redis would hand the next wake-up to it.
        redis_fds = [fd for fd, _ in self.broker.link.sockets() + self.broker.waiter.sockets()]
        child = self.pool.spawn(redis_fds)
        self.selector.register(child.sock, selectors.EVENT_READ, child)

    def _forget(self, child: Child) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(child.sock)
        child.sock.close()

    def _on_child_io(self, child: Child, mask: int) -> None:
        if mask & selectors.EVENT_WRITE:
            self.pool.flush(child)
            if not child.outbox:
                self._watch_child(child)
        if mask & selectors.EVENT_READ:
            messages, eof = self.pool.read(child)
            for message in messages:
                self._on_message(child, message)
            if child.foreign:
                self._note_foreign(child)
            if eof:  # it is exiting; the reaper reports why
                self._watch_child(child)
            elif self.broker.report_bytes:  # log lines wait for Redis
                self._hold_if_behind(child)

    def _watch_child(self, child: Child) -> None:
        """Watch a child's pipe for what the parent wants of it now:
        reading unless it is held (or closed), writing while frames wait."""
        events = 0 if child.held or child.closed else selectors.EVENT_READ
        if child.outbox:
            events |= selectors.EVENT_WRITE
        watched = child.sock.fileno() in self.selector.get_map()
        if events and watched:
            self.selector.modify(child.sock, events, child)
        elif events:
            self.selector.register(child.sock, events, child)
        elif watched:
            self.selector.unregister(child.sock)

    def _hold_if_behind(self, child: Child) -> None:
        """Back-pressure: while the child's job holds HELD_REPORT_BYTES of
        log lines Redis has not taken yet, stop reading its pipe; the child
        waits on the full pipe (its limits still apply). _release_held reads
        it again once a step took them."""
        if child.held:
            return
        held = self.broker.held_report_bytes
        if any(held(job.queue, job.job_id) >= HELD_REPORT_BYTES for job in child.jobs.values()):
            child.held = True
            self._watch_child(child)

    def _release_held(self) -> None:
        for child in self.pool.by_pid.values():
            if not child.held or child.closed:
                continue
            held = self.broker.held_report_bytes
            if all(
                held(job.queue, job.job_id) < HELD_REPORT_BYTES // 2 for job in child.jobs.values()
            ):
                child.held = False
                self._watch_child(child)

    def _note_foreign(self, child: Child) -> None:
        """Say once per process which process other than the child wrote to
        its pipe (a copy its handler forked): its bytes were discarded."""
        for pid, count in child.foreign.items():
            if count < 0:
                continue  # said already
            job = next(iter(child.jobs.values()), None)
            logs.event(
                "ignored what a process other than the worker child wrote to its pipe (a copy "
                "its job's handler forked?): only the child's own frames count",
                logging.WARNING,
                pid=child.pid,
                writer_pid=pid,
                ignored_bytes=count,
                job_id=job.job_id if job else None,
                queue=job.queue if job else None,
            )
            self.metrics.faults.labels(job.queue if job else "", "foreign_writer").inc()
            child.foreign[pid] = -1

    def _on_message(self, child: Child, message: list[Any]) -> None:
        """Act on one frame from a child. Every value is checked first: the
        handler runs in that process and may have written anything. A frame
        the protocol does not allow kills that child, which fails its job
        with the reason; nothing a child sends can stop the parent."""
        try:
            kind, job_id = protocol.check_header(message)
            if kind == protocol.READY:
                self._child_ready(child)
                return
            job = child.jobs.get(job_id)
            if job is None:
                return  # a late frame of a job already settled (killed on timeout)
            if kind == protocol.DROPPED:
                self._dropped(child, job)
                return
            if kind == protocol.DONE:
                outcome = protocol.check_done(message, self.settings.max_result_bytes)
            elif kind == protocol.STEP:
                key, result = protocol.check_step(message)
            elif kind == protocol.LEAVING:
                reason = protocol.check_leaving(message)
            else:
                value = protocol.check_report(message)
        except protocol.ProtocolError as exc:
            self.pool.kill(child, f"child sent an invalid frame: {exc}")
            return
        if kind == protocol.DONE:
            if job.stop_reason is not None and outcome.kind != execution.COMPLETED:
                outcome = self._stopped_outcome(job)
            self._settle(child, job, outcome)
            child.jobs_done += 1
            self._birth_failures = 0
            if self.max_jobs_per_child and child.jobs_done >= self.max_jobs_per_child:
                self.pool.retire(child)
            self._next_queued(child)
        elif kind == protocol.STEP:
            self.broker.step(job.queue, job_id, key, result)
        elif kind == protocol.LEAVING:
            self._child_leaving(child, job, reason)
        elif kind == protocol.LOG:
            self._on_log(job, value)
        else:
            self.broker.report(job.queue, job_id, kind, value)

    def _child_ready(self, child: Child) -> None:
        """Its on_child_start hooks ran: it takes jobs from now on."""
        if not child.ready:
            child.ready = True
            self._feed_children()

    def _child_leaving(self, child: Child, job: Assignment, reason: str) -> None:
        """The child exits after this job (a task the job left on its event
        loop ignored its cancellation): it gets no more jobs; those queued
        behind this one go back in line when it is done (_next_queued)."""
        child.leaving = reason
        logs.event(
            "child leaves after this job, to be replaced: " + reason,
            logging.WARNING,
            **_run_fields(job, child.pid),
        )

    def _on_log(self, job: Assignment, line: str) -> None:
        """A log line, within the run's budget: past LOG_BYTES_PER_RUN
        lines are dropped (counted; _settle says how many), after one line
        that says so."""
        job.log_bytes += len(line)
        if job.log_bytes <= LOG_BYTES_PER_RUN:
            self.broker.report(job.queue, job.job_id, protocol.LOG, line)
            return
        if not job.dropped_lines:
            self.broker.report(
                job.queue,
                job.job_id,
                protocol.LOG,
                f"[sandboxq] this run reached its log budget of {LOG_BYTES_PER_RUN // MIB} MiB: "
                "later lines are dropped (counted at the end)",
            )
            self.metrics.faults.labels(job.queue, "log_budget").inc()
        job.dropped_lines += 1
        job.dropped_bytes += len(line)

    def _next_queued(self, child: Child) -> None:
        """The child ended a job and goes on with the ones queued behind
        it that fit now, if any: those start now."""
        if child.leaving is not None:  # it exits: what it was sent never starts
            self._take_back_queued(child)
            if not child.jobs:  # a child that ran several jobs waits for this
                self.pool.retire(child)
            self._feed_children()
            return
        started = self.pool.start_queued(child)
        if not started:
            self._feed_children()  # it is free, or has a free slot
            return
        if child.kill_reason is not None:
            # Killed, yet its job ended (its handler caught SIGTERM): it is
            # about to start the next one. Make sure it does not run long.
            for job in started:
                del child.jobs[job.job_id]
            self.pool.kill(child)
            self._take_back_queued(child, started)
            self._feed_children()
            return
        for job in started:
            if job.job_id not in child.dropping:  # else handed back already
                self._job_started(child, job)
            elif job.cancelled:
                # Settled as cancelled when the drop was sent, but the child
                # had started it already: stop it.
                self._stop_running(child, job, cancels=True)
        self._feed_children()  # its next jobs, behind these

    def _dropped(self, child: Child, job: Assignment) -> None:
        """The child did not start a job: one it was asked to drop (handed
        back when the drop was sent), or one a leaving child refused (back
        in line now)."""
        del child.jobs[job.job_id]
        if job.job_id in child.dropping:
            child.dropping.discard(job.job_id)
        else:
            self._take_back(job)
        self._next_queued(child)  # it goes on with the next one, if any

    # -- cancellation -------------------------------------------------------------
    def _stepped(self, queue: str, job_id: str, key: str, status: str) -> None:
        """Tell the child that runs ``job_id`` what became of its step: it
        waits for this before its handler goes on."""
        child = self._running_child(queue, job_id)
        if child is not None:  # else the job ended meanwhile (killed, say)
            child.outbox += protocol.encode([protocol.STEPPED, job_id, key, status])
            self._flush(child)

    def _running_child(self, queue: str, job_id: str) -> Child | None:
        """The child running that job, if one does."""
        for child in self.pool.by_pid.values():
            running = child.jobs.get(job_id)
            if running is not None and running.queue == queue:
                return child
        return None

    def _cancel(self, queue: str, job_id: str) -> None:
        """A person cancelled a job this worker holds (cancel.lua). Running:
        its processes get SIGTERM, then SIGKILL after the kill grace (as on a
        timeout), and it is settled as cancelled once its child is gone.
        Prefetched and not started: settled as cancelled now, never run.
        Otherwise its result is on its way to Redis, where finish.lua lets
        an outcome that ends it for good stand and cancels any other."""
        for job in self._buffer:
            if job.queue == queue and job.job_id == job_id:
                self._buffer.remove(job)
                self._settle_unstarted(job)
                return
        if (running := self._running_child(queue, job_id)) is not None:
            if running.kill_reason is None and job_id not in running.dropping:
                self._stop_running(running, running.jobs[job_id], cancels=True)
            return
        for child in self.pool.by_pid.values():
            for job in child.queued:
                if job.queue == queue and job.job_id == job_id and job_id not in child.dropping:
                    job.cancelled = True
                    self.pool.drop(child, job)
                    self._flush(child)
                    self._settle_unstarted(job)
                    return

    def _stop_running(self, child: Child, job: Assignment, *, cancels: bool) -> None:
        """Stop a running job that was cancelled: the timeout's path. Alone
        in its child: SIGTERM to the job's processes, SIGKILL after the kill
        grace; ``_reap`` settles it as cancelled. Sharing its child: its
        task is cancelled ("stop"), and its done settles it as cancelled;
        the child is killed only if the task does not stop within the
        grace."""
        if self.pool.stop(child, job, "cancelled", cancels=cancels):
            self._flush(child)
            how = "cancelling its task (its child is killed if it does not stop within the grace)"
        else:
            how = "SIGTERM, SIGKILL after the kill grace"
        logs.event(
            f"job cancelled while running: stopping it ({how})",
            logging.INFO,
            **_run_fields(job, child.pid),
            kill_grace_s=self.settings.kill_grace,
        )

    def _stopped_outcome(self, job: Assignment) -> execution.Outcome:
        """How a job the parent stopped in a child it shares ends, unless it
        completed anyway: cancelled, or failed with its timeout."""
        if job.stop_cancels:
            return execution.Outcome(execution.CANCELLED, "stopped while running")
        assert job.stop_reason is not None
        return execution.Outcome(execution.FAILED, job.stop_reason)

    def _settle_unstarted(self, job: Assignment) -> None:
        """Settle a job no child started as cancelled."""
        outcome = execution.Outcome(execution.CANCELLED, "never started")
        self.broker.finish(job.queue, execution.finish_entry(job.job_id, job.fields, outcome))
        self._finishing[(job.queue, job.job_id)] = _Finishing(job.name, job.attempt, 0, 0)

    def _settle(self, child: Child, job: Assignment, outcome: execution.Outcome) -> None:
        del child.jobs[job.job_id]
        duration = time.monotonic() - job.started
        duration_ms = int(duration * 1000)
        self._avg_job = _average(self._avg_job, duration)
        if not job.start_reported:  # it started (and ended) before the step
            self._report_start(job)
        if job.dropped_lines:  # the end of its log says what the budget dropped
            self.broker.report(
                job.queue,
                job.job_id,
                protocol.LOG,
                f"[sandboxq] dropped {job.dropped_lines} log line(s), "
                f"{job.dropped_bytes / MIB:.1f} MiB, over this run's budget",
            )
        self.broker.finish(job.queue, execution.finish_entry(job.job_id, job.fields, outcome))
        self._finishing[(job.queue, job.job_id)] = _Finishing(
            job.name, job.attempt, child.pid, duration_ms
        )
        if outcome.kind not in (execution.COMPLETED, execution.CANCELLED):
            logs.event(
                "job attempt failed",
                logging.WARNING,
                **_run_fields(job, child.pid),
                duration_ms=duration_ms,
                error=outcome.value,
            )

    def _reap(self) -> None:
        for child, status in self.pool.reap():
            messages, _eof = self.pool.read(child)  # frames sent just before it died
            for message in messages:
                self._on_message(child, message)
            self._forget(child)
            self._take_back_queued(child)  # they never started: another child may
            if child.jobs:
                self._fail_running(child, status)
            elif not child.ready or (not child.retiring and child.jobs_done == 0 and status != 0):
                self._birth_failure(child, status)
            elif child.kill_reason is not None:  # idle, and killed: its exit hooks hung
                logs.event(
                    "killed an idle child: " + child.kill_reason,
                    logging.WARNING,
                    pid=child.pid,
                )
            if not self._stopping:
                self._spawn()
        self._feed_children()

    def _fail_running(self, child: Child, status: int) -> None:
        """A child died: every job it ran ends with the same reason (one
        stopped because a person cancelled it ends cancelled)."""
        reason = describe_exit(status, child.kill_reason)
        jobs = list(child.jobs.values())
        if len(jobs) > 1:  # say what its death cost
            reason += f"; the child was running {len(jobs)} jobs, which all failed with it"
        if not child.cancelling:
            self.metrics.crashes.labels(crash_kind(reason)).inc()
        for job in jobs:
            if child.cancelling:
                how = "stopped while running"
                if child.sigkilled:
                    grace = self.settings.kill_grace
                    how = f"killed while running: SIGTERM did not end it in {grace:g}s"
                self._settle(child, job, execution.Outcome(execution.CANCELLED, how))
            elif job.stop_cancels:
                self._settle(child, job, execution.Outcome(execution.CANCELLED, reason))
            else:
                self._settle(child, job, execution.Outcome(execution.FAILED, reason))

    def _birth_failure(self, child: Child, status: int) -> None:
        """A child died before its first job: its on_child_start hooks
        failed, hung, or it exited. Give up after MAX_BIRTH_FAILURES in a
        row rather than respawn forever."""
        self._birth_failures += 1
        why = describe_exit(status, child.kill_reason)
        logs.event("a child died before its first job", logging.WARNING, pid=child.pid, why=why)
        if self._birth_failures >= MAX_BIRTH_FAILURES:
            raise BootError(
                f"{self._birth_failures} children in a row died before running a job ({why})"
            )

    # -- Redis ----------------------------------------------------------------
    def _redis_step(self, room: _Room) -> None:
        """Start a step when one is due and none is in flight; its result
        comes back through the loop (``_step_done``)."""
        now = time.monotonic()
        if self.broker.in_flight or now < self._redis_retry_at:
            return
        if self._next_step_at(now, room) > now:
            return
        fetch = room.fetch > 0 and self.broker.maybe_work
        if result := self.broker.start_step(
            room.fetch if fetch else 0, room.start_now if fetch else 0
        ):
            self._step_done(result)

    def _next_step_at(self, now: float, room: _Room) -> float:
        """When the next step is due (monotonic; ``now`` if it is). At once
        when a child is free (for a job, or with nothing to do but report),
        when the buffer runs low, or when something cannot wait; at the next
        timer otherwise. While every child is busy, results wait a little
        (BATCH_SECONDS, or BATCH_ENTRIES of them) to share a round trip with
        more: fewer, bigger steps cost the parent and Redis less per job."""
        broker = self.broker
        if self._stopping:
            return now if broker.has_pending() else broker.next_timer()
        fetch = room.fetch > 0 and broker.maybe_work and not broker.fetches_held(now)
        if broker.has_urgent() or (fetch and (room.start_now > 0 or room.fetch >= room.refill_at)):
            return now
        due = broker.next_timer()
        if broker.fetches_held(now):
            due = min(due, broker.fetch_hold_until)
        if (since := broker.pending_since) is not None:
            if room.free > 0 or broker.pending_entries >= BATCH_ENTRIES:
                return now
            due = min(due, since + BATCH_SECONDS)
        return due

    def _step_done(self, result: StepResult) -> None:
        """A step ended: act on what it did, then on its error if any."""
        if result.unsupported is not None:
            raise BootError(result.unsupported)
        for warning in result.warnings:
            logs.event(warning, logging.WARNING, url=self.url_shown)
        # What the step did before any error happened anyway: act on it first.
        self._after_step(result)
        if result.error is not None:
            self._redis_trouble(result.error)
            return
        if self._redis_backoff > RECONNECT_MIN:  # it had trouble: say that it is over
            logs.event("Redis reachable again", logging.INFO, url=self.url_shown)
        self._redis_backoff = RECONNECT_MIN
        if result.worked:
            self._avg_round_trip = _average(self._avg_round_trip, result.round_trip)
        if not self._ready and result.worked:
            self._ready = True
            # Supervisors and tests wait for this line: print it at any level.
            logs.always(
                f"sandboxq worker ready pid={os.getpid()} queues={','.join(self.queues)} "
                f"procs={self.procs}"
            )

    def _redis_trouble(self, exc: Exception) -> None:
        """Wait Redis trouble out: back off (0.1 s doubling to 5 s), keep
        what is pending, and let the children run on meanwhile."""
        if is_transient(exc):
            message, level = "Redis unreachable or refusing writes", logging.WARNING
        else:
            message, level = "Redis refused a command", logging.ERROR
        logs.event(
            f"{message}, retrying in {self._redis_backoff:.1f}s",
            level,
            url=self.url_shown,
            error=f"{type(exc).__name__}: {exc}",
        )
        self._redis_retry_at = time.monotonic() + self._redis_backoff
        self._redis_backoff = min(self._redis_backoff * 2, RECONNECT_MAX)
        self._unarm_wait()

    def _after_step(self, result: StepResult) -> None:
        self._note_queue_faults(result)
        for queue, job_id, status in result.finished:
            done = self._finishing.pop((queue, job_id), None)
            if done is not None:
                self._log_finished(queue, job_id, status, done)
        for queue, returned in result.reclaimed:
            logs.event(
                "handed back jobs a lost fetch reply had leased here; they never started",
                logging.WARNING,
                queue=queue,
                job_ids=",".join(returned),
            )
        for queue, released in result.released:
            if self._forced:
                message = "stopped before jobs finished; handed them back to the queue"
                level = logging.WARNING
            else:  # stopping, or they waited too long behind slow jobs
                message, level = "handed prefetched jobs back to the queue", logging.INFO
            logs.event(message, level, queue=queue, released=",".join(released))
        for queue, key, why in result.broken_schedules:
            logs.event(
                "cannot fire a schedule; looking again in a minute",
                logging.ERROR,
                queue=queue,
                schedule=key,
                error=why,
            )
        for queue in result.rate_limited:
            self.metrics.rate_limit_waits.labels(queue).inc()
        for queue, requeued, failed, cancelled in result.recovered:
            self.metrics.stalled.labels(queue, "requeued").inc(len(requeued))
            self.metrics.stalled.labels(queue, "failed").inc(len(failed))
            self.metrics.stalled.labels(queue, "cancelled").inc(len(cancelled))
            logs.event(
                "recovered stalled jobs",
                logging.WARNING,
                queue=queue,
                requeued=",".join(requeued),
                failed=",".join(failed),
                cancelled=",".join(cancelled),
            )
        for queue, job_id in result.cancel_requested:
            self._cancel(queue, job_id)
        for queue, job_id, key, status in result.stepped:
            self._stepped(queue, job_id, key, status)
        for queue, created in result.scheduled:
            logs.event("enqueued scheduled jobs", logging.INFO, queue=queue, count=created)
        for queue, job_id in result.still_running:
            logs.event(
                "lease lapsed while the job ran here; kept this run",
                logging.WARNING,
                queue=queue,
                job_id=job_id,
            )
        for index, (queue, job_id, fields) in enumerate(result.fetched):
            self._take_fetched(queue, job_id, fields, started=index < result.started_now)
        self._release_held()
        self._feed_children()

    def _note_queue_faults(self, result: StepResult) -> None:
        """Log and count the queues a step found at fault (this worker
        leaves them alone for a while, serving the rest), and those usable
        again."""
        for queue, kind, reason in result.faults:
            retry_in = self.broker.faults[queue].until - time.monotonic()
            logs.event(
                "queue paused on this worker: its settings or data in Redis cannot be used; "
                f"the other queues go on, and it is tried again in {retry_in:.0f}s",
                logging.ERROR,
                queue=queue,
                error=reason,
            )
            self.metrics.faults.labels(queue, kind).inc()
            self.metrics.paused_queues.labels(queue).set(1)
        for queue in result.recovered_queues:
            logs.event("queue usable again on this worker", logging.INFO, queue=queue)
            self.metrics.paused_queues.labels(queue).set(0)

    def _log_finished(self, queue: str, job_id: str, status: str, done: _Finishing) -> None:
        """One line per settled job. ``settled:<status>``: the finish went
        twice (its first reply was lost) and the first one counted."""
        repeated = status.startswith("settled:")
        outcome = status.removeprefix("settled:")
        self.metrics.settled(queue, done.name, outcome, done.duration_ms)
        if not repeated and outcome != "lost":
            minute = self.broker.now_ms() // 60_000
            self.broker.stats.note(queue, minute, done.name, outcome, done.duration_ms)
        self.health.job_finished()
        if outcome == "completed" and not repeated and not logs.log.isEnabledFor(logging.INFO):
            return  # the common case, at WARNING: no line to build
        if repeated:
            message, level = f"job {outcome} (already settled by this worker)", logging.INFO
        elif outcome == "lost":
            message = "job lost: no longer leased by this worker (recovered or removed)"
            level = logging.WARNING
        else:
            message, level = f"job {outcome}", logging.INFO
        logs.event(
            message,
            level,
            job_id=job_id,
            job_name=done.name,
            queue=queue,
            attempt=done.attempt,
            pid=done.pid,
            duration_ms=done.duration_ms,
        )

    def _take_fetched(
        self, queue: str, job_id: str, fields: dict[str, Any] | CorruptRecord, started: bool
    ) -> None:
        """A leased job joins the buffer (children take it from there), or
        fails at once if its record cannot be run or no handler runs it
        here. A stopping worker starts nothing new: what an idle wait's
        fetch brought goes back at once."""
        if isinstance(fields, CorruptRecord):
            self._fail_corrupt(queue, job_id, str(fields))
            return
        if (problem := record_problem(fields)) is not None:
            self._fail_corrupt(queue, job_id, problem)
            return
        if self._stopping:
            self.broker.hand_back(queue, job_id)
            return
        name = fields.get("name", "")
        found = self.handlers.get((queue, name))
        if found is None:
            if self._step_aside(queue, job_id, fields):
                return
            outcome = self._unknown_name(queue, job_id, name, fields)
            if outcome.kind == execution.UNSTARTED:
                # Until a little after it is due again (see _step_aside).
                self._handed_back_unknown[(queue, job_id)] = time.monotonic() + (
                    UNKNOWN_NAME_RETRY_SECONDS + 1.0
                )
            self.broker.finish(queue, execution.finish_entry(job_id, fields, outcome))
            return
        timeout = fields.get("timeout") or found.timeout or self.settings.default_timeout
        job = Assignment(queue, job_id, name, fields, timeout, started)
        if self.async_concurrency > 1:  # else no job shares a child
            job.concurrent = self._concurrent[(queue, name)]
        self._buffer.append(job)

    def _fail_corrupt(self, queue: str, job_id: str, reason: str) -> None:
        """A job whose stored record cannot be run: it fails for good with
        ``reason`` (naming the field), and only it: the rest of its batch
        and its queue go on. Its id is as the broker leased it (the stored
        bytes, when they are not UTF-8)."""
        logs.event(
            "failed a job whose stored record cannot be run",
            logging.ERROR,
            queue=queue,
            job_id=job_id,
            error=reason,
        )
        self.metrics.faults.labels(queue, "corrupt_record").inc()
        outcome = execution.Outcome.error(reason, unrecoverable=True)
        self.broker.finish(queue, execution.finish_entry(job_id, {}, outcome))

    def _step_aside(self, queue: str, job_id: str, fields: dict[str, Any]) -> bool:
        """A job with no handler here, that this worker handed back moments
        ago, is back: give it back at once (it never ran: nothing is spent,
        whatever its options) and fetch nothing for STEP_ASIDE_SECONDS, so a
        worker that knows it takes it (the hand-back wakes one). False when
        the job is not one of those."""
        now = time.monotonic()
        expired = [key for key, until in self._handed_back_unknown.items() if until <= now]
        for key in expired:
            del self._handed_back_unknown[key]
        if (queue, job_id) not in self._handed_back_unknown:
            return False
        self.broker.hand_back(queue, job_id)
        self.broker.hold_fetches(STEP_ASIDE_SECONDS)
        return True

    def _unknown_name(
        self, queue: str, job_id: str, name: str, fields: dict[str, Any]
    ) -> execution.Outcome:
        """A job no handler here runs: a typo, or a new job type reaching an
        old worker mid-deploy. Within --unknown-name-grace of its creation it
        goes back to the queue for UNKNOWN_NAME_RETRY_SECONDS, never having
        run (no attempt spent, even for manual_retry_only), so a newer worker
        can take it; after that it fails."""
        known = sorted(job for q, job in self.handlers if q == queue)
        problem = f"no handler for job {name!r} in queue {queue!r} (this worker knows: "
        problem += f"{', '.join(known)})"
        self.metrics.unknown_names.labels(queue).inc()
        age = self.broker.now_ms() / 1000 - float(fields.get("created_at") or 0)
        if age < self.settings.unknown_name_grace:
            logs.event(
                f"{problem}; handed back for {UNKNOWN_NAME_RETRY_SECONDS:g}s, for a worker "
                "that knows it",
                logging.WARNING,
                queue=queue,
                job_id=job_id,
                job_name=name,
            )
            return execution.Outcome(execution.UNSTARTED, problem, delay=UNKNOWN_NAME_RETRY_SECONDS)
        message = f"{problem}; no worker ran it within {self.settings.unknown_name_grace:g}s"
        logs.event(message, logging.WARNING, queue=queue, job_id=job_id, job_name=name)
        return execution.Outcome.error(message, unrecoverable=True)

    # -- prefetching --------------------------------------------------------------
    def _prefetching(self) -> bool:
        """Lease ahead of the children: only while jobs are short, and never
        on a queue with a rate or concurrency limit, which counts leases: a
        job leased early would start later than the limit saw it start."""
        return (
            not self._stopping
            and self._avg_job is not None
            and self._avg_job <= PREFETCH_MAX_JOB_SECONDS
            and not self.broker.limited_queues
        )

    def _queue_room(self, child: Child) -> int:
        """How many more jobs may wait behind a busy child's job: none while
        it is going away (killed, or due to retire) or giving jobs back."""
        if not child.takes_jobs or child.kill_reason is not None or child.dropping:
            return 0
        room = self._queue_depth() - len(child.queued)
        if self.max_jobs_per_child:
            left = self.max_jobs_per_child - child.jobs_done - len(child.jobs) - len(child.queued)
            room = min(room, left)
        return max(room, 0)

    def _takes_more(self, child: Child) -> bool:
        """Whether the child will take a job after those it runs (or, if
        free, the one it is about to get) and those queued on it: it takes
        jobs, and is not due to retire before (--max-jobs-per-child)."""
        if not child.takes_jobs:
            return False
        if not self.max_jobs_per_child:
            return True
        taken = child.jobs_done + (len(child.jobs) or 1) + len(child.queued)
        return taken < self.max_jobs_per_child

    def _free_slots(self, child: Child) -> int:
        """How many more jobs the child starts at once: 1 when it runs
        nothing; with --async-concurrency, the slots its async jobs leave
        (none while it runs a job that runs alone, or has jobs queued);
        none when it takes no jobs, or is due to retire first."""
        if not child.takes_jobs:
            return 0
        running = child.jobs
        if not running:
            free = self.async_concurrency
        elif child.queued or not next(iter(running.values())).concurrent:
            return 0
        else:
            free = self.async_concurrency - len(running)
        if self.max_jobs_per_child:
            free = min(free, self.max_jobs_per_child - child.jobs_done - len(running))
        return max(free, 0)

    def _queue_depth(self) -> int:
        """How many jobs may wait behind a busy child's job: enough for
        QUEUE_COVER_SECONDS of work when prefetching, else none."""
        if not self._prefetching():
            return 0
        assert self._avg_job is not None
        cover = math.ceil(QUEUE_COVER_SECONDS / max(self._avg_job, 1e-6))
        return min(cover, MAX_QUEUED_PER_CHILD)

    def _fetch_room(self) -> _Room:
        """How many jobs to lease now, and how many of them a free child
        takes at once: the free children (with --async-concurrency, their
        free slots), and when prefetching a few queued behind each busy
        child's jobs plus a buffer of what the children get through in a
        few round trips; less what the buffer holds."""
        if self._stopping:
            return _Room()
        free = queue_slots = takers = 0
        alone = self.async_concurrency == 1  # the common case: no slot to count
        for child in self.pool.by_pid.values():
            takers += self._takes_more(child)
            if alone:
                if not child.jobs:
                    free += child.takes_jobs
                    continue
            else:
                free += self._free_slots(child)
            if child.jobs:
                queue_slots += self._queue_room(child)
        room, refill_at = free, 1
        # No buffer for children that cannot take jobs (starting, retiring):
        # its jobs would only wait, then go back.
        if self._prefetching() and takers:
            assert self._avg_job is not None
            per_round_trip = (
                BUFFER_ROUND_TRIPS * takers * self._avg_round_trip / max(self._avg_job, 1e-6)
            )
            room += queue_slots + min(math.ceil(per_round_trip), BUFFER_PER_CHILD * takers)
            refill_at = max(room // 2, 1)  # fetch in batches of half or more
        held = len(self._buffer)
        return _Room(max(room - held, 0), max(free - held, 0), free, refill_at)

    def _feed_children(self) -> None:
        """Buffered jobs to the free children, then (when prefetching) a few
        queued behind each busy child's job. A job that may not run twice
        (manual_retry_only) never waits behind another: taking a queued job
        back can race with the child starting it."""
        buffer = self._buffer
        if not buffer:
            return
        children = list(self.pool.by_pid.values())
        if self.async_concurrency == 1:
            for child in children:
                if not buffer:
                    return
                if not child.jobs and child.takes_jobs:
                    self._send(child, buffer.popleft())
        else:
            self._fill_slots(children)
        if not self._prefetching():
            return
        # A child's queue is topped up once half of it ran: its frames go in
        # one write, and the child reads them in one.
        depth = self._queue_depth()
        refill_at = depth - depth // 2
        for child in children:
            if not child.jobs or (room := self._queue_room(child)) < refill_at:
                continue
            while room and self._buffer:
                if self._buffer[0].fields.get("manual_retry_only") == "1":
                    break
                self._send(child, self._buffer.popleft())
                room -= 1
            self._flush(child)

    def _fill_slots(self, children: list[Child]) -> None:
        """--async-concurrency: buffered jobs, in the order they were leased,
        each to the child with the most free slots it fits in (so a crash
        costs fewer jobs, and the children share the CPU). A job that fits
        no child (one that runs alone, while every child runs async jobs)
        holds back those behind it: the children drain, and the first free
        one takes it (or, after PREFETCH_MAX_WAIT_SECONDS, it goes back to
        the queue)."""
        buffer = self._buffer
        while buffer:
            job, best, most = buffer[0], None, 0
            for child in children:
                free = self._free_slots(child)
                if free > most and self.pool.fits(child, job):
                    best, most = child, free
            if best is None:
                return
            self._send(best, buffer.popleft())

    def _send(self, child: Child, job: Assignment) -> None:
        """Give ``job`` to ``child`` (a queued job's frame waits for _flush)."""
        if self.pool.assign(child, job):  # it runs now
            self._flush(child)
            self._job_started(child, job)

    def _flush(self, child: Child) -> None:
        """Write what waits for the child; watch its pipe for room if the
        pipe is full."""
        if child.outbox:
            self.pool.flush(child)
        if child.outbox:
            self._watch_child(child)

    def _job_started(self, child: Child, job: Assignment) -> None:
        if not job.start_reported:
            self._report_start(job)
        if logs.log.isEnabledFor(logging.DEBUG):  # skip building the fields per job
            logs.event("job started", logging.DEBUG, **_run_fields(job, child.pid))

    def _report_start(self, job: Assignment) -> None:
        self.broker.started(job.queue, job.job_id)
        job.start_reported = True

    def _take_back_queued(self, child: Child, first: Sequence[Assignment] = ()) -> None:
        """The jobs queued on a child that will not run them (dead, or
        killed) go back in line, in order, ``first`` first; those being
        dropped were handed back already."""
        jobs = [*first, *child.queued]
        for job in reversed(jobs):
            if job.job_id not in child.dropping:
                self._take_back(job)
        child.queued.clear()

    def _take_back(self, job: Assignment) -> None:
        """A job that never started (its child died first, or it was
        dropped): first in line for the next free child, or back to the
        queue when stopping."""
        if self._stopping:
            self.broker.hand_back(job.queue, job.job_id)
        else:
            self._buffer.appendleft(job)

    def _oldest_prefetched(self) -> float | None:
        """When the longest-waiting prefetched job was leased (monotonic)."""
        children = self.pool.by_pid.values()
        oldest = [c.queued[0].leased for c in children if c.queued and not c.dropping]
        if self._buffer:
            oldest.append(self._buffer[0].leased)
        return min(oldest, default=None)

    def _return_stale_prefetch(self, now: float) -> None:
        """Prefetched jobs that waited too long for a child of this worker go
        back to the queue for any worker; all of them once jobs got long, or
        when stopping (at once)."""
        prefetching = self._prefetching()
        # Without prefetching, a buffered job found no child in this turn
        # and goes back now; with slots, it may wait for one a little.
        at_once = not prefetching and self.async_concurrency == 1
        if not at_once and now < self._stale_checked + STALE_CHECK_SECONDS:
            return
        self._stale_checked = now
        too_old = now - PREFETCH_MAX_WAIT_SECONDS
        while self._buffer and (at_once or self._buffer[0].leased <= too_old):
            job = self._buffer.popleft()
            self.broker.hand_back(job.queue, job.job_id)
        for child in self.pool.by_pid.values():
            queued = child.queued
            if queued and not child.dropping and (not prefetching or queued[0].leased <= too_old):
                self._drop_queued(child)

    def _drop_queued(self, child: Child) -> None:
        """Take back the jobs queued on ``child``: they go back to the queue
        at once; the child skips each (says "dropped") unless it started it
        in the meantime, in which case that run ends as usual (its finish is
        then "lost": the job was handed back)."""
        for job in child.queued:
            self.broker.hand_back(job.queue, job.job_id)
            self.pool.drop(child, job)
        self._flush(child)

    def _arm_wait(self, room: _Room) -> None:
        """Nothing to fetch: wait for a wake-up, which brings jobs for the
        free children with it (Broker.arm_wait)."""
        if (
            self._stopping
            or self.broker.maybe_work
            or self.broker.armed
            or time.monotonic() < self._redis_retry_at
            or not room.fetch
            # Stepping aside: a wait could take the wake-up meant for others.
            or self.broker.fetches_held(time.monotonic())
        ):
            return
        try:
            self.broker.arm_wait(room.start_now)
        except redis.RedisError as exc:
            self._redis_trouble(exc)

    def _unarm_wait(self) -> None:
        self.broker.cancel_wait()

    # -- shutdown ---------------------------------------------------------------
    def _begin_stop(self, *, force: bool, why: str) -> None:
        now = time.monotonic()
        if not self._stopping:
            self._stopping = True
            self._stop_deadline = now + self.settings.shutdown_timeout
            if not self.broker.wake_fetch_armed:  # else it answers within a second
                self._unarm_wait()
            logs.event(
                "shutting down: no new jobs, finishing those in flight",
                logging.INFO,
                signal=why,
                in_flight=self._running_jobs(),
                timeout_s=self.settings.shutdown_timeout,
            )
        if force:
            self._stop_deadline = now

    def _shutdown_step(self) -> bool:
        """True once the worker may exit: nothing in flight and nothing left
        to send to Redis, or, after a forced stop, when Redis had its chance
        to take the hand-backs (``_final_deadline``)."""
        busy = self.pool.busy()
        if not busy and not self.broker.has_pending() and not self.broker.wake_fetch_armed:
            if not self._forced:
                logs.log.info("sandboxq worker stopped cleanly")
            return True
        now = time.monotonic()
        if self._forced:
            if now >= self._final_deadline:
                self._give_up_on_redis()
                return True
            return False
        if now < self._stop_deadline:
            return False
        self._forced = True
        self._final_deadline = now + self.broker.reply_timeout + 1.0
        for child in busy:
            for job in (*child.jobs.values(), *child.queued):
                if job.job_id not in child.dropping:
                    # The child may have started it (a queued one too, since
                    # it last said so): it may have run.
                    self.broker.hand_back(job.queue, job.job_id, ran=True)
            child.jobs.clear()
            child.queued.clear()
            self.pool.kill(child)
        return False

    def _give_up_on_redis(self) -> None:
        """Stopping while Redis does not answer: what is still pending can
        only come back through the leases."""
        handing_back = (*self.broker.releases.values(), *self.broker.interrupted.values())
        left = [job_id for ids in handing_back for job_id in ids]
        logs.event(
            "could not reach Redis before stopping: jobs not handed back and results "
            "not recorded run again once their leases lapse",
            logging.ERROR,
            job_ids=",".join(left),
            unrecorded=sum(len(entries) for entries in self.broker.finishes.values()),
        )


def _run_fields(job: Assignment, pid: int) -> dict[str, Any]:
    """The fields of a log line about one run of a job, in ``pid``."""
    return {
        "job_id": job.job_id,
        "job_name": job.name,
        "queue": job.queue,
        "attempt": job.attempt,
        "pid": pid,
    }


def _average(average: float | None, sample: float) -> float:
    """An exponential moving average: recent samples count most."""
    if average is None:
        return sample
    return average + AVERAGE_WEIGHT * (sample - average)
