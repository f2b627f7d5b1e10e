"""The worker's setup on a server: checked (redis_checks.ServerCheck, the
same check check_server runs), its scripts loaded, the worker's own
flow-control options applied. Done in the first round, and again after
Redis lost its scripts or any part of it failed (``redo``)."""

from __future__ import annotations

from sandboxq.redis_checks import ServerCheck


class ServerSetup:
    def __init__(self) -> None:
        self.done = False
        #: The check of the latest setup, fed by its replies.
        self.check = ServerCheck()

    def start(self) -> ServerCheck:
        """A setup goes in the round being built: a fresh check; done unless
        one of its commands fails. (The version last read stays until INFO
        answers again.)"""
        version, self.check = self.check.version, ServerCheck()
        self.check.version = version
        self.done = True
        return self.check

    def redo(self) -> None:
        self.done = False
