"""A web dashboard for sandboxq: a plain ASGI application (no framework).

``sandboxq.dashboard.app(url)`` returns the ASGI callable; mount it in
FastAPI/Starlette (``root_path`` is respected) or run ``sandboxq dashboard``.
"""

from sandboxq.dashboard.app import app

__all__ = ["app"]
