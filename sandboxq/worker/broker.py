"""The parent's side of Redis: every call a worker makes, batched into steps.

A *step* is one pipelined round trip: it records the progress and logs
children sent, marks prefetched jobs started when a child took them,
settles finished jobs, hands back jobs, leases new jobs and, when due,
renews every lease, recovers stalled jobs, fires schedules and looks for
cancel requests on the jobs it holds.
The parent never waits for it: :meth:`Broker.start_step` writes it to a
non-blocking connection (link.py), the parent's ``select`` watches that
connection next to the children's pipes, and :meth:`Broker.on_step_io`
returns the step's result once its last reply arrived. One step is in
flight at a time. A second connection only ever waits: a BZPOPMIN on the
queues' markers, so an idle worker wakes within a millisecond of an add.

Redis faults are waited out, never fatal, and lose nothing:

- every Redis error is trouble to wait out (the parent backs off and starts
  another step), whether the connection broke, a reply never came (after
  ``reply_timeout``), or the server refused (MISCONF, BUSY, LOADING...);
- the replies that did arrive are used (replies come in order, so a failure
  cuts the step after its last reply) and what the other commands carried
  (finishes, progress, logs, hand-backs) goes in the next step;
- a fetch whose reply never came may still have leased jobs: the next step
  hands them back with reclaim.lua (they never started, so no stall counts)
  and makes the lost request lease nothing if it reaches Redis late;
- a finish sent twice is recognized (its lease number), and says so;
- leases are judged on the Redis server's clock (clock.py).
"""

from __future__ import annotations

import contextlib
import re
import time
from dataclasses import dataclass, field
from typing import Any

import redis

from sandboxq import fast, registry, stats
from sandboxq.caps import MAX_STEPS
from sandboxq.keys import QueueKeys
from sandboxq.options import MAX_RATE_LIMIT_JOBS, MAX_SECONDS, ms
from sandboxq.redis_checks import RISKY_SETTINGS, UnsupportedRedis, info_field, judge_server
from sandboxq.schedule import BROKEN_RETRY_MS, DUE_BATCH, occurrence_jobs
from sandboxq.scripts import Scripts, decode_ids, lua_source
from sandboxq.worker.clock import ServerClock
from sandboxq.worker.cluster import ClusterLink, ClusterTopology, ClusterWaiter
from sandboxq.worker.link import Endpoint, LinkError, RedisLink
from sandboxq.worker.trouble import is_transient, reply_timeout

#: The report kind whose pending value a newer one replaces (the child's
#: protocol.PROGRESS; the broker does not import the pipe's protocol).
PROGRESS = "progress"

#: The longest a blocking wait lasts before it is re-armed.
MAX_WAIT_SECONDS = 30.0
#: The shortest: a timeout that could round to 0 would block forever.
MIN_WAIT_SECONDS = 0.01
#: The longest a wait that carries a fetch lasts (see ``arm_wait``): that
#: fetch leases its jobs for this much longer than the lease, and a worker
#: stopping while idle lets the wait answer before it exits.
WAKE_FETCH_MAX_WAIT_SECONDS = 1.0

#: The longest a worker goes between looks at its queues' schedules (the
#: scheduling duty: every worker does it; fire_schedule.lua makes each
#: occurrence happen once). It looks sooner when a schedule is due sooner,
#: and after a wake-up (a schedule may have been added or changed).
SCHEDULE_CHECK_SECONDS = 1.0

#: How often, while the worker holds jobs of a queue, a step asks which of
#: them a person cancelled (one ZMSCORE on the queue's cancel_requests per
#: queue): a cancelled job is stopped within about this long plus a round
#: trip. A worker that starts holding jobs first asks this long after, so a
#: short job never costs a round trip of its own.
CANCEL_CHECK_SECONDS = 0.5


def stored_id(job_id: str) -> str:
    """A fetched id as Redis stores it: the id itself, or for one that is
    not UTF-8 (fast.decode_fetched escapes such bytes as surrogates) its
    bytes, so the commands that settle it name that very job."""
    try:
        job_id.encode()
    except UnicodeEncodeError:
        return job_id.encode("utf-8", "surrogateescape")  # type: ignore[return-value]
    return job_id


#: A queue whose settings or commands fail is left alone this long, doubling
#: up to the most while it keeps failing; then the worker tries it again.
QUEUE_FAULT_SECONDS = 5.0
QUEUE_FAULT_MAX_SECONDS = 60.0

#: Commands that carry what the worker owes Redis for jobs it holds: when
#: one of them fails for a queue's own reason, that queue's share of every
#: step waits until the fault's retry (else each step would fail again).
CARRIERS = frozenset({"finish", "report", "step", "release", "reclaim", "renew", "cancels"})


@dataclass(slots=True)
class QueueFault:
    """Why this worker does not fetch from a queue for now (a fault barrier:
    one queue's bad settings or data pause that queue, never the worker)."""

    reason: str
    #: When to try the queue again (monotonic), and the next wait after that.
    until: float
    backoff: float
    #: Whether the queue's carried work (finishes, reports...) waits too.
    holds_work: bool
    #: The worker looked for work once the fault lapsed.
    retried: bool = False


class BadSetting(ValueError):
    """A queue setting read from Redis that the worker cannot use."""


def setting_int(name: str, raw: Any, low: int, high: int) -> int:
    """A whole-number setting read back from Redis (written as sandboxq
    writes integers, as fetch.lua reads them), or BadSetting naming it."""
    text = raw.decode(errors="backslashreplace") if isinstance(raw, bytes) else str(raw)
    if re.fullmatch(r"-?[0-9]{1,30}", text) is None:
        raise BadSetting(f"setting '{name}' = '{text[:40]}' is not a whole number")
    value = int(text)
    if not low <= value <= high:
        raise BadSetting(f"setting '{name}' = {value} is out of range ({low} to {high})")
    return value


