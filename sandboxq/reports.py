"""What the command line (:mod:`sandboxq.admin`) and the dashboard
(:mod:`sandboxq.dashboard`) report of queues and jobs: which queues a Redis
holds, and a job as a plain dict, found once here and shown two ways.
"""

from __future__ import annotations

import re
from typing import Any

import redis

from sandboxq.keys import QueueKeys
from sandboxq.queue import Job


def queue_name_of(prefix: str) -> str | None:
    """The queue whose keys start with ``prefix`` (``sq:{images}:`` → images,
    ``sq:{media}/thumbs:`` → media:thumbs), or None if no queue's do."""
    match = re.fullmatch(r"sq:\{([^{}]+)\}(?:/([^{}]+))?:", prefix)
    if match is None:
        return None
    name = match[1] if match[2] is None else f"{match[1]}:{match[2]}"
    try:
        keys = QueueKeys.for_queue(name)
    except ValueError:  # e.g. keys left by a version that allowed more ':'
        return None
    return name if keys.prefix == prefix else None


def discover_queues(client: redis.Redis) -> list[str]:
    """The name of every queue on this Redis, sorted.

    Every script that changes a queue (add, pause, schedule, configure...)
    appends to its events stream, and trimming never deletes the stream, so
    each queue in use has one. SCAN rather than KEYS: it walks the keyspace in
    small steps without blocking Redis. A full walk is fine for an operator's
    command, never for a worker's hot path. ``TYPE stream`` skips the per-job
    keys (lists, hashes) of a job whose id happens to end in ``:events``.
    """
    names = set()
    for key in client.scan_iter(match="sq:{*:events", count=1000, _type="stream"):
        name = queue_name_of(key.decode()[: -len("events")])
        if name is not None:
            names.add(name)
    return sorted(names)


def job_summary(job: Job) -> dict[str, Any]:
    return {
        "id": job.id,
        "name": job.name,
        "state": job.state,
        "attempts_made": job.attempts_made,
        "attempts": job.attempts,
        # A record that cannot be read says so where its error would be.
        "error": job.error or job.corrupt,
        "corrupt": job.corrupt,
        "created_at": job.created_at,
        "finished_at": job.finished_at,
        "cancelled_by": job.cancelled_by,
        "cancel_reason": job.cancel_reason,
    }


def _retention(fields: dict[str, Any], prefix: str) -> dict[str, Any] | None:
    count, age = fields.get(f"{prefix}_count"), fields.get(f"{prefix}_age")
    return None if count is None and age is None else {"count": count, "age": age}


def job_options(fields: dict[str, Any]) -> dict[str, Any]:
    """The options a job was added with, as :meth:`Queue.add` names them."""
    return {
        "priority": fields.get("priority", 0),
        "attempts": fields.get("attempts", 1),
        "timeout": fields.get("timeout"),
        "backoff": fields.get("backoff"),
        "group": fields.get("group"),
        "manual_retry_only": fields.get("manual_retry_only") == "1",
        "keep_completed": _retention(fields, "kc"),
        "keep_failed": _retention(fields, "kf"),
    }


def job_parent(fields: dict[str, Any]) -> dict[str, Any] | None:
    if "parent_id" not in fields:
        return None
    return {"queue": queue_name_of(fields.get("parent_prefix", "")), "id": fields["parent_id"]}


def job_report(job: Job) -> dict[str, Any]:
    """Everything known about a job."""
    return {
        "queue": job.queue.name,
        "id": job.id,
        "name": job.name,
        "state": job.state,
        "corrupt": job.corrupt,
        "data": job.data,
        "options": job_options(job.fields),
        "progress": job.progress,
        "result": job.result,
        "created_at": job.created_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
        "attempts_made": job.attempts_made,
        "attempts": job.attempts,
        "stalls": job.stalls,
        "retries": job.retries,
        "error": job.error,
        "traceback": job.traceback,
        "cancelled_by": job.cancelled_by,
        "cancel_reason": job.cancel_reason,
        "dedupe_id": job.dedupe_id,
        "logs": job.logs(),
        "steps": job.steps,
        "audit": job.audit(),
        "parent": job_parent(job.fields),
        "children_pending": job.fields.get("pending"),
        "children_results": job.children_results(),
        "children_failures": job.children_failures(),
    }
