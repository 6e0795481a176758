"""
C{GET /jobs/ID?wait=} on a PENDING job that starts during the wait and is
still running when the wait times out (or its client leaves): the waiter was
chained to the job's end, which later called it again, and an
C{AlreadyCalledError} was logged for each such wait (a review of the
lifecycle).
"""

from __future__ import annotations

import dataclasses
import gc
import os
from typing import Any

from twisted.internet.defer import AlreadyCalledError, TimeoutError
from twisted.trial.unittest import SynchronousTestCase

from jobworker.executors.local.executor import localJobManager
from jobworker.jobs.policy import JobPolicy
from jobworker.jobs.records import JobStatus
from jobworker.jobs.selection import ANY_JOB, JobFilter
from jobworker.jobs.store import StoreError
from jobworker.jobs.validation import JobRequest

from .fakes import FakeProcessReactor, GroupKiller, forbidRealKill


class LocalJobs(SynchronousTestCase):
    """A local manager over a fake reactor (C{policy}), its jobs ended at will."""

    policy = JobPolicy()

    def setUp(self) -> None:
        forbidRealKill(self.patch)
        self.reactor = FakeProcessReactor()
        self.killer = GroupKiller()
        self.manager = localJobManager(
            self.reactor,
            os.path.abspath(self.mktemp()),
            5.0,
            self.killer,
            policy=self.policy,
        )
        self.addCleanup(self.manager.close)

    def create(self) -> Any:
        request = JobRequest(command="sleep", args=["9"], env={}, cwd=None)
        return self.manager.create(dataclasses.replace(request), "alice")

    def end(self, jobId: str) -> None:
        pid = self.manager.record(jobId).pid
        [spawned] = [s for s in self.reactor.spawned if s.pid == pid]
        self.killer.groupGone(spawned.pid)
        spawned.exit(0)


class WaitOnQueuedJobTests(LocalJobs):
    policy = JobPolicy(maxRunning=1)

    def test_waitTimesOutAfterTheQueuedJobStarted(self) -> None:
        first, queued = self.create(), self.create()
        self.assertIs(queued.status, JobStatus.PENDING)
        # What GET /jobs/ID?wait=10 does.
        waited = self.manager.whenEnded(queued.id).addTimeout(10, self.reactor)
        self.end(first.id)  # the queued job starts
        self.assertIs(self.manager.record(queued.id).status, JobStatus.RUNNING)
        self.reactor.advance(10)  # the client is answered: not ended yet
        self.failureResultOf(waited, TimeoutError)
        self.end(queued.id)
        gc.collect()
        self.assertEqual(self.flushLoggedErrors(AlreadyCalledError), [])

    def test_waitThatLastsGetsTheEnd(self) -> None:
        """A wait still waiting when the started job ends gets its record."""
        first, queued = self.create(), self.create()
        waited = self.manager.whenEnded(queued.id)
        self.end(first.id)
        self.end(queued.id)
        self.assertIs(self.successResultOf(waited).status, JobStatus.COMPLETED)


class SweepAfterAStoreErrorTests(LocalJobs):
    """
    C{DELETE /jobs} removes output folders in the background; one store
    error there stopped it for good: the folders stayed until the next
    C{DELETE /jobs} or a restart, the disk full meanwhile (a review). The
    sweep is tried again, later and later.
    """

    def refuseExisting(self, times: int) -> None:
        """The store's next C{times} lookups of which records exist fail."""
        existing = self.manager._store.existing
        failures = [True] * times

        def flaky(ids: Any) -> Any:
            if failures:
                failures.pop()
                raise StoreError("cannot look jobs up: disk I/O error")
            return existing(ids)

        self.patch(self.manager._store, "existing", flaky)

    def test_sweepGoesOnAfterAStoreError(self) -> None:
        jobs = [self.create() for _ in range(3)]
        for job in jobs:
            self.end(job.id)
        folders = [self.manager._executor.outputDir(job.id) for job in jobs]
        for folder in folders:
            os.makedirs(folder, exist_ok=True)
        self.refuseExisting(2)
        deleted, _ = self.manager.cleanIds(ANY_JOB, 100)
        self.assertEqual(len(deleted), 3)
        self.reactor.advance(0)
        self.assertEqual([os.path.exists(f) for f in folders], [True] * 3)
        self.reactor.advance(1)  # tried again after 1 s: refused again
        self.assertEqual([os.path.exists(f) for f in folders], [True] * 3)
        self.reactor.advance(2)  # then after 2 s
        self.assertEqual([os.path.exists(f) for f in folders], [False] * 3)

    def test_deletionWhileATryIsDue(self) -> None:
        """A DELETE /jobs while the next try is due: that try sweeps its
        folders too, and the server's close cancels it (the timer was lost
        and outlived the shutdown: a review)."""
        jobs = [self.create() for _ in range(2)]
        for job in jobs:
            self.end(job.id)
        self.refuseExisting(1)
        self.manager.cleanIds(JobFilter(idPrefix=jobs[0].id[:8]), 100)
        self.reactor.advance(0)
        self.manager.cleanIds(ANY_JOB, 100)
        self.reactor.advance(0)
        self.manager.close()
        left = [
            call
            for call in self.reactor.getDelayedCalls()
            if call.active() and getattr(call.func, "__name__", "") == "_sweepOn"
        ]
        self.assertEqual(left, [])
