"""The queue's schedules (repeatable jobs): create, list and delete them.
A part of :class:`sandboxq.core.QueueCore`, sans-I/O like the rest (see
:mod:`sandboxq.ops`); the spec and its occurrences are
:mod:`sandboxq.schedule`'s."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sandboxq import payload
from sandboxq.keys import QueueKeys
from sandboxq.ops import PLAN, Op, cmd
from sandboxq.schedule import Schedule
from sandboxq.scripts import now_ms


class ScheduleOps:
    """Schedules of one queue, stored in its Redis keys."""

    keys: QueueKeys
    defaults: Mapping[str, Any]
    max_payload_bytes: int

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
