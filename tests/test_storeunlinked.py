"""
The store's file removed while the server runs (fault round 27): every
write went to the removed file, /healthz said ok, and the next start found
no store and no job. The server now writes it again from the open store.
"""

from __future__ import annotations

import os
import sqlite3

from twisted.trial.unittest import SynchronousTestCase, TestCase

from jobworker.jobs.records import JobRecord, JobStatus
from jobworker.jobs.store import JobStore

from .support import LiveServer, waitUntil


def record(jobId: str) -> JobRecord:
    """A finished job's record."""
    return JobRecord(
        id=jobId,
        owner="alice",
        command="true",
        args=[],
        status=JobStatus.COMPLETED,
        created_at=1.0,
        exit_code=0,
    )


class RelinkTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.path = os.path.join(os.path.abspath(self.mktemp()), "jobs.sqlite3")
        os.makedirs(os.path.dirname(self.path))
        self.store = JobStore(self.path)
        self.addCleanup(lambda: self.store.close())

    def test_inPlace(self) -> None:
        """The file where it was: nothing to say, nothing done."""
        self.store.insert(record("a" * 8))
        self.assertIsNone(self.store.relink())

    def test_removedWrittenAgain(self) -> None:
        """
        Removed: written again at its path with every job, and the store
        goes on in it; a new store opened there later has them all.
        """
        for n in range(3):
            self.store.insert(record(f"job-{n}"))
        os.unlink(self.path)
        self.store.insert(record("job-3"))  # (into the removed file)
        found = self.store.relink()
        self.assertIsNotNone(found)
        self.assertIn("written again", found)
        self.assertTrue(os.path.isfile(self.path))
        self.assertFalse(os.path.exists(self.path + ".restoring"))
        self.assertIsNone(self.store.relink())
        self.store.insert(record("job-4"))
        self.store.close()
        self.store = JobStore(self.path)
        self.assertEqual(
            [self.store.get(f"job-{n}") is not None for n in range(5)], [True] * 5
        )

    def test_anotherReaderOfTheRemovedFile(self) -> None:
        """
        Another program holds the removed file open (its WAL and -shm then
        stay, under the names the copy would use): they are moved aside,
        and the copy opens without them, every job in it (a review).
        """
        for n in range(3):
            self.store.insert(record(f"job-{n}"))
        reader = sqlite3.connect(self.path)
        self.addCleanup(reader.close)
        reader.execute("SELECT count(*) FROM jobs").fetchone()
        os.unlink(self.path)
        found = self.store.relink() or ""
        self.assertIn("moved aside", found)
        self.assertTrue(os.path.exists(self.path + "-wal.removed-store"))
        self.store.insert(record("job-3"))
        self.store.close()
        self.store = JobStore(self.path)
        self.assertEqual(
            [self.store.get(f"job-{n}") is not None for n in range(4)], [True] * 4
        )

    def test_replacedLeftAlone(self) -> None:
        """Another file put at the path is not overwritten; it is said."""
        self.store.insert(record("job-0"))
        os.unlink(self.path)
        sqlite3.connect(self.path).close()
        found = self.store.relink()
        self.assertIn("replaced", found or "")
        self.assertEqual(os.path.getsize(self.path), 0)


class LiveRelinkTests(TestCase):
    timeout = 60

    async def test_removedUnderTheServer(self) -> None:
        """
        A server whose store file is removed while it runs puts it back
        by itself (no request needed), and a restart finds every job, those
        made before and after the removal.
        """
        server = LiveServer(self)
        path = os.path.join(server.stateDir, "jobs.sqlite3")
        before = await server.createJob("true")
        await server.waitEnded(before["id"])
        os.unlink(path)
        after = await server.createJob("true")
        await server.waitEnded(after["id"])
        await waitUntil(lambda: os.path.exists(path), timeout=15, what="the store")
        await server.stop()
        again = LiveServer(self, stateDir=server.stateDir)
        for job in (before, after):
            code, stored = await again.json("GET", f"/jobs/{job['id']}")
            self.assertEqual((code, stored["status"]), (200, "COMPLETED"))
