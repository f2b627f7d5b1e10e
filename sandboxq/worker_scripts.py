"""The transitions a worker parent runs on the jobs it leases.

:class:`WorkerScripts` wraps each in a typed method, as
:class:`sandboxq.scripts.Scripts` (which adds the producer's and the admin
transitions) does the rest. A method that needs the time takes it in
milliseconds, so tests control the clock. Built without a client
(``Scripts(None)``), each returns the :class:`ScriptCall` it would run,
which is how the worker's broker pipelines them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sandboxq.keys import QueueKeys
from sandboxq.script_call import MAX_PER_CALL, ScriptRunner, decode_ids, now_ms


def _optional(value: int | None) -> int | str:
    """An optional number as a script argument ("" for none)."""
    return "" if value is None else value


def _id_lists(reply: Sequence[Sequence[bytes]]) -> tuple[list[str], ...]:
    return tuple(decode_ids(ids) for ids in reply)


class WorkerScripts(ScriptRunner):
    """The worker's transitions: leasing, settling, handing back, reporting."""

    def fetch(
        self,
        k: QueueKeys,
        now: int,
        count: int,
        token: str,
        lease_ms: int,
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
        )

    def reclaim(
        self,
        k: QueueKeys,
        now: int,
        token: str,
        request: int,
        known: Sequence[str],
    ) -> Any:
        """After a lost fetch reply: hand back the jobs ``token`` holds but
        does not know (``known`` are those it does), and make its fetches up
        to ``request`` lease nothing if they arrive later. Returns the ids
        handed back."""
        return self._run(
            "reclaim",
            [k.active, k.events, k.cancelled, k.cancel_requests],
            [*self._head(k.prefix, now), token, request, *known],
            decode_ids,
        )

    def finish(
        self,
        k: QueueKeys,
        now: int,
        token: str,
        outcomes: Sequence[Sequence[Any]],
        starts: Sequence[tuple[str, int]] = (),
    ) -> Any:
        """Settle jobs; each outcome is ``(id, outcome, value, traceback,
        delay_ms, lease)`` (``execution.finish_entry``). First, ``starts``
        marks prefetched jobs started: ``(id, started_ms)`` each. Returns
        one status per settled job (bytes)."""
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
        )

    def renew(
        self,
        k: QueueKeys,
        now: int,
        token: str,
        lease_ms: int,
        job_ids: Sequence[str],
    ) -> Any:
        """Extend leases; returns the ids this token no longer holds."""
        args = [k.prefix, now, "", token, lease_ms, *job_ids]
        return self._run("renew", [k.active], args, decode_ids)

    def recover_stalled(
        self,
        k: QueueKeys,
        now: int,
        max_stalls: int,
        limit: int = MAX_PER_CALL,
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
            _id_lists,
        )

    def hand_back(
        self,
        k: QueueKeys,
        token: str,
        unstarted: Sequence[str],
        interrupted: Sequence[str],
        now: int | None = None,
    ) -> Any:
        """Hand leased jobs back: ``unstarted`` never ran (they go back with
        nothing spent, whatever their options), ``interrupted`` may have run
        (a manual_retry_only one fails instead). Returns the ids handed back
        to waiting; see hand_back.lua."""
        return self._run(
            "hand_back",
            [k.active, k.wait, k.events, k.marker, k.cancelled, k.cancel_requests],
            [
                *self._head(k.prefix, now_ms() if now is None else now),
                token,
                len(unstarted),
                *unstarted,
                *interrupted,
            ],
            decode_ids,
        )

    def report(
        self,
        k: QueueKeys,
        token: str,
        reports: Sequence[tuple[str, str, Any]],
        keep_logs: int = 1000,
    ) -> Any:
        """Record ``(job_id, "progress" | "log", value)`` reports of running jobs;
        returns how many were recorded."""
        args: list[Any] = [*self._head(k.prefix, ""), token, keep_logs]
        for report in reports:
            args.extend(report)
        return self._run("report", [k.events], args)

    def step(
        self,
        k: QueueKeys,
        token: str,
        steps: Sequence[tuple[str, str, str]],
        max_steps: int,
    ) -> Any:
        """Record ``(job_id, key, result_json)`` durable steps of jobs this
        token holds; one status per step (see step.lua)."""
        args: list[Any] = [*self._head(k.prefix, ""), token, max_steps]
        for step in steps:
            args.extend(step)
        return self._run("step", [k.events], args, decode_ids)

    # -- the worker registry (one global key, not a queue's) ----------------
    def heartbeat(
        self,
        registry_key: str,
        token: str,
        description: bytes,
        now: int,
        stale_ms: int,
        sample: int,
    ) -> Any:
        """Record a worker's heartbeat and delete up to ``sample`` entries of
        workers unseen for ``stale_ms``; returns how many were deleted."""
        return self._run(
            "heartbeat", [registry_key], ["", now, "", token, description, stale_ms, sample]
        )
