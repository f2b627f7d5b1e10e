"""Django's tasks framework, imported in this one place.

Django 6.0 ships it as ``django.tasks``; on Django 4.2-5.2 the
``django-tasks`` backport (``django_tasks``, 0.12 or later) has the same
API. Everything else in :mod:`sandboxq.contrib.django` imports the
framework from here, so one implementation serves both. Django ships no
type information: the type checker reads the backport's annotations.
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING

try:
    #: Where the framework comes from: ``django.tasks`` or ``django_tasks``.
    FRAMEWORK = "django.tasks" if importlib.util.find_spec("django.tasks") else "django_tasks"
except ModuleNotFoundError:  # no Django at all
    raise ImportError(
        "sandboxq.contrib.django needs Django: pip install 'sandboxq[django]'"
    ) from None

if TYPE_CHECKING:
    from django_tasks import TaskContext, TaskResult, TaskResultStatus, task, task_backends
    from django_tasks.backends.base import BaseTaskBackend
    from django_tasks.base import DEFAULT_TASK_QUEUE_NAME, Task, TaskError
    from django_tasks.exceptions import TaskResultDoesNotExist
    from django_tasks.signals import task_enqueued, task_finished, task_started
    from django_tasks.utils import normalize_json
elif FRAMEWORK == "django.tasks":
    from django.tasks import TaskContext, TaskResult, TaskResultStatus, task, task_backends
    from django.tasks.backends.base import BaseTaskBackend
    from django.tasks.base import DEFAULT_TASK_QUEUE_NAME, Task, TaskError
    from django.tasks.exceptions import TaskResultDoesNotExist
    from django.tasks.signals import task_enqueued, task_finished, task_started
    from django.utils.json import normalize_json
else:
    try:
        from django_tasks import TaskContext, TaskResult, TaskResultStatus, task, task_backends
    except ImportError:
        raise ImportError(
            "sandboxq.contrib.django needs Django >= 6.0 (django.tasks) or, on Django "
            "4.2-5.2, the django-tasks package: pip install 'sandboxq[django]'"
        ) from None
    from django_tasks.backends.base import BaseTaskBackend
    from django_tasks.base import DEFAULT_TASK_QUEUE_NAME, Task, TaskError
    from django_tasks.exceptions import TaskResultDoesNotExist
    from django_tasks.signals import task_enqueued, task_finished, task_started
    from django_tasks.utils import normalize_json

    if not hasattr(TaskResultStatus, "SUCCESSFUL"):  # SUCCEEDED before 0.12
        raise ImportError(
            "sandboxq.contrib.django needs django-tasks 0.12 or later (the API of "
            "Django 6.0's django.tasks): pip install -U django-tasks"
        )

__all__ = [
    "DEFAULT_TASK_QUEUE_NAME",
    "FRAMEWORK",
    "BaseTaskBackend",
    "Task",
    "TaskContext",
    "TaskError",
    "TaskResult",
    "TaskResultDoesNotExist",
    "TaskResultStatus",
    "normalize_json",
    "task",
    "task_backends",
    "task_enqueued",
    "task_finished",
    "task_started",
]
