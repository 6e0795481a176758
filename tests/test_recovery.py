"""Unit tests for L{jobworker.jobs.recovery}: what crash recovery may kill."""

from __future__ import annotations

import os
import subprocess

from twisted.trial.unittest import SynchronousTestCase

from jobworker.jobs.recovery import (
    START_SLACK,
    bootTicks,
    currentBootId,
    leftovers,
    liveServerOf,
    pidReused,
    processStartTime,
    sessionMembers,
    spawnedAt,
)


def missingPid() -> int:
    """A pid no process can have (above the kernel's pid_max)."""
    with open("/proc/sys/kernel/pid_max", encoding="ascii") as f:
        return int(f.read()) + 1


class LeftoversTests(SynchronousTestCase):
    """
    L{leftovers} names a job's session only when it is provably that
    session. The "leader" here is this test process, with its real start
    time and the real boot id; the sessions table is made up.
    """

    def setUp(self) -> None:
        self.pid = os.getpid()
        start = processStartTime(self.pid)
        bootId = currentBootId()
        assert start is not None and bootId is not None
        self.start = start
        self.bootId = bootId
        self.sessions = {self.pid: [self.pid, 4242], 777: [778]}

    def test_sameLeaderSameStart(self) -> None:
        """The leader alive with the start time recorded: its whole session."""
        self.assertEqual(
            leftovers(self.pid, self.bootId, self.start, self.sessions),
            [self.pid, 4242],
        )

    def test_reusedPid(self) -> None:
        """
        A live process under the leader's pid that started outside the
        window recorded (its first tick, and START_SLACK more) is someone
        else (the pid was reused): nothing is killed.
        """
        for recorded in (self.start + 1, self.start - START_SLACK - 1):
            self.assertEqual(
                leftovers(self.pid, self.bootId, recorded, self.sessions), []
            )

    def test_startInTheWindow(self) -> None:
        """The leader started in the recorded window's last tick: its
        session."""
        self.assertEqual(
            leftovers(self.pid, self.bootId, self.start - START_SLACK, self.sessions),
            [self.pid, 4242],
        )

    def test_startUnknown(self) -> None:
        """A live leader whose start time was never recorded is not trusted."""
        self.assertEqual(leftovers(self.pid, self.bootId, None, self.sessions), [])

    def test_leaderGone(self) -> None:
        """
        With the leader gone, what is left of its session (whose id is the
        leader's pid) is returned; with the job's uid given, only what runs
        as it (another's session may have the number now: fault round 34,
        L{tests.test_review34.SessionTakenOverTests}).
        """
        gone = missingPid()
        sessions = {gone: [5001, 5002]}
        self.assertEqual(leftovers(gone, self.bootId, 12345, sessions), [5001, 5002])
        self.assertEqual(leftovers(gone, self.bootId, 12345, {}), [])

    def test_otherBoot(self) -> None:
        """Records from another boot name nothing of this one."""
        for bootId in ("another-boot", None):
            self.assertEqual(leftovers(self.pid, bootId, self.start, self.sessions), [])

    def test_noPid(self) -> None:
        """A job that never had a process has no leftovers."""
        self.assertEqual(leftovers(None, self.bootId, None, self.sessions), [])

    def test_sessionMembers(self) -> None:
        """This process is listed in its own session."""
        self.assertIn(self.pid, sessionMembers()[os.getsid(0)])


class PidReusedTests(SynchronousTestCase):
    """L{pidReused}, on real processes: this one, and a child reaped."""

    def test_sameProcess(self) -> None:
        """The process started then (within the slack) still has the pid."""
        start = processStartTime(os.getpid())
        assert start is not None
        self.assertFalse(pidReused(os.getpid(), start))
        self.assertFalse(pidReused(os.getpid(), start - START_SLACK))

    def test_anotherProcess(self) -> None:
        """A process started at another time has the pid now."""
        start = processStartTime(os.getpid())
        assert start is not None
        self.assertTrue(pidReused(os.getpid(), start - START_SLACK - 1))
        self.assertTrue(pidReused(os.getpid(), start + 1))

    def test_goneOrUnknown(self) -> None:
        """No process has the pid, or the start is unknown: not reused."""
        child = subprocess.Popen(["true"])
        child.wait()
        self.assertFalse(pidReused(child.pid, 12345))
        self.assertFalse(pidReused(os.getpid(), None))
        # The spawner announces 0 when it could not read the start time.
        self.assertFalse(pidReused(os.getpid(), 0))


