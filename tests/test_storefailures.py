"""
The store failing (disk full, a damaged page) loses nothing and breaks
nothing: a real SQLite store that refuses writes on demand, under the real
manager and API on a fake process reactor. (The fault suite, tests/faults,
does the same with a real full disk.)
"""

from __future__ import annotations

import errno
import json
import os
import random
import sqlite3
from typing import Any

from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from jobworker.auth.authenticator import Authenticator, makePortal
from jobworker.auth.users import UserDatabase
from jobworker.executors.local.executor import localJobManager
from jobworker.jobs.admission import DISPATCH_RETRY
from jobworker.jobs.manager import RETRY_FIRST
from jobworker.jobs.policy import JobPolicy
from jobworker.jobs.records import JobStatus
from jobworker.jobs.store import JobStore, StoreError
from jobworker.jobs.validation import JobRequest
from jobworker.metrics import Metrics
from jobworker.server.api import JobsAPI
from jobworker.server.services import RetentionService

from .fakes import FakeProcessReactor, GroupKiller, forbidRealKill
from .support import LiveServer, basic, giveTurns, smallTmpfs

#: SQLite's name for a full disk's error.
FULL = "SQLITE_FULL"


class FullDiskStore(JobStore):
    """
    A real store whose writes (and, if asked, every statement) fail the way
    SQLite fails on a full disk, until space comes back.
    """

    full = False
    broken = False

    def _fail(self) -> None:
        if self.full:
            raise StoreError("cannot record job: database or disk is full", FULL)

    def insert(self, record: Any) -> None:
        self._fail()
        super().insert(record)

    def update(self, record: Any) -> None:
        self._fail()
        super().update(record)

    def delete(self, jobId: str) -> None:
        if self.full:
            # What the real delete raised before it was mapped: the store
            # must turn any sqlite3 error into a StoreError.
            raise StoreError("cannot delete a job: database or disk is full", FULL)
        super().delete(jobId)

    def get(self, jobId: str) -> Any:
        if self.broken:
            raise StoreError("cannot read a job: database disk image is malformed")
        return super().get(jobId)

    def page(self, *args: Any, **kwargs: Any) -> Any:
        if self.broken:
            raise StoreError("cannot list jobs: database disk image is malformed")
        return super().page(*args, **kwargs)


def syncRunner(f: Any, *args: Any) -> Any:
    from twisted.internet.defer import maybeDeferred

    return maybeDeferred(f, *args)


