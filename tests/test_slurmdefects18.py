"""
A Slurm user's review (session 18), on fake Slurm commands as in
L{tests.test_slurmunit}: a stop of a suspended job, output folders whose
path holds a space or a C{%}, a job Slurm will never run, and an
out-of-memory end. (The real cluster's side is in L{tests.test_slurm}.)
"""

from __future__ import annotations

import errno
import os
import shlex
from dataclasses import replace
from typing import Any

from twisted.internet.defer import ensureDeferred
from twisted.trial.unittest import SynchronousTestCase

from jobworker.client.calls import exitStatusOf
from jobworker.executors.slurm.documents import SlurmError, SlurmState
from jobworker.executors.slurm.executor import SlurmExecutor
from jobworker.executors.slurm.outcomes import NEVER_STARTS_AFTER, outcomeOf
from jobworker.executors.slurm.poll import IDLE_PING
from jobworker.jobs.manager import JobManager
from jobworker.jobs.records import JobRecord, JobStatus
from jobworker.jobs.stopping import StopRequest

from .fakes import FakeProcessReactor
from .test_manager import request
from .test_slurmunit import FakeCommands, state


class SlurmCase(SynchronousTestCase):
    """An executor on fake Slurm commands, its output folder C{outputName}."""

    outputName = "shared"

    def setUp(self) -> None:
        self.reactor = FakeProcessReactor()
        self.commands = FakeCommands()
        self.stateDir = os.path.abspath(self.mktemp())
        self.outputDir = os.path.join(self.stateDir, self.outputName)
        self.executor = SlurmExecutor(
            self.reactor,
            self.outputDir,
            grace=5.0,
            pollInterval=1.0,
            commands=self.commands,  # type: ignore[arg-type]
            sharedAccount=True,
        )
        self.manager = JobManager(self.reactor, self.stateDir, self.executor)
        self.addCleanup(self.manager.close)

    def submit(self, *argv: str, **kwargs: Any) -> JobRecord:
        """Create a job and let sbatch accept it as Slurm job 100+n."""
        record = self.manager.create(request(*argv, **kwargs), owner="alice")
        accepted = ensureDeferred(self.manager.accepted(record))
        self.commands.submissions[-1][2].callback(
            str(100 + len(self.commands.submissions))
        )
        self.successResultOf(accepted)
        return record

    def poll(self, states: dict[str, SlurmState]) -> None:
        self.reactor.advance(1.0)
        self.commands.polls[-1].callback(states)


class SuspendedStopTests(SlurmCase):
    """
    Item 1: Slurm refuses to signal a suspended job ("Job is in
    transitional state", which scancel retries for about 95 s, past the
    command's 60 s deadline: 503 "Slurm is unreachable"). It cancels one.
    """

    def test_suspendedJobCancelled(self) -> None:
        """
        A job Slurm reports SUSPENDED is cancelled (scancel without
        --signal: Slurm resumes it, sends TERM, KILL after its KillWait),
        never signalled; it ends STOPPED.
        """
        record = self.submit("sleep", "100")
        self.poll({"101": state("RUNNING")})
        self.poll({"101": state("SUSPENDED")})
        self.assertIs(self.manager.record(record.id).status, JobStatus.RUNNING)
        stopped = self.manager.stop(record.id, "alice", StopRequest(grace=30.0))
        self.assertEqual(self.commands.lookedAt, ["101"])  # asked afresh
        self.assertEqual(self.commands.signals, [])
        self.assertEqual(self.commands.cancels, ["101"])
        self.assertNoResult(stopped)
        self.poll({"101": state("CANCELLED", 0, 15)})
        final = self.successResultOf(stopped)
        self.assertIs(final.status, JobStatus.STOPPED)
        self.assertEqual(final.stopped_by, "alice")

    def test_resumedJobSignalled(self) -> None:
        """Once Slurm says it runs again, a stop signals it as usual."""
        record = self.submit("sleep", "100")
        self.poll({"101": state("SUSPENDED")})
        self.poll({"101": state("RUNNING")})
        self.manager.stop(record.id, "alice")
        self.assertEqual(self.commands.signals, [("101", "TERM")])
        self.assertEqual(self.commands.cancels, [])


