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

import time
from collections.abc import Sequence
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
    )

    def __init__(self, client: redis.Redis, events_maxlen: int = EVENTS_MAXLEN) -> None:
        self.client = client
        self.events_maxlen = events_maxlen
        self._scripts = {name: client.register_script(lua_source(name)) for name in self.NAMES}

    def _run(
        self,
        name: str,
        keys: Sequence[str],
        args: Sequence[Any],
        pipe: redis.client.Pipeline | None = None,
    ) -> Any:
        script = self._scripts[name]
        if pipe is None:
            try:
                return execute(self.client, ("EVALSHA", script.sha, len(keys), *keys, *args))
            except redis.exceptions.NoScriptError:
                # Redis restarted or its script cache was flushed: load, run again.
                script.sha = self.client.script_load(script.script)
                return execute(self.client, ("EVALSHA", script.sha, len(keys), *keys, *args))
        # Straight EVALSHA: redis-py would otherwise send SCRIPT EXISTS before
        # every pipeline, a second round trip. Callers load the scripts once
        # (load_all) and again if the pipeline fails with NoScriptError.
        return pipe.evalsha(script.sha, len(keys), *keys, *args)

    def load_all(self) -> None:
        """Load every script into Redis's cache (one round trip)."""
        pipe = self.client.pipeline(transaction=False)
        for name in self.NAMES:
            pipe.script_load(lua_source(name))
        pipe.execute()

    # -- producer ---------------------------------------------------------
    def add(self, k: QueueKeys, now: int, jobs: Sequence[Sequence[Any]]) -> list[tuple[str, bool]]:
        """Add jobs; each item is ``(job_id or "", priority, delay_ms, *field_value_pairs)``."""
        args: list[Any] = [k.prefix, now, self.events_maxlen, *_job_args(jobs)]
        raw = self._run("add", [k.id_counter, k.seq, k.wait, k.delayed, k.marker, k.events], args)
        return [(_text(raw[i]), raw[i + 1] == 1) for i in range(0, len(raw), 2)]

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
        """Lease up to ``count`` jobs. Returns ``[rows, next_check_ms, limited]`` (see fetch.lua);
        :func:`sandboxq.fast.decode_fetched` turns the rows into job records.
        ``request`` numbers the worker's fetches, for :meth:`reclaim`. Only
        the first ``start_now`` jobs (default: all) start now; the rest are
        prefetched, and :meth:`finish` marks them started later."""
        return self._run(
            "fetch",
            [k.wait, k.delayed, k.active, k.meta, k.marker, k.events, k.seq],
            [
                k.prefix,
                now,
                count,
                token,
                lease_ms,
                self.events_maxlen,
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
        returned = self._run(
            "reclaim",
            [k.active, k.events, k.cancelled, k.cancel_requests],
            [k.prefix, token, self.events_maxlen, now, request, *known],
            pipe,
        )
        return returned if pipe is not None else decode_ids(returned)

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
        args: list[Any] = [k.prefix, now, token, self.events_maxlen, len(starts)]
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
        lost = self._run("renew", [k.active], [k.prefix, now, token, lease_ms, *job_ids], pipe)
        return lost if pipe is not None else decode_ids(lost)

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
        reply = self._run(
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
            [k.prefix, now, max_stalls, self.events_maxlen, limit],
            pipe,
        )
        if pipe is not None:
            return reply
        return tuple(decode_ids(found) for found in reply)

    def release(
        self,
        k: QueueKeys,
        token: str,
        job_ids: Sequence[str],
        now: int | None = None,
        pipe: redis.client.Pipeline | None = None,
    ) -> Any:
        """Hand leased jobs back (the ids released, raw when ``pipe`` is given)."""
        released = self._run(
            "release",
            [k.active, k.wait, k.events, k.marker, k.cancelled, k.cancel_requests],
            [k.prefix, token, self.events_maxlen, now_ms() if now is None else now, *job_ids],
            pipe,
        )
        return released if pipe is not None else decode_ids(released)

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
        args: list[Any] = [k.prefix, token, self.events_maxlen, keep_logs]
        for report in reports:
            args.extend(report)
        return self._run("report", [k.events], args, pipe)

    # -- admin ------------------------------------------------------------
    # The admin transitions take ``by``: who asked, for the audit log.
    def promote(
        self, k: QueueKeys, now: int, job_id: str = "", limit: int = STEP_LIMIT, by: str = ""
    ) -> int:
        return int(
            self._run(
                "promote",
                [k.delayed, k.wait, k.seq, k.marker, k.events],
                [k.prefix, now, self.events_maxlen, job_id, limit, by],
            )
        )

    def pause(self, k: QueueKeys, paused: bool, by: str = "", now: int | None = None) -> bool:
        changed = self._run(
            "pause",
            [k.meta, k.marker, k.events],
            [
                "1" if paused else "0",
                self.events_maxlen,
                k.prefix,
                now_ms() if now is None else now,
                by,
            ],
        )
        return bool(changed == 1)

    def remove(self, k: QueueKeys, job_id: str, by: str = "", now: int | None = None) -> int:
        return int(
            self._run(
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
                [k.prefix, self.events_maxlen, job_id, now_ms() if now is None else now, by],
            )
        )

    def cancel(
        self, k: QueueKeys, job_id: str, by: str = "", reason: str = "", now: int | None = None
    ) -> str:
        """Cancel one job: "cancelled", "cancelling" (active), "finished:<state>"
        or "missing" (nothing to cancel; see cancel.lua)."""
        status = self._run(
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
            [k.prefix, self.events_maxlen, job_id, now_ms() if now is None else now, by, reason],
        )
        return _text(status)

    def retry(
        self,
        k: QueueKeys,
        job_id: str = "",
        limit: int = STEP_LIMIT,
        now: int | None = None,
        by: str = "",
    ) -> list[str]:
        moved = self._run(
            "retry",
            [k.failed, k.wait, k.seq, k.marker, k.events],
            [k.prefix, self.events_maxlen, job_id, limit, now_ms() if now is None else now, by],
        )
        return decode_ids(moved)

    def clean(
        self,
        k: QueueKeys,
        state: str,
        now: int,
        max_count: int = -1,
        max_age_ms: int = -1,
        limit: int = STEP_LIMIT,
        by: str = "",
    ) -> int:
        return int(
            self._run(
                "clean",
                [k.state_set(state), k.events],
                [k.prefix, now, max_count, max_age_ms, limit, self.events_maxlen, by, state],
            )
        )

    def drain(
        self, k: QueueKeys, include_delayed: bool, limit: int = STEP_LIMIT, now: int | None = None
    ) -> int:
        return int(
            self._run(
                "drain",
                [k.wait, k.delayed, k.events],
                [
                    k.prefix,
                    "1" if include_delayed else "0",
                    limit,
                    self.events_maxlen,
                    now_ms() if now is None else now,
                ],
            )
        )

    def list_waiting(self, k: QueueKeys, start: int, limit: int) -> list[str]:
        """A page of waiting ids: ungrouped first, then each group's, by name."""
        return decode_ids(
            self._run("list_waiting", [k.wait, k.group_names], [k.prefix, start, limit])
        )

    def obliterate(
        self, k: QueueKeys, force: bool, limit: int = STEP_LIMIT, now: int | None = None
    ) -> int:
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
        return int(
            self._run(
                "obliterate",
                [k.active, *sets, *others],
                [
                    k.prefix,
                    "1" if force else "0",
                    len(sets),
                    limit,
                    now_ms() if now is None else now,
                    self.events_maxlen,
                ],
            )
        )

    # -- schedules --------------------------------------------------------
    def schedule(self, k: QueueKeys, key: str, spec: bytes | None, next_ms: int = -1) -> bool:
        """Upsert (``spec``) or delete (``None``) a schedule; True if it was
        new (upsert) or existed (delete)."""
        keys = [k.schedules, k.schedule_times, k.events, k.schedule_counts, k.marker]
        if spec is None:
            return bool(self._run("schedule", keys, ["del", key, self.events_maxlen]) == 1)
        return bool(
            self._run("schedule", keys, ["set", key, self.events_maxlen, spec, next_ms]) == 1
        )

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
            k.prefix,
            now,
            self.events_maxlen,
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
        created = self._run("fire_schedule", keys, args, pipe)
        return created if pipe is not None else int(created)

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
            "heartbeat", [registry_key], [token, description, now, stale_ms, sample], pipe
        )

    # -- flows ------------------------------------------------------------
    def add_flow(self, root: QueueKeys, now: int, nodes: Sequence[Sequence[Any]]) -> list[str]:
        """Add a tree of jobs; each node is ``(prefix, queue, parent_index,
        fail_parent, ignore_failure, n_children, priority, delay_ms,
        *field_value_pairs)`` with parents first. Returns the ids in order."""
        args: list[Any] = [now, self.events_maxlen]
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
        return decode_ids(self._run("add_flow", [root.events], args))

    def configure(
        self,
        k: QueueKeys,
        settings: dict[str, Any],
        pipe: redis.client.Pipeline | None = None,
    ) -> Any:
        """Set (or, with ``None``, clear) flow-control meta fields and wake the
        workers; returns how many waiting jobs were rescored."""
        args: list[Any] = [k.prefix, self.events_maxlen]
        for field, value in settings.items():
            args += [field, "" if value is None else value]
        rescored = self._run("configure", [k.meta, k.marker, k.events], args, pipe)
        return rescored if pipe is not None else int(rescored)
