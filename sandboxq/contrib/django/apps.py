"""``"sandboxq.contrib.django"`` in ``INSTALLED_APPS``: the app gives the
project the ``manage.py sandboxq_worker`` command (it has no models)."""

from __future__ import annotations

from django.apps import AppConfig  # type: ignore[import-untyped]


class SandboxqConfig(AppConfig):  # type: ignore[misc]
    name = "sandboxq.contrib.django"
    #: Not "django", the package's last part: that reads as Django's own.
    label = "sandboxq"
    verbose_name = "sandboxq"
