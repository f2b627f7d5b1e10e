"""Settings of the test project, shared by the test process and its workers.

The Redis URL and the test's queue come from the environment a worker gets
(``SANDBOXQ_REDIS_URL``, ``SANDBOXQ_TEST_QUEUE``; tests/worker_harness.py
sets both), or ``SANDBOXQ_TEST_DJANGO_URL`` names the Redis in ``OPTIONS``
for a worker started without ``SANDBOXQ_REDIS_URL``; with
``SANDBOXQ_TEST_DJANGO_OTHER_URL`` a second backend, ``other``, serves the
queue ``other`` there. The test process overrides ``TASKS`` per test. The
SQLite file is ``$SANDBOXQ_TEST_DJANGO_DB``, in the test session's temp dir.
"""

import importlib.util
import os

SECRET_KEY = "sandboxq tests only"
USE_TZ = True
TIME_ZONE = "UTC"

INSTALLED_APPS = [
    # The backport is an app; Django >= 6.0 has the framework built in.
    *([] if importlib.util.find_spec("django.tasks") else ["django_tasks"]),
    "sandboxq.contrib.django",  # manage.py sandboxq_worker
    "tests.django_project",
]

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("SANDBOXQ_TEST_DJANGO_DB", ":memory:"),
    }
}

DEFAULT_AUTO_FIELD = "django.db.models.AutoField"

TASKS = {
    "default": {
        "BACKEND": "sandboxq.contrib.django.SandboxqBackend",
        "QUEUES": ["default", os.environ.get("SANDBOXQ_TEST_QUEUE", "django-tests")],
        "OPTIONS": {
            "url": os.environ.get("SANDBOXQ_TEST_DJANGO_URL", os.environ.get("SANDBOXQ_REDIS_URL"))
        },
    }
}
if os.environ.get("SANDBOXQ_TEST_DJANGO_OTHER_URL"):
    TASKS["other"] = {
        "BACKEND": "sandboxq.contrib.django.SandboxqBackend",
        "QUEUES": ["other"],
        "OPTIONS": {"url": os.environ["SANDBOXQ_TEST_DJANGO_OTHER_URL"]},
    }
