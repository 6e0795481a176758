"""
Deleting many jobs at once (C{--retain} rounds, C{DELETE /jobs}) in slices,
one reactor turn each, so that the server answers other requests meanwhile.
"""

from __future__ import annotations

import os
import uuid

from twisted.trial.unittest import SynchronousTestCase

from jobworker.errors import NotFound
from jobworker.executors.local.executor import localJobManager
from jobworker.jobs.manager import DELETE_SLICE, JobManager
from jobworker.jobs.records import JobRecord, JobStatus
from jobworker.jobs.selection import ANY_JOB, JobFilter
from jobworker.jobs.store import StoreError
from jobworker.server.services import RetentionService

from .fakes import FakeProcessReactor, GroupKiller, forbidRealKill

GRACE = 5.0
#: Two slices and a half.
JOBS = 2 * DELETE_SLICE + DELETE_SLICE // 2
DAY = 86400.0


class TurningReactor(FakeProcessReactor):
    """
    A fake reactor that can run one turn at a time: L{Clock.advance} runs
    the calls that calls due now schedule for now as well, where a real
    reactor leaves them to its next iteration, after it has read its sockets.
    """

    def turn(self) -> int:
        """Run the calls due now, not those they schedule; how many ran."""
        due = [c for c in self.getDelayedCalls() if c.getTime() <= self.seconds()]
        for call in sorted(due, key=lambda c: c.getTime()):
            if call.active():
                self.calls.remove(call)
                call.called = 1
                call.func(*call.args, **call.kw)
        return len(due)

    def turns(self) -> int:
        """Turn until nothing is due; how many turns that took."""
        count = 0
        while self.turn():
            count += 1
        return count


class SlicedDeletionTestCase(SynchronousTestCase):
    """A manager over ended jobs stored as if they had run (record and folder)."""

    def setUp(self) -> None:
        forbidRealKill(self.patch)
        self.reactor = TurningReactor()
        self.stateDir = os.path.abspath(self.mktemp())
        self.manager = self.newManager()

    def newManager(self) -> JobManager:
        """A manager on the state dir (again, as after a restart)."""
        manager = localJobManager(self.reactor, self.stateDir, GRACE, GroupKiller())
        self.addCleanup(manager.close)
        return manager

    def storeEnded(
        self, count: int, endedAgo: float, owner: str = "alice"
    ) -> list[str]:
        """C{count} COMPLETED jobs, with their output folders; their ids."""
        ids = []
        ended = self.reactor.seconds() - endedAgo
        for _ in range(count):
            record = JobRecord(
                id=str(uuid.uuid4()),
                command="true",
                args=[],
                owner=owner,
                created_at=ended - 1,
                status=JobStatus.COMPLETED,
                exit_code=0,
                started_at=ended - 1,
                ended_at=ended,
            )
            self.manager._store.insert(record)
            folder = self.folder(record.id)
            os.makedirs(folder)
            with open(os.path.join(folder, "stdout"), "wb") as f:
                f.write(b"output\n")
            ids.append(record.id)
        return ids

    def folder(self, jobId: str) -> str:
        return os.path.join(self.stateDir, "jobs", jobId)

    def stored(self, ids: list[str]) -> list[str]:
        """Those of C{ids} whose record is still stored."""
        return [i for i in ids if self.manager._store.get(i) is not None]

    def withFolder(self, ids: list[str]) -> list[str]:
        """Those of C{ids} whose output folder is still there."""
        return [i for i in ids if os.path.exists(self.folder(i))]

    def assertWhole(self, ids: list[str]) -> None:
        """Each job is whole (record and folder) or gone (both)."""
        self.assertEqual(self.stored(ids), self.withFolder(ids))


