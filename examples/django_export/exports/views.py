"""``POST /exports`` starts an export and answers 202; ``GET /exports/<id>``
says how far it got."""

from __future__ import annotations

from django.db import transaction
from django.http import HttpRequest, JsonResponse
from django.shortcuts import get_object_or_404

from exports.models import Export
from exports.tasks import build_export

try:  # Django >= 6.0
    from django.tasks import task_backends
except ImportError:
    from django_tasks import task_backends

#: The most exports that may wait or run at once.
MAX_PENDING = 3


def start_export(request: HttpRequest) -> JsonResponse:
    if request.method != "POST":
        return JsonResponse({"error": "POST to start an export"}, status=405)
    rows = int(request.POST.get("rows", 50_000))
    with transaction.atomic():
        export = Export.objects.create(rows=rows)
        # With ENQUEUE_ON_COMMIT the job is added when this transaction
        # commits: a worker never looks for an Export row that is not there
        # yet, and a rolled-back request enqueues nothing.
        result = build_export.enqueue(export.pk)
        export.task_id = result.id
        export.save(update_fields=["task_id"])
        if Export.objects.filter(path="").count() > MAX_PENDING:
            transaction.set_rollback(True)
            return JsonResponse({"error": "too many exports pending; try later"}, status=429)
    return JsonResponse(
        {"export": export.pk, "task": result.id},
        status=202,
        headers={"Location": f"/exports/{export.pk}"},
    )


def export_status(request: HttpRequest, pk: int) -> JsonResponse:
    export = get_object_or_404(Export, pk=pk)
    backend = task_backends["default"]
    result = backend.get_result(export.task_id)
    job = backend.get_job(export.task_id)  # progress is sandboxq's, not the framework's
    return JsonResponse(
        {
            "export": export.pk,
            "status": str(result.status),
            "progress": job.progress,
            "path": export.path or None,
            "errors": [error.traceback for error in result.errors],
        }
    )
