"""Unit tests for L{jobworker.executors.local.process}: one job, on a fake clock."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from typing import Any

from twisted.internet.defer import CancelledError
from twisted.internet.error import (
    ProcessDone,
    ProcessExitedAlready,
    ProcessTerminated,
)
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from jobworker.executors.local.process import (
    ABANDON_AFTER_KILL,
    GroupNumbers,
    JobProcess,
    JobProcessProtocol,
    SpawnerLost,
    childExited,
    endsByDefault,
    spawnError,
)
from jobworker.jobs.records import JobRecord, JobStatus
from jobworker.jobs.spool import OutputSpool
from jobworker.jobs.stopping import StopRequest

from .fakes import (
    FakeProcessTransport,
    GroupKiller,
    forbidRealKill,
    processExit,
    processKilled,
)

PID = 5_100_123
GRACE = 5.0
START = 1_700_000_000.0


class JobProcessTestCase(SynchronousTestCase):
    """A JobProcess on a Clock, with a fake group killer and transport."""

    def setUp(self) -> None:
        forbidRealKill(self.patch)
        self.clock = Clock()
        self.clock.advance(START)
        self.killer = GroupKiller()
        directory = self.mktemp()
        os.makedirs(directory)
        self.record = JobRecord(
            id="0b5f6c1e-3d0a-4c8e-9a43-1f0e2d3c4b5a",
            command="sh",
            args=["-c", "sleep 100"],
            owner="alice",
            created_at=START,
        )
        self.finishCalls: list[JobStatus] = []
        realFinish = self.record.finish

        def countingFinish(status: JobStatus, when: float, **kw: Any) -> None:
            self.finishCalls.append(status)
            realFinish(status, when, **kw)

        self.record.finish = countingFinish  # type: ignore[method-assign]
        self.stdout = OutputSpool(os.path.join(directory, "stdout"))
        self.stderr = OutputSpool(os.path.join(directory, "stderr"))
        self.job = JobProcess(
            self.clock, self.record, self.stdout, self.stderr, GRACE, self.killer
        )
        self.protocol = JobProcessProtocol(self.job)
        self.transport = FakeProcessTransport(PID)

    def another(self, **options: Any) -> JobProcess:
        """A JobProcess of the same record and spools, with C{options}."""
        return JobProcess(
            self.clock,
            self.record,
            self.stdout,
            self.stderr,
            GRACE,
            self.killer,
            **options,
        )

    def start(self) -> None:
        """Connect the protocol, as spawnProcess does."""
        self.protocol.makeConnection(self.transport)  # type: ignore[arg-type]

    def end(self, reason: Failure) -> None:
        """The main process is reaped and the pipes close, in Twisted's order."""
        self.protocol.processExited(reason)
        self.protocol.processEnded(reason)


class StartTests(JobProcessTestCase):
    """Connecting the protocol starts the job."""

    def test_startRecordsPidAndTime(self) -> None:
        """The pid (the group id) and start time are recorded."""
        self.clock.advance(2.5)
        self.start()
        self.assertEqual(self.record.pid, PID)
        self.assertEqual(self.record.started_at, START + 2.5)
        self.assertIs(self.record.status, JobStatus.RUNNING)

    def test_startClosesStdin(self) -> None:
        """The child's stdin is closed at once: jobs get no input."""
        self.start()
        self.assertTrue(self.transport.stdinClosed)

    def test_startSignalsNothing(self) -> None:
        """Starting sends no signal and schedules nothing."""
        self.start()
        self.assertEqual(self.killer.calls, [])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_outputGoesToSpools(self) -> None:
        """stdout and stderr bytes land in their spools, byte for byte."""
        self.start()
        self.protocol.childDataReceived(1, b"out\x00\xff")
        self.protocol.childDataReceived(2, b"err")
        self.protocol.childDataReceived(1, b"more")
        self.assertEqual(self.stdout.size, 9)
        self.assertEqual(self.stderr.size, 3)
        with open(self.stdout.path, "rb") as f:
            self.assertEqual(f.read(), b"out\x00\xffmore")
        with open(self.stderr.path, "rb") as f:
            self.assertEqual(f.read(), b"err")