class ExpireTests(SlicedDeletionTestCase):
    """C{JobManager.expire}: a retention round, one slice a turn."""

    def test_oneSliceATurn(self) -> None:
        """
        A round deletes DELETE_SLICE jobs (record and folder together) at
        once, then as many per reactor turn, and fires with how many it
        deleted; younger jobs stay.
        """
        old = self.storeEnded(JOBS, 2 * DAY)
        young = self.storeEnded(3, 0.5 * DAY)
        done = self.manager.expire(DAY)
        self.assertEqual(len(self.stored(old)), JOBS - DELETE_SLICE)
        self.assertWhole(old)
        self.assertNoResult(done)
        self.reactor.turn()
        self.assertEqual(len(self.stored(old)), JOBS - 2 * DELETE_SLICE)
        self.assertWhole(old)
        self.assertNoResult(done)
        # The last slice is short: the round ends with it.
        self.reactor.turn()
        self.assertEqual(self.successResultOf(done), JOBS)
        self.assertEqual(self.withFolder(old), [])
        self.assertEqual(self.stored(young), young)
        self.assertEqual(self.withFolder(young), young)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_smallRoundAtOnce(self) -> None:
        """A round with less than a slice to do is over at once."""
        old = self.storeEnded(3, 2 * DAY)
        self.assertEqual(self.successResultOf(self.manager.expire(DAY)), 3)
        self.assertEqual(self.withFolder(old), [])
        self.assertEqual(self.successResultOf(self.manager.expire(DAY)), 0)

    def test_otherWorkBetweenSlices(self) -> None:
        """Other work the reactor has runs between two slices of a round."""
        old = self.storeEnded(JOBS, 2 * DAY)
        done = self.manager.expire(DAY)
        seen: list[tuple[int, bool]] = []
        self.reactor.callLater(
            0, lambda: seen.append((len(self.stored(old)), done.called))
        )
        self.reactor.turns()
        # After the second slice, before the third.
        self.assertEqual(seen, [(JOBS - 2 * DELETE_SLICE, False)])
        self.assertEqual(self.successResultOf(done), JOBS)

    def test_stoppedMidway(self) -> None:
        """
        A server closed in the middle of a round leaves every job not yet
        deleted whole; the round fires with what it did; the next one, after
        the restart, deletes the rest.
        """
        old = self.storeEnded(JOBS, 2 * DAY)
        done = self.manager.expire(DAY)
        self.manager.close()
        self.assertEqual(self.successResultOf(done), DELETE_SLICE)
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.manager = self.newManager()
        self.assertEqual(len(self.stored(old)), JOBS - DELETE_SLICE)
        self.assertWhole(old)
        again = self.manager.expire(DAY)
        self.reactor.turns()
        self.assertEqual(self.successResultOf(again), JOBS - DELETE_SLICE)
        self.assertEqual(self.withFolder(old), [])

    def test_cancelledMidway(self) -> None:
        """Cancelling a round stops it after the current slice, jobs whole."""
        old = self.storeEnded(JOBS, 2 * DAY)
        done = self.manager.expire(DAY)
        done.cancel()
        self.assertEqual(self.successResultOf(done), DELETE_SLICE)
        self.reactor.turns()
        self.assertEqual(len(self.stored(old)), JOBS - DELETE_SLICE)
        self.assertWhole(old)

    def test_overlappingDeletes(self) -> None:
        """
        Two rounds at once, a DELETE /jobs and a DELETE of one job in the
        middle of them: each job is deleted once, nothing fails.
        """
        old = self.storeEnded(JOBS, 2 * DAY)
        first = self.manager.expire(DAY)
        second = self.manager.expire(DAY)
        self.manager.delete(old[-1])
        deleted, more = self.manager.clean(ANY_JOB, 20)
        self.assertEqual((deleted, more), (20, True))
        self.assertNoResult(first)
        self.assertNoResult(second)
        self.reactor.turns()
        removed = self.successResultOf(first) + self.successResultOf(second)
        self.assertEqual(removed + deleted + 1, JOBS)
        self.assertEqual(self.stored(old), [])
        self.assertEqual(self.withFolder(old), [])
        self.assertEqual(self.flushLoggedErrors(), [])


