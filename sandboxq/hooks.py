"""Lifecycle hooks and job middleware, registered by the handler module.

A worker imports the handler module in its parent, before it forks any
child, so whatever the module opens at import time is shared by every child:
a database connection opened there is one socket used by several processes
at once. Open such things in ``@on_child_start`` instead: it runs in each
child, after the fork, before its first job.

- ``@on_worker_start`` / ``@on_worker_stop``: in the worker parent, once its
  first children are up / after the last one stopped. A failing start hook
  stops the worker as a boot error (exit code 3).
- ``@on_child_start``: in each child, before its first job. If it raises,
  the child dies at birth: the worker logs the traceback and replaces the
  child, and gives up (exit code 3) after 5 such children in a row.
- ``@on_child_exit``: in a child leaving cleanly (retired after
  ``--max-jobs-per-child``, or the worker stopping), not in one that
  crashed or was killed.
- ``@job_middleware``: ``func(job, call_next)`` wraps every handler call in
  the child (and in ``sandboxq.testing``); it returns what the job returns,
  usually ``call_next(job)``. The first registered is the outermost. When the
  handler or any middleware is ``async def``, the chain runs on the child's
  event loop: ``call_next(job)`` then returns an awaitable, which an async
  middleware awaits and a sync one returns as it is.

Hooks take no arguments and run in registration order.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

WORKER_START, WORKER_STOP = "on_worker_start", "on_worker_stop"
CHILD_START, CHILD_EXIT = "on_child_start", "on_child_exit"

#: Hooks by moment, in registration order.
HOOKS: dict[str, list[Callable[[], Any]]] = {
    WORKER_START: [],
    WORKER_STOP: [],
    CHILD_START: [],
    CHILD_EXIT: [],
}
#: Job middleware, outermost first.
MIDDLEWARE: list[Callable[[Any, Callable[[Any], Any]], Any]] = []


def _add(registry: list[Any], decorator: str, func: F) -> F:
    if not callable(func):
        raise TypeError(f"{decorator} takes a function, got {func!r}")
    if func not in registry:  # a module imported twice registers once
        registry.append(func)
    return func


def on_worker_start(func: F) -> F:
    """Register ``func()`` to run in the worker parent once its first
    children are up. If it raises, the worker stops as a boot error (exit
    code 3)."""
    return _add(HOOKS[WORKER_START], f"@{WORKER_START}", func)


def on_worker_stop(func: F) -> F:
    """Register ``func()`` to run in the worker parent after its last child
    stopped."""
    return _add(HOOKS[WORKER_STOP], f"@{WORKER_STOP}", func)


def on_child_start(func: F) -> F:
    """Register ``func()`` to run in each child, after the fork, before its
    first job: open connections and pools here, not at import time. If it
    raises, the child dies at birth and is replaced; after 5 such children in
    a row the worker stops (exit code 3)."""
    return _add(HOOKS[CHILD_START], f"@{CHILD_START}", func)


def on_child_exit(func: F) -> F:
    """Register ``func()`` to run in a child leaving cleanly (retired after
    ``--max-jobs-per-child``, or the worker stopping); not in one that crashed
    or was killed."""
    return _add(HOOKS[CHILD_EXIT], f"@{CHILD_EXIT}", func)


def job_middleware(func: F) -> F:
    """Register ``func(job, call_next)`` to wrap every handler call, in the
    child (and in :mod:`sandboxq.testing`). It returns what the job returns,
    usually ``call_next(job)``; the first registered is the outermost. When
    the handler or any middleware is ``async def``, ``call_next(job)``
    returns an awaitable, which an async middleware awaits."""
    return _add(MIDDLEWARE, "@job_middleware", func)


def run(moment: str) -> None:
    """Call the hooks of ``moment``, in order; the first that raises stops
    the rest and the exception propagates (the caller decides what it means)."""
    for hook in HOOKS[moment]:
        hook()


def with_middleware(func: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``func`` wrapped in the registered middleware. The chain is async (it
    returns a coroutine) when ``func`` or any middleware is ``async def``."""
    if not MIDDLEWARE:  # the common case: nothing to build for each job
        return func
    chain = list(MIDDLEWARE)
    if inspect.iscoroutinefunction(func) or any(map(inspect.iscoroutinefunction, chain)):

        async def call_async(job: Any, depth: int = 0) -> Any:
            if depth == len(chain):
                result = func(job)
            else:
                result = chain[depth](job, lambda j: call_async(j, depth + 1))
            return await result if inspect.isawaitable(result) else result

        return call_async

    def call(job: Any, depth: int = 0) -> Any:
        if depth == len(chain):
            return func(job)
        return chain[depth](job, lambda j: call(j, depth + 1))

    return call