class ExitTests(JobProcessTestCase):
    """How the main process's exit becomes the job's final state."""

    def setUp(self) -> None:
        super().setUp()
        self.start()

    def test_exitZeroCompleted(self) -> None:
        """Exit code 0 is COMPLETED with exit_code 0 and no error."""
        self.killer.exists = False
        self.clock.advance(3)
        self.end(Failure(ProcessDone(0)))
        self.assertIs(self.record.status, JobStatus.COMPLETED)
        self.assertEqual(self.record.exit_code, 0)
        self.assertIsNone(self.record.signal)
        self.assertIsNone(self.record.error)
        self.assertEqual(self.record.ended_at, START + 3)

    def test_exitNonZeroFailed(self) -> None:
        """A non-zero exit code is FAILED, with the code and an error."""
        self.killer.exists = False
        self.end(processExit(3))
        self.assertIs(self.record.status, JobStatus.FAILED)
        self.assertEqual(self.record.exit_code, 3)
        self.assertIsNone(self.record.signal)
        self.assertEqual(self.record.error, "exited with code 3")

    def test_killedUnrequestedFailed(self) -> None:
        """A signal nobody asked for is FAILED, naming the signal."""
        self.killer.exists = False
        self.end(processKilled(signal.SIGKILL))
        self.assertIs(self.record.status, JobStatus.FAILED)
        self.assertEqual(self.record.signal, "SIGKILL")
        self.assertIsNone(self.record.exit_code)
        self.assertEqual(self.record.error, "killed by signal SIGKILL")
        self.assertIsNone(self.record.stopped_by)

    def test_spawnerLostAsItRan(self) -> None:
        """The spawner died first (L{SpawnerLost}), the job past its gate:
        killed as it ran, and said so."""
        self.killer.exists = False
        self.end(Failure(SpawnerLost(ran=True)))
        self.assertIs(self.record.status, JobStatus.FAILED)
        self.assertEqual((self.record.signal, self.record.exit_code), ("SIGKILL", None))
        self.assertIn("the job spawner died while it ran", self.record.error or "")

    def test_spawnerLostBehindTheGate(self) -> None:
        """The spawner died first, the job still behind its gate: it never
        ran (it said "killed by signal SIGKILL", as if it had)."""
        self.killer.exists = False
        self.end(Failure(SpawnerLost(ran=False)))
        ended = self.record
        self.assertIs(ended.status, JobStatus.FAILED)
        self.assertEqual((ended.signal, ended.exit_code, ended.started_at), (None,) * 3)
        self.assertEqual(
            ended.error, "never ran: the job spawner died as it was being started"
        )

    def test_exitTerminatesGroup(self) -> None:
        """When the main process exits, its group gets SIGTERM."""
        self.killer.exists = False
        self.end(processExit(0))
        self.assertEqual(self.killer.calls, [(PID, signal.SIGTERM)])

    def test_emptyGroupNoTimer(self) -> None:
        """If the group is already gone, no SIGKILL is scheduled."""
        self.killer.exists = False
        self.end(processExit(0))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.successResultOf(self.job.whenCleanedUp())

    def test_leftoversGoneOnTermNoKill(self) -> None:
        """Leftovers that die of the SIGTERM are not SIGKILLed later."""
        self.job.mainExited(processExit(0))
        self.killer.groupGone(PID)
        self.job.pipesClosed()
        self.assertEqual(self.killer.probes, [PID])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(GRACE * 2)
        self.assertEqual(self.killer.calls, [(PID, signal.SIGTERM)])
        self.successResultOf(self.job.whenCleanedUp())

    def test_groupMembersLeftTermThenKill(self) -> None:
        """Members left in the group get SIGTERM now, SIGKILL after grace."""
        self.end(processExit(0))
        self.assertEqual(self.killer.calls, [(PID, signal.SIGTERM)])
        self.clock.advance(GRACE - 0.25)
        self.assertEqual(self.killer.calls, [(PID, signal.SIGTERM)])
        self.clock.advance(0.25)
        self.assertEqual(
            self.killer.calls, [(PID, signal.SIGTERM), (PID, signal.SIGKILL)]
        )

    def test_groupMembersLeftRecordEndsFirst(self) -> None:
        """The record ends when the main exits; cleanup waits for the KILL."""
        ended = self.job.whenEnded()
        cleaned = self.job.whenCleanedUp()
        self.end(processExit(0))
        self.assertIs(self.successResultOf(ended), self.record)
        self.assertIs(self.record.status, JobStatus.COMPLETED)
        self.assertNoResult(cleaned)
        self.assertNoResult(self.job.whenCleanedUp())
        self.clock.advance(GRACE)
        self.assertIsNone(self.successResultOf(cleaned))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_bytesCountedAtEnd(self) -> None:
        """The record's byte counts are the spools' sizes at the end."""
        self.killer.exists = False
        self.protocol.outReceived(b"12345")
        self.protocol.errReceived(b"12")
        self.end(processExit(0))
        self.assertEqual(self.record.stdout_bytes, 5)
        self.assertEqual(self.record.stderr_bytes, 2)
        self.assertTrue(self.stdout.closed)
        self.assertTrue(self.stderr.closed)

    def test_snapshotWhileRunning(self) -> None:
        """snapshot() brings the byte counters of a running job up to date."""
        self.protocol.outReceived(b"12345")
        self.protocol.errReceived(b"1")
        record = self.job.snapshot()
        self.assertIs(record, self.record)
        self.assertEqual((record.stdout_bytes, record.stderr_bytes), (5, 1))
        self.protocol.outReceived(b"67")
        self.assertEqual(self.job.snapshot().stdout_bytes, 7)

    def test_snapshotAfterEndIsFinal(self) -> None:
        """After the end, snapshot() returns the final counts unchanged."""
        self.killer.exists = False
        self.protocol.outReceived(b"abc")
        self.end(processExit(0))
        self.stdout.size = 999
        self.assertEqual(self.job.snapshot().stdout_bytes, 3)

    def test_droppedOutputCounted(self) -> None:
        """Output past the spool's cap is counted as dropped, not an error."""
        directory = self.mktemp()
        os.makedirs(directory)
        stdout = OutputSpool(os.path.join(directory, "stdout"), maxBytes=4)
        stderr = OutputSpool(os.path.join(directory, "stderr"), maxBytes=4)
        record = JobRecord("x", "yes", [], "alice", START)
        job = JobProcess(self.clock, record, stdout, stderr, GRACE, self.killer)
        protocol = JobProcessProtocol(job)
        protocol.makeConnection(FakeProcessTransport(PID + 1))  # type: ignore[arg-type]
        protocol.outReceived(b"abcdef")
        protocol.outReceived(b"gh")
        protocol.errReceived(b"xy")
        self.killer.exists = False
        protocol.processExited(processExit(0))
        protocol.processEnded(processExit(0))
        self.assertIs(record.status, JobStatus.COMPLETED)
        self.assertEqual((record.stdout_bytes, record.stdout_dropped), (4, 4))
        self.assertEqual((record.stderr_bytes, record.stderr_dropped), (2, 0))
        self.assertEqual(record.output_lost, 0)
        self.assertIsNone(record.error)
        with open(stdout.path, "rb") as f:
            self.assertEqual(f.read(), b"abcd")

    def test_lostOutputIsAnError(self) -> None:
        """Output that could not be written shows as an error on success."""
        self.killer.exists = False
        self.stdout.close()
        self.protocol.outReceived(b"abc")
        self.end(processExit(0))
        self.assertIs(self.record.status, JobStatus.COMPLETED)
        self.assertEqual(
            self.record.error, "3 bytes of output could not be written to disk"
        )
        self.assertEqual(self.record.output_lost, 3)

    def test_exitErrorWinsOverLostOutput(self) -> None:
        """A failure's own error is kept even when output was lost too."""
        self.killer.exists = False
        self.stdout.close()
        self.protocol.outReceived(b"abc")
        self.end(processExit(2))
        self.assertEqual(self.record.error, "exited with code 2")