class OutputPathTests(SlurmCase):
    """
    Item 2: an output folder whose path holds a space and a C{%}: sbatch
    reads C{%} in --output and --error as a filename pattern (C{%x} is the
    job's name: the node opened another file, and the job failed to launch),
    and the probe's shell line split the path at the space.
    """

    outputName = "jobs 50%x here"

    def test_percentEscapedForSbatch(self) -> None:
        """--output and --error double the C{%}; --chdir takes it as it is."""
        record = self.submit("true")
        options = self.commands.submissions[0][0]
        folder = os.path.join(self.outputDir, record.id)
        escaped = folder.replace("%", "%%")
        self.assertIn(f"--output={escaped}/stdout", options)
        self.assertIn(f"--error={escaped}/slurm.log", options)
        self.assertIn(f"--chdir={folder}", options)
        script = self.commands.submissions[0][1]
        self.assertIn(f"{folder}/stderr", script)
        self.assertIn(f"{folder}/argv", script)

    def test_probeQuotesThePath(self) -> None:
        """The probe's --wrap names the token file as one shell word."""
        self.executor.probe()
        options = self.commands.submissions[0][0]
        [wrap] = [o for o in options if o.startswith("--wrap=")]
        words = shlex.split(wrap.removeprefix("--wrap="))
        self.assertEqual(words[0], "echo")
        self.assertEqual(words[2], ">")
        self.assertEqual(os.path.dirname(words[3]), self.outputDir)
        self.assertEqual(len(words), 4)

    def test_backslashRefused(self) -> None:
        """
        Slurm drops every backslash of an --output path (and then expands no
        pattern): such a folder cannot be named to sbatch, and is refused at
        start-up, saying why.
        """
        error = self.assertRaises(
            OSError,
            SlurmExecutor,
            self.reactor,
            os.path.join(self.stateDir, "back\\slash"),
            grace=5.0,
            commands=self.commands,  # type: ignore[arg-type]
            sharedAccount=True,
        )
        self.assertEqual(error.errno, errno.EINVAL)
        self.assertIn("backslash", error.strerror or "")


class NeverRunsTests(SlurmCase):
    """
    Item 3: a job Slurm accepted but will never start (its account or QOS
    invalid, or not allowed on its partition) waited PENDING for ever. It
    ends FAILED with Slurm's reason, and is cancelled in Slurm.
    """

    def test_invalidAccountFails(self) -> None:
        """
        Once the reason has held NEVER_STARTS_AFTER seconds: an
        administrator may fix an account or QOS meanwhile (a review: the
        first poll that showed it cancelled the job).
        """
        record = self.submit("true")
        invalid = {"101": replace(state("PENDING"), reason="InvalidAccount")}
        self.poll(invalid)
        waiting = self.manager.record(record.id)
        self.assertIs(waiting.status, JobStatus.PENDING)
        self.assertEqual(waiting.pending_reason, "InvalidAccount")
        self.reactor.advance(NEVER_STARTS_AFTER - 2)  # (a poll is 1 s more)
        self.poll(invalid)
        self.assertIs(self.manager.record(record.id).status, JobStatus.PENDING)
        self.poll(invalid)
        final = self.manager.record(record.id)
        self.assertIs(final.status, JobStatus.FAILED)
        self.assertIn("InvalidAccount", final.error or "")
        self.assertIn("never", final.error or "")
        self.assertIsNone(final.exit_code)
        self.assertIsNone(final.started_at)
        self.assertIsNone(final.pending_reason)
        self.assertEqual(self.commands.cancels, ["101"])

    def test_fixedInTimeRuns(self) -> None:
        """An account made valid within the time: the job waits on, then runs."""
        record = self.submit("true")
        self.poll({"101": replace(state("PENDING"), reason="InvalidAccount")})
        self.reactor.advance(NEVER_STARTS_AFTER - 1)
        self.poll({"101": replace(state("PENDING"), reason="Priority")})
        self.reactor.advance(NEVER_STARTS_AFTER)
        self.poll({"101": replace(state("PENDING"), reason="InvalidAccount")})
        self.assertIs(self.manager.record(record.id).status, JobStatus.PENDING)
        self.assertEqual(self.commands.cancels, [])

    def test_waitingReasonsStillWait(self) -> None:
        """Reasons that pass (resources, a hold, a dependency) keep it queued."""
        record = self.submit("true")
        for reason in ("Resources", "Priority", "JobHeldUser", "Dependency"):
            self.poll({"101": replace(state("PENDING"), reason=reason)})
            self.assertIs(self.manager.record(record.id).status, JobStatus.PENDING)
        self.assertEqual(self.commands.cancels, [])

    def test_permanentSbatchRefusalFails(self) -> None:
        """sbatch refusing the account outright: FAILED at once, Slurm's words."""
        record = self.manager.create(request("true"), owner="alice")
        accepted = ensureDeferred(self.manager.accepted(record))
        self.commands.submissions[0][2].errback(
            SlurmError(
                "sbatch: Batch job submission failed: Invalid account or "
                "account/partition combination specified"
            )
        )
        final = self.successResultOf(accepted)
        self.assertIs(final.status, JobStatus.FAILED)
        self.assertIn("Invalid account", final.error or "")
        self.assertTrue(self.executor.health().up)


