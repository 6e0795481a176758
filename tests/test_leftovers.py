"""
A job's record is final once its main process has ended and its pipes are
closed; what it left (a daemon ignoring SIGTERM, its output elsewhere) gets
the stop grace, then SIGKILL. A server that died inside that grace left
them running for good (a fault round): recovery looked at unfinished
records only. Such jobs are noted in a journal until their leftovers are
gone, and a restart kills what it names.
"""

from __future__ import annotations

import os
import pwd
import subprocess
import time
from typing import Any

from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from jobworker.executors.local.executor import localJobManager
from jobworker.executors.local.leftovers import LEFTOVERS, LeftoverJournal
from jobworker.jobs.identity import DynamicUids
from jobworker.jobs.manager import JobManager
from jobworker.jobs.records import JobRecord, JobStatus
from jobworker.jobs.recovery import currentBootId, processStartTime
from jobworker.jobs.validation import JobRequest

from .fakes import FakeProcessReactor, GroupKiller

GRACE = 5.0


def recoveredAfterCrash(testCase: TestCase, **fields: Any) -> JobManager:
    """
    A server (fake reactor) that crashed with a job still recorded RUNNING
    (its record has C{fields} besides the usual), and the one started
    after it on the same state dir, recovered.
    """
    stateDir = os.path.abspath(testCase.mktemp())
    crashed = localJobManager(FakeProcessReactor(), stateDir, GRACE, GroupKiller())
    record = JobRecord(
        id="7c3b4e02-95a9-4d4a-9f0d-8d0c8fd3c2a1",
        command="sh",
        args=[],
        owner="alice",
        created_at=1.0,
        **fields,
    )
    crashed._store.insert(record)
    crashed._store._unlock()  # a crash: the record still says RUNNING
    again = localJobManager(FakeProcessReactor(), stateDir, GRACE, GroupKiller())
    testCase.addCleanup(again.close)
    again.recover()
    return again


class JournalTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.stateDir = os.path.abspath(self.mktemp())
        self.journal = os.path.join(self.stateDir, LEFTOVERS)

    def manager(self, killer: GroupKiller, reactor: FakeProcessReactor) -> object:
        manager = localJobManager(reactor, self.stateDir, GRACE, killer)
        self.addCleanup(manager.close)
        return manager

    def test_notedUntilGone(self) -> None:
        """Noted while its leftovers live, forgotten once they are gone; a
        job that ends with nothing left is never written down."""
        reactor, killer = FakeProcessReactor(), GroupKiller()
        manager = self.manager(killer, reactor)
        job = manager.create(JobRequest("true", [], {}, None), "alice")  # type: ignore[attr-defined]
        spawned = reactor.spawned[-1]
        spawned.exit(0)
        self.assertEqual(manager.record(job.id).status, JobStatus.COMPLETED)  # type: ignore[attr-defined]
        with open(self.journal) as f:
            self.assertEqual(f.read().split()[0], job.id)
        killer.groupGone(spawned.transport.pid)
        reactor.advance(GRACE)
        self.assertFalse(os.path.exists(self.journal))
        killer.exists = False
        manager.create(JobRequest("true", [], {}, None), "alice")  # type: ignore[attr-defined]
        reactor.spawned[-1].exit(0)
        self.assertFalse(os.path.exists(self.journal))

    def test_restartKillsNotedLeftovers(self) -> None:
        """A leftover noted by a server that died is killed at the restart."""
        leftover = subprocess.Popen(["sleep", "600"], start_new_session=True)
        self.addCleanup(leftover.kill)
        os.makedirs(self.stateDir)
        LeftoverJournal(self.journal).note(
            JobRecord(
                id="7c3b4e02-95a9-4d4a-9f0d-8d0c8fd3c2a1",
                command="sh",
                args=[],
                owner="alice",
                created_at=1.0,
                pid=leftover.pid,
                boot_id=currentBootId(),
                proc_start=processStartTime(leftover.pid),
            )
        )
        manager = self.manager(GroupKiller(), FakeProcessReactor())
        manager.recover()  # type: ignore[attr-defined]
        self.assertEqual(leftover.wait(10), -9)
        self.assertFalse(os.path.exists(self.journal))
        self.flushLoggedErrors()

    def test_badLinesSkipped(self) -> None:
        os.makedirs(self.stateDir)
        with open(self.journal, "w") as f:
            f.write("../../etc 1 - 0\nnot a line\n")
        self.assertEqual(LeftoverJournal(self.journal).read(), [])


