"""
Fault round 8: a users-file reload whose read blocks (a hung network file
system) ran in the reactor's thread pool, which the shutdown joins: the
server's exit waited as long as the read (59 s, against the documented
bound of grace + 40 s). It now runs in a daemon thread of its own, which
no shutdown waits for.
"""

from __future__ import annotations

import os
import threading

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.trial.unittest import TestCase

from jobworker.auth.users import DEVELOPMENT_USERS, UserDatabase
from jobworker.server import services
from jobworker.server.services import UsersReloadService
from jobworker.server.threads import daemonRunner

from .support import LiveServer


class HungReloadTests(TestCase):
    timeout = 30

    async def test_theServersReloadRunsInADaemonThread(self) -> None:
        """The real server's reload: while its read blocks, the reactor's
        pool is not held, and the thread it blocks in is a daemon."""
        users = os.path.abspath(self.mktemp())
        with open(users, "w") as f:
            f.write(DEVELOPMENT_USERS)
        os.chmod(users, 0o600)
        server = LiveServer(self, f"--users={users}")
        [service] = [s for s in server.service if isinstance(s, UsersReloadService)]
        release = threading.Event()
        entered = threading.Event()
        fromFile = UserDatabase.fromFile

        def blocked(path: str) -> UserDatabase:
            entered.set()
            release.wait(20)
            return fromFile(path)

        self.patch(services.UserDatabase, "fromFile", staticmethod(blocked))
        self.addCleanup(release.set)
        reloaded = service.reload()
        await deferToWait(entered)
        [reader] = [
            t for t in threading.enumerate() if t.name == "jobworker-users-reload"
        ]
        pool = reactor.getThreadPool()  # type: ignore[attr-defined]
        self.assertNotIn(reader, pool.threads, "a reactor pool thread is held")
        self.assertTrue(reader.daemon)
        release.set()
        await reloaded

    async def test_daemonRunner(self) -> None:
        """Its result and its failure come back on the reactor's thread."""
        run = daemonRunner(reactor, "jobworker-test")
        self.assertEqual(await run(lambda a, b: a + b, 2, 3), 5)
        with self.assertRaises(ZeroDivisionError):
            await run(lambda: 1 / 0)


def deferToWait(event: threading.Event) -> Deferred[None]:
    """Fires once C{event} is set (polled on the reactor)."""
    done: Deferred[None] = Deferred()

    def look() -> None:
        if event.is_set():
            done.callback(None)
        else:
            reactor.callLater(0.01, look)  # type: ignore[attr-defined]

    look()
    return done
