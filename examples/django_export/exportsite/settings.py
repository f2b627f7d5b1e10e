"""Settings of the export example: SQLite and the CSV files under
``$EXPORT_DIR`` (default ``./export-data``), the tasks on Redis database 2
at ``$EXPORT_REDIS_URL`` (default ``redis://localhost:6379/2``): the web
process and ``manage.py sandboxq_worker`` both read it here."""

import importlib.util
import os
from pathlib import Path

DATA_DIR = Path(os.environ.get("EXPORT_DIR", "export-data")).resolve()
DATA_DIR.mkdir(parents=True, exist_ok=True)

SECRET_KEY = "example only: set a real one"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
USE_TZ = True
TIME_ZONE = "UTC"
ROOT_URLCONF = "exportsite.urls"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = [
    # Django >= 6.0 has the tasks framework built in; before, it is the
    # django-tasks backport, an app.
    *([] if importlib.util.find_spec("django.tasks") else ["django_tasks"]),
    "sandboxq.contrib.django",  # manage.py sandboxq_worker
    "exports",
]
# A JSON API without sessions or forms: no middleware needed.
MIDDLEWARE: list[str] = []

DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": DATA_DIR / "db.sqlite3"}}

TASKS = {
    "default": {
        "BACKEND": "sandboxq.contrib.django.SandboxqBackend",
        "QUEUES": ["exports"],
        # A task enqueued inside a transaction is added when it commits.
        "ENQUEUE_ON_COMMIT": True,
        "OPTIONS": {
            "url": os.environ.get("EXPORT_REDIS_URL", "redis://localhost:6379/2"),
            "timeout": 600,
            "attempts": 2,
        },
    }
}