class OutOfRangeTests(SynchronousTestCase):
    """
    A crashed job's process that left its session (setsid), without a
    cgroup, as a dynamic uid the restarted server no longer hands out
    (another --dynamic-uids): start-up reclaimed the range in force only,
    and it ran on for good (fault round 5). Recovery kills the processes of
    a recovered record's dynamic uid, unless a live server holds that uid.
    """

    def setUp(self) -> None:
        if os.getuid() != 0:
            raise SkipTest("running a process as another uid needs root")

    def escaped(self, uid: int) -> subprocess.Popen[bytes]:
        """A process of C{uid} (each test its own: trial -j runs them at once)."""
        process = subprocess.Popen(
            [
                "setpriv",
                f"--reuid={uid}",
                f"--regid={uid}",
                "--clear-groups",
                "sleep",
                "600",
            ],
            start_new_session=True,
        )
        self.addCleanup(process.kill)
        # Not before it is that uid (setpriv runs as root until it execs).
        for _ in range(1000):
            if os.stat(f"/proc/{process.pid}").st_uid == uid:
                return process
            time.sleep(0.01)
        raise AssertionError("the escaped process never became its uid")

    def recoverCrashed(self, uid: int) -> None:
        recoveredAfterCrash(self, run_as=f"dynamic:{uid}")
        self.flushLoggedErrors()

    def test_killed(self) -> None:
        process = self.escaped(74911)
        self.recoverCrashed(74911)
        self.assertEqual(process.wait(10), -9)

    def test_liveServersUidSpared(self) -> None:
        # Another server's job has it: handed out first, then run (a uid
        # with processes and a lock file new since the boot is not handed
        # out: the test failed on a fresh machine in the other order).
        live = DynamicUids(74912, 74912)
        self.assertEqual(live.acquire(), 74912)
        self.addCleanup(live.release, 74912)
        process = self.escaped(74912)
        self.recoverCrashed(74912)
        self.assertIsNone(process.poll())

    def test_accountSpared(self) -> None:
        """A uid that is an account now (the range moved away from it) is
        not the crashed job's to kill: every process of that user was (a
        review)."""
        nobody = pwd.getpwnam("nobody").pw_uid
        process = self.escaped(nobody)
        self.recoverCrashed(nobody)
        self.assertIsNone(process.poll())


def journalRecord(n: int, **fields: Any) -> JobRecord:
    """Job C{n}'s record, as a journal notes it (pid 100 + C{n})."""
    return JobRecord(
        id=f"7c3b4e02-95a9-4d4a-9f0d-8d0c8fd3c2a{n}",
        command="sh",
        args=[],
        owner="alice",
        created_at=1.0,
        pid=100 + n,
        **fields,
    )


class JournalFileTests(SynchronousTestCase):
    """The journal names only the jobs still noted, and never waits."""

    def record(self, n: int) -> JobRecord:
        return journalRecord(n)

    def test_doneJobsLeaveTheFile(self) -> None:
        """A line kept for a job long done (while another stayed noted) would
        have a restart kill whatever session reused its pid (a review)."""
        path = os.path.abspath(self.mktemp())
        journal = LeftoverJournal(path)
        journal.note(self.record(1))
        journal.note(self.record(2))
        journal.done(self.record(1).id)
        self.assertEqual([n.jobId for n in journal.read()], [self.record(2).id])
        journal.done(self.record(2).id)
        self.assertFalse(os.path.exists(path))

    def test_fifoNeverWaitedOn(self) -> None:
        path = os.path.abspath(self.mktemp())
        os.mkfifo(path)
        journal = LeftoverJournal(path)
        journal.note(self.record(1))  # refused at once, with a warning
        self.assertEqual(journal.read(), [])
        self.flushLoggedErrors()