class SpawnedAtTests(SynchronousTestCase):
    """
    L{spawnedAt}: the start time recorded for a job's leader without a read
    of /proc, checked against /proc for real processes.
    """

    def spawn(self) -> tuple[int, int, int]:
        """A real child (left unreaped until the test ends) and the
        L{bootTicks} readings around its spawn."""
        before = bootTicks()
        pid = os.posix_spawn("/bin/sleep", ["sleep", "5"], {})
        after = bootTicks()

        def reap() -> None:
            os.kill(pid, 9)
            os.waitpid(pid, 0)

        self.addCleanup(reap)
        return pid, before, after

    def test_theWindowHoldsTheStart(self) -> None:
        """For each of many spawns, /proc's start time lies in the window
        recorded: its first tick, or at most START_SLACK later."""
        for _ in range(50):
            pid, before, after = self.spawn()
            recorded = spawnedAt(pid, before, after)
            actual = processStartTime(pid)
            assert recorded is not None and actual is not None
            self.assertTrue(
                recorded <= actual <= recorded + START_SLACK,
                (recorded, actual, before, after),
            )

    def test_aWideWindowReadsProc(self) -> None:
        """A spawn that took longer than START_SLACK ticks is not guessed:
        the start time is read from /proc."""
        pid, before, after = self.spawn()
        self.assertEqual(
            spawnedAt(pid, before - START_SLACK - 1, after), processStartTime(pid)
        )

    def test_sameClockAsProc(self) -> None:
        """bootTicks() counts as /proc does: this process started before
        now, and a child started now shows now."""
        mine = processStartTime(os.getpid())
        assert mine is not None
        self.assertLessEqual(mine, bootTicks())
        pid, before, after = self.spawn()
        actual = processStartTime(pid)
        assert actual is not None
        self.assertTrue(before <= actual <= after, (before, actual, after))


class LiveServerOfTests(SynchronousTestCase):
    """
    L{liveServerOf}: a process whose parent is a live jobworker (its
    command line names it) other than this process is another server's.
    """

    def child(self, *argv: str) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(argv, stdout=subprocess.PIPE)

        def stop() -> None:
            process.kill()
            process.wait()

        self.addCleanup(stop)
        return process

    def grandchild(self, parent: subprocess.Popen[bytes]) -> int:
        """The pid the parent's script printed: its child's."""
        assert parent.stdout is not None
        return int(parent.stdout.readline())

    def test_parentNamedJobworker(self) -> None:
        server = self.child("sh", "-c", "sleep 30 & echo $!; wait", "jobworker")
        job = self.grandchild(server)
        self.addCleanup(os.kill, job, 9)
        self.assertEqual(liveServerOf([job]), server.pid)
        self.assertEqual(liveServerOf([missingPid(), job]), server.pid)

    def test_otherParents(self) -> None:
        """This process's own children, another program's, none."""
        own = self.child("sleep", "30")
        other = self.child("sh", "-c", "sleep 30 & echo $!; wait", "worker")
        job = self.grandchild(other)
        self.addCleanup(os.kill, job, 9)
        self.assertIsNone(liveServerOf([own.pid, job, missingPid()]))

    def test_aParentAmongThePidsCountsNot(self) -> None:
        """
        The processes of a cgroup are a job's own, which may run any
        command line (C{find / -name jobworker -exec ...}): a parent among
        them is no server.
        """
        forged = self.child("sh", "-c", "sleep 30 & echo $!; wait", "jobworker")
        job = self.grandchild(forged)
        self.addCleanup(os.kill, job, 9)
        self.assertIsNone(liveServerOf([forged.pid, job]))
        self.assertEqual(liveServerOf([job]), forged.pid)