class ClockStepEndTests(JobProcessTestCase):
    """
    A job that ends while the wall clock is stepped back: its end time is
    not taken from the stepped clock (retention counted from it removed
    the job early, and its record said it ended before it started: fault
    round 27).
    """

    def setUp(self) -> None:
        super().setUp()
        #: The elapsed-time clock, which no step moves: the test moves it.
        self.elapsed = 500.0
        self.job = self.another(elapsed=lambda: self.elapsed)
        self.protocol = JobProcessProtocol(self.job)
        self.killer.exists = False

    def passes(self, seconds: float) -> None:
        """Real time passes: both clocks move."""
        self.elapsed += seconds
        self.clock.advance(seconds)

    def test_endDuringAStepBack(self) -> None:
        """
        Started, ran 10 minutes, then the clock stepped back an hour and
        the job ended a minute later: it ended 11 minutes after it started.
        """
        self.start()
        self.passes(600)
        self.clock.rightNow -= 3600  # the step back
        self.passes(60)
        self.end(Failure(ProcessDone(0)))
        self.assertEqual(self.record.ended_at, START + 660)
        self.assertEqual(self.record.started_at, START)

    def test_endAfterAStepForward(self) -> None:
        """A step forward is the wall clock's to say (it may be the fix)."""
        self.start()
        self.passes(10)
        self.clock.advance(3600)
        self.end(Failure(ProcessDone(0)))
        self.assertEqual(self.record.ended_at, START + 3610)

    def test_slewNotTakenForAStep(self) -> None:
        """
        A wall clock slewed behind the elapsed one (NTP slews at most
        500 ppm) keeps its own end time.
        """
        self.start()
        self.elapsed += 86400
        self.clock.advance(86400 - 40)  # 463 ppm slower for a day
        self.end(Failure(ProcessDone(0)))
        self.assertEqual(self.record.ended_at, START + 86400 - 40)

    def test_endDuringASmallStepBack(self) -> None:
        """
        A step back of 3 s (under the slack a slew is given) past the
        start: the end is the start plus the time elapsed, not the start
        (a 1.5 s job read 0.0 s: fault round 31).
        """
        self.start()
        self.passes(1.5)
        self.clock.rightNow -= 3
        self.end(Failure(ProcessDone(0)))
        self.assertEqual(self.record.ended_at, START + 1.5)

    def test_neverStartedBeforeItWasCreated(self) -> None:
        """A step back between its creation and its start: started as
        created, not before (a queued job started 1.7 s before it was
        created: fault round 31)."""
        self.record.created_at = self.clock.seconds()
        self.clock.rightNow -= 2
        self.start()
        self.assertEqual(self.record.started_at, self.record.created_at)

    def test_neverBeforeItsStart(self) -> None:
        """
        With no elapsed time to go by, an end is still never before the
        start.
        """
        self.start()
        self.clock.rightNow -= 30
        self.end(Failure(ProcessDone(0)))
        self.assertEqual(self.record.ended_at, START)


class FinishOnceTests(JobProcessTestCase):
    """The record is finished exactly once, whatever the event order."""

    def setUp(self) -> None:
        super().setUp()
        self.start()
        self.killer.exists = False

    def test_exitedThenPipesClosed(self) -> None:
        """mainExited then pipesClosed: ends at the second, once."""
        ended = self.job.whenEnded()
        self.job.mainExited(processExit(0))
        self.assertIs(self.record.status, JobStatus.RUNNING)
        self.assertNoResult(ended)
        self.job.pipesClosed()
        self.assertEqual(self.finishCalls, [JobStatus.COMPLETED])
        self.successResultOf(ended)

    def test_pipesClosedThenExited(self) -> None:
        """pipesClosed then mainExited: ends at the second, once."""
        ended = self.job.whenEnded()
        self.job.pipesClosed()
        self.assertIs(self.record.status, JobStatus.RUNNING)
        self.assertNoResult(ended)
        self.job.mainExited(processExit(1))
        self.assertEqual(self.finishCalls, [JobStatus.FAILED])
        self.assertEqual(self.record.exit_code, 1)
        self.successResultOf(ended)

    def test_repeatedEventsFinishOnce(self) -> None:
        """Repeated end events do not finish the record again."""
        self.job.mainExited(processExit(0))
        self.job.pipesClosed()
        self.job.pipesClosed()
        self.job.mainExited(processExit(0))
        self.assertEqual(self.finishCalls, [JobStatus.COMPLETED])

    def test_whenEndedAfterEnd(self) -> None:
        """whenEnded after the end fires at once with the record."""
        self.job.mainExited(processExit(0))
        self.job.pipesClosed()
        self.assertIs(self.successResultOf(self.job.whenEnded()), self.record)
        self.assertIsNone(self.successResultOf(self.job.whenCleanedUp()))

    def test_cancelledWaiterIsForgotten(self) -> None:
        """A cancelled whenEnded waiter is dropped; the end still works."""
        cancelled = self.job.whenEnded()
        kept = self.job.whenEnded()
        cancelled.cancel()
        self.failureResultOf(cancelled, CancelledError)
        self.job.mainExited(processExit(0))
        self.job.pipesClosed()
        self.assertIs(self.successResultOf(kept), self.record)


