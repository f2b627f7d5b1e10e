"""The export task: build a CSV of ``rows`` rows, reporting progress.

It imports nothing of sandboxq: the task takes the framework's context
(``takes_context=True``), which sandboxq's backend gives an
``update_progress`` of the job the task runs as.
"""

from __future__ import annotations

import csv
from typing import Any

from django.conf import settings

from exports.models import Export

try:  # Django >= 6.0
    from django.tasks import TaskContext, task
except ImportError:  # Django 4.2-5.2 with the django-tasks backport
    from django_tasks import TaskContext, task

#: Progress is reported every this many rows.
PROGRESS_EVERY = 5_000


@task(queue_name="exports", takes_context=True)
def build_export(context: TaskContext, export_id: int) -> dict[str, Any]:
    export = Export.objects.get(pk=export_id)
    path = settings.DATA_DIR / f"export-{export.pk}.csv"
    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["order", "customer", "amount", "currency"])
        for n in range(export.rows):
            writer.writerow(
                [n + 1, f"customer-{n % 977}", f"{(n * 7919) % 100_000 / 100:.2f}", "EUR"]
            )
            if n % PROGRESS_EVERY == 0:
                context.update_progress(round(100 * n / export.rows))
    context.update_progress(100)
    Export.objects.filter(pk=export.pk).update(path=str(path))
    return {"path": str(path), "rows": export.rows}
