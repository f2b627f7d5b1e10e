"""The queue's operations, shared by :class:`sandboxq.Queue` and
:class:`sandboxq.aio.AsyncQueue`: validation, encoding, script calls and
reply decoding, written once as sans-I/O operations (see :mod:`sandboxq.ops`).
"""

from __future__ import annotations

import getpass
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from sandboxq import payload, registry, stats
from sandboxq.connection import check_url, describe, resolve_url
from sandboxq.errors import SandboxqError
from sandboxq.job import FINISHED_STATES, STATES, JobRecord
from sandboxq.keys import JOB_SETS, QueueKeys, validate_name
from sandboxq.ops import PLAN, Op, cmd
from sandboxq.options import (
    JOB_OPTION_NAMES,
    MAX_CONCURRENCY,
    JobOptions,
    aging_ms,
    ms,
    positive_int,
    rate_limit_fields,
)
from sandboxq.rows import FlowNode, JobRow
from sandboxq.schedule import Schedule
from sandboxq.scripts import STEP_LIMIT, now_ms

#: Default limit on a job's data, as JSON.
MAX_PAYLOAD_BYTES = 1024 * 1024

#: Jobs per add script call in ``add_bulk``: one round trip each.
BULK_CHUNK = 1000

#: How long one round trip may take before the call fails (seconds).
DEFAULT_TIMEOUT = 5.0


# -- the queue ---------------------------------------------------------------------
J = TypeVar("J", bound=JobRecord)


@dataclass
class Flow(Generic[J]):
    """A job of a flow and the flows of its children, as added."""

    job: J
    children: list[Flow[J]] = field(default_factory=list)


class JobIsActive(SandboxqError):
    """The job is running; it cannot be removed until it finishes."""


def check_defaults(defaults: Mapping[str, Any] | None) -> dict[str, Any]:
    """A queue's default job options, checked as ``add`` would check them."""
    if defaults is None:
        return {}
    if not isinstance(defaults, Mapping):
        raise TypeError(f"defaults must be a dict of add() options, got {defaults!r}")
    unknown = set(defaults) - JOB_OPTION_NAMES
    if unknown or "job_id" in defaults:
        bad = ", ".join(sorted(unknown | ({"job_id"} & set(defaults))))
        raise TypeError(f"defaults take the options of add() except job_id; not: {bad}")
    JobOptions.build(**defaults)  # raises on a bad value, naming it
    return dict(defaults)