class GroupNumberTests(JobProcessTestCase):
    """
    Without a cgroup a job is signalled by its group number, its leader's
    pid. Once that number is a later job's leader (the pid came back), the
    earlier job never signals it again.
    """

    def setUp(self) -> None:
        super().setUp()
        #: Pids another process has now, and what the jobs asked.
        self.reused: set[int] = set()
        self.asked: list[tuple[int, int | None]] = []
        self.groups = GroupNumbers(self.pidReused)
        self.job = self.another(groups=self.groups)
        self.protocol = JobProcessProtocol(self.job)
        self.start()

    def pidReused(self, pid: int, start: int | None) -> bool:
        self.asked.append((pid, start))
        return pid in self.reused

    def later(self) -> tuple[JobProcess, GroupKiller]:
        """A later job whose leader has the same pid (its own fake killer)."""
        directory = self.mktemp()
        os.makedirs(directory)
        record = JobRecord(
            id="5d1c6a2e-0f3b-4b7d-8e21-9c4a7f0b3d16",
            command="sh",
            args=[],
            owner="bob",
            created_at=START,
        )
        killer = GroupKiller()
        job = JobProcess(
            self.clock,
            record,
            OutputSpool(os.path.join(directory, "stdout")),
            OutputSpool(os.path.join(directory, "stderr")),
            GRACE,
            killer,
            groups=self.groups,
        )
        JobProcessProtocol(job).makeConnection(FakeProcessTransport(PID))  # type: ignore[arg-type]
        return job, killer

    def test_ownNumberSignalled(self) -> None:
        """Alone, the job's end sends its group SIGTERM, then SIGKILL."""
        self.end(Failure(ProcessDone(0)))
        self.clock.advance(GRACE)
        self.assertEqual(self.killer.signalsTo(PID), [signal.SIGTERM, signal.SIGKILL])
        self.assertEqual(len(self.groups), 0)

    def test_laterLeaderTakesTheNumber(self) -> None:
        """
        The leader was reaped and its pid is a later job's leader before
        the earlier end is read: that end signals nothing, and the job is
        cleaned up at once; the later job's group is still signalled.
        """
        later, laterKiller = self.later()
        self.end(Failure(ProcessDone(0)))
        self.assertEqual(self.killer.calls, [])
        self.assertIs(self.record.status, JobStatus.COMPLETED)
        self.successResultOf(self.job.whenCleanedUp())
        later.stop("bob")
        self.assertEqual(laterKiller.signalsTo(PID), [signal.SIGTERM])

    def test_pidTakenByAnotherProcess(self) -> None:
        """
        The leader's pid is another process's now (not a job's): the end
        signals nothing, and the job is cleaned up at once.
        """
        self.reused.add(PID)
        self.record.proc_start = 4242
        self.end(Failure(ProcessDone(0)))
        self.assertEqual(self.killer.calls, [])
        self.assertEqual(self.asked[0], (PID, 4242))
        self.successResultOf(self.job.whenCleanedUp())

    def test_numberGivenBackStaysGone(self) -> None:
        """
        In its grace the earlier job's group empties, a later job gets the
        number and is done with it: the grace's end sends no SIGKILL.
        """
        self.end(Failure(ProcessDone(0)))
        self.assertEqual(self.killer.signalsTo(PID), [signal.SIGTERM])
        later, laterKiller = self.later()
        laterKiller.exists = False  # nothing of it left: cleaned up at its end
        later.mainExited(processExit(0))
        later.pipesClosed()
        self.successResultOf(later.whenCleanedUp())
        self.clock.advance(GRACE)
        self.assertEqual(self.killer.signalsTo(PID), [signal.SIGTERM])
        self.successResultOf(self.job.whenCleanedUp())


