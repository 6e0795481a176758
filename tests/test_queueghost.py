"""
A job queued after a queued job, whose dependency's record could not be read
again once the new job's record was in the store (the second read was after
the insert): the request failed, but the job stayed in the store PENDING,
queued, and in no in-memory queue. It never started, could not be stopped
(a 500) or deleted until a restart, which then ran it (a review of the
lifecycle). The dependencies are now read before the insert, and the
queue changes nothing when working out what a job waits on fails.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from jobworker.jobs.queue import FairQueue, Waiting
from jobworker.jobs.store import StoreError
from jobworker.jobs.validation import JobRequest

from . import test_queue


class EnqueueAfterAQueuedJobTests(SynchronousTestCase):
    # (The manager's queue's own set-up, on the fake process reactor.)
    setUp = test_queue.ManagerQueueTests.setUp
    manager = test_queue.ManagerQueueTests.manager

    def request(self, **fields: Any) -> JobRequest:
        return dataclasses.replace(
            JobRequest(command="sleep", args=["9"], env={}, cwd=None), **fields
        )

    def test_readErrorAfterTheInsert(self) -> None:
        manager = self.manager(maxRunning=1)
        manager.create(self.request(), "alice")
        queued = manager.create(self.request(), "alice")
        get = manager._store.get
        reads = {"n": 0}

        def flaky(jobId: str) -> Any:
            if jobId == queued.id:
                reads["n"] += 1
                if reads["n"] == 2:  # one transient read error
                    raise StoreError("cannot read a job: disk I/O error")
            return get(jobId)

        self.patch(manager._store, "get", flaky)
        before = {r.id for r in manager.page()[0]}
        self.assertRaises(
            StoreError, manager.create, self.request(after=(queued.id,)), "bob"
        )
        made = [r for r in manager.page()[0] if r.id not in before]
        # The create failed: nothing should have been made.
        self.assertEqual(
            [],
            [(r.id, r.status.value, r.queued) for r in made],
            "a failed create left a job in the store",
        )
        queue = manager._scheduler.queue
        self.assertEqual((len(queue), queue.queuedBy("bob")), (1, 0))


class FairQueueAddTests(SynchronousTestCase):
    def test_failedAddChangesNothing(self) -> None:
        """What a job waits on could not be worked out: it is not queued."""
        queue = FairQueue()

        def broken(jobId: str) -> bool:
            raise StoreError("cannot read a job: disk I/O error")

        waiting = Waiting("j1", "bob", 0, 1, None, frozenset({"j0"}), frozenset())
        self.assertRaises(StoreError, queue.add, waiting, broken)
        self.assertEqual((len(queue), queue.queuedBy("bob")), (0, 0))
        self.assertNotIn("j1", queue)
