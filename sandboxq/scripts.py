"""The Lua state transitions, loaded once and wrapped in typed methods.

Each transition is one file in ``sandboxq/lua/``. A line ``--!include NAME``
inlines ``lua/include/NAME.lua`` so shared helpers exist once on disk and
still travel inside each script (Redis 6.2 has no shared functions).

Every method takes the time as milliseconds, so tests control the clock.
The worker's methods take an optional ``pipe``: the call is then queued on
that pipeline and its raw reply comes back from ``pipe.execute()``.
Scripts run through EVALSHA and are reloaded on NOSCRIPT (redis-py's
``register_script`` does both), also inside pipelines.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import redis

from sandboxq.connection import execute
from sandboxq.keys import QueueKeys

#: How many lifecycle events a queue's stream keeps (approximately).
EVENTS_MAXLEN = 10_000

#: The most jobs a bulk step (promote, clean, drain, retry-all) touches per call,
#: so one call never blocks Redis for long.
STEP_LIMIT = 1000


def now_ms() -> int:
    return int(time.time() * 1000)


@cache
def lua_source(name: str) -> str:
    """The text of ``lua/NAME.lua`` with its includes inlined."""
    folder = resources.files("sandboxq") / "lua"
    lines, included = [], []
    for line in (folder / f"{name}.lua").read_text().splitlines():
        if line.startswith("--!include "):
            include = line.split(None, 1)[1].strip()
            included.append(include)
            lines.append((folder / "include" / f"{include}.lua").read_text())
        else:
            lines.append(line)
    # retention's delete_job tells flow parents their child is gone through a
    # function flow.lua defines: without it, deleting a job would fail.
    if "retention" in included and "flow" not in included:
        raise RuntimeError(f"lua/{name}.lua includes retention, so it must include flow too")
    return "\n".join(lines) + "\n"


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _job_args(jobs: Sequence[Sequence[Any]]) -> list[Any]:
    """Jobs as add_jobs.lua reads them: id, priority, delay_ms, n, n pairs."""
    args: list[Any] = []
    for job_id, priority, delay_ms, *fields in jobs:
        args += [job_id, priority, delay_ms, len(fields) // 2, *fields]
    return args


def _optional(value: int | None) -> int | str:
    """An optional number as a script argument ("" for none)."""
    return "" if value is None else value


def decode_ids(raw: Sequence[bytes | str]) -> list[str]:
    """A script's array of job ids as text."""
    return [_text(i) for i in raw]


def _raw(reply: Any) -> Any:
    return reply


def _is_one(reply: Any) -> bool:
    return bool(reply == 1)


def _added(raw: Sequence[Any]) -> list[tuple[str, bool]]:
    """add.lua's reply: per job, its id and whether this call created it."""
    return [(_text(raw[i]), raw[i + 1] == 1) for i in range(0, len(raw), 2)]


def _id_lists(reply: Sequence[Sequence[bytes]]) -> tuple[list[str], ...]:
    return tuple(decode_ids(ids) for ids in reply)


