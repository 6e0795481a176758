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


class MainExitStoredTests(SynchronousTestCase):
    """
    A job whose main process ended while what it left held its output
    pipes (the job RUNNING under their grace), and a crash then: its known
    exit was lost, the job FAILED "the worker restarted while the job ran",
    and a job after_ok of it never ran (fault round 28). The main process's
    end is stored as it comes, and recovery closes the job with it.
    """

    def recovered(self, **fields: object) -> JobRecord:
        manager = recoveredAfterCrash(self, **fields)
        return manager.record("7c3b4e02-95a9-4d4a-9f0d-8d0c8fd3c2a1")

    def test_exitZeroCompleted(self) -> None:
        record = self.recovered(exit_code=0)
        self.assertEqual(
            (record.status, record.exit_code, record.error),
            (JobStatus.COMPLETED, 0, None),
        )

    def test_exitCodeFailed(self) -> None:
        record = self.recovered(exit_code=3)
        self.assertEqual(
            (record.status, record.exit_code, record.error),
            (JobStatus.FAILED, 3, "exited with code 3"),
        )

    def test_killedFailed(self) -> None:
        record = self.recovered(signal="SIGSEGV")
        self.assertEqual(
            (record.status, record.signal, record.error),
            (JobStatus.FAILED, "SIGSEGV", "killed by signal SIGSEGV"),
        )

    def test_stoppedStaysStopped(self) -> None:
        record = self.recovered(signal="SIGTERM", stopped_by="alice")
        self.assertEqual(
            (record.status, record.signal, record.stopped_by),
            (JobStatus.STOPPED, "SIGTERM", "alice"),
        )

    def test_timedOutFailed(self) -> None:
        """
        Timed out: its main process ended (exit 0, say, on the timeout's
        TERM), stored with why, and the crash came in the grace: FAILED
        "timed out", not COMPLETED (its after_ok jobs ran: fault round 28b).
        """
        record = self.recovered(exit_code=0, error="timed out after 2 seconds")
        self.assertEqual(
            (record.status, record.exit_code, record.error),
            (JobStatus.FAILED, 0, "timed out after 2 seconds"),
        )
