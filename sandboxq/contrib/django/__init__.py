"""Django's tasks framework on sandboxq: ``django.tasks`` (Django >= 6.0) or
the ``django-tasks`` backport (Django 4.2-5.2), one implementation.

Producers name the backend in their settings::

    TASKS = {
        "default": {
            "BACKEND": "sandboxq.contrib.django.SandboxqBackend",
            "QUEUES": ["default", "emails"],
            "OPTIONS": {"url": "redis://localhost:6379/0", "attempts": 3},
        }
    }

and workers import this module::

    DJANGO_SETTINGS_MODULE=mysite.settings sandboxq worker sandboxq.contrib.django -q default

Importing it sets Django up when nothing did yet (the worker's parent,
before it forks) and registers the handler of task jobs; see
:mod:`sandboxq.contrib.django.worker` and ``docs/django.md``.
"""

from sandboxq.contrib.django.backend import JOB_NAME, SandboxqBackend
from sandboxq.contrib.django.worker import current_job, prepare, run_task

__all__ = ["JOB_NAME", "SandboxqBackend", "current_job", "run_task"]

prepare()
