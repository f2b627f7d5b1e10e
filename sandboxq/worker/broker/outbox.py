"""The outbox: what the worker owes Redis for the jobs it holds, per queue,
until a round carries it.

Children's finishes, the starts of prefetched jobs, progress and log lines,
durable steps and hand-backs wait here. A round takes them out (the
``take_*`` methods); a command that failed or lost its reply puts them back
in front (``put_back_*``), so nothing is lost and the order holds. The
parent may wait a little to send more of them in one round
(``pending_since``, ``pending_entries``).
"""

from __future__ import annotations

import time
from typing import Any

#: The report kind whose pending value a newer one replaces (the child's
#: protocol.PROGRESS; the broker does not import the pipe's protocol).
PROGRESS = "progress"

#: A report as report.lua takes it: (job id, kind, value).
Report = tuple[str, str, str]
#: A durable step as step.lua takes it: (job id, key, result JSON).
DurableStep = tuple[str, str, str]


class Outbox:
    def __init__(self, queues: list[str]) -> None:
        self.finishes: dict[str, list[list[Any]]] = {q: [] for q in queues}
        #: Prefetched jobs a child took: (job id, started ms), per queue.
        self.starts: dict[str, list[tuple[str, int]]] = {q: [] for q in queues}
        #: Log lines children sent, per queue; and each job's newest
        #: progress, which replaces any not sent yet.
        self.reports: dict[str, list[Report]] = {q: [] for q in queues}
        self.progress: dict[str, dict[str, str]] = {q: {} for q in queues}
        #: Log bytes held for each job (queue, id) until Redis took them:
        #: the parent stops reading a child whose job holds too many.
        self.report_bytes: dict[tuple[str, str], int] = {}
        #: Durable steps children wait on.
        self.steps: dict[str, list[DurableStep]] = {q: [] for q in queues}
        #: Jobs to hand back (hand_back.lua), per queue: those that never ran,
        #: and those that may have run (a forced shutdown interrupted them).
        self.to_hand_back: dict[str, list[str]] = {q: [] for q in queues}
        self.interrupted: dict[str, list[str]] = {q: [] for q in queues}
        #: Since when entries wait to be sent (monotonic), and how many.
        self.pending_since: float | None = None
        self.pending_entries = 0

    # -- what children sent ------------------------------------------------------
    def note_pending(self, entries: int = 1) -> None:
        if self.pending_since is None:
            self.pending_since = time.monotonic()
        self.pending_entries += entries

    def finish(self, queue: str, entry: list[Any]) -> None:
        self.finishes[queue].append(entry)
        self.note_pending()

    def started(self, queue: str, job_id: str, started_ms: int) -> None:
        self.starts[queue].append((job_id, started_ms))
        self.note_pending()

    def report(self, queue: str, job_id: str, kind: str, value: str) -> None:
        """Progress not sent yet is replaced by the newer value: only the
        latest counts."""
        if kind == PROGRESS:
            self.progress[queue][job_id] = value
        else:
            self.reports[queue].append((job_id, kind, value))
            held = (queue, job_id)
            self.report_bytes[held] = self.report_bytes.get(held, 0) + len(value)
        self.note_pending()

    def held_report_bytes(self, queue: str, job_id: str) -> int:
        """Log bytes of this job the broker holds (not yet in Redis)."""
        return self.report_bytes.get((queue, job_id), 0)

    def step(self, queue: str, job_id: str, key: str, result: str) -> None:
        self.steps[queue].append((job_id, key, result))
        self.note_pending()

    def hand_back(self, queue: str, job_id: str, *, ran: bool) -> None:
        """A job handed back before its start was sent never starts."""
        (self.interrupted if ran else self.to_hand_back)[queue].append(job_id)
        self.note_pending()
        if any(started == job_id for started, _ms in self.starts[queue]):
            self.starts[queue] = [s for s in self.starts[queue] if s[0] != job_id]

    def waiting(self, queue: str) -> bool:
        """Anything of the queue waits to be sent."""
        return bool(
            self.finishes[queue]
            or self.starts[queue]
            or self.reports[queue]
            or self.progress[queue]
            or self.steps[queue]
            or self.to_hand_back[queue]
            or self.interrupted[queue]
        )

    # -- a round takes them --------------------------------------------------------
    def take_steps(self, queue: str) -> list[DurableStep]:
        steps, self.steps[queue] = self.steps[queue], []
        return steps

    def take_reports(self, queue: str) -> list[Report]:
        """The queue's pending reports, for one report.lua call: each job's
        latest progress, then the log lines in order."""
        progress, reports = self.progress[queue], self.reports[queue]
        if not progress and not reports:
            return reports
        self.progress[queue], self.reports[queue] = {}, []
        return [(job_id, PROGRESS, value) for job_id, value in progress.items()] + reports

    def take_starts(self, queue: str) -> list[tuple[str, int]]:
        starts, self.starts[queue] = self.starts[queue], []
        return starts

    def take_finishes(self, queue: str) -> list[list[Any]]:
        finishes, self.finishes[queue] = self.finishes[queue], []
        return finishes

    def take_hand_backs(self, queue: str) -> tuple[list[str], list[str]]:
        """The jobs that never ran, and those that may have."""
        taken = self.to_hand_back[queue], self.interrupted[queue]
        self.to_hand_back[queue], self.interrupted[queue] = [], []
        return taken

    def all_taken(self) -> None:
        """A round took everything (but what queues at fault hold)."""
        self.pending_since, self.pending_entries = None, 0

    # -- what came of them -------------------------------------------------------------
    def reports_taken(self, queue: str, sent: list[Report]) -> None:
        """Redis took these log lines: the parent no longer holds them."""
        for job_id, kind, value in sent:
            if kind != PROGRESS:
                held = (queue, job_id)
                left = self.report_bytes.get(held, 0) - len(value)
                if left > 0:
                    self.report_bytes[held] = left
                else:
                    self.report_bytes.pop(held, None)

    def put_back_finishes(
        self, queue: str, finishes: list[list[Any]], starts: list[tuple[str, int]]
    ) -> None:
        self.finishes[queue][:0] = finishes
        self.starts[queue][:0] = starts
        self.note_pending(len(finishes) + len(starts))

    def put_back_reports(self, queue: str, sent: list[Report]) -> None:
        """A progress sent since is newer: it stays."""
        logs = [entry for entry in sent if entry[1] != PROGRESS]
        for job_id, kind, value in sent:
            if kind == PROGRESS:
                self.progress[queue].setdefault(job_id, value)
        self.reports[queue][:0] = logs
        self.note_pending(len(sent))

    def put_back_steps(self, queue: str, sent: list[DurableStep]) -> None:
        """Sent again: step.lua answers "known" if it was recorded."""
        self.steps[queue][:0] = sent
        self.note_pending(len(sent))

    def put_back_hand_backs(self, queue: str, unstarted: list[str], interrupted: list[str]) -> None:
        self.to_hand_back[queue][:0] = unstarted
        self.interrupted[queue][:0] = interrupted
        self.note_pending(len(unstarted) + len(interrupted))
