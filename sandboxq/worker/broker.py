"""The parent's side of Redis: every call a worker makes, batched.

One pipelined round trip settles finished jobs, records progress and logs,
leases new jobs and, when due, renews every lease and recovers stalled jobs.
A second connection only ever waits: a BZPOPMIN on the queues' markers,
sent without waiting for the reply, so the parent loop can watch it next to
the children's pipes and wake within a millisecond of an add.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

import redis

from sandboxq import fast, registry
from sandboxq.connection import connect
from sandboxq.keys import QueueKeys
from sandboxq.redis_checks import check_server
from sandboxq.schedule import fire_due
from sandboxq.scripts import Scripts, decode_ids, now_ms

#: The longest a blocking wait lasts before it is re-armed.
MAX_WAIT_SECONDS = 30.0
#: The shortest: a timeout that could round to 0 would block forever.
MIN_WAIT_SECONDS = 0.01

#: The longest a worker goes between looks at its queues' schedules (the
#: scheduling duty: every worker does it; fire_schedule.lua makes each
#: occurrence happen once). It looks sooner when a schedule is due sooner,
#: and after a wake-up (a schedule may have been added or changed).
SCHEDULE_CHECK_SECONDS = 1.0

#: Redis trouble the worker waits out, retrying with backoff and keeping what
#: is pending: unreachable, too slow, full (noeviction at maxmemory), or a
#: replica during a failover.
REDIS_ERRORS = (
    redis.ConnectionError,
    redis.TimeoutError,
    redis.exceptions.OutOfMemoryError,
    redis.exceptions.ReadOnlyError,
)


@dataclass(slots=True)
class StepResult:
    #: Leased jobs: (queue, job id, decoded hash fields).
    fetched: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    #: Settled jobs: (queue, job id, status) with status completed, failed,
    #: retrying or lost.
    finished: list[tuple[str, str, str]] = field(default_factory=list)
    #: Jobs recovered from dead workers: (queue, requeued ids, failed ids).
    recovered: list[tuple[str, list[str], list[str]]] = field(default_factory=list)
    #: Queues where a limit (rate, concurrency, a paused group) held jobs back.
    rate_limited: list[str] = field(default_factory=list)
    #: Schedule occurrences this worker enqueued: (queue, how many).
    scheduled: list[tuple[str, int]] = field(default_factory=list)
    #: Jobs fetched again while this worker still runs them: (queue, job id).
    still_running: list[tuple[str, str]] = field(default_factory=list)


class Broker:
    def __init__(
        self,
        url: str,
        queues: list[str],
        token: str,
        *,
        lease: float,
        max_stalls: int,
        settings: dict[str, Any] | None = None,
        description: dict[str, Any] | None = None,
    ) -> None:
        self.url = url
        self.client = connect(url)
        self.scripts = Scripts(self.client)
        self.keys = {q: QueueKeys.for_queue(q) for q in queues}
        self.queues = list(queues)
        self.token = token
        self.lease_ms = int(lease * 1000)
        self.max_stalls = max_stalls
        self.renew_every = lease / 3
        self.recover_every = max(min(lease / 2, 15.0), 0.25)
        now = time.monotonic()
        self.next_renew = now + self.renew_every
        self.next_recover = now  # recover what dead workers left, at once
        self.next_schedules = now
        self._schedules_due = False
        self.finishes: dict[str, list[list[Any]]] = {q: [] for q in queues}
        self.reports: dict[str, list[tuple[str, str, str]]] = {q: [] for q in queues}
        self.leased: dict[str, set[str]] = {q: set() for q in queues}
        self.maybe_work = True  # the queues may hold jobs: fetch before waiting
        self.next_due_ms: int | None = None
        self._rotation = 0
        self._waiter: Any = None  # a redis Connection used only for BZPOPMIN
        self._armed = False
        self._scripts_loaded = False
        self.settings = settings or {}
        #: What the server check found worth a warning, at (re)connection.
        self.warnings: list[str] = []
        self.description = description or {}
        #: A local mirror of each rate-limited queue's window (fast.SlidingWindow):
        #: the parent asks Redis for no more jobs than it allows, and does not
        #: ask again before it opens. Redis stays the authority: the mirror is
        #: re-read at start, every recover tick, after a wake-up (a limit may
        #: have changed) and whenever fetch says a limit held jobs back.
        self.windows: dict[str, fast.SlidingWindow] = {}
        self._window_params: dict[str, tuple[int, int]] = {}
        self._resync: set[str] = set(queues)

    # -- what the parent loop asks -------------------------------------------
    def has_pending(self) -> bool:
        return any(self.finishes.values()) or any(self.reports.values())

    def next_timer(self) -> float:
        return min(self.next_renew, self.next_recover, self.next_schedules)

    def finish(self, queue: str, entry: list[Any]) -> None:
        self.finishes[queue].append(entry)

    def report(self, queue: str, job_id: str, kind: str, value: str) -> None:
        self.reports[queue].append((job_id, kind, value))

    # -- the round trip ------------------------------------------------------
    def step(self, free_slots: int) -> StepResult:
        """One pipelined round trip (a second one only when the first queue
        asked could not fill the free slots). Raises a redis error if Redis
        is unreachable; nothing pending is lost then, the next step retries."""
        now = now_ms()
        clock = time.monotonic()
        renew = clock >= self.next_renew
        recover = clock >= self.next_recover
        if clock >= self.next_schedules:
            self.next_schedules = clock + SCHEDULE_CHECK_SECONDS
            self._schedules_due = True
        result = StepResult()
        order = self._fetch_order() if free_slots > 0 and self.maybe_work else []
        if not self._scripts_loaded:
            self.warnings = check_server(self.client)  # may raise UnsupportedRedis
            self.scripts.load_all()
            for k in self.keys.values():  # the worker's own flow-control options
                if self.settings:
                    self.scripts.configure(k, self.settings)
            self._scripts_loaded = True
        next_due: list[int] = []
        pipe = self.client.pipeline(transaction=False)
        plan = self._queue_commands(pipe, now, renew, recover, order[:1], free_slots, next_due)
        try:
            replies = pipe.execute() if plan else []
        except redis.exceptions.NoScriptError:
            # Redis restarted or flushed its script cache: load and resend.
            self.scripts.load_all()
            pipe = self.client.pipeline(transaction=False)
            plan = self._queue_commands(pipe, now, renew, recover, order[:1], free_slots, next_due)
            replies = pipe.execute()
        # Redis answered: what was sent is settled.
        for queue in self.queues:
            self.finishes[queue].clear()
            self.reports[queue].clear()
        if renew:
            self.next_renew = clock + self.renew_every
        if recover:
            self.next_recover = clock + self.recover_every
        for (kind, queue, sent), reply in zip(plan, replies, strict=True):
            if kind == "finish":
                for entry, status in zip(sent, reply, strict=True):
                    self.leased[queue].discard(entry[0])
                    result.finished.append((queue, entry[0], status.decode()))
            elif kind == "renew":
                self.leased[queue].difference_update(decode_ids(reply))
            elif kind == "recover":
                requeued, failed = reply
                if requeued or failed:
                    result.recovered.append((queue, decode_ids(requeued), decode_ids(failed)))
            elif kind == "fetch":
                self._take(queue, reply, result, next_due, now)
            elif kind == "schedules":
                self._run_schedules(queue, reply, now, clock, result)
            elif kind == "limits":
                self._mirror_limits(queue, reply)
            elif kind == "limiter" and (window := self.windows.get(queue)) is not None:
                window.sync([int(score) for _member, score in reply])
        # The first queue could not fill every slot: ask the others in turn.
        for queue in order[1:]:
            wanted = self._room(queue, free_slots - len(result.fetched), now, next_due)
            if wanted <= 0:
                continue
            fetched_at = now_ms()
            reply = self.scripts.fetch(
                self.keys[queue], fetched_at, wanted, self.token, self.lease_ms
            )
            self._take(queue, reply, result, next_due, fetched_at)
        if order:
            # Fewer jobs than slots: the queues are empty (or paused) for now.
            self.maybe_work = len(result.fetched) + len(result.still_running) >= free_slots
            self.next_due_ms = min(next_due, default=None)
        return result

    def _queue_commands(
        self,
        pipe: Any,
        now: int,
        renew: bool,
        recover: bool,
        fetch_from: list[str],
        free_slots: int,
        next_due: list[int],
    ) -> list[tuple[str, str, Any]]:
        """Queue this step's scripts on ``pipe``; returns what each reply is for.
        A fetch the local rate window rules out is not sent; when that window
        opens goes to ``next_due``."""
        plan: list[tuple[str, str, Any]] = []
        for queue, k in self.keys.items():
            # Reports before finishes: a job's last progress and log lines
            # usually travel in the same step as its result, and finishing
            # drops the lease token that report.lua checks.
            if self.reports[queue]:
                self.scripts.report(k, self.token, self.reports[queue], pipe=pipe)
                plan.append(("report", queue, None))
            if self.finishes[queue]:
                self.scripts.finish(k, now, self.token, self.finishes[queue], pipe)
                plan.append(("finish", queue, list(self.finishes[queue])))
            if renew and self.leased[queue]:
                leased = list(self.leased[queue])
                self.scripts.renew(k, now, self.token, self.lease_ms, leased, pipe)
                plan.append(("renew", queue, None))
            if recover:
                self.scripts.recover_stalled(k, now, self.max_stalls, pipe=pipe)
                plan.append(("recover", queue, None))
        if recover and self.description:  # the same cadence: at start, then <= 15 s
            registry.heartbeat(pipe, self.token, self.description, now)
            plan.append(("heartbeat", "", None))
        for queue, k in self.keys.items():
            if self._schedules_due:  # the earliest next occurrence, if any
                pipe.zrange(k.schedule_times, 0, 0, withscores=True)
                plan.append(("schedules", queue, None))
            if recover or queue in self._resync:
                pipe.hmget(k.meta, "rl_max", "rl_window_ms")
                pipe.zrange(k.limiter, 0, -1, withscores=True)
                plan += [("limits", queue, None), ("limiter", queue, None)]
        self._resync.clear()
        for queue in fetch_from:
            count = self._room(queue, free_slots, now, next_due)
            if count > 0:
                self.scripts.fetch(self.keys[queue], now, count, self.token, self.lease_ms, pipe)
                plan.append(("fetch", queue, None))
        return plan

    def _run_schedules(
        self, queue: str, earliest: Any, now: int, clock: float, result: StepResult
    ) -> None:
        """Fire the queue's due occurrences (extra round trips only then), and
        look again when its next one is due, if that is sooner."""
        self._schedules_due = False
        if not earliest:
            return
        due_ms = int(earliest[0][1])
        if due_ms <= now:
            if created := fire_due(self.scripts, self.keys[queue], now):
                result.scheduled.append((queue, created))
                self.maybe_work = True
            self.next_schedules = clock  # read the new next time at once
        else:
            self.next_schedules = min(self.next_schedules, clock + (due_ms - now) / 1000.0)

    def _room(self, queue: str, wanted: int, now: int, next_due: list[int]) -> int:
        """How many jobs to ask ``queue`` for: ``wanted``, or fewer if its
        mirrored rate window is fuller (then note when it opens)."""
        window = self.windows.get(queue)
        if window is None or wanted <= 0:
            return wanted
        room = window.allowed(now)
        if room <= 0:
            next_due.append(window.opens_at(now))
        return min(wanted, room)

    def _mirror_limits(self, queue: str, reply: Any) -> None:
        """Keep the mirror in step with the queue's rate limit (or drop it);
        the limiter log read next in the same reply fills it."""
        raw_max, raw_window = reply
        if raw_max is None or raw_window is None:
            self.windows.pop(queue, None)
            self._window_params.pop(queue, None)
            return
        params = (int(raw_max), int(raw_window))
        if self._window_params.get(queue) != params:
            self.windows[queue] = fast.SlidingWindow(*params)
            self._window_params[queue] = params

    def _fetch_order(self) -> list[str]:
        """The queues, starting one further along each time, so one busy
        queue cannot starve the others."""
        self._rotation = (self._rotation + 1) % len(self.queues)
        return self.queues[self._rotation :] + self.queues[: self._rotation]

    def _take(
        self, queue: str, reply: Any, result: StepResult, next_due: list[int], now: int
    ) -> None:
        rows, due, limited = reply
        if limited:
            result.rate_limited.append(queue)
            self._resync.add(queue)  # Redis saw starts the mirror did not
        fetched = fast.decode_fetched(rows)
        if fetched and (window := self.windows.get(queue)) is not None:
            window.record(now, len(fetched))
        for job_id, fields in fetched:
            if job_id in self.leased[queue]:
                # Our own lease lapsed (the parent was frozen, or Redis slow)
                # and the job came back to us while a child still runs it:
                # keep the fresh lease for that run instead of starting another.
                result.still_running.append((queue, job_id))
                continue
            self.leased[queue].add(job_id)
            result.fetched.append((queue, job_id, fields))
        if due >= 0:
            next_due.append(int(due))

    def release(self, jobs: list[tuple[str, str]]) -> list[str]:
        """Hand unfinished jobs straight back to their queues (forced stop)."""
        released = []
        for queue in self.queues:
            ids = [job_id for q, job_id in jobs if q == queue]
            if ids:
                released += self.scripts.release(self.keys[queue], self.token, ids)
                self.leased[queue].difference_update(ids)
        return released

    # -- the blocking wait -----------------------------------------------------
    def arm_wait(self) -> int:
        """Start waiting for a marker (or the next delayed job) unless a wait
        is armed already; returns the file descriptor to watch."""
        if self._waiter is None:
            self._waiter = self.client.connection_pool.make_connection()
        conn = self._waiter
        if not self._armed:
            conn.connect()
            timeout = MAX_WAIT_SECONDS
            if self.next_due_ms is not None:
                timeout = min(timeout, (self.next_due_ms - now_ms()) / 1000.0)
            markers = [k.marker for k in self.keys.values()]
            # BZPOPMIN treats 0 as "forever", and Redis truncates seconds to
            # whole milliseconds ("0.001" can become 0): never ask for less
            # than MIN_WAIT_SECONDS, so "due now" means "look again soon".
            conn.send_command("BZPOPMIN", *markers, f"{max(timeout, MIN_WAIT_SECONDS):.3f}")
            self._armed = True
        assert conn._sock is not None
        fileno: int = conn._sock.fileno()
        return fileno

    @property
    def armed(self) -> bool:
        return self._armed

    def wait_done(self) -> None:
        """The armed wait answered (a marker, or its timeout): fetch again."""
        self._armed = False
        self.maybe_work = True
        self._resync.update(self.windows)  # a wake-up may be a changed limit
        self.next_schedules = time.monotonic()  # ... or a new schedule
        assert self._waiter is not None
        try:
            self._waiter.read_response()
        except REDIS_ERRORS:
            self._waiter.disconnect()

    def cancel_wait(self) -> None:
        """Drop an armed wait (shutting down, or Redis trouble)."""
        if self._waiter is not None:
            self._waiter.disconnect()
        self._armed = False

    def close(self) -> None:
        self.cancel_wait()
        if self.description:
            with contextlib.suppress(*REDIS_ERRORS):
                registry.forget(self.client, self.token)
        self.client.close()
