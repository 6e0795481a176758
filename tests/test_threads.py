"""
No thread to be had (the server's cgroup at its C{pids.max}): a password
check was a 500 with a traceback, a users file reload an unhandled error,
and the output's page release left a descriptor open (a fault round). Each
is now L{NoThread}: a 503 with C{Retry-After}, a reload on the reactor's
thread, a descriptor closed. The pool is Twisted's real one; only the
thread it would start fails, as C{threading} fails when the kernel refuses.
"""

from __future__ import annotations

import json
import os
import threading
from typing import Any

from treq.testing import StubTreq
from twisted.internet.defer import ensureDeferred
from twisted.internet.task import Clock
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import SynchronousTestCase

from jobworker.auth.authenticator import Authenticator, makePortal
from jobworker.auth.throttle import LoginThrottle
from jobworker.auth.users import DEVELOPMENT_USERS, UserDatabase
from jobworker.errors import NoThread
from jobworker.executors.local.executor import localJobManager
from jobworker.jobs.dropbehind import KEEP, STEP, DropBehind
from jobworker.metrics import Metrics
from jobworker.server.api import JobsAPI
from jobworker.server.services import UsersReloadService
from jobworker.server.threads import threadRunner

from .fakes import FakeProcessReactor, GroupKiller, forbidRealKill
from .support import basic
from .test_authcache import basicRequest


class Refused(threading.Thread):
    """A thread the kernel will not start (C{EAGAIN} from C{clone})."""

    def start(self) -> None:
        raise RuntimeError("can't start new thread")


def starvedPool(case: SynchronousTestCase) -> ThreadPool:
    """Twisted's thread pool, started, that cannot start a thread."""
    pool = ThreadPool(0, 2, "starved")
    pool.threadFactory = Refused
    pool.start()
    case.addCleanup(pool.stop)  # (no thread it could not start left to join)
    return pool


class ThreadRunnerTests(SynchronousTestCase):
    def test_noThreadIsAFailedDeferred(self) -> None:
        runner = threadRunner(Clock(), starvedPool(self))
        failure = self.failureResultOf(runner(len, "abc"), NoThread)
        self.assertEqual(failure.value.code, 503)
        self.assertIn("thread", failure.value.message)
        self.flushLoggedErrors()


class PasswordCheckTests(SynchronousTestCase):
    def test_basicLoginWithoutAThreadIs503(self) -> None:
        forbidRealKill(self.patch)
        reactor = FakeProcessReactor()
        stateDir = os.path.abspath(self.mktemp())
        os.makedirs(stateDir)
        manager = localJobManager(reactor, stateDir, 5.0, GroupKiller())
        self.addCleanup(manager.close)
        runner = threadRunner(reactor, starvedPool(self))
        portal = makePortal(UserDatabase.development(), runner)
        authenticator = Authenticator(portal)
        api = JobsAPI(manager, authenticator, reactor, Metrics())
        http = StubTreq(api.resource())
        response = self.successResultOf(
            http.request("GET", "https://x/jobs", headers=basic("alice"))
        )
        body = json.loads(self.successResultOf(response.content()))
        self.assertEqual(response.code, 503, body)
        self.assertIn("thread", body["error"])
        self.assertTrue(response.headers.getRawHeaders(b"retry-after"))
        [checker] = portal.checkers.values()
        self.assertEqual(checker.inFlight, 0)  # not counted against the cap
        self.flushLoggedErrors()

    def test_noThreadIsNoFailedLogin(self) -> None:
        """
        A client that retries after the 503's Retry-After is no more
        throttled than before: the server's trouble is not its failure
        (a review: each 503 counted as a bad password).
        """
        clock = Clock()
        throttle = LoginThrottle(clock, threshold=2)
        portal = makePortal(
            UserDatabase.development(), threadRunner(clock, starvedPool(self))
        )
        authenticator = Authenticator(portal, throttle=throttle)
        for _ in range(5):
            self.failureResultOf(
                ensureDeferred(
                    authenticator.authenticate(basicRequest("alice", "alice-pass"))
                ),
                NoThread,
            )
        self.assertEqual(throttle.retryAfter("alice", "192.0.2.7"), 0)
        self.flushLoggedErrors()


class PageReleaseTests(SynchronousTestCase):
    def test_descriptorClosedWhenNoThread(self) -> None:
        runner = threadRunner(Clock(), starvedPool(self))
        drop = DropBehind("spool", runner, lambda *a: None)
        r, w = os.pipe()
        self.addCleanup(os.close, r)
        self.addCleanup(os.close, w)
        before = set(os.listdir("/proc/self/fd"))
        drop.wrote(w, KEEP + STEP, [])
        self.assertEqual(set(os.listdir("/proc/self/fd")), before)
        self.assertFalse(drop._busy)
        self.flushLoggedErrors()


class ReloadTests(SynchronousTestCase):
    def test_reloadWithoutAThreadStillRevokes(self) -> None:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(DEVELOPMENT_USERS)
        replaced: list[Any] = []

        class Authenticator:
            def replaceUsers(self, users: Any) -> None:
                replaced.append(users)

        runner = threadRunner(Clock(), starvedPool(self))
        service = UsersReloadService(path, Authenticator(), Clock(), runner)  # type: ignore[arg-type]
        with open(path, "w") as f:
            f.write("\n".join(DEVELOPMENT_USERS.splitlines()[1:]) + "\n")
        self.successResultOf(service.reload())
        [users] = replaced
        self.assertEqual(len(users), len(DEVELOPMENT_USERS.splitlines()) - 1)
        self.flushLoggedErrors()
