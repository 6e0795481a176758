"""
Fault round 8: signals during the graceful shutdown. A SIGHUP there (a
logrotate, a reload, a closed terminal) killed the server outright, its
jobs left running and their records RUNNING; a second SIGTERM or a SIGINT
logged a critical traceback (Twisted's stop of a reactor already
stopping). Each is now logged and ignored, and the shutdown goes on.
"""

from __future__ import annotations

import os
import signal

from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from .twistd import Twistd


def groupAlive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


class SignalsDuringShutdownTests(TestCase):
    timeout = 90

    async def test_hupTermAndIntDuringTheShutdown(self) -> None:
        """A job that ignores TERM keeps the shutdown in its grace; a HUP,
        a second TERM and an INT then change nothing: the server stops
        the job and exits as a shutdown does, without a traceback (its
        cleanup fails the test for one)."""
        server = await Twistd(self).start("--stop-grace=3")
        job = await server.createJob("sh", "-c", "trap '' TERM; echo up; sleep 300")
        await deferLater(reactor, 0.5, lambda: None)  # its trap set
        ended = server.protocol.whenEnded()
        os.kill(server.pid, signal.SIGTERM)
        for signum in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
            await deferLater(reactor, 0.3, lambda: None)
            self.assertFalse(server.protocol.ended, signal.Signals(signum).name)
            os.kill(server.pid, signum)
        await ended
        self.assertNotEqual(server.protocol.exitSignal, signal.SIGHUP)
        log = server.protocol.log()
        for name in ("SIGHUP", "SIGTERM", "SIGINT"):
            self.assertIn(f"{name} during the shutdown: ignored", log)
        # (Its last zombie goes with the spawner, a moment after the server.)
        for _ in range(100):
            if not groupAlive(job["pid"]):
                break
            await deferLater(reactor, 0.05, lambda: None)
        self.assertFalse(groupAlive(job["pid"]), "the job outlived its server")
