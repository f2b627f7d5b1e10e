"""The parent's side of Redis: every call a worker makes, batched.

One pipelined round trip settles finished jobs, records progress and logs,
leases new jobs and, when due, renews every lease and recovers stalled jobs.
A second connection only ever waits: a BZPOPMIN on the queues' markers,
sent without waiting for the reply, so the parent loop can watch it next to
the children's pipes and wake within a millisecond of an add.

Redis faults are waited out, never fatal, and lose nothing:

- every Redis error is trouble to wait out (the parent backs off and calls
  :meth:`Broker.step` again), whether the connection broke or the server
  refused (MISCONF, BUSY, LOADING, READONLY, OOM, MASTERDOWN, TRYAGAIN...);
- what a failed command carried (finishes, progress, logs) stays pending and
  goes again; what the commands that succeeded returned is used, so a job a
  fetch leased is never dropped because a later command failed;
- a fetch whose reply never came may still have leased jobs: the next step
  hands them back with reclaim.lua (they never started, so no stall counts);
- a finish sent twice is recognized (its lease number), and says so;
- leases are judged on the Redis server's clock: the worker measures its
  offset with TIME and passes corrected times, so a worker whose clock is
  off neither steals live jobs nor delays the recovery of dead ones.
"""

from __future__ import annotations

import contextlib
import re
import time
from dataclasses import dataclass, field
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from sandboxq import fast, registry
from sandboxq.connection import connect
from sandboxq.keys import QueueKeys
from sandboxq.redis_checks import check_server
from sandboxq.schedule import fire_due
from sandboxq.scripts import Scripts, decode_ids

#: The longest a blocking wait lasts before it is re-armed.
MAX_WAIT_SECONDS = 30.0
#: The shortest: a timeout that could round to 0 would block forever.
MIN_WAIT_SECONDS = 0.01

#: The longest a worker goes between looks at its queues' schedules (the
#: scheduling duty: every worker does it; fire_schedule.lua makes each
#: occurrence happen once). It looks sooner when a schedule is due sooner,
#: and after a wake-up (a schedule may have been added or changed).
SCHEDULE_CHECK_SECONDS = 1.0

#: Redis error replies that mean "not now" rather than "never": the server is
#: saving badly (MISCONF), busy with a script (BUSY), loading its data, a
#: replica, full, or its cluster or master is failing over. The worker treats
#: them like a lost connection. Any other error reply is waited out too, but
#: logged as an error: it points at a bug or at data something else wrote.
TRANSIENT_REPLIES = (
    "MISCONF",
    "BUSY",
    "LOADING",
    "READONLY",
    "OOM",
    "MASTERDOWN",
    "TRYAGAIN",
    "CLUSTERDOWN",
    "NOREPLICAS",
)
_TRANSIENT = re.compile(r"(?:^|[\s:-])(?:" + "|".join(TRANSIENT_REPLIES) + r")\b")

#: A TIME sample taken in a round trip slower than this is not trusted to
#: correct the clock (the server may have run it long after it was sent).
CLOCK_SAMPLE_MAX_SECONDS = 0.5


#: What redis-py makes of some of those replies (it drops the code from the
#: message): LOADING is a ConnectionError already, MASTERDOWN a ClusterDownError.
_TRANSIENT_TYPES = (
    redis.ConnectionError,
    redis.TimeoutError,
    redis.exceptions.ReadOnlyError,
    redis.exceptions.OutOfMemoryError,
    redis.exceptions.TryAgainError,
    redis.exceptions.ClusterDownError,
)


def is_transient(exc: BaseException) -> bool:
    """Whether a Redis error is trouble that passes (see TRANSIENT_REPLIES).
    A script's error wraps the reply of the command that failed inside it."""
    if isinstance(exc, _TRANSIENT_TYPES):
        return True
    return isinstance(exc, redis.ResponseError) and bool(_TRANSIENT.search(str(exc)))


def reply_timeout(lease: float) -> float:
    """How long the parent waits for a reply before giving up on it: well
    inside the lease, so a lost reply is noticed and retried before the
    leases it was to renew lapse; never under a second."""
    return min(max(lease / 4, 1.0), 5.0)