class StoreFailureTests(SynchronousTestCase):
    def setUp(self) -> None:
        forbidRealKill(self.patch)
        self.reactor = FakeProcessReactor()
        self.killer = GroupKiller()
        stateDir = os.path.abspath(self.mktemp())
        os.makedirs(stateDir)
        self.store = FullDiskStore(os.path.join(stateDir, "jobs.sqlite3"))
        self.metrics = Metrics()
        self.manager = localJobManager(
            self.reactor,
            stateDir,
            5.0,
            self.killer,
            store=self.store,
            metrics=self.metrics,
        )
        self.addCleanup(self.manager.close)
        authenticator = Authenticator(
            makePortal(UserDatabase.development(), syncRunner)
        )
        self.api = JobsAPI(self.manager, authenticator, self.reactor, self.metrics)
        self.http = StubTreq(self.api.resource())

    def call(
        self, method: str, path: str, user: str = "alice", body: Any = None
    ) -> tuple[int, Any]:
        headers = basic(user)
        data = None
        if body is not None:
            data = json.dumps(body).encode()
        headers[b"content-type"] = [b"application/json"]
        sent = self.http.request(method, "https://x" + path, data=data, headers=headers)
        giveTurns(self.api, self.reactor, self.http.flush)
        response = self.successResultOf(sent)
        content = self.successResultOf(response.content())
        self.http.flush()
        if response.headers.getRawHeaders(b"content-type") == [b"text/plain"]:
            return response.code, content
        try:
            return response.code, json.loads(content)
        except ValueError:
            return response.code, content

    def queueing(self) -> tuple[Any, FullDiskStore]:
        """A manager of its own that runs one job at a time, and its store."""
        stateDir = os.path.abspath(self.mktemp())
        os.makedirs(stateDir)
        store = FullDiskStore(os.path.join(stateDir, "jobs.sqlite3"))
        manager = localJobManager(
            self.reactor,
            stateDir,
            5.0,
            self.killer,
            store=store,
            policy=JobPolicy(maxRunning=1),
        )
        self.addCleanup(manager.close)
        return manager, store

    def endJob(self, code: int = 3) -> str:
        status, job = self.call("POST", "/jobs", body={"command": "true"})
        self.assertEqual(status, 201, job)
        [spawned] = [s for s in self.reactor.spawned if s.pid == job["pid"]]
        self.killer.groupGone(spawned.pid)
        self.store.full = True
        spawned.exit(code)
        return str(job["id"])

    def test_finalRecordSurvivesFullDisk(self) -> None:
        """
        Defect 1: the job ends FAILED while the disk is full; the API keeps
        saying FAILED (never RUNNING again), stop is 409 with the real
        status, metrics count it as ended, and once space is back the store
        gets it.
        """
        jobId = self.endJob(3)
        code, job = self.call("GET", f"/jobs/{jobId}")
        self.assertEqual((code, job["status"], job["exit_code"]), (200, "FAILED", 3))
        code, body = self.call("GET", "/jobs?status=RUNNING")
        self.assertEqual([j["id"] for j in body["jobs"]], [])
        code, body = self.call("GET", "/jobs")
        self.assertEqual(body["jobs"][0]["status"], "FAILED")
        code, body = self.call("POST", f"/jobs/{jobId}/stop")
        self.assertEqual(code, 409)
        self.assertIn("FAILED", body["error"])
        self.assertEqual(self.manager._countByStatus().get("RUNNING", 0), 0)
        self.assertEqual(self.manager._countByStatus()["FAILED"], 1)
        # Still full at the first retry; space comes back before the next.
        self.reactor.advance(RETRY_FIRST)
        self.assertEqual(self.store.get(jobId).status, JobStatus.RUNNING)
        self.store.full = False
        self.reactor.advance(RETRY_FIRST * 2)
        stored = self.store.get(jobId)
        self.assertEqual((stored.status, stored.exit_code), (JobStatus.FAILED, 3))
        self.assertEqual(self.manager._unsaved, {})

    def test_queuedJobsWaitOutAFullDisk(self) -> None:
        """
        A queued job whose start the store refuses (a full disk) stays
        queued and starts once the disk has room again: it was FAILED for
        good, and so was every job queued behind it, one after another.
        """
        manager, store = self.queueing()
        first = manager.create(JobRequest("sleep", ["9"], {}, None), "alice")
        queued = [
            manager.create(JobRequest("true", [], {}, None), "alice").id
            for _ in range(3)
        ]
        [spawned] = [s for s in self.reactor.spawned if s.pid == first.pid]
        store.full = True
        self.killer.groupGone(spawned.pid)
        spawned.exit(0)
        self.assertEqual(
            [manager.record(i).status for i in queued], [JobStatus.PENDING] * 3
        )
        self.assertEqual(len(self.reactor.spawned), 1)
        self.reactor.advance(DISPATCH_RETRY)  # still full: still queued
        self.assertEqual(manager.record(queued[0]).status, JobStatus.PENDING)
        store.full = False
        self.reactor.advance(DISPATCH_RETRY)
        self.assertEqual(manager.record(queued[0]).status, JobStatus.RUNNING)
        self.assertEqual(
            [manager.record(i).status for i in queued[1:]], [JobStatus.PENDING] * 2
        )
        self.assertEqual(manager.record(first.id).status, JobStatus.COMPLETED)

    def test_queuedJobStoppedOnAFullDisk(self) -> None:
        """
        A queued job stopped while the disk is full stays STOPPED: its final
        record is kept and written once there is room, like a running job's.
        It was lost: the store kept it PENDING and queued, so a restart ran
        it, and meanwhile it could be neither stopped nor deleted.
        """
        manager, store = self.queueing()
        manager.create(JobRequest("sleep", ["9"], {}, None), "alice")
        queued = manager.create(JobRequest("true", [], {}, None), "alice")
        store.full = True
        stopped = self.successResultOf(manager.stop(queued.id, "alice"))
        self.assertEqual(stopped.status, JobStatus.STOPPED)
        self.assertEqual(manager.record(queued.id).status, JobStatus.STOPPED)
        self.assertEqual(manager._countByStatus().get("STOPPED"), 1)
        store.full = False
        self.reactor.advance(RETRY_FIRST)
        kept = store.get(queued.id)
        self.assertEqual((kept.status, kept.queued), (JobStatus.STOPPED, False))
        self.assertEqual(store.queued(), [])
        self.assertEqual(manager._unsaved, {})

    def test_deleteOnFullDiskIs503ThenWorks(self) -> None:
        """
        Defect 2: DELETE of an ended job while the store refuses is 503 (never
        409 "still running", never 500), and works once space is back.
        """
        jobId = self.endJob(0)
        code, body = self.call("DELETE", f"/jobs/{jobId}", user="ada")
        self.assertEqual(code, 503, body)
        self.assertIn("try again", body["error"])
        self.store.full = False
        code, _ = self.call("DELETE", f"/jobs/{jobId}", user="ada")
        self.assertEqual(code, 200)
        code, _ = self.call("GET", f"/jobs/{jobId}")
        self.assertEqual(code, 404)

    def test_brokenReadsAre503(self) -> None:
        """Defect 6 at run time: a store that cannot read answers 503 JSON."""
        self.store.broken = True
        for path in ("/jobs", "/jobs/7c3b4e02-95a9-4d4a-9f0d-8d0c8fd3c2a1"):
            code, body = self.call("GET", path)
            self.assertEqual(code, 503, body)
            self.assertIn("error", body)

    def test_unrecordedJobNeverRuns(self) -> None:
        """
        Defect 5: when the record cannot be stored the process never passes
        its gate (no "go"), the gate is closed and the process killed; the
        client gets 503.
        """
        self.store.full = True
        code, body = self.call("POST", "/jobs", body={"command": "true"})
        self.assertEqual(code, 503, body)
        [spawned] = self.reactor.spawned
        self.assertEqual(spawned.transport.gate, [])
        self.assertIn(3, spawned.transport.closedChildFDs)
        self.assertTrue(spawned.transport.signals)

    def test_retentionSurvivesStoreErrors(self) -> None:
        """Defect 2: a failing round of --retain does not end retention."""
        jobId = self.endJob(0)
        self.store.full = False
        self.reactor.advance(RETRY_FIRST)
        clock = Clock()
        clock.seconds = self.reactor.seconds  # type: ignore[method-assign]
        service = RetentionService(self.manager, 1.0, self.reactor)
        self.store.full = True
        self.reactor.advance(10)
        service.startService()
        self.addCleanup(service.stopService)
        self.assertIsNotNone(self.store.get(jobId))
        self.assertTrue(service._loop.running)
        self.store.full = False
        self.reactor.advance(service.interval)
        self.assertIsNone(self.store.get(jobId))