class CleanTests(SlicedDeletionTestCase):
    """
    C{JobManager.clean} (C{DELETE /jobs}): the records go at once (the answer
    is true for every later request, and after a restart), the output folders
    a slice per turn.
    """

    def test_foldersInSlices(self) -> None:
        """
        The answer counts every job; none is found any more; their folders
        go DELETE_SLICE per reactor turn.
        """
        ids = self.storeEnded(JOBS, DAY)
        kept = self.storeEnded(2, DAY, owner="bob")
        self.manager.record(ids[0])  # kept in memory: forgotten there too
        deleted, more = self.manager.clean(JobFilter(owner="alice"), 1000)
        self.assertEqual((deleted, more), (JOBS, False))
        self.assertEqual(self.stored(ids), [])
        for jobId in ids[:3]:
            self.assertRaises(NotFound, self.manager.record, jobId)
            self.assertRaises(NotFound, self.manager.delete, jobId)
        self.assertEqual(
            {r.id for r in self.manager.page()[0]}, set(kept), "listed still"
        )
        self.assertEqual(len(self.withFolder(ids)), JOBS)
        left = JOBS
        for _ in range(3):
            self.reactor.turn()
            left = max(0, left - DELETE_SLICE)
            self.assertEqual(len(self.withFolder(ids)), left)
        self.assertEqual(self.withFolder(kept), kept)
        self.assertFalse(os.path.exists(os.path.join(self.stateDir, "deleted-output")))

    def test_moreLeft(self) -> None:
        """At most C{most} per call, oldest first, and whether more are left."""
        ids = self.storeEnded(5, DAY)
        self.assertEqual(self.manager.clean(ANY_JOB, 3), (3, True))
        self.assertEqual(self.stored(ids), ids[3:])
        self.assertEqual(self.manager.clean(ANY_JOB, 3), (2, False))
        self.assertEqual(self.manager.clean(ANY_JOB, 3), (0, False))
        self.reactor.turns()
        self.assertEqual(self.withFolder(ids), [])

    def test_foldersLeftAtAStopRemovedAfterRestart(self) -> None:
        """
        Folders a stop left behind are removed after the restart, a slice a
        turn; a journaled job whose record is still there (its delete was
        refused) keeps its folder.
        """
        ids = self.storeEnded(JOBS, DAY)
        [refused] = self.storeEnded(1, DAY, owner="bob")
        self.manager.clean(JobFilter(owner="alice"), 1000)
        outside = os.path.join(self.stateDir, "jobs", "..", "..", "outside")
        os.makedirs(outside)
        with open(os.path.join(self.stateDir, "deleted-output"), "a") as f:
            f.write(f"{refused}\n../../outside\n")
        self.reactor.turn()
        self.manager.close()
        self.assertEqual(len(self.withFolder(ids)), JOBS - DELETE_SLICE)
        self.reactor.turns()
        self.assertEqual(len(self.withFolder(ids)), JOBS - DELETE_SLICE)
        self.manager = self.newManager()
        self.assertEqual(len(self.withFolder(ids)), JOBS - DELETE_SLICE)
        # Every id noted is taken again (removing the first slice's folders
        # again is a no-op): three slices, one a turn.
        self.assertEqual(self.reactor.turns(), 3)
        self.assertEqual(self.withFolder(ids), [])
        self.assertEqual(self.withFolder([refused]), [refused])
        self.assertEqual(self.stored([refused]), [refused])
        self.assertTrue(os.path.isdir(outside))
        self.assertFalse(os.path.exists(os.path.join(self.stateDir, "deleted-output")))

    def test_refusedDeleteKeepsEverything(self) -> None:
        """
        A DELETE /jobs the store refuses keeps every job whole, in this run
        (the folders of other deletions are removed meanwhile) and after a
        restart, though the jobs were noted in the journal.
        """
        ids = self.storeEnded(3, DAY)
        others = self.storeEnded(2, DAY, owner="bob")

        def refuse(jobIds: list[str]) -> None:
            raise StoreError("cannot delete jobs: database or disk is full")

        self.patch(self.manager._store, "deleteMany", refuse)
        self.assertRaises(
            StoreError, self.manager.clean, JobFilter(owner="alice"), 1000
        )
        self.assertEqual(self.stored(ids), ids)
        self.assertEqual(self.withFolder(ids), ids)
        journal = os.path.join(self.stateDir, "deleted-output")
        self.assertTrue(os.path.exists(journal))
        self.manager.close()
        self.manager = self.newManager()
        self.reactor.turns()
        self.assertEqual(self.stored(ids), ids)
        self.assertEqual(self.withFolder(ids), ids)
        self.assertFalse(os.path.exists(journal))
        self.assertEqual(self.manager.clean(JobFilter(owner="bob"), 1000), (2, False))
        self.reactor.turns()
        self.assertEqual(self.withFolder(others), [])
        self.assertEqual(self.withFolder(ids), ids)

    def test_noJournalRemovesAtOnce(self) -> None:
        """
        When the journal cannot be written (a full disk), the folders are
        removed at once, as the records: nothing is left for a crash to lose.
        """
        ids = self.storeEnded(JOBS, DAY)
        os.mkdir(os.path.join(self.stateDir, "deleted-output"))
        self.assertEqual(self.manager.clean(ANY_JOB, 1000), (JOBS, False))
        self.assertEqual(self.stored(ids), [])
        self.assertEqual(self.withFolder(ids), [])
        self.assertEqual(self.reactor.getDelayedCalls(), [])