class ServerClock:
    """The Redis server's clock as seen from this process: local time plus an
    offset measured with TIME. Every worker passes corrected times to the
    scripts, so leases are set and judged on one clock."""

    def __init__(self) -> None:
        self.offset_ms = 0.0
        self.measured = False

    def now_ms(self) -> int:
        return int(time.time() * 1000 + self.offset_ms)

    def sample(self, sent_at: float, received_at: float, reply: Any) -> None:
        """Correct the offset from a TIME reply that ran first in a round
        trip sent at ``sent_at`` (local seconds). The server ran it about
        half a round trip later: a slow round trip (a stalled server) gives
        no trustworthy sample, unless there is none yet."""
        elapsed = received_at - sent_at
        if self.measured and elapsed > CLOCK_SAMPLE_MAX_SECONDS:
            return
        seconds, micros = reply
        server_ms = int(seconds) * 1000 + int(micros) / 1000
        self.offset_ms = server_ms - (sent_at + elapsed / 2) * 1000
        self.measured = True


@dataclass(slots=True)
class StepResult:
    #: Leased jobs: (queue, job id, decoded hash fields).
    fetched: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    #: Settled jobs: (queue, job id, status) with status completed, failed,
    #: retrying, rate-limited, settled:<status> (sent twice) or lost.
    finished: list[tuple[str, str, str]] = field(default_factory=list)
    #: Jobs recovered from dead workers: (queue, requeued ids, failed ids).
    recovered: list[tuple[str, list[str], list[str]]] = field(default_factory=list)
    #: Queues where a limit (rate, concurrency, a paused group) held jobs back.
    rate_limited: list[str] = field(default_factory=list)
    #: Schedule occurrences this worker enqueued: (queue, how many).
    scheduled: list[tuple[str, int]] = field(default_factory=list)
    #: Schedules that could not be fired: (queue, key, why).
    broken_schedules: list[tuple[str, str, str]] = field(default_factory=list)
    #: Jobs fetched again while this worker still runs them: (queue, job id).
    still_running: list[tuple[str, str]] = field(default_factory=list)
    #: Jobs a lost fetch reply had leased here, handed back: (queue, ids).
    reclaimed: list[tuple[str, list[str]]] = field(default_factory=list)
    #: The Redis error this step ran into, if any; what is listed above
    #: happened anyway, and what the failed commands carried is pending again.
    error: Exception | None = None