class SmallDisk(SynchronousTestCase):
    """A state dir on a 3 MiB tmpfs, and a manager there."""

    def setUp(self) -> None:
        self.stateDir = smallTmpfs(self, "3m")
        forbidRealKill(self.patch)
        self.reactor = FakeProcessReactor()
        # A job's group is gone with its main process: no leftovers to hold
        # a running slot for the grace.
        self.killer = GroupKiller(exists=False)

    def manager(self) -> Any:
        return localJobManager(
            self.reactor,
            self.stateDir,
            5.0,
            self.killer,
            policy=JobPolicy(maxRunning=1),
        )

    def fill(self, where: str | None = None) -> None:
        """Write to C{where} (the state dir's C{ballast}) until the disk is full."""
        # (Unbuffered: a buffered file's close wrote what it held again, and
        # raised ENOSPC, or not, by how the free space fell.)
        with open(where or os.path.join(self.stateDir, "ballast"), "wb", 0) as f:
            try:
                while True:
                    f.write(b"\0" * 65536)
            except OSError as e:
                self.assertEqual(e.errno, errno.ENOSPC)


class InodesOutTests(SynchronousTestCase):
    """A state dir whose file system has no inode left (a real tmpfs)."""

    def test_startsWithNoInodeLeft(self) -> None:
        """
        The server starts on a state dir with room but no inode left (many
        jobs' small files took them), so that retention or a DELETE can
        free some: its start-up check that C{jobs/} is writable took the
        ENOSPC of its probe file for a read-only folder, and every start
        failed until a job folder was removed by hand (fault round 28).
        """
        forbidRealKill(self.patch)
        reactor = FakeProcessReactor()
        stateDir = smallTmpfs(self, "3m,nr_inodes=64")

        def start() -> Any:
            manager = localJobManager(reactor, stateDir, 5.0, GroupKiller())
            self.addCleanup(manager.close)
            return manager

        first = start()
        job = first.create(JobRequest("true", [], {}, None), "alice")
        first.close()
        ballast = os.path.join(stateDir, "ballast")
        os.mkdir(ballast)
        with self.assertRaises(OSError) as raised:
            for n in range(100):
                os.close(os.open(os.path.join(ballast, str(n)), os.O_CREAT, 0o600))
        self.assertEqual(raised.exception.errno, errno.ENOSPC)
        again = start()
        self.assertEqual([r.id for r in again.page()[0]], [job.id])