class QueueCore(Generic[J]):
    """What both front ends share: the queue's name, keys and settings, and
    its operations (generators; see the module's doc). A front end sets
    ``job_type`` and defines ``_drive`` and ``sibling``."""

    job_type: type[J]

    def _setup(
        self,
        name: str,
        url: str | None,
        connection: Any,
        connector: Callable[..., Any],
        max_payload_bytes: int,
        defaults: Mapping[str, Any] | None,
        timeout: float,
    ) -> None:
        """Check the settings and take ``connection``, or keep what makes a
        client for ``url`` with ``connector`` (redis-py's, blocking or
        asyncio) when the front end first needs one (:meth:`_new_client`).
        A ``url`` given is checked here; none given is resolved then, so a
        queue made at import time follows ``$SANDBOXQ_REDIS_URL`` as it is
        when the queue is first used (a test's private Redis, say)."""
        self._settings(name, max_payload_bytes, defaults, timeout)
        self._connection = connection
        self._connector = connector
        self._given_url = check_url(url) if url else None
        #: Where the client connects, once known (see :attr:`url`).
        self._url = describe(connection) if connection is not None else self._given_url

    @property
    def url(self) -> str:
        """Where this queue's client connects (password included: see
        :func:`sandboxq.addresses.redact`). A queue given no URL and no
        connection resolves ``$SANDBOXQ_REDIS_URL`` when it makes its
        client; until then this says where that would be now."""
        return self._url if self._url is not None else resolve_url(None)

    def _new_client(self) -> Any:
        """A client of this queue's own, for the URL it was given, else
        ``$SANDBOXQ_REDIS_URL`` as it is now, else the local default."""
        self._url = resolve_url(self._given_url)
        return self._connector(
            self._url, socket_timeout=self.timeout, socket_connect_timeout=self.timeout
        )

    def _settings(
        self,
        name: str,
        max_payload_bytes: int,
        defaults: Mapping[str, Any] | None,
        timeout: float,
    ) -> None:
        self.name = validate_name("queue name", name)
        self.keys = QueueKeys.for_queue(name)
        self.max_payload_bytes = max_payload_bytes
        self.defaults = check_defaults(defaults)
        self.timeout = timeout

    def sibling(self, name: str) -> QueueCore[J]:
        """Another queue on the same connection (a flow's other queues)."""
        raise NotImplementedError

    def job(self, job_id: str, fields: dict[str, Any], created: bool | None = None) -> J:
        """A job object of this queue from known fields (no round trip)."""
        made = self.job_type(self, job_id, fields)
        made.created = created
        return made

    # -- adding ------------------------------------------------------------
    def _options(self, given: Mapping[str, Any]) -> JobOptions:
        """One job's options: the queue's defaults, then those given (a
        ``None`` is not given)."""
        chosen = {k: v for k, v in given.items() if v is not None}
        return JobOptions.build(**(self.defaults | chosen if self.defaults else chosen))

    def _encode(self, name: Any, data: Any, options: JobOptions) -> JobRow:
        """One job as the add script writes it; raises before any write."""
        validate_name("job name", name)
        raw = payload.dump_json(data, f"data of job {name!r}", self.max_payload_bytes)
        return JobRow.of(name, raw, options)

    def _add_encoded(
        self, encoded: list[JobRow], data: list[Any], options: list[JobOptions]
    ) -> Op[list[J]]:
        """Run the add script on encoded jobs. A new job comes back as the
        snapshot just written; an id that existed already, as the job it is
        (read back in one more round trip), with ``created`` False."""
        now = now_ms()
        added = yield PLAN.add(self.keys, now, [row.script_args() for row in encoded])
        jobs: list[J | None] = []
        for (job_id, is_new), row, value, opts in zip(added, encoded, data, options, strict=True):
            if not is_new:
                jobs.append(None)
                continue
            fields = {
                "name": row.name,
                "data": value,
                "priority": opts.priority,
                "attempts": opts.attempts,
                "timeout": opts.timeout,
                "attempts_made": 0,
                "stalls": 0,
                # add.lua decides on the delay in ms; a delay under half a
                # millisecond rounds to none.
                "state": "delayed" if row.delay_ms > 0 else "waiting",
                "created_at": now / 1000.0,
            }
            jobs.append(self.job(job_id, fields, created=True))
        existing = [job_id for (job_id, is_new) in added if not is_new]
        if existing:
            found = iter((yield [cmd("HGETALL", self.keys.job(i)) for i in existing]))
            for index, (job_id, is_new) in enumerate(added):
                if not is_new:
                    jobs[index] = self.job_type.from_hash(self, job_id, next(found))
                    jobs[index].created = False  # type: ignore[union-attr]
        return jobs  # type: ignore[return-value]

    def _add(
        self,
        name: str,
        data: Any = None,
        *,
        job_id: str | None = None,
        delay: float | None = None,
        priority: int | None = None,
        attempts: int | None = None,
        backoff: Any = None,
        timeout: float | None = None,
        keep_completed: Any = None,
        keep_failed: Any = None,
        group: str | None = None,
        manual_retry_only: bool | None = None,
    ) -> Op[J]:
        """Add one job and return it; an option left ``None`` takes the
        queue's default. A ``job_id`` that exists already adds nothing and
        returns the job that exists, with ``created`` False.

        Bad input raises ``TypeError`` or ``ValueError`` and writes nothing.

        Args:
            name: The job's name: it picks the handler.
            data: Any JSON value (orjson), at most ``max_payload_bytes`` as JSON.
            job_id: A custom id, which deduplicates; not a plain integer
                (those are generated).
            delay: Seconds to wait before the job may run.
            priority: Lower runs first (FIFO within a priority); from
                -1048575 to 1048575, default 0.
            attempts: Tries in all, at least 1 (the default).
            backoff: Wait between failed attempts: seconds (fixed), a
                :class:`Backoff`, or ``{"type", "delay", "jitter", "max"}``.
            timeout: Seconds an attempt may run before its child is killed.
            keep_completed: Retention once completed: a count,
                ``{"count": n, "age": seconds}``, ``True`` (keep all),
                ``False`` (keep none) or a :class:`Retention`; default 24 hours.
            keep_failed: Retention once failed or cancelled; default: kept
                until cleaned.
            group: A group name: groups take turns, and have their own limits.
            manual_retry_only: Never retry automatically: a failure, a stall
                or a forced stop leaves the job failed for a person to retry.
        """
        options = self._options(
            {
                "job_id": job_id,
                "delay": delay,
                "priority": priority,
                "attempts": attempts,
                "backoff": backoff,
                "timeout": timeout,
                "keep_completed": keep_completed,
                "keep_failed": keep_failed,
                "group": group,
                "manual_retry_only": manual_retry_only,
            }
        )
        encoded = self._encode(name, data, options)
        return (yield from self._add_encoded([encoded], [data], [options]))[0]

    def _add_bulk(self, jobs: Iterable[Mapping[str, Any]]) -> Op[list[J]]:
        """Add many jobs, one round trip per chunk of 1,000.

        Each item is ``{"name": ..., "data": ..., **options}`` with the option
        names of ``add``. Every item is checked before anything is written.
        """
        specs = list(jobs)
        encoded, options = [], []
        for index, spec in enumerate(specs):
            if not isinstance(spec, Mapping) or "name" not in spec:
                raise TypeError(f"add_bulk item {index} must be a dict with a 'name', got {spec!r}")
            unknown = set(spec) - JOB_OPTION_NAMES - {"name", "data"}
            if unknown:
                raise TypeError(
                    f"add_bulk item {index} has unknown options: {', '.join(sorted(unknown))}"
                )
            opts = self._options({k: v for k, v in spec.items() if k not in ("name", "data")})
            encoded.append(self._encode(spec["name"], spec.get("data"), opts))
            options.append(opts)
        added: list[J] = []
        for start in range(0, len(encoded), BULK_CHUNK):
            chunk = slice(start, start + BULK_CHUNK)
            added += yield from self._add_encoded(
                encoded[chunk], [s.get("data") for s in specs[chunk]], options[chunk]
            )
        return added

    # -- flows ---------------------------------------------------------------
    def _add_flow(
        self,
        parent: Mapping[str, Any],
        children: Iterable[Mapping[str, Any]],
        *,
        fail_parent_on_failure: bool = True,
        ignore_failed_children: bool = False,
    ) -> Op[Flow[J]]:
        """Add a parent job and its children (each may have ``children`` of
        its own) atomically. A parent waits in ``waiting-children`` until
        every child finished; its handler then reads ``children_results()``.

        Nodes are dicts: ``name``, ``data``, the options of ``add`` (except
        ``job_id``), ``queue`` (children; default: this queue — other queues
        must share its hash tag, e.g. ``media:thumbs`` and ``media:index``),
        ``children``, and per child ``fail_parent_on_failure`` /
        ``ignore_failed_children`` overriding the flow's defaults. A child
        that failed for good fails its parent, or with
        ``ignore_failed_children`` is skipped; with neither, the parent keeps
        waiting until that child is retried and completes. Nodes of this
        queue take its defaults.
        """
        root = {**parent, "children": list(children), "queue": self.name}
        defaults = (fail_parent_on_failure, ignore_failed_children)
        nodes: list[FlowNode] = []
        queues: list[QueueCore[J]] = []
        self._flatten(root, 0, defaults, nodes, queues)
        ids = yield PLAN.add_flow(self.keys, now_ms(), [node.script_args() for node in nodes])
        flows = [
            Flow(q.job(job_id, {"name": node.row.name, "state": _added_state(node)}, created=True))
            for q, job_id, node in zip(queues, ids, nodes, strict=True)
        ]
        for flow, node in zip(flows, nodes, strict=True):
            if node.parent_index:
                flows[node.parent_index - 1].children.append(flow)
        return flows[0]

    def _flatten(
        self,
        node: Mapping[str, Any],
        parent_index: int,
        defaults: tuple[bool, bool],
        nodes: list[FlowNode],
        queues: list[QueueCore[J]],
    ) -> None:
        """Validate one node and its subtree, parents first, into ``nodes``."""
        if not isinstance(node, Mapping) or "name" not in node:
            raise TypeError(f"a flow node must be a dict with a 'name', got {node!r}")
        flow_keys = {
            "name",
            "data",
            "queue",
            "children",
            "fail_parent_on_failure",
            "ignore_failed_children",
        }
        options = {k: v for k, v in node.items() if k not in flow_keys}
        if "job_id" in options:
            raise TypeError("flow nodes take no job_id: their ids are generated")
        if set(options) - JOB_OPTION_NAMES:
            raise TypeError(
                f"unknown flow node options: {', '.join(sorted(set(options) - JOB_OPTION_NAMES))}"
            )
        queue_name = node.get("queue") or self.name
        queue = self if queue_name == self.name else self.sibling(queue_name)
        if queue.keys.hash_tag != self.keys.hash_tag:
            raise ValueError(
                f"flow queue {queue_name!r} must share the hash tag of "
                f"{self.name!r} ({{{self.keys.hash_tag}}}): name the queues "
                f"'{self.keys.hash_tag}:...'"
            )
        opts = queue._options(options)
        children = list(node.get("children") or ())
        fail = node.get("fail_parent_on_failure", defaults[0])
        ignore = node.get("ignore_failed_children", defaults[1])
        nodes.append(
            FlowNode(
                prefix=queue.keys.prefix,
                queue=queue_name,
                parent_index=parent_index,
                fail_parent=bool(fail),
                ignore_failed_children=bool(ignore),
                children=len(children),
                row=self._encode(node["name"], node.get("data"), opts),
            )
        )
        queues.append(queue)
        index = len(nodes)
        for child in children:
            self._flatten(child, index, defaults, nodes, queues)

    # -- looking -----------------------------------------------------------
    def _get_job(self, job_id: str) -> Op[J | None]:
        """The job, or None if there is no such job (any more)."""
        fields = yield cmd("HGETALL", self.keys.job(str(job_id)))
        if not fields:
            return None
        return self.job_type.from_hash(self, str(job_id), fields)

    def _get_jobs(self, job_ids: Sequence[str]) -> Op[list[J]]:
        """The jobs with these ids in one round trip; those gone are skipped."""
        if not job_ids:
            return []
        found = yield [cmd("HGETALL", self.keys.job(str(i))) for i in job_ids]
        return [
            self.job_type.from_hash(self, str(i), fields)
            for i, fields in zip(job_ids, found, strict=True)
            if fields
        ]

    def _counts(self) -> Op[dict[str, int]]:
        """How many jobs are in each state (one round trip, no scans)."""
        replies = yield [
            *(cmd("ZCARD", getattr(self.keys, key)) for key in JOB_SETS),
            cmd("GET", self.keys.gcount),
        ]
        *sizes, grouped = replies
        counts = {state: size for state, size in zip(STATES, sizes, strict=True)}
        counts["waiting"] += int(grouped or 0)  # grouped jobs wait in their group's set
        return counts

    def _job_ids(self, state: str, start: int = 0, limit: int = 100) -> Op[list[str]]:
        """Ids in ``state``: the next to run first for waiting and delayed, the
        most recent first for completed and failed. Waiting lists the jobs
        without a group first, then each group's (groups by name), each in
        the order they run."""
        key = self.keys.state_set(state)
        if start < 0 or limit < 1:
            raise ValueError(f"start must be >= 0 and limit >= 1, got {start} and {limit}")
        if state == "waiting":
            waiting: list[str] = yield PLAN.list_waiting(self.keys, start, limit)
            return waiting
        newest_first = state in FINISHED_STATES
        ids: list[bytes] = yield cmd(
            "ZREVRANGE" if newest_first else "ZRANGE", key, start, start + limit - 1
        )
        return [i.decode() for i in ids]

    def _audit_log(self, count: int = 100) -> Op[list[dict[str, Any]]]:
        """The newest manual actions on this queue and its jobs (retries,
        removals, promotions, pauses), newest first: at, by, action, job_id."""
        raw = yield cmd("XREVRANGE", self.keys.audit, "+", "-", "COUNT", count)
        entries = []
        for _entry_id, fields in raw:
            entry = {k.decode(): v.decode() for k, v in fields.items()}
            entries.append({**entry, "at": int(entry["at"]) / 1000.0})
        return entries

    def _workers(self) -> Op[list[dict[str, Any]]]:
        """Live worker parents (any queue): host, pid, queues, procs,
        started_at and last_seen (epoch seconds)."""
        return (yield from registry.live_workers_op(now_ms()))

    def _throughput(self, window: float = 60.0) -> Op[dict[str, float]]:
        """Jobs finished per second over the last ``window`` seconds, by
        outcome, counted from the finished sets' times (no scan; jobs that
        retention already removed are not counted)."""
        now = now_ms()
        completed, failed = yield [
            cmd("ZCOUNT", key, now - ms(window), now)
            for key in (self.keys.completed, self.keys.failed)
        ]
        return {"completed": completed / window, "failed": failed / window}

    def _job_logs(self, job_id: str) -> Op[list[str]]:
        """The log lines a job's handler wrote (the newest 1,000), oldest first."""
        lines = yield cmd("LRANGE", self.keys.logs(job_id), 0, -1)
        return [line.decode(errors="replace") for line in lines]

    # -- administering -----------------------------------------------------
    def _pause(self, *, by: str | None = None) -> Op[bool]:
        """Stop handing out jobs. Returns False if it was paused already."""
        return bool((yield PLAN.pause(self.keys, True, by=who(by))))

    def _resume(self, *, by: str | None = None) -> Op[bool]:
        """Hand out jobs again. Returns False if it was not paused."""
        return bool((yield PLAN.pause(self.keys, False, by=who(by))))

    def _is_paused(self) -> Op[bool]:
        """Whether the queue is paused."""
        return bool((yield cmd("HEXISTS", self.keys.meta, "paused")))

    def _retry(self, job_id: str, *, by: str | None = None, reset_steps: bool = False) -> Op[bool]:
        """Send a failed job back to waiting with a fresh attempt budget.
        Returns False if the job is not in the failed set. ``reset_steps``
        forgets its durable steps (``job.step``), so it redoes them all."""
        moved = yield PLAN.retry(self.keys, str(job_id), by=who(by), reset_steps=reset_steps)
        return bool(moved)

    def _retry_failed(self, *, by: str | None = None) -> Op[int]:
        """Retry every failed job; returns how many."""
        total, by = 0, who(by)
        while moved := (yield PLAN.retry(self.keys, "", STEP_LIMIT, by=by)):
            total += len(moved)
        return total

    def _promote(self, job_id: str, *, by: str | None = None) -> Op[bool]:
        """Run a delayed job now. Returns False if it is not delayed."""
        return bool((yield PLAN.promote(self.keys, now_ms(), str(job_id), by=who(by))) == 1)

    def _remove(self, job_id: str, *, by: str | None = None) -> Op[bool]:
        """Delete a job that is not running. Returns False if there is no such
        job; raises :class:`JobIsActive` if a worker is running it."""
        status = yield PLAN.remove(self.keys, str(job_id), by=who(by))
        if status < 0:
            raise JobIsActive(f"job {job_id} is active; remove it after it finishes")
        return bool(status == 1)

    def _cancel(
        self,
        job_id: str,
        *,
        reason: str | None = None,
        by: str | None = None,
        keep_children: bool = False,
    ) -> Op[str | None]:
        """Cancel a job for good (never retried). Returns ``"cancelled"`` if
        it was waiting, delayed or waiting for its children, ``"cancelling"``
        if it is active (the worker holding it stops it within a second), or
        None when there is nothing to cancel: no such job, it finished, or its
        record is not a hash (something other than sandboxq wrote it: remove it).
        Audited with ``reason``, by ``by`` (default the OS user).

        A flow parent's unfinished children (and theirs, down the flow, in
        any queue) are cancelled with it the same way, each audited with
        the reason "its flow parent QUEUE:ID was cancelled"; with
        ``keep_children=True`` they run on."""
        if reason is not None and not isinstance(reason, str):
            raise TypeError(f"reason must be a str, not {type(reason).__name__}")
        if not isinstance(keep_children, bool):
            raise TypeError(f"keep_children must be a bool, not {type(keep_children).__name__}")
        status = yield PLAN.cancel(
            self.keys,
            str(job_id),
            by=who(by),
            reason=reason or "",
            keep_children=keep_children,
        )
        return status if status in ("cancelled", "cancelling") else None

    def _clean(
        self,
        state: str,
        *,
        older_than: float | None = None,
        keep: int | None = None,
        by: str | None = None,
    ) -> Op[int]:
        """Remove jobs in ``state`` finished more than ``older_than`` seconds
        ago and/or beyond the newest ``keep``. Returns how many; the queue's
        audit log records who cleaned (``by``, default the OS user).

        ``older_than`` applies to finished jobs only (completed, failed,
        cancelled): the sets of waiting and delayed jobs are ordered by
        priority and due time, not by age. For waiting jobs, ``keep`` counts
        the jobs without a group and each group's jobs apart (``keep=0``
        empties them all)."""
        if state == "active":
            raise ValueError("active jobs cannot be cleaned; they are running")
        if older_than is None and keep is None:
            raise ValueError("clean needs older_than and/or keep")
        if older_than is not None and state not in FINISHED_STATES:
            raise ValueError(
                f"clean({state!r}, older_than=...) is not supported: older_than counts "
                "from the finish time, so it applies to completed, failed and cancelled jobs only"
            )
        max_age = -1 if older_than is None else ms(older_than)
        max_count = -1 if keep is None else keep
        total, by = 0, who(by)
        while (
            removed := (
                yield PLAN.clean(self.keys, state, now_ms(), max_count, max_age, STEP_LIMIT, by=by)
            )
        ) > 0:
            total += removed
            if removed < STEP_LIMIT:
                break
        return total

    def _drain(self, include_delayed: bool = True, *, by: str | None = None) -> Op[int]:
        """Remove every job that has not started. Returns how many; the
        queue's audit log records who drained (``by``, default the OS user)."""
        total, by = 0, who(by)
        while (removed := (yield PLAN.drain(self.keys, include_delayed, STEP_LIMIT, by=by))) > 0:
            total += removed
        return total

    def _obliterate(self, *, force: bool = False) -> Op[None]:
        """Delete the queue: every job and key. Refuses while jobs are active
        unless ``force`` (their workers will find their leases gone)."""
        while (removed := (yield PLAN.obliterate(self.keys, force, STEP_LIMIT))) != 0:
            if removed < 0:
                raise JobIsActive(
                    f"queue {self.name!r} has active jobs; pass force=True to obliterate anyway"
                )
        # The charts' counters (sandboxq.stats): every minute they can still hold.
        now = stats.minute_of(now_ms())
        minutes = range(now - stats.RETENTION_SECONDS // 60 - 1, now + 2)
        names = stats.keys_of(self.keys, minutes)
        yield [cmd("UNLINK", *names[i : i + 1000]) for i in range(0, len(names), 1000)]

    # -- flow control --------------------------------------------------------
    def _set_rate_limit(self, max_jobs: int | None, per_seconds: float | None = None) -> Op[None]:
        """At most ``max_jobs`` starts of this queue's jobs in any window of
        ``per_seconds``, across every worker. ``None`` clears the limit.
        ``max_jobs`` is at most ``options.MAX_RATE_LIMIT_JOBS`` (a billion),
        ``per_seconds`` at most 100 years."""
        yield PLAN.configure(self.keys, rate_limit_fields("rl", max_jobs, per_seconds))

    def _set_group_rate_limit(
        self, max_jobs: int | None, per_seconds: float | None = None
    ) -> Op[None]:
        """The same limit for each group separately (``add(..., group=...)``)."""
        yield PLAN.configure(self.keys, rate_limit_fields("grl", max_jobs, per_seconds))

    def _set_concurrency(self, max_active: int | None) -> Op[None]:
        """At most ``max_active`` jobs of this queue active across all workers
        (at most ``options.MAX_CONCURRENCY``, a million)."""
        setting = positive_int("concurrency", max_active, MAX_CONCURRENCY)
        yield PLAN.configure(self.keys, {"concurrency": setting})

    def _set_group_concurrency(self, max_active: int | None) -> Op[None]:
        """At most ``max_active`` active jobs per group."""
        setting = positive_int("group concurrency", max_active, MAX_CONCURRENCY)
        yield PLAN.configure(self.keys, {"gconcurrency": setting})

    def _set_priority_aging(self, seconds_per_level: float | None) -> Op[None]:
        """Opt in to priority aging: a waiting job's effective priority improves
        by one level per ``seconds_per_level`` it waits (at most 30 days), so
        low priorities cannot starve. ``None``: strict priority (the default)."""
        yield PLAN.configure(self.keys, {"aging_ms": aging_ms(seconds_per_level)})

    def _limits(self) -> Op[dict[str, Any]]:
        """The flow-control settings in force (seconds; None when unset)."""
        raw = yield cmd("HGETALL", self.keys.meta)
        meta = {k.decode(): int(v) for k, v in raw.items() if k != b"paused" and v.isdigit()}

        def rate(prefix: str) -> tuple[int, float] | None:
            if f"{prefix}_max" not in meta:
                return None
            return meta[f"{prefix}_max"], meta[f"{prefix}_window_ms"] / 1000.0

        return {
            "rate_limit": rate("rl"),
            "group_rate_limit": rate("grl"),
            "concurrency": meta.get("concurrency"),
            "group_concurrency": meta.get("gconcurrency"),
            "priority_aging": meta["aging_ms"] / 1000.0 if "aging_ms" in meta else None,
            "rate_limited_until": meta["rl_until"] / 1000.0 if "rl_until" in meta else None,
        }

    # -- schedules ---------------------------------------------------------
    def _schedule(
        self,
        /,
        key: str,
        *,
        cron: str | None = None,
        every: float | None = None,
        tz: str = "UTC",
        name: str | None = None,
        data: Any = None,
        start_at: Any = None,
        end_at: Any = None,
        limit: int | None = None,
        misfire: str = "once",
        **job_options: Any,
    ) -> Op[dict[str, Any]]:
        """Create or update (by ``key``) a repeatable job: ``cron`` (with
        ``tz``) or ``every`` seconds, between ``start_at`` and ``end_at``
        (datetimes or epoch seconds), at most ``limit`` times.

        Each occurrence is enqueued once, by whichever worker is alive. When
        none was at the due time, ``misfire`` decides: ``skip`` drops missed
        runs, ``once`` runs one catch-up, ``all`` runs each (at most 100).
        ``job_options`` are those of ``add`` except ``job_id`` and ``delay``;
        the queue's defaults fill in the others. Bad cron, time zones or
        options raise here, writing nothing.
        """
        now = now_ms()
        spec = Schedule.build(
            key,
            now_ms=now,
            cron=cron,
            every=every,
            tz=tz,
            name=name,
            data=data,
            start_at=start_at,
            end_at=end_at,
            limit=limit,
            misfire=misfire,
            options={k: v for k, v in self.defaults.items() if k != "delay"} | job_options,
        )
        payload.dump_json(data, f"data of schedule {key!r}", self.max_payload_bytes)
        first = spec.next_after(now)
        yield PLAN.schedule(self.keys, key, spec.to_json(), -1 if first is None else first)
        return describe_schedule(spec, first, 0)

    def _schedules(self) -> Op[list[dict[str, Any]]]:
        """Every schedule of this queue with its next run (epoch seconds)."""
        specs, times, counts = yield [
            cmd("HGETALL", self.keys.schedules),
            cmd("ZRANGE", self.keys.schedule_times, 0, -1, "WITHSCORES", withscores=True),
            cmd("HGETALL", self.keys.schedule_counts),
        ]
        next_by_key = {k.decode(): int(score) for k, score in times}
        found = []
        for raw_key, raw_spec in sorted(specs.items()):
            key = raw_key.decode()
            found.append(
                describe_schedule(
                    Schedule.from_json(raw_spec), next_by_key.get(key), int(counts.get(raw_key, 0))
                )
            )
        return found

    def _unschedule(self, key: str) -> Op[bool]:
        """Delete a schedule (jobs it already enqueued stay). False if unknown."""
        return bool((yield PLAN.schedule(self.keys, key, None)))


def _added_state(node: FlowNode) -> str:
    """The state add_flow.lua gives a node it adds."""
    if node.children:
        return "waiting-children"
    return "delayed" if node.row.delay_ms > 0 else "waiting"


def describe_schedule(spec: Schedule, next_ms: int | None, count: int) -> dict[str, Any]:
    return {
        "key": spec.key,
        "name": spec.name,
        "cron": spec.cron,
        "every": None if spec.every_ms is None else spec.every_ms / 1000.0,
        "tz": spec.tz,
        "next_run": None if next_ms is None else next_ms / 1000.0,
        "count": count,
        "limit": spec.limit,
        "misfire": spec.misfire,
        "data": spec.data,
    }


def who(by: str | None) -> str:
    """Who did a manual action: as given, else the OS user."""
    if by:
        return by
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid {os.getuid()}"