@dataclass(slots=True)
class _Command:
    """One command of a step: what it is, for which queue, what it carries."""

    kind: str
    queue: str = ""
    sent: Any = None


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
        self.reply_timeout = reply_timeout(lease)
        # No retries inside redis-py: a fetch sent again after a lost reply
        # would lease a second batch. The loop retries, knowing what was sent.
        self.client = connect(
            url,
            socket_timeout=self.reply_timeout,
            socket_connect_timeout=self.reply_timeout,
            retry=Retry(NoBackoff(), 0),
        )
        self.scripts = Scripts(self.client)
        self.clock = ServerClock()
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
        self._due_schedules: set[str] = set()  # queues with a schedule due now
        self.finishes: dict[str, list[list[Any]]] = {q: [] for q in queues}
        self.reports: dict[str, list[tuple[str, str, str]]] = {q: [] for q in queues}
        self.leased: dict[str, set[str]] = {q: set() for q in queues}
        #: Per queue, the highest fetch request whose reply never came: the
        #: next step reclaims what it may have leased.
        self.unsure: dict[str, int] = {}
        self._requests = 0
        self.maybe_work = True  # the queues may hold jobs: fetch before waiting
        self.next_due_ms: int | None = None
        self._rotation = 0
        self._waiter: Any = None  # a redis Connection used only for BZPOPMIN
        self._armed = False
        self._wait_deadline = 0.0
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
        return bool(self.unsure) or any(self.finishes.values()) or any(self.reports.values())

    def next_timer(self) -> float:
        return min(self.next_renew, self.next_recover, self.next_schedules)

    def finish(self, queue: str, entry: list[Any]) -> None:
        self.finishes[queue].append(entry)

    def report(self, queue: str, job_id: str, kind: str, value: str) -> None:
        self.reports[queue].append((job_id, kind, value))

    def now_ms(self) -> int:
        """Now on the Redis server's clock (milliseconds)."""
        return self.clock.now_ms()

    # -- the round trip ------------------------------------------------------
    def step(self, free_slots: int) -> StepResult:
        """One pipelined round trip (a second one only when the first queue
        asked could not fill the free slots, or a schedule is due). Redis
        errors do not raise: they end up in ``result.error``, with what the
        failed commands carried pending again for the next step."""
        result = StepResult()
        try:
            self._connect_once()
        except redis.RedisError as exc:
            result.error = exc
            return result
        now = self.now_ms()
        clock = time.monotonic()
        renew = clock >= self.next_renew
        recover = clock >= self.next_recover
        if clock >= self.next_schedules:
            self.next_schedules = clock + SCHEDULE_CHECK_SECONDS
            self._schedules_due = True
        # Hand back what lost replies leased before asking for more.
        order = self._fetch_order() if free_slots > 0 and self.maybe_work else []
        fetch_now = [] if self.unsure else order[:1]
        next_due: list[int] = []
        pipe = self.client.pipeline(transaction=False)
        plan = self._queue_commands(pipe, now, renew, recover, fetch_now, free_slots, next_due)
        sent_at = time.time()
        try:
            replies = pipe.execute(raise_on_error=False) if plan else []
        except redis.RedisError as exc:
            for command in plan:
                self._undo(command, exc)
            result.error = exc
            return result
        received_at = time.time()
        if renew:
            self.next_renew = clock + self.renew_every
        if recover:
            self.next_recover = clock + self.recover_every
        for command, reply in zip(plan, replies, strict=True):
            if isinstance(reply, Exception):
                self._undo(command, reply)
                if not isinstance(reply, redis.exceptions.NoScriptError):
                    result.error = result.error or reply
                continue
            self._apply(command, reply, result, next_due, now, (sent_at, received_at))
        if fetch_now and result.error is None:
            self._fetch_others(order[1:], free_slots, result, next_due)
        if result.error is None and self._due_schedules:
            self._fire_schedules(result)
        if fetch_now and result.error is None:
            # Fewer jobs than slots: the queues are empty (or paused) for now.
            self.maybe_work = len(result.fetched) + len(result.still_running) >= free_slots
            self.next_due_ms = min(next_due, default=None)
        return result

    def _connect_once(self) -> None:
        """At the first step and after a script cache flush: check the
        server, measure its clock and load the scripts."""
        if self._scripts_loaded:
            return
        self.warnings = check_server(self.client)  # may raise UnsupportedRedis
        sent_at = time.time()
        server_time = self.client.time()
        self.clock.sample(sent_at, time.time(), server_time)
        self.scripts.load_all()
        for k in self.keys.values():  # the worker's own flow-control options
            if self.settings:
                self.scripts.configure(k, self.settings)
        self._scripts_loaded = True

    def _queue_commands(
        self,
        pipe: Any,
        now: int,
        renew: bool,
        recover: bool,
        fetch_from: list[str],
        free_slots: int,
        next_due: list[int],
    ) -> list[_Command]:
        """Queue this step's commands on ``pipe``; returns what each one is.
        Pending finishes and reports move into the commands (a failed one
        puts them back). A fetch the local rate window rules out is not
        sent; when that window opens goes to ``next_due``."""
        plan: list[_Command] = []
        if recover:  # first, so the server reads its clock as soon as it can
            pipe.time()
            plan.append(_Command("time"))
        for queue, k in self.keys.items():
            # Reports before finishes: a job's last progress and log lines
            # usually travel in the same step as its result, and finishing
            # drops the lease token that report.lua checks.
            if reports := self.reports[queue]:
                self.reports[queue] = []
                self.scripts.report(k, self.token, reports, pipe=pipe)
                plan.append(_Command("report", queue, reports))
            if finishes := self.finishes[queue]:
                self.finishes[queue] = []
                self.scripts.finish(k, now, self.token, finishes, pipe)
                plan.append(_Command("finish", queue, finishes))
            if queue in self.unsure:
                known = list(self.leased[queue])
                self.scripts.reclaim(k, now, self.token, self.unsure[queue], known, pipe)
                plan.append(_Command("reclaim", queue, self.unsure[queue]))
            if renew and self.leased[queue]:
                leased = list(self.leased[queue])
                self.scripts.renew(k, now, self.token, self.lease_ms, leased, pipe)
                plan.append(_Command("renew", queue))
            if recover:
                self.scripts.recover_stalled(k, now, self.max_stalls, pipe=pipe)
                plan.append(_Command("recover", queue))
        if recover and self.description:  # the same cadence: at start, then <= 15 s
            registry.heartbeat(self.scripts, pipe, self.token, self.description, now)
            plan.append(_Command("heartbeat"))
        for queue, k in self.keys.items():
            if self._schedules_due:  # the earliest next occurrence, if any
                pipe.zrange(k.schedule_times, 0, 0, withscores=True)
                plan.append(_Command("schedules", queue))
            if recover or queue in self._resync:
                pipe.hmget(k.meta, "rl_max", "rl_window_ms")
                pipe.zrange(k.limiter, 0, -1, withscores=True)
                plan += [_Command("limits", queue), _Command("limiter", queue)]
        self._resync.clear()
        for queue in fetch_from:
            count = self._room(queue, free_slots, now, next_due)
            if count > 0:
                request = self._next_request()
                self.scripts.fetch(
                    self.keys[queue], now, count, self.token, self.lease_ms, pipe, request
                )
                plan.append(_Command("fetch", queue, request))
        return plan

    def _next_request(self) -> int:
        self._requests += 1
        return self._requests

    def _undo(self, command: _Command, error: Exception) -> None:
        """A command failed or its reply was lost: keep what it carried for
        the next step. A fetch may have run anyway (only NOSCRIPT says it did
        not), so what it may have leased is reclaimed."""
        if isinstance(error, redis.exceptions.NoScriptError):
            self._scripts_loaded = False  # Redis lost its script cache: load again
        if command.kind == "finish":
            self.finishes[command.queue][:0] = command.sent
        elif command.kind == "report":
            self.reports[command.queue][:0] = command.sent
        elif command.kind == "fetch" and not isinstance(error, redis.exceptions.NoScriptError):
            self.unsure[command.queue] = max(command.sent, self.unsure.get(command.queue, 0))
        elif command.kind == "renew":
            self.next_renew = time.monotonic()  # the leases still need it
        elif command.kind == "limits":
            self._resync.add(command.queue)
        elif command.kind == "schedules":
            self._schedules_due = True

    def _apply(
        self,
        command: _Command,
        reply: Any,
        result: StepResult,
        next_due: list[int],
        now: int,
        round_trip: tuple[float, float],
    ) -> None:
        """Use one command's reply."""
        kind, queue = command.kind, command.queue
        if kind == "time":
            self.clock.sample(*round_trip, reply)
        elif kind == "finish":
            for entry, status in zip(command.sent, reply, strict=True):
                self.leased[queue].discard(entry[0])
                result.finished.append((queue, entry[0], status.decode()))
        elif kind == "reclaim":
            if self.unsure.get(queue) == command.sent:
                del self.unsure[queue]
            if returned := decode_ids(reply):
                result.reclaimed.append((queue, returned))
        elif kind == "renew":
            self.leased[queue].difference_update(decode_ids(reply))
        elif kind == "recover":
            requeued, failed = reply
            if requeued or failed:
                result.recovered.append((queue, decode_ids(requeued), decode_ids(failed)))
        elif kind == "fetch":
            self._take(queue, reply, result, next_due, now)
        elif kind == "schedules":
            self._schedules_due = False
            self._plan_schedules(queue, reply, now)
        elif kind == "limits":
            self._mirror_limits(queue, reply)
        elif kind == "limiter" and (window := self.windows.get(queue)) is not None:
            window.sync([int(score) for _member, score in reply])

    def _fetch_others(
        self, queues: list[str], free_slots: int, result: StepResult, next_due: list[int]
    ) -> None:
        """The first queue could not fill every slot: ask the others in turn,
        one round trip each. A failure keeps what was fetched so far."""
        for queue in queues:
            fetched_at = self.now_ms()
            wanted = self._room(queue, free_slots - len(result.fetched), fetched_at, next_due)
            if wanted <= 0:
                continue
            request = self._next_request()
            try:
                reply = self.scripts.fetch(
                    self.keys[queue], fetched_at, wanted, self.token, self.lease_ms, None, request
                )
            except redis.RedisError as exc:
                self._undo(_Command("fetch", queue, request), exc)
                result.error = exc
                return
            self._take(queue, reply, result, next_due, fetched_at)

    # -- schedules -------------------------------------------------------------
    def _plan_schedules(self, queue: str, earliest: Any, now: int) -> None:
        """Note which queues have a schedule due now (fired after the round
        trip) and look again when the next one is due, if that is sooner."""
        if not earliest:
            return
        due_ms = int(earliest[0][1])
        if due_ms <= now:
            self._due_schedules.add(queue)
        else:
            clock = time.monotonic()
            self.next_schedules = min(self.next_schedules, clock + (due_ms - now) / 1000.0)

    def _fire_schedules(self, result: StepResult) -> None:
        """Fire the due occurrences (extra round trips only then). A schedule
        that cannot be fired is reported and skipped, never fatal."""
        due, self._due_schedules = self._due_schedules, set()
        for queue in due:
            try:
                created, broken = fire_due(self.scripts, self.keys[queue], self.now_ms())
            except redis.RedisError as exc:
                self._due_schedules.add(queue)  # fire it once Redis answers
                result.error = exc
                return
            if created:
                result.scheduled.append((queue, created))
                self.maybe_work = True
            result.broken_schedules += [(queue, key, why) for key, why in broken]
            self.next_schedules = time.monotonic()  # read the new next time at once

    # -- rate windows ------------------------------------------------------------
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
        """Hand unfinished jobs straight back to their queues (forced stop).
        Raises a Redis error if Redis cannot be reached."""
        released = []
        for queue in self.queues:
            ids = [job_id for q, job_id in jobs if q == queue]
            if ids:
                released += self.scripts.release(self.keys[queue], self.token, ids, self.now_ms())
                self.leased[queue].difference_update(ids)
        return released

    def forget(self, queue: str, job_id: str) -> None:
        """Stop renewing a job this worker will not finish (e.g. handed back)."""
        self.leased[queue].discard(job_id)

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
                timeout = min(timeout, (self.next_due_ms - self.now_ms()) / 1000.0)
            timeout = max(timeout, MIN_WAIT_SECONDS)
            markers = [k.marker for k in self.keys.values()]
            # BZPOPMIN treats 0 as "forever", and Redis truncates seconds to
            # whole milliseconds ("0.001" can become 0): never ask for less
            # than MIN_WAIT_SECONDS, so "due now" means "look again soon".
            conn.send_command("BZPOPMIN", *markers, f"{timeout:.3f}")
            self._armed = True
            # A reply that never comes (lost on the way) must not leave the
            # worker waiting forever: give up a little after the timeout.
            self._wait_deadline = time.monotonic() + timeout + self.reply_timeout
        assert conn._sock is not None
        fileno: int = conn._sock.fileno()
        return fileno

    @property
    def armed(self) -> bool:
        return self._armed

    def wait_overdue(self, now: float) -> bool:
        """The armed wait's reply is later than its timeout allows."""
        return self._armed and now >= self._wait_deadline

    @property
    def wait_deadline(self) -> float | None:
        return self._wait_deadline if self._armed else None

    def wait_done(self) -> None:
        """The armed wait answered (a marker, or its timeout): fetch again."""
        self._armed = False
        self._woken()
        assert self._waiter is not None
        try:
            self._waiter.read_response()
        except redis.RedisError:
            self._waiter.disconnect()

    def _woken(self) -> None:
        self.maybe_work = True
        self._resync.update(self.windows)  # a wake-up may be a changed limit
        self.next_schedules = time.monotonic()  # ... or a new schedule

    def cancel_wait(self) -> None:
        """Drop an armed wait (shutting down, Redis trouble, or a reply that
        never came); the next step looks for work instead."""
        if self._waiter is not None:
            self._waiter.disconnect()
        if self._armed:
            self._woken()
        self._armed = False

    def close(self) -> None:
        """Leave Redis: forget this worker's registry entry and fetch marks.
        Best effort: nothing here may raise, whatever state Redis is in."""
        with contextlib.suppress(redis.RedisError):
            self.cancel_wait()
        with contextlib.suppress(redis.RedisError, OSError):
            pipe = self.client.pipeline(transaction=False)
            if self.description:
                registry.forget(pipe, self.token)
            for k in self.keys.values():
                pipe.hdel(k.cancelled, self.token)
            pipe.execute()
        with contextlib.suppress(redis.RedisError, OSError):
            self.client.close()