class OutOfMemoryTests(SlurmCase):
    """
    Item 5: Slurm reports an OOM kill as state OUT_OF_MEMORY with its own
    status (0:125, SIG_OOM), no exit code and no signal: `jw wait` took it
    for an end it does not know, 255. The kernel's OOM killer SIGKILLs: the
    record says so, as a local job's does, and `jw wait` exits 137.
    """

    def test_outOfMemoryIsSigkill(self) -> None:
        record = self.submit("python3", "-c", "x = ' ' * 10**12")
        self.poll({"101": state("RUNNING")})
        oom = replace(state("OUT_OF_MEMORY", 0, 0), exitCode=None, invalidStatus=125)
        self.poll({"101": replace(oom, reason="OutOfMemory")})
        final = self.manager.record(record.id)
        self.assertIs(final.status, JobStatus.FAILED)
        self.assertEqual((final.exit_code, final.signal), (None, "SIGKILL"))
        self.assertIn("out of memory", final.error or "")
        self.assertEqual(exitStatusOf(final.toJSON()), 137)

    def test_ownExitCodeKept(self) -> None:
        """
        OUT_OF_MEMORY with an exit code of its own (a child was killed, the
        script exited 1): the code stands, as it would for a local job.
        """
        ending = outcomeOf(state("OUT_OF_MEMORY", 1, 0), False, None)
        self.assertEqual((ending.exitCode, ending.signal), (1, None))
        self.assertIn("out of memory", ending.error or "")


class OutsideEndingTests(SynchronousTestCase):
    """
    A running job preempted by Slurm, or cancelled from outside jobworker
    (an administrator's scancel), showed only "killed by signal SIGTERM":
    nothing said who (the last Slurm review). The error says so; the
    signal stays the record's.
    """

    def test_preempted(self) -> None:
        ending = outcomeOf(state("PREEMPTED", 0, 15), False, None)
        self.assertIs(ending.status, JobStatus.FAILED)
        self.assertEqual(ending.signal, "SIGTERM")
        self.assertIn("preempted by Slurm", ending.error or "")

    def test_cancelledFromOutside(self) -> None:
        ending = outcomeOf(state("CANCELLED", 0, 15), False, None)
        self.assertIs(ending.status, JobStatus.FAILED)
        self.assertEqual(ending.signal, "SIGTERM")
        self.assertIn("cancelled in Slurm, not through jobworker", ending.error or "")

    def test_ownStopStaysStopped(self) -> None:
        ending = outcomeOf(state("CANCELLED", 0, 15), True, None)
        self.assertIs(ending.status, JobStatus.STOPPED)


class IdleHealthTests(SlurmCase):
    """
    An idle server (no Slurm job to poll) said /healthz "ok" while slurmctld
    was down, until the next sbatch failed (the last Slurm review). It
    pings every IDLE_PING seconds, jobs or not.
    """

    def test_idleServerFindsSlurmDown(self) -> None:
        self.manager.recover()
        self.reactor.advance(1.0)
        self.assertEqual(len(self.commands.pings), 1)
        self.commands.pings[-1].callback(None)
        self.assertTrue(self.executor.health().up)
        self.reactor.advance(IDLE_PING - 1)
        self.assertEqual(len(self.commands.pings), 1)  # not at every poll
        self.reactor.advance(1.0)
        self.assertEqual(len(self.commands.pings), 2)
        self.commands.pings[-1].errback(
            SlurmError("scontrol ping: DOWN", unreachable=True)
        )
        health = self.executor.health()
        self.assertFalse(health.up)
        self.assertIn("DOWN", health.reason or "")
        self.reactor.advance(1.0)  # down: pinged at every poll until it answers
        self.commands.pings[-1].callback(None)
        self.assertTrue(self.executor.health().up)