class InodesOutServerTests(TestCase):
    """
    The whole server (twistd's service, as it starts), on a state dir with
    no inode left: the store opened before the manager, which gave the
    reserve up only then (review of fault round 28).
    """

    timeout = 60

    async def test_serverStartsWithNoInodeLeft(self) -> None:
        mount = smallTmpfs(self, "4m,nr_inodes=200")
        stateDir = os.path.join(mount, "state")
        server = LiveServer(self, stateDir=stateDir)
        job = await server.createJob("true")
        await server.waitEnded(job["id"])
        await server.stop()
        ballast = os.path.join(mount, "ballast")
        os.mkdir(ballast)
        with self.assertRaises(OSError) as raised:
            for n in range(1000):
                os.close(os.open(os.path.join(ballast, str(n)), os.O_CREAT, 0o600))
        self.assertEqual(raised.exception.errno, errno.ENOSPC)
        again = LiveServer(self, stateDir=stateDir)
        code, listed = await again.json("GET", "/jobs", "alice")
        self.assertEqual(code, 200, listed)
        self.assertEqual([j["id"] for j in listed["jobs"]], [job["id"]])
        # Room again: a deletion frees it, and the reserve is made again.
        for n in range(50):
            os.unlink(os.path.join(ballast, str(n)))
        code, _ = await again.json("DELETE", f"/jobs/{job['id']}", "alice")
        self.assertEqual(code, 200)
        self.assertTrue(os.path.exists(os.path.join(stateDir, "reserve")))


class DiskReserveTests(SmallDisk):
    """
    On a really full disk (a small tmpfs), the server keeps a reserve file
    it gives up at shutdown to store the final records it could not.
    """

    def test_aStopOnAFullDiskSurvivesTheShutdown(self) -> None:
        """
        A queued job stopped while the disk is full, and the server stopped
        before space comes back: its STOPPED record is stored at shutdown
        (from the reserve), and the restart does not run it (it did).
        """
        manager = self.manager()
        self.assertTrue(os.path.exists(os.path.join(self.stateDir, "reserve")))
        manager.create(JobRequest("sleep", ["9"], {}, None), "alice")
        queued = manager.create(JobRequest("true", [], {}, None), "alice")
        self.fill()
        stopped = self.successResultOf(manager.stop(queued.id, "alice"))
        self.assertEqual(stopped.status, JobStatus.STOPPED)
        self.assertIn(queued.id, manager._unsaved)  # the disk really was full
        manager.close()
        os.unlink(os.path.join(self.stateDir, "ballast"))
        again = self.manager()
        self.addCleanup(again.close)
        again.recover()
        self.assertEqual(again.record(queued.id).status, JobStatus.STOPPED)
        self.assertEqual(len(self.reactor.spawned), 1)  # the sleep alone


class FullDiskFreesItselfTests(SmallDisk):
    """
    A disk filled by job output: deleting a record needs room in the store
    (a WAL frame), so retention and DELETE failed for ever on the very disk
    they would have freed (a fault round). The reserve is given up for the
    deletion, and made again once the output is gone.
    """

    def test_retentionFreesAFullDisk(self) -> None:
        manager = self.manager()
        self.addCleanup(manager.close)
        jobs = []
        for _ in range(3):
            jobs.append(manager.create(JobRequest("true", [], {}, None), "alice"))
            self.reactor.spawned[-1].exit(0)
        folder = manager._executor.outputDir(jobs[0].id)
        os.makedirs(folder, exist_ok=True)
        ballast = os.path.join(folder, "ballast")
        self.fill(ballast)
        self.reactor.advance(1)
        self.assertEqual(self.successResultOf(manager.expire(0.5)), 3)
        self.assertFalse(os.path.exists(ballast))
        reserve = os.path.join(self.stateDir, "reserve")
        self.assertEqual(os.path.getsize(reserve), 1 << 20)
        self.flushLoggedErrors()