class StopTests(JobProcessTestCase):
    """stop(): SIGTERM to the group, SIGKILL after the grace period."""

    def setUp(self) -> None:
        super().setUp()
        self.start()

    def test_stopSendsTermToGroup(self) -> None:
        """stop() sends SIGTERM to the job's process group at once."""
        self.job.stop("ada")
        self.assertEqual(self.killer.calls, [(PID, signal.SIGTERM)])
        self.assertEqual(self.record.stopped_by, "ada")
        self.assertEqual(self.transport.signals, [])

    def test_stopWaitsForEnd(self) -> None:
        """stop()'s Deferred has no result while the job runs."""
        d = self.job.stop("ada")
        self.assertNoResult(d)
        self.assertIs(self.record.status, JobStatus.RUNNING)

    def test_stopEscalatesToKill(self) -> None:
        """SIGKILL goes to the group exactly C{grace} seconds after SIGTERM."""
        self.job.stop("ada")
        [timer] = self.clock.getDelayedCalls()
        self.assertEqual(timer.getTime(), START + GRACE)
        self.clock.advance(GRACE - 0.25)
        self.assertEqual(self.killer.signalsTo(PID), [signal.SIGTERM])
        self.clock.advance(0.25)
        self.assertEqual(self.killer.signalsTo(PID), [signal.SIGTERM, signal.SIGKILL])

    def test_stopAfterTheMainExitKeepsItsStatus(self) -> None:
        """
        A stop that comes after the main process ended on its own, while
        the pipes it left are still held open (the job is not over yet),
        ends the leftovers but not the job's own status: exit 0 stays
        COMPLETED (it was STOPPED, "exited with code 0"), and a job that
        depends on it with after_ok still runs.
        """
        self.job.mainExited(processExit(0))
        ended = self.job.whenEnded()
        self.assertNoResult(ended)
        stopped = self.job.stop("alice")
        self.assertIsNone(self.record.stopped_by)
        self.job.pipesClosed()
        self.assertIs(self.successResultOf(stopped), self.record)
        self.assertIs(self.record.status, JobStatus.COMPLETED)
        self.assertEqual(self.record.exit_code, 0)

    def test_shorterGraceWhileLeftoversHoldThePipes(self) -> None:
        """
        A user stopped a job with an hour's grace; its main process ended
        on the TERM, what it left ignores TERM and holds the pipes (the job
        is not over). A second stop with a grace of 5 s kills them 5 s on,
        without a second TERM: it waited out the hour (jw's stop with it).
        """
        self.job.stop("alice", StopRequest(grace=3600.0))
        self.job.mainExited(processKilled(signal.SIGTERM))
        self.assertIs(self.record.status, JobStatus.RUNNING)
        sent = self.killer.signalsTo(PID)
        second = self.job.stop("alice", StopRequest(grace=5.0))
        self.assertEqual(self.killer.signalsTo(PID), sent)
        self.clock.advance(5.0)
        self.assertEqual(self.killer.signalsTo(PID), [*sent, signal.SIGKILL])
        self.killer.exists = False
        self.job.pipesClosed()
        self.assertIs(self.successResultOf(second).status, JobStatus.STOPPED)

    def test_leftoversOfAnEndedJobGetTheServersGraceAtMost(self) -> None:
        """
        A stop with an hour's grace; the main process ends on the TERM and
        the job ends (its pipes closed), what it left ignores TERM: those
        leftovers are killed the server's grace after the end, not the
        hour on. They held their dynamic uid for the hour, the job ended
        (attacker round 28: one user held every uid).
        """
        self.job.stop("alice", StopRequest(grace=3600.0))
        self.clock.advance(2.0)
        self.end(processKilled(signal.SIGTERM))
        self.assertIs(self.record.status, JobStatus.STOPPED)
        cleaned = self.job.whenCleanedUp()
        self.clock.advance(GRACE - 0.25)
        self.assertNotIn(signal.SIGKILL, self.killer.signalsTo(PID))
        self.clock.advance(0.25)
        # (TERM at the stop, TERM to what is left at the main's exit, KILL.)
        self.assertEqual(
            self.killer.signalsTo(PID), [signal.SIGTERM, signal.SIGTERM, signal.SIGKILL]
        )
        self.assertIsNone(self.successResultOf(cleaned))

    def test_harderStopAfterTheEndReachesLeftovers(self) -> None:
        """
        The job ended, its leftovers still under their grace: a KILL (an
        Admin's C{--kill}) kills them at once (it was a 409 and nothing).
        """
        self.job.stop("alice")
        self.end(processKilled(signal.SIGTERM))
        self.assertIs(self.record.status, JobStatus.STOPPED)
        sent = self.killer.signalsTo(PID)
        self.assertNotIn(signal.SIGKILL, sent)
        # No harder than what they are under: nothing held, and it says so.
        self.assertFalse(self.job.endLeftovers(StopRequest()))
        self.assertTrue(self.job.endLeftovers(StopRequest(signal=signal.SIGKILL)))
        self.assertEqual(self.killer.signalsTo(PID), [*sent, signal.SIGKILL])
        self.assertIsNone(self.successResultOf(self.job.whenCleanedUp()))
        self.assertFalse(self.job.endLeftovers(StopRequest(signal=signal.SIGKILL)))

    def test_mainExitStoredWhileLeftoversHoldThePipes(self) -> None:
        """
        The main process ended (exit 0), what it left holds the pipes: the
        record, still RUNNING, is stored with that exit at once, so that a
        crash in the leftovers' grace keeps it (fault round 28).
        """
        stored: list[tuple[JobStatus, int | None]] = []
        self.job.onStop = lambda record: stored.append(
            (record.status, record.exit_code)
        )
        self.job.mainExited(processExit(0))
        self.assertEqual(stored, [(JobStatus.RUNNING, 0)])

    def test_timedOutMainExitStoredWithWhy(self) -> None:
        """
        A job that timed out, whose main process then ended with leftovers
        holding the pipes: its end is stored with why it failed (fault
        round 28b: recovered COMPLETED after a crash).
        """
        job = self.another(timeout=2.0)
        stored: list[tuple[int | None, str | None, str | None]] = []
        job.onStop = lambda record: stored.append(
            (record.exit_code, record.signal, record.error)
        )
        JobProcessProtocol(job).makeConnection(self.transport)  # type: ignore[arg-type]
        self.clock.advance(2.0)
        job.mainExited(processKilled(signal.SIGTERM))
        # (Stored as the timeout fired too: fault round 31.)
        self.assertEqual(
            stored,
            [
                (None, None, "timed out after 2 seconds"),
                (None, "SIGTERM", "timed out after 2 seconds"),
            ],
        )

    def test_mainExitStoredWithoutACgroupAMomentOn(self) -> None:
        """
        No cgroup, and nothing left in the job's group to signal, yet its
        pipes are held (a leftover left the session): the end is stored a
        moment on if they still are (fault round 28b), not at once (most
        jobs' pipes close a turn after their exit is reaped).
        """
        stored: list[int | None] = []
        self.job.onStop = lambda record: stored.append(record.exit_code)
        self.killer.exists = False
        self.job.mainExited(processExit(0))
        self.assertEqual(stored, [])
        self.clock.advance(1.0)
        self.assertEqual(stored, [0])

    def test_mainExitNotStoredWhenNothingIsLeft(self) -> None:
        """A job whose group went with its main process: nothing extra stored."""
        stored: list[JobRecord] = []
        self.job.onStop = stored.append
        self.killer.exists = False
        self.job.mainExited(processExit(0))
        self.job.pipesClosed()
        self.clock.advance(5.0)
        self.assertEqual(stored, [])

    def test_shorterGraceAfterTheMainExitOnItsOwn(self) -> None:
        """
        The main process ended on its own and its leftovers hold the pipes
        (TERM sent to them, KILL due the server's grace on): a stop with a
        shorter grace kills them then, and sends no second TERM.
        """
        self.job.mainExited(processExit(0))
        self.assertEqual(self.killer.signalsTo(PID), [signal.SIGTERM])
        self.job.stop("alice", StopRequest(grace=1.0))
        self.assertEqual(self.killer.signalsTo(PID), [signal.SIGTERM])
        self.clock.advance(1.0)
        self.assertEqual(self.killer.signalsTo(PID), [signal.SIGTERM, signal.SIGKILL])

    def test_timeoutAfterTheMainExitKeepsItsStatus(self) -> None:
        """
        A timeout that passes after the main process ended on its own (in
        time), while leftovers still hold its pipes, is no timeout of the
        job: exit 0 stays COMPLETED (it was FAILED "timed out", exit 0).
        """
        job = self.another(timeout=10.0)
        JobProcessProtocol(job).makeConnection(self.transport)  # type: ignore[arg-type]
        self.clock.advance(9)
        job.mainExited(processExit(0))
        self.clock.advance(1.5)
        job.pipesClosed()
        self.assertEqual(
            (self.record.status, self.record.exit_code, self.record.error),
            (JobStatus.COMPLETED, 0, None),
        )

    def test_stopTwiceSignalsOnce(self) -> None:
        """A second stop() sends nothing more and keeps the first stopper."""
        first = self.job.stop("alice")
        second = self.job.stop("ada")
        self.assertEqual(self.killer.calls, [(PID, signal.SIGTERM)])
        self.assertEqual(self.record.stopped_by, "alice")
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.killer.exists = False
        self.end(processKilled(signal.SIGTERM))
        self.assertIs(self.successResultOf(first), self.record)
        self.assertIs(self.successResultOf(second), self.record)

    def test_stopThenExitOnTerm(self) -> None:
        """A job that exits on SIGTERM ends STOPPED, naming who stopped it."""
        d = self.job.stop("ada")
        self.killer.exists = False
        self.clock.advance(1)
        self.end(processKilled(signal.SIGTERM))
        record = self.successResultOf(d)
        self.assertIs(record, self.record)
        self.assertIs(record.status, JobStatus.STOPPED)
        self.assertEqual(record.stopped_by, "ada")
        self.assertEqual(record.signal, "SIGTERM")
        self.assertIsNone(record.exit_code)
        self.assertIsNone(record.error)
        self.assertEqual(record.ended_at, START + 1)
        self.assertEqual(self.finishCalls, [JobStatus.STOPPED])

    def test_stopThenExitOnTermSendsNoKill(self) -> None:
        """Once the stopped job ended and its group is gone, no SIGKILL follows."""
        self.job.stop("ada")
        self.killer.exists = False
        self.end(processKilled(signal.SIGTERM))
        self.clock.advance(GRACE * 2)
        self.assertNotIn(signal.SIGKILL, self.killer.signalsTo(PID))
        self.assertEqual(self.transport.lostConnection, 0)
        self.assertEqual(self.finishCalls, [JobStatus.STOPPED])

    def test_stopThenExitOnTermCleansUp(self) -> None:
        """A stopped job whose group is gone is cleaned up when it ends."""
        cleaned = self.job.whenCleanedUp()
        self.job.stop("ada")
        self.killer.exists = False
        self.end(processKilled(signal.SIGTERM))
        self.assertIsNone(self.successResultOf(cleaned))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stopCleanExitIsStillStopped(self) -> None:
        """A stopped job that exits 0 on SIGTERM is STOPPED, not COMPLETED."""
        self.job.stop("alice")
        self.killer.exists = False
        self.end(processExit(0))
        self.assertIs(self.record.status, JobStatus.STOPPED)
        self.assertEqual(self.record.exit_code, 0)
        self.assertIsNone(self.record.error)

    def test_stopIgnoringTermIsKilled(self) -> None:
        """A job ignoring SIGTERM is killed after grace and ends STOPPED."""
        d = self.job.stop("ada")
        self.clock.advance(GRACE)
        self.assertNoResult(d)
        self.killer.exists = False
        self.end(processKilled(signal.SIGKILL))
        record = self.successResultOf(d)
        self.assertIs(record.status, JobStatus.STOPPED)
        self.assertEqual(record.signal, "SIGKILL")
        self.assertEqual(record.stopped_by, "ada")
        self.assertIsNone(record.error)

    def test_cleanedUpAfterKill(self) -> None:
        """whenCleanedUp fires when the killed job has ended."""
        cleaned = self.job.whenCleanedUp()
        self.job.stop("ada")
        self.clock.advance(GRACE)
        self.assertNoResult(cleaned)
        self.killer.exists = False
        self.end(processKilled(signal.SIGKILL))
        self.successResultOf(cleaned)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stopBeforeSetsidSignalsChild(self) -> None:
        """Before the group exists, stop() signals the (unreaped) child itself."""
        self.killer.exists = False
        d = self.job.stop("ada")
        self.assertEqual(self.killer.calls, [(PID, signal.SIGTERM)])
        self.assertEqual(self.transport.signals, [signal.SIGTERM])
        self.clock.advance(GRACE)
        self.assertEqual(self.transport.signals, [signal.SIGTERM, signal.SIGKILL])
        self.assertNoResult(d)
        self.end(processKilled(signal.SIGKILL))
        self.assertIs(self.successResultOf(d).status, JobStatus.STOPPED)

    def test_stopChildAlreadyGone(self) -> None:
        """If neither group nor child can be signalled, no KILL is scheduled."""
        self.killer.exists = False
        self.transport.signalError = ProcessExitedAlready()
        d = self.job.stop("ada")
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertNoResult(d)
        self.end(processExit(0))
        self.assertIs(self.successResultOf(d).status, JobStatus.STOPPED)

    def test_exitedChildNeverSignalledDirectly(self) -> None:
        """Once the main process was reaped, its pid is never signalled."""
        self.killer.exists = False
        self.job.mainExited(processExit(0))
        self.job.stop("ada")
        self.clock.advance(GRACE * 2)
        self.assertEqual(self.transport.signals, [])

    def test_stopBeforeStartSignalsNothing(self) -> None:
        """stop() of a job with no process yet signals nobody."""
        job = JobProcess(
            self.clock,
            JobRecord("x", "true", [], "alice", START),
            self.stdout,
            self.stderr,
            GRACE,
            self.killer,
        )
        self.killer.calls.clear()
        job.stop("ada")
        self.assertEqual(self.killer.calls, [])
        self.assertEqual(job.record.stopped_by, "ada")