@dataclass(slots=True)
class StepResult:
    #: Leased jobs: (queue, job id, decoded hash fields), or for a record
    #: that cannot be decoded (queue, stored id, its CorruptRecord).
    fetched: list[tuple[str, str, dict[str, Any] | fast.CorruptRecord]] = field(
        default_factory=list
    )
    #: How many of ``fetched`` (the first ones) Redis marked started; the
    #: others were prefetched, and their start is reported later.
    started_now: int = 0
    #: Seconds from sending the step to its last reply.
    round_trip: float = 0.0
    #: Settled jobs: (queue, job id, status) with status completed, failed,
    #: retrying, rate-limited, settled:<status> (sent twice) or lost.
    finished: list[tuple[str, str, str]] = field(default_factory=list)
    #: Jobs recovered from dead workers: (queue, requeued, failed, cancelled ids).
    recovered: list[tuple[str, list[str], list[str], list[str]]] = field(default_factory=list)
    #: Jobs this worker holds whose cancel a person asked for: (queue, job id).
    cancel_requested: list[tuple[str, str]] = field(default_factory=list)
    #: Durable steps sent: (queue, job id, key, step.lua's status).
    stepped: list[tuple[str, str, str, str]] = field(default_factory=list)
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
    #: Jobs this worker handed back (release.lua): (queue, ids).
    released: list[tuple[str, list[str]]] = field(default_factory=list)
    #: What the server check found worth a warning (at start).
    warnings: list[str] = field(default_factory=list)
    #: The step did the worker's work (not only its setup): at start, the
    #: first such step is when the worker is ready.
    worked: bool = False
    #: Why the server cannot be used (too old), from the server check.
    unsupported: str | None = None
    #: Queues this step found at fault (paused for now): (queue, kind,
    #: reason), kind "bad_setting" or "queue_error".
    faults: list[tuple[str, str, str]] = field(default_factory=list)
    #: Queues whose fault is over: the step used them without trouble.
    recovered_queues: list[str] = field(default_factory=list)
    #: The Redis error this step ran into, if any; what is listed above
    #: happened anyway, and what the failed commands carried is pending again.
    error: Exception | None = None


@dataclass(slots=True)
class _Command:
    """One command of a step: what it is, for which queue, what it carries."""

    kind: str
    queue: str = ""
    sent: Any = None


class _Commands:
    """What a step sends, recorded as a pipeline would queue them: the
    scripts' methods take it as their ``pipe``."""

    def __init__(self) -> None:
        self.sent: list[tuple[Any, ...]] = []

    def evalsha(self, *args: Any) -> None:
        self.sent.append(("EVALSHA", *args))

    def command(self, *args: Any) -> None:
        self.sent.append(args)


