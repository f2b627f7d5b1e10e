"""The queue's administration (pause, retry, promote, remove, cancel,
clean, drain, obliterate) and flow control (rate limits, concurrency,
priority aging): a part of :class:`sandboxq.core.QueueCore`, sans-I/O like
the rest (see :mod:`sandboxq.ops`). Manual actions are audited with who
did them."""

from __future__ import annotations

import getpass
import os
from typing import Any

from sandboxq import stats
from sandboxq.core_looking import is_paused_op
from sandboxq.errors import JobIsActive
from sandboxq.job import FINISHED_STATES
from sandboxq.keys import QueueKeys
from sandboxq.ops import PLAN, Op, cmd
from sandboxq.options import (
    MAX_CONCURRENCY,
    aging_ms,
    ms,
    positive_int,
    rate_limit_fields,
)
from sandboxq.scripts import MAX_PER_CALL, now_ms


class AdminOps:
    """Acting on a queue and its jobs, and setting its flow control."""

    name: str
    keys: QueueKeys

    def _pause(self, *, by: str | None = None) -> Op[bool]:
        """Stop handing out jobs. Returns False if it was paused already."""
        return bool((yield PLAN.pause(self.keys, True, by=who(by))))

    def _resume(self, *, by: str | None = None) -> Op[bool]:
        """Hand out jobs again. Returns False if it was not paused."""
        return bool((yield PLAN.pause(self.keys, False, by=who(by))))

    def _is_paused(self) -> Op[bool]:
        """Whether the queue is paused."""
        return (yield from is_paused_op(self.keys))

    def _retry(self, job_id: str, *, by: str | None = None, reset_steps: bool = False) -> Op[bool]:
        """Send a failed job back to waiting with a fresh attempt budget.
        Returns False if the job is not in the failed set. ``reset_steps``
        forgets its durable steps (``job.step``), so it redoes them all."""
        moved = yield PLAN.retry(self.keys, str(job_id), by=who(by), reset_steps=reset_steps)
        return bool(moved)

    def _retry_failed(self, *, by: str | None = None) -> Op[int]:
        """Retry every failed job; returns how many."""
        total, by = 0, who(by)
        while moved := (yield PLAN.retry(self.keys, "", MAX_PER_CALL, by=by)):
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
                yield PLAN.clean(
                    self.keys, state, now_ms(), max_count, max_age, MAX_PER_CALL, by=by
                )
            )
        ) > 0:
            total += removed
            if removed < MAX_PER_CALL:
                break
        return total

    def _drain(self, include_delayed: bool = True, *, by: str | None = None) -> Op[int]:
        """Remove every job that has not started. Returns how many; the
        queue's audit log records who drained (``by``, default the OS user)."""
        total, by = 0, who(by)
        while (removed := (yield PLAN.drain(self.keys, include_delayed, MAX_PER_CALL, by=by))) > 0:
            total += removed
        return total

    def _obliterate(self, *, force: bool = False) -> Op[None]:
        """Delete the queue: every job and key. Refuses while jobs are active
        unless ``force`` (their workers will find their leases gone)."""
        while (removed := (yield PLAN.obliterate(self.keys, force, MAX_PER_CALL))) != 0:
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


def who(by: str | None) -> str:
    """Who did a manual action: as given, else the OS user."""
    if by:
        return by
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid {os.getuid()}"