class TimeoutThenStopTests(JobProcessTestCase):
    """
    A stop while a timeout is ending the job (its TERM sent, its grace
    running) is a second stop: it was taken for the first (review round
    29): its signal sent again, a shorter grace ignored, and the job ended
    STOPPED by the user, not FAILED "timed out".
    """

    def timedOut(self) -> JobProcess:
        job = self.another(timeout=10.0)
        self.protocol = JobProcessProtocol(job)
        self.start()
        self.clock.advance(10)  # TERM sent, KILL due GRACE on
        self.assertEqual(self.killer.signalsTo(PID), [signal.SIGTERM])
        return job

    def killedAtLast(self) -> None:
        self.killer.exists = False
        self.end(processKilled(signal.SIGKILL))

    def test_aShorterGraceHolds(self) -> None:
        job = self.timedOut()
        job.stop("alice", StopRequest(grace=1.0))
        self.clock.advance(1.0)
        self.assertEqual(self.killer.signalsTo(PID), [signal.SIGTERM, signal.SIGKILL])

    def test_itsSignalIsNotSentAgain(self) -> None:
        job = self.timedOut()
        job.stop("alice", StopRequest(signal=signal.SIGINT))
        self.assertEqual(self.killer.signalsTo(PID), [signal.SIGTERM])

    def test_theJobStillTimedOut(self) -> None:
        job = self.timedOut()
        stopped = job.stop("alice")
        self.clock.advance(GRACE)
        self.killedAtLast()
        self.assertEqual(
            (self.record.status, self.record.stopped_by, self.record.error),
            (JobStatus.FAILED, None, "timed out after 10 seconds"),
        )
        self.assertIs(self.successResultOf(stopped), self.record)

    def test_aShutdownMeanwhileToo(self) -> None:
        job = self.timedOut()
        job.stopForShutdown()
        self.assertEqual(self.killer.signalsTo(PID), [signal.SIGTERM])
        self.clock.advance(GRACE)
        self.killedAtLast()
        self.assertEqual(
            (self.record.status, self.record.stopped_by, self.record.error),
            (JobStatus.FAILED, None, "timed out after 10 seconds"),
        )

    def test_aTimeoutDuringAUsersLongerGrace(self) -> None:
        """
        The other way round: a user's stop with an hour's grace, then the
        timeout: no second TERM; the timeout bounds the run, so KILL comes
        the server's grace on; the job stays the user's STOPPED.
        """
        job = self.another(timeout=10.0)
        self.protocol = JobProcessProtocol(job)
        self.start()
        job.stop("alice", StopRequest(grace=3600.0))
        self.clock.advance(10)
        self.assertEqual(self.killer.signalsTo(PID), [signal.SIGTERM])
        self.clock.advance(GRACE)
        self.assertEqual(self.killer.signalsTo(PID), [signal.SIGTERM, signal.SIGKILL])
        self.killedAtLast()
        self.assertEqual(
            (self.record.status, self.record.stopped_by, self.record.error),
            (JobStatus.STOPPED, "alice", None),
        )