@cache
def script_sha(name: str) -> str:
    """The SHA1 Redis knows ``lua/NAME.lua`` by (EVALSHA)."""
    return hashlib.sha1(lua_source(name).encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class ScriptCall:
    """One script run, described but not run: ``decode`` turns its raw reply
    into the method's result."""

    name: str
    keys: Sequence[str]
    args: Sequence[Any]
    decode: Callable[[Any], Any] = _raw

    def command(self) -> tuple[Any, ...]:
        return ("EVALSHA", script_sha(self.name), len(self.keys), *self.keys, *self.args)


def run_script(client: Any, call: ScriptCall) -> Any:
    """Run ``call`` on a blocking client and decode its reply; a script Redis
    lost (a restart, SCRIPT FLUSH) is loaded and run again."""
    try:
        raw = execute(client, call.command())
    except redis.exceptions.NoScriptError:
        client.script_load(lua_source(call.name))
        raw = execute(client, call.command())
    return call.decode(raw)


class Scripts:
    """One Redis client's handles on every transition script."""

    NAMES = (
        "add",
        "fetch",
        "reclaim",
        "finish",
        "renew",
        "recover_stalled",
        "release",
        "report",
        "promote",
        "pause",
        "remove",
        "cancel",
        "retry",
        "clean",
        "drain",
        "obliterate",
        "schedule",
        "fire_schedule",
        "add_flow",
        "configure",
        "list_waiting",
        "heartbeat",
        "step",
    )

    def __init__(self, client: redis.Redis | None, events_maxlen: int = EVENTS_MAXLEN) -> None:
        """``client`` runs the scripts; without one, each method returns
        the :class:`ScriptCall` it would run (what the queue's sans-I/O
        operations yield to their driver)."""
        self.client: Any = client
        self.events_maxlen = events_maxlen

    def _run(
        self,
        name: str,
        keys: Sequence[str],
        args: Sequence[Any],
        pipe: redis.client.Pipeline | None = None,
        decode: Callable[[Any], Any] = _raw,
    ) -> Any:
        """Run one script and decode its reply; or, with ``pipe``, queue it
        there (the raw reply comes from ``pipe.execute()``); or, with no
        client, describe it."""
        if pipe is not None:
            # Straight EVALSHA: redis-py would otherwise send SCRIPT EXISTS
            # before every pipeline, a second round trip. Callers load the
            # scripts once (load_all) and again if the pipeline fails with
            # NoScriptError.
            return pipe.evalsha(script_sha(name), len(keys), *keys, *args)
        call = ScriptCall(name, keys, args, decode)
        if self.client is None:
            return call
        return run_script(self.client, call)

    def _head(self, prefix: str, now: int | str) -> list[Any]:
        """The arguments every script starts with (lua/include/common.lua):
        key prefix, now (ms), events maxlen."""
        return [prefix, now, self.events_maxlen]

    def load_all(self) -> None:
        """Load every script into Redis's cache (one round trip)."""
        pipe = self.client.pipeline(transaction=False)
        for name in self.NAMES:
            pipe.script_load(lua_source(name))
        pipe.execute()

    # -- producer ---------------------------------------------------------
    def add(self, k: QueueKeys, now: int, jobs: Sequence[Sequence[Any]]) -> Any:
        """Add jobs; each item is ``(job_id or "", priority, delay_ms, *field_value_pairs)``."""
        args: list[Any] = [*self._head(k.prefix, now), *_job_args(jobs)]
        keys = [k.id_counter, k.seq, k.wait, k.delayed, k.marker, k.events]
        return self._run("add", keys, args, decode=_added)

    # -- worker -----------------------------------------------------------
    def fetch(
        self,
        k: QueueKeys,
        now: int,
        count: int,
        token: str,
        lease_ms: int,
        pipe: redis.client.Pipeline | None = None,
        request: int | None = None,
        start_now: int | None = None,
    ) -> Any:
        """Lease up to ``count`` jobs. Returns ``[rows, next_check_ms, limited,
        has_limits, problem]`` (see fetch.lua): ``problem`` is ``b""``, or names
        a queue setting the worker cannot use (then nothing was leased);
        :func:`sandboxq.fast.decode_fetched` turns the rows into job records.
        ``request`` numbers the worker's fetches, for :meth:`reclaim`. Only
        the first ``start_now`` jobs (default: all) start now; the rest are
        prefetched, and :meth:`finish` marks them started later."""
        return self._run(
            "fetch",
            [k.wait, k.delayed, k.active, k.meta, k.marker, k.events, k.seq],
            [
                *self._head(k.prefix, now),
                count,
                token,
                lease_ms,
                _optional(request),
                _optional(start_now),
            ],
            pipe,
        )

    def reclaim(
        self,
        k: QueueKeys,
        now: int,
        token: str,
        request: int,
        known: Sequence[str],
        pipe: redis.client.Pipeline | None = None,
    ) -> Any:
        """After a lost fetch reply: hand back the jobs ``token`` holds but
        does not know (``known`` are those it does), and make its fetches up
        to ``request`` lease nothing if they arrive later. Returns the ids
        handed back (raw when ``pipe`` is given)."""
        return self._run(
            "reclaim",
            [k.active, k.events, k.cancelled, k.cancel_requests],
            [*self._head(k.prefix, now), token, request, *known],
            pipe,
            decode_ids,
        )

    def finish(
        self,
        k: QueueKeys,
        now: int,
        token: str,
        outcomes: Sequence[Sequence[Any]],
        pipe: redis.client.Pipeline | None = None,
        starts: Sequence[tuple[str, int]] = (),
    ) -> Any:
        """Settle jobs; each outcome is ``(id, outcome, value, traceback,
        delay_ms, lease)`` (``execution.finish_entry``). First, ``starts``
        marks prefetched jobs started: ``(id, started_ms)`` each. Returns
        one status per settled job (bytes), or the pipeline when ``pipe``
        is given."""
        args: list[Any] = [*self._head(k.prefix, now), token, len(starts)]
        for job_id, started_ms in starts:
            args += [job_id, started_ms]
        for outcome in outcomes:
            args.extend(outcome)
        return self._run(
            "finish",
            [
                k.active,
                k.wait,
                k.delayed,
                k.completed,
                k.failed,
                k.events,
                k.seq,
                k.marker,
                k.cancelled,
                k.cancel_requests,
            ],
            args,
            pipe,
        )

    def renew(
        self,
        k: QueueKeys,
        now: int,
        token: str,
        lease_ms: int,
        job_ids: Sequence[str],
        pipe: redis.client.Pipeline | None = None,
    ) -> Any:
        """Extend leases; returns the ids this token no longer holds."""
        args = [k.prefix, now, "", token, lease_ms, *job_ids]
        return self._run("renew", [k.active], args, pipe, decode_ids)

    def recover_stalled(
        self,
        k: QueueKeys,
        now: int,
        max_stalls: int,
        limit: int = STEP_LIMIT,
        pipe: redis.client.Pipeline | None = None,
    ) -> Any:
        """Requeue or fail jobs whose lease lapsed (cancel those whose cancel
        was asked); returns (requeued, failed, cancelled) ids."""
        return self._run(
            "recover_stalled",
            [
                k.active,
                k.wait,
                k.failed,
                k.events,
                k.marker,
                k.cancelled,
                k.cancel_requests,
                k.given_up,
            ],
            [*self._head(k.prefix, now), max_stalls, limit],
            pipe,
            _id_lists,
        )

    def release(
        self,
        k: QueueKeys,
        token: str,
        unstarted: Sequence[str],
        interrupted: Sequence[str],
        now: int | None = None,
        pipe: redis.client.Pipeline | None = None,
    ) -> Any:
        """Hand leased jobs back: ``unstarted`` never ran (they go back with
        nothing spent, whatever their options), ``interrupted`` may have run
        (a manual_retry_only one fails instead). Returns the ids handed back
        to waiting (raw when ``pipe`` is given); see release.lua."""
        return self._run(
            "release",
            [k.active, k.wait, k.events, k.marker, k.cancelled, k.cancel_requests],
            [
                *self._head(k.prefix, now_ms() if now is None else now),
                token,
                len(unstarted),
                *unstarted,
                *interrupted,
            ],
            pipe,
            decode_ids,
        )

    def report(
        self,
        k: QueueKeys,
        token: str,
        reports: Sequence[tuple[str, str, Any]],
        keep_logs: int = 1000,
        pipe: redis.client.Pipeline | None = None,
    ) -> Any:
        """Record ``(job_id, "progress" | "log", value)`` reports of running jobs;
        returns how many were recorded."""
        args: list[Any] = [*self._head(k.prefix, ""), token, keep_logs]
        for report in reports:
            args.extend(report)
        return self._run("report", [k.events], args, pipe)

    def step(
        self,
        k: QueueKeys,
        token: str,
        steps: Sequence[tuple[str, str, str]],
        max_steps: int,
        pipe: redis.client.Pipeline | None = None,
    ) -> Any:
        """Record ``(job_id, key, result_json)`` durable steps of jobs this
        token holds; one status per step (see step.lua)."""
        args: list[Any] = [*self._head(k.prefix, ""), token, max_steps]
        for step in steps:
            args.extend(step)
        return self._run("step", [k.events], args, pipe, decode_ids)

    # -- admin ------------------------------------------------------------
    # The admin transitions take ``by``: who asked, for the audit log.
    def promote(
        self, k: QueueKeys, now: int, job_id: str = "", limit: int = STEP_LIMIT, by: str = ""
    ) -> Any:
        return self._run(
            "promote",
            [k.delayed, k.wait, k.seq, k.marker, k.events],
            [*self._head(k.prefix, now), job_id, limit, by],
            decode=int,
        )

    def pause(self, k: QueueKeys, paused: bool, by: str = "", now: int | None = None) -> Any:
        return self._run(
            "pause",
            [k.meta, k.marker, k.events],
            [*self._head(k.prefix, now_ms() if now is None else now), "1" if paused else "0", by],
            decode=_is_one,
        )

    def remove(self, k: QueueKeys, job_id: str, by: str = "", now: int | None = None) -> Any:
        return self._run(
            "remove",
            [
                k.wait,
                k.delayed,
                k.active,
                k.completed,
                k.failed,
                k.events,
                k.waiting_children,
                k.cancelled,
            ],
            [*self._head(k.prefix, now_ms() if now is None else now), job_id, by],
            decode=int,
        )

    def cancel(
        self,
        k: QueueKeys,
        job_id: str,
        by: str = "",
        reason: str = "",
        now: int | None = None,
        keep_children: bool = False,
    ) -> Any:
        """Cancel one job, and (unless ``keep_children``) a flow parent's
        unfinished children: "cancelled", "cancelling" (active),
        "finished:<state>", "missing" or "corrupt" (nothing to cancel; see
        cancel.lua)."""
        return self._run(
            "cancel",
            [
                k.wait,
                k.delayed,
                k.active,
                k.waiting_children,
                k.cancelled,
                k.cancel_requests,
                k.events,
                k.given_up,
            ],
            [
                *self._head(k.prefix, now_ms() if now is None else now),
                job_id,
                by,
                reason,
                "1" if keep_children else "0",
                k.name,
            ],
            decode=_text,
        )

    def retry(
        self,
        k: QueueKeys,
        job_id: str = "",
        limit: int = STEP_LIMIT,
        now: int | None = None,
        by: str = "",
        reset_steps: bool = False,
    ) -> Any:
        return self._run(
            "retry",
            [k.failed, k.wait, k.seq, k.marker, k.events],
            [
                *self._head(k.prefix, now_ms() if now is None else now),
                job_id,
                limit,
                by,
                "1" if reset_steps else "0",
            ],
            decode=decode_ids,
        )

    def clean(
        self,
        k: QueueKeys,
        state: str,
        now: int,
        max_count: int = -1,
        max_age_ms: int = -1,
        limit: int = STEP_LIMIT,
        by: str = "",
    ) -> Any:
        return self._run(
            "clean",
            [k.state_set(state), k.events],
            [*self._head(k.prefix, now), max_count, max_age_ms, limit, by, state],
            decode=int,
        )

    def drain(
        self,
        k: QueueKeys,
        include_delayed: bool,
        limit: int = STEP_LIMIT,
        now: int | None = None,
        by: str = "",
    ) -> Any:
        return self._run(
            "drain",
            [k.wait, k.delayed, k.events],
            [
                *self._head(k.prefix, now_ms() if now is None else now),
                "1" if include_delayed else "0",
                limit,
                by,
            ],
            decode=int,
        )

    def list_waiting(self, k: QueueKeys, start: int, limit: int) -> Any:
        """A page of waiting ids: ungrouped first, then each group's, by name."""
        args = [k.prefix, "", "", start, limit]
        return self._run("list_waiting", [k.wait, k.group_names], args, decode=decode_ids)

    def obliterate(
        self, k: QueueKeys, force: bool, limit: int = STEP_LIMIT, now: int | None = None
    ) -> Any:
        sets = [k.wait, k.delayed, k.completed, k.failed, k.waiting_children, k.cancelled]
        others = [
            k.groups,
            k.group_paused,
            k.group_active,
            k.group_names,
            k.group_rr,
            k.gcount,
            k.limiter,
            k.audit,
            k.id_counter,
            k.seq,
            k.meta,
            k.marker,
            k.events,
            k.schedules,
            k.schedule_times,
            k.schedule_counts,
            k.given_up,
            k.cancel_requests,
        ]
        return self._run(
            "obliterate",
            [k.active, *sets, *others],
            [
                *self._head(k.prefix, now_ms() if now is None else now),
                "1" if force else "0",
                len(sets),
                limit,
            ],
            decode=int,
        )

    # -- schedules --------------------------------------------------------
    def schedule(self, k: QueueKeys, key: str, spec: bytes | None, next_ms: int = -1) -> Any:
        """Upsert (``spec``) or delete (``None``) a schedule; True if it was
        new (upsert) or existed (delete)."""
        keys = [k.schedules, k.schedule_times, k.events, k.schedule_counts, k.marker]
        action = "del" if spec is None else "set"
        args = [*self._head("", ""), action, key, spec or "", next_ms]
        return self._run("schedule", keys, args, decode=_is_one)

    def fire_schedule(
        self,
        k: QueueKeys,
        now: int,
        key: str,
        expected_next: int,
        new_next: int,
        counted: int,
        jobs: Sequence[Sequence[Any]],
        pipe: redis.client.Pipeline | None = None,
    ) -> Any:
        """Enqueue a schedule's occurrences if its next time is still
        ``expected_next``; returns jobs created, or -1 if it moved on."""
        args: list[Any] = [
            *self._head(k.prefix, now),
            key,
            expected_next,
            new_next,
            counted,
            *_job_args(jobs),
        ]
        keys = [
            k.schedule_counts,
            k.schedule_times,
            k.id_counter,
            k.seq,
            k.wait,
            k.delayed,
            k.marker,
            k.events,
        ]
        return self._run("fire_schedule", keys, args, pipe, int)

    # -- the worker registry (one global key, not a queue's) ----------------
    def heartbeat(
        self,
        registry_key: str,
        token: str,
        description: bytes,
        now: int,
        stale_ms: int,
        sample: int,
        pipe: redis.client.Pipeline | None = None,
    ) -> Any:
        """Record a worker's heartbeat and delete up to ``sample`` entries of
        workers unseen for ``stale_ms``; returns how many were deleted."""
        return self._run(
            "heartbeat", [registry_key], ["", now, "", token, description, stale_ms, sample], pipe
        )

    # -- flows ------------------------------------------------------------
    def add_flow(self, root: QueueKeys, now: int, nodes: Sequence[Sequence[Any]]) -> Any:
        """Add a tree of jobs; each node is ``(prefix, queue, parent_index,
        fail_parent, ignore_failure, n_children, priority, delay_ms,
        *field_value_pairs)`` with parents first. Returns the ids in order."""
        args: list[Any] = self._head("", now)
        for prefix, queue, parent, fail, ignore, children, priority, delay_ms, *fields in nodes:
            args += [
                prefix,
                queue,
                parent,
                fail,
                ignore,
                children,
                priority,
                delay_ms,
                len(fields) // 2,
                *fields,
            ]
        return self._run("add_flow", [root.events], args, decode=decode_ids)

    def configure(
        self,
        k: QueueKeys,
        settings: dict[str, Any],
        pipe: redis.client.Pipeline | None = None,
    ) -> Any:
        """Set (or, with ``None``, clear) flow-control meta fields and wake the
        workers; returns how many waiting jobs were rescored."""
        args: list[Any] = self._head(k.prefix, "")
        for field, value in settings.items():
            args += [field, "" if value is None else value]
        return self._run("configure", [k.meta, k.marker, k.events], args, pipe, int)
