"""
Fault round 7: a server that died inside a user's stop grace (SIGKILL,
power) closed the job FAILED, "the worker restarted while the job ran",
its C{stopped_by} lost; a SIGTERM restart kept it C{STOPPED}. The stop is
stored when it is asked, and recovery closes such a job C{STOPPED}.
"""

from __future__ import annotations

import treq
from twisted.trial.unittest import SynchronousTestCase, TestCase

from jobworker.jobs.records import JobRecord, JobStatus

from .support import LiveServer, waitUntil
from .test_leftovers import recoveredAfterCrash


class StopStoredTests(TestCase):
    timeout = 60

    async def test_stopStoredWhenAsked(self) -> None:
        """A stop with an hour's grace: the store has who stopped the job,
        and when, while it still runs its grace."""
        server = LiveServer(self)
        job = await server.createJob("sh", "-c", "trap '' TERM; echo up; sleep 60")
        await waitUntil(
            lambda: server.manager.record(job["id"]).stdout_bytes > 0, what="the trap"
        )
        stopping = server.request(
            "POST", f"/jobs/{job['id']}/stop", body={"grace_seconds": 3600}
        )
        store = server.manager._store  # type: ignore[attr-defined]
        stored = await waitUntil(
            lambda: store.get(job["id"]).stopped_by, what="the stop stored"
        )
        self.assertEqual(stored, "alice")
        record = store.get(job["id"])
        self.assertEqual(record.status, JobStatus.RUNNING)
        self.assertIsNotNone(record.stop_requested_at)
        killed = await server.request(
            "POST", f"/jobs/{job['id']}/stop", body={"signal": "KILL"}
        )
        await treq.content(killed)
        await treq.content(await stopping)


class RecoveredStopTests(SynchronousTestCase):
    def recovered(self, stoppedBy: str | None) -> JobRecord:
        manager = recoveredAfterCrash(self, stopped_by=stoppedBy)
        return manager.record("7c3b4e02-95a9-4d4a-9f0d-8d0c8fd3c2a1")

    def test_stoppedInItsGrace(self) -> None:
        record = self.recovered("alice")
        self.assertEqual(
            (record.status, record.stopped_by), (JobStatus.STOPPED, "alice")
        )
        self.assertIn("restarted", record.error or "")

    def test_notStoppedStaysFailed(self) -> None:
        record = self.recovered(None)
        self.assertEqual(record.status, JobStatus.FAILED)