class StopAsItExitsTests(JobProcessTestCase):
    """
    A stop whose signal reaches the main process as it exits on its own
    (the pidfd has not said so yet): its exit stands (review round 29: the
    job ended STOPPED with exit 0 and no signal). Told by whether the
    signal would have ended it by its default action.
    """

    def judged(self, endsBy: bool | None) -> JobProcess:
        job = self.another(endsBy=lambda pid, signum: endsBy)
        self.protocol = JobProcessProtocol(job)
        self.start()
        return job

    def ended(self, reason: Any) -> tuple[JobStatus, str | None, int | None]:
        self.killer.exists = False
        self.end(reason)
        return self.record.status, self.record.stopped_by, self.record.exit_code

    def test_anExitTheSignalCouldNotHaveMadeStands(self) -> None:
        self.judged(True).stop("alice")
        self.assertEqual(self.ended(processExit(0)), (JobStatus.COMPLETED, None, 0))
        self.assertIsNone(self.record.stop_requested_at)

    def test_aFailingExitStandsToo(self) -> None:
        self.judged(True).stop("alice")
        self.assertEqual(self.ended(processExit(3)), (JobStatus.FAILED, None, 3))

    def test_killedByTheStopIsStopped(self) -> None:
        self.judged(True).stop("alice")
        self.assertEqual(
            self.ended(processKilled(signal.SIGTERM)),
            (JobStatus.STOPPED, "alice", None),
        )

    def test_aJobThatCaughtTheSignalIsStopped(self) -> None:
        """It caught TERM, cleaned up and exited 0: the stop ended it."""
        self.judged(False).stop("alice")
        self.assertEqual(self.ended(processExit(0)), (JobStatus.STOPPED, "alice", 0))

    def test_notKnownIsStopped(self) -> None:
        self.judged(None).stop("alice")
        self.assertEqual(self.ended(processExit(0)), (JobStatus.STOPPED, "alice", 0))


class TimeoutAsItEndsTests(JobProcessTestCase):
    """
    A job that ended in time, its end not read yet when its timeout came
    (the server or the spawner stopped a while: the timer ran first at
    SIGCONT): no timeout; its exit stands (it was FAILED "timed out", exit
    0, and its after_ok jobs never ran: fault round 29).
    """

    def test_exitedUnreadNoTimeout(self) -> None:
        job = self.another(timeout=6.0)
        self.transport.exited = lambda: True  # type: ignore[attr-defined]
        self.protocol = JobProcessProtocol(job)
        self.start()
        self.clock.advance(6.0)
        self.assertEqual(self.killer.calls, [])
        self.killer.exists = False
        self.end(processExit(0))
        self.assertEqual(
            (self.record.status, self.record.exit_code, self.record.error),
            (JobStatus.COMPLETED, 0, None),
        )

    def test_stillRunningTimesOut(self) -> None:
        """(Control: one that runs on is stopped by its timeout.)"""
        job = self.another(timeout=6.0)
        self.transport.exited = lambda: False  # type: ignore[attr-defined]
        self.protocol = JobProcessProtocol(job)
        self.start()
        self.clock.advance(6.0)
        self.assertEqual(self.killer.signalsTo(PID), [signal.SIGTERM])

    def test_theServersOwnChild(self) -> None:
        """
        Without the spawner (its transport says nothing), the child is
        asked without being reaped (C{waitid}, C{WNOWAIT}): its reaper
        still gets its status.
        """
        process = subprocess.Popen(["true"])
        self.addCleanup(process.wait)
        for _ in range(500):
            if childExited(process.pid):
                break
            time.sleep(0.01)
        else:
            self.fail("true never ended")
        self.assertEqual(process.wait(), 0)
        self.assertFalse(childExited(process.pid))  # reaped: no child now
        self.assertFalse(childExited(PID))


def _defaultInterrupts() -> None:
    for number in (signal.SIGINT, signal.SIGQUIT):
        signal.signal(number, signal.SIG_DFL)


class EndsByDefaultTests(SynchronousTestCase):
    """L{endsByDefault} on real processes."""

    def child(self, script: str) -> subprocess.Popen[bytes]:
        # (INT and QUIT as a terminal's shell has them: a suite started in
        # the background of a non-interactive shell ignores them, and its
        # children inherit that, which no trap can undo.)
        process = subprocess.Popen(
            ["sh", "-c", script],
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            preexec_fn=_defaultInterrupts,
        )
        self.addCleanup(process.wait)
        self.addCleanup(process.kill)
        assert process.stdout is not None
        self.assertEqual(process.stdout.readline(), b"ready\n")
        return process

    def slept(self, process: subprocess.Popen[bytes]) -> int:
        """Its pid once it is C{sleep} (the shell may block signals a
        moment around its exec)."""
        for _ in range(500):
            with open(f"/proc/{process.pid}/comm") as f:
                if f.read().strip() == "sleep":
                    return process.pid
            time.sleep(0.01)
        self.fail("the child never became sleep")

    def test_defaultDisposition(self) -> None:
        pid = self.slept(self.child("echo ready; exec sleep 60"))
        self.assertIs(endsByDefault(pid, signal.SIGTERM), True)
        self.assertIs(endsByDefault(pid, signal.SIGCHLD), False)

    def test_ignored(self) -> None:
        pid = self.slept(self.child('trap "" TERM; echo ready; exec sleep 60'))
        self.assertIs(endsByDefault(pid, signal.SIGTERM), False)
        self.assertIs(endsByDefault(pid, signal.SIGINT), True)
        self.assertIs(endsByDefault(pid, signal.SIGKILL), True)

    def test_caught(self) -> None:
        process = self.child(
            "trap 'exit 0' TERM; echo ready; while :; do sleep 1; done"
        )
        self.assertIs(endsByDefault(process.pid, signal.SIGTERM), False)

    def test_gone(self) -> None:
        process = subprocess.Popen(["true"])
        process.wait()
        self.assertIsNone(endsByDefault(process.pid, signal.SIGTERM))


