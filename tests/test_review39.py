"""
Defects found in the thirty-ninth session's rounds (and left by earlier
ones), each reproduced here before its fix.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

import treq
from twisted.internet.defer import ensureDeferred
from twisted.trial.unittest import SynchronousTestCase, TestCase

from jobworker.executors.local.executor import localJobManager
from jobworker.jobs import removal
from jobworker.jobs.policy import JobPolicy
from jobworker.jobs.removal import ASIDE, AsideRemoval

from . import test_mtls, test_queue
from .fakes import FakeProcessReactor, GroupKiller, forbidRealKill
from .test_auditflood import audit


class ThreadCalls:
    """
    A reactor's C{callFromThread}, as a deterministic test sees it: each
    call is kept until the test runs it, on the test's thread.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []
        self.lock = threading.Lock()

    def callFromThread(self, f: Callable[..., Any], *args: Any) -> None:
        with self.lock:
            self.calls.append((f, args))

    def runAll(self) -> int:
        """Run what the thread handed over; how many."""
        with self.lock:
            calls, self.calls = self.calls, []
        for f, args in calls:
            f(*args)
        return len(calls)


def filledFolder(path: str, files: int) -> None:
    """C{path}, made, with C{files} files and a folder of them."""
    os.makedirs(os.path.join(path, "sub"), exist_ok=True)
    for i in range(files):
        with open(os.path.join(path, "sub" if i % 2 else "", f"f{i}"), "w") as f:
            f.write("x")


class OutputRemovedAsideTests(SynchronousTestCase):
    """
    Known since Slurm user round 38: a deleted job's output folder of
    150,000 files (a Slurm job's folder is its account's to fill) was
    removed on the reactor's thread, holding every request and every job's
    pipes while it went. It is renamed aside there (one system call), and
    removed by a thread of its own; a stop leaves the rest to the next
    start.
    """

    def setUp(self) -> None:
        forbidRealKill(self.patch)
        self.reactor = FakeProcessReactor()
        self.killer = GroupKiller()
        self.threadCalls = ThreadCalls()
        self.removal = AsideRemoval(self.threadCalls)
        #: Each removal waits for this before it starts, and says when done.
        self.go = threading.Event()
        self.done = threading.Semaphore(0)
        self.removedOn: list[str] = []
        real = removal.removeTree

        def held(path: str) -> None:
            self.removedOn.append(threading.current_thread().name)
            if threading.current_thread() is not threading.main_thread():
                self.assertTrue(self.go.wait(30))
            try:
                real(path)
            finally:
                self.done.release()

        self.patch(removal, "removeTree", held)

    def manager(self) -> Any:
        manager = localJobManager(
            self.reactor,
            os.path.abspath(self.mktemp()),
            5.0,
            self.killer,
            policy=JobPolicy(),
            outputRemoval=self.removal,
        )
        self.addCleanup(manager.close)
        self.addCleanup(self.go.set)
        return manager

    def finished(self) -> None:
        """Let the thread go, and wait for its removal."""
        self.go.set()
        self.assertTrue(self.done.acquire(timeout=30))

    def test_deleteLeavesTheRemovalToAThread(self) -> None:
        manager = self.manager()
        record = manager.create(test_queue.ManagerQueueTests.request(self), "alice")
        test_queue.ManagerQueueTests.end(self, manager, record.id)
        folder = manager._executor.outputDir(record.id)
        filledFolder(folder, 200)
        aside = os.path.join(os.path.dirname(folder), ASIDE + record.id)
        reserveAgain: list[bool] = []
        self.patch(manager, "_reserveAgain", lambda: reserveAgain.append(True))
        self.removal.removed = manager._reserveAgain

        manager.delete(record.id)
        # Gone for every request at once; its files still there, aside,
        # while the reactor's thread goes on.
        self.assertFalse(os.path.lexists(folder))
        self.assertEqual(len(os.listdir(os.path.join(aside, "sub"))), 100)
        self.assertEqual(self.removedOn, ["jobworker-output-removal"])

        self.finished()
        self.assertFalse(os.path.lexists(aside))
        reserveAgain.clear()
        self.assertEqual(self.threadCalls.runAll(), 1)
        self.assertEqual(reserveAgain, [True])

    def test_leftAsideRemovedAtTheStart(self) -> None:
        """What a stop left aside is removed when the server starts again."""
        manager = self.manager()
        jobs = os.path.dirname(manager._executor.outputDir("x"))
        left = os.path.join(jobs, ASIDE + "0123")
        filledFolder(left, 10)
        kept = os.path.join(jobs, "kept")
        os.makedirs(kept)
        manager.start()
        self.finished()
        self.assertFalse(os.path.lexists(left))
        self.assertTrue(os.path.isdir(kept))

    def test_noThreadRemovedHere(self) -> None:
        """A thread that cannot be started (C{pids.max}): removed here, now."""
        manager = self.manager()
        record = manager.create(test_queue.ManagerQueueTests.request(self), "alice")
        test_queue.ManagerQueueTests.end(self, manager, record.id)
        folder = manager._executor.outputDir(record.id)
        filledFolder(folder, 20)

        def noThread(thread: threading.Thread) -> None:
            raise RuntimeError("can't start new thread")

        self.patch(threading.Thread, "start", noThread)
        manager.delete(record.id)
        self.assertEqual(self.removedOn, ["MainThread"])
        self.assertEqual(os.listdir(os.path.dirname(folder)), [])


class RevokedCertificateOnAKeptConnectionTests(TestCase):
    """
    Attacker round 39: a client certificate that stopped letting in while
    its connection was kept (its CA removed from C{--client-ca}, or its
    end passed) was refused at each request with a line of the audit log,
    never throttled, the connection kept: 5,000 lines (1 MB) in 3 s of one
    connection, a GB an hour. The connection is closed once the first
    refusal is answered, and the refusal audited once a minute.
    """

    timeout = 60
    secondCA = test_mtls.KeptConnectionTests.secondCA
    kept = test_mtls.KeptConnectionTests.kept
    ask = test_mtls.KeptConnectionTests.ask

    async def test_closedAndAuditedOnce(self) -> None:
        server, http, removeCA = self.secondCA()
        code, body = await self.ask(http, server, "GET", "/whoami")
        self.assertEqual((code, body["user"]), (200, "alice"))
        await removeCA()
        response = await http.get(server.url + "/whoami")
        await treq.content(response)
        self.assertEqual(response.code, 401)
        # The next request needs a new connection, whose handshake the
        # server refuses: the kept one is closed.
        failure = await ensureDeferred(
            self.ask(http, server, "GET", "/whoami")
        ).addErrback(lambda f: f.value)
        self.assertIsInstance(failure, Exception, repr(failure))
        [line] = [
            line
            for line in audit(server, "auth.failure")
            if "not signed by a CA" in line.get("reason", "")
        ]
        self.assertEqual(line["user"], "alice")