class FullDiskStartTests(SmallDisk):
    """
    After a crash, on a full disk, the server refused to start: recovery's
    records (running jobs closed FAILED) were fatal to write, so nothing
    could be listed or deleted to make room (a fault round).
    """

    def test_recoveryOnAFullDisk(self) -> None:
        crashed = self.manager()
        job = crashed.create(JobRequest("sleep", ["600"], {}, None), "alice")
        crashed._store._unlock()  # a crash: the record says RUNNING, the WAL stays
        self.fill()
        os.unlink(os.path.join(self.stateDir, "reserve"))  # and even that used up
        self.fill()
        again = self.manager()
        self.addCleanup(again.close)
        again.recover()
        self.assertEqual(again.record(job.id).status, JobStatus.FAILED)
        os.unlink(os.path.join(self.stateDir, "ballast"))
        self.reactor.advance(60)
        self.assertEqual(again._store.get(job.id).status, JobStatus.FAILED)
        reserve = os.path.join(self.stateDir, "reserve")
        self.assertEqual(os.path.getsize(reserve), 1 << 20)  # made again
        self.flushLoggedErrors()


class RealStoreErrorTests(SynchronousTestCase):
    """Every statement of the real store maps SQLite errors to StoreError."""

    def test_everyMethodMapsErrors(self) -> None:
        store = JobStore(os.path.abspath(self.mktemp()))
        store._db.close()  # any statement now raises sqlite3.ProgrammingError
        self.addCleanup(store._unlock)
        for call in (
            lambda: store.get("x"),
            lambda: store.page(),
            lambda: store.running(),
            lambda: store.endedBefore(0.0),
            lambda: store.delete("x"),
            lambda: store.countByStatus(),
            lambda: store.count(),
        ):
            self.assertRaises(StoreError, call)
        self.assertTrue(issubclass(sqlite3.ProgrammingError, sqlite3.Error))

    def test_damagedStoreRefused(self) -> None:
        """Defect 6: a damaged page is refused at open, nothing overwritten."""
        path = os.path.abspath(self.mktemp())
        store = JobStore(path)
        from jobworker.jobs.records import JobRecord

        for n in range(400):
            store.insert(
                JobRecord(
                    id=f"{n:08d}-0000-4000-8000-000000000000",
                    command="x" * 200,
                    args=[],
                    owner="alice",
                    created_at=1.0,
                )
            )
        store._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        store.close()
        with open(path, "rb") as f:
            healthy = f.read()
        # Fixed draws, not os.urandom: some make the check itself fail
        # ("malformed", seeds 28 and 29 among them) rather than report pages.
        for seed in (0, 1, 28, 29):
            damaged = bytearray(healthy)
            middle = len(healthy) // 2
            damaged[middle : middle + 4096] = random.Random(seed).randbytes(4096)
            with open(path, "wb") as f:
                f.write(damaged)
            error = self.assertRaises(StoreError, JobStore, path)
            # The path is this test's, and holds the word: not that.
            self.assertIn("is damaged (", str(error).replace(path, "PATH"), seed)
            with open(path, "rb") as f:
                self.assertEqual(f.read(), damaged, seed)


class WaitLoopTests(SynchronousTestCase):
    """Defect 7: jw wait never loops without a delay."""

    def test_earlyAnswersAreNotABusyLoop(self) -> None:
        """A server answering "RUNNING" at once: at most ~1 request a second."""
        import argparse
        import io

        from twisted.internet.defer import ensureDeferred, succeed
        from twisted.internet.task import deferLater

        from jobworker.client.cli import EXIT_TIMED_OUT, Streams
        from jobworker.client.follow import waitFor

        clock = Clock()

        class Client:
            reactor = clock
            calls = 0

            def job(self, jobId: str, wait: float = 0) -> Any:
                Client.calls += 1
                if Client.calls > 100:
                    raise AssertionError("jw wait is a busy loop")
                return succeed({"id": jobId, "status": "RUNNING"})

            def pause(self, seconds: float) -> Any:
                return deferLater(clock, seconds)

        options = argparse.Namespace(id="x", timeout=3.0, json=False)
        streams = Streams(io.BytesIO(), io.BytesIO(), io.StringIO())
        done = ensureDeferred(waitFor(Client(), options, streams))  # type: ignore[arg-type]
        for _ in range(40):
            clock.advance(0.1)
        self.assertEqual(self.successResultOf(done), EXIT_TIMED_OUT)
        # (One more: the job's status asked first, with no wait, so that a
        # login lapsing in the long poll is said as under a follow: new
        # user round 41.)
        self.assertLessEqual(Client.calls, 6)


