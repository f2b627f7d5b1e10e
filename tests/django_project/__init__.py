"""A tiny Django project for tests/test_django.py: settings whose TASKS use
``SandboxqBackend``, a model, and tasks a real worker runs."""
