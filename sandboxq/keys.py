"""Every Redis key of one queue, all under one Redis Cluster hash tag.

A queue named ``images`` owns ``sq:{images}:wait``, ``sq:{images}:job:42`` and
so on. The braces make Redis Cluster put every key of the queue in one slot,
which is what lets a single Lua script touch all of them atomically.

Queues that must share a slot (a flow whose children run in other queues)
are named ``GROUP:NAME``: ``media:thumbs`` owns ``sq:{media}/thumbs:wait``,
in the same slot as every other ``media:...`` queue and as ``media`` itself.

No two (queue, job) pairs may share a key. A queue's part of a key ends at
the first ``:`` after its name, so a queue name holds at most one ``:``
(the group's), and every per-job or per-group key is ``KIND:<id>``, while
the queue's own keys have no ``:``. Names cannot hold braces (the hash tag).
"""

from __future__ import annotations

from dataclasses import dataclass

#: The sets that hold job ids, one per state (``active`` is the lease table),
#: in the order of ``sandboxq.job.STATES``.
JOB_SETS = (
    "wait",
    "delayed",
    "active",
    "completed",
    "failed",
    "waiting_children",
    "waiting_deps",
    "cancelled",
)

#: Every kind of key that belongs to one job or group: ``<prefix>KIND:<id>``.
#: The Lua scripts build them the same way (``prefix .. 'job:' .. id``).
PER_ID_KINDS = (
    "job",
    "logs",
    "deps",
    "ignored",
    "children",
    "audit",
    "gwait",
    "glimiter",
    "stats",
    "dedupe",
    "awaits",
    "dependents",
)


def validate_name(kind: str, value: object) -> str:
    """Reject names that would break the key layout, with an error naming them."""
    if not isinstance(value, str):
        raise TypeError(f"{kind} must be a str, not {type(value).__name__}")
    if not value:
        raise ValueError(f"{kind} must not be empty")
    if "{" in value or "}" in value:
        raise ValueError(f"{kind} {value!r} must not contain '{{' or '}}' (used for the hash tag)")
    return value


@dataclass(frozen=True, slots=True)
class QueueKeys:
    """The names of one queue's keys. Pure naming: no Redis access."""

    name: str
    prefix: str
    id_counter: str
    seq: str
    wait: str
    delayed: str
    active: str
    completed: str
    failed: str
    cancelled: str  # jobs cancelled by a person (cancel.lua), score = when
    cancel_requests: str  # active jobs whose cancel was asked, score = when
    meta: str
    marker: str
    events: str
    schedules: str
    schedule_times: str
    schedule_counts: str
    waiting_children: str
    waiting_deps: str  # jobs waiting for their dependencies, score = when added
    groups: str  # groups with ready jobs, in round-robin order
    group_paused: str  # groups paused by a rate limit, score = until (ms)
    group_active: str  # group -> active jobs
    group_names: str  # every group seen
    group_rr: str  # round-robin counter
    gcount: str  # waiting jobs that belong to a group
    limiter: str  # the queue's rate-limit log of start times
    audit: str  # stream of manual actions (retry, remove, pause...)
    given_up: str  # fetch requests workers gave up on (reclaim.lua)
    deduplicated: str  # how many adds a dedupe window held back (a counter)

    @property
    def hash_tag(self) -> str:
        return self.prefix[self.prefix.index("{") + 1 : self.prefix.index("}")]

    @classmethod
    def for_queue(cls, name: str) -> QueueKeys:
        validate_name("queue name", name)
        prefix = f"sq:{{{name}}}:"
        if ":" in name:
            group, rest = name.split(":", 1)
            if not group or not rest or ":" in rest:
                raise ValueError(
                    f"queue name {name!r} must be NAME or GROUP:NAME, with one ':' "
                    "and a non-empty part on each side"
                )
            prefix = f"sq:{{{group}}}/{rest}:"
        return cls(
            name=name,
            prefix=prefix,
            id_counter=prefix + "id",
            seq=prefix + "seq",
            wait=prefix + "wait",
            delayed=prefix + "delayed",
            active=prefix + "active",
            completed=prefix + "completed",
            failed=prefix + "failed",
            cancelled=prefix + "cancelled",
            cancel_requests=prefix + "cancel_requests",
            meta=prefix + "meta",
            marker=prefix + "marker",
            events=prefix + "events",
            schedules=prefix + "schedules",
            schedule_times=prefix + "schedule_times",
            schedule_counts=prefix + "schedule_counts",
            waiting_children=prefix + "waiting_children",
            waiting_deps=prefix + "waiting_deps",
            groups=prefix + "groups",
            group_paused=prefix + "group_paused",
            group_active=prefix + "group_active",
            group_names=prefix + "group_names",
            group_rr=prefix + "group_rr",
            gcount=prefix + "gcount",
            limiter=prefix + "limiter",
            audit=prefix + "audit",
            given_up=prefix + "given_up",
            deduplicated=prefix + "deduplicated",
        )

    def of(self, kind: str, name: str) -> str:
        """The key of one job or group: ``kind`` is one of PER_ID_KINDS
        (``gwait`` and ``glimiter`` take a group name, ``stats`` a minute,
        ``dedupe`` a dedupe id, the others a job id)."""
        if kind not in PER_ID_KINDS:
            raise ValueError(f"unknown key kind {kind!r}")
        return f"{self.prefix}{kind}:{name}"

    def job(self, job_id: str) -> str:
        return self.of("job", job_id)

    def stats(self, minute: int) -> str:
        """One minute's counters for the dashboard's charts (sandboxq.stats);
        ``minute``: minutes since the epoch."""
        return self.of("stats", str(minute))

    def dedupe(self, dedupe_id: str) -> str:
        """A dedupe window: the id of the job that holds it (add_jobs.lua),
        with the window's ttl when it has one."""
        return self.of("dedupe", dedupe_id)

    def logs(self, job_id: str) -> str:
        return self.of("logs", job_id)

    def deps(self, job_id: str) -> str:
        """A flow parent's children's results, or a dependent job's
        dependencies' results: ``queue:id`` → result JSON."""
        return self.of("deps", job_id)

    def awaits(self, job_id: str) -> str:
        """A dependent job's unfinished dependencies: ``queue:id`` → their
        key prefix (lua/include/dependents.lua)."""
        return self.of("awaits", job_id)

    def dependents(self, job_id: str) -> str:
        """The jobs that await this one: a set of ``<key prefix>|<id>``."""
        return self.of("dependents", job_id)

    def children(self, job_id: str) -> str:
        """A flow parent's children: ``queue:id`` → the child's key prefix
        (add_flow.lua writes it, cancel.lua reads it)."""
        return self.of("children", job_id)

    def job_audit(self, job_id: str) -> str:
        """The manual actions on one job (JSON entries)."""
        return self.of("audit", job_id)

    def ignored(self, job_id: str) -> str:
        """A flow parent's children that failed and were skipped, or a
        dependent job's dependencies that failed (``on_dependency_failure``
        "run"): ``queue:id`` → error."""
        return self.of("ignored", job_id)

    def state_set(self, state: str) -> str:
        """The set holding jobs in ``state`` (``waiting`` lives in ``wait``)."""
        key = {
            "waiting": self.wait,
            "delayed": self.delayed,
            "active": self.active,
            "completed": self.completed,
            "failed": self.failed,
            "waiting-children": self.waiting_children,
            "waiting-deps": self.waiting_deps,
            "cancelled": self.cancelled,
        }.get(state)
        if key is None:
            raise ValueError(f"unknown job state {state!r}")
        return key