class RetentionServiceTests(SlicedDeletionTestCase):
    """The service waits for each round, and stops the one under way."""

    def test_stopEndsTheRoundUnderWay(self) -> None:
        """
        Stopping the service stops its round after the current slice: the
        jobs not deleted yet stay whole, nothing is logged as failed.
        """
        old = self.storeEnded(JOBS, 2 * DAY)
        service = RetentionService(self.manager, DAY, self.reactor)
        service.startService()
        self.assertEqual(len(self.stored(old)), JOBS - DELETE_SLICE)
        service.stopService()
        self.reactor.turns()
        self.assertEqual(len(self.stored(old)), JOBS - DELETE_SLICE)
        self.assertWhole(old)
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_nextRoundAfterTheInterval(self) -> None:
        """A round spanning turns is waited for; the next one comes later."""
        old = self.storeEnded(JOBS, 2 * DAY)
        service = RetentionService(self.manager, DAY, self.reactor)
        service.startService()
        self.addCleanup(service.stopService)
        self.reactor.turns()
        self.assertEqual(self.stored(old), [])
        later = self.storeEnded(3, 2 * DAY)
        self.reactor.advance(service.interval)
        self.assertEqual(self.stored(later), [])


class CrashInsideADeletionTests(SlicedDeletionTestCase):
    """
    A crash between a deleted record and the end of its folder's removal
    (a single DELETE, a retention slice) left a folder that nothing removed
    (a fault round). The ids are noted in C{deleted-output} first; the next
    start removes what is left. A folder no note names is never removed: a
    first fix swept every folder without a record, and deleted the output
    of every job a restored backup or a damaged WAL had lost (fault round
    5).
    """

    def crashBeforeFolders(self) -> None:
        """From now on the manager dies right after the records: neither the
        folders nor the note go (the process is gone)."""
        self.patch(self.manager, "_removeOutput", lambda jobId: None)
        self.patch(self.manager, "_forgetUnswept", lambda: None)

    def restart(self) -> JobManager:
        self.manager.close()
        again = self.newManager()
        again.recover()
        self.reactor.turns()
        return again

    def test_singleDelete(self) -> None:
        [jobId] = self.storeEnded(1, DAY)
        self.crashBeforeFolders()
        self.manager.delete(jobId)
        self.assertEqual(self.withFolder([jobId]), [jobId])
        self.restart()
        self.assertEqual(self.withFolder([jobId]), [])

    def test_retentionSlice(self) -> None:
        old = self.storeEnded(DELETE_SLICE + 5, DAY)
        self.crashBeforeFolders()
        done = self.manager.expire(DAY / 2)
        self.reactor.turns()
        self.assertEqual(self.successResultOf(done), len(old))
        self.assertEqual(len(self.withFolder(old)), len(old))
        self.restart()
        self.assertEqual(self.withFolder(old), [])

    def test_unnotedFoldersKept(self) -> None:
        """A folder whose record the store lost, and no note names, stays."""
        lost = self.storeEnded(3, DAY)
        kept = self.storeEnded(2, DAY)
        self.manager._store.deleteMany(lost)  # as a restored backup would
        self.restart()
        self.assertEqual(self.withFolder(lost + kept), lost + kept)

    def test_noteGoneOnceDone(self) -> None:
        [jobId] = self.storeEnded(1, DAY)
        self.manager.delete(jobId)
        self.assertEqual(self.withFolder([jobId]), [])
        note = os.path.join(self.stateDir, "deleted-output")
        self.assertFalse(os.path.exists(note))

    def test_fifoNoteDoesNotHangTheStart(self) -> None:
        """A FIFO where the note is kept the server from ever starting."""
        self.manager.close()
        os.mkfifo(os.path.join(self.stateDir, "deleted-output"))
        again = self.newManager()
        again.recover()
        self.flushLoggedErrors()

    def test_fifoNoteDoesNotHangADelete(self) -> None:
        """A FIFO where the note goes: a DELETE removes at once (it waited
        for a reader for good, the server with it: a review)."""
        [jobId] = self.storeEnded(1, DAY)
        os.mkfifo(os.path.join(self.stateDir, "deleted-output"))
        self.manager.delete(jobId)
        self.assertEqual(self.withFolder([jobId]), [])