class ReloadThreadTests(SynchronousTestCase):
    """Defect 7: a users-file reload parses (and hashes) off the reactor."""

    def test_reloadRunsInTheThreadRunner(self) -> None:
        from twisted.internet.defer import maybeDeferred

        from jobworker.auth.users import DEVELOPMENT_USERS
        from jobworker.server.services import UsersReloadService, _checkedUsers

        path = self.mktemp()
        with open(path, "w") as f:
            f.write(DEVELOPMENT_USERS)
        ran: list[Any] = []
        replaced: list[Any] = []

        def runInThread(f: Any, *args: Any) -> Any:
            ran.append(f)
            return maybeDeferred(f, *args)

        class Authenticator:
            def replaceUsers(self, users: Any) -> None:
                replaced.append(users)

        service = UsersReloadService(path, Authenticator(), None, runInThread)  # type: ignore[arg-type]
        self.successResultOf(service.reload())
        # The file's check and its read, both in the thread.
        self.assertEqual(ran, [_checkedUsers])
        self.assertEqual(len(replaced), 1)


class StoreFailureWordingTests(SmallDisk):
    """
    A store that cannot be written says why: a read-only state dir (a
    remount after I/O errors, a backup's snapshot mount) answered "is the
    state dir's disk full?", which sent an operator looking for space that
    was there (a fault round).
    """

    def apiOf(self, manager: Any) -> Any:
        authenticator = Authenticator(
            makePortal(UserDatabase.development(), syncRunner)
        )
        api = JobsAPI(manager, authenticator, self.reactor, Metrics())
        http = StubTreq(api.resource())

        def create() -> tuple[int, Any]:
            headers = basic("alice")
            headers[b"content-type"] = [b"application/json"]
            response = self.successResultOf(
                http.request(
                    "POST",
                    "https://x/jobs",
                    data=json.dumps({"command": "true"}).encode(),
                    headers=headers,
                )
            )
            body = json.loads(self.successResultOf(response.content()))
            http.flush()
            return response.code, body

        return create

    def test_readOnlyStore(self) -> None:
        manager = self.manager()
        self.addCleanup(manager.close)
        create = self.apiOf(manager)
        code, body = create()
        self.assertEqual(code, 201, body)
        self.reactor.spawned[0].exit(0)
        # SQLite's own read-only refusal (SQLITE_READONLY), from the real store.
        manager._store._db.execute("PRAGMA query_only = ON")
        code, body = create()
        self.assertEqual(code, 503, body)
        self.assertIn("read-only", body["error"])
        self.assertNotIn("full", body["error"])
        # Never run unrecorded: no "go" through its gate.
        self.assertEqual(self.reactor.spawned[1].transport.gate, [])
        manager._store._db.execute("PRAGMA query_only = OFF")
        self.flushLoggedErrors()

    def test_fullStateDir(self) -> None:
        manager = self.manager()
        self.addCleanup(manager.close)
        create = self.apiOf(manager)
        self.fill()
        code, body = create()
        self.assertEqual(code, 503, body)
        self.assertIn("disk is full", body["error"])
        self.flushLoggedErrors()


class LockedStoreTests(SmallDisk):
    """
    Another program holding the store's write lock (a backup tool, the
    sqlite3 shell in a transaction) froze the whole server: SQLite waited up
    to 5 s for it on the reactor's thread, for each write, job ends
    included; no request was served meanwhile (fault round 5). The store
    waits for no lock: the write is refused at once, a request is a 503
    that says why, and a job's end is kept in memory and written later.
    """

    def test_lockedStoreRefusesAtOnce(self) -> None:
        manager = self.manager()
        self.addCleanup(manager.close)
        create = StoreFailureWordingTests.apiOf(self, manager)  # type: ignore[arg-type]
        busy = manager._store._db.execute("PRAGMA busy_timeout").fetchone()[0]
        self.assertEqual(busy, 0)
        other = sqlite3.connect(
            os.path.join(self.stateDir, "jobs.sqlite3"), isolation_level=None
        )
        self.addCleanup(other.close)
        other.execute("BEGIN IMMEDIATE")
        code, body = create()
        self.assertEqual(code, 503, body)
        self.assertIn("locked by another program", body["error"])
        other.execute("ROLLBACK")
        code, body = create()
        self.assertEqual(code, 201, body)
        self.flushLoggedErrors()
