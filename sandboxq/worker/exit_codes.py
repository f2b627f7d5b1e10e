"""How a worker ends: the exit codes of ``Worker.run()`` and of ``sandboxq
worker``, and the error that stops a worker before it could start.

Apart so that a child (which exits EXIT_INTERNAL_ERROR on a bug) and the
command line name them without importing the parent."""

EXIT_OK = 0  # drained cleanly
EXIT_FORCED = 1  # stopped before the jobs in flight finished; they were handed back
EXIT_BOOT_ERROR = 3  # could not start: bad handlers or modules, children dying at birth
EXIT_STOP_HOOK_FAILED = 4  # drained cleanly, then an on_worker_stop hook failed (logged)
EXIT_INTERNAL_ERROR = 70  # an unexpected error stopped the worker (EX_SOFTWARE): a bug to report


class BootError(RuntimeError):
    """The worker cannot start; the CLI exits with EXIT_BOOT_ERROR."""