class AbandonTests(JobProcessTestCase):
    """Pipes held open by an escaped process are abandoned after SIGKILL."""

    def setUp(self) -> None:
        super().setUp()
        self.start()

    def test_abandonOneSecondAfterKill(self) -> None:
        """loseConnection is called ABANDON_AFTER_KILL seconds after SIGKILL."""
        self.assertEqual(ABANDON_AFTER_KILL, 1.0)
        d = self.job.stop("ada")
        self.clock.advance(GRACE)
        self.job.mainExited(processKilled(signal.SIGKILL))
        self.clock.advance(ABANDON_AFTER_KILL - 0.25)
        self.assertEqual(self.transport.lostConnection, 0)
        self.clock.advance(0.25)
        self.assertEqual(self.transport.lostConnection, 1)
        self.assertNoResult(d)
        self.job.pipesClosed()
        record = self.successResultOf(d)
        self.assertIs(record.status, JobStatus.STOPPED)
        self.assertEqual(record.signal, "SIGKILL")

    def test_abandonOnlyOnce(self) -> None:
        """The abandon timer fires once; nothing is left scheduled after it."""
        self.job.stop("ada")
        self.clock.advance(GRACE)
        self.clock.advance(ABANDON_AFTER_KILL * 10)
        self.assertEqual(self.transport.lostConnection, 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_noAbandonWhenPipesClose(self) -> None:
        """If the job ends in time, the abandon timer is cancelled."""
        cleaned = self.job.whenCleanedUp()
        self.job.stop("ada")
        self.clock.advance(GRACE)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.killer.exists = False
        self.end(processKilled(signal.SIGKILL))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(ABANDON_AFTER_KILL * 2)
        self.assertEqual(self.transport.lostConnection, 0)
        self.successResultOf(cleaned)

    def test_noAbandonIfPipesAlreadyClosed(self) -> None:
        """Pipes already closed (main not yet reaped) are not abandoned."""
        self.job.stop("ada")
        self.job.pipesClosed()
        self.clock.advance(GRACE + ABANDON_AFTER_KILL)
        self.assertEqual(self.transport.lostConnection, 0)

    def test_abandonedWhenOnlyALeaverHoldsThem(self) -> None:
        """
        Without a cgroup: the main process exited, its group is empty, and
        a process that left its session (setsid) holds the pipes. Nothing
        was signalled, so no SIGKILL came, and no abandon after it: the job
        stayed RUNNING for good (no timeout, a stop never answered, the
        shutdown waited; streams round 23). The pipes are abandoned a grace
        and a second after the exit, as after a SIGKILL; a stop meanwhile
        answers then; no SIGKILL is sent (the group's number may be reused).
        """
        self.killer.exists = False  # the group is empty
        self.job.mainExited(processExit(0))
        stopped = self.job.stop("ada")
        self.clock.advance(GRACE + ABANDON_AFTER_KILL - 0.25)
        self.assertEqual(self.transport.lostConnection, 0)
        self.clock.advance(0.25)
        self.assertEqual(self.transport.lostConnection, 1)
        self.job.pipesClosed()
        record = self.successResultOf(stopped)
        self.assertIs(record.status, JobStatus.COMPLETED)  # (it exited 0 first)
        self.assertNotIn(signal.SIGKILL, self.killer.signalsTo(PID))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_shorterGraceAbandonsSooner(self) -> None:
        """
        The same, with a stop whose grace is shorter than the server's:
        the pipes are abandoned that grace and a second after it (a second
        stop with a shorter grace was not heeded: a review).
        """
        self.killer.exists = False  # the group is empty
        self.job.mainExited(processExit(0))
        self.clock.advance(1.0)
        stopped = self.job.stop("ada", StopRequest(grace=0.5))
        self.clock.advance(0.5 + ABANDON_AFTER_KILL - 0.25)
        self.assertEqual(self.transport.lostConnection, 0)
        self.clock.advance(0.25)
        self.assertEqual(self.transport.lostConnection, 1)
        self.job.pipesClosed()
        self.assertIs(self.successResultOf(stopped).status, JobStatus.COMPLETED)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_noAbandonAfterNaturalEnd(self) -> None:
        """A job that ended before the SIGKILL schedules no abandon timer."""
        self.end(processExit(0))
        self.clock.advance(GRACE)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(self.transport.lostConnection, 0)


class FailedToStartTests(JobProcessTestCase):
    """failedToStart(): FAILED without a process."""

    def test_failed(self) -> None:
        """The job is FAILED with the error, no exit code and no pid."""
        self.clock.advance(1)
        self.job.failedToStart("cannot start: 'nope' not found in PATH")
        self.assertIs(self.record.status, JobStatus.FAILED)
        self.assertIsNone(self.record.exit_code)
        self.assertIsNone(self.record.signal)
        self.assertIsNone(self.record.pid)
        self.assertEqual(self.record.error, "cannot start: 'nope' not found in PATH")
        self.assertEqual(self.record.ended_at, START + 1)
        self.assertEqual(self.finishCalls, [JobStatus.FAILED])

    def test_waitersFire(self) -> None:
        """Waiters from before and after both fire; nothing is signalled."""
        ended = self.job.whenEnded()
        cleaned = self.job.whenCleanedUp()
        self.job.failedToStart("cannot start: boom")
        self.assertIs(self.successResultOf(ended), self.record)
        self.assertIsNone(self.successResultOf(cleaned))
        self.successResultOf(self.job.whenEnded())
        self.successResultOf(self.job.whenCleanedUp())
        self.assertEqual(self.killer.calls, [])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_spoolsClosed(self) -> None:
        """Both spools are closed: log readers see the end."""
        self.job.failedToStart("cannot start: boom")
        self.assertTrue(self.stdout.closed)
        self.assertTrue(self.stderr.closed)
        self.successResultOf(self.stdout.whenGrown())


class SpawnErrorTests(SynchronousTestCase):
    """spawnError() says in one line why a spawn failed."""

    def test_osError(self) -> None:
        """An OSError gives its strerror."""
        self.assertEqual(
            spawnError(OSError(2, "No such file or directory")),
            "cannot start: No such file or directory",
        )

    def test_other(self) -> None:
        """Another exception gives its text."""
        self.assertEqual(spawnError(ValueError("bad")), "cannot start: bad")

    def test_processTerminatedIsNotConfusedWithDone(self) -> None:
        """Sanity: the fake reasons are the real Twisted exception types."""
        self.assertIsInstance(processExit(0).value, ProcessDone)
        self.assertIsInstance(processExit(1).value, ProcessTerminated)
        self.assertIsInstance(processKilled(9).value, ProcessTerminated)
