"""Every Lua state transition, wrapped in a typed method: :class:`Scripts`.

One script per transition lives in ``sandboxq/lua/`` (how one is loaded and
called: :mod:`sandboxq.script_call`; the arguments every script starts with:
``lua/include/common.lua``). :class:`Scripts` holds the producer's, the
admin, the schedule and the flow transitions, and inherits the worker's
from :class:`sandboxq.worker_scripts.WorkerScripts`. A method that needs
the time takes it in milliseconds (tests control the clock). Built with a
client, a method runs its script through EVALSHA (loading it again on
NOSCRIPT: :func:`run_script`) and decodes the reply; built with ``None``,
it returns the :class:`ScriptCall` it would run.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sandboxq.errors import UnknownDependency
from sandboxq.keys import QueueKeys
from sandboxq.rows import Dependency, FlowNode, JobRow
from sandboxq.script_call import (
    EVENTS_MAXLEN,
    MAX_PER_CALL,
    ScriptCall,
    decode_ids,
    decode_text,
    lua_source,
    now_ms,
    run_script,
    script_sha,
)
from sandboxq.worker_scripts import WorkerScripts

__all__ = [
    "EVENTS_MAXLEN",
    "MAX_PER_CALL",
    "ScriptCall",
    "Scripts",
    "decode_ids",
    "lua_source",
    "now_ms",
    "run_script",
    "script_sha",
]


def _job_args(rows: Sequence[JobRow]) -> list[Any]:
    """Jobs as add_jobs.lua reads them, one after the other."""
    args: list[Any] = []
    for row in rows:
        args += row.script_args()
    return args


def _is_one(reply: Any) -> bool:
    return bool(reply == 1)


def _added(raw: Sequence[Any]) -> list[tuple[str, bool]]:
    """add.lua's reply: per job, its id and whether this call created it."""
    return [(decode_text(raw[i]), raw[i + 1] == 1) for i in range(0, len(raw), 2)]


def _added_dependent(raw: Sequence[Any]) -> tuple[str, bool, str]:
    """add_dependent.lua's reply: the job's id, whether this call created
    it, and the state it was added in ("" when not created). A refused add
    (a dependency that does not exist, say) raises UnknownDependency."""
    if raw[1] == -1:
        raise UnknownDependency(decode_text(raw[2]))
    return decode_text(raw[0]), raw[1] == 1, decode_text(raw[2])


class Scripts(WorkerScripts):
    """One Redis client's handles on every transition script."""

    NAMES = (
        "add",
        "fetch",
        "reclaim",
        "finish",
        "renew",
        "recover_stalled",
        "hand_back",
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
        "add_dependent",
        "configure",
        "list_waiting",
        "heartbeat",
        "step",
    )

    # -- producer ---------------------------------------------------------
    def add(self, k: QueueKeys, now: int, jobs: Sequence[JobRow]) -> Any:
        """Add jobs (a row's ``job_id`` "" lets the script make one)."""
        args: list[Any] = [*self._head(k.prefix, now), *_job_args(jobs)]
        keys = [k.id_counter, k.seq, k.wait, k.delayed, k.marker, k.events]
        return self._run("add", keys, args, decode=_added)

    # -- admin ------------------------------------------------------------
    # The admin transitions take ``by``: who asked, for the audit log.
    def promote(
        self, k: QueueKeys, now: int, job_id: str = "", limit: int = MAX_PER_CALL, by: str = ""
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
                k.waiting_deps,
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
                k.waiting_deps,
            ],
            [
                *self._head(k.prefix, now_ms() if now is None else now),
                job_id,
                by,
                reason,
                "1" if keep_children else "0",
                k.name,
            ],
            decode=decode_text,
        )

    def retry(
        self,
        k: QueueKeys,
        job_id: str = "",
        limit: int = MAX_PER_CALL,
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
        limit: int = MAX_PER_CALL,
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
        limit: int = MAX_PER_CALL,
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
        self, k: QueueKeys, force: bool, limit: int = MAX_PER_CALL, now: int | None = None
    ) -> Any:
        sets = [
            k.wait,
            k.delayed,
            k.completed,
            k.failed,
            k.waiting_children,
            k.waiting_deps,
            k.cancelled,
        ]
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
            k.deduplicated,
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
        jobs: Sequence[JobRow],
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
        return self._run("fire_schedule", keys, args, int)

    # -- flows ------------------------------------------------------------
    def add_flow(self, root: QueueKeys, now: int, nodes: Sequence[FlowNode]) -> Any:
        """Add a tree of jobs, parents first. Returns the ids in order."""
        args: list[Any] = self._head("", now)
        for node in nodes:
            args += node.script_args()
        return self._run("add_flow", [root.events], args, decode=decode_ids)

    # -- dependencies -----------------------------------------------------
    def add_dependent(
        self,
        k: QueueKeys,
        now: int,
        on_failure: str,
        dependencies: Sequence[Dependency],
        job: JobRow,
    ) -> Any:
        """Add one job that waits for ``dependencies`` (jobs that exist, of
        this queue's hash tag); returns (id, created, state)."""
        args: list[Any] = [*self._head(k.prefix, now), on_failure, len(dependencies)]
        for dependency in dependencies:
            args += dependency
        args += job.script_args()
        keys = [k.id_counter, k.waiting_deps, k.events]
        return self._run("add_dependent", keys, args, decode=_added_dependent)

    def configure(
        self,
        k: QueueKeys,
        settings: dict[str, Any],
    ) -> Any:
        """Set (or, with ``None``, clear) flow-control meta fields and wake the
        workers; returns how many waiting jobs were rescored."""
        args: list[Any] = self._head(k.prefix, "")
        for field, value in settings.items():
            args += [field, "" if value is None else value]
        return self._run("configure", [k.meta, k.marker, k.events], args, int)