@dataclass(slots=True)
class _Step:
    plan: list[_Command]
    sent_at: float  # time.time(), for the clock
    deadline: float  # time.monotonic()
    replies: list[Any] = field(default_factory=list)
    fetched_from: str | None = None
    asked: int = 0
    start_now: int = 0
    worked: bool = False


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
        endpoint = Endpoint.from_url(url, connect_timeout=self.reply_timeout)
        self.keys = {q: QueueKeys.for_queue(q) for q in queues}
        #: Steps, and the blocking wait: one connection each, or on a Redis
        #: Cluster one per node for steps and one per queue for the wait.
        self.link: RedisLink | ClusterLink
        self.waiter: RedisLink | ClusterWaiter
        self.cluster = bool(endpoint.cluster_seeds)
        if self.cluster:
            topology = ClusterTopology(endpoint)
            self.link = ClusterLink(topology, home_key=self.keys[queues[0]].marker)
            self.waiter = ClusterWaiter(topology)
        else:
            self.link = RedisLink(endpoint)
            self.waiter = RedisLink(endpoint)
        # The scripts' SHAs and sources; the client behind them never
        # connects: steps go through the link.
        self.scripts = Scripts(redis.Redis())
        self.clock = ServerClock()
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
        self.next_cancel_check = now + CANCEL_CHECK_SECONDS
        #: No fetch before this (monotonic): see hold_fetches.
        self.fetch_hold_until = 0.0
        self._schedules_due = False
        #: Schedules through their three steps: due keys to read, then
        #: occurrences to fire (queue -> list).
        self._schedule_reads: dict[str, list[tuple[str, int]]] = {}
        self._schedule_fires: dict[str, list[tuple[str, int, int, int, list[Any]]]] = {}
        self.finishes: dict[str, list[list[Any]]] = {q: [] for q in queues}
        #: Prefetched jobs a child took: (job id, started ms), per queue.
        self.starts: dict[str, list[tuple[str, int]]] = {q: [] for q in queues}
        #: Since when finishes, starts, reports or hand-backs wait to be sent
        #: (monotonic), and how many: the parent may wait a little to send
        #: more of them in one step.
        self.pending_since: float | None = None
        self.pending_entries = 0
        #: Log lines children sent, per queue: (job id, "log", line); and
        #: each job's newest progress, which replaces any not sent yet.
        self.reports: dict[str, list[tuple[str, str, str]]] = {q: [] for q in queues}
        self.progress: dict[str, dict[str, str]] = {q: {} for q in queues}
        #: Log bytes held for each job (queue, id) until Redis took them:
        #: the parent stops reading a child whose job holds too many.
        self.report_bytes: dict[tuple[str, str], int] = {}
        #: Durable steps children wait on: (job id, key, result JSON).
        self.steps: dict[str, list[tuple[str, str, str]]] = {q: [] for q in queues}
        #: Jobs to hand back (release.lua), per queue: those that never ran,
        #: and those that may have run (a forced shutdown interrupted them).
        self.releases: dict[str, list[str]] = {q: [] for q in queues}
        self.interrupted: dict[str, list[str]] = {q: [] for q in queues}
        self.leased: dict[str, set[str]] = {q: set() for q in queues}
        #: Per queue, the highest fetch request whose reply never came: the
        #: next step reclaims what it may have leased.
        self.unsure: dict[str, int] = {}
        self._requests = 0
        self.maybe_work = True  # the queues may hold jobs: fetch before waiting
        self.next_due_ms: int | None = None
        self._rotation = 0
        #: Queues that came back short in a row, and when they said to look again.
        self._short: set[str] = set()
        self._due_seen: list[int] = []
        self._step: _Step | None = None
        self._fetching: tuple[str | None, int] = (None, 0)  # the step's fetch: queue, count
        self._start_now = 0  # of the step being built: jobs a free child takes at once
        self._specs: dict[str, Any] = {}  # due schedules' specs, until their counts come
        self._server_version = "0"
        self._server_config: dict[str, str] | None = {}
        self._armed = False
        self._wait_deadline = 0.0
        #: The armed wait's fetch, if it carries one: (queue, request number).
        self._wake_fetch: tuple[str, int] | None = None
        self._wake_replies: list[Any] = []
        #: Its reply, held while a step is in flight: (queue, reply).
        self._wake_held: tuple[_Command, Any] | None = None
        self._set_up = False
        self.settings = settings or {}
        self.description = description or {}
        #: A local mirror of each rate-limited queue's window (fast.SlidingWindow):
        #: the parent asks Redis for no more jobs than it allows, and does not
        #: ask again before it opens. Redis stays the authority: the mirror is
        #: re-read at start, every recover tick, after a wake-up (a limit may
        #: have changed) and whenever fetch says a limit held jobs back.
        self.windows: dict[str, fast.SlidingWindow] = {}
        self._window_params: dict[str, tuple[int, int]] = {}
        self._resync: set[str] = set(queues)
        #: Queues with a rate or concurrency limit (fetch.lua says): their
        #: limits count leases, so the worker does not prefetch their jobs.
        self.limited_queues: set[str] = set()
        #: Queues this worker leaves alone for now, and why (QueueFault).
        self.faults: dict[str, QueueFault] = {}
        #: Settled jobs counted for the dashboard's charts (sandboxq.stats),
        #: sent in a step that goes anyway, at most every FLUSH_SECONDS.
        self.stats = stats.MinuteCounts()
        self.next_stats_flush = now + stats.FLUSH_SECONDS
        self.next_depth = now
        #: Each queue's depth as read (ZCARD wait, GET gcount, ZCARD active),
        #: then the writes of it the next step carries.
        self._depth_read: dict[str, list[int]] = {}
        self._depth_writes: list[tuple[Any, ...]] = []

    # -- what the parent loop asks -------------------------------------------
    def has_pending(self) -> bool:
        """Something waits to be sent (a queue at fault holds its own), or a
        step is on its way."""
        if self._step is not None or self._schedule_reads or self._schedule_fires:
            return True
        now = time.monotonic()
        return any(
            queue in self.unsure
            or self.finishes[queue]
            or self.starts[queue]
            or self.reports[queue]
            or self.progress[queue]
            or self.steps[queue]
            or self.releases[queue]
            or self.interrupted[queue]
            for queue in self.queues
            if not self._holds_work(queue, now)
        )

    def has_urgent(self) -> bool:
        """Something waits that must not wait for more to batch with it:
        jobs a lost reply may have leased, a schedule half-way fired, a
        durable step a child waits on (steps of several children still share
        a step when they come while one is in flight)."""
        if self._schedule_reads or self._schedule_fires:
            return True
        if not self.unsure and not any(self.steps.values()):
            return False  # the common case, asked every turn of the loop
        now = time.monotonic()
        return any(
            (queue in self.unsure or self.steps[queue]) and not self._holds_work(queue, now)
            for queue in self.queues
        )

    @property
    def in_flight(self) -> bool:
        return self._step is not None

    @property
    def step_deadline(self) -> float | None:
        return self._step.deadline if self._step is not None else None

    def next_timer(self) -> float:
        due = min(self.next_renew, self.next_recover, self.next_schedules)
        if self.faults:  # a queue at fault is tried again then
            due = min(due, min(fault.until for fault in self.faults.values()))
        if self.next_cancel_check < due and self.holds_jobs():
            return self.next_cancel_check
        return due

    # -- queues at fault ---------------------------------------------------------
    def paused(self, queue: str, now: float) -> bool:
        """Whether this worker leaves the queue alone for now (a fault)."""
        fault = self.faults.get(queue)
        return fault is not None and now < fault.until

    def _holds_work(self, queue: str, now: float) -> bool:
        fault = self.faults.get(queue)
        return fault is not None and fault.holds_work and now < fault.until

    def _fault(
        self, queue: str, kind: str, reason: str, result: StepResult, *, holds_work: bool
    ) -> None:
        """One queue's settings or data failed: leave it alone for a while
        (fetching, its limits and schedules; with ``holds_work`` what the
        worker owes it too), longer each time it fails again."""
        fault = self.faults.get(queue)
        backoff = QUEUE_FAULT_SECONDS if fault is None else fault.backoff
        self.faults[queue] = QueueFault(
            reason,
            time.monotonic() + backoff,
            min(backoff * 2, QUEUE_FAULT_MAX_SECONDS),
            holds_work or (fault is not None and fault.holds_work),
        )
        # Its schedules are read again from the start after the pause.
        self._schedule_reads.pop(queue, None)
        self._schedule_fires.pop(queue, None)
        self._specs.pop(queue, None)
        result.faults.append((queue, kind, reason))

    def holds_jobs(self) -> bool:
        return any(self.leased.values())

    def hold_fetches(self, seconds: float) -> None:
        """Fetch nothing for ``seconds`` (other steps go on)."""
        self.fetch_hold_until = time.monotonic() + seconds

    def fetches_held(self, now: float) -> bool:
        return now < self.fetch_hold_until

    def _note_pending(self, entries: int = 1) -> None:
        if self.pending_since is None:
            self.pending_since = time.monotonic()
        self.pending_entries += entries

    def finish(self, queue: str, entry: list[Any]) -> None:
        self.finishes[queue].append(entry)
        self._note_pending()

    def started(self, queue: str, job_id: str) -> None:
        """A child took a prefetched job: mark it started (with the next
        finish call of its queue), now on the server's clock."""
        self.starts[queue].append((job_id, self.now_ms()))
        self._note_pending()

    def report(self, queue: str, job_id: str, kind: str, value: str) -> None:
        """A progress or log frame, for the next step. Progress not sent
        yet is replaced by the newer value: only the latest counts."""
        if kind == PROGRESS:
            self.progress[queue][job_id] = value
        else:
            self.reports[queue].append((job_id, kind, value))
            held = (queue, job_id)
            self.report_bytes[held] = self.report_bytes.get(held, 0) + len(value)
        self._note_pending()

    def held_report_bytes(self, queue: str, job_id: str) -> int:
        """Log bytes of this job the broker holds (not yet in Redis)."""
        return self.report_bytes.get((queue, job_id), 0)

    def step(self, queue: str, job_id: str, key: str, result: str) -> None:
        """Record a durable step in the next step (step.lua); its status
        comes back in ``StepResult.stepped``."""
        self.steps[queue].append((job_id, key, result))
        self._note_pending()

    def hand_back(self, queue: str, job_id: str, *, ran: bool = False) -> None:
        """Give a leased job back to its queue in the next step (release.lua).
        ``ran``: it may have run (a forced shutdown interrupted it), so a
        manual_retry_only job fails instead; one that never ran goes back
        with nothing spent, whatever its options."""
        (self.interrupted if ran else self.releases)[queue].append(job_id)
        self._note_pending()
        if any(started == job_id for started, _ms in self.starts[queue]):
            self.starts[queue] = [s for s in self.starts[queue] if s[0] != job_id]

    def now_ms(self) -> int:
        """Now on the Redis server's clock (milliseconds)."""
        return self.clock.now_ms()

    # -- a step: start, I/O, end ---------------------------------------------
    def start_step(self, free_slots: int, start_now: int = 0) -> StepResult | None:
        """Send one step (no step may be in flight), fetching up to
        ``free_slots`` jobs of which ``start_now`` go to a free child at once
        (the rest are prefetched). Returns a result at once only if it could
        not be sent (no connection); else the result comes from
        :meth:`on_step_io` or :meth:`check_step_deadline`."""
        assert self._step is None, "a step is in flight"
        commands = _Commands()
        plan: list[_Command] = []
        clock = time.monotonic()
        if self.fetches_held(clock):
            free_slots = start_now = 0
        self._fetching = (None, 0)
        self._start_now = start_now
        if not self._set_up:
            self._queue_setup(commands, plan)
        if not self.clock.measured:
            # Nothing that depends on the time goes before the server's clock
            # is known: a worker whose clock is off must not judge leases.
            commands.command("TIME")
            plan.append(_Command("time"))
        else:
            self._queue_work(commands, plan, clock, free_slots)
        worked = self.clock.measured
        if not plan:
            return None
        self._step = _Step(plan, time.time(), clock + self.reply_timeout)
        self._step.fetched_from, self._step.asked = self._fetching
        self._step.start_now = min(start_now, self._step.asked)
        self._step.worked = worked
        try:
            if not self.link.is_open:
                self.link.open()
            self.link.send(commands.sent)
        except LinkError as exc:
            return self._end_step(exc)
        return None

    def on_step_io(
        self, readable: bool, writable: bool, fd: int | None = None
    ) -> StepResult | None:
        """The step connection (its socket ``fd``) is ready: write or read.
        Returns the step's result once its last reply arrived, or as soon as
        it failed."""
        step = self._step
        try:
            if writable:
                self.link.on_writable(fd)
            if readable:
                replies = self.link.read(fd)
                if step is None:
                    return None  # e.g. the replies to what close() sent
                step.replies += replies
        except LinkError as exc:
            if step is None:
                return None
            step.replies += exc.replies
            return self._end_step(exc)
        if step is not None and len(step.replies) >= len(step.plan):
            return self._end_step(None)
        return None

    def check_step_deadline(self, now: float) -> StepResult | None:
        """A step whose replies are overdue is given up: the connection is
        dropped (its replies may be lost on the way) and the step fails."""
        if self._step is None or now < self._step.deadline:
            return None
        self.link.close()
        return self._end_step(redis.TimeoutError(f"no reply from Redis in {self.reply_timeout}s"))

    def _end_step(self, error: Exception | None) -> StepResult:
        """Use the replies that came, undo what the others carried."""
        step = self._step
        assert step is not None
        self._step = None
        received_at = time.time()
        result = StepResult(worked=step.worked, round_trip=received_at - step.sent_at)
        result.started_now = step.start_now
        next_due: list[int] = []
        faulted: set[str] = set()
        for index, command in enumerate(step.plan):
            if index >= len(step.replies):
                self._undo(command, error or LinkError("no reply"))
                faulted.add(command.queue)
                continue
            reply = step.replies[index]
            if isinstance(reply, Exception):
                self._undo(command, reply)
                self._refused(command, reply, result)
                faulted.add(command.queue)
                continue
            if not self._use(command, reply, result, next_due, (step.sent_at, received_at)):
                faulted.add(command.queue)
        if self._wake_held is not None:  # the wait's jobs, after the step's replies
            (command, reply), self._wake_held = self._wake_held, None
            result.started_now = min(result.started_now, len(result.fetched))
            self._use(command, reply, result, [], (step.sent_at, received_at))
        if error is not None:
            result.error = error
        elif step.fetched_from is not None and result.error is None:
            self._after_fetch(step.fetched_from, step.asked, result, next_due)
        faulted.update(queue for queue, _kind, _reason in result.faults)
        self._note_recovered(step.plan, faulted, result)
        return result

    def _use(
        self,
        command: _Command,
        reply: Any,
        result: StepResult,
        next_due: list[int],
        round_trip: tuple[float, float],
    ) -> bool:
        """Apply one reply behind its queue's barrier: a reply that cannot be
        used pauses that queue, not the worker (False then)."""
        try:
            self._apply(command, reply, result, next_due, round_trip)
        except Exception as exc:
            if not command.queue:
                raise  # the worker's own commands: a bug, not a queue's data
            self._unusable(command, exc, result)
            return False
        return True

    def _refused(self, command: _Command, reply: Exception, result: StepResult) -> None:
        """Redis refused one command (its work was kept by _undo). Trouble
        that passes is the worker's to wait out; any other refusal of a
        queue's command is that queue's fault: it pauses, the rest go on.
        (NOSCRIPT reloads the scripts; the charts' counters never fail a step.)"""
        if isinstance(reply, redis.exceptions.NoScriptError) or command.kind in ("stats", "depth"):
            return
        if command.queue and not is_transient(reply):
            reason = f"Redis refused its {command.kind} command: {reply}"
            holds = command.kind in CARRIERS
            self._fault(command.queue, "queue_error", reason, result, holds_work=holds)
            return
        result.error = result.error or reply

    def _unusable(self, command: _Command, exc: Exception, result: StepResult) -> None:
        """A reply for one queue could not be used (a setting out of range,
        a score that is not a number, a shape no script returns...): that
        queue pauses; its command is undone (a fetch's jobs are reclaimed,
        carried work sent again after the pause). A fetch that named a bad
        setting leased nothing."""
        if not (isinstance(exc, BadSetting) and command.kind == "fetch"):
            self._undo(command, exc)
        if isinstance(exc, BadSetting):
            kind, reason = "bad_setting", str(exc)
        else:
            what = f"{type(exc).__name__}: {exc}"
            kind, reason = (
                "queue_error",
                f"could not use Redis's reply to its {command.kind}: {what}",
            )
        self._fault(command.queue, kind, reason, result, holds_work=command.kind in CARRIERS)

    def _note_recovered(self, plan: list[_Command], faulted: set[str], result: StepResult) -> None:
        """Queues whose fault lapsed and that this step tried again without
        trouble: a fetch (or a read of its limits) for a bad setting, any
        command for one that held its work."""
        if not self.faults:
            return
        now = time.monotonic()
        for command in plan:
            fault = self.faults.get(command.queue)
            if fault is None or now < fault.until or command.queue in faulted:
                continue
            if fault.holds_work or command.kind in ("fetch", "limits", "limiter", "schedules"):
                del self.faults[command.queue]
                result.recovered_queues.append(command.queue)

    def retry_lapsed_faults(self, now: float) -> None:
        """A queue whose fault lapsed is tried again: look for work (the
        next fetch from it says whether its settings are usable now)."""
        for fault in self.faults.values():
            if now >= fault.until and not fault.retried:
                fault.retried = True
                self.maybe_work = True
                self._short.clear()

    # -- building a step ------------------------------------------------------
    def _queue_work(
        self, commands: _Commands, plan: list[_Command], clock: float, free_slots: int
    ) -> None:
        """Everything due: what children sent, timers, schedules, a fetch."""
        now = self.now_ms()
        renew = clock >= self.next_renew
        recover = clock >= self.next_recover
        cancels = clock >= self.next_cancel_check
        if clock >= self.next_schedules:
            self.next_schedules = clock + SCHEDULE_CHECK_SECONDS
            self._schedules_due = True
        if recover:  # first: the server reads its clock as soon as it can
            commands.command("TIME")
            plan.append(_Command("time"))
        self._queue_queue_work(commands, plan, now, renew, recover, cancels)
        # Hand back what lost replies leased before asking for more (a queue
        # at fault waits with its reclaim); and while a wait carries a
        # fetch, that fetch is the one to ask.
        reclaiming = any(not self.paused(queue, clock) for queue in self.unsure)
        if free_slots > 0 and self.maybe_work and not reclaiming and self._wake_fetch is None:
            self._fetching = self._queue_fetch(commands, plan, now, free_slots)
        if renew:
            self.next_renew = clock + self.renew_every
        if recover:
            self.next_recover = clock + self.recover_every
        if cancels:
            self.next_cancel_check = clock + CANCEL_CHECK_SECONDS
        if plan:  # the charts' counters ride along; they never make a step of their own
            self._queue_stats(commands, plan, clock, now)

    def _queue_stats(
        self, commands: _Commands, plan: list[_Command], clock: float, now: int
    ) -> None:
        """The counted jobs (HINCRBY, EXPIRE), the depth read last time, and,
        once a minute, a new depth reading (sandboxq.stats)."""
        if self.stats and clock >= self.next_stats_flush:
            self.next_stats_flush = clock + stats.FLUSH_SECONDS
            taken = self.stats.take()
            for index, command in enumerate(stats.flush_commands(self.keys, taken)):
                commands.command(*command)
                plan.append(_Command("stats", sent=taken if index == 0 else None))
        writes, self._depth_writes = self._depth_writes, []
        for command in writes:
            commands.command(*command)
            plan.append(_Command("stats"))
        if clock >= self.next_depth:
            self.next_depth = clock + stats.DEPTH_SECONDS
            minute = stats.minute_of(now)
            for queue, k in self.keys.items():
                commands.command("ZCARD", k.wait)
                commands.command("GET", k.gcount)
                commands.command("ZCARD", k.active)
                plan += [_Command("depth", queue, minute) for _ in range(3)]

    def _queue_setup(self, commands: _Commands, plan: list[_Command]) -> None:
        """At the first step and after Redis lost its scripts: check the
        server, load the scripts, apply the worker's own flow-control options."""
        commands.command("INFO", "server")
        plan.append(_Command("info"))
        for name in RISKY_SETTINGS:
            commands.command("CONFIG", "GET", name)
            plan.append(_Command("config", sent=name))
        for name in self.scripts.NAMES:
            commands.command("SCRIPT", "LOAD", lua_source(name))
            plan.append(_Command("load"))
        if self.settings:
            pipe: Any = commands
            for queue, k in self.keys.items():
                self.scripts.configure(k, self.settings, pipe)
                plan.append(_Command("configure", queue))
        self._server_config = {}
        self._set_up = True  # unless one of these fails (_undo)

    def _queue_queue_work(
        self,
        commands: _Commands,
        plan: list[_Command],
        now: int,
        renew: bool,
        recover: bool,
        cancels: bool,
    ) -> None:
        """Each queue's share of a step. Pending finishes, reports and
        hand-backs move into the commands (a failed one puts them back)."""
        pipe: Any = commands
        clock = time.monotonic()
        for queue, k in self.keys.items():
            if self._holds_work(queue, clock):
                continue  # at fault: what it is owed waits for the retry
            # Reports before finishes: a job's last progress and log lines
            # usually travel in the same step as its result, and finishing
            # drops the lease token that report.lua checks. Starts before
            # reports: a job's events say it started before its progress.
            if steps := self.steps[queue]:  # first: a child waits on each
                self.steps[queue] = []
                self.scripts.step(k, self.token, steps, MAX_STEPS, pipe)
                plan.append(_Command("step", queue, steps))
            starts = self.starts[queue]
            reports = self._take_reports(queue)
            if reports and starts:
                self._queue_finish(queue, now, pipe, plan, settle=False)
            if reports:
                self.scripts.report(k, self.token, reports, pipe=pipe)
                plan.append(_Command("report", queue, reports))
            if self.finishes[queue] or self.starts[queue]:
                self._queue_finish(queue, now, pipe, plan, settle=True)
            unstarted, interrupted = self.releases[queue], self.interrupted[queue]
            if unstarted or interrupted:
                self.releases[queue], self.interrupted[queue] = [], []
                self.scripts.release(k, self.token, unstarted, interrupted, now, pipe)
                plan.append(_Command("release", queue, (unstarted, interrupted)))
            if queue in self.unsure:
                known = list(self.leased[queue])
                self.scripts.reclaim(k, now, self.token, self.unsure[queue], known, pipe)
                plan.append(_Command("reclaim", queue, self.unsure[queue]))
            if renew and self.leased[queue]:
                leased = list(self.leased[queue])
                self.scripts.renew(k, now, self.token, self.lease_ms, leased, pipe)
                plan.append(_Command("renew", queue))
            if cancels and self.leased[queue]:  # after the finishes: settled jobs say nil
                held = list(self.leased[queue])
                commands.command("ZMSCORE", k.cancel_requests, *held)
                plan.append(_Command("cancels", queue, held))
            if recover:
                self.scripts.recover_stalled(k, now, self.max_stalls, pipe=pipe)
                plan.append(_Command("recover", queue))
        if recover and self.description:  # the same cadence: at start, then <= 15 s
            registry.heartbeat(self.scripts, pipe, self.token, self.description, now)
            plan.append(_Command("heartbeat"))
        for queue, k in self.keys.items():
            if self.paused(queue, clock):
                continue  # its schedules and limits are read again after the pause
            if self._schedules_due:  # the next occurrences, the due ones first
                commands.command("ZRANGE", k.schedule_times, 0, DUE_BATCH - 1, "WITHSCORES")
                plan.append(_Command("schedules", queue))
            if due := self._schedule_reads.pop(queue, []):
                keys = [key for key, _score in due]
                commands.command("HMGET", k.schedules, *keys)
                commands.command("HMGET", k.schedule_counts, *keys)
                plan += [_Command("specs", queue, due), _Command("counts", queue, due)]
            for fire in self._schedule_fires.pop(queue, []):
                key, score, new_next, counted, jobs = fire
                self.scripts.fire_schedule(k, now, key, score, new_next, counted, jobs, pipe)
                plan.append(_Command("fire", queue, fire))
            if recover or queue in self._resync:
                commands.command("HMGET", k.meta, "rl_max", "rl_window_ms")
                commands.command("ZRANGE", k.limiter, 0, -1, "WITHSCORES")
                plan += [_Command("limits", queue), _Command("limiter", queue)]
        self._schedules_due = False
        if self._resync:  # a paused queue's limits are read after its pause
            self._resync = {queue for queue in self._resync if self.paused(queue, clock)}
        self.pending_since, self.pending_entries = None, 0  # all in this step

    def _take_reports(self, queue: str) -> list[tuple[str, str, str]]:
        """The queue's pending reports, for one report.lua call: each job's
        latest progress, then the log lines in order."""
        progress, reports = self.progress[queue], self.reports[queue]
        if not progress and not reports:
            return reports
        self.progress[queue], self.reports[queue] = {}, []
        return [(job_id, PROGRESS, value) for job_id, value in progress.items()] + reports

    def _queue_finish(
        self, queue: str, now: int, pipe: Any, plan: list[_Command], *, settle: bool
    ) -> None:
        """One finish.lua call: mark the pending starts, and with ``settle``
        settle the pending finishes too."""
        starts, self.starts[queue] = self.starts[queue], []
        finishes: list[list[Any]] = []
        if settle:
            finishes, self.finishes[queue] = self.finishes[queue], []
        self.scripts.finish(self.keys[queue], now, self.token, finishes, pipe, starts)
        plan.append(_Command("finish", queue, (finishes, starts)))

    def _queue_fetch(
        self, commands: _Commands, plan: list[_Command], now: int, free_slots: int
    ) -> tuple[str | None, int]:
        """Ask the next queue in turn for up to ``free_slots`` jobs (fewer if
        its mirrored rate window is fuller). Returns the queue and the count."""
        queue = self._next_queue()
        if queue is None:  # every queue is at fault: nothing to fetch until a retry
            self.maybe_work = False
            return None, 0
        count = self._room(queue, free_slots, now)
        if count <= 0:
            self._short.add(queue)
            self._note_short_round()
            return None, 0
        request = self._next_request()
        pipe: Any = commands
        start_now = min(self._start_now, count)
        k = self.keys[queue]
        self.scripts.fetch(k, now, count, self.token, self.lease_ms, pipe, request, start_now)
        plan.append(_Command("fetch", queue, request))
        return queue, count

    def _next_request(self) -> int:
        self._requests += 1
        return self._requests

    def _next_queue(self) -> str | None:
        """The queues take turns, so one busy queue cannot starve the others;
        a queue at fault sits out. None when every queue does."""
        now = time.monotonic()
        for _ in self.queues:
            self._rotation = (self._rotation + 1) % len(self.queues)
            queue = self.queues[self._rotation]
            if not self.paused(queue, now):
                return queue
        return None

    # -- reading a step's replies ------------------------------------------------
    def _undo(self, command: _Command, error: Exception) -> None:
        """A command failed or its reply was lost: keep what it carried for
        the next step. A fetch may have run anyway (only NOSCRIPT says it did
        not), so what it may have leased is reclaimed."""
        kind, queue = command.kind, command.queue
        if isinstance(error, redis.exceptions.NoScriptError):
            self._set_up = False  # Redis lost its script cache: load them again
        if kind == "finish":
            finishes, starts = command.sent
            self.finishes[queue][:0] = finishes
            self.starts[queue][:0] = starts
            self._note_pending(len(finishes) + len(starts))
        elif kind == "report":  # a progress sent since is newer: it stays
            logs = [entry for entry in command.sent if entry[1] != PROGRESS]
            for job_id, sent_kind, value in command.sent:
                if sent_kind == PROGRESS:
                    self.progress[queue].setdefault(job_id, value)
            self.reports[queue][:0] = logs
            self._note_pending(len(command.sent))
        elif kind == "step":  # sent again, step.lua answers "known" if it was recorded
            self.steps[queue][:0] = command.sent
            self._note_pending(len(command.sent))
        elif kind == "release":
            unstarted, interrupted = command.sent
            self.releases[queue][:0] = unstarted
            self.interrupted[queue][:0] = interrupted
            self._note_pending(len(unstarted) + len(interrupted))
        elif kind == "fetch" and not isinstance(error, redis.exceptions.NoScriptError):
            self.unsure[queue] = max(command.sent, self.unsure.get(queue, 0))
        elif kind == "renew":
            self.next_renew = time.monotonic()  # the leases still need it
        elif kind in ("limits", "limiter"):
            self._resync.add(queue)
        elif kind in ("schedules", "specs", "counts", "fire"):
            self._schedules_due = True  # read them again from the start
            self._specs.pop(queue, None)
        elif kind in ("info", "config", "load", "configure"):
            self._set_up = False
        elif kind == "stats" and command.sent is not None:  # sent again with the next
            self.stats.give_back(command.sent)
        elif kind == "depth":
            self._depth_read.pop(queue, None)

    def _apply(
        self,
        command: _Command,
        reply: Any,
        result: StepResult,
        next_due: list[int],
        round_trip: tuple[float, float],
    ) -> None:
        """Use one command's reply."""
        kind, queue = command.kind, command.queue
        if kind == "time":
            self.clock.sample(*round_trip, reply)
        elif kind == "report":
            self._release_report_bytes(queue, command.sent)
        elif kind == "finish":
            for entry, status in zip(command.sent[0], reply, strict=True):
                self.leased[queue].discard(entry[0])
                result.finished.append((queue, entry[0], status.decode()))
        elif kind == "step":
            for (job_id, key, _result), status in zip(command.sent, reply, strict=True):
                result.stepped.append((queue, job_id, key, status.decode()))
        elif kind == "release":
            for ids in command.sent:
                self.leased[queue].difference_update(ids)
            if released := decode_ids(reply):
                result.released.append((queue, released))
        elif kind == "reclaim":
            if self.unsure.get(queue) == command.sent:
                del self.unsure[queue]
            if returned := decode_ids(reply):
                result.reclaimed.append((queue, returned))
        elif kind == "renew":
            self.leased[queue].difference_update(decode_ids(reply))
        elif kind == "recover":
            requeued, failed, cancelled = (decode_ids(ids) for ids in reply)
            if requeued or failed or cancelled:
                result.recovered.append((queue, requeued, failed, cancelled))
        elif kind == "cancels":
            for job_id, asked in zip(command.sent, reply, strict=True):
                if asked is not None and job_id in self.leased[queue]:
                    result.cancel_requested.append((queue, job_id))
        elif kind == "fetch":
            self._take(queue, reply, result, next_due)
        elif kind in ("schedules", "specs", "counts", "fire"):
            self._schedule_reply(command, reply, result)
        elif kind == "limits":
            self._mirror_limits(queue, reply)
        elif kind == "limiter" and (window := self.windows.get(queue)) is not None:
            window.sync([int(float(score)) for score in reply[1::2]])
        elif kind == "depth":
            self._note_depth(queue, command.sent, int(reply or 0))
        elif kind == "info":
            self._server_version = info_field(reply, "redis_version") or "0"
        elif kind == "config":
            self._note_config(reply, result)

    def _release_report_bytes(self, queue: str, sent: list[tuple[str, str, str]]) -> None:
        """Redis took these log lines: the parent no longer holds them."""
        for job_id, kind, value in sent:
            if kind != PROGRESS:
                held = (queue, job_id)
                left = self.report_bytes.get(held, 0) - len(value)
                if left > 0:
                    self.report_bytes[held] = left
                else:
                    self.report_bytes.pop(held, None)

    def _note_depth(self, queue: str, minute: int, value: int) -> None:
        """One of a queue's three depth replies; after the third, its write
        waits for the next step."""
        read = self._depth_read.setdefault(queue, [])
        read.append(value)
        if len(read) == 3:
            del self._depth_read[queue]
            waiting, grouped, active = read
            self._depth_writes += stats.depth_commands(
                self.keys[queue], minute, waiting + grouped, active
            )

    def _note_config(self, reply: Any, result: StepResult) -> None:
        """One CONFIG GET reply of the server check (refused: CONFIG is
        disabled, as on managed services); after the last, judge the server."""
        config = self._server_config
        if config is not None:
            if isinstance(reply, Exception):
                config = None
            else:
                pairs = [v.decode() if isinstance(v, bytes) else str(v) for v in reply]
                config.update(zip(pairs[::2], pairs[1::2], strict=True))
            self._server_config = config
        if config is None or len(config) >= len(RISKY_SETTINGS):
            try:
                result.warnings = judge_server(self._server_version, config)
            except UnsupportedRedis as exc:
                result.unsupported = str(exc)

    def _take(self, queue: str, reply: Any, result: StepResult, next_due: list[int]) -> None:
        rows, due, limited, has_limits, problem = reply
        if problem:  # a setting fetch.lua cannot use: it leased nothing
            raise BadSetting(problem.decode(errors="backslashreplace"))
        if has_limits:
            self.limited_queues.add(queue)
        else:
            self.limited_queues.discard(queue)
        if limited:
            result.rate_limited.append(queue)
            self._resync.add(queue)  # Redis saw starts the mirror did not
        fetched = fast.decode_fetched(rows)
        if fetched and not self.holds_jobs():  # see CANCEL_CHECK_SECONDS
            self.next_cancel_check = time.monotonic() + CANCEL_CHECK_SECONDS
        if fetched and (window := self.windows.get(queue)) is not None:
            window.record(self.now_ms(), len(fetched))
        for job_id, fields in fetched:
            if isinstance(fields, fast.CorruptRecord):
                job_id = stored_id(job_id)  # the parent fails it at once
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

    def _after_fetch(self, queue: str, asked: int, result: StepResult, next_due: list[int]) -> None:
        """A fetch that filled its slots means more may wait: fetch again.
        One that came back short means this queue is empty (or limited) for
        now: once every queue came back short in a row, wait for a wake-up,
        or for the earliest time one of them said to look again."""
        self._due_seen += next_due
        if len(result.fetched) + len(result.still_running) >= asked:
            self._short.clear()
            self._due_seen.clear()
            return
        self._short.add(queue)
        self._note_short_round()

    def _note_short_round(self) -> None:
        if len(self._short) >= len(self.queues):
            self.maybe_work = False
            self.next_due_ms = min(self._due_seen, default=None)

    # -- schedules, over three steps --------------------------------------------
    def _schedule_reply(self, command: _Command, reply: Any, result: StepResult) -> None:
        """Schedules fire in three steps, each riding a normal step: read the
        next occurrence times; read the due ones' specs and counts; fire
        them (fire_schedule.lua makes each occurrence happen once)."""
        kind, queue = command.kind, command.queue
        now = self.now_ms()
        if kind == "schedules":
            pairs = zip(reply[::2], reply[1::2], strict=True)
            times = [(k.decode(), int(float(s))) for k, s in pairs]
            due = [(key, score) for key, score in times if score <= now]
            if due:
                self._schedule_reads[queue] = due
            upcoming = [score for _key, score in times if score > now]
            if upcoming:
                wait = (min(upcoming) - now) / 1000.0
                self.next_schedules = min(self.next_schedules, time.monotonic() + wait)
        elif kind == "specs":
            self._specs[queue] = reply  # used with the counts, the next reply
        elif kind == "counts" and (specs := self._specs.pop(queue, None)) is not None:
            for (key, score), spec, count in zip(command.sent, specs, reply, strict=True):
                if spec is not None:  # else deleted meanwhile
                    self._plan_fire(queue, key, score, spec, count, now, result)
        elif kind == "fire":
            created = int(reply)
            if created > 0:
                result.scheduled.append((queue, created))
                self.maybe_work = True
                self._short.clear()
            self.next_schedules = time.monotonic()  # read the new next time at once

    def _plan_fire(
        self,
        queue: str,
        key: str,
        score: int,
        spec: bytes,
        count: Any,
        now: int,
        result: StepResult,
    ) -> None:
        """Work out one due schedule's occurrences, to fire in the next step.
        A broken spec is reported and looked at again a minute later."""
        try:
            fire, new_next, jobs = occurrence_jobs(key, spec, score, count, now)
        except (TypeError, ValueError, KeyError, ArithmeticError) as exc:
            result.broken_schedules.append((queue, key, f"{type(exc).__name__}: {exc}"))
            fire, new_next, jobs = [], now + BROKEN_RETRY_MS, []
        self._schedule_fires.setdefault(queue, []).append((key, score, new_next, len(fire), jobs))

    # -- rate windows ------------------------------------------------------------
    def _room(self, queue: str, wanted: int, now: int) -> int:
        """How many jobs to ask ``queue`` for: ``wanted``, or fewer if its
        mirrored rate window is fuller (then note when it opens)."""
        window = self.windows.get(queue)
        if window is None or wanted <= 0:
            return wanted
        room = window.allowed(now)
        if room <= 0:
            self._due_seen.append(window.opens_at(now))
        return min(wanted, room)

    def _mirror_limits(self, queue: str, reply: Any) -> None:
        """Keep the mirror in step with the queue's rate limit (or drop it);
        the limiter log read next in the same reply fills it. A limit the
        mirror cannot hold is a BadSetting (the queue pauses)."""
        raw_max, raw_window = reply
        if raw_max is None or raw_window is None:
            self.windows.pop(queue, None)
            self._window_params.pop(queue, None)
            return
        params = (  # the bounds the API and fetch.lua hold a rate limit to
            setting_int("rl_max", raw_max, 1, MAX_RATE_LIMIT_JOBS),
            setting_int("rl_window_ms", raw_window, 1, ms(MAX_SECONDS)),
        )
        if self._window_params.get(queue) != params:
            self.windows[queue] = fast.SlidingWindow(*params)
            self._window_params[queue] = params

    # -- the blocking wait -----------------------------------------------------
    def arm_wait(self, free_slots: int = 0) -> None:
        """Start waiting for a marker (or the next delayed job) unless a wait
        is armed already.

        With ``free_slots`` free children, the wait carries a fetch of that
        many jobs, pipelined behind the BZPOPMIN: Redis runs it as soon as
        the wait answers, so a woken worker gets its first jobs without a
        round trip of its own. The fetch's ``now`` is when it was sent: its
        jobs are leased for the wait's timeout longer (at most
        WAKE_FETCH_MAX_WAIT_SECONDS), and none is started by Redis; the
        parent reports each start when a child takes the job, as for
        prefetched jobs. Its request number makes it reclaimable like any
        fetch whose reply may be lost (``cancel_wait``)."""
        if not self._armed:
            if not self.waiter.is_open:
                self.waiter.open()
            timeout = MAX_WAIT_SECONDS
            if self.next_due_ms is not None:
                timeout = min(timeout, (self.next_due_ms - self.now_ms()) / 1000.0)
            fetch_from = self._wake_fetch_queue(free_slots)
            if fetch_from is not None:
                timeout = min(timeout, WAKE_FETCH_MAX_WAIT_SECONDS)
            timeout = max(timeout, MIN_WAIT_SECONDS)
            markers = [k.marker for k in self.keys.values()]
            # BZPOPMIN treats 0 as "forever", and Redis truncates seconds to
            # whole milliseconds ("0.001" can become 0): never ask for less
            # than MIN_WAIT_SECONDS, so "due now" means "look again soon".
            commands: list[tuple[Any, ...]] = [("BZPOPMIN", *markers, f"{timeout:.3f}")]
            if fetch_from is not None:
                commands.append(self._wake_fetch_command(fetch_from, free_slots, timeout))
            self._wake_replies = []
            self.waiter.send(commands)
            self._armed = True
            # A reply that never comes (lost on the way) must not leave the
            # worker waiting forever: give up a little after the timeout.
            self._wait_deadline = time.monotonic() + timeout + self.reply_timeout

    def _wake_fetch_queue(self, free_slots: int) -> str | None:
        """The queue a wait's fetch asks, or None for a plain wait: with free
        children, a single queue, no limit, and not on a Redis Cluster. A
        limit counts leases, and a rate limit's start times are the fetch's
        `now`; with several queues a wake-up does not say which one has work;
        a cluster's wait is one BZPOPMIN per queue (cluster.py), with no room
        for a fetch behind it."""
        if free_slots <= 0 or len(self.queues) != 1 or not self._set_up or self.cluster:
            return None
        queue = self.queues[0]
        if not self.clock.measured or queue in self.limited_queues or queue in self.windows:
            return None
        return None if self.paused(queue, time.monotonic()) else queue

    def _wake_fetch_command(self, queue: str, count: int, timeout: float) -> tuple[Any, ...]:
        request = self._next_request()
        self._wake_fetch = (queue, request)
        commands = _Commands()
        lease_ms = self.lease_ms + int(timeout * 1000) + 1
        pipe: Any = commands
        self.scripts.fetch(
            self.keys[queue], self.now_ms(), count, self.token, lease_ms, pipe, request, 0
        )
        return commands.sent[0]

    def _wake_fetch_reply(self) -> tuple[_Command, Any] | None:
        """The jobs the answered wait's fetch leased. A fetch whose reply
        never came, or that failed half-way, may still have leased jobs: the
        next step reclaims them. Redis refusing it (NOSCRIPT, or refusing
        writes: MISCONF, READONLY, OOM... for a whole script run) means it
        leased nothing."""
        fetch, self._wake_fetch = self._wake_fetch, None
        replies, self._wake_replies = self._wake_replies, []
        if fetch is None:
            return None
        queue, request = fetch
        reply = replies[1] if len(replies) > 1 else None
        if reply is None or isinstance(reply, Exception):
            if isinstance(reply, redis.exceptions.NoScriptError):
                self._set_up = False  # load the scripts again first
            elif reply is None or not is_transient(reply):
                self.unsure[queue] = max(request, self.unsure.get(queue, 0))
            return None
        return _Command("fetch", queue, request), reply

    @property
    def armed(self) -> bool:
        return self._armed

    @property
    def wake_fetch_armed(self) -> bool:
        """The armed wait carries a fetch: let it answer rather than cancel
        it, or what it may lease has to be reclaimed."""
        return self._wake_fetch is not None

    def wait_overdue(self, now: float) -> bool:
        """The armed wait's reply is later than its timeout allows."""
        return self._armed and now >= self._wait_deadline

    @property
    def wait_deadline(self) -> float | None:
        return self._wait_deadline if self._armed else None

    def on_wait_io(self, writable: bool, fd: int | None = None) -> StepResult | None:
        """The waiting connection (its socket ``fd``) is ready. Once the wait
        answered (a marker, its timeout, or a failure) the worker looks for
        work again; returns what the wait's fetch leased, if it carried one."""
        try:
            if writable:
                self.waiter.on_writable(fd)
                return None
            self._wake_replies += self.waiter.read(fd)
            if len(self._wake_replies) < (1 if self._wake_fetch is None else 2):
                return None
        except LinkError as exc:  # the link closed itself; the next wait reconnects
            self._wake_replies += exc.replies
        self._armed = False
        fetched = self._wake_fetch_reply()
        self._woken()
        if fetched is None:
            return None
        if self._step is not None:
            # The step in flight may be what put these jobs back in line (a
            # release, a retry): its replies go first, as on one connection,
            # or a job handed back and leased again would look like a lease
            # that lapsed while it ran here.
            self._wake_held = fetched
            return None
        result = StepResult()
        self._use(*fetched, result, [], (0.0, 0.0))
        return result

    def _woken(self) -> None:
        self.maybe_work = True
        self._short.clear()
        self._due_seen.clear()
        self._resync.update(self.windows)  # a wake-up may be a changed limit
        self.next_schedules = time.monotonic()  # ... or a new schedule

    def cancel_wait(self) -> None:
        """Drop an armed wait (shutting down, Redis trouble, or a reply that
        never came); the next step looks for work instead, after reclaiming
        what the wait's fetch may have leased."""
        self.waiter.close()
        self._wake_replies = []  # still armed: no fetch reply came (on_wait_io)
        self._wake_fetch_reply()
        if self._armed:
            self._woken()
        self._armed = False

    def close(self) -> None:
        """Leave Redis: forget this worker's registry entry and fetch marks.
        Best effort and without waiting: written if the connection takes it
        now, whatever state Redis is in."""
        self.cancel_wait()
        if self.link.is_open and self._step is None:
            farewell: list[tuple[Any, ...]] = []
            if self.description:
                farewell.append(("HDEL", registry.WORKERS, self.token))
            farewell += [("HDEL", k.given_up, self.token) for k in self.keys.values()]
            with contextlib.suppress(LinkError):
                self.link.send(farewell)
        self.link.close()
